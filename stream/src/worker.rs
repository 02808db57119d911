//! The stream worker: consumes raw-document events and keeps the projections current.
//!
//! For each batch of events: count the documents' blocks for template detection, clean, chunk
//! and embed every document (all chunks of the batch in one embedding call, batched by token
//! budget), publish the cleaned documents, chunks and embedded chunks to their topics, write the
//! warehouse and the vector store, record the positions applied, and only then commit the
//! batch's offsets. A crash anywhere before the commit replays the batch, and every write is an
//! idempotent upsert, so the result is the same as without the crash.
//!
//! Writes that fail in a way a retry can help (a broker or store unreachable, overloaded, timed
//! out) are tried again, the whole batch's writes at once (they are idempotent), with doubling
//! waits, counted in `twin_stream_write_retries_total`; a permanent error, or one that outlasts
//! the tries, stops the worker without committing: it is retried on restart.
//!
//! An event that cannot be decoded, or that a stage rejects, goes to the dead-letter topic with
//! the reason and its original bytes (see [`crate::dlq`]); the worker goes on.
//!
//! A rebuild (`--rebuild`) first moves the group's committed offsets back to the beginning, and
//! only then drops the projections: a rebuild killed at any point resumes, on the next start,
//! from wherever its commits reached, and ends with the full projections.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use tokio::sync::Mutex;
use tracing::{info, warn};
use twin_config::{StreamConfig, TemplateConfig, TopicNames};
use twin_embedding::Embedder;
use twin_eventlog::{publish, Delivery, EventConsumer, EventLog, Position, StartFrom};
use twin_schemas::{Chunk, CleanedDocument, EmbeddedChunk, Event, RawDocument};
use twin_vectorstore::VectorStore;
use twin_warehouse::{DocumentFilter, Warehouse};

use crate::clean::clean_without;
use crate::dlq::DeadLetter;
use crate::template::Templates;
use crate::{Chunker, StreamError};

/// The consumer group of stream workers on the raw-documents topic.
pub const DEFAULT_GROUP: &str = "twin-stream";

/// Empty polls (of about half a second each) after which a `--once` run that received nothing
/// concludes there is nothing to do.
const IDLE_POLLS_WHEN_NOTHING_CAME: u32 = 4;

/// The same when the warehouse has not applied the topic up to its end: there is work, and the
/// group join (after a crash, the broker first waits out the dead member's session) is slow.
const IDLE_POLLS_WHEN_WORK_IS_LEFT: u32 = 120;

/// Longest wait between two tries of a batch's writes.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
            batch_size: StreamConfig::default().batch_size,
        }
    }
}

/// How transient write failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (1: no retry).
    pub attempts: u32,
    /// Wait before the second try; doubled for each further one, up to 10 s.
    pub first_backoff: Duration,
}

