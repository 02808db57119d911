//! Generation throughput on ONNX Runtime, side by side with Hugging Face transformers'
//! `generate` (Debian's python3-torch, the same libtorch build twin trains with), on the same
//! checkpoints: the demo's model (`training/configs/demo-llama.json`) and a Llama of about
//! 110 M parameters, both with random weights.
//!
//! At batch 1: decode tokens/s of our engine with its key/value cache, the same without a cache
//! (every step runs the whole text again), and transformers (greedy, with its cache). Then
//! aggregate tokens/s (the median of three runs) and p50/p99 time per token with 1, 4 and 16
//! concurrent requests.
//!
//! `cargo bench -p twin-serving --bench generate_throughput [-- --tokens N]`

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up has nothing to report

use std::path::Path;
use std::time::Instant;

use tch::Device;
use twin_serving::{Engine, EngineOptions, Event, GenerationRequest, Prompt, SamplingParams};
use twin_training::architecture::{ModelConfig, DEMO_CONFIG};
use twin_training::onnx_export::{self, OnnxOptions};
use twin_training::{export, tokenizer, CausalLm};

const PROMPT_TOKENS: usize = 32;

/// The 110 M model: Llama's shape at GPT-2-small's width, with a 32,000-token vocabulary.
fn large_config() -> serde_json::Value {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000,
        "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
        "num_attention_heads": 12, "num_key_value_heads": 12, "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "initializer_range": 0.02, "tie_word_embeddings": true, "use_cache": true
    })
}

/// A checkpoint folder (Hugging Face layout, for transformers) with its ONNX export in `onnx/`.
fn checkpoint(config: &serde_json::Value, dir: &Path) -> i64 {
    let texts: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "Article {i}: the log is the truth and every store is a projection that a \
                 replay rebuilds; measure {} before you trust it.",
                i * 7
            )
        })
        .collect();
    let tok = tokenizer::train_bpe(&texts, 4096).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    tokenizer::save_trained(&tok, dir, 1024).unwrap();
    let model = CausalLm::init(ModelConfig::from_json(config).unwrap(), 0, Device::Cpu).unwrap();
    export::save_full(&model, dir, dir).unwrap();
    onnx_export::export(&model, dir, &dir.join("onnx"), &OnnxOptions::default()).unwrap();
    model.config.parameter_count()
}

fn prompt(salt: u32) -> Vec<u32> {
    (0..PROMPT_TOKENS as u32)
        .map(|i| (i * 131 + salt * 17 + 7) % 4000)
        .collect()
}

fn params(tokens: usize) -> SamplingParams {
    SamplingParams {
        max_tokens: Some(tokens),
        ignore_eos: true,
        ..SamplingParams::greedy()
    }
}

/// One run of `requests` concurrent requests: (aggregate tokens/s, time-per-token gaps in
/// seconds, decode tokens/s of the first request).
async fn run(engine: &Engine, requests: usize, tokens: usize) -> (f64, Vec<f64>, f64) {
    let start = Instant::now();
    let mut generations = Vec::new();
    for r in 0..requests {
        generations.push(
            engine
                .submit(GenerationRequest {
                    prompt: Prompt::Tokens(prompt(r as u32)),
                    params: params(tokens),
                })
                .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for mut generation in generations {
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while let Some(event) = generation.events.recv().await {
                match event {
                    Event::Token { .. } => times.push(Instant::now()),
                    Event::Text(_) => {}
                    Event::Finished(done) => return (times, done.completion_tokens),
                    Event::Failed(e) => panic!("{e}"),
                }
            }
            panic!("no end");
        }));
    }
    let (mut total, mut gaps, mut first_rate) = (0, Vec::new(), 0.0);
    for (i, task) in tasks.into_iter().enumerate() {
        let (times, generated) = task.await.unwrap();
        total += generated;
        gaps.extend(times.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()));
        if i == 0 && times.len() > 1 {
            let span = (times[times.len() - 1] - times[0]).as_secs_f64();
            first_rate = (times.len() - 1) as f64 / span;
        }
    }
    (
        total as f64 / start.elapsed().as_secs_f64(),
        gaps,
        first_rate,
    )
}

/// The threads both sides use: one per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Batch-1 decode tokens/s of our engine: the median of three runs.
async fn batch_one(engine: &Engine, tokens: usize) -> f64 {
    let _ = run(engine, 1, 8).await;
    let mut rates = Vec::new();
    for _ in 0..3 {
        rates.push(run(engine, 1, tokens).await.2);
    }
    median(rates)
}

