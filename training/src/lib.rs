//! Training: fine-tuning of Llama, Mistral, Qwen2 and GPT-2 family checkpoints on libtorch (tch),
//! tracked runs and the model registry. Snapshots live in `twin-warehouse` and datasets in
//! `twin-datasets`; this crate consumes them.
//!
//! - [`architecture`]: a checkpoint's `config.json` read into what the model code needs.
//! - [`weights`]: safetensors files (single or sharded) by Hugging Face parameter name.
//! - [`model`]: the decoders (Llama, Mistral, Qwen2 share one; GPT-2), LoRA, packed batches.
//! - [`tokenizer`]: `tokenizer.json`, the template to train with, and byte-level BPE training
//!   for a model that starts from scratch.
//! - [`data`]: samples to tokens (answer tokens marked), packing, the seeded order of rows.
//! - [`dpo`]: direct preference optimisation: TRL's DPO and IPO losses, sequence
//!   log-probabilities, rewards, the reference with LoRA taken out.
//! - [`optim`]: AdamW, warm-up and decay, gradient clipping.
//! - [`trainer`]: the loop: accumulation, evaluation, checkpoints, resume, early stop.
//! - [`export`]: outputs in the Hugging Face layout (full model, PEFT adapter) and merging.
//! - [`onnx_export`]: the model as an ONNX graph with a key/value cache (Optimum's layout), for
//!   generation on ONNX Runtime.
//! - [`plan`]: sizing a run (memory per GPU, throughput, fits or not) for presets of published
//!   models and GPUs we do not have.
//! - [`runs`]: run records and metrics in the warehouse; comparison tables and loss plots.
//! - [`registry`]: trained models by `name@vN`, with their lineage.
//! - [`job`]: `twin train` end to end.

pub mod architecture;
pub mod data;
pub mod dpo;
pub mod export;
pub mod job;
pub mod model;
pub mod onnx_export;
pub mod optim;
pub mod plan;
pub mod registry;
pub mod runs;
pub mod tokenizer;
pub mod trainer;
pub mod weights;

use std::path::PathBuf;

pub use architecture::{Family, ModelConfig};
pub use model::{Batch, CausalLm, LoraSettings};
pub use twin_chat::{Builtin, ChatTemplate, Message};

/// libtorch's random generator is one per process: whatever draws from it after seeding (LoRA's
/// initial values, a new model's weights, dropout) holds this lock, so that two trainings in one
/// process (tests, a service) each draw what their seed says.
pub(crate) fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    RNG.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What can go wrong in training.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    /// A file could not be read or written.
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
    /// A checkpoint lacks a tensor its config implies.
    #[error("{path}: the checkpoint has no tensor `{name}`, which its config.json implies")]
    MissingTensor {
        /// The checkpoint folder.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// A chat template does not compile or does not render.
    #[error("chat template: {0}")]
    Template(String),
    /// A tokenizer could not be read, trained or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template or tokenizer file could not be read or rendered.
    #[error(transparent)]
    Chat(#[from] twin_chat::ChatError),
    /// A dataset could not be read or used.
    #[error(transparent)]
    Dataset(#[from] twin_datasets::DatasetError),
    /// The warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] twin_warehouse::WarehouseError),
    /// What was asked cannot be done (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(String),
}

impl From<tch::TchError> for TrainingError {
    fn from(e: tch::TchError) -> Self {
        TrainingError::Torch(e.to_string())
    }
}

/// Result of training operations.
pub type Result<T, E = TrainingError> = std::result::Result<T, E>;