impl RetryPolicy {
    /// The policy of a `[stream]` configuration.
    pub fn of(config: &StreamConfig) -> Self {
        Self {
            attempts: config.write_attempts.max(1),
            first_backoff: Duration::from_millis(config.write_backoff_ms),
        }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::of(&StreamConfig::default())
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
    /// Documents cleaned again because their source's template changed.
    pub recleaned: u64,
    /// Batches whose writes were tried again after a transient failure.
    pub retried_batches: u64,
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
    /// How failed writes are retried.
    pub retry: RetryPolicy,
    /// Template detection rules.
    pub template_rules: TemplateConfig,
    /// Block counts of every document seen, for template detection (loaded when a run starts).
    templates: Mutex<Templates>,
    /// Flush the vector store before committing (with `log.embedded.fsync`): then a power cut
    /// loses nothing the log counts as handled.
    pub durable: bool,
    /// Documents whose stored cleaning does not follow the templates loaded at the start (a
    /// run killed between a batch's documents and the cleaning again they caused): cleaned
    /// again with the next batch.
    stale: Mutex<BTreeSet<String>>,
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
    /// When the raw event was appended (ms since the epoch), for the end-to-end lag; `None` for
    /// a document cleaned again from the warehouse.
    appended_at: Option<i64>,
    cleaned: CleanedDocument,
    chunks: Vec<Chunk>,
    /// Blocks dropped as template.
    template_blocks: usize,
}

/// Everything a batch writes, computed before the first write so that a retry repeats writes
/// only.
struct Writes {
    actions: Vec<Action>,
    embedded: Vec<Vec<EmbeddedChunk>>,
    dead: Vec<(&'static str, DeadLetter)>,
    last: BTreeMap<u32, Position>,
}

impl Pipeline {
    /// Everything the configuration names: the log, the embedding model (pulled and exported on
    /// first use), the warehouse and the vector store (their tables and collections created).
    pub async fn open(config: &twin_config::TwinConfig) -> Result<Self, StreamError> {
        let log = twin_eventlog::open(config)?;
        let embedder = Arc::new(twin_embedding::open(&config.embedding, &config.data_dir).await?);
        let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
        let vectors =
            twin_vectorstore::open(&config.vectors, &config.data_dir, embedder.dimension()).await?;
        let chunker = Chunker::new(
            embedder.tokenizer().clone(),
            config.chunking.clone(),
            config.embedding.max_tokens,
        )?;
        let mut pipeline = Self::new(
            log,
            config.topics.clone(),
            warehouse,
            vectors,
            embedder,
            chunker,
            &config.stream,
        );
        pipeline.durable = config.log.embedded.fsync;
        Ok(pipeline)
    }

    /// A pipeline over stores opened elsewhere (tests put a store in front of another here).
    pub fn new(
        log: Arc<dyn EventLog>,
        topics: TopicNames,
        warehouse: Arc<dyn Warehouse>,
        vectors: Arc<dyn VectorStore>,
        embedder: Arc<Embedder>,
        chunker: Chunker,
        config: &StreamConfig,
    ) -> Self {
        Self {
            log,
            topics,
            warehouse,
            vectors,
            embedder,
            chunker,
            retry: RetryPolicy::of(config),
            template_rules: config.templates.clone(),
            templates: Mutex::new(Templates::new(config.templates.clone())),
            stale: Mutex::new(BTreeSet::new()),
            durable: false,
        }
    }

