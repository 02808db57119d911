//! An exported model folder (`twin models export-llm`, or Optimum's layout): its ONNX Runtime
//! session, tokenizer, chat template and the facts generation needs (layers, cache shape,
//! context length, end-of-sequence tokens), and one forward pass over a batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use serde_json::Value;
use tokenizers::Tokenizer;
use twin_chat::{Builtin, ChatTemplate};

use crate::ServingError;

/// What generation needs to know of a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The folder it was loaded from.
    pub dir: PathBuf,
    /// `model_type` of its `config.json` (`llama`, `gpt2`...).
    pub model_type: String,
    /// Decoder layers (pairs of cache tensors).
    pub layers: usize,
    /// Key/value heads of the cache.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size (width of the logits).
    pub vocab_size: usize,
    /// Longest sequence, prompt and generation together (`max_position_embeddings`).
    pub context_length: usize,
    /// Tokens that end a generation (`eos_token_id` of `generation_config.json`, else of
    /// `config.json`).
    pub eos_token_ids: Vec<u32>,
}

/// A loaded model: session, tokenizer and template.
pub struct LlmModel {
    session: Session,
    /// Facts about it.
    pub info: ModelInfo,
    /// Its tokenizer, shared with the engine's callers.
    pub tokenizer: Arc<Tokenizer>,
    /// Its chat template.
    pub template: ChatTemplate,
    /// What the tokenizer puts before a text (Llama's BOS).
    pub opening: Vec<u32>,
}

/// One forward pass: `batch` rows of `sequence` new tokens after a cache of `past` positions.
pub struct StepInput {
    /// Rows.
    pub batch: usize,
    /// New tokens per row.
    pub sequence: usize,
    /// `[batch * sequence]` token ids (anything on padding).
    pub ids: Vec<i64>,
    /// `[batch * sequence]` positions.
    pub positions: Vec<i64>,
    /// `[batch * (past + sequence)]`: 1 on tokens, 0 on padding.
    pub mask: Vec<i64>,
    /// The cache (`2 * layers` tensors of `[batch, kv_heads, past, head_dim]`), or `None` for
    /// an empty one.
    pub cache: Option<Vec<DynValue>>,
}

