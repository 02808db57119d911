//! The Python reference environment (Debian's python3-torch with transformers and PEFT, made
//! by `scripts/setup.sh` in the tool cache): the real libraries that interop tests load our
//! outputs with.

use std::path::PathBuf;

use crate::process::tool_cache;

/// The environment's interpreter: `$TWIN_TORCH_PYTHON`, else `TOOL_CACHE/torch-venv/bin/python`.
pub fn torch_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TWIN_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let venv = tool_cache().join("torch-venv/bin/python");
    venv.exists().then_some(venv)
}

/// The interpreter, or `None` after printing why the calling test is skipped. Under CI a
/// missing environment fails the test instead: setup installs it there.
pub fn torch_python_or_skip(test: &str) -> Option<PathBuf> {
    match (torch_python(), std::env::var_os("CI")) {
        (Some(p), _) => Some(p),
        (None, None) => {
            eprintln!(
                "SKIPPED {test}: no Python reference environment (run scripts/setup.sh, or set \
                 TWIN_TORCH_PYTHON)"
            );
            None
        }
        (None, Some(_)) => panic!("{test}: no Python reference environment under CI"),
    }
}
