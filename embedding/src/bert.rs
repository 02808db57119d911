//! Export of a BERT encoder (the architecture of all-MiniLM-L6-v2 and most sentence-transformers
//! models) from its Hugging Face checkpoint (`config.json` + `model.safetensors`) to an ONNX
//! graph of opset 17 and ONNX Runtime's fused transformer operators (`com.microsoft`):
//! `EmbedLayerNormalization`, `Attention` and `BiasGelu`, as ONNX Runtime's own BERT optimizer
//! fuses them (its session optimizer does not make them from standard operators). Residuals and
//! their LayerNorm stay standard operators: ONNX Runtime's fused `SkipLayerNormalization` was
//! slower on the CPU.
//!
//! At int8 the matrix products' weights are quantized here, and their activations as they come:
//! per tensor into attention (`QAttention`, `DynamicQuantizeMatMul`), after SmoothQuant smoothing
//! measured on a calibration text; per row and block into the feed-forward layers
//! (`MatMulNBits`, int8 compute), whose inputs hold large outliers.
//!
//! Inputs `input_ids`, `attention_mask`, `token_type_ids` (int64, `[batch, sequence]`); output
//! `last_hidden_state` (float, `[batch, sequence, hidden]`), the same signature as Hugging Face's
//! own exports, so pooling happens outside the graph exactly as sentence-transformers does it.
//! A `BertForSequenceClassification` checkpoint (a cross-encoder) outputs `logits` (float,
//! `[batch, labels]`) instead, through its pooler and classifier, as Optimum's export does.

use std::fs;
use std::path::Path;

use ort::session::Session;
use ort::value::Tensor;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use tokenizers::TruncationParams;

use crate::EmbeddingError;
use twin_config::EmbeddingPrecision;
use twin_onnx::proto::{attr_float, attr_int, Dim, GraphBuilder, FLOAT, INT32, INT64};

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

/// Export the checkpoint in `model_dir` to `out` (written atomically), its matrix products at
/// `precision`.
pub fn export(
    model_dir: &Path,
    out: &Path,
    precision: EmbeddingPrecision,
) -> Result<ExportSummary, EmbeddingError> {
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
    let model = match precision {
        EmbeddingPrecision::Fp32 => build(&config, &mut w, precision, &[], false)?,
        EmbeddingPrecision::Int8 => {
            let probe = build(&config, &mut w, EmbeddingPrecision::Fp32, &[], true)?;
            let ranges = calibrate(&probe, model_dir, config.num_hidden_layers)?;
            w.parameters = 0;
            build(&config, &mut w, precision, &ranges, false)?
        }
    };
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

/// The graph at `precision`. `ranges` smooths int8 attention inputs (see [`calibrate`]); `probe`
/// adds each layer's attention input to the outputs, for calibration.
fn build(
    c: &BertConfig,
    w: &mut Weights<'_>,
    precision: EmbeddingPrecision,
    ranges: &[Vec<f32>],
    probe: bool,
) -> Result<Vec<u8>, EmbeddingError> {
    let h = c.hidden_size;
    let heads = c.num_attention_heads;
    let ffn = c.intermediate_size;
    let hi = h as i64;
    let mut g = GraphBuilder::default();
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];
    let input_ids = g.input("input_ids", INT64, &batch_seq);
    let attention_mask = g.input("attention_mask", INT64, &batch_seq);
    let token_type_ids = g.input("token_type_ids", INT64, &batch_seq);
    // The fused operators take int32 ids and mask.
    let to_int32 = || vec![attr_int("to", INT32 as i64)];
    let ids = g.node("Cast", &[&input_ids], to_int32());
    let types = g.node("Cast", &[&token_type_ids], to_int32());
    let mask = g.node("Cast", &[&attention_mask], to_int32());

    // Embeddings: word + position + token type, then LayerNorm, in one operator.
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
    let (gamma, beta) = norm_weights(&mut g, w, h, "embeddings.LayerNorm")?;
    // Its second output (each text's length, for a 1-D mask) is not used: attention takes the
    // whole mask.
    let mut x = g
        .microsoft_node_outputs(
            "EmbedLayerNormalization",
            &[
                &ids,
                &types,
                &word_table,
                &pos_table,
                &type_table,
                &gamma,
                &beta,
            ],
            vec![attr_float("epsilon", c.layer_norm_eps)],
            2,
        )
        .remove(0);

    let mut e = Encoder {
        g: &mut g,
        w,
        precision,
        ranges,
    };
    for layer in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        if probe {
            // Calibration reads what enters each layer's attention.
            e.g.output(
                &x,
                &format!("attention_input.{layer}"),
                FLOAT,
                &[Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(hi)],
            );
        }
        // Self-attention: Q, K and V projected by one matrix product, then every head, with the
        // padding masked out (-10000 before the softmax, as BERT does).
        let attended = e.attention(layer, &x, &mask, h, heads)?;
        let projected = e.matmul(
            &format!("{p}.attention.output.dense"),
            &attended,
            h,
            h,
            Int8Activations::PerTensor,
        )?;
        let x1 = e.residual_layer_norm(&p, "attention.output", &projected, &x, h, c)?;
        // Feed-forward with exact GELU (erf).
        let inner = e.matmul(
            &format!("{p}.intermediate.dense"),
            &x1,
            ffn,
            h,
            Int8Activations::PerBlock,
        )?;
        let bias = e.bias(&format!("{p}.intermediate.dense"), ffn)?;
        let gelu = e.g.microsoft_node("BiasGelu", &[&inner, &bias], vec![]);
        let out = e.matmul(
            &format!("{p}.output.dense"),
            &gelu,
            h,
            ffn,
            Int8Activations::PerBlock,
        )?;
        x = e.residual_layer_norm(&p, "output", &out, &x1, h, c)?;
    }
    if c.is_classifier() {
        // As BertForSequenceClassification: the [CLS] state through the pooler (dense, tanh),
        // then the classifier (in fp32 at any precision: one row per text).
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
            ("precision", precision.name().to_string()),
        ],
    ))
}

