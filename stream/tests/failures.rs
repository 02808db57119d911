//! The stream worker when things go wrong: transient write failures retried with nothing lost
//! or duplicated, permanent ones stopping the worker without committing, an embedder that
//! miscounts refused, a document the chunk stage refuses dead-lettered with its original bytes.
//! (Apart from `worker.rs`, whose test reads the process's metrics.)

use std::sync::atomic::{AtomicU32, Ordering};

use twin_config::{StreamConfig, TwinConfig};
use twin_eventlog::publish;
use twin_schemas::{Chunk, CleanedDocument, DocumentKind, Event, Position, RawDocument};
use twin_stream::worker::pair_vectors;
use twin_stream::{dlq, Pipeline, RunOptions, StreamError};
use twin_testkit::documents::substack_article as article;
use twin_vectorstore::SearchFilter;
use twin_warehouse::{
    AsOf, Breakdown, ChunkCursor, Compaction, Counts, DatasetRecord, DocumentFilter, MetricRow,
    RunRecord, SampleRow, Snapshot, Stored, StoredChunk, Warehouse, WarehouseError,
};

fn config(dir: &std::path::Path) -> TwinConfig {
    TwinConfig {
        data_dir: dir.to_path_buf(),
        ..TwinConfig::default()
    }
}

fn once() -> RunOptions {
    RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    }
}

/// The real SQLite warehouse behind a switch that makes its writes fail first: `failures`
/// times with `error`, then as the warehouse does. Not a mock: every read and every write that
/// goes through reaches SQLite.
struct FailingFirst {
    inner: std::sync::Arc<dyn Warehouse>,
    failures: AtomicU32,
    retryable: bool,
}

impl FailingFirst {
    fn check(&self) -> Result<(), WarehouseError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left == 0 {
            return Ok(());
        }
        self.failures.store(left - 1, Ordering::SeqCst);
        Err(if self.retryable {
            WarehouseError::Io {
                path: "warehouse".into(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "the server timed out"),
            }
        } else {
            WarehouseError::Invalid("a permanent failure".into())
        })
    }
}

