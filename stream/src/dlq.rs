//! The dead-letter topic: events the pipeline could not handle, with why and their original
//! bytes, so that nothing is lost and a user can look at them and retry them.
//!
//! Each dead letter is a JSON object (the bytes in base64), keyed like the original event.
//! `twin dlq list` prints them; `twin dlq retry` appends each original event to its source topic
//! again (after a fix), where the pipeline picks it up.

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

/// Append every dead letter's original event to its source topic again; returns how many.
pub async fn retry(log: &dyn EventLog, topic: &str) -> Result<usize, StreamError> {
    let letters = list(log, topic).await?;
    for (_, letter) in &letters {
        log.append(
            &letter.source_topic,
            letter.key.as_bytes(),
            &letter.payload()?,
        )
        .await?;
    }
    Ok(letters.len())
}
