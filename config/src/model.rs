//! The configuration types and their built-in defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secrets;

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwinConfig {
    /// Where every embedded backend keeps its data.
    pub data_dir: PathBuf,
    /// The event log.
    pub log: LogConfig,
    /// Topic names.
    pub topics: TopicNames,
    /// The embedding model.
    pub embedding: EmbeddingConfig,
    /// How documents are cut into chunks, per kind.
    pub chunking: ChunkingConfig,
    /// How the stream worker runs: batches, retries of failed writes, template detection.
    pub stream: StreamConfig,
    /// The warehouse: raw, cleaned and chunked documents.
    pub warehouse: WarehouseConfig,
    /// The vector store: embedded chunks for retrieval.
    pub vectors: VectorStoreConfig,
    /// Prometheus metrics of long-running roles.
    pub metrics: MetricsConfig,
    /// Whose twin this is: the author every crawled document is attributed to.
    pub author: AuthorConfig,
    /// Where the author writes, and how the crawlers behave.
    pub ingest: IngestConfig,
    /// How training datasets are built from snapshots, and the LLMs that help.
    pub datasets: DatasetsConfig,
    /// How `twin train` fine-tunes (every value also a `twin train` option).
    pub training: TrainingConfig,
    /// How the generation engine batches (`twin generate`, `twin serve`).
    pub generation: GenerationConfig,
    /// How `twin eval` evaluates a model.
    pub evaluation: EvaluationConfig,
    /// The inference service (`twin serve`).
    pub serving: ServingConfig,
}

impl Default for TwinConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".twin"),
            log: LogConfig::default(),
            topics: TopicNames::default(),
            embedding: EmbeddingConfig::default(),
            chunking: ChunkingConfig::default(),
            stream: StreamConfig::default(),
            warehouse: WarehouseConfig::default(),
            vectors: VectorStoreConfig::default(),
            metrics: MetricsConfig::default(),
            author: AuthorConfig::default(),
            ingest: IngestConfig::default(),
            datasets: DatasetsConfig::default(),
            training: TrainingConfig::default(),
            generation: GenerationConfig::default(),
            evaluation: EvaluationConfig::default(),
            serving: ServingConfig::default(),
        }
    }
}

impl TwinConfig {
    /// The configuration as TOML with every secret masked: safe to print or log.
    pub fn to_masked_toml(&self) -> String {
        let mut value =
            toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        secrets::mask_toml(&mut value);
        toml::to_string_pretty(&value).unwrap_or_default()
    }
}

/// Which event log implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogBackend {
    /// The durable single-machine log under `data_dir/log`.
    Embedded,
    /// A Kafka cluster (or any Kafka-protocol broker).
    Kafka,
}

/// The event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Which implementation.
    pub backend: LogBackend,
    /// Partitions of each topic the code creates.
    pub partitions: u32,
    /// Settings of the embedded log.
    pub embedded: EmbeddedLogConfig,
    /// Settings of the Kafka log.
    pub kafka: KafkaConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            backend: LogBackend::Embedded,
            partitions: 3,
            embedded: EmbeddedLogConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The embedded log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedLogConfig {
    /// fsync before acknowledging an append or a commit. Off, an acknowledged append survives a
    /// crash of the process (`kill -9`); on, it also survives a crash of the machine.
    pub fsync: bool,
}

/// The Kafka log.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated.
    pub brokers: String,
    /// Replication factor of the topics the code creates.
    pub replication_factor: i32,
    /// Client id the brokers see.
    pub client_id: String,
    /// Extra librdkafka properties, passed through as they are: security (`security.protocol`,
    /// `sasl.mechanisms`, `sasl.username`, `sasl.password`, `ssl.ca.location`...) and tuning.
    /// From the environment, `_` stands for `.`: `TWIN_LOG__KAFKA__PROPERTIES__SASL_PASSWORD`.
    /// Numbers and booleans are taken as their text (`session.timeout.ms = 10000`).
    #[serde(deserialize_with = "scalar_texts")]
    pub properties: BTreeMap<String, String>,
}

