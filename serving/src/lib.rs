//! Serving: generation on ONNX Runtime from models exported by `twin models export-llm`, and
//! the inference service around it: retrieval over the vector store and the HTTP API.
//!
//! - [`model`]: an exported model folder: its session, tokenizer, chat template, cache shape and
//!   context length, and one forward pass over a batch.
//! - [`sampling`]: the request's parameters (checked) and the choice of the next token: greedy,
//!   or temperature, top-k, top-p and repetition penalty with a seeded generator.
//! - [`text`]: tokens to text as they come, never half a character, with stop sequences.
//! - [`engine`]: one engine per model: a scheduler thread that batches the decode steps of all
//!   running requests (continuous batching) and streams their tokens.
//! - [`backend`]: where answers are generated: the engine, or an external OpenAI-compatible
//!   endpoint, behind one interface.
//! - [`retrieval`]: the query embedded, searched over every collection with filters and
//!   self-query, fused across rewrites, re-ranked by maximal marginal relevance.
//! - [`rag`]: the retrieved chunks packed into the chat template within the context.
//! - [`http`]: the HTTP API of `twin serve` (OpenAI-compatible, `/rag`, `/v1/search`).
//! - [`server`]: the HTTP/1.1 server under it, with header-read and idle timeouts and a cap on
//!   open connections.
//! - [`trace`]: request traces, sampled, written to the warehouse off the request path.

pub mod backend;
pub mod engine;
pub mod http;
pub mod model;
pub mod rag;
pub mod retrieval;
pub mod sampling;
pub mod server;
pub mod text;
pub mod trace;

use std::path::PathBuf;

pub use engine::{
    Completion, Engine, EngineOptions, EngineStats, Event, FinishReason, Generation,
    GenerationRequest, Prompt,
};
pub use model::ModelInfo;
pub use sampling::SamplingParams;

/// What can go wrong in generation.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// A model folder is not what it should be.
    #[error("{path}: {reason}")]
    Model {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A request parameter makes no sense.
    #[error("invalid `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: String,
        /// Why.
        reason: String,
    },
    /// The prompt and the tokens asked for do not fit the model's context.
    #[error(
        "this model's context is {context} tokens, but {} were asked for ({prompt} in the \
         prompt, {max_tokens} to generate): shorten the prompt or ask for fewer tokens",
        prompt + max_tokens
    )]
    ContextLength {
        /// Tokens in the prompt.
        prompt: usize,
        /// Tokens asked for.
        max_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// The request alone needs more tokens than a whole batch may hold.
    #[error(
        "the request needs {needed} tokens of cache, more than the engine's whole batch budget \
         of {budget} (max_batch_tokens)"
    )]
    OverBudget {
        /// Prompt plus tokens to generate.
        needed: usize,
        /// The engine's budget.
        budget: usize,
    },
    /// The prompt gives no token.
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// The engine has stopped (its model failed to run, or it was shut down).
    #[error("the generation engine has stopped")]
    Stopped,
    /// The engine's queue is full: every place of it is taken by requests waiting for the
    /// batch. Try again shortly.
    #[error("the engine is at capacity ({waiting} requests waiting): try again shortly")]
    Overloaded {
        /// Requests waiting.
        waiting: usize,
    },
    /// The chat template or tokenizer failed.
    #[error(transparent)]
    Chat(#[from] twin_chat::ChatError),
    /// ONNX Runtime could not be loaded.
    #[error(transparent)]
    Onnx(#[from] twin_onnx::OnnxError),
    /// ONNX Runtime failed.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// The vector store or the warehouse failed, or does not hold what serving needs.
    #[error("store: {0}")]
    Store(String),
    /// The embedder failed.
    #[error(transparent)]
    Embedding(#[from] twin_embedding::EmbeddingError),
    /// The external model endpoint failed or refused.
    #[error("external model: {0}")]
    Upstream(String),
}

impl From<ort::Error> for ServingError {
    fn from(e: ort::Error) -> Self {
        ServingError::Runtime(e.to_string())
    }
}
