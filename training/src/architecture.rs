//! A checkpoint's `config.json`, read into the one description our model code needs.
//!
//! Llama, Mistral and Qwen2 share one decoder (RMSNorm, rotary positions, SwiGLU, grouped-query
//! attention); they differ in biases on q/k/v (Qwen2, or Llama's `attention_bias`) and a sliding
//! attention window (Mistral, Qwen2's `use_sliding_window`). GPT-2 has learned positions,
//! LayerNorm, GELU and one fused q/k/v projection stored as `Conv1D` (`[in, out]`).

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::{Result, TrainingError};

/// The demo's model (`configs/demo-llama.json`): a Llama of 4 layers, hidden 256 and a 4,096-token
/// vocabulary (about 3 M parameters), small enough to train from scratch in minutes on two cores.
pub const DEMO_CONFIG: &str = include_str!("../configs/demo-llama.json");

/// The model families we build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `llama`.
    Llama,
    /// `mistral`.
    Mistral,
    /// `qwen2`.
    Qwen2,
    /// `gpt2`.
    Gpt2,
}

impl Family {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Qwen2 => "qwen2",
            Family::Gpt2 => "gpt2",
        }
    }

    /// The module names LoRA targets by default.
    pub fn default_lora_targets(self) -> Vec<String> {
        let names: &[&str] = match self {
            Family::Gpt2 => &["c_attn", "c_proj", "c_fc"],
            _ => &[
                "q_proj",
                "k_proj",
                "v_proj",
                "o_proj",
                "gate_proj",
                "up_proj",
                "down_proj",
            ],
        };
        names.iter().map(|s| s.to_string()).collect()
    }
}

/// How rotary positions are stretched beyond the trained context (`rope_scaling`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Positions divided by `factor`.
    Linear {
        /// The stretch.
        factor: f64,
    },
    /// NTK-aware: the base grows once a sequence outgrows `max_position_embeddings`.
    Dynamic {
        /// The stretch.
        factor: f64,
    },
    /// Llama 3.1's per-frequency scaling.
    Llama3 {
        /// The stretch of low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are stretched fully.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the model was trained with.
        original_max_position_embeddings: f64,
    },
}

/// The hidden activation of GPT-2's MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`, `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `gelu`: the exact one.
    Gelu,
    /// `relu`.
    Relu,
    /// `silu`, `swish`.
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::Gelu),
            "relu" => Some(Activation::Relu),
            "silu" | "swish" => Some(Activation::Silu),
            _ => None,
        }
    }
}

/// What our model code needs of a `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub family: Family,
    /// Tokens in the vocabulary.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (fewer than query heads: grouped-query attention).
    pub num_kv_heads: i64,
    /// Longest sequence the positions cover.
    pub max_positions: i64,
    /// Epsilon of the norms.
    pub norm_eps: f64,
    /// Base of the rotary frequencies (not GPT-2).
    pub rope_theta: f64,
    /// Rotary scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// Biases on q/k/v.
    pub qkv_bias: bool,
    /// Bias on the attention output and MLP (Llama's `mlp_bias`, `attention_bias`).
    pub output_bias: bool,
    /// A token sees at most this many tokens, itself included (Mistral).
    pub sliding_window: Option<i64>,
    /// The output projection is the input embedding.
    pub tie_word_embeddings: bool,
    /// GPT-2's MLP activation.
    pub activation: Activation,
    /// GPT-2: scale attention by 1 / (layer + 1) as well.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// The token that ends a text, if the config names one.
    pub eos_token_id: Option<i64>,
    /// The token that opens a text, if the config names one.
    pub bos_token_id: Option<i64>,
    /// The file as read, so that what we write keeps every field we do not use.
    pub raw: Map<String, Value>,
}

