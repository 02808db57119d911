//! The event log: the platform's source of truth. One interface, two implementations.
//!
//! - [`EventLog`] and [`LogConsumer`]: the interface. Topics hold keyed records in partitions;
//!   records of one key stay in order; named consumer groups commit offsets only when told the
//!   records are handled (at-least-once).
//! - [`embedded`]: a durable single-machine log under the data folder (the default).
//! - [`kafka`]: Kafka (or any Kafka-protocol broker) through rdkafka.
//! - [`events`]: typed publishing and consuming of the Avro [`Event`](twin_schemas::Event)s;
//!   undecodable records are reported with topic, partition and offset, and consuming goes on.
//!
//! [`open`] picks the implementation from the configuration.

pub mod embedded;
pub mod events;
pub mod kafka;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use twin_config::{LogBackend, TwinConfig};

pub use embedded::EmbeddedLog;
pub use events::{publish, BadEvent, Delivery, EventConsumer};
pub use kafka::KafkaLog;

/// What can go wrong on the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A record's bytes are damaged (checksum or framing). Consuming goes on after it.
    #[error("corrupt record in topic {topic} partition {partition} at offset {offset}: {reason}")]
    Corrupt {
        /// Topic of the record.
        topic: String,
        /// Partition of the record.
        partition: u32,
        /// Offset of the record.
        offset: u64,
        /// What is wrong.
        reason: String,
        /// The damaged bytes, as read (for a dead-letter topic).
        bytes: Vec<u8>,
    },
    /// A file of the embedded log could not be read or written.
    #[error("embedded log {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The Kafka client or broker refused or failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// A name is not usable as a topic or group name.
    #[error("invalid {what} name {name:?}: use 1-249 of [a-zA-Z0-9._-], not `.` or `..`")]
    InvalidName {
        /// "topic" or "consumer group".
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// The embedded log lets one member consume per group; a second one is refused.
    #[error(
        "consumer group {group} on topic {topic} already has a member (the embedded log runs one \
         member per group; use the Kafka backend to scale out)"
    )]
    GroupBusy {
        /// The topic.
        topic: String,
        /// The group.
        group: String,
    },
    /// A topic could not be created or is not as expected.
    #[error("topic {topic}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What went wrong.
        reason: String,
    },
    /// An event could not be encoded for publishing.
    #[error(transparent)]
    Encode(#[from] twin_schemas::SchemaError),
    /// A record is over [`MAX_RECORD_BYTES`]: refused before anything of its batch was sent.
    #[error(
        "a record of {bytes} bytes for key {key:?} on topic {topic} is over the log's limit of \
         {limit} bytes"
    )]
    TooLarge {
        /// The topic.
        topic: String,
        /// The record's key (a document id), lossy UTF-8.
        key: String,
        /// Its size, key and payload.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Records a rebuild needs are gone from the log (deleted by the broker's retention).
    #[error(
        "topic {topic} no longer holds its first records (partition {partition} starts at offset \
         {first}: {first} records deleted by the broker's retention); a rebuild from it would \
         lose those documents for good. Keep the projections, or re-crawl into a topic with \
         infinite retention (retention.ms=-1)"
    )]
    Truncated {
        /// The topic.
        topic: String,
        /// The first partition found truncated.
        partition: u32,
        /// Its first offset still held (its low watermark).
        first: u64,
    },
}

/// The largest record (key and payload) the log takes: 32 MiB, the largest document an event
/// carries with room to spare. Kafka's producer, topics and consumers are configured to carry
/// it (their defaults stop near 1 MB); a bigger record is refused before it is sent, naming its
/// key, on both backends alike.
pub const MAX_RECORD_BYTES: usize = 32 * 1024 * 1024;

/// Refuse a batch holding a record over [`MAX_RECORD_BYTES`].
pub fn check_sizes(topic: &str, records: &[(&[u8], &[u8])]) -> Result<()> {
    for (key, payload) in records {
        let bytes = key.len() + payload.len();
        if bytes > MAX_RECORD_BYTES {
            return Err(LogError::TooLarge {
                topic: topic.to_string(),
                key: String::from_utf8_lossy(key).into_owned(),
                bytes,
                limit: MAX_RECORD_BYTES,
            });
        }
    }
    Ok(())
}

