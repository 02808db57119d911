//! Sizing a training run before it starts: memory per device for weights, gradients, optimizer
//! state, activations and the output layer, how they split over several GPUs, the tokens per
//! second the GPUs' published peak allows, and whether the run fits, with what to change if not.
//!
//! The arithmetic follows the published accounts:
//! - model states of mixed-precision AdamW, 16 bytes per parameter (2 for bf16/fp16 weights, 2
//!   for their gradients, 12 for the fp32 master copy and the two moments), and how ZeRO-1 shards
//!   the optimizer's 12 over data-parallel ranks (Rajbhandari et al., "ZeRO", 2020, §3.1, §5.1);
//! - activations per layer of a transformer block, without the attention scores that
//!   memory-efficient attention never stores, and with full recomputation ("gradient
//!   checkpointing") keeping only each layer's input (Korthikanti et al., "Reducing Activation
//!   Recomputation in Large Transformer Models", 2022, §4);
//! - QLoRA's 4-bit NormalFloat base with double quantization, 4.127 bits per parameter (Dettmers
//!   et al., "QLoRA", 2023, §3);
//! - training FLOPs of 6 per parameter and token, 2 forward and 4 backward (Kaplan et al., 2020).

use serde::Serialize;

use crate::architecture::{Family, ModelConfig};

const GIB: f64 = (1u64 << 30) as f64;

/// What is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanMethod {
    /// Every weight, with mixed-precision AdamW.
    Full,
    /// LoRA adapters beside a frozen 16-bit base.
    Lora,
    /// LoRA adapters beside a frozen 4-bit (NF4, double-quantized) base.
    Qlora,
}

impl PlanMethod {
    /// `full`, `lora` or `qlora`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "full" => Some(PlanMethod::Full),
            "lora" => Some(PlanMethod::Lora),
            "qlora" => Some(PlanMethod::Qlora),
            _ => None,
        }
    }
}

/// What the plan is for.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRequest {
    /// Full, LoRA or QLoRA.
    pub method: PlanMethod,
    /// GPUs (1 for the CPU).
    pub gpus: u64,
    /// Memory of each, bytes.
    pub device_memory: u64,
    /// Published dense bf16 peak of each, TFLOP/s.
    pub peak_tflops: f64,
    /// Share of the peak a training step reaches (model FLOPs utilisation).
    pub efficiency: f64,
    /// Tokens per row.
    pub seq_len: u64,
    /// Rows per micro-batch on each GPU.
    pub micro_batch: u64,
    /// Recompute activations in the backward pass instead of keeping them.
    pub gradient_checkpointing: bool,
    /// LoRA rank (LoRA and QLoRA), on every attention and MLP projection.
    pub lora_rank: u64,
    /// GPUs each layer's weights are split over (tensor parallel, Megatron-style; 1: none). The
    /// GPUs are `gpus / tensor_parallel` data-parallel groups, over which the optimizer state is
    /// sharded (ZeRO stage 1).
    pub tensor_parallel: u64,
    /// Bytes per parameter of the weights and gradients computed with: 2 (bf16) on GPUs, 4 (f32)
    /// on a CPU.
    pub compute_bytes: u64,
}

impl PlanRequest {
    /// A request with the usual defaults: bf16 on one 80 GiB GPU of 989 TFLOP/s (H100 SXM), 40%
    /// of the peak, rank 16, 2,048 tokens, one row.
    pub fn new(method: PlanMethod) -> Self {
        Self {
            method,
            gpus: 1,
            device_memory: 80 << 30,
            peak_tflops: 989.0,
            efficiency: 0.4,
            seq_len: 2048,
            micro_batch: 1,
            gradient_checkpointing: false,
            lora_rank: 16,
            tensor_parallel: 1,
            compute_bytes: 2,
        }
    }
}

/// Memory of one device, bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct DeviceMemory {
    /// The model's weights as held (frozen base and trainable ones).
    pub weights: f64,
    /// Gradients of the trainable weights.
    pub gradients: f64,
    /// AdamW's state: the two moments, and the fp32 master copy under mixed precision.
    pub optimizer: f64,
    /// Activations kept for the backward pass.
    pub activations: f64,
    /// The output layer's logits, upcast to f32 for the loss, and their gradient.
    pub logits: f64,
    /// The runtime's own (CUDA context, allocator reserve).
    pub overhead: f64,
}

impl DeviceMemory {
    /// Everything together.
    pub fn total(&self) -> f64 {
        self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.overhead
    }
}

