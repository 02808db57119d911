//! Outputs in the Hugging Face layout, so that transformers and PEFT load them: a full model as
//! `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer files; a LoRA
//! adapter as PEFT writes one (`adapter_config.json`, `adapter_model.safetensors`). And the
//! way back: an adapter read and folded into its base (`twin models merge`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::architecture::Family;
use crate::model::{CausalLm, LoraSettings};
use crate::weights::{self, read_json, write_json};
use crate::{Result, TrainingError};

/// Tokenizer files copied beside a model when its source has them.
const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copy the tokenizer files of `from` into `to`.
pub fn copy_tokenizer(from: &Path, to: &Path) -> Result<()> {
    for name in TOKENIZER_FILES {
        let source = from.join(name);
        if source.exists() && from != to {
            std::fs::copy(&source, to.join(name)).map_err(io(&source))?;
        }
    }
    Ok(())
}

/// Write `model` (without LoRA) as a full checkpoint into `dir`, with the tokenizer files of
/// `tokenizer_from`.
pub fn save_full(model: &CausalLm, dir: &Path, tokenizer_from: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let params: BTreeMap<String, Tensor> = model
        .params()
        .iter()
        .filter(|(k, _)| !k.contains(".lora_"))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let metadata = [("format".to_string(), "pt".to_string())].into();
    weights::save(&dir.join("model.safetensors"), &params, Some(metadata))?;
    write_configs(model, dir)?;
    copy_tokenizer(tokenizer_from, dir)
}

/// Write `config.json` and `generation_config.json` of `model` into `dir`.
pub fn write_configs(model: &CausalLm, dir: &Path) -> Result<()> {
    write_json(&dir.join("config.json"), &model.config.to_json())?;
    let mut generation = serde_json::Map::new();
    if let Some(bos) = model.config.bos_token_id {
        generation.insert("bos_token_id".into(), json!(bos));
    }
    if let Some(eos) = model.config.eos_token_id {
        generation.insert("eos_token_id".into(), json!(eos));
    }
    generation.insert("transformers_version".into(), json!("4.37.2"));
    write_json(
        &dir.join("generation_config.json"),
        &Value::Object(generation),
    )
}

/// Write `model`'s LoRA matrices as a PEFT adapter of `base` into `dir`.
pub fn save_adapter(
    model: &CausalLm,
    settings: &LoraSettings,
    base: &str,
    dir: &Path,
    tokenizer_from: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let params: BTreeMap<String, Tensor> = model
        .params()
        .iter()
        .filter(|(k, _)| k.contains(".lora_"))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    if params.is_empty() {
        return Err(TrainingError::Invalid(
            "this model has no LoRA adapter to save".into(),
        ));
    }
    let metadata = [("format".to_string(), "pt".to_string())].into();
    weights::save(
        &dir.join("adapter_model.safetensors"),
        &params,
        Some(metadata),
    )?;
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "lora_dropout": settings.dropout,
        "target_modules": settings.targets,
        "bias": "none",
        "fan_in_fan_out": model.config.family == Family::Gpt2,
        "inference_mode": true,
        "modules_to_save": null,
        "init_lora_weights": true,
    });
    write_json(&dir.join("adapter_config.json"), &config)?;
    copy_tokenizer(tokenizer_from, dir)
}

/// What `adapter_config.json` says.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// The base model it was trained on, as recorded.
    pub base: Option<String>,
    /// Its LoRA shape.
    pub settings: LoraSettings,
}

/// Read a PEFT adapter folder's `adapter_config.json`.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join("adapter_config.json");
    let value: Value = read_json(&path)?;
    let bad = |reason: &str| TrainingError::Config {
        path: path.clone(),
        reason: reason.into(),
    };
    if value.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(bad("not a LoRA adapter (`peft_type` is not LORA)"));
    }
    let rank = value
        .get("r")
        .and_then(Value::as_i64)
        .filter(|r| *r > 0)
        .ok_or_else(|| bad("`r` must be a positive integer"))?;
    let alpha = value
        .get("lora_alpha")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("`lora_alpha` is missing"))?;
    let targets = match value.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => return Err(bad("`target_modules` is missing")),
    };
    Ok(AdapterConfig {
        base: value
            .get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
        settings: LoraSettings {
            rank,
            alpha,
            dropout: value
                .get("lora_dropout")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            targets,
        },
    })
}

/// Put the PEFT adapter at `adapter` on `model` (not merged).
pub fn apply_adapter(model: &mut CausalLm, adapter: &Path) -> Result<()> {
    let config = read_adapter_config(adapter)?;
    {
        // Adding LoRA draws its initial values (overwritten below) from libtorch's generator:
        // under the lock, so that a training running beside this is not disturbed.
        let _rng = crate::torch_rng();
        model.add_lora(&config.settings)?;
    }
    model.load_lora(&weights::load(
        &[adapter.join("adapter_model.safetensors")],
    )?)
}

/// The base model at `base` with the adapter at `adapter` applied (not yet merged).
pub fn load_with_adapter(base: &Path, adapter: &Path, device: Device) -> Result<CausalLm> {
    let mut model = CausalLm::load(base, device)?;
    apply_adapter(&mut model, adapter)?;
    Ok(model)
}

/// Fold the adapter at `adapter` into the base at `base` and write the result to `out`.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<CausalLm> {
    let mut model = load_with_adapter(base, adapter, Device::Cpu)?;
    model.merge_lora();
    let tokenizer_from = if adapter.join("tokenizer.json").exists() {
        adapter
    } else {
        base
    };
    save_full(&model, out, tokenizer_from)?;
    Ok(model)
}
