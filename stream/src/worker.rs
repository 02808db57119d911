//! The stream worker: consumes raw-document events and keeps the projections current.
//!
//! For each batch of events: clean, chunk and embed every document (all chunks of the batch in
//! one embedding call, batched by token budget), publish the cleaned documents, chunks and
//! embedded chunks to their topics, write the warehouse and the vector store, and only then
//! commit the batch's offsets. A crash anywhere before the commit replays the batch, and every
//! write is an idempotent upsert, so the result is the same as without the crash.
//!
//! An event that cannot be decoded, or that a stage rejects, goes to the dead-letter topic with
//! the reason and its original bytes (see [`crate::dlq`]); the worker goes on. A failure of the
//! log or of a sink stops the worker without committing: it is retried on restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use twin_config::TopicNames;
use twin_embedding::Embedder;
use twin_eventlog::{publish, Delivery, EventConsumer, EventLog, Position, StartFrom};
use twin_schemas::{Chunk, EmbeddedChunk, Event, RawDocument};
use twin_vectorstore::VectorStore;

use crate::dlq::DeadLetter;
use crate::warehouse::{LogPosition, Warehouse};
use crate::{clean, Chunker, StreamError};

/// The consumer group of stream workers on the raw-documents topic.
pub const DEFAULT_GROUP: &str = "twin-stream";

/// Empty polls (of about half a second each) after which a `--once` run that received nothing
/// concludes there is nothing to do.
const IDLE_POLLS_WHEN_NOTHING_CAME: u32 = 4;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Consumer group.
    pub group: String,
    /// Drop the projections and rebuild them from offset zero.
    pub rebuild: bool,
    /// Stop once every event that was on the topic when the run started is handled.
    pub until_caught_up: bool,
    /// Most events handled per batch.
    pub batch_size: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            group: DEFAULT_GROUP.into(),
            rebuild: false,
            until_caught_up: false,
            batch_size: 64,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Raw documents projected.
    pub documents: u64,
    /// Tombstones applied.
    pub deleted: u64,
    /// Chunks embedded and stored.
    pub chunks: u64,
    /// Events sent to the dead-letter topic.
    pub dead_letters: u64,
}

/// The worker and everything it writes to.
pub struct Pipeline {
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Topic names.
    pub topics: TopicNames,
    /// The warehouse projection.
    pub warehouse: Arc<dyn Warehouse>,
    /// The vector projection.
    pub vectors: Arc<dyn VectorStore>,
    /// The embedding model.
    pub embedder: Arc<Embedder>,
    /// The chunk stage.
    pub chunker: Chunker,
}

/// What a batch does to the sinks, in log order.
enum Action {
    /// Project a document.
    Project(Box<Projected>),
    /// Retire a document.
    Delete(String, Position),
}

/// One document's stage outputs, before the sinks.
struct Projected {
    raw: RawDocument,
    position: Position,
    /// When the raw event was appended (ms since the epoch), for the end-to-end lag.
    appended_at: i64,
    cleaned: twin_schemas::CleanedDocument,
    chunks: Vec<Chunk>,
}

impl Pipeline {
    /// Everything the configuration names: the log, the embedding model (pulled and exported on
    /// first use), the warehouse and the vector store (their tables and collections created).
    pub async fn open(config: &twin_config::TwinConfig) -> Result<Self, StreamError> {
        let log = twin_eventlog::open(config).map_err(log_err)?;
        let embedder = twin_embedding::open(&config.embedding, &config.data_dir)
            .await
            .map_err(|e| StreamError::Embedding(e.to_string()))?;
        let embedder = Arc::new(embedder);
        let warehouse = crate::warehouse::open(&config.warehouse, &config.data_dir).await?;
        let vectors =
            twin_vectorstore::open(&config.vectors, &config.data_dir, embedder.dimension())
                .await
                .map_err(vec_err)?;
        let chunker = Chunker::new(
            embedder.tokenizer().clone(),
            config.chunking.clone(),
            config.embedding.max_tokens,
        )?;
        Ok(Self {
            log,
            topics: config.topics.clone(),
            warehouse,
            vectors,
            embedder,
            chunker,
        })
    }

