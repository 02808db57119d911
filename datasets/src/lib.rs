//! Training data: instruct and preference datasets in the author's voice, built from a
//! warehouse snapshot, so that the same snapshot and parameters give the same dataset.
//!
//! A build reads the snapshot's cleaned documents and chunks, joins neighbouring chunks into
//! passages of the author's own text, and asks a generator for what the passage lacks: the
//! instruction it answers (back-translation), instruction/answer pairs drawn from it
//! (extraction), or a plain answer without the author's style (the rejected side of a
//! preference pair). Samples then pass length filters and exact and near-duplicate removal, and
//! are split by document into train and test.
//!
//! - [`sample`]: samples, dataset kinds and splits.
//! - [`source`]: passages: the author's text a sample answers with, and its structure.
//! - [`generator`]: the generators: an OpenAI-compatible chat endpoint, and an offline one that
//!   needs no LLM; their shared answer cache and counters.
//! - [`quality`]: length limits, exact and near-duplicate (MinHash) detection.
//! - [`split`]: the train/test split by document.
//! - [`build`]: the build itself: ids, lineage, statistics, progress.
//! - [`formats`]: export and import as Alpaca, ChatML `messages` and TRL preference JSONL.

pub mod build;
pub mod formats;
pub mod generator;
pub mod quality;
pub mod sample;
pub mod source;
pub mod split;

use std::path::PathBuf;

pub use build::{build, BuildParams, BuildStats, Built, Method};
pub use formats::Format;
pub use generator::{
    ChatClient, Failure, Generator, GeneratorStats, OfflineGenerator, OpenAiGenerator,
};
pub use sample::{DatasetKind, Sample, Split};

/// What can go wrong building, storing, exporting or importing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The warehouse failed.
    #[error(transparent)]
    Warehouse(#[from] twin_warehouse::WarehouseError),
    /// The generator cannot work at all (bad credentials, unknown model, unreachable server...).
    #[error("generator {generator}: {reason}")]
    Generator {
        /// Which generator.
        generator: String,
        /// What is wrong.
        reason: String,
    },
    /// The answer cache failed.
    #[error("answer cache {path}: {source}")]
    Cache {
        /// Its file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A line of an imported file is not a sample of a known format.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Its 1-based line (1 for a whole-file JSON array that does not parse).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A request that cannot be met (a format that cannot hold the dataset's kind...).
    #[error("{0}")]
    Invalid(String),
}

/// Result of dataset operations.
pub type Result<T, E = DatasetError> = std::result::Result<T, E>;

/// Lower-case hex of SHA-256 over `parts`, each followed by a NUL.
pub(crate) fn digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
        hash.update([0u8]);
    }
    twin_warehouse::catalog::hex(&hash.finalize())
}
