//! Configuration of the LLM twin platform, in three layers, each overriding the one before:
//!
//! 1. built-in defaults ([`TwinConfig::default`]): everything embedded, data under `./.twin/`;
//! 2. a TOML file, `twin.toml` in the working directory unless another is named;
//! 3. environment variables prefixed `TWIN_`, with `__` between nested keys
//!    (`TWIN_LOG__BACKEND=kafka`, `TWIN_LOG__KAFKA__BROKERS=host:9092`).
//!
//! Modules: [`model`] holds the configuration types; [`secrets`] decides what is a secret and
//! masks it wherever configuration is shown or logged; [`layout`] names where each embedded
//! backend keeps its files under the data folder.

pub mod layout;
pub mod model;
pub mod secrets;

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

pub use layout::DataLayout;
pub use model::{
    AuthorConfig, ChunkRule, ChunkingConfig, ClickHouseConfig, DatasetsConfig, DpoConfig,
    EmbeddedLogConfig, EmbeddingConfig, EmbeddingPrecision, EvaluationConfig, GenerationConfig,
    GeneratorConfig, GithubConfig, HttpConfig, IngestConfig, KafkaConfig, LogBackend, LogConfig,
    LoraConfig, LrSchedule, MetricsConfig, QdrantConfig, RemoteModelConfig, RerankerConfig,
    ServingConfig, SourceConfig, StreamConfig, StructuredOutput, TemplateConfig, TopicNames,
    TrainingConfig, TrainingMethod, TwinConfig, VectorStoreBackend, VectorStoreConfig,
    WarehouseBackend, WarehouseConfig,
};

/// The file read when none is named.
pub const DEFAULT_FILE: &str = "twin.toml";

/// What can go wrong loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that was named explicitly does not exist.
    #[error("configuration file {0} does not exist")]
    Missing(PathBuf),
    /// A value is malformed or of the wrong type; the message names the key, what was expected
    /// and where the value came from (file path or environment variable).
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A file named by the user (`--config` or `TWIN_CONFIG`); it must exist.
    pub file: Option<PathBuf>,
    /// Read environment variables (off in tests that must not see the caller's environment).
    pub ignore_env: bool,
}

/// Load defaults, then the file, then the environment.
///
/// Without an explicit file, `twin.toml` in the working directory is read if it exists.
pub fn load(sources: &Sources) -> Result<(TwinConfig, Option<PathBuf>), ConfigError> {
    let file = match &sources.file {
        Some(path) if !path.exists() => return Err(ConfigError::Missing(path.clone())),
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.exists()),
    };
    let mut figment = Figment::from(Serialized::defaults(TwinConfig::default()));
    if let Some(path) = &file {
        figment = figment.merge(Toml::file_exact(path));
    }
    if !sources.ignore_env {
        // TWIN_CONFIG names the file itself; it is not a key.
        figment = figment.merge(
            Env::prefixed("TWIN_")
                .split("__")
                .filter(|key| key.as_str() != "config"),
        );
    }
    let config: TwinConfig = figment
        .extract()
        .map_err(|e| describe(e, file.as_deref()))?;
    Ok((config, file))
}

