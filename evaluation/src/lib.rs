//! Evaluation of trained models on a dataset's test split (`twin eval`).
//!
//! - [`scores`]: ROUGE-L (as `rouge-score` computes it), length ratio, cosine similarity.
//! - [`perplexity`]: the perplexity of the author's reference answers under a model, on
//!   libtorch, with the template and answer tokens training uses.
//! - [`judge`]: an LLM judge behind any OpenAI-compatible endpoint that scores accuracy and
//!   style from 1 to 3 with a one-line reason; its prompts are in `evaluation/prompts/`.
//! - [`job`]: a whole evaluation: perplexity, answers generated on ONNX Runtime with fixed
//!   seeds, their scores and the judge's; and its record with the run in the warehouse.
//! - [`report`]: evaluations read back, side by side as a table, and as a bar chart (PNG, SVG).

pub mod job;
pub mod judge;
pub mod perplexity;
pub mod report;
pub mod scores;

pub use job::{Answer, EvalRequest, Evaluation, Evaluator};
pub use judge::{Judge, Verdict};

/// What can go wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// What was asked cannot be evaluated (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// The judge gave no usable verdict: the evaluation stops and records nothing.
    #[error(
        "judge {judge}: sample {sample}: {reason}; the evaluation stopped and recorded nothing"
    )]
    Judge {
        /// The judge's endpoint and model (never its key).
        judge: String,
        /// The test sample, from 0.
        sample: usize,
        /// What was wrong with its answer.
        reason: String,
    },
    /// The model could not be loaded or run on libtorch.
    #[error(transparent)]
    Training(#[from] twin_training::TrainingError),
    /// The model could not be run on ONNX Runtime.
    #[error(transparent)]
    Serving(#[from] twin_serving::ServingError),
    /// The embedder failed.
    #[error(transparent)]
    Embedding(#[from] twin_embedding::EmbeddingError),
    /// The judge's client could not be made.
    #[error(transparent)]
    Dataset(#[from] twin_datasets::DatasetError),
    /// The warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] twin_warehouse::WarehouseError),
}

/// Result of evaluation.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