    /// Run until `shutdown` resolves, or, with `until_caught_up`, until the topic is handled.
    pub async fn run(
        &self,
        options: &RunOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<RunStats, StreamError> {
        let topic = self.topics.raw_documents.as_str();
        for t in self.topics.all() {
            self.log.ensure_topic(t).await.map_err(log_err)?;
        }
        let start = if options.rebuild {
            info!("rebuild: dropping the warehouse and the vector store");
            self.warehouse.drop_all().await?;
            self.warehouse.ensure_schema().await?;
            self.vectors.drop_all().await.map_err(vec_err)?;
            self.vectors
                .ensure_collections(self.embedder.dimension())
                .await
                .map_err(vec_err)?;
            StartFrom::Beginning
        } else {
            StartFrom::Committed
        };
        let targets = self.log.end_offsets(topic).await.map_err(log_err)?;
        let inner = self
            .log
            .consumer(topic, &options.group, start)
            .await
            .map_err(log_err)?;
        let mut consumer = EventConsumer::new(inner, topic);
        // Where the group stands per partition; caught up when every partition reached its target.
        let mut reached: Vec<Option<u64>> = vec![None; targets.len()];
        let mut stats = RunStats::default();
        let mut idle_polls = 0;
        tokio::pin!(shutdown);
        loop {
            let caught_up = targets
                .iter()
                .zip(&reached)
                .all(|(target, done)| *target == 0 || done.is_some_and(|d| d + 1 >= *target));
            if options.until_caught_up && caught_up {
                break;
            }
            let batch = tokio::select! {
                _ = &mut shutdown => break,
                batch = self.next_batch(&mut consumer, options.batch_size) => batch?,
            };
            if batch.is_empty() {
                if options.until_caught_up {
                    // Nothing available on any partition. Partitions that delivered reached their
                    // targets; the others had nothing past their committed offsets. When no
                    // partition delivered at all, give a slow group join a few idle polls first.
                    idle_polls += 1;
                    let delivered_done = targets
                        .iter()
                        .zip(&reached)
                        .all(|(target, done)| done.is_none_or(|d| d + 1 >= *target));
                    let any_delivered = reached.iter().any(Option::is_some);
                    let empty_topic = targets.iter().all(|t| *t == 0);
                    if delivered_done
                        && (any_delivered
                            || empty_topic
                            || idle_polls >= IDLE_POLLS_WHEN_NOTHING_CAME)
                    {
                        break;
                    }
                }
                continue;
            }
            idle_polls = 0;
            self.handle(batch, &mut consumer, &mut reached, &mut stats)
                .await?;
        }
        Ok(stats)
    }

    /// Up to `max` deliveries: waits for the first, then takes what is already there.
    async fn next_batch(
        &self,
        consumer: &mut EventConsumer,
        max: usize,
    ) -> Result<Vec<Delivery>, StreamError> {
        let mut batch = Vec::new();
        if let Some(first) = consumer
            .next(Duration::from_millis(500))
            .await
            .map_err(log_err)?
        {
            batch.push(first);
            while batch.len() < max {
                match consumer
                    .next(Duration::from_millis(5))
                    .await
                    .map_err(log_err)?
                {
                    Some(d) => batch.push(d),
                    None => break,
                }
            }
        }
        Ok(batch)
    }

    /// Project a batch, then commit it.
    async fn handle(
        &self,
        batch: Vec<Delivery>,
        consumer: &mut EventConsumer,
        reached: &mut [Option<u64>],
        stats: &mut RunStats,
    ) -> Result<(), StreamError> {
        let started = Instant::now();
        let now = twin_eventlog::now_ms();
        metrics::histogram!("twin_stream_batch_size").record(batch.len() as f64);
        metrics::counter!("twin_stream_events_total", "stage" => "consumed")
            .increment(batch.len() as u64);
        let mut actions = Vec::new();
        let mut dead = Vec::new();
        let mut last: BTreeMap<u32, Position> = BTreeMap::new();
        for delivery in batch {
            last.insert(delivery.position.partition, delivery.position);
            match delivery.event {
                Ok(Event::Raw(raw)) => {
                    let cleaned = clean(&raw, now);
                    match self.chunker.chunk(&cleaned, now) {
                        Ok(chunks) => actions.push(Action::Project(Box::new(Projected {
                            raw,
                            position: delivery.position,
                            appended_at: delivery.timestamp_ms,
                            cleaned,
                            chunks,
                        }))),
                        Err(e) => dead.push((
                            "chunk_stage",
                            DeadLetter::new(
                                &self.topics.raw_documents,
                                delivery.position,
                                &delivery.key,
                                format!("chunk stage: {e}"),
                                twin_schemas::encode(&Event::Raw(raw)).unwrap_or_default(),
                            ),
                        )),
                    }
                }
                Ok(Event::Deleted(tombstone)) => {
                    actions.push(Action::Delete(tombstone.document_id, delivery.position))
                }
                Ok(other) => dead.push((
                    "unexpected_type",
                    DeadLetter::new(
                        &self.topics.raw_documents,
                        delivery.position,
                        &delivery.key,
                        format!("{} events do not belong on this topic", other.event_type()),
                        twin_schemas::encode(&other).unwrap_or_default(),
                    ),
                )),
                Err(bad) => dead.push((
                    "undecodable",
                    DeadLetter::new(
                        &bad.topic,
                        bad.position,
                        &delivery.key,
                        bad.reason.clone(),
                        bad.bytes.clone(),
                    ),
                )),
            }
        }

        // Embed every chunk of the batch at once.
        let texts: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Project(p) => Some(p.chunks.iter().map(|c| c.text.clone())),
                Action::Delete(..) => None,
            })
            .flatten()
            .collect();
        let vectors = self
            .embedder
            .embed_async(texts)
            .await
            .map_err(|e| StreamError::Embedding(e.to_string()))?;
        let mut vectors = vectors.into_iter();
        let embedded_at = twin_eventlog::now_ms();
        let mut cleaned_events = Vec::new();
        let mut chunk_events = Vec::new();
        let mut embedded_events = Vec::new();
        let mut documents = 0u64;
        let mut deleted = 0u64;
        for action in &actions {
            let p = match action {
                Action::Delete(document_id, position) => {
                    self.warehouse
                        .delete_document(document_id, log_position(*position))
                        .await?;
                    self.vectors
                        .delete_document(document_id)
                        .await
                        .map_err(vec_err)?;
                    deleted += 1;
                    continue;
                }
                Action::Project(p) => p,
            };
            let embedded: Vec<EmbeddedChunk> = p
                .chunks
                .iter()
                .map(|chunk| {
                    let embedding = vectors.next().unwrap_or_default();
                    EmbeddedChunk {
                        chunk: chunk.clone(),
                        model_id: self.embedder.model_id().to_string(),
                        dimension: embedding.len() as i32,
                        embedding,
                        embedded_at,
                    }
                })
                .collect();
            let at = log_position(p.position);
            self.warehouse.put_raw(&p.raw, at).await?;
            self.warehouse.put_cleaned(&p.cleaned, at).await?;
            self.warehouse
                .replace_chunks(&p.raw.id, &p.chunks, at)
                .await?;
            self.vectors
                .replace_document(p.raw.kind, &p.raw.id, &embedded)
                .await
                .map_err(vec_err)?;
            cleaned_events.push(Event::Cleaned(p.cleaned.clone()));
            chunk_events.extend(p.chunks.iter().cloned().map(Event::Chunk));
            stats.chunks += embedded.len() as u64;
            embedded_events.extend(embedded.into_iter().map(Event::Embedded));
            documents += 1;
        }
        stats.documents += documents;
        stats.deleted += deleted;
        for (topic, events) in [
            (&self.topics.cleaned_documents, &cleaned_events),
            (&self.topics.chunks, &chunk_events),
            (&self.topics.embedded_chunks, &embedded_events),
        ] {
            if !events.is_empty() {
                publish(self.log.as_ref(), topic, events)
                    .await
                    .map_err(log_err)?;
            }
        }
        for (cause, letter) in &dead {
            metrics::counter!("twin_stream_dead_letters_total", "cause" => *cause).increment(1);
            warn!(topic = %letter.source_topic, partition = letter.partition, offset = letter.offset,
                  reason = %letter.reason, "event sent to the dead-letter topic");
            letter
                .send(self.log.as_ref(), &self.topics.dead_letters)
                .await?;
        }
        stats.dead_letters += dead.len() as u64;

