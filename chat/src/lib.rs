//! Chat: how a checkpoint turns a conversation into the text it was trained on, shared by
//! training (on libtorch) and generation (on ONNX Runtime), which must agree to the byte.
//!
//! - [`template`]: chat templates: a checkpoint's own (`tokenizer_config.json`, rendered with
//!   minijinja as transformers renders Jinja) or a built-in one (Alpaca, ChatML, Llama-3).
//! - [`checkpoint`]: a checkpoint folder's tokenizer, its special tokens and the template to use.

pub mod checkpoint;
pub mod template;

use std::path::PathBuf;

pub use checkpoint::{load_tokenizer, template_for};
pub use template::{fill, Builtin, ChatTemplate, Message};

/// What can go wrong reading or rendering a chat template or a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A file is not what it should be (or cannot be read).
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
    /// What was asked cannot be done (the message says why).
    #[error("{0}")]
    Invalid(String),
}

/// Result of chat operations.
pub type Result<T, E = ChatError> = std::result::Result<T, E>;
