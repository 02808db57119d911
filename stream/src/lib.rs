//! Stream: the feature pipeline that turns raw-document events into features.
//!
//! - [`clean`]: the clean stage (unicode, whitespace, tracking links, boilerplate; code kept
//!   exactly).
//! - [`chunk`]: the chunk stage (token-counted, sentence-aligned, overlapping chunks per kind of
//!   document).
//!
//! Still to come (the feature-pipeline issue, #4): the embed stage on `twin-embedding`, the
//! warehouse and vector-store sinks, and the `twin stream` worker.

pub mod chunk;
pub mod clean;

pub use chunk::{chunk_id, Chunker};
pub use clean::clean;

/// What can go wrong in the stream stages.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
