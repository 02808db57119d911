//! The Kafka log, through rdkafka (librdkafka 2.12, bundled).
//!
//! Producers wait for every in-sync replica (`acks=all`) and are idempotent, so retries neither
//! lose nor reorder records of a key. Consumers never auto-commit: an offset is committed only
//! when [`LogConsumer::commit`] is called. Topics are created with the configured partitions and
//! replication factor when first used. Extra librdkafka properties from the configuration
//! (security, tuning) are applied to every client and override these defaults.
//!
//! A subscribed consumer watches the partitions it does not own and joins its group again when
//! one has waited three session timeouts without any member's progress (a broker that did not
//! reassign a dead member's partitions); a commit refused because a rebalance moved the
//! partition is not an error, since its new owner does the work again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info};
use twin_config::KafkaConfig;

use crate::{validate_name, EventLog, LogConsumer, LogError, Position, Record, Result, StartFrom};

/// What producers, topics and consumers carry: the log's record limit with room for Kafka's
/// own framing (a record batch's headers).
const MESSAGE_MAX_BYTES: usize = crate::MAX_RECORD_BYTES + 64 * 1024;

/// How long metadata, admin and commit calls may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn kafka_err(context: impl Into<String>) -> impl FnOnce(KafkaError) -> LogError {
    let context = context.into();
    move |source| LogError::Kafka { context, source }
}

fn join_err(context: &str, e: tokio::task::JoinError) -> LogError {
    LogError::Kafka {
        context: format!("{context}: {e}"),
        source: KafkaError::Canceled,
    }
}

/// The Kafka log.
pub struct KafkaLog {
    base: ClientConfig,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    metadata: Arc<BaseConsumer>,
    partitions: u32,
    replication_factor: i32,
    known_topics: Mutex<HashSet<String>>,
}

impl KafkaLog {
    /// Connect to the brokers in `config`; topics it creates get `partitions` partitions.
    pub fn new(config: &KafkaConfig, partitions: u32) -> Result<Self> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers)
            .set("client.id", &config.client_id)
            // librdkafka picks ::1 for "localhost" where the broker may listen on 127.0.0.1 only.
            .set("broker.address.family", "v4");
        let user: Vec<(String, &str)> = config.librdkafka_properties().collect();

        let mut producer = base.clone();
        producer
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "60000")
            .set("message.max.bytes", MESSAGE_MAX_BYTES.to_string());
        for (k, v) in &user {
            producer.set(k, *v);
        }
        let producer: FutureProducer = producer.create().map_err(kafka_err("create producer"))?;

        let mut admin = base.clone();
        for (k, v) in &user {
            admin.set(k, *v);
        }
        let admin: AdminClient<DefaultClientContext> =
            admin.create().map_err(kafka_err("create admin client"))?;

        let mut meta = base.clone();
        meta.set("group.id", format!("{}-metadata", config.client_id))
            .set("enable.auto.commit", "false");
        for (k, v) in &user {
            meta.set(k, *v);
        }
        let metadata: BaseConsumer = meta.create().map_err(kafka_err("create metadata client"))?;

        for (k, v) in &user {
            base.set(k, *v);
        }
        Ok(Self {
            base,
            producer,
            admin,
            metadata: Arc::new(metadata),
            partitions: partitions.max(1),
            replication_factor: config.replication_factor,
            known_topics: Mutex::new(HashSet::new()),
        })
    }

    /// Remember that a topic exists, so appends to it skip the metadata round trip.
    fn remember(&self, topic: &str) {
        self.known_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string());
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
    }

    /// Partition count of a topic, or `None` if the brokers do not know it.
    async fn partition_count(&self, topic: &str) -> Result<Option<u32>> {
        let metadata = self.metadata.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let md = metadata
                .fetch_metadata(Some(&name), REQUEST_TIMEOUT)
                .map_err(kafka_err(format!("metadata of topic {name}")))?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as u32))
        })
        .await
        .map_err(|e| join_err("metadata", e))?
    }
}

