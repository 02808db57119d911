//! A real Qdrant server for tests: the official server binary, started on free ports with its
//! storage in a temporary folder, stopped (and its storage removed) when the test process ends.
//!
//! The binary is `$QDRANT_BIN`, else `qdrant` on the `PATH`, else `../shared/bin/qdrant` beside
//! the repository (where this workplace keeps an official build). Qdrant is not installable from
//! the package registries, so a machine may have none: [`qdrant_or_skip`] then says that the
//! test is skipped and why, except under CI (`CI` set), where a missing server is a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{find_program, free_port, spawn_watched, wait_until, Spec};

/// A running Qdrant server.
#[derive(Debug)]
pub struct Server {
    /// The gRPC url `qdrant-client` talks to: `http://127.0.0.1:PORT`.
    pub grpc_url: String,
    /// The REST url: `http://127.0.0.1:PORT`.
    pub http_url: String,
}

/// The process's server, started on first use.
pub fn qdrant() -> Result<&'static Server, String> {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// The server, or `None` after printing why the calling test is skipped. Under CI a missing
/// binary fails the test instead: there the server must run.
pub fn qdrant_or_skip(test: &str) -> Option<&'static Server> {
    match (find_qdrant(), std::env::var_os("CI")) {
        (None, None) => {
            eprintln!(
                "SKIPPED {test}: no Qdrant server binary (set QDRANT_BIN, put `qdrant` on the PATH, \
                 or keep ../shared/bin/qdrant beside the repository)"
            );
            None
        }
        _ => Some(qdrant().unwrap_or_else(|e| panic!("{test}: {e}"))),
    }
}

/// Where the Qdrant binary is, if anywhere.
pub fn find_qdrant() -> Option<PathBuf> {
    let beside_repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/qdrant");
    find_program("QDRANT_BIN", "qdrant", &[beside_repo])
}

fn start() -> Result<Server, String> {
    let binary = find_qdrant().ok_or_else(|| {
        "no Qdrant server binary: set QDRANT_BIN, or keep ../shared/bin/qdrant beside the repository"
            .to_string()
    })?;
    let (http, grpc) = (free_port()?, free_port()?);
    let dir = std::env::temp_dir().join(format!("twin-qdrant-{http}"));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.display();
    let spec = Spec {
        name: "qdrant",
        program: &binary,
        args: Vec::new(),
        env: vec![
            ("QDRANT__SERVICE__HOST".into(), "127.0.0.1".into()),
            ("QDRANT__SERVICE__HTTP_PORT".into(), http.to_string()),
            ("QDRANT__SERVICE__GRPC_PORT".into(), grpc.to_string()),
            ("QDRANT__TELEMETRY_DISABLED".into(), "true".into()),
            (
                "QDRANT__STORAGE__STORAGE_PATH".into(),
                format!("{d}/storage"),
            ),
            (
                "QDRANT__STORAGE__SNAPSHOTS_PATH".into(),
                format!("{d}/snapshots"),
            ),
            ("QDRANT__LOG_LEVEL".into(), "WARN".into()),
        ],
        log_file: dir.join("qdrant.log"),
        dir: dir.clone(),
    };
    spawn_watched(&spec)?;
    let address = format!("127.0.0.1:{http}");
    let grpc_address = format!("127.0.0.1:{grpc}");
    // Ready when the REST API says so and the gRPC port (the one the client uses) listens.
    wait_until(&spec, Duration::from_secs(60), || {
        ready(&address) && crate::process::listening(&grpc_address)
    })?;
    Ok(Server {
        grpc_url: format!("http://127.0.0.1:{grpc}"),
        http_url: format!("http://{address}"),
    })
}

/// `GET /readyz` answers 200.
fn ready(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}