/// figment reports every problem; keep all of them, one per line, with their origin.
fn describe(error: figment::Error, file: Option<&Path>) -> ConfigError {
    let lines: Vec<String> = error
        .into_iter()
        .map(|e| {
            let mut line = String::new();
            if !e.path.is_empty() {
                line.push_str(&format!("key `{}`: ", e.path.join(".")));
            }
            line.push_str(&e.kind.to_string());
            match &e.metadata {
                Some(meta) => {
                    let origin = meta
                        .source
                        .as_ref()
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| meta.name.to_string());
                    line.push_str(&format!(" (in {origin})"));
                }
                None => {
                    if let Some(path) = file {
                        line.push_str(&format!(" (in {})", path.display()));
                    }
                }
            }
            line
        })
        .collect();
    ConfigError::Invalid(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_file(text: &str) -> Result<TwinConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("twin.toml");
        std::fs::write(&path, text).expect("write");
        load(&Sources {
            file: Some(path),
            ignore_env: true,
        })
        .map(|(c, _)| c)
    }

    #[test]
    fn defaults_are_all_embedded() {
        let (config, file) = load(&Sources {
            file: None,
            ignore_env: true,
        })
        .expect("defaults load");
        assert_eq!(config.log.backend, LogBackend::Embedded);
        assert_eq!(config.data_dir, PathBuf::from(".twin"));
        assert!(file.is_none() || file == Some(PathBuf::from(DEFAULT_FILE)));
    }

    #[test]
    fn the_file_overrides_defaults_and_keeps_the_rest() {
        let config = load_file(
            "[log]\nbackend = \"kafka\"\npartitions = 6\n[log.kafka]\nbrokers = \"k1:9092,k2:9092\"\n",
        )
        .expect("loads");
        assert_eq!(config.log.backend, LogBackend::Kafka);
        assert_eq!(config.log.partitions, 6);
        assert_eq!(config.log.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(config.topics.raw_documents, "raw-documents");
    }

    #[test]
    fn a_wrong_type_names_the_file_the_key_and_the_expectation() {
        let err = load_file("[log]\npartitions = \"many\"\n").expect_err("bad type");
        let msg = err.to_string();
        assert!(msg.contains("log.partitions"), "{msg}");
        assert!(msg.contains("twin.toml"), "{msg}");
        assert!(msg.contains("expected"), "{msg}");
    }

    #[test]
    fn training_settings_come_from_the_file_over_the_defaults() {
        let config = load_file(
            "[training]\nmethod = \"full\"\nmax_steps = 300\nschedule = \"linear\"\n\
             [training.lora]\nrank = 8\ntargets = [\"q_proj\", \"v_proj\"]\n",
        )
        .expect("valid");
        assert_eq!(config.training.method, TrainingMethod::Full);
        assert_eq!(config.training.max_steps, Some(300));
        assert_eq!(config.training.schedule, LrSchedule::Linear);
        assert_eq!(config.training.lora.rank, 8);
        assert_eq!(
            config.training.lora.alpha, 32.0,
            "unset keys keep their defaults"
        );
        assert_eq!(config.training.batch_size, 8);
        let msg = load_file("[training]\nmethod = \"qlora\"\n")
            .expect_err("bad method")
            .to_string();
        assert!(msg.contains("lora") && msg.contains("full"), "{msg}");
    }

    #[test]
    fn embedding_precision_is_fp32_unless_int8_is_asked_for() {
        let config = load_file("[embedding]\nworkers = 2\n").expect("valid");
        assert_eq!(config.embedding.precision, EmbeddingPrecision::Fp32);
        let config = load_file("[embedding]\nprecision = \"int8\"\n").expect("valid");
        assert_eq!(config.embedding.precision, EmbeddingPrecision::Int8);
        let msg = load_file("[embedding]\nprecision = \"int4\"\n")
            .expect_err("unknown precision")
            .to_string();
        assert!(
            msg.contains("int4") && msg.contains("fp32") && msg.contains("int8"),
            "{msg}"
        );
    }

    #[test]
    fn a_misspelt_key_is_refused_not_ignored() {
        let err = load_file("[log]\npartitons = 3\n").expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("partitons"), "{msg}");
        assert!(msg.contains("twin.toml"), "{msg}");
    }

    #[test]
    fn a_bad_backend_lists_the_choices() {
        let msg = load_file("[log]\nbackend = \"rabbitmq\"\n")
            .expect_err("bad variant")
            .to_string();
        assert!(
            msg.contains("rabbitmq") && msg.contains("embedded") && msg.contains("kafka"),
            "{msg}"
        );
    }

    #[test]
    fn broken_toml_names_the_line() {
        let msg = load_file("[log\nbackend = 1\n")
            .expect_err("syntax")
            .to_string();
        assert!(msg.contains("twin.toml") && msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn numeric_kafka_properties_are_taken_as_text() {
        let config = load_file(
            "[log.kafka.properties]\n\"session.timeout.ms\" = 10000\n\"enable.idempotence\" = true\n",
        )
        .expect("numbers and flags");
        let properties: Vec<(String, &str)> = config.log.kafka.librdkafka_properties().collect();
        assert_eq!(
            properties,
            [
                ("enable.idempotence".to_string(), "true"),
                ("session.timeout.ms".to_string(), "10000")
            ]
        );
    }

    #[test]
    fn a_named_file_that_is_missing_is_an_error() {
        let err = load(&Sources {
            file: Some(PathBuf::from("/nonexistent/twin.toml")),
            ignore_env: true,
        })
        .expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/twin.toml"));
    }
}