impl ModelConfig {
    /// Read `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let value: Value = crate::weights::read_json(path)?;
        Self::from_json(&value).map_err(|reason| TrainingError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Read a parsed `config.json`; the error says which field is wrong.
    pub fn from_json(value: &Value) -> std::result::Result<Self, String> {
        let raw = value
            .as_object()
            .ok_or("a config must be a JSON object")?
            .clone();
        let model_type = raw
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("no `model_type`: which architecture is this?")?;
        let family = match model_type {
            "llama" => Family::Llama,
            "mistral" => Family::Mistral,
            "qwen2" => Family::Qwen2,
            "gpt2" => Family::Gpt2,
            other => {
                return Err(format!(
                    "unknown architecture `model_type: {other}`: twin trains llama, mistral, \
                     qwen2 and gpt2"
                ))
            }
        };
        let int = |key: &str| -> std::result::Result<Option<i64>, String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_i64()
                    .filter(|n| *n >= 0)
                    .map(Some)
                    .ok_or_else(|| format!("`{key}` must be a non-negative integer, not {v}")),
            }
        };
        let float = |key: &str| -> std::result::Result<Option<f64>, String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or_else(|| format!("`{key}` must be a number, not {v}")),
            }
        };
        let boolean = |key: &str, default: bool| -> std::result::Result<bool, String> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| format!("`{key}` must be true or false, not {v}")),
            }
        };
        let required = |key: &str| -> std::result::Result<i64, String> {
            int(key)?.ok_or_else(|| format!("`{key}` is missing"))
        };
        let token = |key: &str| -> Option<i64> {
            match raw.get(key) {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::Array(a)) => a.first().and_then(Value::as_i64),
                _ => None,
            }
        };

        let config = if family == Family::Gpt2 {
            let hidden = required("n_embd")?;
            let activation = raw
                .get("activation_function")
                .and_then(Value::as_str)
                .unwrap_or("gelu_new");
            ModelConfig {
                family,
                vocab_size: required("vocab_size")?,
                hidden_size: hidden,
                intermediate_size: int("n_inner")?.unwrap_or(4 * hidden),
                num_layers: required("n_layer")?,
                num_heads: required("n_head")?,
                num_kv_heads: required("n_head")?,
                max_positions: required("n_positions")?,
                norm_eps: float("layer_norm_epsilon")?.unwrap_or(1e-5),
                rope_theta: 0.0,
                rope_scaling: None,
                qkv_bias: true,
                output_bias: true,
                sliding_window: None,
                tie_word_embeddings: boolean("tie_word_embeddings", true)?,
                activation: Activation::parse(activation)
                    .ok_or_else(|| format!("unknown `activation_function: {activation}`"))?,
                scale_attn_by_inverse_layer_idx: boolean("scale_attn_by_inverse_layer_idx", false)?,
                eos_token_id: token("eos_token_id"),
                bos_token_id: token("bos_token_id"),
                raw: raw.clone(),
            }
        } else {
            let heads = required("num_attention_heads")?;
            let act = raw
                .get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu");
            if act != "silu" {
                return Err(format!(
                    "`hidden_act: {act}`: twin's {model_type} takes silu only"
                ));
            }
            let sliding_window = match family {
                Family::Mistral => int("sliding_window")?,
                Family::Qwen2 if boolean("use_sliding_window", false)? => int("sliding_window")?,
                _ => None,
            };
            ModelConfig {
                family,
                vocab_size: required("vocab_size")?,
                hidden_size: required("hidden_size")?,
                intermediate_size: required("intermediate_size")?,
                num_layers: required("num_hidden_layers")?,
                num_heads: heads,
                num_kv_heads: int("num_key_value_heads")?.unwrap_or(heads),
                max_positions: int("max_position_embeddings")?.unwrap_or(2048),
                norm_eps: float("rms_norm_eps")?.unwrap_or(1e-6),
                rope_theta: float("rope_theta")?.unwrap_or(10_000.0),
                rope_scaling: rope_scaling(raw.get("rope_scaling"))?,
                qkv_bias: family == Family::Qwen2 || boolean("attention_bias", false)?,
                output_bias: family == Family::Llama && boolean("attention_bias", false)?,
                sliding_window,
                tie_word_embeddings: boolean("tie_word_embeddings", false)?,
                activation: Activation::Silu,
                scale_attn_by_inverse_layer_idx: false,
                eos_token_id: token("eos_token_id"),
                bos_token_id: token("bos_token_id"),
                raw: raw.clone(),
            }
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> std::result::Result<(), String> {
        for (name, n) in [
            ("vocabulary size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("layers", self.num_layers),
            ("attention heads", self.num_heads),
            ("key/value heads", self.num_kv_heads),
            ("intermediate size", self.intermediate_size),
            ("positions", self.max_positions),
        ] {
            if n <= 0 {
                return Err(format!("{name} must be positive, not {n}"));
            }
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(format!(
                "hidden size {} is not a multiple of the {} attention heads",
                self.hidden_size, self.num_heads
            ));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return Err(format!(
                "{} attention heads cannot share {} key/value heads evenly",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.family != Family::Gpt2 && self.head_dim() % 2 != 0 {
            return Err(format!(
                "head size {} must be even for rotary positions",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_heads
    }

    /// The config as `config.json` holds it: the file read, with what training may have
    /// changed (vocabulary, tying, dtype) written back.
    pub fn to_json(&self) -> Value {
        let mut raw = self.raw.clone();
        raw.insert("torch_dtype".into(), json!("float32"));
        raw.insert(
            "tie_word_embeddings".into(),
            json!(self.tie_word_embeddings),
        );
        raw.insert("vocab_size".into(), json!(self.vocab_size));
        if !raw.contains_key("architectures") {
            let arch = match self.family {
                Family::Llama => "LlamaForCausalLM",
                Family::Mistral => "MistralForCausalLM",
                Family::Qwen2 => "Qwen2ForCausalLM",
                Family::Gpt2 => "GPT2LMHeadModel",
            };
            raw.insert("architectures".into(), json!([arch]));
        }
        Value::Object(raw)
    }

    /// Parameters of the model (tied weights counted once).
    pub fn parameter_count(&self) -> i64 {
        let (h, i, v, l) = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.num_layers,
        );
        let kv = self.num_kv_heads * self.head_dim();
        let per_layer = match self.family {
            Family::Gpt2 => 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h,
            _ => h * h * 2 + 2 * h * kv + 3 * h * i + 2 * h,
        };
        let embeddings = v * h * if self.tie_word_embeddings { 1 } else { 2 };
        let positions = if self.family == Family::Gpt2 {
            self.max_positions * h
        } else {
            0
        };
        embeddings + positions + l * per_layer + h
    }
}

fn rope_scaling(value: Option<&Value>) -> std::result::Result<Option<RopeScaling>, String> {
    let Some(Value::Object(o)) = value else {
        return match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => Err(format!("`rope_scaling` must be an object, not {v}")),
        };
    };
    let kind = o
        .get("rope_type")
        .or_else(|| o.get("type"))
        .and_then(Value::as_str)
        .ok_or("`rope_scaling` has no `type`")?;
    let num = |key: &str, default: Option<f64>| {
        o.get(key)
            .and_then(Value::as_f64)
            .or(default)
            .ok_or_else(|| format!("`rope_scaling.{key}` is missing"))
    };
    Ok(Some(match kind {
        "linear" => RopeScaling::Linear {
            factor: num("factor", None)?,
        },
        "dynamic" => RopeScaling::Dynamic {
            factor: num("factor", None)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor", None)?,
            low_freq_factor: num("low_freq_factor", Some(1.0))?,
            high_freq_factor: num("high_freq_factor", Some(4.0))?,
            original_max_position_embeddings: num(
                "original_max_position_embeddings",
                Some(8192.0),
            )?,
        },
        "default" => return Ok(None),
        other => {
            return Err(format!(
                "`rope_scaling` type `{other}` is not supported (linear, dynamic, llama3)"
            ))
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_and_bad_fields_are_named() {
        let e = ModelConfig::from_json(&json!({"model_type": "falcon"})).unwrap_err();
        assert!(
            e.contains("unknown architecture `model_type: falcon`"),
            "{e}"
        );
        let e =
            ModelConfig::from_json(&json!({"model_type": "llama", "vocab_size": 10})).unwrap_err();
        assert!(e.contains("` is missing"), "{e}");
        let e = ModelConfig::from_json(&json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 30, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 4
        }))
        .unwrap_err();
        assert!(e.contains("not a multiple"), "{e}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_mistral_a_window() {
        let base = json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "sliding_window": 4
        });
        let with = |t: &str| {
            let mut v = base.clone();
            v["model_type"] = json!(t);
            ModelConfig::from_json(&v).unwrap()
        };
        assert!(with("qwen2").qkv_bias);
        assert_eq!(with("qwen2").sliding_window, None);
        assert_eq!(with("mistral").sliding_window, Some(4));
        assert!(!with("llama").qkv_bias);
    }
}
