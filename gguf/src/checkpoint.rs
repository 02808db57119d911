//! A GGUF model written as a Hugging Face checkpoint folder: `config.json`, `model.safetensors`
//! (f32), `tokenizer.json`, `tokenizer_config.json` (chat template, special tokens) and
//! `generation_config.json`.
//!
//! Architectures: `llama` (Llama, SmolLM, and Mistral, written as `mistral` when the file carries
//! a sliding window) and `qwen2`. llama.cpp's converter permutes the rows of Llama's q and k
//! projections so that rotary pairs are adjacent; the import puts them back in Hugging Face's
//! order (half-split pairs). Qwen2 files are not permuted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, View};
use serde_json::{json, Value as Json};

use crate::file::{GgufFile, TensorInfo, Value};
use crate::{GgufError, Result};

/// What an import wrote.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The folder.
    pub dir: PathBuf,
    /// `general.architecture`.
    pub architecture: String,
    /// `model_type` of the written `config.json`.
    pub model_type: String,
    /// `general.name`, if the file has one.
    pub name: Option<String>,
    /// The written `config.json`.
    pub config: Json,
    /// Parameters written.
    pub parameters: u64,
    /// Tensors read, by stored type (`Q4_1`: 210).
    pub types: BTreeMap<String, usize>,
}

/// The numbers of a model's shape, from the metadata.
struct Shape {
    layers: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    vocab: u64,
}

/// Import the GGUF file `path` into the folder `out` (made if absent; files of the same names
/// are replaced). Nothing is written when the file cannot be imported.
pub fn import(path: &Path, out: &Path) -> Result<Imported> {
    let file = GgufFile::open(path)?;
    import_file(&file, out)
}