/// A plan: what the run needs and whether it fits.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// What was asked.
    pub request: PlanRequest,
    /// Parameters of the model.
    pub parameters: u64,
    /// Parameters trained.
    pub trainable: u64,
    /// Memory of each device.
    pub per_device: DeviceMemory,
    /// The key/value cache of generating `micro_batch` rows of `seq_len` tokens (evaluation),
    /// per device, bytes.
    pub kv_cache: f64,
    /// FLOPs per trained token.
    pub flops_per_token: f64,
    /// Tokens per second of all the devices together.
    pub tokens_per_second: f64,
    /// Whether each device's memory holds the run.
    pub fits: bool,
    /// What would make it fit (empty when it does).
    pub advice: Vec<String>,
}

/// Parameters of the adapters of `rank` on every attention and MLP projection of `c`.
pub fn lora_parameters(c: &ModelConfig, rank: u64) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let kv = (c.num_kv_heads * c.head_dim()) as u64;
    let per_layer = match c.family {
        // c_attn (h -> 3h), c_proj (h -> h), c_fc (h -> i), mlp c_proj (i -> h).
        Family::Gpt2 => (h + 3 * h) + (h + h) + (h + i) + (i + h),
        // q, k, v, o, gate, up, down.
        _ => (h + h) + 2 * (h + kv) + (h + h) + 2 * (h + i) + (i + h),
    };
    rank * per_layer * c.num_layers as u64
}

/// Parameters in the decoder layers' projections (what QLoRA stores in 4 bits).
fn projection_parameters(c: &ModelConfig) -> u64 {
    let (h, i) = (c.hidden_size as u64, c.intermediate_size as u64);
    let kv = (c.num_kv_heads * c.head_dim()) as u64;
    let per_layer = match c.family {
        Family::Gpt2 => 4 * h * h + 2 * h * i,
        _ => 2 * h * h + 2 * h * kv + 3 * h * i,
    };
    per_layer * c.num_layers as u64
}

/// Bytes of activations one layer keeps for `tokens` tokens (bf16 or f32 by `bytes`), as
/// Korthikanti et al. count them for a block whose attention scores are not stored: the inputs
/// of the norms and projections, q, k, v and the attention output, and the MLP's intermediates
/// (three for SwiGLU: gate, up and their product; two for GPT-2: the product's input and the
/// activation's). `split` of them are divided over tensor-parallel ranks.
fn layer_activations(c: &ModelConfig, tokens: f64, bytes: f64, split: f64) -> f64 {
    let (h, i) = (c.hidden_size as f64, c.intermediate_size as f64);
    let kv = (c.num_kv_heads * c.head_dim()) as f64;
    // Not split: the two norms' inputs and outputs (4h).
    let shared = 4.0 * h;
    let inner = match c.family {
        // qkv input in the norm's output, q (h), k and v (2 kv), attention output (h), MLP: the
        // activation's input (i) and the second projection's input (i).
        Family::Gpt2 => h + 2.0 * kv + h + 2.0 * i,
        // q, k, v, attention output; gate, up, silu(gate), product.
        _ => h + 2.0 * kv + h + 4.0 * i,
    };
    tokens * bytes * (shared + inner / split)
}

