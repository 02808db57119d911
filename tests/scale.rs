//! Scale-out on the distributed backends: two `twin stream` workers in one consumer group share
//! a raw-documents topic of three partitions on a Kafka-protocol broker (Tansu), writing to a
//! ClickHouse warehouse and a Qdrant server. Once both have handled events, one is killed with
//! SIGKILL; the other takes its partitions over when the group lets it, and at the end every
//! document is in both stores exactly once: its chunks once in the warehouse, one point per
//! chunk in the vector store, nothing else anywhere.
//!
//! The documents are the 76 real articles of `../shared/corpus/articles.json` when that file is
//! there (it is in CI), else 76 generated articles of the same shape. Skipped, saying why, on a
//! machine without a Qdrant binary; under CI it must run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twin_config::{ClickHouseConfig, KafkaConfig, QdrantConfig, WarehouseBackend, WarehouseConfig};
use twin_eventlog::{publish, EventLog, KafkaLog};
use twin_schemas::Event;
use twin_testkit::documents::corpus;
use twin_vectorstore::{QdrantVectorStore, SearchFilter, VectorStore, KINDS};
use twin_warehouse::{AsOf, DocumentFilter, Warehouse};

/// A worker process, killed if the test ends first.
struct Worker {
    child: Child,
    metrics: String,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the workers share: their broker, stores and names.
struct Cluster {
    dir: tempfile::TempDir,
    brokers: String,
    qdrant: String,
    clickhouse: String,
    name: String,
}

impl Cluster {
    fn topic(&self, topic: &str) -> String {
        format!("{}-{topic}", self.name)
    }

    fn warehouse_config(&self) -> WarehouseConfig {
        WarehouseConfig {
            backend: WarehouseBackend::ClickHouse,
            clickhouse: ClickHouseConfig {
                url: self.clickhouse.clone(),
                database: self.name.clone(),
                ..ClickHouseConfig::default()
            },
        }
    }

