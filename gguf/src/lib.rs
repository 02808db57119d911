//! GGUF import: a model file of llama.cpp's (what Ollama and LM Studio keep on disk) turned into
//! a Hugging Face checkpoint that the rest of twin trains, exports and serves.
//!
//! - [`file`]: the GGUF container, versions 2 and 3: header, metadata of every value type, tensor
//!   descriptions and alignment, over a memory map, every read bounds-checked.
//! - [`quants`]: the tensor types and their dequantization to f32 (F32, F16, BF16, Q8_0, Q4_0,
//!   Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), bit for bit what the `gguf` Python package computes.
//! - [`tokenizer`]: `tokenizer.json` from the metadata: byte-level BPE (`gpt2`) with the
//!   pre-tokenizer the file names, or SentencePiece (`llama`) as BPE with byte fallback.
//! - [`checkpoint`]: the architectures (llama, with Mistral's sliding window when present, and
//!   qwen2), the tensor names, the rotary permutation undone, and the folder written.
//!
//! Why our own reader: of the crates for the format, `ggus` 0.5 reads version 3 only and its
//! block formats (`ggml-quants` 0.1) leave Q4_K and Q5_K dequantization as `todo!()`; `candle-core`
//! has both but brings a tensor library and its own GEMM to read one file. The format is small
//! and frozen; the block formats are a page each.

pub mod checkpoint;
pub mod file;
pub mod quants;
pub mod tokenizer;

use std::path::PathBuf;

pub use checkpoint::{import, Imported};
pub use file::{GgufFile, TensorInfo, Value};
pub use quants::TensorType;

/// What can go wrong reading or importing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// A file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The bytes are not a GGUF file we can read (wrong magic, version, a value cut short).
    #[error("{path}: {reason} (at byte {offset})")]
    Format {
        /// The file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor is stored in a type we cannot dequantize.
    #[error("{path}: tensor `{tensor}` has type {kind}, which twin cannot dequantize (it reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K)")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type, by name or number.
        kind: String,
    },
    /// The model is of an architecture twin does not import.
    #[error("{path}: architecture `{architecture}` is not one twin imports (llama, qwen2)")]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// `general.architecture`.
        architecture: String,
    },
    /// A metadata key the import needs is absent or of the wrong type.
    #[error("{path}: metadata `{key}` {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor the architecture needs is absent, or its shape disagrees with the metadata.
    #[error("{path}: tensor `{tensor}` {reason}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer described by the metadata cannot be built.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, GgufError>;