        // Searchable now: the lag from each event's append.
        let searchable_at = twin_eventlog::now_ms();
        for action in &actions {
            if let Action::Project(p) = action {
                let lag = (searchable_at - p.appended_at).max(0) as f64 / 1000.0;
                metrics::histogram!("twin_stream_end_to_end_seconds").record(lag);
            }
        }
        // Both sinks acknowledged: now the offsets may move.
        for position in last.values() {
            consumer.commit(*position).await.map_err(log_err)?;
            if let Some(slot) = reached.get_mut(position.partition as usize) {
                *slot = Some(slot.map_or(position.offset, |s| s.max(position.offset)));
            }
        }
        for (stage, n) in [
            ("cleaned", cleaned_events.len() as u64),
            ("chunked", chunk_events.len() as u64),
            ("embedded", embedded_events.len() as u64),
            ("deleted", deleted),
        ] {
            metrics::counter!("twin_stream_events_total", "stage" => stage).increment(n);
        }
        metrics::histogram!("twin_stream_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

fn log_position(p: Position) -> LogPosition {
    LogPosition {
        partition: p.partition,
        offset: p.offset,
    }
}

fn log_err(e: twin_eventlog::LogError) -> StreamError {
    StreamError::Log(e.to_string())
}

fn vec_err(e: twin_vectorstore::VectorStoreError) -> StreamError {
    StreamError::Vectors(e.to_string())
}