    /// Run until `shutdown` resolves, or, with `until_caught_up`, until the topic is handled.
    pub async fn run(
        &self,
        options: &RunOptions,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<RunStats, StreamError> {
        let topic = self.topics.raw_documents.as_str();
        for t in self.topics.all() {
            self.log.ensure_topic(t).await?;
        }
        let start = if options.rebuild {
            StartFrom::Beginning
        } else {
            StartFrom::Committed
        };
        if options.rebuild {
            // Before anything is dropped: a replay of a topic the broker has truncated would
            // rebuild projections without the documents it deleted.
            let firsts = self.log.start_offsets(topic).await?;
            if let Some((partition, &first)) = firsts.iter().enumerate().find(|(_, &f)| f > 0) {
                return Err(twin_eventlog::LogError::Truncated {
                    topic: topic.to_string(),
                    partition: partition as u32,
                    first,
                }
                .into());
            }
        }
        let targets = self.log.end_offsets(topic).await?;
        let inner = self.log.consumer(topic, &options.group, start).await?;
        let mut consumer = EventConsumer::new(inner, topic);
        if options.rebuild {
            // Durable first: once the group points at the beginning, a crash at any later
            // point of the rebuild restarts it instead of leaving empty projections behind.
            consumer.rewind().await?;
            info!("rebuild: the group starts from the beginning; dropping the warehouse and the vector store");
            self.warehouse.drop_all().await?;
            self.warehouse.ensure_schema().await?;
            self.vectors.drop_all().await?;
            self.vectors
                .ensure_collections(self.embedder.dimension())
                .await?;
        }
        self.load_templates().await?;
        // Partitions whose events the warehouse has not all applied: a `--once` run waits for
        // them (a Kafka group join after a crash hands partitions over only once the dead
        // member's session expires), instead of stopping when the others are done.
        let applied = self.warehouse.applied().await?;
        if !options.rebuild {
            // The group never commits past what the projections recorded: if it stands
            // further, the projections lost writes (a power cut without fsync, an old backup).
            let committed = self.log.committed_offsets(topic, &options.group).await?;
            for (p, &next) in committed.iter().enumerate() {
                let held = applied
                    .iter()
                    .find(|a| a.partition as usize == p)
                    .map_or(0, |a| a.offset + 1);
                if next > held {
                    return Err(StreamError::ProjectionsBehind {
                        group: options.group.clone(),
                        partition: p as u32,
                        committed: next,
                        held,
                    });
                }
            }
        }
        let work_left: Vec<bool> = targets
            .iter()
            .enumerate()
            .map(|(p, target)| {
                *target > 0
                    && applied
                        .iter()
                        .find(|a| a.partition as usize == p)
                        .is_none_or(|a| a.offset + 1 < *target)
            })
            .collect();
        // Where the group stands per partition; caught up when every partition reached its target.
        let mut reached: Vec<Option<u64>> = vec![None; targets.len()];
        let mut stats = RunStats::default();
        let mut idle_polls = 0;
        // Points written since the vector store last built its index.
        let mut unindexed = false;
        tokio::pin!(shutdown);
        loop {
            let done = |p: usize| reached[p].is_some_and(|d| d + 1 >= targets[p]);
            let caught_up = (0..targets.len()).all(|p| targets[p] == 0 || done(p));
            if options.until_caught_up && caught_up {
                break;
            }
            let batch = tokio::select! {
                _ = &mut shutdown => break,
                batch = next_batch(&mut consumer, options.batch_size) => batch?,
            };
            if batch.is_empty() {
                // Idle: a good moment for the embedded store to index what came.
                if unindexed {
                    self.index_vectors().await;
                    unindexed = false;
                }
                if options.until_caught_up {
                    idle_polls += 1;
                    let waiting_for_work = (0..targets.len()).any(|p| work_left[p] && !done(p));
                    let stop = if waiting_for_work {
                        // Work is left, but nothing comes: give up after a long while.
                        idle_polls >= IDLE_POLLS_WHEN_WORK_IS_LEFT
                    } else {
                        // Nothing available on any partition. Partitions that delivered reached
                        // their targets; the others had nothing past their committed offsets.
                        // When no partition delivered at all, give a slow group join a few idle
                        // polls first.
                        let delivered_done =
                            (0..targets.len()).all(|p| reached[p].is_none() || done(p));
                        let any_delivered = reached.iter().any(Option::is_some);
                        let empty_topic = targets.iter().all(|t| *t == 0);
                        delivered_done
                            && (any_delivered
                                || empty_topic
                                || idle_polls >= IDLE_POLLS_WHEN_NOTHING_CAME)
                    };
                    if stop {
                        if waiting_for_work {
                            let partitions: Vec<u32> = (0..targets.len())
                                .filter(|&p| work_left[p] && !done(p))
                                .map(|p| p as u32)
                                .collect();
                            return Err(StreamError::NotCaughtUp { partitions });
                        }
                        break;
                    }
                }
                continue;
            }
            idle_polls = 0;
            self.handle(batch, &mut consumer, &mut reached, &mut stats)
                .await?;
            unindexed = true;
        }
        if unindexed {
            self.index_vectors().await;
        }
        Ok(stats)
    }

    /// Build the vector store's search index of what was written; a failure is logged, not
    /// fatal (search still works, by scanning).
    async fn index_vectors(&self) {
        let started = std::time::Instant::now();
        match self.vectors.optimize().await {
            Ok(true) => tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                "vector store indexed"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not index the vector store"),
        }
    }

    /// Count the blocks of every document in the warehouse, for template detection.
    async fn load_templates(&self) -> Result<(), StreamError> {
        let mut templates = Templates::new(self.template_rules.clone());
        if self.template_rules.enabled {
            let mut documents = twin_warehouse::scan_raw(
                self.warehouse.as_ref(),
                twin_warehouse::AsOf::Latest,
                DocumentFilter::all(),
            );
            while let Some(stored) = documents.try_next().await? {
                templates.observe(&stored.value.id.clone(), Some(&stored.value));
            }
            drop(documents);
            // A run killed after some documents of a batch were written, but before the
            // documents their templates changed were cleaned again, left those stale: the
            // counts above include the new documents, so their redelivery changes nothing.
            let cleaned: BTreeMap<String, String> = twin_warehouse::scan_cleaned(
                self.warehouse.as_ref(),
                twin_warehouse::AsOf::Latest,
                DocumentFilter::all(),
            )
            .map_ok(|c| (c.value.id, c.value.content_hash))
            .try_collect()
            .await?;
            let mut stale = BTreeSet::new();
            let mut documents = twin_warehouse::scan_raw(
                self.warehouse.as_ref(),
                twin_warehouse::AsOf::Latest,
                DocumentFilter::all(),
            );
            while let Some(stored) = documents.try_next().await? {
                let raw = stored.value;
                let Some(hash) = cleaned.get(&raw.id) else {
                    continue;
                };
                let now = clean_without(&raw, 0, &templates.template_blocks(&raw));
                if now.content_hash != *hash {
                    stale.insert(raw.id);
                }
            }
            if !stale.is_empty() {
                info!(
                    documents = stale.len(),
                    "cleaning documents again whose templates changed before the last run stopped"
                );
            }
            *self.stale.lock().await = stale;
        }
        *self.templates.lock().await = templates;
        Ok(())
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
        metrics::histogram!("twin_stream_batch_size").record(batch.len() as f64);
        metrics::counter!("twin_stream_events_total", "stage" => "consumed")
            .increment(batch.len() as u64);
        let writes = self.stages(batch).await?;
        let mut attempt = 1;
        let mut backoff = self.retry.first_backoff;
        loop {
            match self.write(&writes).await {
                Ok(()) => break,
                Err(e) if e.is_retryable() && attempt < self.retry.attempts => {
                    if attempt == 1 {
                        stats.retried_batches += 1;
                    }
                    metrics::counter!("twin_stream_write_retries_total").increment(1);
                    warn!(attempt, error = %e, wait_ms = backoff.as_millis() as u64,
                          "a batch's writes failed transiently; trying them again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
                Err(e) if e.is_retryable() => {
                    return Err(StreamError::RetriesExhausted {
                        attempts: attempt,
                        source: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }

        // Searchable now: the lag from each event's append.
        let searchable_at = twin_eventlog::now_ms();
        let mut counts = BTreeMap::from([
            ("cleaned", 0u64),
            ("chunked", 0),
            ("embedded", 0),
            ("deleted", 0),
        ]);
        for (action, embedded) in writes.actions.iter().zip(&writes.embedded) {
            match action {
                Action::Delete(..) => {
                    stats.deleted += 1;
                    *counts.entry("deleted").or_default() += 1;
                }
                Action::Project(p) => {
                    match p.appended_at {
                        Some(appended_at) => {
                            stats.documents += 1;
                            let lag = (searchable_at - appended_at).max(0) as f64 / 1000.0;
                            metrics::histogram!("twin_stream_end_to_end_seconds").record(lag);
                        }
                        None => stats.recleaned += 1,
                    }
                    stats.chunks += embedded.len() as u64;
                    *counts.entry("cleaned").or_default() += 1;
                    *counts.entry("chunked").or_default() += p.chunks.len() as u64;
                    *counts.entry("embedded").or_default() += embedded.len() as u64;
                    if p.template_blocks > 0 {
                        metrics::counter!("twin_stream_template_blocks_dropped_total",
                                          "platform" => p.raw.platform.clone())
                        .increment(p.template_blocks as u64);
                    }
                }
            }
        }
        stats.dead_letters += writes.dead.len() as u64;
        for (cause, _) in &writes.dead {
            metrics::counter!("twin_stream_dead_letters_total", "cause" => *cause).increment(1);
        }
        if self.durable {
            self.vectors.flush().await?;
        }
        // Both sinks acknowledged and the positions are recorded: now the offsets may move.
        for position in writes.last.values() {
            consumer.commit(*position).await?;
            if let Some(slot) = reached.get_mut(position.partition as usize) {
                *slot = Some(slot.map_or(position.offset, |s| s.max(position.offset)));
            }
        }
        for (stage, n) in counts {
            metrics::counter!("twin_stream_events_total", "stage" => stage).increment(n);
        }
        metrics::histogram!("twin_stream_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// The stages, without any write: templates counted, documents cleaned, chunked and
    /// embedded, dead letters made.
    async fn stages(&self, batch: Vec<Delivery>) -> Result<Writes, StreamError> {
        // A newer producer's event: none of the batch is handled or committed here.
        if let Some((bad, fingerprint)) = batch.iter().find_map(|d| {
            let bad = d.event.as_ref().err()?;
            Some((bad, bad.unknown_schema?))
        }) {
            return Err(StreamError::UnknownSchema {
                topic: bad.topic.clone(),
                partition: bad.position.partition,
                offset: bad.position.offset,
                fingerprint,
            });
        }
        let now = twin_eventlog::now_ms();
        let mut last: BTreeMap<u32, Position> = BTreeMap::new();
        let mut dead = Vec::new();
        let mut events = Vec::new();
        for delivery in batch {
            last.insert(delivery.position.partition, delivery.position);
            let letter = |topic: &str, cause: &'static str, reason: String, d: &Delivery| {
                (
                    cause,
                    DeadLetter::new(topic, d.position, &d.key, reason, d.payload.clone()),
                )
            };
            match &delivery.event {
                Ok(Event::Raw(_)) | Ok(Event::Deleted(_)) => events.push(delivery),
                Ok(other) => dead.push(letter(
                    &self.topics.raw_documents,
                    "unexpected_type",
                    format!("{} events do not belong on this topic", other.event_type()),
                    &delivery,
                )),
                Err(bad) => dead.push(letter(
                    &bad.topic,
                    "undecodable",
                    bad.reason.clone(),
                    &delivery,
                )),
            }
        }

        // Count the batch's documents first, so each is cleaned with everything seen; documents
        // seen before whose template changed are cleaned again.
        let mut templates = self.templates.lock().await;
        // Each document of the batch, with the position of its last event in it.
        let mut in_batch = BTreeMap::new();
        // Each document cleaned again, with the event that changed its template: the new
        // versions carry that event's position, so snapshots pinned before it keep the old ones.
        let mut again = BTreeMap::new();
        for delivery in &events {
            let changed = match &delivery.event {
                Ok(Event::Raw(raw)) => {
                    in_batch.insert(raw.id.clone(), delivery.position);
                    templates.observe(&raw.id, Some(raw))
                }
                Ok(Event::Deleted(tombstone)) => {
                    in_batch.insert(tombstone.document_id.clone(), delivery.position);
                    templates.observe(&tombstone.document_id, None)
                }
                _ => Default::default(),
            };
            for id in changed {
                again.entry(id).or_insert(delivery.position);
            }
        }
        // Documents left stale by a run that stopped are cleaned again with this batch.
        if let Some(first) = events.first() {
            for id in std::mem::take(&mut *self.stale.lock().await) {
                again.entry(id).or_insert(first.position);
            }
        }

        let mut actions = Vec::new();
        for delivery in events {
            match delivery.event {
                Ok(Event::Raw(raw)) => {
                    let project = self.project(
                        &templates,
                        raw,
                        delivery.position,
                        Some(delivery.timestamp_ms),
                        now,
                    );
                    match project {
                        Ok(p) => actions.push(Action::Project(Box::new(p))),
                        Err(e) => dead.push((
                            "chunk_stage",
                            DeadLetter::new(
                                &self.topics.raw_documents,
                                delivery.position,
                                &delivery.key,
                                format!("chunk stage: {e}"),
                                delivery.payload,
                            ),
                        )),
                    }
                }
                Ok(Event::Deleted(tombstone)) => {
                    actions.push(Action::Delete(tombstone.document_id, delivery.position))
                }
                _ => {}
            }
        }
        if !again.is_empty() {
            info!(
                documents = again.len(),
                "a source's template changed; cleaning its documents again"
            );
            let mut stored = twin_warehouse::scan_raw(
                self.warehouse.as_ref(),
                twin_warehouse::AsOf::Latest,
                DocumentFilter::documents(again.keys()),
            );
            while let Some(doc) = stored.try_next().await? {
                // A document of the batch is cleaned from its event, with these templates,
                // unless the warehouse already holds that very event (delivered again after a
                // crash): its writes are then skipped as applied, so it is cleaned again here.
                if in_batch
                    .get(&doc.value.id)
                    .is_some_and(|last| *last != doc.position)
                {
                    continue;
                }
                let cause = again.get(&doc.value.id).copied().unwrap_or(doc.position);
                match self.project(&templates, doc.value, cause, None, now) {
                    Ok(p) => actions.push(Action::Project(Box::new(p))),
                    // It was chunked before; the same text cannot fail now unless its template
                    // changed it, and then the earlier projection stays.
                    Err(e) => {
                        warn!(error = %e, "a document could not be cleaned again; its projection stays")
                    }
                }
            }
        }
        drop(templates);

        // Embed every chunk of the batch at once.
        let texts: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Project(p) => Some(p.chunks.iter().map(|c| c.text.clone())),
                Action::Delete(..) => None,
            })
            .flatten()
            .collect();
        let vectors = self.embedder.embed_async(texts).await?;
        let embedded = self.pair(&actions, vectors)?;
        Ok(Writes {
            actions,
            embedded,
            dead,
            last,
        })
    }

    /// Clean and chunk one document.
    fn project(
        &self,
        templates: &Templates,
        raw: RawDocument,
        position: Position,
        appended_at: Option<i64>,
        now: i64,
    ) -> Result<Projected, StreamError> {
        let template = templates.template_blocks(&raw);
        let template_blocks = template.iter().filter(|t| **t).count();
        let cleaned = clean_without(&raw, now, &template);
        let chunks = self.chunker.chunk(&cleaned, now)?;
        Ok(Projected {
            raw,
            position,
            appended_at,
            cleaned,
            chunks,
            template_blocks,
        })
    }

    /// Give each chunk its vector, in order; a count that does not match is an error.
    fn pair(
        &self,
        actions: &[Action],
        vectors: Vec<Vec<f32>>,
    ) -> Result<Vec<Vec<EmbeddedChunk>>, StreamError> {
        let chunks: Vec<&[Chunk]> = actions
            .iter()
            .map(|a| match a {
                Action::Project(p) => p.chunks.as_slice(),
                Action::Delete(..) => &[],
            })
            .collect();
        let embedded_at = twin_eventlog::now_ms();
        pair_vectors(&chunks, vectors, self.embedder.model_id(), embedded_at)
    }

    /// Every write of a batch, in log order; safe to repeat (every write is idempotent).
    async fn write(&self, writes: &Writes) -> Result<(), StreamError> {
        let mut cleaned_events = Vec::new();
        let mut chunk_events = Vec::new();
        let mut embedded_events = Vec::new();
        for (action, embedded) in writes.actions.iter().zip(&writes.embedded) {
            match action {
                Action::Delete(document_id, position) => {
                    self.warehouse
                        .delete_document(document_id, *position)
                        .await?;
                    if self.stale(document_id, *position).await? {
                        continue;
                    }
                    self.vectors.delete_document(document_id).await?;
                }
                Action::Project(p) => {
                    if p.appended_at.is_some() {
                        self.warehouse.put_raw(&p.raw, p.position).await?;
                        self.warehouse.put_cleaned(&p.cleaned, p.position).await?;
                        self.warehouse
                            .replace_chunks(&p.raw.id, &p.chunks, p.position)
                            .await?;
                    } else {
                        // Cleaned again: its raw text has not changed.
                        self.warehouse
                            .put_recleaned(&p.cleaned, &p.chunks, p.position)
                            .await?;
                    }
                    if self.stale(&p.raw.id, p.position).await? {
                        continue;
                    }
                    self.vectors
                        .replace_document(p.raw.kind, &p.raw.id, embedded)
                        .await?;
                    cleaned_events.push(Event::Cleaned(p.cleaned.clone()));
                    chunk_events.extend(p.chunks.iter().cloned().map(Event::Chunk));
                    embedded_events.extend(embedded.iter().cloned().map(Event::Embedded));
                }
            }
        }
        for (topic, events) in [
            (&self.topics.cleaned_documents, &cleaned_events),
            (&self.topics.chunks, &chunk_events),
            (&self.topics.embedded_chunks, &embedded_events),
        ] {
            if !events.is_empty() {
                publish(self.log.as_ref(), topic, events).await?;
            }
        }
        for (_, letter) in &writes.dead {
            warn!(topic = %letter.source_topic, partition = letter.partition, offset = letter.offset,
                  reason = %letter.reason, "event sent to the dead-letter topic");
            letter
                .send(self.log.as_ref(), &self.topics.dead_letters)
                .await?;
        }
        let positions: Vec<Position> = writes.last.values().copied().collect();
        self.warehouse.record_applied(&positions).await?;
        Ok(())
    }
}

impl Pipeline {
    /// Whether a newer event of the document is already in the warehouse: the vector store,
    /// which keeps no versions, must not get this older one's points (the warehouse keeps
    /// versions and ignores a late write by itself).
    async fn stale(&self, document_id: &str, at: Position) -> Result<bool, StreamError> {
        let stale = self.warehouse.superseded(document_id, at).await?;
        if stale {
            warn!(document_id, partition = at.partition, offset = at.offset,
                  "a newer event of the document is applied already: its vectors are left as they are");
            metrics::counter!("twin_stream_stale_writes_skipped_total").increment(1);
        }
        Ok(stale)
    }
}

/// Pair each document's chunks with their vectors, in order: the embedder must give exactly one
/// vector per chunk, or the batch fails (an empty or misplaced vector would be searchable
/// nonsense).
pub fn pair_vectors(
    chunks: &[&[Chunk]],
    vectors: Vec<Vec<f32>>,
    model_id: &str,
    embedded_at: i64,
) -> Result<Vec<Vec<EmbeddedChunk>>, StreamError> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    if vectors.len() != total {
        return Err(StreamError::VectorCount {
            chunks: total,
            vectors: vectors.len(),
        });
    }
    let mut vectors = vectors.into_iter();
    Ok(chunks
        .iter()
        .map(|document| {
            document
                .iter()
                .zip(vectors.by_ref())
                .map(|(chunk, embedding)| EmbeddedChunk {
                    chunk: chunk.clone(),
                    model_id: model_id.to_string(),
                    dimension: embedding.len() as i32,
                    embedding,
                    embedded_at,
                })
                .collect()
        })
        .collect())
}

/// Up to `max` deliveries: waits for the first, then takes what is already there.
async fn next_batch(
    consumer: &mut EventConsumer,
    max: usize,
) -> Result<Vec<Delivery>, StreamError> {
    let mut batch = Vec::new();
    if let Some(first) = consumer.next(Duration::from_millis(500)).await? {
        batch.push(first);
        while batch.len() < max {
            match consumer.next(Duration::from_millis(5)).await? {
                Some(d) => batch.push(d),
                None => break,
            }
        }
    }
    Ok(batch)
}
