//! A real Kafka-protocol broker for tests and benchmarks: Tansu, started on a free port.
//!
//! The binary is found through `$TANSU_BIN`, then `tansu` on the `PATH`, then the cache the
//! project's setup script installs it to (`~/.cache/twin/tansu/bin/tansu`). One broker serves a
//! whole test process; a watchdog stops it (and deletes its sqlite storage) when the process
//! ends.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running Tansu broker.
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub brokers: String,
    /// Where its output goes.
    pub log_file: PathBuf,
}

/// The process's broker, started on first use.
pub fn tansu() -> Result<&'static Broker, String> {
    static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();
    BROKER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// Where the Tansu binary is, or why none was found.
pub fn find_tansu() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("tansu"))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    let cached = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/twin/tansu/bin/tansu");
    if cached.is_file() {
        return Ok(cached);
    }
    Err("no Tansu broker binary: run scripts/setup.sh (it installs one), or set TANSU_BIN".into())
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start() -> Result<Broker, String> {
    let tansu = find_tansu()?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let log_file = std::env::temp_dir().join(format!("twin-tansu-{port}.log"));
    let db = std::env::temp_dir().join(format!("twin-tansu-{port}.db"));
    let _ = std::fs::remove_file(&db);
    // The in-memory engine loses high-watermark updates under concurrent produce (every record is
    // stored, but end offsets come out short); the sqlite engine keeps them exact.
    // Tansu resolves a sqlite url relative to its working directory: run it in the temp folder.
    let storage = format!("sqlite://twin-tansu-{port}.db");
    let log =
        std::fs::File::create(&log_file).map_err(|e| format!("{}: {e}", log_file.display()))?;
    // The watchdog shell runs the broker and kills it once this process is gone, so no broker
    // outlives its tests.
    let script = r#"
        "$1" broker --listener-url "$2" --advertised-listener-url "$2" --storage-engine "$4" &
        child=$!
        while kill -0 "$3" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
        kill "$child" 2>/dev/null
        wait "$child"
        rm -f "$5" "$5-shm" "$5-wal"
    "#;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("tansu-watchdog")
        .arg(&tansu)
        .arg(&url)
        .arg(std::process::id().to_string())
        .arg(&storage)
        .arg(&db)
        .env("RUST_LOG", "warn")
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", tansu.display()))?;
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(&addr).is_ok() {
            return Ok(Broker {
                brokers: addr,
                log_file,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = std::fs::read_to_string(&log_file).unwrap_or_default();
    Err(format!(
        "Tansu ({}) did not listen on {addr} within 30 s; its output:\n{output}",
        tansu.display()
    ))
}