/// A map of scalars as text: librdkafka takes every property as a string, but a number in
/// TOML or in an environment variable arrives as a number.
fn scalar_texts<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Integer(i64),
        Unsigned(u64),
        Float(f64),
        Flag(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(t) => t,
                Scalar::Integer(n) => n.to_string(),
                Scalar::Unsigned(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Flag(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            replication_factor: 1,
            client_id: "twin".into(),
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// The extra properties with librdkafka's dotted names. A key without any `.` came from the
    /// environment, where dots cannot be written, so its `_` become `.`.
    pub fn librdkafka_properties(&self) -> impl Iterator<Item = (String, &str)> {
        self.properties.iter().map(|(k, v)| {
            let name = if k.contains('.') {
                k.clone()
            } else {
                k.replace('_', ".")
            };
            (name, v.as_str())
        })
    }
}

// Hand-written so that a `{:?}` in a log line never prints a password.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), secrets::masked(k, v)))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("replication_factor", &self.replication_factor)
            .field("client_id", &self.client_id)
            .field("properties", &properties)
            .finish()
    }
}

/// Names of the topics the pipelines use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicNames {
    /// Crawled documents and tombstones.
    pub raw_documents: String,
    /// Cleaned documents.
    pub cleaned_documents: String,
    /// Chunks.
    pub chunks: String,
    /// Embedded chunks.
    pub embedded_chunks: String,
    /// Events that could not be processed, with the error.
    pub dead_letters: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self {
            raw_documents: "raw-documents".into(),
            cleaned_documents: "cleaned-documents".into(),
            chunks: "chunks".into(),
            embedded_chunks: "embedded-chunks".into(),
            dead_letters: "dead-letters".into(),
        }
    }
}

impl TopicNames {
    /// Every topic, in pipeline order.
    pub fn all(&self) -> [&str; 5] {
        [
            &self.raw_documents,
            &self.cleaned_documents,
            &self.chunks,
            &self.embedded_chunks,
            &self.dead_letters,
        ]
    }
}

/// The embedding model and how it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Model id on the Hugging Face Hub.
    pub model: String,
    /// A folder holding the model's `config.json`, `tokenizer.json` and `model.safetensors`;
    /// unset, the model is looked up under `data_dir/models` and the tool cache, then pulled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<PathBuf>,
    /// Hub the model is pulled from (default: `HF_ENDPOINT`, else huggingface.co). A token, if
    /// the hub needs one, comes from `HF_TOKEN`.
    pub hub_endpoint: String,
    /// Revision (branch, tag or commit) pulled.
    pub revision: String,
    /// ONNX Runtime's shared library (default: `ORT_DYLIB_PATH`, else the setup script's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onnxruntime_library: Option<PathBuf>,
    /// Sessions embedding batches concurrently; 0 means one per core.
    pub workers: usize,
    /// ONNX Runtime intra-op threads per worker.
    pub intra_threads: usize,
    /// Longest input in tokens (the model's window); longer texts are truncated.
    pub max_tokens: usize,
    /// Most tokens in one batch, padding included.
    pub max_batch_tokens: usize,
    /// Most texts in one batch.
    pub max_batch_size: usize,
    /// Arithmetic of the encoder's matrix products: `fp32` (exact), or `int8` (weights quantized
    /// to 8 bits by the exporter, activations quantized on the fly: faster, close to fp32).
    pub precision: EmbeddingPrecision,
}

/// Arithmetic of the embedding encoder's matrix products.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingPrecision {
    /// 32-bit floats: the model as trained.
    #[default]
    Fp32,
    /// 8-bit integer weights (per output column) and activations (per batch), dynamically
    /// quantized; accumulation in 32-bit integers.
    Int8,
}

impl EmbeddingPrecision {
    /// Its name in `twin.toml`, in the exported file's name and in logs.
    pub fn name(self) -> &'static str {
        match self {
            EmbeddingPrecision::Fp32 => "fp32",
            EmbeddingPrecision::Int8 => "int8",
        }
    }
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        Self {
            model: "sentence-transformers/all-MiniLM-L6-v2".into(),
            model_dir: None,
            hub_endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            revision: "main".into(),
            onnxruntime_library: None,
            workers: 0,
            intra_threads: 1,
            max_tokens: 256,
            max_batch_tokens: 512,
            max_batch_size: 64,
            precision: EmbeddingPrecision::Fp32,
        }
    }
}