impl KafkaLog {
    /// Each partition's low and high watermarks: its first offset still held, and the offset
    /// its next record gets.
    async fn watermarks(&self, topic: &str) -> Result<Vec<(u64, u64)>> {
        let partitions = self.ensure_topic(topic).await?;
        let metadata = self.metadata.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            (0..partitions as i32)
                .map(|p| {
                    metadata
                        .fetch_watermarks(&name, p, REQUEST_TIMEOUT)
                        .map(|(low, high)| (low.max(0) as u64, high.max(0) as u64))
                        .map_err(kafka_err(format!("watermarks of {name}/{p}")))
                })
                .collect()
        })
        .await
        .map_err(|e| join_err("watermarks", e))?
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    async fn ensure_topic(&self, topic: &str) -> Result<u32> {
        validate_name("topic", topic)?;
        if let Some(n) = self.partition_count(topic).await? {
            self.remember(topic);
            return Ok(n);
        }
        // Infinite retention: the log is the truth and `twin stream --rebuild` replays it, so a
        // broker's default retention (seven days on Apache Kafka) would lose documents for
        // good. Not compaction: it would keep one version per document and still lose the
        // history (`twin log tail`, what changed when), for a corpus that is small anyway. The
        // topic takes the records the producer may send.
        let message_max = MESSAGE_MAX_BYTES.to_string();
        let new = NewTopic::new(
            topic,
            self.partitions as i32,
            TopicReplication::Fixed(self.replication_factor),
        )
        .set("retention.ms", "-1")
        .set("retention.bytes", "-1")
        .set("max.message.bytes", &message_max);
        let options = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(kafka_err(format!("create topic {topic}")))?;
        for result in results {
            match result {
                Ok(_) => info!(topic, partitions = self.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Topic {
                        topic: name,
                        reason: format!("create failed: {code}"),
                    })
                }
            }
        }
        // Creation is asynchronous on the brokers: wait until the metadata shows the topic.
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                self.remember(topic);
                return Ok(n);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Topic {
                    topic: topic.to_string(),
                    reason: "created, but the brokers did not report it within 30 s".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn partitions(&self, topic: &str) -> Result<Option<u32>> {
        validate_name("topic", topic)?;
        self.partition_count(topic).await
    }

    async fn append_batch(&self, topic: &str, records: &[(&[u8], &[u8])]) -> Result<Vec<Position>> {
        crate::check_sizes(topic, records)?;
        if !self.is_known(topic) {
            self.ensure_topic(topic).await?;
        }
        let mut pending = Vec::with_capacity(records.len());
        for (key, payload) in records {
            let mut record = FutureRecord::to(topic).key(*key).payload(*payload);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: let librdkafka drain it, then try again.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(kafka_err(format!("produce to {topic}"))(e)),
                }
            }
        }
        let mut positions = Vec::with_capacity(pending.len());
        for delivery in pending {
            let delivered = delivery
                .await
                .map_err(|_| kafka_err(format!("produce to {topic}"))(KafkaError::Canceled))?
                .map_err(|(e, _)| kafka_err(format!("produce to {topic}"))(e))?;
            positions.push(Position {
                partition: delivered.partition as u32,
                offset: delivered.offset as u64,
            });
        }
        metrics::counter!("twin_log_appended_total", "backend" => "kafka", "topic" => topic.to_string())
            .increment(records.len() as u64);
        Ok(positions)
    }

    async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        let marks = self.watermarks(topic).await?;
        Ok(marks.into_iter().map(|(_, high)| high).collect())
    }

    async fn start_offsets(&self, topic: &str) -> Result<Vec<u64>> {
        let marks = self.watermarks(topic).await?;
        Ok(marks.into_iter().map(|(low, _)| low).collect())
    }

    async fn committed_offsets(&self, topic: &str, group: &str) -> Result<Vec<u64>> {
        validate_name("consumer group", group)?;
        let partitions = self.ensure_topic(topic).await?;
        let mut config = self.base.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config
            .create()
            .map_err(kafka_err(format!("create a client of group {group}")))?;
        let mut asked = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            asked.add_partition(topic, p);
        }
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let committed = consumer
                .committed_offsets(asked, REQUEST_TIMEOUT)
                .map_err(kafka_err(format!("committed offsets of {name}")))?;
            Ok((0..partitions as i32)
                .map(
                    |p| match committed.find_partition(&name, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) if o >= 0 => o as u64,
                        _ => 0,
                    },
                )
                .collect())
        })
        .await
        .map_err(|e| join_err("committed offsets", e))?
    }

    async fn consumer(
        &self,
        topic: &str,
        group: &str,
        start: StartFrom,
    ) -> Result<Box<dyn LogConsumer>> {
        validate_name("consumer group", group)?;
        let partitions = self.ensure_topic(topic).await?;
        let mut config = self.base.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Room for the largest record (librdkafka's receive limit must exceed the fetch's).
            .set("fetch.max.bytes", MESSAGE_MAX_BYTES.to_string())
            .set("max.partition.fetch.bytes", MESSAGE_MAX_BYTES.to_string())
            .set(
                "receive.message.max.bytes",
                (MESSAGE_MAX_BYTES + 1024 * 1024).to_string(),
            );
        let consumer: StreamConsumer = config
            .create()
            .map_err(kafka_err(format!("create consumer for group {group}")))?;
        match start {
            StartFrom::Committed => consumer
                .subscribe(&[topic])
                .map_err(kafka_err(format!("subscribe to {topic}")))?,
            StartFrom::Beginning => {
                let mut assignment = TopicPartitionList::new();
                for p in 0..partitions as i32 {
                    assignment
                        .add_partition_offset(topic, p, Offset::Beginning)
                        .map_err(kafka_err(format!("assign {topic}/{p}")))?;
                }
                consumer
                    .assign(&assignment)
                    .map_err(kafka_err(format!("assign {topic}")))?;
            }
        }
        debug!(topic, group, ?start, "kafka consumer started");
        let watchdog = matches!(start, StartFrom::Committed).then(|| {
            let session_ms = config
                .get("session.timeout.ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
            Watchdog::new(Duration::from_millis(session_ms))
        });
        Ok(Box::new(KafkaConsumer {
            inner: Arc::new(consumer),
            topic: topic.to_string(),
            partitions,
            watchdog,
        }))
    }
}