/// Writes the encoder layers' operators at one precision.
struct Encoder<'a, 'w> {
    g: &'a mut GraphBuilder,
    w: &'a mut Weights<'w>,
    precision: EmbeddingPrecision,
    /// Per layer, the largest magnitude of each channel entering attention, measured by
    /// [`calibrate`] (int8 only).
    ranges: &'a [Vec<f32>],
}

impl Encoder<'_, '_> {
    /// `x` times the `Linear` weight of `prefix` (`[out, in]` in the checkpoint), without its
    /// bias: a fused operator after it adds the bias. At int8, `activations` says how `x` is
    /// quantized.
    fn matmul(
        &mut self,
        prefix: &str,
        x: &str,
        out: usize,
        inp: usize,
        activations: Int8Activations,
    ) -> Result<String, EmbeddingError> {
        let name = format!("{prefix}.weight");
        let dims = [inp as i64, out as i64];
        Ok(match (self.precision, activations) {
            (EmbeddingPrecision::Fp32, _) => {
                let weight = self.w.linear_t(&name, out, inp)?;
                let weight = self.g.f32s(&name, &dims, &weight);
                self.g.node("MatMul", &[x, &weight], vec![])
            }
            (EmbeddingPrecision::Int8, Int8Activations::PerTensor) => {
                let weight = self.w.linear_t(&name, out, inp)?;
                let (quantized, scales) = quantize_columns(&weight, inp, out);
                let weight = self.g.i8s(&name, &dims, &quantized);
                let scales = self
                    .g
                    .f32s(&format!("{name}.scale"), &[out as i64], &scales);
                self.g
                    .microsoft_node("DynamicQuantizeMatMul", &[x, &weight, &scales], vec![])
            }
            (EmbeddingPrecision::Int8, Int8Activations::PerBlock) => {
                // `MatMulNBits` takes the weight as the checkpoint stores it: `[out, in]`.
                let weight = self.w.get(&name, &[out, inp])?;
                let blocks = inp.div_ceil(BLOCK);
                let (quantized, scales) = quantize_blocks(&weight, out, inp);
                let weight = self.g.u8s(
                    &name,
                    &[out as i64, blocks as i64, BLOCK as i64],
                    &quantized,
                );
                let scales = self.g.f32s(
                    &format!("{name}.scale"),
                    &[out as i64, blocks as i64],
                    &scales,
                );
                self.g.microsoft_node(
                    "MatMulNBits",
                    &[x, &weight, &scales],
                    vec![
                        attr_int("K", inp as i64),
                        attr_int("N", out as i64),
                        attr_int("bits", 8),
                        attr_int("block_size", BLOCK as i64),
                        // Quantize the activations to int8 too, per row and block.
                        attr_int("accuracy_level", 4),
                    ],
                )
            }
        })
    }