/// How documents are cut into chunks, per kind of document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Articles: long prose, cut between sentences, sections start chunks.
    pub article: ChunkRule,
    /// Posts: short prose.
    pub post: ChunkRule,
    /// Repositories: code, cut between lines, never overlapping.
    pub repository: ChunkRule,
    /// Larger documents (text bytes) are refused by the chunk stage and dead-lettered, so that
    /// one pathological document cannot exhaust the worker's memory.
    pub max_document_bytes: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            article: ChunkRule {
                max_tokens: 254,
                overlap_tokens: 32,
            },
            post: ChunkRule {
                max_tokens: 128,
                overlap_tokens: 16,
            },
            repository: ChunkRule {
                max_tokens: 254,
                overlap_tokens: 0,
            },
            max_document_bytes: 32 << 20,
        }
    }
}

/// Size of the chunks of one kind of document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRule {
    /// Most tokens in a chunk; clamped to the embedding model's window less its special tokens.
    pub max_tokens: usize,
    /// Tokens of whole sentences repeated from the end of one chunk at the start of the next.
    pub overlap_tokens: usize,
}

/// Which warehouse implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarehouseBackend {
    /// SQLite under `data_dir/warehouse.sqlite`.
    Embedded,
    /// A ClickHouse server.
    ClickHouse,
}

/// The warehouse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarehouseConfig {
    /// Which implementation.
    pub backend: WarehouseBackend,
    /// Settings of the ClickHouse warehouse.
    pub clickhouse: ClickHouseConfig,
}

impl Default for WarehouseConfig {
    fn default() -> Self {
        Self {
            backend: WarehouseBackend::Embedded,
            clickhouse: ClickHouseConfig::default(),
        }
    }
}

/// A ClickHouse server.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface.
    pub url: String,
    /// Database the tables live in (created if missing).
    pub database: String,
    /// User.
    pub user: String,
    /// Password (masked wherever configuration is shown).
    pub password: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "twin".into(),
            user: "default".into(),
            password: String::new(),
        }
    }
}

// Hand-written so that a `{:?}` never prints the password.
impl fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &secrets::masked("password", &self.password))
            .finish()
    }
}

/// Which vector store implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VectorStoreBackend {
    /// Qdrant Edge, in-process, under `data_dir/vectors`.
    Edge,
    /// A Qdrant server.
    Qdrant,
}

/// The vector store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VectorStoreConfig {
    /// Which implementation.
    pub backend: VectorStoreBackend,
    /// Prefix of the collection names (`{prefix}articles`, `{prefix}posts`, `{prefix}repositories`).
    pub collection_prefix: String,
    /// Settings of the Qdrant server.
    pub qdrant: QdrantConfig,
}

impl Default for VectorStoreConfig {
    fn default() -> Self {
        Self {
            backend: VectorStoreBackend::Edge,
            collection_prefix: "twin_".into(),
            qdrant: QdrantConfig::default(),
        }
    }
}

/// A Qdrant server.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QdrantConfig {
    /// gRPC url.
    pub url: String,
    /// API key, if the server needs one (masked wherever configuration is shown).
    pub api_key: String,
}

impl Default for QdrantConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:6334".into(),
            api_key: String::new(),
        }
    }
}

// Hand-written so that a `{:?}` never prints the API key.
impl fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantConfig")
            .field("url", &self.url)
            .field("api_key", &secrets::masked("api_key", &self.api_key))
            .finish()
    }
}

/// The stream worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Most events handled per batch.
    pub batch_size: usize,
    /// Tries of a batch's writes (sinks and topics) when they fail in a way a retry can help (a
    /// server unreachable or overloaded), before the worker stops.
    pub write_attempts: u32,
    /// Wait before the second try, in milliseconds; doubled for each further try, up to 10 s.
    pub write_backoff_ms: u64,
    /// Detection of a source's page template, dropped by the clean stage.
    pub templates: TemplateConfig,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            write_attempts: 6,
            write_backoff_ms: 200,
            templates: TemplateConfig::default(),
        }
    }
}

/// A block (a paragraph, heading, list item...) is part of a source's template, and dropped,
/// when at least `min_documents` documents of the source hold it and they are at least
/// `min_share` of the source's documents. A source is a platform and a host (a publication).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TemplateConfig {
    /// Detect and drop templates.
    pub enabled: bool,
    /// Fewest documents of a source holding a block for it to be template.
    pub min_documents: usize,
    /// Smallest share of the source's documents holding a block for it to be template: high,
    /// so that an author's habits (a sign-off in half the posts, a "Conclusion" heading) stay.
    pub min_share: f64,
    /// Longer blocks are never template (chrome is short; the author's paragraphs are not).
    pub max_block_chars: usize,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_documents: 5,
            min_share: 0.8,
            max_block_chars: 300,
        }
    }
}

