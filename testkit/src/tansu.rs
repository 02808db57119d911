//! A real Kafka-protocol broker for tests and benchmarks: Tansu, started on a free port.
//!
//! The binary is found through `$TANSU_BIN`, then `tansu` on the `PATH`, then the cache the
//! project's setup script installs it to (`~/.cache/twin/tansu/bin/tansu`). One broker serves a
//! whole test process; the watchdog stops it (and deletes its storage) when the process ends.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{
    find_program, free_port, listening, spawn_watched, tool_cache, wait_until, Spec,
};

/// A running Tansu broker.
#[derive(Debug)]
pub struct Broker {
    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub brokers: String,
}

/// The process's broker, started on first use.
pub fn tansu() -> Result<&'static Broker, String> {
    static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();
    BROKER.get_or_init(start).as_ref().map_err(Clone::clone)
}

/// Where the Tansu binary is, or why none was found.
pub fn find_tansu() -> Result<PathBuf, String> {
    find_program(
        "TANSU_BIN",
        "tansu",
        &[tool_cache().join("tansu/bin/tansu")],
    )
    .ok_or_else(|| {
        "no Tansu broker binary: run scripts/setup.sh (it installs one), or set TANSU_BIN".into()
    })
}

fn start() -> Result<Broker, String> {
    let tansu = find_tansu()?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let dir = std::env::temp_dir().join(format!("twin-tansu-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    // The in-memory engine loses high-watermark updates under concurrent produce (every record is
    // stored, but end offsets come out short); the sqlite engine keeps them exact. Tansu resolves
    // a sqlite url relative to its working directory, which is `dir`.
    let spec = Spec {
        name: "tansu",
        program: &tansu,
        args: vec![
            "broker".into(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            "sqlite://tansu.db".into(),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        log_file: dir.join("tansu.log"),
        dir,
    };
    spawn_watched(&spec)?;
    let address = format!("127.0.0.1:{port}");
    wait_until(&spec, Duration::from_secs(30), || listening(&address))?;
    Ok(Broker { brokers: address })
}

/// `TWIN_TOPICS__*` variables naming every pipeline topic `{name}-{topic}`, so that the `twin`
/// processes of one test share topics no other test sees on the shared broker.
pub fn topic_env(name: &str) -> Vec<(String, String)> {
    [
        "raw_documents",
        "cleaned_documents",
        "chunks",
        "embedded_chunks",
        "dead_letters",
    ]
    .iter()
    .map(|topic| {
        (
            format!("TWIN_TOPICS__{}", topic.to_uppercase()),
            format!("{name}-{}", topic.replace('_', "-")),
        )
    })
    .collect()
}
