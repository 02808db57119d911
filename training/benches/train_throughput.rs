//! Training throughput: our loop beside Hugging Face transformers (with PyTorch on the same
//! libtorch, Debian's python3-torch), on the same Llama configuration (hidden 256, 4 layers,
//! vocabulary 8,000), batch 8, sequence 256, full fine-tuning and LoRA (rank 16 on q/k/v/o and
//! the MLP), measured side by side in one run. Each row is a prompt (first half) and its answer
//! (second half), with the loss on the answer, as in supervised fine-tuning. Also prints the
//! machine's measured matmul peak and the share of it each loop reaches.
//!
//!   scripts/bench.sh train            (or: cargo bench -p twin-training --bench train_throughput)
//!   -- --steps N                      measured steps per case (default 10, after 3 warm-up)

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde_json::json;
use tch::{Device, Kind, Tensor};
use twin_config::{LrSchedule, TrainingConfig, TrainingMethod};
use twin_training::data::{Example, Examples};
use twin_training::trainer::{self, Observer, StepMetrics};
use twin_training::{CausalLm, LoraSettings, ModelConfig};

const HIDDEN: i64 = 256;
const LAYERS: i64 = 4;
const HEADS: i64 = 4;
const INTERMEDIATE: i64 = 688;
const VOCAB: i64 = 8000;
const BATCH: usize = 8;
const SEQ: usize = 256;
const RANK: i64 = 16;

fn config_json() -> serde_json::Value {
    json!({
        "model_type": "llama", "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "tie_word_embeddings": false
    })
}

/// `rows` rows of SEQ token ids, the same on both sides (a seeded LCG).
fn rows(n: usize) -> Vec<Vec<i64>> {
    let mut x: u64 = 12345;
    (0..n)
        .map(|_| {
            (0..SEQ)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 33) % VOCAB as u64) as i64
                })
                .collect()
        })
        .collect()
}