/// Size a run of `request` on the model `c`.
pub fn plan(c: &ModelConfig, request: &PlanRequest) -> Plan {
    let n = request.gpus.max(1) as f64;
    let psi = c.parameter_count() as f64;
    let lora = lora_parameters(c, request.lora_rank) as f64;
    let compute = request.compute_bytes as f64;
    let model_split = request.tensor_parallel.clamp(1, request.gpus.max(1)) as f64;
    let mut memory = DeviceMemory::default();
    let trainable = match request.method {
        PlanMethod::Full => {
            memory.weights = compute * psi / model_split;
            memory.gradients = compute * psi / model_split;
            // Mixed precision keeps an fp32 master copy beside the two fp32 moments; in f32 the
            // weights are the master copy.
            let state = if compute < 4.0 { 12.0 } else { 8.0 };
            memory.optimizer = state * psi / n;
            psi
        }
        PlanMethod::Lora | PlanMethod::Qlora => {
            let base = if request.method == PlanMethod::Qlora {
                let projections = projection_parameters(c) as f64;
                projections * 4.127 / 8.0 + (psi - projections) * compute
            } else {
                compute * psi
            };
            // Adapters in the compute type with their gradients, and AdamW's two f32 moments.
            memory.weights = (base + compute * lora) / model_split;
            memory.gradients = compute * lora / model_split;
            memory.optimizer = 8.0 * lora / n;
            lora
        }
    };
    let tokens = (request.seq_len * request.micro_batch) as f64;
    let layers = c.num_layers as f64;
    let one_layer = layer_activations(c, tokens, compute, model_split);
    memory.activations = if request.gradient_checkpointing {
        // Each layer's input, and one layer's activations while it is recomputed.
        layers * tokens * compute * c.hidden_size as f64 + one_layer
    } else {
        layers * one_layer
    };
    // Logits in the compute type, upcast to f32 for the loss, and the f32 gradient.
    memory.logits = tokens * c.vocab_size as f64 * (compute + 8.0) / model_split;
    memory.overhead = if compute < 4.0 { 1.5 * GIB } else { 0.0 };
    let kv_cache =
        2.0 * layers * (c.num_kv_heads * c.head_dim()) as f64 * tokens * compute / model_split;
    // 2 forward and 4 backward per parameter and token for full training; the frozen base of
    // LoRA needs the input gradients only (2), and recomputation adds a forward (2).
    let per_param = match request.method {
        PlanMethod::Full => 6.0,
        _ => 4.0,
    } + if request.gradient_checkpointing {
        2.0
    } else {
        0.0
    };
    // Attention's scores and weighted sum: 2 * 2 * s * h per layer forward, causal half, three
    // times that with the backward.
    let attention = 6.0 * layers * request.seq_len as f64 * c.hidden_size as f64;
    let flops_per_token = per_param * psi + attention;
    let tokens_per_second = n * request.peak_tflops * 1e12 * request.efficiency / flops_per_token;
    let fits = memory.total() <= request.device_memory as f64;
    let mut result = Plan {
        request: request.clone(),
        parameters: psi as u64,
        trainable: trainable as u64,
        per_device: memory,
        kv_cache,
        flops_per_token,
        tokens_per_second,
        fits,
        advice: Vec::new(),
    };
    if !fits {
        result.advice = advice(c, request);
    }
    result
}

/// Changes that make a run fit, each checked with the planner itself.
fn advice(c: &ModelConfig, request: &PlanRequest) -> Vec<String> {
    let fits = |r: &PlanRequest| plan_fits(c, r);
    let mut out = Vec::new();
    let lighter = match request.method {
        PlanMethod::Full => Some((PlanMethod::Lora, "--method lora")),
        PlanMethod::Lora => Some((PlanMethod::Qlora, "--method qlora (a 4-bit base)")),
        PlanMethod::Qlora => None,
    };
    if let Some((method, flag)) = lighter {
        if fits(&PlanRequest {
            method,
            ..request.clone()
        }) {
            out.push(format!("train with {flag}"));
        } else if method == PlanMethod::Lora
            && fits(&PlanRequest {
                method: PlanMethod::Qlora,
                ..request.clone()
            })
        {
            out.push("train with --method qlora (a 4-bit base)".into());
        }
    }
    if !request.gradient_checkpointing
        && fits(&PlanRequest {
            gradient_checkpointing: true,
            ..request.clone()
        })
    {
        out.push("turn on --gradient-checkpointing".into());
    }
    // More GPUs: more data-parallel groups at this tensor-parallel degree, else a higher degree
    // (one that divides the key/value heads, as Megatron requires).
    let degrees: Vec<u64> = (request.tensor_parallel.max(1)..=c.num_kv_heads as u64)
        .filter(|t| (c.num_kv_heads as u64).is_multiple_of(*t))
        .collect();
    'search: for t in degrees {
        for groups in 1..=64 {
            let gpus = t * groups;
            if gpus <= request.gpus {
                continue;
            }
            if fits(&PlanRequest {
                gpus,
                tensor_parallel: t,
                ..request.clone()
            }) {
                let how = if t > 1 {
                    format!("--tensor-parallel {t}, optimizer state sharded over {groups} groups")
                } else {
                    "data parallel, optimizer state sharded".to_string()
                };
                out.push(format!("use {gpus} GPUs ({how})"));
                break 'search;
            }
        }
    }
    let mut seq = request.seq_len / 2;
    while seq >= 128 {
        if fits(&PlanRequest {
            seq_len: seq,
            ..request.clone()
        }) {
            out.push(format!("shorten rows to --seq {seq} tokens"));
            break;
        }
        seq /= 2;
    }
    if out.is_empty() {
        out.push(
            "none of LoRA, a 4-bit base, recomputation, more GPUs or shorter rows is enough: use \
             GPUs with more memory"
                .into(),
        );
    }
    out
}

