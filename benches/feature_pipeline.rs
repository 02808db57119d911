//! The whole feature pipeline, as a user runs it: a few hundred article pages served to the
//! crawlers by a local server, `twin ingest --once` then `twin stream --once` (the release
//! binary, as processes), on the embedded defaults and on Tansu + ClickHouse + the Qdrant
//! server, side by side: documents per second, chunks per second, and the time from the start
//! of the crawl until every document is searchable (the stream returns once every point is
//! written and indexed; the points are then counted in the vector store).
//!
//! `cargo bench -p twin --bench feature_pipeline` (or `scripts/bench.sh pipeline`). `DOCS` sets
//! the page count (304: the 76-article corpus four times over, each copy's paragraphs made its
//! own, so that no copy is a template of another). The distributed run needs a Qdrant binary
//! (`QDRANT_BIN`, `qdrant` on the PATH or `../shared/bin/qdrant`); without one it is skipped.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use twin_config::{QdrantConfig, VectorStoreBackend, VectorStoreConfig};
use twin_testkit::{FixtureServer, Route};
use twin_vectorstore::{SearchFilter, KINDS};

fn main() {
    let docs: usize = std::env::var("DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(304);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench(docs));
}

/// One run's figures.
struct Run {
    setup: &'static str,
    documents: u64,
    chunks: u64,
    crawl_seconds: f64,
    stream_seconds: f64,
    points: u64,
    crawl_usage: Option<Usage>,
    stream_usage: Option<Usage>,
}

/// What a process used, from `/usr/bin/time`: peak resident memory and CPU time.
#[derive(Clone, Copy)]
struct Usage {
    max_rss_mb: f64,
    cpu_seconds: f64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} MB, {:.1} CPU s",
            self.max_rss_mb, self.cpu_seconds
        )
    }
}

async fn bench(docs: usize) {
    let server = FixtureServer::start().await.expect("server");
    let corpus = twin_testkit::documents::corpus();
    let origin = if twin_testkit::documents::corpus_file().exists() {
        "the 76-article corpus"
    } else {
        "generated articles"
    };
    let mut urls = Vec::with_capacity(docs);
    for i in 0..docs {
        let path = format!("/blog/article-{i}");
        let article = &corpus[i % corpus.len()];
        let copy = i / corpus.len();
        server.put(&path, Route::html(page(i, copy, &article.content)));
        urls.push(server.url(&path));
    }
    println!(
        "feature_pipeline: {docs} article pages (bodies from {origin}) from a local server, \
         twin ingest --once then twin stream --once, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut runs = vec![run_embedded(&urls).await];
    match distributed() {
        Some(backends) => runs.push(run_distributed(&urls, &backends).await),
        None => println!("  Tansu + ClickHouse + Qdrant: skipped (no Qdrant server binary)"),
    }
    println!(
        "\n  {:<32} {:>6} {:>7} {:>9} {:>10} {:>8} {:>9} {:>12}",
        "backends", "docs", "chunks", "crawl s", "stream s", "docs/s", "chunks/s", "searchable s"
    );
    for r in &runs {
        let total = r.crawl_seconds + r.stream_seconds;
        println!(
            "  {:<32} {:>6} {:>7} {:>9.1} {:>10.1} {:>8.1} {:>9.1} {:>12.1}",
            r.setup,
            r.documents,
            r.chunks,
            r.crawl_seconds,
            r.stream_seconds,
            r.documents as f64 / total,
            r.chunks as f64 / total,
            total
        );
        assert_eq!(
            r.documents as usize, docs,
            "{}: every page streamed",
            r.setup
        );
        assert_eq!(r.points, r.chunks, "{}: one point per chunk", r.setup);
    }
    println!(
        "  (docs/s and chunks/s over crawl + stream; searchable s: from the crawl's start until \
         the stream returned with every point written and indexed)"
    );
    let usage = |u: Option<Usage>| u.map_or("- (no /usr/bin/time)".to_string(), |u| u.to_string());
    println!("\n  what each role used (peak resident memory, CPU time):");
    for r in &runs {
        println!(
            "  {:<32} ingest {:<22} stream {}",
            r.setup,
            usage(r.crawl_usage),
            usage(r.stream_usage)
        );
    }
}

async fn run_embedded(urls: &[String]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), urls);
    let mut run = run_pipeline("embedded (SQLite, Qdrant Edge)", dir.path(), &[]);
    let config = VectorStoreConfig::default();
    run.points = points(&config, &dir.path().join("data")).await;
    run
}

/// The distributed backends, started by the test kit.
struct Backends {
    brokers: String,
    clickhouse: String,
    qdrant: String,
}

fn distributed() -> Option<Backends> {
    let qdrant = twin_testkit::qdrant::qdrant_or_skip("feature_pipeline on Qdrant")?;
    let broker = twin_testkit::tansu::tansu().unwrap_or_else(|e| panic!("{e}"));
    let clickhouse = twin_testkit::clickhouse::clickhouse().unwrap_or_else(|e| panic!("{e}"));
    Some(Backends {
        brokers: broker.brokers.clone(),
        clickhouse: clickhouse.url.clone(),
        qdrant: qdrant.grpc_url.clone(),
    })
}

