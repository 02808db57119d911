//! The sizing planner against published figures (each test cites its source) and on the
//! presets: parameter counts as the model cards state them, memory that fits or not with advice
//! that is itself checked.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use twin_training::plan::{self, PlanMethod, PlanRequest};
use twin_training::ModelConfig;

const GB: f64 = 1e9;

fn config(value: serde_json::Value) -> ModelConfig {
    ModelConfig::from_json(&value).unwrap()
}

fn within(ours: f64, published: f64, what: &str) {
    let off = (ours - published).abs() / published;
    assert!(
        off <= 0.10,
        "{what}: ours {ours:.3e}, published {published:.3e} ({:.1}% off)",
        off * 100.0
    );
    println!(
        "{what}: ours {:.1}, published {:.1} ({:.1}% off)",
        ours / GB,
        published / GB,
        off * 100.0
    );
}

/// Weights, gradients and optimizer state: what the papers call model states.
fn model_states(p: &plan::Plan) -> f64 {
    p.per_device.weights + p.per_device.gradients + p.per_device.optimizer
}

#[test]
fn preset_parameter_counts_match_the_model_cards() {
    // Model cards on the Hugging Face Hub (meta-llama/Llama-3.1-8B and -70B, mistralai/
    // Mistral-7B-v0.1 (7,241,732,096 in its safetensors index), Qwen/Qwen2.5-7B, -14B, -32B, -72B).
    for (name, published) in [
        ("llama-3.1-8b", 8.03e9),
        ("llama-3.1-70b", 70.6e9),
        ("mistral-7b", 7.24e9),
        ("qwen2.5-7b", 7.61e9),
        ("qwen2.5-14b", 14.7e9),
        ("qwen2.5-32b", 32.5e9),
        ("qwen2.5-72b", 72.7e9),
    ] {
        let c = plan::preset(name).unwrap();
        let ours = c.parameter_count() as f64;
        assert!(
            (ours - published).abs() / published < 0.01,
            "{name}: {ours:.4e} parameters, the card says {published:.3e}"
        );
    }
}

#[test]
fn full_fine_tuning_model_states_match_zero() {
    // Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion Parameter
    // Models" (SC 2020, arXiv:1910.02054), §3.1: mixed-precision Adam keeps 16 bytes per
    // parameter, "a model with 1.5 Billion parameters ... at least 24 GB".
    let gpt2_xl = config(serde_json::json!({
        "model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25, "vocab_size": 50257,
        "n_positions": 1024
    }));
    let p = plan::plan(&gpt2_xl, &PlanRequest::new(PlanMethod::Full));
    within(
        model_states(&p),
        24.0 * GB,
        "GPT-2 1.5B, full, model states",
    );
    // Table 1 of the same paper: a 7.5 B model needs 120 GB of model states per GPU in plain
    // data parallelism, and 31.4 GB on 64 GPUs with the optimizer state partitioned (P_os).
    let llama_7_5b = config(serde_json::json!({
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 36, "num_attention_heads": 32, "vocab_size": 32000,
        "max_position_embeddings": 4096
    }));
    let one = plan::plan(&llama_7_5b, &PlanRequest::new(PlanMethod::Full));
    within(model_states(&one), 120.0 * GB, "7.5B, full, one GPU");
    let sharded = plan::plan(
        &llama_7_5b,
        &PlanRequest {
            gpus: 64,
            ..PlanRequest::new(PlanMethod::Full)
        },
    );
    within(
        model_states(&sharded),
        31.4 * GB,
        "7.5B, full, 64 GPUs, P_os",
    );
}