const PYTHON: &str = r#"
import json, sys, time, torch
from transformers import AutoModelForCausalLM
folder, prompt, n, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = torch.tensor([prompt])
mask = torch.ones_like(ids)
def run(k):
    start = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=k, min_new_tokens=k,
                         do_sample=False, pad_token_id=0, eos_token_id=None)
    assert out.shape[1] == ids.shape[1] + k
    return time.perf_counter() - start
with torch.no_grad():
    run(8)
    first = min(run(1) for _ in range(3))
    whole = sorted(run(n) for _ in range(3))[1]
print(json.dumps({"decode_tokens_per_second": (n - 1) / (whole - first), "torch": torch.__version__}))
"#;

/// transformers' batch-1 decode tokens/s: generating n tokens minus generating one (the
/// prefill), the median of three; with 1 thread and with one per core, the faster (on these
/// machines Debian's torch with OpenBLAS is often faster on one thread).
fn transformers(dir: &Path, tokens: usize) -> Option<(f64, usize)> {
    let mut best: Option<(f64, usize)> = None;
    for threads in [1, cores()] {
        if let Some(rate) = transformers_on(dir, tokens, threads) {
            if best.is_none_or(|(b, _)| rate > b) {
                best = Some((rate, threads));
            }
        }
    }
    best
}

fn transformers_on(dir: &Path, tokens: usize, threads: usize) -> Option<f64> {
    let python = twin_testkit::python::torch_python()?;
    let args = [
        dir.display().to_string(),
        serde_json::to_string(&prompt(0)).unwrap(),
        tokens.to_string(),
        threads.to_string(),
    ];
    twin_testkit::python::run_json(&python, PYTHON, &args)?["decode_tokens_per_second"].as_f64()
}

async fn bench(label: &str, config: serde_json::Value, tokens: usize) {
    let dir = tempfile::tempdir().unwrap();
    let parameters = checkpoint(&config, dir.path());
    let onnx = dir.path().join("onnx");
    println!(
        "\n{label}: {:.1} M parameters, prompt {PROMPT_TOKENS} tokens, {tokens} generated, greedy",
        parameters as f64 / 1e6
    );
    let engine = Engine::load(&onnx, EngineOptions::default()).unwrap();
    let cached = batch_one(&engine, tokens).await;
    let uncached_engine = Engine::load(
        &onnx,
        EngineOptions {
            use_cache: false,
            ..EngineOptions::default()
        },
    )
    .unwrap();
    let uncached = batch_one(&uncached_engine, tokens).await;
    drop(uncached_engine);
    let theirs = transformers(dir.path(), tokens);
    println!("  batch 1, decode tokens/s:");
    println!("    twin, key/value cache     {cached:>9.1}");
    println!(
        "    twin, no cache            {uncached:>9.1}  ({:.2}x slower than with it)",
        cached / uncached
    );
    match theirs {
        Some((t, threads)) => println!(
            "    transformers generate     {t:>9.1}  (its best, on {threads} of 1 and {} threads; \
             twin is {:.2}x, target 1.5x)",
            cores(),
            cached / t
        ),
        None => println!(
            "    transformers generate     (no Python reference environment: scripts/setup.sh)"
        ),
    }
    println!("  concurrent requests: aggregate tokens/s, time per token p50 / p99");
    let mut single = 0.0;
    for requests in [1usize, 4, 16] {
        let _ = run(&engine, requests, 8).await;
        let (mut rates, mut gaps) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (aggregate, run_gaps, _) = run(&engine, requests, tokens).await;
            rates.push(aggregate);
            gaps.extend(run_gaps);
        }
        let aggregate = median(rates);
        if requests == 1 {
            single = aggregate;
        }
        println!(
            "    {requests:>2} requests  {aggregate:>9.1} tokens/s  ({:.2}x one request)  {:>6.1} ms / {:>6.1} ms",
            aggregate / single,
            percentile(&mut gaps, 0.5) * 1e3,
            percentile(&mut gaps, 0.99) * 1e3,
        );
    }
    println!("  (target: 16 concurrent requests at least 4x the aggregate of one)");
}

// The clients on one thread: the cores are the engine's.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tokens = args
        .iter()
        .position(|a| a == "--tokens")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(64usize);
    println!(
        "generation throughput: twin on ONNX Runtime {} vs transformers 4.37.2 on torch 1.13.1, \
         {} threads",
        twin_onnx::ONNXRUNTIME_VERSION,
        cores()
    );
    let demo: serde_json::Value = serde_json::from_str(DEMO_CONFIG).unwrap();
    bench("the demo's model (demo-llama.json)", demo, tokens).await;
    bench("a 110 M Llama", large_config(), tokens).await;
}