/// librdkafka's default `session.timeout.ms`.
const DEFAULT_SESSION_TIMEOUT_MS: u64 = 45_000;

/// A member of a Kafka consumer group.
struct KafkaConsumer {
    inner: Arc<StreamConsumer>,
    topic: String,
    /// The topic's partition count (for a rewind).
    partitions: u32,
    /// For a subscribed member: watches the partitions it does not own.
    watchdog: Option<Watchdog>,
}

/// Watches the partitions of the topic that this member does not own. One whose committed
/// offset has not moved, while events wait on it, for three session timeouts has no live owner:
/// a correct broker would have moved it to a member long before. Some brokers do not (Tansu
/// 0.6.0 evicts a dead member but then gives the survivors their old assignment back), so the
/// member then joins the group again, which makes the broker assign every partition anew.
struct Watchdog {
    /// Between two looks.
    every: Duration,
    /// How long a partition may wait without progress.
    stalled_after: Duration,
    next_look: std::time::Instant,
    /// Per partition not owned here: its committed offset, and since when it has not moved.
    waiting: std::collections::HashMap<i32, (i64, std::time::Instant)>,
}

impl Watchdog {
    fn new(session_timeout: Duration) -> Self {
        Self {
            every: (session_timeout / 2).max(Duration::from_secs(1)),
            stalled_after: session_timeout * 3,
            next_look: std::time::Instant::now() + session_timeout,
            waiting: std::collections::HashMap::new(),
        }
    }

