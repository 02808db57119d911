//! Training: fine-tuning of Llama, Mistral, Qwen2 and GPT-2 family checkpoints, runs and the
//! model registry. Snapshots live in `twin-warehouse` and datasets in `twin-datasets`; this crate
//! consumes them.
//!
//! Built so far:
//! - [`chat_template`]: a checkpoint's chat template (`tokenizer_config.json`) rendered with a
//!   Jinja engine, as text-generation-inference does, and built-in Alpaca, ChatML and Llama-3
//!   templates for checkpoints that have none.
//!
//! Not built yet: the models, the training loop and `twin train` (which says so and exits
//! non-zero).

pub mod chat_template;

use std::path::PathBuf;

pub use chat_template::{Builtin, ChatTemplate, Message};

/// What can go wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A configuration file is not what it should be.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A chat template does not compile or does not render.
    #[error("chat template: {0}")]
    Template(String),
}

/// Result of training operations.
pub type Result<T, E = TrainingError> = std::result::Result<T, E>;