/// Prometheus metrics: each long-running role serves `/metrics` on its own address, so that
/// several roles on one machine all export. An empty address turns a role's metrics off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where `twin stream` serves `/metrics`.
    pub stream: String,
    /// Where scheduled `twin ingest` serves `/metrics`.
    pub ingest: String,
    /// Unused: `twin serve` serves `/metrics` on its own API address (kept so that older
    /// configuration files still load).
    pub serve: String,
    /// Where `twin train` serves `/metrics` while it trains.
    pub train: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            stream: "127.0.0.1:9464".into(),
            ingest: "127.0.0.1:9465".into(),
            serve: "127.0.0.1:9466".into(),
            train: "127.0.0.1:9467".into(),
        }
    }
}

/// The person whose writing the twin learns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorConfig {
    /// Stable id, carried by every document (not any platform's id).
    pub id: String,
    /// Full name.
    pub full_name: String,
}

impl Default for AuthorConfig {
    fn default() -> Self {
        Self {
            id: "me".into(),
            full_name: String::new(),
        }
    }
}

/// The crawlers: what they crawl, when, and how politely.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// When sources without a schedule of their own are crawled again by `twin ingest`: an
    /// interval (`30m`, `6h`, `1d`) or a cron expression (`0 */6 * * *`, UTC).
    pub schedule: String,
    /// Where the author writes, one entry per source (`[[ingest.sources]]`).
    pub sources: Vec<SourceConfig>,
    /// How the crawlers talk HTTP.
    pub http: HttpConfig,
    /// GitHub: API endpoint, token and which files of a repository count.
    pub github: GithubConfig,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            schedule: "6h".into(),
            sources: Vec::new(),
            http: HttpConfig::default(),
            github: GithubConfig::default(),
        }
    }
}

/// One place the author writes. The crawler is picked from `url` (medium.com, substack.com,
/// github.com, linkedin.com, anything else: a web article) unless `platform` names it, which
/// custom domains and local mirrors need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// The profile, publication, user or organisation, or article url.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `medium`, `substack`, `linkedin`, `github` or `web`; unset, picked from `url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// LinkedIn only: the data export ZIP a member downloads from LinkedIn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export: Option<PathBuf>,
    /// LinkedIn only: read the export's posts whose `Visibility` is not public (connections
    /// only) too. Off: the twin holds only what the author made public.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub include_non_public: bool,
    /// More article urls of this source: older Medium articles the feed no longer lists, public
    /// LinkedIn post urls, further web articles.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub articles: Vec<String>,
    /// This source's own schedule (interval or cron expression); unset, `ingest.schedule`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The source is on this machine or a private network: its crawler may reach loopback and
    /// private addresses, which others refuse (also when a redirect or a host name leads
    /// there). Implied when the source's url itself names such an address or `localhost`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
}

/// How the crawlers talk HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// User agent sent with every request, and matched against robots.txt.
    pub user_agent: String,
    /// Seconds one request may take, body included.
    pub timeout_secs: f64,
    /// Retries of a request that failed with 429, 5xx, a timeout or a broken connection.
    pub retries: u32,
    /// First retry delay in milliseconds when the server gives no Retry-After; doubled per retry.
    pub backoff_ms: u64,
    /// Longest Retry-After honoured, in seconds; a server asking for more fails the request.
    pub max_retry_after_secs: u64,
    /// Largest response body accepted, in bytes.
    pub max_response_bytes: u64,
    /// Requests per second to one host (robots.txt's Crawl-delay can only slow it down); 0 means
    /// no limit.
    pub requests_per_second: f64,
    /// Pages of one source fetched at the same time.
    pub concurrency: usize,
    /// Obey robots.txt for pages and feeds (APIs are not crawled pages and are exempt).
    pub respect_robots_txt: bool,
    /// How long a robots.txt is kept before it is fetched again, in seconds (RFC 9309: at most
    /// a day); a failure to fetch it is kept a minute at most.
    pub robots_txt_ttl_secs: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            user_agent: concat!(
                "twin-crawler/",
                env!("CARGO_PKG_VERSION"),
                " (+https://github.com/llm-twin/twin)"
            )
            .into(),
            timeout_secs: 30.0,
            retries: 4,
            backoff_ms: 500,
            max_retry_after_secs: 120,
            max_response_bytes: 20 * 1024 * 1024,
            requests_per_second: 1.0,
            concurrency: 4,
            respect_robots_txt: true,
            robots_txt_ttl_secs: 24 * 60 * 60,
        }
    }
}

