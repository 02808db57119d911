//! Servers for tests, started as child processes: free ports, a watchdog that ties a server's
//! life to the test process, and waiting until it listens.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A port of 127.0.0.1 that nothing listens on now.
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A server to run under the watchdog.
pub struct Spec<'a> {
    /// Short name, for messages ("tansu", "clickhouse"...).
    pub name: &'a str,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory; also removed, with everything in it, when the server stops.
    pub dir: PathBuf,
    /// Where its stdout and stderr go.
    pub log_file: PathBuf,
}

/// Start `spec` under a watchdog shell that stops the server once this process is gone (a test
/// binary that panics or is killed leaves no server behind) and then removes `spec.dir`.
pub fn spawn_watched(spec: &Spec<'_>) -> Result<(), String> {
    std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
    let log = std::fs::File::create(&spec.log_file)
        .map_err(|e| format!("{}: {e}", spec.log_file.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let script = r#"
        parent="$1"; dir="$2"; shift 2
        "$@" &
        child=$!
        while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
        kill "$child" 2>/dev/null
        wait "$child"
        rm -rf "$dir"
    "#;
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(format!("{}-watchdog", spec.name))
        .arg(std::process::id().to_string())
        .arg(&spec.dir)
        .arg(spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("start {}: {e}", spec.program.display()))
}

/// Wait until `ready` says yes, up to `limit`; on time-out, the error holds the server's log.
pub fn wait_until(
    spec: &Spec<'_>,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = std::fs::read_to_string(&spec.log_file).unwrap_or_default();
    Err(format!(
        "{} ({}) was not ready within {limit:?}; its output:\n{output}",
        spec.name,
        spec.program.display()
    ))
}

/// Whether something accepts connections on `address`.
pub fn listening(address: &str) -> bool {
    TcpStream::connect(address).is_ok()
}

/// Where a test tool lives: `$VAR`, else `name` on the `PATH`, else the first of `also` that
/// exists.
pub fn find_program(var: &str, name: &str, also: &[PathBuf]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .chain(also.iter().cloned())
        .find(|p| p.is_file())
}

/// The tool cache the setup script installs into: `$LLM_TWIN_CACHE`, else `~/.cache/twin`.
pub fn tool_cache() -> PathBuf {
    std::env::var_os("LLM_TWIN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/twin")
        })
}
