//! The stream worker end to end on the embedded backends (log, SQLite warehouse, Qdrant Edge)
//! with the real embedding model: documents in, searchable chunks out; tombstones, updates and
//! undecodable events handled; offsets committed; a rebuild equal to the live result. (Failures
//! are in `failures.rs`: this test reads the process's metrics, so it runs alone in its binary.)

use twin_config::TwinConfig;
use twin_eventlog::publish;
use twin_schemas::{content_hash, ContentBlock, DocumentDeleted, DocumentKind, Event};
use twin_stream::{dlq, Pipeline, RunOptions};
use twin_testkit::documents::substack_article as article;
use twin_vectorstore::SearchFilter;
use twin_warehouse::DocumentFilter;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_become_searchable_chunks_and_a_rebuild_gives_the_same() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let pipeline = Pipeline::open(&config).await.expect("pipeline");
    let topic = config.topics.raw_documents.clone();

    let kafka = article(
        "kafka",
        &[
            "Kafka keeps the events of one key in order, partition by partition.",
            "Consumers commit offsets after handling events.",
        ],
    );
    let rust = article(
        "rust",
        &[
            "Rust gives memory safety without a garbage collector.",
            "The borrow checker enforces ownership at compile time.",
        ],
    );
    let gone = article("gone", &["This article will be deleted at its source."]);
    let mut kafka_v2 = kafka.clone();
    kafka_v2.content.push(ContentBlock::paragraph(
        "Replaying the log from offset zero rebuilds every projection.",
    ));
    kafka_v2.content_hash = content_hash(&kafka_v2.content);
    let tombstone = Event::Deleted(DocumentDeleted {
        document_id: gone.id.clone(),
        kind: DocumentKind::Article,
        platform: "substack".into(),
        url: gone.url.clone(),
        deleted_at: 1_764_000_100_000,
        reason: "HTTP 404 at source".into(),
    });
    let first_positions = publish(
        pipeline.log.as_ref(),
        &topic,
        &[
            Event::Raw(kafka.clone()),
            Event::Raw(rust.clone()),
            Event::Raw(gone.clone()),
        ],
    )
    .await
    .expect("publish");
    pipeline
        .log
        .append(&topic, b"garbage", b"\x00 not an event")
        .await
        .expect("garbage");
    publish(
        pipeline.log.as_ref(),
        &topic,
        &[Event::Raw(kafka_v2.clone()), tombstone],
    )
    .await
    .expect("publish");

    let stats = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("run");
    assert_eq!(
        (stats.documents, stats.deleted, stats.dead_letters),
        (4, 1, 1),
        "{stats:?}"
    );

    // The warehouse holds the two live documents, the newest version of each.
    let counts = pipeline
        .warehouse
        .counts(&twin_warehouse::AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!((counts.raw, counts.cleaned), (2, 2));
    assert_eq!(
        pipeline.warehouse.raw(&kafka.id).await.expect("raw"),
        Some(kafka_v2.clone())
    );
    assert!(pipeline
        .warehouse
        .raw(&gone.id)
        .await
        .expect("raw")
        .is_none());
    let kafka_chunks = pipeline.warehouse.chunks(&kafka.id).await.expect("chunks");
    assert!(
        kafka_chunks
            .iter()
            .any(|c| c.value.text.contains("Replaying the log")),
        "chunks of the newest version"
    );

    // Retrieval finds the right document, and nothing of the deleted one.
    let query = pipeline
        .embedder
        .embed(&["How do Kafka partitions keep events in order?"])
        .expect("embed")
        .remove(0);
    let hits = pipeline
        .vectors
        .search(DocumentKind::Article, &query, 3, &SearchFilter::default())
        .await
        .expect("search");
    assert_eq!(hits[0].payload.document_id, kafka.id);
    assert!(hits.iter().all(|h| h.payload.document_id != gone.id));
    let vectors_of_gone = SearchFilter {
        document_id: Some(gone.id.clone()),
        ..Default::default()
    };
    assert_eq!(
        pipeline
            .vectors
            .count(DocumentKind::Article, &vectors_of_gone)
            .await
            .expect("count"),
        0
    );

    // Every stage published its events.
    for stage in [
        &config.topics.cleaned_documents,
        &config.topics.chunks,
        &config.topics.embedded_chunks,
    ] {
        let events: u64 = pipeline
            .log
            .end_offsets(stage)
            .await
            .expect("ends")
            .iter()
            .sum();
        assert!(events > 0, "{stage} is empty");
    }
    // The undecodable event is in the dead-letter topic, with where it came from and why.
    let letters = dlq::list(pipeline.log.as_ref(), &config.topics.dead_letters)
        .await
        .expect("dlq");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].1.source_topic.as_str(), letters[0].1.offset),
        (topic.as_str(), letters[0].1.offset)
    );
    assert_eq!(letters[0].1.payload().expect("bytes"), b"\x00 not an event");
    assert!(
        letters[0].1.reason.contains("single-object"),
        "{}",
        letters[0].1.reason
    );

    // The metrics a Prometheus scrape would see.
    let scrape = metrics.render();
    for line in [
        "twin_stream_events_total{stage=\"consumed\"} 6",
        "twin_stream_events_total{stage=\"cleaned\"} 4",
        "twin_stream_events_total{stage=\"deleted\"} 1",
        "twin_stream_dead_letters_total{cause=\"undecodable\"} 1",
        "twin_stream_end_to_end_seconds_count 4",
    ] {
        assert!(scrape.contains(line), "{line} not in:\n{scrape}");
    }
    assert!(
        scrape.contains("twin_stream_batch_size")
            && scrape.contains("twin_stream_events_total{stage=\"embedded\"}")
    );

    // Retrying puts the original bytes back on their source topic.
    let before: u64 = pipeline
        .log
        .end_offsets(&topic)
        .await
        .expect("ends")
        .iter()
        .sum();
    assert_eq!(
        dlq::retry(pipeline.log.as_ref(), &config.topics.dead_letters)
            .await
            .expect("retry")
            .appended,
        1
    );
    let after: u64 = pipeline
        .log
        .end_offsets(&topic)
        .await
        .expect("ends")
        .iter()
        .sum();
    assert_eq!(after, before + 1);
    let retried = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("retried");
    assert_eq!(
        retried.dead_letters, 1,
        "still undecodable: dead-lettered again, nothing lost"
    );
    // Security item 3: the next retry takes only the new letter, not the one retried before
    // (the backlog does not double)...
    assert_eq!(
        dlq::list(pipeline.log.as_ref(), &config.topics.dead_letters)
            .await
            .expect("dlq")
            .len(),
        2
    );
    let second = dlq::retry(pipeline.log.as_ref(), &config.topics.dead_letters)
        .await
        .expect("retry");
    assert_eq!((second.appended, second.superseded), (1, 0));
    let third = dlq::retry(pipeline.log.as_ref(), &config.topics.dead_letters)
        .await
        .expect("retry");
    assert_eq!(third, dlq::Retried::default(), "nothing left to retry");
    // ...and a letter whose document has a newer event (here its deletion) is skipped: an old
    // letter must not bring a deleted document back.
    dlq::DeadLetter::new(
        &topic,
        first_positions[2],
        gone.id.as_bytes(),
        "a failure since fixed".into(),
        twin_schemas::encode(&Event::Raw(gone.clone())).expect("encode"),
    )
    .send(pipeline.log.as_ref(), &config.topics.dead_letters)
    .await
    .expect("letter");
    let stale = dlq::retry(pipeline.log.as_ref(), &config.topics.dead_letters)
        .await
        .expect("retry");
    assert_eq!((stale.appended, stale.superseded), (0, 1));
    let relettered = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("retried");
    assert_eq!(relettered.dead_letters, 1);

    // Offsets were committed: a second run has nothing to do.
    let again = pipeline
        .run(&once(), std::future::pending())
        .await
        .expect("again");
    assert_eq!(again, twin_stream::RunStats::default());

    // A rebuild from offset zero gives the same projections.
    let live_chunks: Vec<String> = kafka_chunks.iter().map(|c| c.value.id.clone()).collect();
    let live_points = pipeline
        .vectors
        .count(DocumentKind::Article, &SearchFilter::default())
        .await
        .expect("count");
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
    assert_eq!(rebuilt.documents, 4);
    assert_eq!(
        pipeline
            .warehouse
            .counts(&twin_warehouse::AsOf::Latest, &DocumentFilter::all())
            .await
            .expect("counts"),
        counts
    );
    let rebuilt_chunks: Vec<String> = pipeline
        .warehouse
        .chunks(&kafka.id)
        .await
        .expect("chunks")
        .iter()
        .map(|c| c.value.id.clone())
        .collect();
    assert_eq!(rebuilt_chunks, live_chunks);
    assert_eq!(
        pipeline
            .vectors
            .count(DocumentKind::Article, &SearchFilter::default())
            .await
            .expect("count"),
        live_points
    );
}
