//! ONNX for the LLM twin platform, shared by every model that runs on ONNX Runtime (the
//! embedder and the generation engine):
//!
//! - [`runtime`]: the process-wide ONNX Runtime environment, loaded once from its shared
//!   library, and where that library is found (`ORT_DYLIB_PATH`, else the tool cache);
//! - [`proto`]: the ONNX protobuf messages and a builder for graphs of standard operators, for
//!   the exporters that write models from Hugging Face checkpoints.

pub mod proto;
pub mod runtime;

pub use runtime::{default_library, environment, tool_cache, ONNXRUNTIME_VERSION};

/// What can go wrong loading ONNX Runtime.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    /// The shared library could not be loaded or initialised.
    #[error("cannot load ONNX Runtime from {path}: {reason} (scripts/setup.sh installs it)")]
    Load {
        /// The library tried.
        path: std::path::PathBuf,
        /// What ONNX Runtime reported.
        reason: String,
    },
}