/// GitHub: where its API is and which files of a repository make the document.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    /// REST API endpoint.
    pub api_url: String,
    /// Token for the API (raises the rate limit); `GITHUB_TOKEN` in the environment is used when
    /// this is empty. Never logged.
    pub token: String,
    /// Crawl forks too.
    pub include_forks: bool,
    /// Crawl archived repositories too.
    pub include_archived: bool,
    /// Files larger than this many bytes are skipped.
    pub max_file_bytes: u64,
    /// A repository's document stops growing at this many bytes of files.
    pub max_repository_bytes: u64,
    /// A repository's tarball is refused when it inflates past this many bytes (a gzip bomb
    /// guard: the download is bounded, what it inflates to is not).
    pub max_archive_bytes: u64,
    /// A repository's tarball is refused past this many entries.
    pub max_archive_entries: u64,
    /// Glob patterns of paths skipped, on top of the built-in vendored/generated/binary rules.
    pub skip: Vec<String>,
    /// Glob patterns of paths kept even when a built-in rule would skip them.
    pub keep: Vec<String>,
}

impl Default for GithubConfig {
    fn default() -> Self {
        Self {
            api_url: "https://api.github.com".into(),
            token: String::new(),
            include_forks: false,
            include_archived: true,
            max_file_bytes: 256 * 1024,
            max_repository_bytes: 8 * 1024 * 1024,
            max_archive_bytes: 1024 * 1024 * 1024,
            max_archive_entries: 200_000,
            skip: Vec::new(),
            keep: Vec::new(),
        }
    }
}

// Hand-written so that a `{:?}` never prints the token.
impl fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubConfig")
            .field("api_url", &self.api_url)
            .field("token", &secrets::masked("token", &self.token))
            .field("include_forks", &self.include_forks)
            .field("include_archived", &self.include_archived)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("max_repository_bytes", &self.max_repository_bytes)
            .field("max_archive_bytes", &self.max_archive_bytes)
            .field("max_archive_entries", &self.max_archive_entries)
            .field("skip", &self.skip)
            .field("keep", &self.keep)
            .finish()
    }
}

/// How `twin dataset build` turns a snapshot into samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetsConfig {
    /// The generator used when `--generator` is not given: `offline` (no LLM) or the name of
    /// one of `generators`.
    pub generator: String,
    /// Neighbouring chunks of a document are joined into one answer up to this many tokens.
    pub passage_tokens: usize,
    /// Shortest instruction kept, in characters.
    pub min_instruction_chars: usize,
    /// Longest instruction kept, in characters.
    pub max_instruction_chars: usize,
    /// Shortest answer kept, in characters.
    pub min_answer_chars: usize,
    /// Longest answer kept, in characters.
    pub max_answer_chars: usize,
    /// Answers whose estimated Jaccard similarity (MinHash over word 3-grams) to an answer
    /// already kept reaches this are near-duplicates, and dropped. 1.0 keeps all but exact ones.
    pub near_duplicate_threshold: f64,
    /// Share of documents whose samples go to the test split, when `--test-fraction` is not given.
    pub test_fraction: f64,
    /// Seed of the split and of the sample order, when `--seed` is not given.
    pub seed: u64,
    /// OpenAI-compatible chat endpoints, by name (`[datasets.generators.NAME]`).
    pub generators: BTreeMap<String, GeneratorConfig>,
}

impl Default for DatasetsConfig {
    fn default() -> Self {
        Self {
            generator: "offline".into(),
            passage_tokens: 512,
            min_instruction_chars: 10,
            max_instruction_chars: 1_000,
            min_answer_chars: 200,
            max_answer_chars: 8_000,
            near_duplicate_threshold: 0.8,
            test_fraction: 0.1,
            seed: 42,
            generators: BTreeMap::new(),
        }
    }
}

/// How the generator asks for structured JSON answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// `response_format: {type: json_schema}` with the answer's schema (OpenAI, vLLM, Ollama...).
    JsonSchema,
    /// `response_format: {type: json_object}`: JSON, shape described in the prompt only.
    JsonObject,
    /// No `response_format`: the prompt asks for JSON.
    Prompt,
}