#[test]
fn lora_and_qlora_memory_match_their_papers() {
    // Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR 2022,
    // arXiv:2106.09685), §4.2: on GPT-3 175B, training VRAM falls from 1.2 TB to 350 GB (the
    // frozen fp16 weights; the adapters and their state are small).
    let gpt3 = config(serde_json::json!({
        "model_type": "gpt2", "n_embd": 12288, "n_layer": 96, "n_head": 96, "vocab_size": 50257,
        "n_positions": 2048
    }));
    let p = plan::plan(
        &gpt3,
        &PlanRequest {
            lora_rank: 4,
            ..PlanRequest::new(PlanMethod::Lora)
        },
    );
    within(
        model_states(&p),
        350.0 * GB,
        "GPT-3 175B, LoRA, model states",
    );
    // Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (NeurIPS 2023,
    // arXiv:2305.14314), abstract: finetuning a 65B model needs ">780GB" in 16-bit and "<48GB"
    // with QLoRA (rank 64 on every projection, gradient checkpointing; the Guanaco runs used
    // 512-token rows).
    let llama_65b = config(serde_json::json!({
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 22016,
        "num_hidden_layers": 80, "num_attention_heads": 64, "vocab_size": 32000,
        "max_position_embeddings": 2048
    }));
    let full = plan::plan(&llama_65b, &PlanRequest::new(PlanMethod::Full));
    assert!(full.per_device.total() > 780.0 * GB);
    let qlora = plan::plan(
        &llama_65b,
        &PlanRequest {
            lora_rank: 64,
            seq_len: 512,
            gradient_checkpointing: true,
            device_memory: 48 << 30,
            ..PlanRequest::new(PlanMethod::Qlora)
        },
    );
    assert!(qlora.fits, "{}", qlora.table());
    assert!(
        qlora.per_device.total() > 35.0 * GB,
        "the 4-bit base alone is about 34 GB"
    );
}

#[test]
fn a_run_that_does_not_fit_says_what_would() {
    let c = plan::preset("llama-3.1-70b").unwrap();
    let full = plan::plan(&c, &PlanRequest::new(PlanMethod::Full));
    assert!(!full.fits);
    let table = full.table();
    assert!(
        table.contains("does NOT fit") && table.contains("to fit:"),
        "{table}"
    );
    // Every piece of advice names a change that the planner itself says fits: here weights and
    // gradients alone outgrow a GPU, so sharding the optimizer is not enough; splitting the
    // layers over 8 GPUs (the key/value heads) and sharding the optimizer over the groups is.
    let advice = full
        .advice
        .iter()
        .find(|a| a.starts_with("use "))
        .expect("a number of GPUs");
    assert!(advice.contains("--tensor-parallel 8"), "{advice}");
    let gpus: u64 = advice["use ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let with = |gpus| PlanRequest {
        gpus,
        tensor_parallel: 8,
        ..PlanRequest::new(PlanMethod::Full)
    };
    assert!(plan::plan(&c, &with(gpus)).fits);
    assert!(!plan::plan(&c, &with(gpus - 8)).fits);
    // QLoRA on one GPU: its 2,048-token activations do not fit beside the base (54 GB) until
    // they are recomputed, and the advice says so.
    let qlora = plan::plan(&c, &PlanRequest::new(PlanMethod::Qlora));
    assert!(!qlora.fits);
    assert!(
        qlora
            .advice
            .iter()
            .any(|a| a.contains("--gradient-checkpointing")),
        "{:?}",
        qlora.advice
    );
    let recomputed = plan::plan(
        &c,
        &PlanRequest {
            gradient_checkpointing: true,
            ..PlanRequest::new(PlanMethod::Qlora)
        },
    );
    assert!(recomputed.fits, "{}", recomputed.table());
    // Tensor parallelism splits the weights too.
    let tp = plan::plan(
        &c,
        &PlanRequest {
            gpus: 8,
            tensor_parallel: 8,
            ..PlanRequest::new(PlanMethod::Full)
        },
    );
    assert!(tp.per_device.weights < full.per_device.weights / 7.0);
    assert!(tp.tokens_per_second > 7.0 * full.tokens_per_second);
    // The 8B fits LoRA on one 80 GiB GPU, not full fine-tuning.
    let small = plan::preset("llama-3.1-8b").unwrap();
    assert!(!plan::plan(&small, &PlanRequest::new(PlanMethod::Full)).fits);
    assert!(plan::plan(&small, &PlanRequest::new(PlanMethod::Lora)).fits);
}
