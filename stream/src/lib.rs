//! Stream: the feature pipeline that turns raw-document events into features.
//!
//! - [`clean`]: the clean stage (unicode, whitespace, tracking links, boilerplate, templates;
//!   code kept exactly).
//! - [`template`]: a source's page template, learnt from the blocks its documents repeat.
//! - [`chunk`]: the chunk stage (token-counted, sentence-aligned, overlapping chunks per kind of
//!   document).
//! - [`worker`]: the `twin stream` worker: consume, clean, chunk, embed (`twin-embedding`),
//!   publish, write the warehouse (`twin-warehouse`) and the vector store (`twin-vectorstore`),
//!   then commit; transient write failures are retried.
//! - [`dlq`]: the dead-letter topic, and listing and retrying its events.

pub mod chunk;
pub mod clean;
pub mod dlq;
pub mod template;
pub mod worker;

pub use worker::{Pipeline, RetryPolicy, RunOptions, RunStats};

pub use chunk::Chunker;
pub use clean::clean;

/// What can go wrong in the stream stages. Errors of the stores and the log keep their causes,
/// and [`StreamError::is_retryable`] says whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] tokenizers::Error),
    /// The warehouse refused or failed a read or write.
    #[error(transparent)]
    Warehouse(#[from] twin_warehouse::WarehouseError),
    /// The event log failed.
    #[error(transparent)]
    Log(#[from] twin_eventlog::LogError),
    /// The vector store failed.
    #[error(transparent)]
    Vectors(#[from] twin_vectorstore::VectorStoreError),
    /// The embedding model failed.
    #[error(transparent)]
    Embedding(#[from] twin_embedding::EmbeddingError),
    /// A document is over `chunking.max_document_bytes`: the chunk stage refuses it.
    #[error("document {document_id} has {bytes} bytes of text, over chunking.max_document_bytes ({limit})")]
    TooLarge {
        /// The document.
        document_id: String,
        /// Its text's size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The embedder gave a different number of vectors than it was given chunks: a bug or a
    /// broken model, never papered over with empty vectors.
    #[error("the embedder returned {vectors} vectors for {chunks} chunks")]
    VectorCount {
        /// Chunks sent.
        chunks: usize,
        /// Vectors received.
        vectors: usize,
    },
    /// A dead letter could not be written or read.
    #[error("dead letter {what}: {source}")]
    DeadLetter {
        /// Which dead letter.
        what: String,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A run asked to catch up saw nothing arrive from partitions with events the warehouse has
    /// not applied (a Kafka group may still be waiting out a dead member's session).
    #[error(
        "partitions {partitions:?} have events the warehouse has not applied, but none arrived \
         within a minute (after a crash, a Kafka group waits for the dead member's session to \
         expire); run again"
    )]
    NotCaughtUp {
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// An event names a schema this build does not know: a newer version of twin wrote it. The
    /// worker stops without committing, so that a worker of that version handles it (a rolling
    /// upgrade), instead of dead-lettering good events.
    #[error(
        "the event at {topic} partition {partition} offset {offset} is written with schema \
         fingerprint {fingerprint:016x}, which this version of twin does not know (a newer \
         producer): stopping without committing; upgrade this worker to read it"
    )]
    UnknownSchema {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset.
        offset: u64,
        /// The unknown fingerprint.
        fingerprint: u64,
    },
    /// The consumer group stands past what the projections hold: they lost writes the log
    /// counts as handled. Rebuilding them from the log restores them.
    #[error(
        "consumer group {group} has handled partition {partition} up to offset {committed}, but \
         the projections hold its events only up to offset {held}: they lost writes (a power cut \
         without log.embedded.fsync, or a store restored from an older backup). Rebuild them \
         from the log: twin stream --rebuild"
    )]
    ProjectionsBehind {
        /// The group.
        group: String,
        /// The partition.
        partition: u32,
        /// The offset the group reads next.
        committed: u64,
        /// The offset after the last event the projections applied.
        held: u64,
    },
    /// A batch's writes kept failing transiently until the tries ran out.
    #[error("a batch's writes failed {attempts} times; the last error: {source}")]
    RetriesExhausted {
        /// Tries made.
        attempts: u32,
        /// The last failure.
        source: Box<StreamError>,
    },
}

impl StreamError {
    /// Whether trying again later can help (a broker or a store unreachable or overloaded), as
    /// opposed to bad input, a bad setting or a bug.
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Warehouse(e) => e.is_retryable(),
            StreamError::Log(e) => e.is_retryable(),
            StreamError::Vectors(e) => e.is_retryable(),
            _ => false,
        }
    }
}
