//! Export of a BERT encoder (the architecture of all-MiniLM-L6-v2 and most sentence-transformers
//! models) from its Hugging Face checkpoint (`config.json` + `model.safetensors`) to an ONNX
//! graph of standard opset-17 operators.
//!
//! Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, `[batch, sequence]`); output
//! `last_hidden_state` (float, `[batch, sequence, hidden]`), the same signature as Hugging Face's
//! own exports, so pooling happens outside the graph exactly as sentence-transformers does it.
//! A `BertForSequenceClassification` checkpoint (a cross-encoder) outputs `logits` (float,
//! `[batch, labels]`) instead, through its pooler and classifier, as Optimum's export does.

use std::fs;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::EmbeddingError;
use twin_onnx::proto::{attr_float, attr_int, attr_ints, Dim, GraphBuilder, FLOAT, INT64};

/// ONNX opset of the exported graph (17 brings `LayerNormalization`).
pub const OPSET: i64 = 17;

/// The fields of a BERT `config.json` the export needs.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Must be `bert`.
    pub model_type: String,
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    /// Longest input the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Activation of the feed-forward layer; only exact `gelu` is exported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// The model classes the checkpoint was saved as; `BertForSequenceClassification` (a
    /// cross-encoder) exports its pooler and classifier too.
    #[serde(default)]
    pub architectures: Vec<String>,
}

fn default_eps() -> f32 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Read and check `config.json`.
    pub fn load(path: &Path) -> Result<Self, EmbeddingError> {
        let text = fs::read_to_string(path).map_err(|e| EmbeddingError::io(path, e))?;
        let config: BertConfig =
            serde_json::from_str(&text).map_err(|e| EmbeddingError::Model {
                path: path.to_path_buf(),
                reason: format!("not a BERT config.json: {e}"),
            })?;
        let unsupported = |reason: String| EmbeddingError::Model {
            path: path.to_path_buf(),
            reason,
        };
        if config.model_type != "bert" {
            return Err(unsupported(format!(
                "model_type {:?}: only BERT encoders are exported",
                config.model_type
            )));
        }
        if config.hidden_act != "gelu" {
            return Err(unsupported(format!(
                "hidden_act {:?}: only exact gelu is exported",
                config.hidden_act
            )));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }

    /// Whether the checkpoint is a sequence classifier (a cross-encoder): its graph ends in the
    /// pooler and the classifier, and outputs `logits`.
    pub fn is_classifier(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "BertForSequenceClassification")
    }
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// Encoder layers.
    pub layers: usize,
    /// Hidden width (the embedding dimension).
    pub hidden_size: usize,
    /// Classes of a sequence classifier's `logits`; 0 for an encoder.
    pub labels: usize,
    /// Parameters written.
    pub parameters: usize,
    /// Size of the ONNX file.
    pub bytes: usize,
}

/// Weights by name, with or without the `bert.` prefix some checkpoints carry.
struct Weights<'a> {
    tensors: SafeTensors<'a>,
    path: &'a Path,
    parameters: usize,
}

impl Weights<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EmbeddingError> {
        let view = self
            .tensors
            .tensor(name)
            .or_else(|_| self.tensors.tensor(&format!("bert.{name}")))
            .map_err(|_| EmbeddingError::Model {
                path: self.path.to_path_buf(),
                reason: format!("tensor {name} is missing"),
            })?;
        if view.dtype() != Dtype::F32 || view.shape() != shape {
            return Err(EmbeddingError::Model {
                path: self.path.to_path_buf(),
                reason: format!(
                    "tensor {name} is {:?} {:?}, expected F32 {shape:?}",
                    view.dtype(),
                    view.shape()
                ),
            });
        }
        self.parameters += shape.iter().product::<usize>();
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A PyTorch `Linear` weight (`[out, in]`) transposed to `[in, out]` for `MatMul`.
    fn linear_t(&mut self, name: &str, out: usize, inp: usize) -> Result<Vec<f32>, EmbeddingError> {
        let w = self.get(name, &[out, inp])?;
        let mut t = vec![0f32; w.len()];
        for o in 0..out {
            for i in 0..inp {
                t[i * out + o] = w[o * inp + i];
            }
        }
        Ok(t)
    }
}

/// Export the checkpoint in `model_dir` to `out` (written atomically).
pub fn export(model_dir: &Path, out: &Path) -> Result<ExportSummary, EmbeddingError> {
    let config = BertConfig::load(&model_dir.join("config.json"))?;
    let weights_path = model_dir.join("model.safetensors");
    let bytes = fs::read(&weights_path).map_err(|e| EmbeddingError::io(&weights_path, e))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| EmbeddingError::Model {
        path: weights_path.clone(),
        reason: format!("not a safetensors file: {e}"),
    })?;
    let mut w = Weights {
        tensors,
        path: &weights_path,
        parameters: 0,
    };
    let model = build(&config, &mut w)?;
    let summary = ExportSummary {
        layers: config.num_hidden_layers,
        hidden_size: config.hidden_size,
        labels: if config.is_classifier() {
            first_dim(&w, "classifier.weight")?
        } else {
            0
        },
        parameters: w.parameters,
        bytes: model.len(),
    };
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).map_err(|e| EmbeddingError::io(dir, e))?;
    }
    let tmp = out.with_extension(format!("onnx.tmp.{}", std::process::id()));
    fs::write(&tmp, &model).map_err(|e| EmbeddingError::io(&tmp, e))?;
    fs::rename(&tmp, out).map_err(|e| EmbeddingError::io(out, e))?;
    Ok(summary)
}