impl LogError {
    /// Whether trying again later can help (a broker that is down, a transient I/O error),
    /// as opposed to bad input or a bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            LogError::Kafka { .. } => true,
            LogError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Result of log operations.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Where a record is: its partition and offset within the topic (the type lives with the
/// other identities in `twin-schemas`, so that projections name positions without the log).
pub use twin_schemas::Position;

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Topic it was read from.
    pub topic: String,
    /// Where it is.
    pub position: Position,
    /// Its key (the document id for events).
    pub key: Vec<u8>,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// At the group's committed offsets; at the beginning of partitions it never committed.
    Committed,
    /// At the beginning of every partition, whatever the group committed (a replay).
    Beginning,
}

/// A durable, partitioned, keyed log.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// `embedded` or `kafka`.
    fn backend(&self) -> &'static str;

    /// Create the topic if it does not exist; returns its partition count.
    async fn ensure_topic(&self, topic: &str) -> Result<u32>;

    /// The topic's partition count, or `None` if it does not exist (nothing is created).
    async fn partitions(&self, topic: &str) -> Result<Option<u32>>;

    /// Append records (key, payload) in order; returns their positions once they are durable.
    /// Records of one key go to one partition, so their order is kept. A missing topic is created.
    async fn append_batch(&self, topic: &str, records: &[(&[u8], &[u8])]) -> Result<Vec<Position>>;

    /// Append one record.
    async fn append(&self, topic: &str, key: &[u8], payload: &[u8]) -> Result<Position> {
        let mut positions = self.append_batch(topic, &[(key, payload)]).await?;
        positions.pop().ok_or_else(|| LogError::Topic {
            topic: topic.to_string(),
            reason: "append returned no position".into(),
        })
    }

    /// The offset the next record of each partition will get (the high watermark).
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>>;

    /// The first offset each partition still holds (the low watermark): above 0 where the
    /// broker deleted records (retention). The embedded log deletes nothing.
    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>>;

    /// Where `group` stands on `topic`: per partition, the offset it reads next (0 where it
    /// never committed). Reads only; joins nothing.
    async fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<u64>>;

    /// A member of consumer group `group` reading `topic`.
    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Box<dyn LogConsumer>>;
}

/// Reads one topic for one consumer group.
#[async_trait]
pub trait LogConsumer: Send {
    /// The next record, or `None` if none arrived within `wait`. A
    /// [`LogError::Corrupt`] record is returned as an error and skipped: the next poll goes on
    /// after it.
    async fn poll(&mut self, wait: Duration) -> Result<Option<Record>>;

    /// Mark every record of `position.partition` up to and including `position.offset` as
    /// handled. After a crash, the group resumes right after the last committed position.
    async fn commit(&mut self, position: Position) -> Result<()>;

    /// Durably forget what the group handled on this topic: its committed offsets go back to the
    /// beginning of every partition, so that a member started later (after a crash, say)
    /// replays the whole topic. A rebuild does this before it drops anything.
    async fn rewind(&mut self) -> Result<()>;
}

/// Open the log the configuration names.
pub fn open(config: &TwinConfig) -> Result<Arc<dyn EventLog>> {
    Ok(match config.log.backend {
        LogBackend::Embedded => Arc::new(EmbeddedLog::open(
            config.layout().log(),
            config.log.partitions,
            config.log.embedded.fsync,
        )?),
        LogBackend::Kafka => Arc::new(KafkaLog::new(&config.log.kafka, config.log.partitions)?),
    })
}

/// Check a topic or group name: Kafka's rules, which also keep embedded paths inside the log.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// Partition of a key: CRC-32 of the key modulo the partition count, as librdkafka's default
/// partitioner does, so that the embedded log and Kafka place keys alike.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    crc32fast::hash(key) % partitions.max(1)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_folder_are_refused() {
        for bad in ["", ".", "..", "../etc", "a/b", "a b", "ü"] {
            assert!(validate_name("topic", bad).is_err(), "{bad:?}");
        }
        for good in ["raw-documents", "a.b_c-1", "X"] {
            validate_name("topic", good).expect(good);
        }
        assert!(validate_name("topic", &"a".repeat(250)).is_err());
    }

    #[test]
    fn a_key_always_lands_on_the_same_partition() {
        let p = partition_for(b"doc-1", 3);
        assert!(p < 3);
        assert_eq!(p, partition_for(b"doc-1", 3));
        assert_eq!(partition_for(b"anything", 0), 0);
    }
}
