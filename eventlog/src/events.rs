//! Typed events on the log: publishing [`Event`]s keyed by their document, and consuming them
//! with every record that does not decode reported as a [`BadEvent`] (topic, partition, offset,
//! reason and the original bytes) instead of stopping the consumer.

use std::fmt;
use std::time::Duration;

use tracing::warn;
use twin_schemas::Event;

use crate::{EventLog, LogConsumer, LogError, Position, Result};

/// Encode events and append them, each keyed by its document id so that the events of one
/// document stay in order. Returns their positions once durable.
pub async fn publish(log: &dyn EventLog, topic: &str, events: &[Event]) -> Result<Vec<Position>> {
    let encoded = events
        .iter()
        .map(twin_schemas::encode)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let records: Vec<(&[u8], &[u8])> = events
        .iter()
        .zip(&encoded)
        .map(|(e, bytes)| (e.key().as_bytes(), bytes.as_slice()))
        .collect();
    log.append_batch(topic, &records).await
}

/// A record that could not be turned into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    /// Topic of the record.
    pub topic: String,
    /// Where it is.
    pub position: Position,
    /// Why it could not be read.
    pub reason: String,
    /// Its bytes as read, for a dead-letter topic.
    pub bytes: Vec<u8>,
    /// The schema fingerprint it names, when no schema of this build has it: written by a
    /// newer producer, so not bad but not ours to read (a rolling upgrade in progress).
    pub unknown_schema: Option<u64>,
}

impl fmt::Display for BadEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad event in topic {} partition {} at offset {}: {}",
            self.topic, self.position.partition, self.position.offset, self.reason
        )
    }
}

/// One record of the log, decoded or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Where it is; commit this once it is handled.
    pub position: Position,
    /// Its key.
    pub key: Vec<u8>,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The record's bytes as read (for a dead-letter topic, whatever goes wrong later).
    pub payload: Vec<u8>,
    /// The event, or why there is none.
    pub event: std::result::Result<Event, BadEvent>,
}

/// Consumes typed events from one topic for one consumer group.
pub struct EventConsumer {
    inner: Box<dyn LogConsumer>,
    topic: String,
}

impl EventConsumer {
    /// Wrap a log consumer of `topic`.
    pub fn new(inner: Box<dyn LogConsumer>, topic: impl Into<String>) -> Self {
        Self {
            inner,
            topic: topic.into(),
        }
    }

    /// The next delivery, or `None` if nothing arrived within `wait`. Undecodable and corrupt
    /// records come back as deliveries holding a [`BadEvent`], so the caller can route them to a
    /// dead-letter topic and commit past them. Errors are failures of the log itself.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Delivery>> {
        let record = match self.inner.poll(wait).await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(None),
            Err(LogError::Corrupt {
                topic,
                partition,
                offset,
                reason,
                bytes,
            }) => {
                return Ok(Some(Delivery {
                    position: Position { partition, offset },
                    key: Vec::new(),
                    timestamp_ms: 0,
                    payload: bytes.clone(),
                    event: Err(BadEvent {
                        topic,
                        position: Position { partition, offset },
                        reason,
                        bytes,
                        unknown_schema: None,
                    }),
                }))
            }
            Err(e) => return Err(e),
        };
        let event = twin_schemas::decode(&record.payload).map_err(|e| {
            let bad = BadEvent {
                topic: self.topic.clone(),
                position: record.position,
                reason: e.to_string(),
                bytes: record.payload.clone(),
                unknown_schema: match e {
                    twin_schemas::SchemaError::UnknownFingerprint(f) => Some(f),
                    _ => None,
                },
            };
            warn!(topic = %bad.topic, partition = bad.position.partition,
                  offset = bad.position.offset, reason = %bad.reason, "undecodable event; skipping it");
            metrics::counter!("twin_log_bad_events_total", "topic" => self.topic.clone()).increment(1);
            bad
        });
        Ok(Some(Delivery {
            position: record.position,
            key: record.key,
            timestamp_ms: record.timestamp_ms,
            payload: record.payload,
            event,
        }))
    }

    /// Mark a delivery (and everything before it in its partition) as handled.
    pub async fn commit(&mut self, position: Position) -> Result<()> {
        self.inner.commit(position).await
    }

    /// Move the group's committed offsets back to the beginning (see [`LogConsumer::rewind`]).
    pub async fn rewind(&mut self) -> Result<()> {
        self.inner.rewind().await
    }
}
