//! The dead-letter topic: events the pipeline could not handle, with why and their original
//! bytes, so that nothing is lost and a user can look at them and retry them.
//!
//! Each dead letter is a JSON object (the bytes in base64), keyed like the original event.
//! `twin dlq list` prints them; `twin dlq retry` appends the original event of each letter not
//! retried before to its source topic again (after a fix), where the pipeline picks it up,
//! unless its document has a newer event there.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use twin_eventlog::{EventLog, Position, StartFrom};

use crate::StreamError;

/// One event that could not be handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Topic the event came from.
    pub source_topic: String,
    /// Its partition there.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Its key (UTF-8, lossy).
    pub key: String,
    /// Why it could not be handled.
    pub reason: String,
    /// When it was dead-lettered (ms since the epoch).
    pub failed_at: i64,
    /// The original bytes, base64.
    pub payload_base64: String,
}

impl DeadLetter {
    /// A dead letter for the event at `position` of `topic`.
    pub fn new(
        topic: &str,
        position: Position,
        key: &[u8],
        reason: String,
        payload: Vec<u8>,
    ) -> Self {
        Self {
            source_topic: topic.to_string(),
            partition: position.partition,
            offset: position.offset,
            key: String::from_utf8_lossy(key).into_owned(),
            reason,
            failed_at: twin_eventlog::now_ms(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(payload),
        }
    }

    /// The original event's bytes.
    pub fn payload(&self) -> Result<Vec<u8>, StreamError> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.payload_base64)
            .map_err(|e| StreamError::DeadLetter {
                what: format!(
                    "payload of {}/{}@{}",
                    self.source_topic, self.partition, self.offset
                ),
                source: Box::new(e),
            })
    }

    /// Append it to the dead-letter topic.
    pub async fn send(&self, log: &dyn EventLog, topic: &str) -> Result<(), StreamError> {
        let body = serde_json::to_vec(self).map_err(|e| StreamError::DeadLetter {
            what: format!(
                "of {}/{}@{}",
                self.source_topic, self.partition, self.offset
            ),
            source: Box::new(e),
        })?;
        log.append(topic, self.key.as_bytes(), &body).await?;
        Ok(())
    }
}

