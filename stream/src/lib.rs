//! Stream: the feature pipeline that turns raw-document events into features.
//!
//! - [`clean`]: the clean stage (unicode, whitespace, tracking links, boilerplate; code kept
//!   exactly).
//! - [`chunk`]: the chunk stage (token-counted, sentence-aligned, overlapping chunks per kind of
//!   document).
//! - [`warehouse`]: raw, cleaned and chunked documents with their log positions, in SQLite
//!   (embedded) or ClickHouse.
//! - [`worker`]: the `twin stream` worker: consume, clean, chunk, embed (`twin-embedding`),
//!   publish, write the warehouse and the vector store (`twin-vectorstore`), then commit.
//! - [`dlq`]: the dead-letter topic, and listing and retrying its events.

pub mod chunk;
pub mod clean;
pub mod dlq;
pub mod warehouse;
pub mod worker;

pub use worker::{Pipeline, RunOptions, RunStats};

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
    /// The event log failed.
    #[error("event log: {0}")]
    Log(String),
    /// The vector store failed.
    #[error("{0}")]
    Vectors(String),
    /// The embedding model failed.
    #[error("embedding: {0}")]
    Embedding(String),
    /// A dead letter could not be written or read.
    #[error("dead letter: {0}")]
    DeadLetter(String),
}