    /// The partitions stalled now, from this member's assignment, the group's committed
    /// offsets and the partitions' end offsets (a blocking look at the broker).
    fn stalled(
        &mut self,
        consumer: &StreamConsumer,
        topic: &str,
        partitions: u32,
    ) -> Result<Vec<i32>> {
        let owned: HashSet<i32> = consumer
            .assignment()
            .map_err(kafka_err("read the assignment"))?
            .elements_for_topic(topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let mut list = TopicPartitionList::new();
        for p in (0..partitions as i32).filter(|p| !owned.contains(p)) {
            list.add_partition(topic, p);
        }
        if list.count() == 0 {
            self.waiting.clear();
            return Ok(Vec::new());
        }
        let committed = consumer
            .committed_offsets(list, REQUEST_TIMEOUT)
            .map_err(kafka_err(format!("read the committed offsets of {topic}")))?;
        let now = std::time::Instant::now();
        let mut stalled = Vec::new();
        let mut seen = HashSet::new();
        for element in committed.elements_for_topic(topic) {
            let p = element.partition();
            seen.insert(p);
            let (low, high) = consumer
                .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
                .map_err(kafka_err(format!("read the end offset of {topic}/{p}")))?;
            let at = match element.offset() {
                Offset::Offset(n) => n,
                _ => low,
            };
            if at >= high {
                self.waiting.remove(&p);
                continue;
            }
            match self.waiting.get(&p) {
                Some((was, since)) if *was == at => {
                    if now.duration_since(*since) >= self.stalled_after {
                        stalled.push(p);
                    }
                }
                _ => {
                    self.waiting.insert(p, (at, now));
                }
            }
        }
        self.waiting.retain(|p, _| seen.contains(p));
        Ok(stalled)
    }

    /// Join the group again if a partition has stalled (a blocking look at the broker).
    fn look(&mut self, consumer: &StreamConsumer, topic: &str, partitions: u32) -> Result<()> {
        let stalled = self.stalled(consumer, topic, partitions)?;
        if stalled.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            topic,
            partitions = ?stalled,
            waited_s = self.stalled_after.as_secs(),
            "partitions with events waiting have had no progress from any member: joining the \
             group again so that the broker assigns them"
        );
        consumer.unsubscribe();
        consumer
            .subscribe(&[topic])
            .map_err(kafka_err(format!("subscribe to {topic} again")))?;
        self.waiting.clear();
        Ok(())
    }
}

impl KafkaConsumer {
    /// Every `Watchdog::every`, look for partitions no member serves, and join the group again
    /// if there are any. A failed look is logged, not fatal: consuming goes on, and the next
    /// look tries again.
    async fn watch(&mut self) -> Result<()> {
        match &self.watchdog {
            Some(w) if std::time::Instant::now() >= w.next_look => {}
            _ => return Ok(()),
        }
        let Some(mut watchdog) = self.watchdog.take() else {
            return Ok(());
        };
        let inner = self.inner.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        let (mut watchdog, result) = tokio::task::spawn_blocking(move || {
            let result = watchdog.look(&inner, &topic, partitions);
            (watchdog, result)
        })
        .await
        .map_err(|e| join_err("watch the group", e))?;
        watchdog.next_look = std::time::Instant::now() + watchdog.every;
        self.watchdog = Some(watchdog);
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not look at the group's partitions");
        }
        Ok(())
    }
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, wait: Duration) -> Result<Option<Record>> {
        self.watch().await?;
        match tokio::time::timeout(wait, self.inner.recv()).await {
            Err(_) => Ok(None),
            Ok(Err(e)) => Err(kafka_err(format!("consume {}", self.topic))(e)),
            Ok(Ok(message)) => Ok(Some(Record {
                topic: message.topic().to_string(),
                position: Position {
                    partition: message.partition() as u32,
                    offset: message.offset() as u64,
                },
                key: message.key().unwrap_or_default().to_vec(),
                payload: message.payload().unwrap_or_default().to_vec(),
                timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
            })),
        }
    }

    async fn commit(&mut self, position: Position) -> Result<()> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(
                &self.topic,
                position.partition as i32,
                Offset::Offset(position.offset as i64 + 1),
            )
            .map_err(kafka_err("commit"))?;
        let inner = self.inner.clone();
        let context = format!(
            "commit {}/{}@{}",
            self.topic, position.partition, position.offset
        );
        let result = tokio::task::spawn_blocking(move || inner.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| join_err("commit", e))?;
        match result {
            // The group moved the partition to another member meanwhile (a rebalance): that
            // member starts from the last committed offset and does this work again, which the
            // sinks' idempotent writes make harmless.
            Err(KafkaError::ConsumerCommit(
                code @ (RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId),
            )) => {
                tracing::warn!(%context, error = %code, "offset not committed: the partition moved to another member, which does this work again");
                Ok(())
            }
            other => other.map_err(kafka_err(context)),
        }
    }

    async fn rewind(&mut self) -> Result<()> {
        let partitions = self.partitions;
        let mut offsets = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            offsets
                .add_partition_offset(&self.topic, p, Offset::Offset(0))
                .map_err(kafka_err("rewind"))?;
        }
        let inner = self.inner.clone();
        let context = format!("rewind {} to the beginning", self.topic);
        tokio::task::spawn_blocking(move || inner.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| join_err("rewind", e))?
            .map_err(kafka_err(context))
    }
}
