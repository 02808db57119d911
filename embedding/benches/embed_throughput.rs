//! Embedding throughput: twin's embedder against the Python baseline, on the same chunks, the
//! same ONNX file and the same thread count, measured side by side in one run.
//!
//! `scripts/bench.sh embed` (installs the baseline's Python packages, then runs this), or
//! `cargo bench -p twin-embedding --bench embed_throughput -- [--chunks N] [--threads N]
//! [--corpus articles.json]` with onnxruntime, tokenizers and numpy importable by `python3`.
//!
//! Chunks are ~256-token windows cut from the corpus (the `content.Content` fields of a JSON list
//! of articles) or, without one, from built-in text. Also measured: the machine's fp32 GEMM peak
//! (a 1024x1024x1024 MatMul on ONNX Runtime), to print each side's share of it.
//!
//! Then the latency of one-text queries (what retrieval sends) at concurrency 1, 4 and 16:
//! p50 and p99 per query, with one session (every query waits for the one before) beside the
//! worker pool (queries spread over every session), measured side by side.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::value::Tensor;
use twin_embedding::model::{default_runtime_library, tool_cache};
use twin_embedding::{Embedder, EmbedderOptions, ModelFiles};
use twin_onnx::proto::{Dim, GraphBuilder, FLOAT};

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const WINDOW: usize = 254; // 256 with [CLS] and [SEP]

struct Args {
    chunks: usize,
    threads: usize,
    workers: usize,
    max_batch_tokens: usize,
    corpus: Option<PathBuf>,
}

