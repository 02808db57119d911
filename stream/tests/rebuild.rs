//! A rebuild refused, with nothing dropped, when the broker has deleted the first records of
//! the raw-documents topic (retention), since a replay would rebuild the projections without
//! those documents for good. (Security item 2.)
//!
//! Tansu, the tests' Kafka-protocol broker, applies no retention and drops the connection on
//! DeleteRecords, so the truncation is shown by the real embedded log behind a wrapper that
//! reports the low watermarks a broker reports after retention ran: every append, read and
//! commit still reaches the log. (The Kafka backend's low watermarks are read in the event
//! log's contract suite, against Tansu.)

use std::sync::Arc;

use async_trait::async_trait;
use twin_config::TwinConfig;
use twin_eventlog::{publish, EventLog, LogConsumer, Position, Result, StartFrom};
use twin_schemas::Event;
use twin_stream::{Pipeline, RunOptions};
use twin_testkit::documents::substack_article as article;
use twin_warehouse::{AsOf, DocumentFilter};

/// The embedded log, with the first `deleted` records of every partition reported gone.
struct Retained {
    inner: Arc<dyn EventLog>,
    deleted: u64,
}

#[async_trait]
impl EventLog for Retained {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        self.inner.ensure_topic(topic).await
    }
    async fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        self.inner.partitions(topic).await
    }
    async fn append_batch(&self, topic: &str, records: &[(&[u8], &[u8])]) -> Result<Vec<Position>> {
        self.inner.append_batch(topic, records).await
    }
    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        self.inner.end_offsets(topic).await
    }
    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        let ends = self.inner.end_offsets(topic).await?;
        Ok(ends.iter().map(|&end| end.min(self.deleted)).collect())
    }
    async fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<u64>> {
        self.inner.committed_offsets(topic, group).await
    }
    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Box<dyn LogConsumer>> {
        self.inner.consumer(topic, group, start).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_of_a_truncated_topic_is_refused_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = TwinConfig {
        data_dir: dir.path().to_path_buf(),
        ..TwinConfig::default()
    };
    config.log.partitions = 1;
    let topic = config.topics.raw_documents.clone();
    let open = Pipeline::open(&config).await.expect("pipeline");
    let events: Vec<Event> = ["one", "two", "three"]
        .iter()
        .map(|slug| Event::Raw(article(slug, &[&format!("The article called {slug}.")])))
        .collect();
    publish(open.log.as_ref(), &topic, &events)
        .await
        .expect("publish");
    let once = RunOptions {
        until_caught_up: true,
        ..RunOptions::default()
    };
    let stats = open
        .run(&once, std::future::pending())
        .await
        .expect("first run");
    assert_eq!(stats.documents, 3);
    assert_eq!(
        open.log.start_offsets(&topic).await.expect("starts"),
        vec![0]
    );

    // The broker's retention deleted the first two records.
    let truncated = Pipeline::new(
        Arc::new(Retained {
            inner: open.log.clone(),
            deleted: 2,
        }),
        open.topics.clone(),
        open.warehouse.clone(),
        open.vectors.clone(),
        open.embedder.clone(),
        open.chunker.clone(),
        &config.stream,
    );
    let rebuild = RunOptions {
        rebuild: true,
        ..once.clone()
    };
    let error = truncated
        .run(&rebuild, std::future::pending())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains(&topic) && error.contains("offset 2") && error.contains("retention"),
        "{error}"
    );
    let counts = open
        .warehouse
        .counts(&AsOf::Latest, &DocumentFilter::all())
        .await
        .expect("counts");
    assert_eq!(counts.raw, 3, "the projections were kept");
    // Where nothing was deleted, the rebuild runs.
    let rebuilt = open
        .run(&rebuild, std::future::pending())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.documents, 3);
}