/// An OpenAI-compatible chat-completions endpoint that writes instructions and answers.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// The API's base url, up to and including `/v1`.
    pub base_url: String,
    /// The model to ask.
    pub model: String,
    /// The environment variable that holds the API key.
    pub api_key_env: String,
    /// The API key itself, when not in the environment (a secret: never logged or shown).
    pub api_key: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Longest wait for one answer, in seconds.
    pub timeout_secs: u64,
    /// Tries of a request that was rate limited, failed on the server or timed out.
    pub max_attempts: u32,
    /// Wait before the second try, in milliseconds, doubled for each further try (up to 30 s);
    /// a `Retry-After` header overrides it.
    pub backoff_ms: u64,
    /// Sampling temperature.
    pub temperature: f64,
    /// Most tokens per answer.
    pub max_tokens: u32,
    /// How structured output is asked for.
    pub structured_output: StructuredOutput,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".into(),
            model: "gpt-4o-mini".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            api_key: String::new(),
            concurrency: 4,
            timeout_secs: 60,
            max_attempts: 6,
            backoff_ms: 500,
            temperature: 0.7,
            max_tokens: 1024,
            structured_output: StructuredOutput::JsonSchema,
        }
    }
}

// Hand-written so that a `{:?}` never prints the API key.
impl fmt::Debug for GeneratorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratorConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &secrets::masked("api_key", &self.api_key))
            .field("concurrency", &self.concurrency)
            .field("timeout_secs", &self.timeout_secs)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl GeneratorConfig {
    /// The API key: the configured one, else the environment variable's (empty when neither).
    pub fn resolve_api_key(&self) -> Option<String> {
        api_key(&self.api_key, &self.api_key_env)
    }
}

/// A key configured, else the one in the environment variable `env` (none when neither).
fn api_key(configured: &str, env: &str) -> Option<String> {
    if !configured.is_empty() {
        return Some(configured.to_string());
    }
    std::env::var(env).ok().filter(|k| !k.is_empty())
}

/// Fine-tuning (`[training]`): what `twin train` does when an option is not given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingConfig {
    /// `lora` (small adapters beside frozen weights) or `full` (every weight).
    pub method: TrainingMethod,
    /// Passes over the training split (when `max_steps` is not set).
    pub epochs: u32,
    /// Stop after this many optimizer steps, whatever the epochs.
    pub max_steps: Option<u64>,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation: usize,
    /// Longest row in tokens; longer samples are left out (and counted).
    pub max_seq_len: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay (on matrices, not on biases and norms).
    pub weight_decay: f64,
    /// AdamW's beta1.
    pub adam_beta1: f64,
    /// AdamW's beta2.
    pub adam_beta2: f64,
    /// AdamW's epsilon.
    pub adam_epsilon: f64,
    /// Steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// Decay after warm-up: `cosine`, `linear` or `constant`.
    pub schedule: LrSchedule,
    /// Gradients are scaled down to this global norm (0 turns clipping off).
    pub max_grad_norm: f64,
    /// Several samples share a row (each still sees only itself).
    pub packing: bool,
    /// Loss on the answer tokens only (not on the prompt).
    pub answer_only: bool,
    /// Evaluation loss on the test split every this many steps (0: only at the end).
    pub eval_every: u64,
    /// A checkpoint every this many steps (0: only at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Seed of initialisation, data order and dropout.
    pub seed: u64,
    /// `auto` (CUDA when libtorch sees a GPU), `cpu` or `cuda`.
    pub device: String,
    /// `auto` (bf16 on a GPU that has it, else f32), `f32` or `bf16`.
    pub precision: String,
    /// LoRA's shape.
    pub lora: LoraConfig,
    /// Preference tuning (`method = "dpo"`).
    pub dpo: DpoConfig,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            method: TrainingMethod::Lora,
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            gradient_accumulation: 1,
            max_seq_len: 512,
            learning_rate: 2e-4,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            warmup_steps: 10,
            schedule: LrSchedule::Cosine,
            max_grad_norm: 1.0,
            packing: true,
            answer_only: true,
            eval_every: 50,
            checkpoint_every: 100,
            seed: 42,
            device: "auto".into(),
            precision: "auto".into(),
            lora: LoraConfig::default(),
            dpo: DpoConfig::default(),
        }
    }
}