    fn bias(&mut self, prefix: &str, out: usize) -> Result<String, EmbeddingError> {
        let bias = self.w.get(&format!("{prefix}.bias"), &[out])?;
        Ok(self.g.f32s(&format!("{prefix}.bias"), &[out as i64], &bias))
    }

    /// The self-attention of layer `layer` over `x`: one `Attention` operator (fp32), or the input
    /// quantized once and one `QAttention` (int8).
    fn attention(
        &mut self,
        layer: usize,
        x: &str,
        mask: &str,
        h: usize,
        heads: usize,
    ) -> Result<String, EmbeddingError> {
        let p = format!("encoder.layer.{layer}");
        // Q, K and V side by side: [h, 3h], each block `Linear`'s weight transposed.
        let mut weight = vec![0f32; h * 3 * h];
        let mut bias = Vec::with_capacity(3 * h);
        for (block, part) in ["query", "key", "value"].into_iter().enumerate() {
            let prefix = format!("{p}.attention.self.{part}");
            let w = self.w.linear_t(&format!("{prefix}.weight"), h, h)?;
            for row in 0..h {
                weight[row * 3 * h + block * h..row * 3 * h + (block + 1) * h]
                    .copy_from_slice(&w[row * h..(row + 1) * h]);
            }
            bias.extend(self.w.get(&format!("{prefix}.bias"), &[h])?);
        }
        let name = format!("{p}.attention.self.qkv");
        let dims = [h as i64, 3 * h as i64];
        let bias = self.g.f32s(&format!("{name}.bias"), &[3 * h as i64], &bias);
        let heads = vec![attr_int("num_heads", heads as i64)];
        Ok(match self.precision {
            EmbeddingPrecision::Fp32 => {
                let weight = self.g.f32s(&format!("{name}.weight"), &dims, &weight);
                self.g
                    .microsoft_node("Attention", &[x, &weight, &bias, mask], heads)
            }
            EmbeddingPrecision::Int8 => {
                // Smoothing (SmoothQuant): the few input channels with large values are divided
                // down and their weight rows multiplied up by as much, so that one scale for the
                // whole input leaves resolution for the other channels.
                let mut x = x.to_string();
                if let Some(ranges) = self.ranges.get(layer) {
                    let smoothing = smoothing(ranges, &weight, 3 * h);
                    for (row, factor) in weight.chunks_exact_mut(3 * h).zip(&smoothing) {
                        row.iter_mut().for_each(|v| *v *= factor);
                    }
                    let inverse: Vec<f32> = smoothing.iter().map(|f| 1.0 / f).collect();
                    let inverse = self
                        .g
                        .f32s(&format!("{name}.smoothing"), &[h as i64], &inverse);
                    x = self.g.node("Mul", &[&x, &inverse], vec![]);
                }
                let (quantized, scales) = quantize_columns(&weight, h, 3 * h);
                let weight = self.g.i8s(&format!("{name}.weight"), &dims, &quantized);
                let scales = self
                    .g
                    .f32s(&format!("{name}.weight.scale"), &[3 * h as i64], &scales);
                let zeros = self.g.i8s(
                    &format!("{name}.weight.zero_point"),
                    &[3 * h as i64],
                    &vec![0; 3 * h],
                );
                let input = self
                    .g
                    .node_outputs("DynamicQuantizeLinear", &[&x], vec![], 3);
                self.g.microsoft_node(
                    "QAttention",
                    &[
                        &input[0], &weight, &bias, &input[1], &scales, mask, &input[2], &zeros,
                    ],
                    heads,
                )
            }
        })
    }

