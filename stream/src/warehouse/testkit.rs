//! A real ClickHouse server for tests: `clickhouse-server` (Debian's package, which
//! scripts/setup.sh installs) started on free ports with its data in a temporary folder. One
//! server serves a whole test process; a watchdog stops it and removes its data when the process
//! ends.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running ClickHouse server.
#[derive(Debug)]
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

/// The process's server, started on first use.
pub fn clickhouse() -> Result<&'static Server, String> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref().map_err(Clone::clone)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn start() -> Result<Server, String> {
    let binary = std::env::var_os("CLICKHOUSE_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/clickhouse-server"));
    let config = PathBuf::from("/etc/clickhouse-server/config.xml");
    if !binary.is_file() || !config.is_file() {
        return Err(format!(
            "no ClickHouse server at {} with {}: run scripts/setup.sh (it installs Debian's clickhouse-server)",
            binary.display(),
            config.display()
        ));
    }
    let (http, tcp, interserver) = (free_port()?, free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("twin-clickhouse-{http}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let d = dir.display();
    let overrides = [
        format!("--http_port={http}"),
        format!("--tcp_port={tcp}"),
        format!("--interserver_http_port={interserver}"),
        format!("--path={d}/data/"),
        format!("--tmp_path={d}/tmp/"),
        format!("--user_files_path={d}/user_files/"),
        format!("--format_schema_path={d}/format_schemas/"),
        format!("--logger.log={d}/server.log"),
        format!("--logger.errorlog={d}/error.log"),
        "--listen_host=127.0.0.1".to_string(),
    ];
    // The watchdog runs the server and stops it, and removes its data, once this process is gone.
    let script = r#"
        bin="$1"; config="$2"; parent="$3"; dir="$4"; shift 4
        "$bin" --config-file="$config" -- "$@" &
        child=$!
        while kill -0 "$parent" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
        kill "$child" 2>/dev/null
        wait "$child"
        rm -rf "$dir"
    "#;
    let log = std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?;
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("clickhouse-watchdog")
        .arg(&binary)
        .arg(&config)
        .arg(std::process::id().to_string())
        .arg(&dir)
        .args(&overrides)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("start {}: {e}", binary.display()))?;
    let addr = format!("127.0.0.1:{http}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(&addr).is_ok() {
            return Ok(Server {
                url: format!("http://{addr}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    Err(format!(
        "ClickHouse did not listen on {addr} within 60 s:\n{errors}"
    ))
}
