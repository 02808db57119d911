//! The Kafka log, through rdkafka (librdkafka 2.12, bundled).
//!
//! Producers wait for every in-sync replica (`acks=all`) and are idempotent, so retries neither
//! lose nor reorder records of a key. Consumers never auto-commit: an offset is committed only
//! when [`LogConsumer::commit`] is called. Topics are created with the configured partitions and
//! replication factor when first used. Extra librdkafka properties from the configuration
//! (security, tuning) are applied to every client and override these defaults.

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
            .set("message.timeout.ms", "60000");
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
        let new = NewTopic::new(
            topic,
            self.partitions as i32,
            TopicReplication::Fixed(self.replication_factor),
        );
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
        let partitions = self.ensure_topic(topic).await?;
        let metadata = self.metadata.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            (0..partitions as i32)
                .map(|p| {
                    metadata
                        .fetch_watermarks(&name, p, REQUEST_TIMEOUT)
                        .map(|(_, high)| high.max(0) as u64)
                        .map_err(kafka_err(format!("end offset of {name}/{p}")))
                })
                .collect()
        })
        .await
        .map_err(|e| join_err("watermarks", e))?
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
            .set("enable.partition.eof", "false");
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
        Ok(Box::new(KafkaConsumer {
            inner: Arc::new(consumer),
            topic: topic.to_string(),
            partitions,
        }))
    }
}

/// A member of a Kafka consumer group.
struct KafkaConsumer {
    inner: Arc<StreamConsumer>,
    topic: String,
    /// The topic's partition count (for a rewind).
    partitions: u32,
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn poll(&mut self, wait: Duration) -> Result<Option<Record>> {
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
        tokio::task::spawn_blocking(move || inner.commit(&offsets, CommitMode::Sync))
            .await
            .map_err(|e| join_err("commit", e))?
            .map_err(kafka_err(context))
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