/// Every dead letter on `topic`, oldest first (reads the whole topic; commits nothing).
pub async fn list(
    log: &dyn EventLog,
    topic: &str,
) -> Result<Vec<(Position, DeadLetter)>, StreamError> {
    if log.partitions(topic).await?.is_none() {
        return Ok(Vec::new());
    }
    let ends = log.end_offsets(topic).await?;
    let total: u64 = ends.iter().sum();
    let group = format!("twin-dlq-list-{}", std::process::id());
    let mut consumer = log.consumer(topic, &group, StartFrom::Beginning).await?;
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < total {
        match consumer.poll(Duration::from_secs(5)).await {
            Ok(Some(record)) => {
                seen += 1;
                match serde_json::from_slice::<DeadLetter>(&record.payload) {
                    Ok(letter) => out.push((record.position, letter)),
                    Err(e) => {
                        tracing::warn!(offset = record.position.offset, error = %e, "not a dead letter; skipped")
                    }
                }
            }
            Ok(None) => break,
            Err(twin_eventlog::LogError::Corrupt { .. }) => seen += 1,
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by_key(|(p, l)| (l.failed_at, p.partition, p.offset));
    Ok(out)
}

/// The consumer group of `twin dlq retry`: its committed offsets on the dead-letter topic say
/// which letters were retried already.
pub const RETRY_GROUP: &str = "twin-dlq-retry";

/// What a retry did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retried {
    /// Letters whose event went back on its source topic.
    pub appended: usize,
    /// Letters skipped because their document has a newer event on the source topic (a newer
    /// version, or its deletion): replaying the old one would overwrite it or bring it back.
    pub superseded: usize,
}

/// Append the original event of every dead letter not retried before to its source topic
/// again, unless its document has a newer event there; then mark those letters retried (the
/// [`RETRY_GROUP`] commits past them). A letter that fails again comes back as a new letter,
/// which the next retry takes: the backlog never doubles, and nothing is retried twice.
pub async fn retry(log: &dyn EventLog, topic: &str) -> Result<Retried, StreamError> {
    if log.partitions(topic).await?.is_none() {
        return Ok(Retried::default());
    }
    let ends = log.end_offsets(topic).await?;
    let from = log.committed_offsets(topic, RETRY_GROUP).await?;
    let waiting: Vec<bool> = ends.iter().zip(&from).map(|(end, f)| f < end).collect();
    if !waiting.contains(&true) {
        return Ok(Retried::default());
    }
    // The letters not retried yet, read by the retry's group.
    let mut consumer = log
        .consumer(topic, RETRY_GROUP, StartFrom::Committed)
        .await?;
    let mut reached: Vec<Option<u64>> = vec![None; ends.len()];
    let mut letters: Vec<(Position, Option<DeadLetter>)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let done = |reached: &[Option<u64>]| {
        (0..ends.len()).all(|p| !waiting[p] || reached[p].is_some_and(|o| o + 1 >= ends[p]))
    };
    while !done(&reached) {
        if tokio::time::Instant::now() > deadline {
            return Err(StreamError::DeadLetter {
                what: format!("the letters of {topic}"),
                source: "not all were read within 120 s".into(),
            });
        }
        match consumer.poll(Duration::from_secs(1)).await {
            Ok(Some(record)) => {
                let p = record.position.partition as usize;
                if p < reached.len() {
                    reached[p] = Some(record.position.offset);
                }
                let letter = serde_json::from_slice::<DeadLetter>(&record.payload).ok();
                letters.push((record.position, letter));
            }
            Ok(None) => {}
            Err(twin_eventlog::LogError::Corrupt {
                partition, offset, ..
            }) => {
                if let Some(r) = reached.get_mut(partition as usize) {
                    *r = Some(offset);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The newest event of each document on each source topic.
    let mut newest: HashMap<(String, Vec<u8>), (u32, u64)> = HashMap::new();
    let sources: BTreeSet<String> = letters
        .iter()
        .filter_map(|(_, l)| l.as_ref().map(|l| l.source_topic.clone()))
        .collect();
    for source in &sources {
        for (key, position) in latest_per_key(log, source).await? {
            newest.insert((source.clone(), key), position);
        }
    }
    let mut retried = Retried::default();
    for (_, letter) in &letters {
        let Some(letter) = letter else {
            continue;
        };
        let key = (letter.source_topic.clone(), letter.key.as_bytes().to_vec());
        let superseded = newest
            .get(&key)
            .is_some_and(|&(p, o)| p == letter.partition && o > letter.offset);
        if superseded {
            tracing::info!(
                key = %letter.key,
                offset = letter.offset,
                "dead letter skipped: its document has a newer event"
            );
            retried.superseded += 1;
            continue;
        }
        log.append(
            &letter.source_topic,
            letter.key.as_bytes(),
            &letter.payload()?,
        )
        .await?;
        retried.appended += 1;
    }
    // Only now: what was appended is durable, so the letters may count as retried.
    for (p, reached) in reached.iter().enumerate() {
        if let Some(offset) = reached {
            consumer
                .commit(Position {
                    partition: p as u32,
                    offset: *offset,
                })
                .await?;
        }
    }
    Ok(retried)
}

/// Per key of `topic`, the partition and offset of its last record (one pass over the topic,
/// read by a group of its own that commits nothing).
async fn latest_per_key(
    log: &dyn EventLog,
    topic: &str,
) -> Result<HashMap<Vec<u8>, (u32, u64)>, StreamError> {
    let mut latest = HashMap::new();
    if log.partitions(topic).await?.is_none() {
        return Ok(latest);
    }
    let ends = log.end_offsets(topic).await?;
    let total: u64 = ends.iter().sum();
    let group = format!("twin-dlq-scan-{}", std::process::id());
    let mut consumer = log.consumer(topic, &group, StartFrom::Beginning).await?;
    let mut seen = 0;
    while seen < total {
        match consumer.poll(Duration::from_secs(5)).await {
            Ok(Some(record)) => {
                seen += 1;
                let position = (record.position.partition, record.position.offset);
                // A key's records share one partition: the last offset is the newest.
                let entry = latest.entry(record.key).or_insert(position);
                if position.1 > entry.1 {
                    *entry = position;
                }
            }
            Ok(None) => break,
            Err(twin_eventlog::LogError::Corrupt { .. }) => seen += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(latest)
}