    /// LayerNorm of `projected` + its bias + `residual`, with the weights of `p.part.LayerNorm`
    /// and the bias of `p.part.dense`. Standard operators, not ONNX Runtime's fused
    /// `SkipLayerNormalization`: its CPU kernel made the whole encoder 6% slower than `Add`, `Add`
    /// and `LayerNormalization` (measured at batches of 2 x 256 tokens on one thread), so the
    /// embedder's sessions also turn off the optimizer pass that would fuse them.
    fn residual_layer_norm(
        &mut self,
        p: &str,
        part: &str,
        projected: &str,
        residual: &str,
        h: usize,
        c: &BertConfig,
    ) -> Result<String, EmbeddingError> {
        let (gamma, beta) = norm_weights(self.g, self.w, h, &format!("{p}.{part}.LayerNorm"))?;
        let bias = self.bias(&format!("{p}.{part}.dense"), h)?;
        let biased = self.g.node("Add", &[projected, &bias], vec![]);
        let sum = self.g.node("Add", &[&biased, residual], vec![]);
        Ok(self.g.node(
            "LayerNormalization",
            &[&sum, &gamma, &beta],
            vec![
                attr_int("axis", -1),
                attr_float("epsilon", c.layer_norm_eps),
            ],
        ))
    }
}

/// Texts the int8 export runs through the fp32 model to measure its activations: prose, lists,
/// code and commands, in the register of what the platform embeds (written for it).
const CALIBRATION_TEXT: &str = include_str!("calibration.txt");

/// The largest magnitude of each channel entering each layer's attention, over
/// [`CALIBRATION_TEXT`]'s paragraphs run one by one through `probe` (the fp32 graph with those
/// inputs as outputs) on ONNX Runtime.
fn calibrate(
    probe: &[u8],
    model_dir: &Path,
    layers: usize,
) -> Result<Vec<Vec<f32>>, EmbeddingError> {
    let environment = twin_onnx::environment(&twin_onnx::default_library())?;
    let mut session = Session::builder(environment)?
        .with_intra_threads(1)
        .map_err(|e| EmbeddingError::Runtime(e.into()))?
        .commit_from_memory(probe)?;
    let tokenizer = crate::embedder::tokenizer(
        model_dir,
        TruncationParams {
            max_length: 256,
            ..Default::default()
        },
    )?;
    let mut ranges: Vec<Vec<f32>> = vec![Vec::new(); layers];
    for paragraph in CALIBRATION_TEXT
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
    {
        let encoding = tokenizer
            .encode(paragraph, true)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let shape = [1, ids.len() as i64];
        let outputs = session.run(ort::inputs![
            "input_ids" => Tensor::from_array((shape, ids.clone()))?,
            "attention_mask" => Tensor::from_array((shape, vec![1i64; ids.len()]))?,
            "token_type_ids" => Tensor::from_array((shape, vec![0i64; ids.len()]))?,
        ])?;
        for (layer, range) in ranges.iter_mut().enumerate() {
            let (shape, values) =
                outputs[format!("attention_input.{layer}").as_str()].try_extract_tensor::<f32>()?;
            let width = shape.last().copied().unwrap_or(1).max(1) as usize;
            range.resize(width, 0.0);
            for row in values.chunks_exact(width) {
                for (r, v) in range.iter_mut().zip(row) {
                    *r = r.max(v.abs());
                }
            }
        }
    }
    Ok(ranges)
}

/// SmoothQuant's factor for each input channel of a `[channels, cols]` weight, at migration
/// strength 0.5: the square root of the channel's activation range over its weights' range, so
/// that both end up with the same range. Kept within [0.01, 100].
fn smoothing(ranges: &[f32], weight: &[f32], cols: usize) -> Vec<f32> {
    ranges
        .iter()
        .zip(weight.chunks_exact(cols))
        .map(|(activation, row)| {
            let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            (activation.max(1e-5) / largest.max(1e-5))
                .sqrt()
                .clamp(0.01, 100.0)
        })
        .collect()
}