fn args() -> Args {
    let mut out = Args {
        chunks: 400,
        workers: 0,
        max_batch_tokens: EmbedderOptions::default().max_batch_tokens,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        corpus: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--chunks" => out.chunks = value.parse().expect("--chunks N"),
            "--threads" => out.threads = value.parse().expect("--threads N"),
            "--workers" => out.workers = value.parse().expect("--workers N"),
            "--max-batch-tokens" => {
                out.max_batch_tokens = value.parse().expect("--max-batch-tokens N")
            }
            "--corpus" => out.corpus = Some(PathBuf::from(value)),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

fn source_text(corpus: Option<&PathBuf>) -> String {
    if let Some(path) = corpus {
        let articles: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("corpus")).expect("json");
        return articles
            .as_array()
            .expect("a list of articles")
            .iter()
            .filter_map(|a| a["content"]["Content"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    let paragraphs = [
        "Feature pipelines clean, chunk and embed raw documents so that retrieval can find them.",
        "An event-sourced system keeps its log as the truth; every store is a projection of it.",
        "Fine-tuning a language model on one person's writing teaches it their voice and topics.",
        "fn embed(texts: &[&str]) -> Vec<Vec<f32>> { texts.iter().map(|t| model.run(t)).collect() }",
        "Batching by token budget keeps the attention matrices small enough to stay in cache.",
        "Kafka keeps the events of one key in one partition, in the order they were produced.",
    ];
    (0..4000)
        .map(|i| paragraphs[(i * 7 + i / 3) % paragraphs.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// ~256-token chunks: windows of the tokenised text, decoded back to text.
fn chunks(embedder: &Embedder, text: &str, count: usize) -> Vec<String> {
    let mut tokenizer = embedder.tokenizer().clone();
    tokenizer.with_truncation(None).expect("no truncation");
    let ids = tokenizer
        .encode(text, false)
        .expect("tokenize")
        .get_ids()
        .to_vec();
    let mut out: Vec<String> = ids
        .chunks(WINDOW)
        .filter(|w| w.len() > WINDOW / 2)
        .map(|w| tokenizer.decode(w, true).expect("decode"))
        .collect();
    assert!(!out.is_empty(), "not enough text for one chunk");
    while out.len() < count {
        out.extend_from_within(..out.len().min(count - out.len()));
    }
    out.truncate(count);
    out
}

/// FLOPs of one forward pass of a BERT encoder over `tokens` tokens.
fn encoder_flops(tokens: f64, layers: f64, hidden: f64, ffn: f64) -> f64 {
    let dense = 2.0 * tokens * (4.0 * hidden * hidden + 2.0 * hidden * ffn);
    let attention = 2.0 * 2.0 * tokens * tokens * hidden;
    layers * (dense + attention)
}

/// The machine's fp32 GEMM peak: one single-threaded 1024^3 MatMul session per core on ONNX
/// Runtime, all running at once; the best aggregate GFLOP/s of several rounds.
fn gemm_peak(runtime: &ort::environment::Environment, cores: usize) -> f64 {
    let n = 1024i64;
    let mut g = GraphBuilder::default();
    let a = g.input("a", FLOAT, &[Dim::Fixed(n), Dim::Fixed(n)]);
    let b = g.f32s("b", &[n, n], &vec![0.5f32; (n * n) as usize]);
    let c = g.node("MatMul", &[&a, &b], vec![]);
    g.output(&c, "c", FLOAT, &[Dim::Fixed(n), Dim::Fixed(n)]);
    let model = g.finish(17, "gemm", &[]);
    let rounds = 60;
    let per_core: Vec<Vec<f64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cores)
            .map(|_| {
                scope.spawn(|| {
                    let mut session = Session::builder(runtime)
                        .expect("builder")
                        .with_intra_threads(1)
                        .expect("threads")
                        .commit_from_memory(&model)
                        .expect("gemm model");
                    let input = vec![1.0f32; (n * n) as usize];
                    (0..rounds)
                        .map(|_| {
                            let tensor =
                                Tensor::from_array(([n, n], input.clone())).expect("tensor");
                            let start = Instant::now();
                            session.run(ort::inputs!["a" => tensor]).expect("run");
                            2.0 * (n * n * n) as f64 / start.elapsed().as_secs_f64() / 1e9
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("gemm thread"))
            .collect()
    });
    // Rounds run side by side on every core: add up each round, keep the best.
    (0..rounds)
        .map(|r| per_core.iter().map(|rates| rates[r]).sum::<f64>())
        .fold(0.0, f64::max)
}

fn main() {
    let args = args();
    let cache = tool_cache().expect("a tool cache");
    let model = ModelFiles::at(MODEL, cache.join("models").join(MODEL))
        .expect("model (run scripts/setup.sh)");
    let work = tempfile::tempdir().expect("tempdir");
    let onnx = model.onnx(work.path()).expect("export");
    let runtime = twin_onnx::environment(&default_runtime_library()).expect("onnx runtime");
    // The same cores as the baseline: `threads` in all, as workers of one thread each unless
    // --workers says otherwise.
    let workers = if args.workers == 0 {
        args.threads
    } else {
        args.workers
    };
    let options = EmbedderOptions {
        intra_threads: (args.threads / workers).max(1),
        workers,
        max_batch_tokens: args.max_batch_tokens,
        ..Default::default()
    };
    let embedder = Embedder::load(runtime, &model, &onnx, options.clone()).expect("load");

    let chunks = chunks(&embedder, &source_text(args.corpus.as_ref()), args.chunks);
    let tokens: Vec<usize> = chunks
        .iter()
        .map(|c| {
            embedder
                .tokenizer()
                .encode(c.as_str(), true)
                .expect("tokenize")
                .len()
        })
        .collect();
    let total_tokens: usize = tokens.iter().sum();
    let flops: f64 = tokens
        .iter()
        .map(|&t| encoder_flops(t as f64, 6.0, 384.0, 1536.0))
        .sum();

    // Python baseline, on the same file and chunks.
    let chunks_file = work.path().join("chunks.json");
    std::fs::write(&chunks_file, serde_json::to_string(&chunks).expect("json"))
        .expect("write chunks");
    let baseline_out = work.path().join("baseline.npy");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline.py");
    eprintln!("python baseline...");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&onnx)
        .arg(model.dir.join("tokenizer.json"))
        .arg(&chunks_file)
        .arg(args.threads.to_string())
        .arg(&baseline_out)
        .output()
        .expect("python3");
    if !output.status.success() {
        eprintln!(
            "the Python baseline failed (scripts/bench.sh installs onnxruntime, tokenizers and numpy):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::process::exit(1);
    }
    let baseline: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("baseline json");
    let python_s = baseline["seconds"].as_f64().expect("seconds");

    eprintln!("twin...");
    let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    embedder
        .embed(&refs[..32.min(refs.len())])
        .expect("warm-up");
    let start = Instant::now();
    let vectors = embedder.embed(&refs).expect("embed");
    let twin_s = start.elapsed().as_secs_f64();
    assert_eq!(vectors.len(), chunks.len());

    eprintln!("fp32 GEMM peak...");
    let peak = gemm_peak(runtime, args.threads);

    let n = chunks.len() as f64;
    println!(
        "all-MiniLM-L6-v2: {} chunks, {:.0} tokens each on average, {} threads, same ONNX file",
        chunks.len(),
        total_tokens as f64 / n,
        args.threads
    );
    println!(
        "twin: {} worker(s) x {} thread(s), batches of at most {} tokens",
        options.workers, options.intra_threads, options.max_batch_tokens
    );
    println!(
        "{:<34} {:>10} {:>10} {:>9} {:>8}",
        "", "chunks/s", "tokens/s", "GFLOP/s", "of peak"
    );
    for (name, seconds) in [
        ("python (ort + tokenizers, batch 32)", python_s),
        ("twin (token-budget batches)", twin_s),
    ] {
        let gflops = flops / seconds / 1e9;
        println!(
            "{name:<34} {:>10.1} {:>10.0} {:>9.1} {:>7.1}%",
            n / seconds,
            total_tokens as f64 / seconds,
            gflops,
            100.0 * gflops / peak
        );
    }
    println!(
        "speed-up over the baseline: {:.2}x (target 1.30x)",
        python_s / twin_s
    );
    println!(
        "fp32 GEMM peak (ONNX Runtime MatMul 1024^3, one single-threaded session per core, {} cores): {peak:.1} GFLOP/s",
        args.threads
    );

    // Latency of one-text queries: one session against the pool, side by side.
    eprintln!("query latency...");
    let queries: Vec<String> = chunks
        .iter()
        .map(|c| c.split_whitespace().take(16).collect::<Vec<_>>().join(" "))
        .collect();
    let single = Arc::new(
        Embedder::load(
            runtime,
            &model,
            &onnx,
            EmbedderOptions {
                workers: 1,
                intra_threads: 1,
                ..options.clone()
            },
        )
        .expect("load one session"),
    );
    let pool = Arc::new(embedder);
    println!();
    println!(
        "one-text queries ({} words), latency in ms: one session vs the pool of {} worker(s)",
        16,
        pool.workers()
    );
    println!(
        "{:>11} {:>14} {:>8} {:>10} {:>10} {:>8} {:>10}",
        "concurrency", "1 session p50", "p99", "queries/s", "pool p50", "p99", "queries/s"
    );
    for concurrency in [1usize, 4, 16] {
        let (one_p50, one_p99, one_rate) = query_latency(&single, &queries, concurrency);
        let (pool_p50, pool_p99, pool_rate) = query_latency(&pool, &queries, concurrency);
        println!(
            "{concurrency:>11} {one_p50:>14.1} {one_p99:>8.1} {one_rate:>10.0} {pool_p50:>10.1} {pool_p99:>8.1} {pool_rate:>10.0}"
        );
    }
}

/// `concurrency` threads send one-text queries until 20 per thread (at least 200 in all) are
/// answered: p50 and p99 latency in ms, and queries per second.
fn query_latency(
    embedder: &Arc<Embedder>,
    queries: &[String],
    concurrency: usize,
) -> (f64, f64, f64) {
    let per_thread = (200 / concurrency).max(20);
    embedder.embed(&[queries[0].as_str()]).expect("warm-up");
    let started = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|t| {
                let embedder = embedder.clone();
                scope.spawn(move || {
                    (0..per_thread)
                        .map(|i| {
                            let query = &queries[(t * per_thread + i) % queries.len()];
                            let start = Instant::now();
                            embedder.embed(&[query.as_str()]).expect("query");
                            start.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("query thread"))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99), latencies.len() as f64 / elapsed)
}
