//! Stream: the feature pipeline that turns raw-document events into features.
//!
//! - [`clean`]: the clean stage (unicode, whitespace, tracking links, boilerplate; code kept
//!   exactly).
//! - [`chunk`]: the chunk stage (token-counted, sentence-aligned, overlapping chunks per kind of
//!   document).
//! - [`warehouse`]: raw, cleaned and chunked documents with their log positions, in SQLite
//!   (embedded) or ClickHouse.
//!
//! Still to come (the feature-pipeline issue, #4): the embed stage on `twin-embedding`, the
//! vector-store sink, and the `twin stream` worker.

pub mod chunk;
pub mod clean;
pub mod warehouse;

pub use chunk::{chunk_id, Chunker};
pub use clean::clean;

/// What can go wrong in the stream stages.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The warehouse refused or failed a read or write.
    #[error("warehouse: {0}")]
    Warehouse(String),
}
