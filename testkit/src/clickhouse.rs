//! A real ClickHouse server for tests: `clickhouse-server` (Debian's package, which
//! scripts/setup.sh installs) started on free ports with its data in a temporary folder. One
//! server serves a whole test process; the watchdog stops it and removes its data when the
//! process ends.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{free_port, listening, spawn_watched, wait_until, Spec};

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
    let d = dir.display();
    let mut args = vec![format!("--config-file={}", config.display()), "--".into()];
    args.extend([
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
    ]);
    let spec = Spec {
        name: "clickhouse",
        program: &binary,
        args,
        env: Vec::new(),
        log_file: dir.join("stdout.log"),
        dir: dir.clone(),
    };
    spawn_watched(&spec)?;
    let address = format!("127.0.0.1:{http}");
    wait_until(&spec, Duration::from_secs(60), || listening(&address)).map_err(|e| {
        let errors = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        format!("{e}\n{errors}")
    })?;
    Ok(Server {
        url: format!("http://{address}"),
    })
}
