//! `twin serve` under measurement, through its HTTP server on loopback:
//!
//! 1. Retrieval: p50 and p99 latency of `/v1/search` (query embedded by MiniLM, searched in the
//!    three collections, merged) with 100,000 chunks in the store, on Qdrant Edge and on the
//!    Qdrant server side by side; the target is a p99 under 10 ms on Edge.
//! 2. Load: rising concurrency against `/v1/search` and `/rag` with the service's limits (8 in
//!    flight, 16 waiting): throughput, p99 latency, the share answered 429 with Retry-After,
//!    errors of any other kind (none expected), and the process's peak memory.
//!
//! `cargo bench -p twin-serving --bench serve_latency [-- --chunks N --queries N --seconds S]`
//! (scripts/bench.sh serve). The Qdrant server part needs its binary (../shared/bin/qdrant or
//! QDRANT_BIN) and is left out with a message without it.

#![allow(clippy::unwrap_used)] // a benchmark that fails should stop

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::Device;
use twin_config::{EmbeddingConfig, QdrantConfig, VectorStoreBackend, VectorStoreConfig};
use twin_schemas::{Author, Chunk, ChunkId, DocumentKind, EmbeddedChunk};
use twin_serving::backend::Backend;
use twin_serving::http::{self, Limits, ServerState};
use twin_serving::retrieval::{RetrievalSettings, Retriever};
use twin_serving::{Engine, EngineOptions};
use twin_training::onnx_export::{self, OnnxOptions};
use twin_training::CausalLm;
use twin_warehouse::{SqliteWarehouse, Warehouse};