struct Times(Vec<f64>);
impl Observer for Times {
    fn step(&mut self, m: &StepMetrics, _: u64) {
        self.0.push(m.tokens_per_second);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn ours(method: TrainingMethod, warmup: usize, steps: usize) -> f64 {
    let config = ModelConfig::from_json(&config_json()).expect("config");
    let mut model = CausalLm::init(config, 0, Device::Cpu).expect("init");
    if method == TrainingMethod::Lora {
        model
            .add_lora(&LoraSettings {
                rank: RANK,
                alpha: 32.0,
                dropout: 0.0,
                targets: twin_training::Family::Llama.default_lora_targets(),
            })
            .expect("lora");
    }
    let examples = Examples {
        train: rows(BATCH * (warmup + steps))
            .into_iter()
            .map(|ids| Example {
                targets: (0..SEQ).map(|i| i >= SEQ / 2).collect(),
                ids,
            })
            .collect(),
        ..Examples::default()
    };
    let params = TrainingConfig {
        method,
        max_steps: Some((warmup + steps) as u64),
        batch_size: BATCH,
        max_seq_len: SEQ,
        learning_rate: 1e-4,
        warmup_steps: 0,
        schedule: LrSchedule::Constant,
        eval_every: 0,
        checkpoint_every: 1_000_000,
        packing: true,
        ..TrainingConfig::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut times = Times(Vec::new());
    trainer::train(
        &mut model,
        &examples,
        &params,
        dir.path(),
        None,
        &AtomicBool::new(false),
        &mut times,
    )
    .expect("train");
    median(times.0[warmup..].to_vec())
}

const PYTHON: &str = r#"
import json, sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg, method, rows, warmup, steps, threads = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg.pop("model_type")
model = LlamaForCausalLM(LlamaConfig(**cfg))
if method == "lora":
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"], task_type="CAUSAL_LM"))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
ids = torch.tensor(rows)
seq = ids.shape[1]
labels = ids.clone()
labels[:, : seq // 2] = -100
rates = []
for step in range(warmup + steps):
    batch = slice(step * 8, step * 8 + 8)
    start = time.perf_counter()
    loss = model(input_ids=ids[batch], labels=labels[batch]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    rates.append(8 * seq / (time.perf_counter() - start))
rates = sorted(rates[warmup:])
print(json.dumps({"tokens_per_second": rates[len(rates) // 2], "torch": torch.__version__}))
"#;

fn transformers(method: &str, warmup: usize, steps: usize) -> Option<f64> {
    let python = twin_testkit::python::torch_python()?;
    let args = [
        config_json().to_string(),
        method.to_string(),
        serde_json::to_string(&rows(BATCH * (warmup + steps))).unwrap_or_default(),
        warmup.to_string(),
        steps.to_string(),
        tch::get_num_threads().to_string(),
    ];
    twin_testkit::python::run_json(&python, PYTHON, &args)?["tokens_per_second"].as_f64()
}

/// fp32 GEMM GFLOP/s of 1024^3 matmuls on this libtorch: the machine's measured peak.
fn matmul_peak() -> f64 {
    let a = Tensor::randn(&[1024, 1024], (Kind::Float, Device::Cpu));
    let b = Tensor::randn(&[1024, 1024], (Kind::Float, Device::Cpu));
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    let n = 20;
    let start = Instant::now();
    for _ in 0..n {
        let _ = a.matmul(&b);
    }
    2.0 * 1024f64.powi(3) * n as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// FLOPs per token that a training step does: matmuls forward (2 per weight), attention,
/// and backward (twice forward for full training; input gradients only, once forward, for
/// the frozen weights under LoRA). The output layer runs on the answer half only.
fn flops_per_token(method: TrainingMethod) -> f64 {
    let (h, i, v, l, s) = (
        HIDDEN as f64,
        INTERMEDIATE as f64,
        VOCAB as f64,
        LAYERS as f64,
        SEQ as f64,
    );
    let layer_weights = 4.0 * h * h + 3.0 * h * i;
    let forward = 2.0 * l * layer_weights + 2.0 * l * 2.0 * s * h + 2.0 * h * v * 0.5;
    match method {
        TrainingMethod::Full => 3.0 * forward,
        // The benchmark measures supervised LoRA only; DPO would be its forward twice over.
        TrainingMethod::Lora | TrainingMethod::Dpo => {
            let lora = 2.0 * l * RANK as f64 * (4.0 * 2.0 * h + 3.0 * (h + i));
            2.0 * forward + 3.0 * lora
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps = args
        .iter()
        .position(|a| a == "--steps")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10usize);
    let warmup = 3;
    let peak = matmul_peak();
    println!(
        "training throughput: llama hidden {HIDDEN}, {LAYERS} layers, vocabulary {VOCAB}, batch \
         {BATCH} x {SEQ} tokens, loss on the answer half; {} threads",
        tch::get_num_threads()
    );
    println!("measured matmul peak (fp32 1024^3 on this libtorch): {peak:.1} GFLOP/s");
    let mut results = BTreeMap::new();
    for (method, name) in [
        (TrainingMethod::Full, "full"),
        (TrainingMethod::Lora, "lora"),
    ] {
        let ours = ours(method, warmup, steps);
        let theirs = transformers(name, warmup, steps);
        let share = |tps: f64| tps * flops_per_token(method) / 1e9 / peak * 100.0;
        match theirs {
            Some(t) => println!(
                "{name:<5} twin {ours:>8.0} tokens/s ({:.0}% of peak) | transformers {t:>8.0} \
                 tokens/s ({:.0}% of peak) | {:.2}x",
                share(ours),
                share(t),
                ours / t
            ),
            None => println!(
                "{name:<5} twin {ours:>8.0} tokens/s ({:.0}% of peak) | transformers: no Python \
                 reference environment (scripts/setup.sh)",
                share(ours)
            ),
        }
        results.insert(name, (ours, theirs));
    }
}