/// The generation engine (`[generation]`): how many requests share a decode step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationConfig {
    /// Most sequences decoded together.
    pub max_batch_size: usize,
    /// Most tokens (prompt plus tokens asked for, summed over the running requests) in the
    /// batch's key/value cache; a request waits until it fits.
    pub max_batch_tokens: usize,
    /// ONNX Runtime threads per operator (0: one per core).
    pub threads: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 16,
            max_batch_tokens: 32_768,
            threads: 0,
        }
    }
}

/// The inference service (`[serving]`): where it listens, what it serves, and its limits.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Address to listen on.
    pub address: String,
    /// The model served: `name[@vN]` of the registry, a checkpoint folder or an exported folder
    /// (`twin serve --model` overrides it).
    pub model: String,
    /// Bearer token clients must send (`Authorization: Bearer ...`); empty: no authentication.
    /// A secret: never logged or shown. Better from `TWIN_SERVING__API_TOKEN`.
    pub api_token: String,
    /// Requests handled at once.
    pub max_concurrent_requests: usize,
    /// Requests waiting for a slot beyond those; more are answered 429 with Retry-After.
    pub max_queued_requests: usize,
    /// Longest a request may take, in seconds (then 504); a streamed answer ends there too.
    pub request_timeout_secs: u64,
    /// Longest a client may take to send a request's headers, in seconds (slow clients that
    /// hold connections open are cut).
    pub header_read_timeout_secs: u64,
    /// A connection that moves no bytes for this many seconds is closed.
    pub idle_timeout_secs: u64,
    /// Most connections open at once; further clients wait to be accepted.
    pub max_connections: usize,
    /// Largest request body, in bytes (then 413).
    pub max_body_bytes: usize,
    /// Longest query or prompt, in characters (then 422).
    pub max_query_chars: usize,
    /// Chunks of context retrieved for an answer, when a request does not say.
    pub k: usize,
    /// Candidates fetched per collection before re-ranking.
    pub candidates: usize,
    /// Maximal marginal relevance: 1 ranks by relevance only, lower favours chunks unlike those
    /// already chosen.
    pub mmr_lambda: f32,
    /// Tokens of an answer, when a request does not say.
    pub max_tokens: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
    /// Share of requests whose trace is written to the warehouse (0: none, 1: all).
    pub trace_sample_rate: f64,
    /// Rewrites of each query the model writes and retrieval searches besides it, fused by
    /// reciprocal rank (query expansion; 0 to 5, each costs a generation).
    pub expansions: usize,
    /// Whether chat completions retrieve context when a request does not say.
    pub retrieval: bool,
    /// An external OpenAI-compatible endpoint that generates instead of our engine.
    pub remote: RemoteModelConfig,
    /// A cross-encoder that re-ranks retrieval's candidates (instead of maximal marginal
    /// relevance).
    pub reranker: RerankerConfig,
}

/// The re-ranker (`[serving.reranker]`): a Hugging Face BERT cross-encoder checkpoint
/// (`BertForSequenceClassification`), exported to ONNX on first use. Found and pulled as the
/// embedding model is (under `DATA_DIR/models`, the tool cache, then `[embedding] hub_endpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankerConfig {
    /// Model id, e.g. `cross-encoder/ms-marco-MiniLM-L6-v2`; empty: no cross-encoder, maximal
    /// marginal relevance re-ranks.
    pub model: String,
    /// A folder holding its `config.json`, `tokenizer.json` and `model.safetensors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_dir: Option<PathBuf>,
    /// Longest (query, passage) pair in tokens.
    pub max_tokens: usize,
    /// Pairs scored in one batch.
    pub max_batch_size: usize,
}

impl Default for RerankerConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            model_dir: None,
            max_tokens: 512,
            max_batch_size: 32,
        }
    }
}

/// An external OpenAI-compatible model (`[serving.remote]`): set `base_url` to generate there
/// instead of on our engine (retrieval stays ours).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteModelConfig {
    /// The API's base url, up to and including `/v1`; empty: our engine generates.
    pub base_url: String,
    /// The model it serves.
    pub model: String,
    /// The environment variable that holds the API key.
    pub api_key_env: String,
    /// The API key itself, when not in the environment (a secret: never logged or shown).
    pub api_key: String,
    /// The model's context length, tokens (prompts are estimated at four characters a token).
    pub context_tokens: usize,
    /// Longest wait for an answer, seconds.
    pub timeout_secs: u64,
}

