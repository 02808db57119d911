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

/// The interpreter if it imports every one of `modules`, or `None` after printing why the
/// calling test is skipped (under CI, a failure instead: setup installs them there).
pub fn torch_python_with_or_skip(test: &str, modules: &[&str]) -> Option<PathBuf> {
    let python = torch_python_or_skip(test)?;
    let imports = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = std::process::Command::new(&python)
        .args(["-c", &imports])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    match (ok, std::env::var_os("CI")) {
        (true, _) => Some(python),
        (false, None) => {
            eprintln!(
                "SKIPPED {test}: the Python reference environment lacks {} (run scripts/setup.sh)",
                modules.join(", ")
            );
            None
        }
        (false, Some(_)) => panic!("{test}: {} missing under CI", modules.join(", ")),
    }
}

/// Run `script` with `args` on `python` and read the JSON it prints; `None` (after saying why
/// on stderr) when it fails: a benchmark then reports its baseline as missing.
pub fn run_json<S: AsRef<std::ffi::OsStr>>(
    python: &std::path::Path,
    script: &str,
    args: &[S],
) -> Option<serde_json::Value> {
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("python failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}
