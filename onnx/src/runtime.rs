//! The ONNX Runtime environment: one per process, loaded from the shared library on first use
//! (the `load-dynamic` build of `ort`, since no prebuilt binary can be downloaded here).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

use crate::OnnxError;

/// Version of ONNX Runtime the setup script installs.
pub const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// The process's ONNX Runtime, loaded from `library` the first time. Later calls return the same
/// environment whatever library they name: a process can load ONNX Runtime only once.
pub fn environment(library: &Path) -> Result<&'static Environment, OnnxError> {
    static ENVIRONMENT: OnceLock<Result<Environment, OnnxError>> = OnceLock::new();
    ENVIRONMENT
        .get_or_init(|| {
            let load_error = |reason: String| OnnxError::Load {
                path: library.to_path_buf(),
                reason,
            };
            ort::init_from(library)
                .map_err(|e| load_error(e.to_string()))?
                .with_name("twin")
                .build()
                .map_err(|e| load_error(e.to_string()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// ONNX Runtime's shared library: `ORT_DYLIB_PATH`, else the one the setup script installs in
/// the tool cache.
pub fn default_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .or_else(|| {
            tool_cache().map(|c| {
                c.join("onnxruntime")
                    .join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"))
            })
        })
        .unwrap_or_else(|| PathBuf::from(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}")))
}

/// The tool cache the setup script installs into: `$LLM_TWIN_CACHE`, else `~/.cache/twin`.
pub fn tool_cache() -> Option<PathBuf> {
    std::env::var_os("LLM_TWIN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/twin")))
}
