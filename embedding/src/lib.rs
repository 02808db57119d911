//! Sentence embeddings: the model files, their export to ONNX, and inference on ONNX Runtime.
//!
//! - [`model`]: where a model's files come from: a configured folder, the local caches, or a
//!   Hugging Face Hub endpoint ([`model::pull`]); and its ONNX file, exported on first use.
//! - [`bert`]: export of a BERT encoder checkpoint (safetensors) to an ONNX graph of ONNX
//!   Runtime's fused operators, in fp32 or int8 (written with `twin-onnx`'s graph builder).
//! - [`embedder`]: tokenisation, batching by token budget, ONNX Runtime, mean pooling and L2
//!   normalisation, as sentence-transformers computes them.
//!
//! - [`cross_encoder`]: a BERT sequence classifier that scores (query, passage) pairs, for
//!   re-ranking retrieval's candidates.
//!
//! [`open`] does all of it from the configuration: find (or pull) the model, export it, load it;
//! [`open_cross_encoder`] does the same for a re-ranker.

pub mod bert;
pub mod cross_encoder;
pub mod embedder;
pub mod model;

use std::path::{Path, PathBuf};

use twin_config::EmbeddingConfig;

pub use cross_encoder::{CrossEncoder, CrossEncoderOptions};
pub use embedder::{Embedder, EmbedderOptions};
pub use model::ModelFiles;

/// What can go wrong with models and embeddings.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A model file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model's files are not what the code can use.
    #[error("model {path}: {reason}")]
    Model {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Downloading a model failed.
    #[error("download {url}: {reason}")]
    Download {
        /// What was fetched (never with credentials).
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Load(#[from] twin_onnx::OnnxError),
    /// ONNX Runtime refused the model or an input.
    #[error("onnx runtime: {0}")]
    Runtime(#[from] ort::Error),
    /// An embedding worker stopped (it panicked, or the embedder is shutting down).
    #[error("embedding worker: {0}")]
    Worker(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl EmbeddingError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        EmbeddingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The configured model, ready to embed: found locally or pulled from the hub on first use,
/// exported to ONNX under `data_dir/models` if needed, and loaded on ONNX Runtime.
pub async fn open(config: &EmbeddingConfig, data_dir: &Path) -> Result<Embedder, EmbeddingError> {
    let (files, onnx, runtime) = exported(config, data_dir).await?;
    let workers = match config.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let options = EmbedderOptions {
        intra_threads: config.intra_threads,
        workers,
        max_tokens: config.max_tokens,
        max_batch_tokens: config.max_batch_tokens,
        max_batch_size: config.max_batch_size,
    };
    tokio::task::spawn_blocking(move || Embedder::load(runtime, &files, &onnx, options))
        .await
        .map_err(|e| EmbeddingError::Worker(format!("load task failed: {e}")))?
}

/// The cross-encoder `reranker` names, ready to score: found or pulled as [`open`] finds the
/// embedding model (from the hub and with the ONNX Runtime of `embedding`), exported, loaded.
pub async fn open_cross_encoder(
    reranker: &twin_config::RerankerConfig,
    embedding: &EmbeddingConfig,
    data_dir: &Path,
) -> Result<CrossEncoder, EmbeddingError> {
    let located = EmbeddingConfig {
        model: reranker.model.clone(),
        model_dir: reranker.model_dir.clone(),
        // The re-ranker's precision was not measured at int8: it stays exact.
        precision: twin_config::EmbeddingPrecision::Fp32,
        ..embedding.clone()
    };
    let (files, onnx, runtime) = exported(&located, data_dir).await?;
    let options = CrossEncoderOptions {
        max_tokens: reranker.max_tokens,
        max_batch_size: reranker.max_batch_size,
        intra_threads: 0,
    };
    tokio::task::spawn_blocking(move || CrossEncoder::load(runtime, &files, &onnx, options))
        .await
        .map_err(|e| EmbeddingError::Worker(format!("load task failed: {e}")))?
}

/// The configured model's files, its ONNX export (made now if missing or stale) and the ONNX
/// Runtime environment to load it on.
async fn exported(
    config: &EmbeddingConfig,
    data_dir: &Path,
) -> Result<(ModelFiles, PathBuf, &'static ort::environment::Environment), EmbeddingError> {
    let files = model_files(config, data_dir).await?;
    let models = twin_config::DataLayout::new(data_dir).models();
    let export_files = files.clone();
    let precision = config.precision;
    let onnx = tokio::task::spawn_blocking(move || export_files.onnx(&models, precision))
        .await
        .map_err(|e| EmbeddingError::Worker(format!("export task failed: {e}")))??;
    let library = config
        .onnxruntime_library
        .clone()
        .unwrap_or_else(model::default_runtime_library);
    let runtime = twin_onnx::environment(&library)?;
    Ok((files, onnx, runtime))
}

/// The configured model's files: where the configuration says, else found locally, else pulled
/// from the hub into `data_dir/models`.
pub async fn model_files(
    config: &EmbeddingConfig,
    data_dir: &Path,
) -> Result<ModelFiles, EmbeddingError> {
    if let Some(files) = ModelFiles::locate(&config.model, config.model_dir.as_deref(), data_dir)? {
        return Ok(files);
    }
    tracing::info!(model = %config.model, endpoint = %config.hub_endpoint, "model not found locally; pulling it");
    pull_configured(config, data_dir).await
}

/// Pull the configured model from its hub into `data_dir/models`, with `HF_TOKEN` if set.
pub async fn pull_configured(
    config: &EmbeddingConfig,
    data_dir: &Path,
) -> Result<ModelFiles, EmbeddingError> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    model::pull(
        &config.hub_endpoint,
        &config.model,
        &config.revision,
        &twin_config::DataLayout::new(data_dir)
            .models()
            .join(&config.model),
        token.as_deref(),
    )
    .await
}