    /// `twin stream` (until stopped) in the shared group, serving its metrics on a port of its
    /// own.
    fn worker(&self) -> Worker {
        let port = twin_testkit::process::free_port().unwrap();
        let metrics = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_twin"));
        for (key, _) in std::env::vars() {
            if key.starts_with("TWIN_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("--data-dir")
            .arg(self.dir.path())
            .arg("stream")
            .env("RUST_LOG", "warn,rdkafka=error")
            .env("TWIN_METRICS__STREAM", &metrics)
            // A dead member is noticed after 10 s instead of librdkafka's 45.
            .env("TWIN_LOG__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "10000")
            .env("TWIN_LOG__BACKEND", "kafka")
            .env("TWIN_LOG__KAFKA__BROKERS", &self.brokers)
            .env("TWIN_WAREHOUSE__BACKEND", "clickhouse")
            .env("TWIN_WAREHOUSE__CLICKHOUSE__URL", &self.clickhouse)
            .env("TWIN_WAREHOUSE__CLICKHOUSE__DATABASE", &self.name)
            .env("TWIN_VECTORS__BACKEND", "qdrant")
            .env("TWIN_VECTORS__QDRANT__URL", &self.qdrant)
            .env("TWIN_VECTORS__COLLECTION_PREFIX", format!("{}_", self.name));
        cmd.envs(twin_testkit::tansu::topic_env(&self.name));
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Worker { child, metrics }
    }
}

/// Raw-document events a worker has consumed, from its Prometheus metrics (0 before it has
/// any, or while its endpoint is not up yet).
async fn consumed(worker: &Worker) -> u64 {
    let Ok(response) = reqwest::get(format!("http://{}/metrics", worker.metrics)).await else {
        return 0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("twin_stream_events_total") && l.contains("stage=\"consumed\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(0, |n| n as u64)
}

/// Whether the warehouse has applied every event on the topic.
async fn caught_up(warehouse: &dyn Warehouse, targets: &[u64]) -> bool {
    let Ok(applied) = warehouse.applied().await else {
        return false;
    };
    targets.iter().enumerate().all(|(p, target)| {
        *target == 0
            || applied
                .iter()
                .any(|a| a.partition as usize == p && a.offset + 1 >= *target)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_a_topic_and_one_takes_over_when_the_other_is_killed() {
    let test = "the scale-out test on Kafka, ClickHouse and Qdrant";
    let Some(qdrant) = twin_testkit::qdrant::qdrant_or_skip(test) else {
        return;
    };
    let broker = twin_testkit::tansu::tansu().unwrap_or_else(|e| panic!("{e}"));
    let clickhouse = twin_testkit::clickhouse::clickhouse().unwrap_or_else(|e| panic!("{e}"));
    let cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
        brokers: broker.brokers.clone(),
        qdrant: qdrant.grpc_url.clone(),
        clickhouse: clickhouse.url.clone(),
        name: format!("scale{}", std::process::id()),
    };
    let docs = corpus();
    let log = KafkaLog::new(
        &KafkaConfig {
            brokers: cluster.brokers.clone(),
            ..KafkaConfig::default()
        },
        3,
    )
    .unwrap();
    let raw = cluster.topic("raw-documents");
    log.ensure_topic(&raw).await.unwrap();

    let mut first = cluster.worker();
    let second = cluster.worker();
    // The documents arrive while both run, two every half second, as a crawl would send them.
    let publisher = {
        let raw = raw.clone();
        let events: Vec<Event> = docs.iter().cloned().map(Event::Raw).collect();
        tokio::spawn(async move {
            for pair in events.chunks(2) {
                publish(&log, &raw, pair).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            log
        })
    };
    let started = Instant::now();
    // Both share the work before one dies.
    loop {
        let (a, b) = (consumed(&first).await, consumed(&second).await);
        if a > 0 && b > 0 {
            eprintln!("both workers consuming: {a} and {b} events");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the two workers did not share the topic ({a} and {b} events consumed)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let warehouse = twin_warehouse::open(&cluster.warehouse_config(), cluster.dir.path())
        .await
        .unwrap();
    let counts = warehouse
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .unwrap();
    assert!(counts.raw < 76, "killed mid-stream: {counts:?}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed_at = Instant::now();
    let log = publisher.await.unwrap();
    let targets = log.end_offsets(&raw).await.unwrap();
    assert_eq!(targets.len(), 3, "three partitions");
    assert_eq!(
        targets.iter().sum::<u64>(),
        76,
        "every document on the topic"
    );

    // The survivor takes the dead member's partitions over and catches up.
    while !caught_up(warehouse.as_ref(), &targets).await {
        assert!(
            killed_at.elapsed() < Duration::from_secs(180),
            "the surviving worker did not take the partitions over"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "caught up {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    let mut second = second;
    let stopped = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = second.child.wait().unwrap();
    assert!(status.success(), "the survivor stops cleanly: {status}");

    // Every document exactly once, in both stores.
    let vectors: Arc<dyn VectorStore> = Arc::new(
        QdrantVectorStore::connect(
            &QdrantConfig {
                url: cluster.qdrant.clone(),
                api_key: String::new(),
            },
            &format!("{}_", cluster.name),
        )
        .unwrap(),
    );
    let counts = warehouse
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .unwrap();
    assert_eq!((counts.raw, counts.cleaned), (76, 76), "{counts:?}");
    let mut all_chunks = BTreeSet::new();
    let mut total = 0usize;
    for doc in &docs {
        let chunks = warehouse.chunks(&doc.id).await.unwrap();
        assert!(!chunks.is_empty(), "{} has chunks", doc.id);
        let ids: BTreeSet<String> = chunks.iter().map(|c| c.value.id.clone()).collect();
        assert_eq!(ids.len(), chunks.len(), "{}: no chunk twice", doc.id);
        let points = vectors
            .count(
                doc.kind,
                &SearchFilter {
                    document_id: Some(doc.id.clone()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(
            points,
            chunks.len() as u64,
            "{}: one point per chunk",
            doc.id
        );
        total += chunks.len();
        all_chunks.extend(ids);
    }
    assert_eq!(
        counts.chunks as usize, total,
        "no chunk of another document"
    );
    assert_eq!(all_chunks.len(), total, "no chunk in two documents");
    let mut points = 0;
    for kind in KINDS {
        points += vectors.count(kind, &SearchFilter::default()).await.unwrap();
    }
    assert_eq!(points as usize, total, "no extra point anywhere");
}