/// What a forward pass gives back.
pub struct StepOutput {
    /// Logits of the last position of each row.
    pub last_logits: Vec<Vec<f32>>,
    /// The cache with this step appended.
    pub cache: Vec<DynValue>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ServingError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ServingError::Model {
                path: path.to_path_buf(),
                reason: format!("not JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServingError::Model {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl LlmModel {
    /// Load the exported model in `dir` on the process's ONNX Runtime, with `intra_threads`
    /// threads per operator (0: ONNX Runtime's default, one per core).
    pub fn load(dir: &Path, intra_threads: usize) -> Result<Self, ServingError> {
        let onnx = dir.join("model.onnx");
        if !onnx.exists() {
            return Err(ServingError::Model {
                path: dir.to_path_buf(),
                reason: "no model.onnx here: export the model first (`twin models export-llm`)"
                    .into(),
            });
        }
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?.ok_or_else(|| ServingError::Model {
            path: config_path.clone(),
            reason: "missing: the export writes config.json beside model.onnx".into(),
        })?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let environment = twin_onnx::environment(&twin_onnx::default_library())?;
        // Layout-level optimisation: measured faster here than `All` for these graphs (the
        // extended fusions cost more than they save on small decode steps).
        let mut builder = Session::builder(environment)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| ServingError::Runtime(e.to_string()))?;
        if intra_threads > 0 {
            builder = builder
                .with_intra_threads(intra_threads)
                .map_err(|e| ServingError::Runtime(e.to_string()))?;
        }
        let session = builder
            .commit_from_file(&onnx)
            .map_err(|e| ServingError::Model {
                path: onnx.clone(),
                reason: e.to_string(),
            })?;
        let not_a_decoder = |reason: &str| ServingError::Model {
            path: onnx.clone(),
            reason: format!("not a decoder with a key/value cache: {reason}"),
        };
        let cache_shape = session
            .inputs()
            .iter()
            .find(|i| i.name() == "past_key_values.0.key")
            .and_then(|i| i.dtype().tensor_shape().map(|s| s.to_vec()))
            .ok_or_else(|| not_a_decoder("no input past_key_values.0.key"))?;
        let layers = session
            .inputs()
            .iter()
            .filter(|i| i.name().starts_with("past_key_values.") && i.name().ends_with(".key"))
            .count();
        let vocab_size = session
            .outputs()
            .iter()
            .find(|o| o.name() == "logits")
            .and_then(|o| o.dtype().tensor_shape().and_then(|s| s.last().copied()))
            .filter(|&v| v > 0)
            .ok_or_else(|| not_a_decoder("no logits output with a fixed vocabulary"))?;
        for name in ["input_ids", "attention_mask", "position_ids"] {
            if !session.inputs().iter().any(|i| i.name() == name) {
                return Err(not_a_decoder(&format!("no input {name}")));
            }
        }
        let (kv_heads, head_dim) = match cache_shape.as_slice() {
            [_, heads, _, dim] if *heads > 0 && *dim > 0 => (*heads as usize, *dim as usize),
            other => return Err(not_a_decoder(&format!("cache shape {other:?}"))),
        };
        let field = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| config.get(*n).and_then(Value::as_u64))
        };
        let model_type = config
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let context_length =
            field(&["max_position_embeddings", "n_positions"]).ok_or_else(|| {
                ServingError::Model {
                    path: config_path.clone(),
                    reason: "no max_position_embeddings (or n_positions): how long may a text be?"
                        .into(),
                }
            })? as usize;
        let mut eos_token_ids = ids_of(generation.as_ref().and_then(|g| g.get("eos_token_id")));
        if eos_token_ids.is_empty() {
            eos_token_ids = ids_of(config.get("eos_token_id"));
        }
        let tokenizer = twin_chat::load_tokenizer(dir)?;
        let id = |key: &str| field(&[key]).map(|v| v as i64);
        let template = twin_chat::template_for(
            dir,
            &tokenizer,
            id("bos_token_id"),
            eos_token_ids.first().map(|&e| e as i64),
            None,
            Builtin::for_model_type(&model_type),
        )?;
        let opening = twin_chat::checkpoint::opening_tokens(&tokenizer)?;
        Ok(Self {
            session,
            info: ModelInfo {
                dir: dir.to_path_buf(),
                model_type,
                layers,
                kv_heads,
                head_dim,
                vocab_size: vocab_size as usize,
                context_length,
                eos_token_ids,
            },
            tokenizer: Arc::new(tokenizer),
            template,
            opening,
        })
    }

    /// An empty cache tensor for `batch` rows.
    fn empty_cache(&self, batch: usize) -> Result<DynValue, ServingError> {
        let shape = [batch, self.info.kv_heads, 0, self.info.head_dim];
        Ok(Tensor::<f32>::from_array((shape, Vec::<f32>::new()))?.into_dyn())
    }

    /// Run one forward pass.
    pub fn forward(&mut self, step: StepInput) -> Result<StepOutput, ServingError> {
        let StepInput {
            batch,
            sequence,
            ids,
            positions,
            mask,
            cache,
        } = step;
        let total = mask.len() / batch.max(1);
        let mut inputs: Vec<(String, SessionInputValue<'_>)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([batch, sequence], ids))?.into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([batch, total], mask))?.into(),
            ),
            (
                "position_ids".into(),
                Tensor::from_array(([batch, sequence], positions))?.into(),
            ),
        ];
        let mut cache = cache.map(Vec::into_iter);
        for layer in 0..self.info.layers {
            for part in ["key", "value"] {
                let value = match cache.as_mut().and_then(Iterator::next) {
                    Some(v) => v,
                    None => self.empty_cache(batch)?,
                };
                inputs.push((format!("past_key_values.{layer}.{part}"), value.into()));
            }
        }
        let mut outputs = self.session.run(inputs)?;
        let (shape, data) = outputs["logits"].try_extract_tensor::<f32>()?;
        let (rows, width) = (shape[0] as usize, shape[2] as usize);
        let last = shape[1] as usize - 1;
        let last_logits = (0..rows)
            .map(|r| {
                let start = (r * (last + 1) + last) * width;
                data[start..start + width].to_vec()
            })
            .collect();
        let mut next = Vec::with_capacity(2 * self.info.layers);
        for layer in 0..self.info.layers {
            for part in ["key", "value"] {
                let name = format!("present.{layer}.{part}");
                next.push(
                    outputs
                        .remove(&name)
                        .ok_or_else(|| ServingError::Runtime(format!("no output {name}")))?,
                );
            }
        }
        Ok(StepOutput {
            last_logits,
            cache: next,
        })
    }
}