const WORDS: [&str; 16] = [
    "log",
    "replay",
    "projection",
    "warehouse",
    "vector",
    "retrieval",
    "chunk",
    "embedding",
    "batch",
    "latency",
    "broker",
    "snapshot",
    "training",
    "adapter",
    "token",
    "schema",
];

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A random unit vector (SplitMix64, seeded).
fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) as f64 / u64::MAX as f64 - 0.5) as f32
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn points(doc: usize, per_doc: usize, model: &str, dim: usize) -> Vec<EmbeddedChunk> {
    let document = format!("doc-{doc:06}");
    (0..per_doc)
        .map(|p| {
            let text: Vec<&str> = (0..60).map(|w| WORDS[(doc * 7 + p * 3 + w) % 16]).collect();
            EmbeddedChunk {
                chunk: Chunk {
                    id: ChunkId::new(&document, p as i32, "").into(),
                    document_id: document.clone(),
                    kind: DocumentKind::Article,
                    platform: "substack".into(),
                    author: Author {
                        id: "paul".into(),
                        full_name: "Paul Iusztin".into(),
                    },
                    url: format!("https://paul.substack.com/p/{document}"),
                    title: format!("About {document}"),
                    published_at: Some(1_700_000_000_000 + doc as i64),
                    position: p as i32,
                    text: text.join(" "),
                    token_count: 60,
                    document_hash: "h".into(),
                    chunked_at: 1,
                },
                model_id: model.to_string(),
                dimension: dim as i32,
                embedding: unit((doc * per_doc + p) as u64, dim),
                embedded_at: 1,
            }
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The process's peak resident memory (VmHWM), MB.
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Served {
    base: String,
    _task: tokio::task::JoinHandle<()>,
}

async fn serve(
    store: Arc<dyn twin_vectorstore::VectorStore>,
    embedder: Arc<twin_embedding::Embedder>,
    engine: Arc<Engine>,
    warehouse: &dyn Warehouse,
) -> Served {
    let retriever = Retriever::new(
        embedder,
        store,
        warehouse,
        RetrievalSettings {
            candidates: 20,
            mmr_lambda: 0.7,
            max_query_chars: 8000,
        },
    )
    .await
    .unwrap();
    retriever.check_model().await.unwrap();
    let state = ServerState {
        backend: Backend::Local(engine),
        model: "tiny".into(),
        retriever: Arc::new(retriever),
        author: "Paul Iusztin".into(),
        limits: Limits {
            max_concurrent: 8,
            max_queued: 16,
            timeout: Duration::from_secs(60),
            max_body_bytes: 1 << 20,
            k: 4,
            max_tokens: 8,
            expansions: 0,
            retrieval: true,
        },
        token: None,
        metrics: None,
        tracer: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, http::router(state)).await.unwrap();
    });
    Served { base, _task: task }
}

/// Sequential `/v1/search` latencies, ms, sorted.
async fn search_latencies(base: &str, queries: usize) -> Vec<f64> {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for i in 0..queries + 20 {
        let q = format!(
            "how does {} relate to {}",
            WORDS[i % 16],
            WORDS[(i * 5 + 3) % 16]
        );
        let started = Instant::now();
        let response = client
            .get(format!("{base}/v1/search"))
            .query(&[("q", q.as_str()), ("k", "4")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        if i >= 20 {
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    times.sort_by(f64::total_cmp);
    times
}

async fn fill(store: &dyn twin_vectorstore::VectorStore, chunks: usize, model: &str, dim: usize) {
    let per_doc = 10;
    let started = Instant::now();
    for doc in 0..chunks.div_ceil(per_doc) {
        let points = points(doc, per_doc, model, dim);
        store
            .replace_document(DocumentKind::Article, &points[0].chunk.document_id, &points)
            .await
            .unwrap();
    }
    let filled = started.elapsed().as_secs_f64();
    let started = Instant::now();
    store.optimize().await.unwrap();
    eprintln!(
        "  {}: {chunks} chunks written in {filled:.1} s, indexed in {:.1} s",
        store.backend(),
        started.elapsed().as_secs_f64()
    );
}

/// Rising concurrency against `path` for `seconds` each.
async fn load(base: &str, path: &str, body: Option<&str>, seconds: u64) {
    println!(
        "  {:>11}  {:>9}  {:>9}  {:>9}  {:>6}  {:>7}  {:>8}",
        "concurrency", "answers/s", "p50 ms", "p99 ms", "429 %", "errors", "peak MB"
    );
    for concurrency in [1usize, 4, 16, 64] {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut workers = Vec::new();
        for w in 0..concurrency {
            let client = client.clone();
            let url = format!("{base}{path}");
            let body = body.map(str::to_string);
            workers.push(tokio::spawn(async move {
                let (mut ok, mut busy, mut errors, mut times) = (0u64, 0u64, 0u64, Vec::new());
                let mut i = w;
                while Instant::now() < deadline {
                    let started = Instant::now();
                    let request = match &body {
                        Some(b) => client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(b.clone()),
                        None => client.get(&url).query(&[("q", WORDS[i % 16])]),
                    };
                    i += 1;
                    match request.send().await {
                        Ok(r) if r.status() == 200 => {
                            r.bytes().await.ok();
                            ok += 1;
                            times.push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        Ok(r) if r.status() == 429 => {
                            assert!(r.headers().contains_key("retry-after"));
                            busy += 1;
                        }
                        _ => errors += 1,
                    }
                }
                (ok, busy, errors, times)
            }));
        }
        let (mut ok, mut busy, mut errors, mut times) = (0, 0, 0, Vec::new());
        for w in workers {
            let (o, b, e, t) = w.await.unwrap();
            ok += o;
            busy += b;
            errors += e;
            times.extend(t);
        }
        times.sort_by(f64::total_cmp);
        let total = (ok + busy + errors).max(1);
        println!(
            "  {concurrency:>11}  {:>9.1}  {:>9.2}  {:>9.2}  {:>6.1}  {errors:>7}  {:>8.0}",
            ok as f64 / seconds as f64,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            busy as f64 * 100.0 / total as f64,
            peak_mb()
        );
    }
}

fn main() {
    // The folder outlives the runtime: the stores flush into it when their tasks are dropped.
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(dir.path()));
    drop(runtime);
}

async fn run(d: &Path) {
    let chunks = arg("--chunks", 100_000);
    let queries = arg("--queries", 500);
    let seconds = arg("--seconds", 3) as u64;
    // The small Llama of the training tests, exported: `/rag` needs a model to answer with.
    let llama = Path::new(env!("CARGO_MANIFEST_DIR")).join("../training/tests/data/llama");
    let model = CausalLm::load(&llama, Device::Cpu).unwrap();
    onnx_export::export(&model, &llama, &d.join("onnx"), &OnnxOptions::default()).unwrap();
    let engine = Arc::new(Engine::load(&d.join("onnx"), EngineOptions::default()).unwrap());
    let embedder = Arc::new(
        twin_embedding::open(&EmbeddingConfig::default(), d)
            .await
            .unwrap(),
    );
    let warehouse = SqliteWarehouse::open(&d.join("warehouse.sqlite")).unwrap();
    warehouse.ensure_schema().await.unwrap();
    let dim = embedder.dimension();
    let model_id = embedder.model_id().to_string();

    println!(
        "twin serve: /v1/search latency with {chunks} chunks ({queries} queries, one at a time)"
    );
    println!(
        "  {:<14} {:>8} {:>8} {:>8}",
        "store", "p50 ms", "p99 ms", "max ms"
    );
    let mut rows = Vec::new();
    let edge_config = VectorStoreConfig {
        backend: VectorStoreBackend::Edge,
        ..VectorStoreConfig::default()
    };
    let edge = twin_vectorstore::open(&edge_config, d, dim).await.unwrap();
    fill(edge.as_ref(), chunks, &model_id, dim).await;
    let served = serve(edge.clone(), embedder.clone(), engine.clone(), &warehouse).await;
    let edge_times = search_latencies(&served.base, queries).await;
    rows.push(("Qdrant Edge", edge_times.clone()));
    let qdrant = twin_testkit::qdrant::qdrant();
    let server_base = match &qdrant {
        Ok(server) => {
            let config = VectorStoreConfig {
                backend: VectorStoreBackend::Qdrant,
                qdrant: QdrantConfig {
                    url: server.grpc_url.clone(),
                    api_key: String::new(),
                },
                collection_prefix: "bench_".into(),
            };
            let store = twin_vectorstore::open(&config, d, dim).await.unwrap();
            store.drop_all().await.unwrap();
            let store = twin_vectorstore::open(&config, d, dim).await.unwrap();
            fill(store.as_ref(), chunks, &model_id, dim).await;
            let served_qdrant = serve(store, embedder.clone(), engine.clone(), &warehouse).await;
            rows.push((
                "Qdrant server",
                search_latencies(&served_qdrant.base, queries).await,
            ));
            Some(served_qdrant)
        }
        Err(why) => {
            println!("  (Qdrant server left out: {why})");
            None
        }
    };
    for (name, times) in &rows {
        println!(
            "  {name:<14} {:>8.2} {:>8.2} {:>8.2}",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().copied().unwrap_or(0.0)
        );
    }
    println!(
        "  target: p99 under 10 ms on Edge: {}",
        if percentile(&edge_times, 0.99) < 10.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    drop(server_base);

    println!("\nload on Qdrant Edge, limits 8 in flight + 16 waiting, {seconds} s per level");
    println!(" /v1/search");
    load(&served.base, "/v1/search", None, seconds).await;
    println!(" /rag (8 tokens per answer)");
    let body = serde_json::json!({"query": "how do replays rebuild a projection", "max_tokens": 8, "temperature": 0}).to_string();
    load(&served.base, "/rag", Some(&body), seconds).await;
}