#[async_trait::async_trait]
impl Warehouse for FailingFirst {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ensure_schema(&self) -> Result<(), WarehouseError> {
        self.inner.ensure_schema().await
    }
    async fn put_raw(&self, doc: &RawDocument, at: Position) -> Result<(), WarehouseError> {
        self.inner.put_raw(doc, at).await
    }
    async fn put_cleaned(&self, doc: &CleanedDocument, at: Position) -> Result<(), WarehouseError> {
        self.inner.put_cleaned(doc, at).await
    }
    async fn replace_chunks(
        &self,
        document_id: &str,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<(), WarehouseError> {
        // Fails after the raw and cleaned rows of the batch's first document went in: the
        // retry writes them again.
        self.check()?;
        self.inner.replace_chunks(document_id, chunks, at).await
    }
    async fn put_recleaned(
        &self,
        doc: &CleanedDocument,
        chunks: &[Chunk],
        at: Position,
    ) -> Result<(), WarehouseError> {
        self.inner.put_recleaned(doc, chunks, at).await
    }
    async fn delete_document(&self, document_id: &str, at: Position) -> Result<(), WarehouseError> {
        self.inner.delete_document(document_id, at).await
    }
    async fn superseded(&self, document_id: &str, at: Position) -> Result<bool, WarehouseError> {
        self.inner.superseded(document_id, at).await
    }
    async fn record_applied(&self, positions: &[Position]) -> Result<(), WarehouseError> {
        self.inner.record_applied(positions).await
    }
    async fn applied(&self) -> Result<Vec<Position>, WarehouseError> {
        self.inner.applied().await
    }
    async fn raw(&self, id: &str) -> Result<Option<RawDocument>, WarehouseError> {
        self.inner.raw(id).await
    }
    async fn cleaned(&self, id: &str) -> Result<Option<CleanedDocument>, WarehouseError> {
        self.inner.cleaned(id).await
    }
    async fn chunks(&self, document_id: &str) -> Result<Vec<StoredChunk>, WarehouseError> {
        self.inner.chunks(document_id).await
    }
    async fn raw_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<RawDocument>>, WarehouseError> {
        self.inner.raw_page(as_of, filter, after, limit).await
    }
    async fn cleaned_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Stored<CleanedDocument>>, WarehouseError> {
        self.inner.cleaned_page(as_of, filter, after, limit).await
    }
    async fn chunk_page(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
        after: Option<&ChunkCursor>,
        limit: usize,
    ) -> Result<Vec<StoredChunk>, WarehouseError> {
        self.inner.chunk_page(as_of, filter, after, limit).await
    }
    async fn counts(
        &self,
        as_of: &AsOf,
        filter: &DocumentFilter,
    ) -> Result<Counts, WarehouseError> {
        self.inner.counts(as_of, filter).await
    }
    async fn breakdown(&self, as_of: &AsOf) -> Result<Vec<Breakdown>, WarehouseError> {
        self.inner.breakdown(as_of).await
    }
    async fn compact(&self, floor: &[Position]) -> Result<Compaction, WarehouseError> {
        self.inner.compact(floor).await
    }
    async fn drop_all(&self) -> Result<(), WarehouseError> {
        self.inner.drop_all().await
    }
    async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<(), WarehouseError> {
        self.inner.put_snapshot(snapshot).await
    }
    async fn snapshots(&self) -> Result<Vec<Snapshot>, WarehouseError> {
        self.inner.snapshots().await
    }
    async fn delete_snapshot(&self, id: &str) -> Result<bool, WarehouseError> {
        self.inner.delete_snapshot(id).await
    }
    async fn put_dataset(
        &self,
        dataset: &DatasetRecord,
        samples: &[SampleRow],
    ) -> Result<(), WarehouseError> {
        self.inner.put_dataset(dataset, samples).await
    }
    async fn datasets(&self) -> Result<Vec<DatasetRecord>, WarehouseError> {
        self.inner.datasets().await
    }
    async fn dataset_samples(&self, id: &str) -> Result<Vec<SampleRow>, WarehouseError> {
        self.inner.dataset_samples(id).await
    }
    async fn delete_dataset(&self, id: &str) -> Result<bool, WarehouseError> {
        self.inner.delete_dataset(id).await
    }

    async fn put_run(&self, run: &RunRecord) -> Result<(), WarehouseError> {
        self.inner.put_run(run).await
    }

    async fn runs(&self) -> Result<Vec<RunRecord>, WarehouseError> {
        self.inner.runs().await
    }

    async fn delete_run(&self, id: &str) -> Result<bool, WarehouseError> {
        self.inner.delete_run(id).await
    }

    async fn put_run_metrics(&self, rows: &[MetricRow]) -> Result<(), WarehouseError> {
        self.inner.put_run_metrics(rows).await
    }

    async fn run_metrics(&self, run_id: &str) -> Result<Vec<MetricRow>, WarehouseError> {
        self.inner.run_metrics(run_id).await
    }

    async fn put_traces(&self, rows: &[twin_warehouse::TraceRow]) -> Result<(), WarehouseError> {
        self.inner.put_traces(rows).await
    }

    async fn traces(
        &self,
        since: i64,
        limit: usize,
    ) -> Result<Vec<twin_warehouse::TraceRow>, WarehouseError> {
        self.inner.traces(since, limit).await
    }
}

/// The pipeline of `config` with its warehouse behind a [`FailingFirst`].
async fn failing_pipeline(config: &TwinConfig, failures: u32, retryable: bool) -> Pipeline {
    let open = Pipeline::open(config).await.expect("pipeline");
    let warehouse = std::sync::Arc::new(FailingFirst {
        inner: open.warehouse.clone(),
        failures: AtomicU32::new(failures),
        retryable,
    });
    Pipeline::new(
        open.log.clone(),
        open.topics.clone(),
        warehouse,
        open.vectors.clone(),
        open.embedder.clone(),
        open.chunker.clone(),
        &StreamConfig {
            write_backoff_ms: 10,
            ..config.stream.clone()
        },
    )
}

fn three_articles() -> Vec<RawDocument> {
    ["retry-a", "retry-b", "retry-c"]
        .iter()
        .map(|slug| {
            article(
                slug,
                &[&format!(
                    "The {slug} article talks about retries after a timeout."
                )],
            )
        })
        .collect()
}

/// Every document's chunks are in the warehouse once, and in the vector store once.
async fn assert_projected_once(pipeline: &Pipeline, docs: &[RawDocument]) {
    let mut total = 0;
    for doc in docs {
        let chunks = pipeline.warehouse.chunks(&doc.id).await.expect("chunks");
        assert!(!chunks.is_empty(), "{} has chunks", doc.id);
        let points = pipeline
            .vectors
            .count(
                DocumentKind::Article,
                &SearchFilter {
                    document_id: Some(doc.id.clone()),
                    ..Default::default()
                },
            )
            .await
            .expect("count");
        assert_eq!(
            points,
            chunks.len() as u64,
            "one point per chunk of {}",
            doc.id
        );
        total += chunks.len() as u64;
    }
    let counts = pipeline
        .warehouse
        .counts(&twin_warehouse::AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!(
        (counts.raw, counts.cleaned, counts.chunks),
        (docs.len() as u64, docs.len() as u64, total)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_sink_failure_is_retried_and_nothing_is_lost_or_duplicated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let pipeline = failing_pipeline(&config, 2, true).await;
    let docs = three_articles();
    let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
    publish(pipeline.log.as_ref(), &config.topics.raw_documents, &events)
        .await
        .expect("publish");
    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("the run goes through after the retries");
    assert_eq!(stats.retried_batches, 1, "{stats:?}");
    assert_eq!(stats.documents, 3);
    assert_projected_once(&pipeline, &docs).await;
    // Everything was committed: nothing left to do.
    let again = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("again");
    assert_eq!(again.documents, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_sink_failure_stops_the_worker_without_committing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let docs = three_articles();
    {
        let pipeline = failing_pipeline(&config, 1, false).await;
        let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
        publish(pipeline.log.as_ref(), &config.topics.raw_documents, &events)
            .await
            .expect("publish");
        let err = pipeline
            .run(&once(), std::future::pending())
            .await
            .expect_err("a permanent failure stops the run");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("a permanent failure"), "{err}");
    }
    // Nothing was committed: the next run projects every document.
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("run");
    assert_eq!(stats.documents, 3);
    assert_projected_once(&pipeline, &docs).await;
}

/// Security item 8 (rolling upgrades): an event written with a schema this build does not know
/// is a newer producer's, not a bad one: the worker stops without committing and without
/// dead-lettering, naming the fingerprint, so that an upgraded worker handles it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_stops_the_worker_without_committing_or_dead_lettering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.log.partitions = 1;
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let topic = config.topics.raw_documents.clone();
    let docs = three_articles();
    publish(
        pipeline.log.as_ref(),
        &topic,
        &[Event::Raw(docs[0].clone())],
    )
    .await
    .expect("publish");
    // The single-object encoding with a fingerprint no schema here has.
    let mut newer = vec![0xC3, 0x01];
    newer.extend_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    newer.extend_from_slice(b"\x02a newer event");
    pipeline
        .log
        .append(&topic, docs[1].id.as_bytes(), &newer)
        .await
        .expect("append");
    let err = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect_err("stops");
    assert!(
        matches!(err, StreamError::UnknownSchema { offset: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0123456789abcdef"), "{err}");
    assert!(
        dlq::list(pipeline.log.as_ref(), &config.topics.dead_letters)
            .await
            .expect("dlq")
            .is_empty(),
        "nothing dead-lettered"
    );
    let committed = pipeline
        .log
        .committed_offsets(&topic, twin_stream::worker::DEFAULT_GROUP)
        .await
        .expect("committed");
    assert!(
        committed[0] <= 1,
        "committed past the unknown event: {committed:?}"
    );
}

/// Security item 10: a worker whose consumer group stands past what the projections hold
/// (they lost writes: a power cut without fsync, an old backup) refuses to start, saying so,
/// instead of going on with documents missing for good; a rebuild restores them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_behind_the_committed_offsets_are_refused_until_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.log.partitions = 1;
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let docs = three_articles();
    let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
    publish(pipeline.log.as_ref(), &config.topics.raw_documents, &events)
        .await
        .expect("publish");
    assert_eq!(
        pipeline
            .run(&once(), std::future::pending())
            .await
            .expect("run")
            .documents,
        3
    );
    // The projections lose what they held; the log's group still says it handled it all.
    pipeline.warehouse.drop_all().await.expect("drop");
    pipeline.warehouse.ensure_schema().await.expect("schema");
    let err = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            StreamError::ProjectionsBehind {
                committed: 3,
                held: 0,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--rebuild"), "{err}");
    let rebuilt = pipeline
        .run(
            &RunOptions {
                rebuild: true,
                ..once()
            },
            std::future::pending(),
        )
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.documents, 3);
    pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("consistent again");
}

/// Security item 9: a worker still finishing an old batch (it lost its partitions to another)
/// does not overwrite the vectors of a newer version of a document with the old one's: the
/// vector store follows the log's order, as the warehouse does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_event_does_not_overwrite_a_newer_versions_vectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.log.partitions = 1;
    let current = Pipeline::open(&config).await.expect("pipeline");
    let v1 = article(
        "versions",
        &["The first version says kafka retries forever."],
    );
    let mut v2 = v1.clone();
    v2.content = vec![twin_schemas::ContentBlock::paragraph(
        "The second version says bounded retries with backoff.",
    )];
    v2.content_hash = twin_schemas::content_hash(&v2.content);
    publish(
        current.log.as_ref(),
        &config.topics.raw_documents,
        &[Event::Raw(v1.clone()), Event::Raw(v2.clone())],
    )
    .await
    .expect("publish");
    current
        .run(&once(), std::future::pending())
        .await
        .expect("run");
    // The late worker's batch: v1 at offset 0, processed after v2 (offset 1) was applied.
    let mut topics = config.topics.clone();
    topics.raw_documents = "raw-documents-late".into();
    publish(
        current.log.as_ref(),
        &topics.raw_documents,
        &[Event::Raw(v1.clone())],
    )
    .await
    .expect("publish");
    let late = Pipeline::new(
        current.log.clone(),
        topics,
        current.warehouse.clone(),
        current.vectors.clone(),
        current.embedder.clone(),
        current.chunker.clone(),
        &config.stream,
    );
    late.run(&once(), std::future::pending())
        .await
        .expect("late run");
    let query = current
        .embedder
        .embed(&["bounded retries with backoff"])
        .expect("embed")
        .remove(0);
    let only_this = SearchFilter {
        document_id: Some(v1.id.clone()),
        ..SearchFilter::default()
    };
    let hits = current
        .vectors
        .search(DocumentKind::Article, &query, 5, &only_this)
        .await
        .expect("search");
    assert!(!hits.is_empty());
    assert!(
        hits.iter()
            .all(|h| h.payload.text.contains("second version")),
        "the old version's points came back: {:?}",
        hits.iter().map(|h| &h.payload.text).collect::<Vec<_>>()
    );
}

#[test]
fn an_embedder_that_returns_another_number_of_vectors_is_an_error() {
    let chunks = twin_testkit::documents::chunks("count", &["One sentence.", "Another one."]);
    let err = pair_vectors(&[&chunks], vec![vec![0.5; 4]], "model", 1)
        .expect_err("fewer vectors than chunks");
    assert!(
        matches!(
            err,
            StreamError::VectorCount {
                chunks: 2,
                vectors: 1
            }
        ),
        "{err}"
    );
    let paired = pair_vectors(
        &[&chunks[..1], &[], &chunks[1..]],
        vec![vec![0.1; 4], vec![0.2; 4]],
        "model",
        1,
    )
    .expect("one vector each");
    assert_eq!(paired.iter().map(Vec::len).collect::<Vec<_>>(), [1, 0, 1]);
    assert_eq!(paired[2][0].embedding, vec![0.2; 4], "in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_the_chunk_stage_refuses_is_dead_lettered_with_its_original_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.chunking.max_document_bytes = 200;
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let huge = article(
        "huge",
        &[&"A long paragraph about chunk limits. ".repeat(20)],
    );
    let fine = article("fine", &["Short enough."]);
    let bytes = twin_schemas::encode(&Event::Raw(huge.clone())).expect("encode");
    let topic = &config.topics.raw_documents;
    pipeline
        .log
        .append(topic, huge.id.as_bytes(), &bytes)
        .await
        .expect("append");
    publish(pipeline.log.as_ref(), topic, &[Event::Raw(fine.clone())])
        .await
        .expect("publish");
    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("run");
    assert_eq!((stats.documents, stats.dead_letters), (1, 1), "{stats:?}");
    let letters = dlq::list(pipeline.log.as_ref(), &config.topics.dead_letters)
        .await
        .expect("dlq");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].1;
    assert_eq!(
        letter.payload().expect("payload"),
        bytes,
        "the original bytes, as appended"
    );
    assert_eq!(letter.key, huge.id);
    assert!(
        letter.reason.contains("max_document_bytes"),
        "{}",
        letter.reason
    );
    assert!(
        pipeline
            .warehouse
            .raw(&fine.id)
            .await
            .expect("raw")
            .is_some(),
        "the rest goes on"
    );
}

/// A post of `a.substack.com` between its share bars and footer, the chrome its template is.
fn templated_post(n: usize) -> RawDocument {
    let own = format!("The author's own paragraph number {n}, which no other post has.");
    let title = format!("Post {n}");
    let mut doc = article(&format!("templated-{n}"), &[]);
    doc.url = format!("https://a.substack.com/p/{n}");
    doc.content = [
        "Share this post",
        &title,
        "Copy link",
        &own,
        "Share this post",
        &title,
        "Copy link",
        "Ready for more?",
    ]
    .iter()
    .map(|t| twin_schemas::ContentBlock::paragraph(*t))
    .collect();
    doc.content_hash = twin_schemas::content_hash(&doc.content);
    doc
}

/// A run killed after it wrote the post that made its source's template, before it cleaned the
/// source's earlier posts again, and before it committed: the restart gets the earlier posts
/// again too (their writes are already applied, so skipped), and must still clean them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_cleans_again_what_a_killed_run_left_stale_even_when_it_is_delivered_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config(dir.path());
    config.stream.templates.min_documents = 3;
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let topic = &config.topics.raw_documents;
    let posts: Vec<RawDocument> = (0..3).map(templated_post).collect();
    publish(
        pipeline.log.as_ref(),
        topic,
        &[Event::Raw(posts[0].clone()), Event::Raw(posts[1].clone())],
    )
    .await
    .expect("publish");
    pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("run");
    let cleaned = |doc: &RawDocument| {
        let pipeline = &pipeline;
        let id = doc.id.clone();
        async move {
            pipeline
                .warehouse
                .cleaned(&id)
                .await
                .expect("cleaned")
                .expect("a cleaned document")
                .content
                .iter()
                .map(|b| b.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    assert!(
        cleaned(&posts[0]).await.contains("Ready for more?"),
        "two posts are no template yet"
    );

    // What the killed run left: the third post's raw document, and the group back where the
    // first run started (its commits lost).
    let third = publish(
        pipeline.log.as_ref(),
        topic,
        &[Event::Raw(posts[2].clone())],
    )
    .await
    .expect("publish")[0];
    pipeline
        .warehouse
        .put_raw(&posts[2], third)
        .await
        .expect("raw");
    let mut group = pipeline
        .log
        .consumer(
            topic,
            twin_stream::worker::DEFAULT_GROUP,
            twin_eventlog::StartFrom::Committed,
        )
        .await
        .expect("consumer");
    group.rewind().await.expect("rewind");
    drop(group);

    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("restart");
    assert_eq!(stats.documents, 3, "all three delivered again: {stats:?}");
    for post in &posts {
        let text = cleaned(post).await;
        assert!(
            !text.contains("Ready for more?") && !text.contains("Share this post"),
            "{}: the template is gone: {text}",
            post.id
        );
        assert!(text.contains("own paragraph"), "{text}");
        let chunks = pipeline.warehouse.chunks(&post.id).await.expect("chunks");
        assert!(
            chunks
                .iter()
                .all(|c| !c.value.text.contains("Ready for more?")),
            "{}: chunks of the cleaning without the template",
            post.id
        );
    }
}
