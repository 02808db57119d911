//! Sentence embeddings: the model files, their export to ONNX, and inference on ONNX Runtime.
//!
//! - [`model`]: where a model's files come from: a configured folder, the local caches, or a
//!   Hugging Face Hub endpoint ([`model::pull`]); and its ONNX file, exported on first use.
//! - [`bert`]: export of a BERT encoder checkpoint (safetensors) to an ONNX graph.
//! - [`onnx`]: the ONNX protobuf messages and a graph builder.
//! - [`embedder`]: tokenisation, batching by token budget, ONNX Runtime, mean pooling and L2
//!   normalisation, as sentence-transformers computes them.

pub mod bert;
pub mod embedder;
pub mod model;
pub mod onnx;

use std::path::{Path, PathBuf};

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
    /// ONNX Runtime could not be loaded, or refused the model or an input.
    #[error("onnx runtime: {0}")]
    Runtime(String),
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

impl From<ort::Error> for EmbeddingError {
    fn from(e: ort::Error) -> Self {
        EmbeddingError::Runtime(e.to_string())
    }
}