/// How the activations entering an int8 matrix product are quantized.
#[derive(Debug, Clone, Copy)]
enum Int8Activations {
    /// One scale for the whole input (`DynamicQuantizeMatMul`, `QAttention`): the fastest
    /// kernels, for inputs without large outliers (attention's).
    PerTensor,
    /// One scale per row and block of [`BLOCK`] inputs (`MatMulNBits` with int8 compute): the
    /// feed-forward layers, whose inputs hold a few values ten times larger than the rest (at
    /// the `[CLS]` token), which one scale per tensor would leave little resolution beside.
    /// Measured on the corpus, quantizing them per tensor too drops recall@10 against fp32
    /// search from 0.96 to 0.89.
    PerBlock,
}

/// Inputs per quantization block of [`Int8Activations::PerBlock`] products: 128 was as
/// accurate as 32 and 64 on the corpus, and faster.
const BLOCK: usize = 128;

/// Symmetric quantization of a `[rows, cols]` matrix, one scale per column (per output
/// feature), to integers in `[-QUANT_LEVEL, QUANT_LEVEL]`.
fn quantize_columns(weight: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    let mut scales = vec![0f32; cols];
    for row in weight.chunks_exact(cols) {
        for (s, v) in scales.iter_mut().zip(row) {
            *s = s.max(v.abs());
        }
    }
    for s in &mut scales {
        // An all-zero column: any scale will do.
        *s = if *s > 0.0 { *s / QUANT_LEVEL } else { 1.0 };
    }
    let mut quantized = Vec::with_capacity(rows * cols);
    for row in weight.chunks_exact(cols) {
        for (v, s) in row.iter().zip(&scales) {
            quantized.push((v / s).round().clamp(-QUANT_LEVEL, QUANT_LEVEL) as i8);
        }
    }
    (quantized, scales)
}

/// Symmetric 8-bit quantization of a `[rows, cols]` matrix (`Linear`'s `[out, in]`) in blocks
/// of [`BLOCK`] along each row, as `MatMulNBits` stores it: unsigned, around the zero point 128,
/// `[rows, blocks, BLOCK]` with the last block padded by zeros, and `[rows, blocks]` scales.
fn quantize_blocks(weight: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let blocks = cols.div_ceil(BLOCK);
    let mut quantized = vec![128u8; rows * blocks * BLOCK];
    let mut scales = vec![1f32; rows * blocks];
    for (r, row) in weight.chunks_exact(cols).enumerate() {
        for (b, block) in row.chunks(BLOCK).enumerate() {
            let largest = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
            scales[r * blocks + b] = scale;
            let out = &mut quantized[(r * blocks + b) * BLOCK..];
            for (q, v) in out.iter_mut().zip(block) {
                *q = ((v / scale).round().clamp(-127.0, 127.0) + 128.0) as u8;
            }
        }
    }
    (quantized, scales)
}

/// The largest quantized weight of [`Int8Activations::PerTensor`] products. 7 bits, not 8: on
/// AVX2 processors without VNNI, ONNX Runtime's u8 x s8 kernel adds pairs of products in 16 bits
/// (`vpmaddubsw`), and 255 x 127 x 2 would saturate; 255 x 63 x 2 does not (ONNX Runtime's own
/// quantizer calls this `reduce_range`).
const QUANT_LEVEL: f32 = 63.0;

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

fn norm_weights(
    g: &mut GraphBuilder,
    w: &mut Weights<'_>,
    h: usize,
    prefix: &str,
) -> Result<(String, String), EmbeddingError> {
    let scale = w.get(&format!("{prefix}.weight"), &[h])?;
    let bias = w.get(&format!("{prefix}.bias"), &[h])?;
    Ok((
        g.f32s(&format!("{prefix}.weight"), &[h as i64], &scale),
        g.f32s(&format!("{prefix}.bias"), &[h as i64], &bias),
    ))
}