fn build(c: &BertConfig, w: &mut Weights<'_>) -> Result<Vec<u8>, EmbeddingError> {
    let h = c.hidden_size;
    let heads = c.num_attention_heads;
    let head_dim = h / heads;
    let ffn = c.intermediate_size;
    let hi = h as i64;
    let mut g = GraphBuilder::default();
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];
    let input_ids = g.input("input_ids", INT64, &batch_seq);
    let attention_mask = g.input("attention_mask", INT64, &batch_seq);
    let token_type_ids = g.input("token_type_ids", INT64, &batch_seq);

    // Embeddings: word + position + token type, then LayerNorm.
    let word_table = w.get("embeddings.word_embeddings.weight", &[w_vocab(w)?, h])?;
    let vocab = word_table.len() / h;
    let word_table = g.f32s("word_embeddings", &[vocab as i64, hi], &word_table);
    let pos_table = w.get(
        "embeddings.position_embeddings.weight",
        &[c.max_position_embeddings, h],
    )?;
    let pos_table = g.f32s(
        "position_embeddings",
        &[c.max_position_embeddings as i64, hi],
        &pos_table,
    );
    let type_rows = w_type_vocab(w)?;
    let type_table = w.get("embeddings.token_type_embeddings.weight", &[type_rows, h])?;
    let type_table = g.f32s(
        "token_type_embeddings",
        &[type_rows as i64, hi],
        &type_table,
    );

    let words = g.node(
        "Gather",
        &[&word_table, &input_ids],
        vec![attr_int("axis", 0)],
    );
    let shape = g.node("Shape", &[&input_ids], vec![]);
    let one = g.i64s("one_i64", &[], &[1]);
    let zero = g.i64s("zero_i64", &[], &[0]);
    let seq_len = g.node("Gather", &[&shape, &one], vec![attr_int("axis", 0)]);
    let positions = g.node("Range", &[&zero, &seq_len, &one], vec![]);
    let pos = g.node(
        "Gather",
        &[&pos_table, &positions],
        vec![attr_int("axis", 0)],
    );
    let types = g.node(
        "Gather",
        &[&type_table, &token_type_ids],
        vec![attr_int("axis", 0)],
    );
    let sum = g.node("Add", &[&words, &pos], vec![]);
    let sum = g.node("Add", &[&sum, &types], vec![]);
    let mut x = layer_norm(&mut g, w, c, "embeddings.LayerNorm", &sum)?;

    // Additive attention mask: 0 where attended, -10000 where padded, shaped [batch, 1, 1, seq].
    let mask = g.node(
        "Cast",
        &[&attention_mask],
        vec![attr_int("to", FLOAT as i64)],
    );
    let one_f = g.f32s("one_f32", &[], &[1.0]);
    let inverted = g.node("Sub", &[&one_f, &mask], vec![]);
    let big_negative = g.f32s("mask_value", &[], &[-10000.0]);
    let additive = g.node("Mul", &[&inverted, &big_negative], vec![]);
    let axes = g.i64s("mask_axes", &[2], &[1, 2]);
    let mask_bias = g.node("Unsqueeze", &[&additive, &axes], vec![]);

    let split_heads = g.i64s(
        "split_heads_shape",
        &[4],
        &[0, 0, heads as i64, head_dim as i64],
    );
    let merge_heads = g.i64s("merge_heads_shape", &[3], &[0, 0, hi]);
    let scale = g.f32s("attention_scale", &[], &[1.0 / (head_dim as f32).sqrt()]);
    let half = g.f32s("half", &[], &[0.5]);
    let inv_sqrt2 = g.f32s("inv_sqrt2", &[], &[std::f32::consts::FRAC_1_SQRT_2]);

    for layer in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        let q = linear(&mut g, w, &format!("{p}.attention.self.query"), &x, h, h)?;
        let k = linear(&mut g, w, &format!("{p}.attention.self.key"), &x, h, h)?;
        let v = linear(&mut g, w, &format!("{p}.attention.self.value"), &x, h, h)?;
        let q = g.node("Reshape", &[&q, &split_heads], vec![]);
        let q = g.node("Transpose", &[&q], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let k = g.node("Reshape", &[&k, &split_heads], vec![]);
        let k = g.node("Transpose", &[&k], vec![attr_ints("perm", &[0, 2, 3, 1])]);
        let v = g.node("Reshape", &[&v, &split_heads], vec![]);
        let v = g.node("Transpose", &[&v], vec![attr_ints("perm", &[0, 2, 1, 3])]);
        let scores = g.node("MatMul", &[&q, &k], vec![]);
        let scores = g.node("Mul", &[&scores, &scale], vec![]);
        let scores = g.node("Add", &[&scores, &mask_bias], vec![]);
        let probs = g.node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
        let context = g.node("MatMul", &[&probs, &v], vec![]);
        let context = g.node(
            "Transpose",
            &[&context],
            vec![attr_ints("perm", &[0, 2, 1, 3])],
        );
        let context = g.node("Reshape", &[&context, &merge_heads], vec![]);
        let attended = linear(
            &mut g,
            w,
            &format!("{p}.attention.output.dense"),
            &context,
            h,
            h,
        )?;
        let residual = g.node("Add", &[&attended, &x], vec![]);
        let x1 = layer_norm(
            &mut g,
            w,
            c,
            &format!("{p}.attention.output.LayerNorm"),
            &residual,
        )?;

        // Feed-forward with exact GELU: 0.5 * x * (1 + erf(x / sqrt 2)).
        let inner = linear(&mut g, w, &format!("{p}.intermediate.dense"), &x1, ffn, h)?;
        let scaled = g.node("Mul", &[&inner, &inv_sqrt2], vec![]);
        let erf = g.node("Erf", &[&scaled], vec![]);
        let erf1 = g.node("Add", &[&erf, &one_f], vec![]);
        let gelu = g.node("Mul", &[&inner, &erf1], vec![]);
        let gelu = g.node("Mul", &[&gelu, &half], vec![]);
        let out = linear(&mut g, w, &format!("{p}.output.dense"), &gelu, h, ffn)?;
        let residual = g.node("Add", &[&out, &x1], vec![]);
        x = layer_norm(&mut g, w, c, &format!("{p}.output.LayerNorm"), &residual)?;
    }
    if c.is_classifier() {
        // As BertForSequenceClassification: the [CLS] state through the pooler (dense, tanh),
        // then the classifier.
        let labels = first_dim(w, "classifier.weight")?;
        let first = g.i64s("cls_index", &[], &[0]);
        let cls = g.node("Gather", &[&x, &first], vec![attr_int("axis", 1)]);
        let pooled = linear(&mut g, w, "pooler.dense", &cls, h, h)?;
        let pooled = g.node("Tanh", &[&pooled], vec![]);
        let logits = linear(&mut g, w, "classifier", &pooled, labels, h)?;
        g.output(
            &logits,
            "logits",
            FLOAT,
            &[Dim::Named("batch"), Dim::Fixed(labels as i64)],
        );
    } else {
        g.output(
            &x,
            "last_hidden_state",
            FLOAT,
            &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(hi)],
        );
    }
    Ok(g.finish(
        OPSET,
        "BERT exported by twin from safetensors",
        &[
            ("hidden_size", h.to_string()),
            ("num_hidden_layers", c.num_hidden_layers.to_string()),
        ],
    ))
}