impl Default for RemoteModelConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            api_key: String::new(),
            context_tokens: 8192,
            timeout_secs: 120,
        }
    }
}

// Hand-written so that a `{:?}` never prints the key.
impl fmt::Debug for RemoteModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteModelConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &secrets::masked("api_key", &self.api_key))
            .finish_non_exhaustive()
    }
}

impl RemoteModelConfig {
    /// The API key: the configured one, else the environment variable's.
    pub fn resolve_api_key(&self) -> Option<String> {
        api_key(&self.api_key, &self.api_key_env)
    }
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8000".into(),
            model: String::new(),
            api_token: String::new(),
            max_concurrent_requests: 8,
            max_queued_requests: 64,
            request_timeout_secs: 120,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 1024,
            max_body_bytes: 256 * 1024,
            max_query_chars: 8_000,
            k: 4,
            candidates: 20,
            mmr_lambda: 0.7,
            max_tokens: 256,
            cors_origins: Vec::new(),
            shutdown_grace_secs: 30,
            trace_sample_rate: 1.0,
            expansions: 0,
            retrieval: true,
            remote: RemoteModelConfig::default(),
            reranker: RerankerConfig::default(),
        }
    }
}

// Hand-written so that a `{:?}` never prints the token.
impl fmt::Debug for ServingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingConfig")
            .field("address", &self.address)
            .field("model", &self.model)
            .field("api_token", &secrets::masked("api_token", &self.api_token))
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_queued_requests", &self.max_queued_requests)
            .field("remote", &self.remote)
            .field("reranker", &self.reranker)
            .finish_non_exhaustive()
    }
}

/// How `twin eval` evaluates (`[evaluation]`; each value also a `twin eval` option).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Test samples evaluated (the first ones of the test split, in its order); 0: all.
    pub samples: usize,
    /// Most tokens of each generated answer.
    pub max_tokens: usize,
    /// Sampling temperature of the answers (0: greedy).
    pub temperature: f32,
    /// Nucleus sampling of the answers (1: off).
    pub top_p: f32,
    /// Seed of the answers: sample `i` is drawn with `seed + i`, so an evaluation repeats.
    pub seed: u64,
    /// Rows per batch when computing perplexity.
    pub batch_size: usize,
    /// The judge's model, when `--judge` is a url rather than a configured endpoint.
    pub judge_model: String,
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            samples: 100,
            max_tokens: 256,
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            batch_size: 4,
            judge_model: "gpt-4o-mini".into(),
        }
    }
}

/// What fine-tuning changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainingMethod {
    /// Low-rank adapters beside frozen weights.
    Lora,
    /// Every weight.
    Full,
    /// Preference tuning (DPO or IPO) on a preference dataset: LoRA adapters or every weight, as
    /// `[training.dpo] weights` says.
    Dpo,
}

impl TrainingConfig {
    /// Whether the run trains LoRA adapters (LoRA, or DPO on adapters) rather than every weight.
    pub fn trains_adapters(&self) -> bool {
        match self.method {
            TrainingMethod::Lora => true,
            TrainingMethod::Full => false,
            TrainingMethod::Dpo => self.dpo.weights == "lora",
        }
    }
}

/// Preference tuning (`[training.dpo]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// How far the policy may move from the reference (β).
    pub beta: f64,
    /// Probability that a pair's labels are flipped (conservative DPO); 0 for plain DPO.
    pub label_smoothing: f64,
    /// `sigmoid` (DPO) or `ipo`.
    pub loss: String,
    /// `cached` (the reference's log-probabilities computed once before training) or
    /// `on_the_fly` (every step; with full weights that holds a second copy of the model).
    pub reference: String,
    /// What is trained: `lora` (the reference is the base with the adapters off) or `full`.
    pub weights: String,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            label_smoothing: 0.0,
            loss: "sigmoid".into(),
            reference: "cached".into(),
            weights: "lora".into(),
        }
    }
}

/// How the learning rate falls after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Half a cosine from the peak to 0.
    Cosine,
    /// A straight line from the peak to 0.
    Linear,
    /// The peak throughout.
    Constant,
}

/// LoRA (`[training.lora]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the adapter matrices.
    pub rank: i64,
    /// Updates are scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Projections that get adapters, by module name (`q_proj`, `c_attn`); empty: the
    /// family's attention and MLP projections.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: Vec::new(),
        }
    }
}