/// Import an opened GGUF file into `out`.
pub fn import_file(file: &GgufFile, out: &Path) -> Result<Imported> {
    let path = file.path().to_path_buf();
    let meta_err = |key: &str, reason: &str| GgufError::Metadata {
        path: path.clone(),
        key: key.into(),
        reason: reason.into(),
    };
    let architecture = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| meta_err("general.architecture", "is missing: which model is this?"))?
        .to_string();
    if !matches!(architecture.as_str(), "llama" | "qwen2") {
        return Err(GgufError::UnsupportedArchitecture { path, architecture });
    }
    let arch = architecture.as_str();
    let int = |key: &str| -> Result<Option<u64>> {
        let key = format!("{arch}.{key}");
        match file.get(&key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| meta_err(&key, "is not an unsigned integer")),
        }
    };
    let required = |key: &str| -> Result<u64> {
        int(key)?.ok_or_else(|| meta_err(&format!("{arch}.{key}"), "is missing"))
    };
    let float = |key: &str| file.get(&format!("{arch}.{key}")).and_then(Value::as_f64);
    let token_count = file
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .map(|t| t.len() as u64);
    let embedding = file
        .tensor("token_embd.weight")
        .ok_or_else(|| GgufError::Tensor {
            path: path.clone(),
            tensor: "token_embd.weight".into(),
            reason: "is missing: every model has its token embedding".into(),
        })?;
    let shape = Shape {
        layers: required("block_count")?,
        hidden: required("embedding_length")?,
        heads: required("attention.head_count")?,
        kv_heads: int("attention.head_count_kv")?.unwrap_or(required("attention.head_count")?),
        vocab: int("vocab_size")?
            .or(token_count)
            .unwrap_or_else(|| embedding.dims.get(1).copied().unwrap_or(0)),
    };
    if shape.heads == 0
        || !shape.hidden.is_multiple_of(shape.heads)
        || shape.kv_heads == 0
        || !shape.heads.is_multiple_of(shape.kv_heads)
    {
        return Err(meta_err(
            &format!("{arch}.attention.head_count"),
            &format!(
                "is {} (key/value heads {}) for a width of {}: heads must divide the width and key/value heads the heads",
                shape.heads, shape.kv_heads, shape.hidden
            ),
        ));
    }
    let head_dim = shape.hidden / shape.heads;
    if let Some(key_length) = int("attention.key_length")? {
        if key_length != head_dim {
            return Err(meta_err(
                &format!("{arch}.attention.key_length"),
                &format!("is {key_length}, not width / heads = {head_dim}: twin's models do not take a separate head size"),
            ));
        }
    }
    if file.tensor("rope_freqs.weight").is_some() {
        return Err(GgufError::Tensor {
            path,
            tensor: "rope_freqs.weight".into(),
            reason:
                "holds Llama 3.1-style rotary frequency factors, which twin does not import yet"
                    .into(),
        });
    }
    let context = int("context_length")?.unwrap_or(2048);
    let tied = file.tensor("output.weight").is_none();
    let sliding_window = int("attention.sliding_window")?;
    let tokenizer = crate::tokenizer::build(file, context)?;
    let eps = float("attention.layer_norm_rms_epsilon").unwrap_or(1e-6);
    let mut config = json!({
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": required("feed_forward_length")?,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": context,
        "rms_norm_eps": round_f32(eps),
        "rope_theta": round_f32(float("rope.freq_base").unwrap_or(10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": true,
    });
    if let Some(pad) = tokenizer.pad_token_id {
        config["pad_token_id"] = json!(pad);
    }
    if let (Some(kind), Some(factor)) = (
        file.get(&format!("{arch}.rope.scaling.type"))
            .and_then(Value::as_str),
        float("rope.scaling.factor"),
    ) {
        match kind {
            "none" => {}
            "linear" => config["rope_scaling"] = json!({"type": "linear", "factor": factor}),
            other => {
                return Err(meta_err(
                    &format!("{arch}.rope.scaling.type"),
                    &format!("is `{other}`: twin imports linear rotary scaling only"),
                ))
            }
        }
    }
    let model_type = match (arch, sliding_window) {
        ("qwen2", window) => {
            config["use_sliding_window"] = json!(window.is_some());
            config["sliding_window"] = json!(window.unwrap_or(context));
            config["max_window_layers"] = json!(shape.layers);
            "qwen2"
        }
        (_, Some(window)) => {
            config["sliding_window"] = json!(window);
            "mistral"
        }
        _ => {
            config["attention_bias"] = json!(false);
            config["mlp_bias"] = json!(false);
            "llama"
        }
    };
    let class = match model_type {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };
    config["model_type"] = json!(model_type);
    config["architectures"] = json!([class]);

    // The tensors: each GGUF name to its Hugging Face name, checked for shape, dequantized.
    let permute = arch == "llama";
    let mut plan: Vec<(String, &TensorInfo, Option<u64>)> = Vec::new();
    let mut wanted: Vec<(String, String, Vec<usize>, Option<u64>)> = vec![
        (
            "token_embd.weight".into(),
            "model.embed_tokens.weight".into(),
            vec![shape.vocab as usize, shape.hidden as usize],
            None,
        ),
        (
            "output_norm.weight".into(),
            "model.norm.weight".into(),
            vec![shape.hidden as usize],
            None,
        ),
    ];
    if !tied {
        wanted.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![shape.vocab as usize, shape.hidden as usize],
            None,
        ));
    }
    let ffn = required("feed_forward_length")? as usize;
    let (h, kv) = (shape.hidden as usize, (shape.kv_heads * head_dim) as usize);
    for layer in 0..shape.layers {
        let g = |n: &str| format!("blk.{layer}.{n}");
        let f = |n: &str| format!("model.layers.{layer}.{n}");
        let q_perm = permute.then_some(shape.heads);
        let k_perm = permute.then_some(shape.kv_heads);
        wanted.extend([
            (
                g("attn_norm.weight"),
                f("input_layernorm.weight"),
                vec![h],
                None,
            ),
            (
                g("ffn_norm.weight"),
                f("post_attention_layernorm.weight"),
                vec![h],
                None,
            ),
            (
                g("attn_q.weight"),
                f("self_attn.q_proj.weight"),
                vec![h, h],
                q_perm,
            ),
            (
                g("attn_k.weight"),
                f("self_attn.k_proj.weight"),
                vec![kv, h],
                k_perm,
            ),
            (
                g("attn_v.weight"),
                f("self_attn.v_proj.weight"),
                vec![kv, h],
                None,
            ),
            (
                g("attn_output.weight"),
                f("self_attn.o_proj.weight"),
                vec![h, h],
                None,
            ),
            (
                g("ffn_gate.weight"),
                f("mlp.gate_proj.weight"),
                vec![ffn, h],
                None,
            ),
            (
                g("ffn_up.weight"),
                f("mlp.up_proj.weight"),
                vec![ffn, h],
                None,
            ),
            (
                g("ffn_down.weight"),
                f("mlp.down_proj.weight"),
                vec![h, ffn],
                None,
            ),
        ]);
        if arch == "qwen2" {
            wanted.extend([
                (g("attn_q.bias"), f("self_attn.q_proj.bias"), vec![h], None),
                (g("attn_k.bias"), f("self_attn.k_proj.bias"), vec![kv], None),
                (g("attn_v.bias"), f("self_attn.v_proj.bias"), vec![kv], None),
            ]);
        }
    }
    let mut names = BTreeMap::new();
    for (gguf_name, hf_name, expected, perm) in &wanted {
        let tensor = file.tensor(gguf_name).ok_or_else(|| GgufError::Tensor {
            path: path.clone(),
            tensor: gguf_name.clone(),
            reason: format!(
                "is missing: a {arch} model of {} layers has it",
                shape.layers
            ),
        })?;
        if tensor.shape() != *expected {
            return Err(GgufError::Tensor {
                path: path.clone(),
                tensor: gguf_name.clone(),
                reason: format!(
                    "has shape {:?}, but the metadata implies {expected:?}",
                    tensor.shape()
                ),
            });
        }
        names.insert(gguf_name.as_str(), ());
        plan.push((hf_name.clone(), tensor, *perm));
    }
    if let Some(extra) = file
        .tensors
        .iter()
        .find(|t| !names.contains_key(t.name.as_str()))
    {
        return Err(GgufError::Tensor {
            path,
            tensor: extra.name.clone(),
            reason: format!("is not a tensor of a {arch} model twin knows: refusing to drop it"),
        });
    }
    // Every type is checked before anything is written.
    if let Some((_, t, _)) = plan.iter().find(|(_, t, _)| t.kind.block().1 == 0) {
        return Err(GgufError::UnsupportedType {
            path,
            tensor: t.name.clone(),
            kind: t.kind.to_string(),
        });
    }

    let mut types = BTreeMap::new();
    let mut parameters = 0;
    let mut tensors: Vec<(String, F32Tensor)> = Vec::with_capacity(plan.len());
    for (hf_name, tensor, perm) in plan {
        *types.entry(tensor.kind.to_string()).or_insert(0) += 1;
        let mut values = file.dequantize(tensor)?;
        let shape = tensor.shape();
        if let Some(heads) = perm {
            values = unpermute_rotary(&values, &shape, heads as usize);
        }
        parameters += values.len() as u64;
        tensors.push((hf_name, F32Tensor::new(values, shape)));
    }

    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| GgufError::Io { path: p, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let weights = out.join("model.safetensors");
    let info = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(info), &weights).map_err(|e| GgufError::Io {
        path: weights.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let generation = json!({
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    });
    for (name, value) in [
        ("config.json", &config),
        ("tokenizer.json", &tokenizer.tokenizer),
        ("tokenizer_config.json", &tokenizer.config),
        ("generation_config.json", &generation),
    ] {
        let target = out.join(name);
        let text = serde_json::to_string_pretty(value).unwrap_or_default();
        std::fs::write(&target, text).map_err(io(&target))?;
    }
    Ok(Imported {
        dir: out.to_path_buf(),
        architecture: arch.to_string(),
        model_type: model_type.to_string(),
        name: file
            .get("general.name")
            .and_then(Value::as_str)
            .map(str::to_string),
        config,
        parameters,
        types,
    })
}

/// An f32 value as the shortest decimal that reads back as the same f32 (`1e-5`, not
/// `9.999999747378752e-6`), as transformers writes configs.
fn round_f32(value: f64) -> Json {
    let text = format!("{}", value as f32);
    text.parse::<f64>()
        .map(|v| json!(v))
        .unwrap_or_else(|_| json!(value))
}

/// Undo llama.cpp's permutation of a q or k projection (`[heads * head_dim, in]`): its rows hold
/// each head's rotary pairs interleaved (0, half, 1, half+1, ...); Hugging Face keeps the two
/// halves apart.
pub fn unpermute_rotary(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let cols: usize = shape[1..].iter().product();
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let from = h * head_dim + i * 2 + j;
                let to = h * head_dim + j * half + i;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// An f32 tensor for safetensors.
struct F32Tensor {
    bytes: Vec<u8>,
    shape: Vec<usize>,
}

impl F32Tensor {
    fn new(values: Vec<f32>, shape: Vec<usize>) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self { bytes, shape }
    }
}

impl View for F32Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rotary_permutation_is_undone() {
        // One head of 4 rows (pairs interleaved: 0, 2, 1, 3 in Hugging Face's order), one column.
        let gguf = [0.0, 2.0, 1.0, 3.0];
        assert_eq!(
            unpermute_rotary(&gguf, &[4, 1], 1),
            vec![0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn config_floats_are_written_as_their_f32() {
        assert_eq!(round_f32(9.999_999_747_378_752e-6), json!(1e-5));
        assert_eq!(round_f32(100000.0), json!(100000.0));
    }
}
