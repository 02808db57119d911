//! Embedding throughput: twin's embedder against the Python baseline, on the same chunks, the
//! same ONNX file and the same thread count, measured side by side in one run.
//!
//! `scripts/bench.sh embed` (installs the baseline's Python packages, then runs this), or
//! `cargo bench -p twin-embedding --bench embed_throughput -- [--chunks N] [--threads N]
//! [--rounds N] [--corpus articles.json]` with onnxruntime, tokenizers and numpy importable by
//! `python3`.
//!
//! Chunks are ~256-token windows cut from the corpus (the `content.Content` fields of a JSON list
//! of articles; by default the test kit's corpus). Each side runs `--rounds` times (3), the
//! sides alternating within a round, and the median and the spread (lowest to highest) are
//! printed: Python on the fp32 file, twin on the same file, twin on the int8 file, and Python
//! again with twin's batch shapes (what the same file gives at best, the ceiling of fp32's gain).
//! Also measured: the machine's fp32 GEMM peak (a 1024x1024x1024 MatMul on ONNX Runtime), to
//! print each side's share of it, and how the int8 vectors agree with fp32 ones over the corpus
//! (cosine, and recall@10 of a search with the articles' titles).
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
use twin_config::EmbeddingPrecision;
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
    rounds: usize,
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
        rounds: 3,
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
            "--rounds" => out.rounds = value.parse().expect("--rounds N"),
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
    let articles: Vec<serde_json::Value> = match corpus {
        Some(path) => {
            serde_json::from_str(&std::fs::read_to_string(path).expect("corpus")).expect("json")
        }
        None => {
            return twin_testkit::documents::corpus()
                .iter()
                .map(|d| {
                    d.content
                        .iter()
                        .map(|b| b.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n\n")
                })
                .collect::<Vec<_>>()
                .join("\n\n")
        }
    };
    articles
        .iter()
        .filter_map(|a| a["content"]["Content"].as_str())
        .collect::<Vec<_>>()
        .join("\n\n")
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
    let onnx = model
        .onnx(work.path(), EmbeddingPrecision::Fp32)
        .expect("export");
    let onnx_int8 = model
        .onnx(work.path(), EmbeddingPrecision::Int8)
        .expect("export int8");
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
    let int8 = Embedder::load(runtime, &model, &onnx_int8, options.clone()).expect("load int8");

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
    let chunks_file = work.path().join("chunks.json");
    std::fs::write(&chunks_file, serde_json::to_string(&chunks).expect("json"))
        .expect("write chunks");
    // Twin's batch shapes, for the Python ceiling: as many texts as the token budget holds.
    let twin_batch = (options.max_batch_tokens / tokens.iter().max().copied().unwrap_or(1)).max(1);

    let refs: Vec<&str> = chunks.iter().map(String::as_str).collect();
    for warm in [&embedder, &int8] {
        warm.embed(&refs[..32.min(refs.len())]).expect("warm-up");
    }
    let timed = |embedder: &Embedder| {
        let start = Instant::now();
        let vectors = embedder.embed(&refs).expect("embed");
        assert_eq!(vectors.len(), chunks.len());
        start.elapsed().as_secs_f64()
    };
    let mut seconds: [Vec<f64>; 4] = Default::default();
    for round in 1..=args.rounds {
        eprintln!(
            "round {round} of {}: python, twin, twin int8, python at twin's batch shapes",
            args.rounds
        );
        seconds[0].push(python(
            &onnx,
            &model,
            &chunks_file,
            args.threads,
            32,
            work.path(),
        ));
        seconds[1].push(timed(&embedder));
        seconds[2].push(timed(&int8));
        seconds[3].push(python(
            &onnx,
            &model,
            &chunks_file,
            args.threads,
            twin_batch,
            work.path(),
        ));
    }

    eprintln!("fp32 GEMM peak...");
    let peak = gemm_peak(runtime, args.threads);

    let n = chunks.len() as f64;
    println!(
        "all-MiniLM-L6-v2: {} chunks, {:.0} tokens each on average, {} threads, {} rounds (median, lowest-highest)",
        chunks.len(),
        total_tokens as f64 / n,
        args.threads,
        args.rounds
    );
    println!("processor: {}", processor());
    println!(
        "twin: {} worker(s) x {} thread(s), batches of at most {} tokens; python: batches of 32, one session of {} threads",
        options.workers, options.intra_threads, options.max_batch_tokens, args.threads
    );
    println!(
        "{:<40} {:>18} {:>10} {:>9} {:>8}",
        "", "chunks/s", "tokens/s", "GFLOP/s", "of peak"
    );
    let rows = [
        ("python, fp32 file (baseline)", &seconds[0]),
        ("twin, fp32 file", &seconds[1]),
        ("twin, int8 file", &seconds[2]),
        (
            &*format!("python, fp32 file, batches of {twin_batch}"),
            &seconds[3],
        ),
    ];
    for (name, times) in rows {
        let rates: Vec<f64> = times.iter().map(|s| n / s).collect();
        let (median, low, high) = spread(&rates);
        let gflops = flops / (n / median) / 1e9;
        println!(
            "{name:<40} {median:>6.1} ({low:>4.1}-{high:>4.1}) {:>10.0} {gflops:>9.1} {:>7.1}%",
            total_tokens as f64 * median / n,
            100.0 * gflops / peak
        );
    }
    let median_rate = |times: &Vec<f64>| spread(&times.iter().map(|s| n / s).collect::<Vec<_>>()).0;
    let python_rate = median_rate(&seconds[0]);
    println!(
        "speed-up over the baseline, medians: fp32 {:.2}x (target 1.30x), int8 {:.2}x (target 1.50x); \
         python at twin's batch shapes {:.2}x",
        median_rate(&seconds[1]) / python_rate,
        median_rate(&seconds[2]) / python_rate,
        median_rate(&seconds[3]) / python_rate,
    );
    println!(
        "fp32 GEMM peak (ONNX Runtime MatMul 1024^3, one single-threaded session per core, {} cores): {peak:.1} GFLOP/s",
        args.threads
    );

    // How int8 agrees with fp32 over the corpus: passages, and the titles as queries.
    eprintln!("int8 against fp32...");
    let (agreed, passages, queries) = twin_testkit::vectors::corpus_agreement(
        |texts: &[&str]| embedder.embed(texts).expect("embed"),
        |texts: &[&str]| int8.embed(texts).expect("embed"),
        10,
    );
    println!(
        "int8 against fp32 over {} corpus passages: cosine mean {:.4} (target 0.99), lowest {:.4}; \
         recall@10 of {} title searches {:.3} (target 0.95)",
        passages,
        agreed.mean_cosine,
        agreed.min_cosine,
        queries,
        agreed.recall
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

/// One run of the Python baseline on `onnx` in batches of `batch`: its seconds.
fn python(
    onnx: &std::path::Path,
    model: &ModelFiles,
    chunks_file: &std::path::Path,
    threads: usize,
    batch: usize,
    work: &std::path::Path,
) -> f64 {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(onnx)
        .arg(model.dir.join("tokenizer.json"))
        .arg(chunks_file)
        .arg(threads.to_string())
        .arg(work.join("baseline.npy"))
        .arg(batch.to_string())
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
    baseline["seconds"].as_f64().expect("seconds")
}

/// Median, lowest and highest of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    };
    (
        median,
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
    )
}

/// The processor's model name and the vector extensions that matter to ONNX Runtime's kernels.
fn processor() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(str::trim)
        .unwrap_or("unknown");
    let flags: Vec<&str> = info
        .lines()
        .find_map(|l| l.strip_prefix("flags").and_then(|r| r.split(':').nth(1)))
        .map(|f| f.split_whitespace().collect())
        .unwrap_or_default();
    let extensions: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    ]
    .into_iter()
    .filter(|e| flags.contains(e))
    .collect();
    format!("{name} ({})", extensions.join(", "))
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