fn w_vocab(w: &Weights<'_>) -> Result<usize, EmbeddingError> {
    first_dim(w, "embeddings.word_embeddings.weight")
}

fn w_type_vocab(w: &Weights<'_>) -> Result<usize, EmbeddingError> {
    first_dim(w, "embeddings.token_type_embeddings.weight")
}

fn first_dim(w: &Weights<'_>, name: &str) -> Result<usize, EmbeddingError> {
    w.tensors
        .tensor(name)
        .or_else(|_| w.tensors.tensor(&format!("bert.{name}")))
        .map(|t| t.shape().first().copied().unwrap_or(0))
        .map_err(|_| EmbeddingError::Model {
            path: w.path.to_path_buf(),
            reason: format!("tensor {name} is missing"),
        })
}

fn linear(
    g: &mut GraphBuilder,
    w: &mut Weights<'_>,
    prefix: &str,
    x: &str,
    out: usize,
    inp: usize,
) -> Result<String, EmbeddingError> {
    let weight = w.linear_t(&format!("{prefix}.weight"), out, inp)?;
    let bias = w.get(&format!("{prefix}.bias"), &[out])?;
    let weight = g.f32s(
        &format!("{prefix}.weight"),
        &[inp as i64, out as i64],
        &weight,
    );
    let bias = g.f32s(&format!("{prefix}.bias"), &[out as i64], &bias);
    let product = g.node("MatMul", &[x, &weight], vec![]);
    Ok(g.node("Add", &[&product, &bias], vec![]))
}

fn layer_norm(
    g: &mut GraphBuilder,
    w: &mut Weights<'_>,
    c: &BertConfig,
    prefix: &str,
    x: &str,
) -> Result<String, EmbeddingError> {
    let h = c.hidden_size;
    let scale = w.get(&format!("{prefix}.weight"), &[h])?;
    let bias = w.get(&format!("{prefix}.bias"), &[h])?;
    let scale = g.f32s(&format!("{prefix}.weight"), &[h as i64], &scale);
    let bias = g.f32s(&format!("{prefix}.bias"), &[h as i64], &bias);
    Ok(g.node(
        "LayerNormalization",
        &[x, &scale, &bias],
        vec![
            attr_int("axis", -1),
            attr_float("epsilon", c.layer_norm_eps),
        ],
    ))
}