async fn run_distributed(urls: &[String], backends: &Backends) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), urls);
    let name = format!("bench{}", std::process::id());
    let prefix = format!("{name}_");
    let mut env: Vec<(String, String)> = vec![
        ("TWIN_LOG__BACKEND".into(), "kafka".into()),
        ("TWIN_LOG__KAFKA__BROKERS".into(), backends.brokers.clone()),
        ("TWIN_WAREHOUSE__BACKEND".into(), "clickhouse".into()),
        (
            "TWIN_WAREHOUSE__CLICKHOUSE__URL".into(),
            backends.clickhouse.clone(),
        ),
        ("TWIN_WAREHOUSE__CLICKHOUSE__DATABASE".into(), name.clone()),
        ("TWIN_VECTORS__BACKEND".into(), "qdrant".into()),
        ("TWIN_VECTORS__QDRANT__URL".into(), backends.qdrant.clone()),
        ("TWIN_VECTORS__COLLECTION_PREFIX".into(), prefix.clone()),
    ];
    env.extend(twin_testkit::tansu::topic_env(&name));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut run = run_pipeline("Tansu, ClickHouse, Qdrant server", dir.path(), &env);
    let config = VectorStoreConfig {
        backend: VectorStoreBackend::Qdrant,
        qdrant: QdrantConfig {
            url: backends.qdrant.clone(),
            api_key: String::new(),
        },
        collection_prefix: prefix,
    };
    run.points = points(&config, &dir.path().join("data")).await;
    run
}

/// A twin.toml crawling every page as one web source, without a rate limit or metrics ports.
fn write_config(dir: &Path, urls: &[String]) {
    let articles: Vec<String> = urls[1..].iter().map(|u| format!("\"{u}\"")).collect();
    let text = format!(
        "[metrics]\nstream = \"\"\ningest = \"\"\n[author]\nid = \"bench\"\n\
         full_name = \"Bench Author\"\n[ingest.http]\nrequests_per_second = 0.0\nconcurrency = 8\n\
         [[ingest.sources]]\nurl = \"{}\"\nplatform = \"web\"\narticles = [{}]\n",
        urls[0],
        articles.join(", ")
    );
    std::fs::write(dir.join("twin.toml"), text).expect("twin.toml");
}

fn run_pipeline(setup: &'static str, dir: &Path, env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let (_, crawl_usage) = twin(dir, &["ingest", "--once"], env);
    let crawl_seconds = started.elapsed().as_secs_f64();
    let streaming = Instant::now();
    let (stream, stream_usage) = twin(dir, &["stream", "--once"], env);
    let stream_seconds = streaming.elapsed().as_secs_f64();
    // "documents: N, chunks: M, ..."
    let count = |name: &str| -> u64 {
        stream
            .split(&format!("{name}: "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the stream's summary:\n{stream}"))
    };
    Run {
        setup,
        documents: count("documents"),
        chunks: warehouse_chunks(&stream),
        crawl_seconds,
        stream_seconds,
        points: 0,
        crawl_usage,
        stream_usage,
    }
}

/// The chunks the warehouse holds, from the stream's last line ("warehouse (...): N raw, N
/// cleaned, N chunks"): each once, where the stream's own count also counts the chunks of
/// documents cleaned again when their source's template changed.
fn warehouse_chunks(stream: &str) -> u64 {
    stream
        .lines()
        .find(|l| l.starts_with("warehouse ("))
        .and_then(|l| l.rsplit(", ").next())
        .and_then(|last| last.strip_suffix(" chunks"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no warehouse line in the stream's summary:\n{stream}"))
}

/// Run the twin binary in `dir` with data in `dir/data` (under `/usr/bin/time` where there is
/// one): its stdout and what it used, or a panic with both streams.
fn twin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, Option<Usage>) {
    let time = Path::new("/usr/bin/time");
    let usage_file = dir.join("usage.txt");
    let mut cmd = if time.exists() {
        let mut cmd = Command::new(time);
        cmd.arg("-f")
            .arg("%M %U %S")
            .arg("-o")
            .arg(&usage_file)
            .arg(env!("CARGO_BIN_EXE_twin"));
        cmd
    } else {
        Command::new(env!("CARGO_BIN_EXE_twin"))
    };
    for (key, _) in std::env::vars() {
        if key.starts_with("TWIN_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(args)
        .env("RUST_LOG", "warn,rdkafka=error,qdrant_edge=error")
        .envs(env.iter().copied());
    let out = cmd.output().expect("run twin");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "twin {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usage = std::fs::read_to_string(&usage_file).ok().and_then(|text| {
        let fields: Vec<f64> = text
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        match fields[..] {
            [rss_kb, user, system] => Some(Usage {
                max_rss_mb: rss_kb / 1024.0,
                cpu_seconds: user + system,
            }),
            _ => None,
        }
    });
    (stdout, usage)
}

/// Points in the vector store, over every kind.
async fn points(config: &VectorStoreConfig, data_dir: &Path) -> u64 {
    let store = twin_vectorstore::open(config, data_dir, 384)
        .await
        .expect("vector store");
    let mut total = 0;
    for kind in KINDS {
        total += store
            .count(kind, &SearchFilter::default())
            .await
            .expect("count");
    }
    total
}

/// An article page of a corpus article's paragraphs; copy `copy` has each marked as its own.
fn page(i: usize, copy: usize, blocks: &[twin_schemas::ContentBlock]) -> String {
    let paragraphs: String = blocks
        .iter()
        .map(|b| format!("<p>{} (edition {copy})</p>\n", escape(b.text.trim())))
        .collect();
    format!(
        "<!doctype html><html><head><title>Article {i}</title>\
         <meta property=\"og:title\" content=\"Article {i}\">\
         <meta property=\"article:published_time\" content=\"2024-01-15T08:00:00Z\"></head><body>\
         <header><nav><a href=\"/\">Home</a></nav></header><main><article><h1>Article {i}</h1>\
         {paragraphs}</article></main><footer><p>© 2024</p></footer></body></html>"
    )
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