fn plan_fits(c: &ModelConfig, request: &PlanRequest) -> bool {
    // Planned with unlimited memory, so that no advice is sought (it would recurse).
    let unlimited = PlanRequest {
        device_memory: u64::MAX,
        ..request.clone()
    };
    plan(c, &unlimited).per_device.total() <= request.device_memory as f64
}

/// Bytes as GiB with one decimal.
pub fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / GIB)
}

impl Plan {
    /// The plan as a table for a terminal.
    pub fn table(&self) -> String {
        let r = &self.request;
        let m = &self.per_device;
        let mut out = String::new();
        let method = match r.method {
            PlanMethod::Full => "full fine-tuning (AdamW, mixed precision)".to_string(),
            PlanMethod::Lora => format!("LoRA rank {} on a 16-bit base", r.lora_rank),
            PlanMethod::Qlora => format!("QLoRA rank {} on a 4-bit NF4 base", r.lora_rank),
        };
        out.push_str(&format!(
            "{method}: {:.2} B parameters, {:.2} B trained\n",
            self.parameters as f64 / 1e9,
            self.trainable as f64 / 1e9
        ));
        let how = match (r.gpus, r.tensor_parallel) {
            (1, _) => String::new(),
            (n, t) if t > 1 => {
                format!(", tensor parallel over {t}, optimizer state sharded over all {n}")
            }
            _ => ", data parallel, optimizer state sharded".to_string(),
        };
        out.push_str(&format!(
            "{} device(s) of {}{how}; rows of {} tokens, {} per device{}\n",
            r.gpus,
            gib(r.device_memory as f64),
            r.seq_len,
            r.micro_batch,
            if r.gradient_checkpointing {
                ", gradient checkpointing"
            } else {
                ""
            }
        ));
        for (name, bytes) in [
            ("weights", m.weights),
            ("gradients", m.gradients),
            ("optimizer state", m.optimizer),
            ("activations", m.activations),
            ("logits", m.logits),
            ("runtime overhead", m.overhead),
        ] {
            out.push_str(&format!("  {name:<18} {:>12}\n", gib(bytes)));
        }
        out.push_str(&format!(
            "  {:<18} {:>12}   of {} ({})\n",
            "total per device",
            gib(m.total()),
            gib(r.device_memory as f64),
            if self.fits { "fits" } else { "does NOT fit" }
        ));
        out.push_str(&format!(
            "  generation's key/value cache at this batch and length: {}\n",
            gib(self.kv_cache)
        ));
        out.push_str(&format!(
            "throughput: {:.0} tokens/s ({:.1} GFLOP per token, {} TFLOP/s peak per device at {:.0}% of it)\n",
            self.tokens_per_second,
            self.flops_per_token / 1e9,
            r.peak_tflops,
            r.efficiency * 100.0
        ));
        for a in &self.advice {
            out.push_str(&format!("to fit: {a}\n"));
        }
        out
    }
}

/// The preset configurations (`configs/presets/*.json`): published models without weights.
pub const PRESETS: [(&str, &str); 7] = [
    (
        "llama-3.1-8b",
        include_str!("../configs/presets/llama-3.1-8b.json"),
    ),
    (
        "llama-3.1-70b",
        include_str!("../configs/presets/llama-3.1-70b.json"),
    ),
    (
        "mistral-7b",
        include_str!("../configs/presets/mistral-7b.json"),
    ),
    (
        "qwen2.5-7b",
        include_str!("../configs/presets/qwen2.5-7b.json"),
    ),
    (
        "qwen2.5-14b",
        include_str!("../configs/presets/qwen2.5-14b.json"),
    ),
    (
        "qwen2.5-32b",
        include_str!("../configs/presets/qwen2.5-32b.json"),
    ),
    (
        "qwen2.5-72b",
        include_str!("../configs/presets/qwen2.5-72b.json"),
    ),
];

/// A preset's configuration by name.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name)?;
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    ModelConfig::from_json(&value).ok()
}

/// Published dense bf16 peaks, TFLOP/s, and memory, GiB, of common GPUs.
pub const GPUS: [(&str, f64, u64); 6] = [
    ("h100", 989.0, 80),
    ("h200", 989.0, 141),
    ("a100-80gb", 312.0, 80),
    ("a100-40gb", 312.0, 40),
    ("l40s", 362.0, 48),
    ("a10g", 125.0, 24),
];
