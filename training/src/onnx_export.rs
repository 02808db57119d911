//! Export to ONNX for generation on ONNX Runtime, in the layout Hugging Face Optimum writes and
//! reads (`ORTModelForCausalLM`): one `model.onnx` of standard opset-17 operators with a
//! key/value cache, beside `config.json`, `generation_config.json` and the tokenizer files.
//!
//! Inputs: `input_ids`, `position_ids` (`[batch, sequence]`), `attention_mask` (`[batch, past +
//! sequence]`, 0 on padding) and, per layer, `past_key_values.N.key|value` (`[batch, kv_heads,
//! past, head_dim]`, empty on the first step). Outputs: `logits` (`[batch, sequence, vocab]`) and
//! `present.N.key|value` (the cache with this step's keys and values appended). Batch and
//! sequence axes are dynamic, so a batch may be left-padded and sequences of one batch may be
//! at different positions.
//!
//! The graph computes what [`CausalLm`] computes, operator for operator (the same rotary
//! frequencies, mask value and normalisation order), so its logits match libtorch's within
//! float rounding. Grouped-query attention broadcasts the key/value heads instead of copying
//! them. Models over 1 GB keep their weights in `model.onnx_data` (ONNX external data).

use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};
use twin_onnx::proto::{attr_float, attr_int, attr_ints, Dim, GraphBuilder, BOOL, FLOAT, INT64};

use crate::architecture::{Activation, Family, ModelConfig, RopeScaling};
use crate::model::{rotary_inv_freq, rotary_stretch, CausalLm};
use crate::{Result, TrainingError};

/// ONNX opset of the exported graph (17 brings `LayerNormalization`).
pub const OPSET: i64 = 17;
/// The graph's file name, as Optimum names it.
pub const MODEL_FILE: &str = "model.onnx";
/// The weights' file name when they are kept outside the graph.
pub const DATA_FILE: &str = "model.onnx_data";
/// Above this many bytes of weights, they go to [`DATA_FILE`] (protobuf stops at 2 GB).
const EXTERNAL_DATA_ABOVE: i64 = 1 << 30;

/// Symbolic axes, named as Optimum names them.
const BATCH: Dim = Dim::Named("batch_size");
const SEQUENCE: Dim = Dim::Named("sequence_length");
const PAST: Dim = Dim::Named("past_sequence_length");
const TOTAL: Dim = Dim::Named("past_sequence_length + sequence_length");

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct OnnxOptions {
    /// Keep the weights in `model.onnx_data` whatever the model's size (default: only above
    /// 1 GB).
    pub external_data: bool,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct OnnxSummary {
    /// The folder written.
    pub dir: PathBuf,
    /// Parameters written.
    pub parameters: i64,
    /// Size of `model.onnx`.
    pub graph_bytes: u64,
    /// Size of `model.onnx_data`, when the weights are there.
    pub data_bytes: Option<u64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainingError + '_ {
    move |source| TrainingError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Export `model` (LoRA merged first, if it has any) into the folder `out`, with the tokenizer
/// files of `tokenizer_from`.
pub fn export(
    model: &CausalLm,
    tokenizer_from: &Path,
    out: &Path,
    options: &OnnxOptions,
) -> Result<OnnxSummary> {
    if model.has_lora() {
        return Err(TrainingError::Invalid(
            "merge the LoRA adapter before exporting (CausalLm::merge_lora)".into(),
        ));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let c = &model.config;
    let external = options.external_data || c.parameter_count() * 4 > EXTERNAL_DATA_ABOVE;
    let data_path = out.join(DATA_FILE);
    let builder = if external {
        GraphBuilder::with_external_data(&data_path).map_err(io(&data_path))?
    } else {
        if data_path.exists() {
            std::fs::remove_file(&data_path).map_err(io(&data_path))?;
        }
        GraphBuilder::default()
    };
    let mut graph = Graph {
        g: builder,
        model,
        c,
        rotation: None,
    };
    graph.build()?;
    let metadata = [
        ("model_type", c.family.model_type().to_string()),
        ("num_hidden_layers", c.num_layers.to_string()),
        ("producer", format!("twin {}", env!("CARGO_PKG_VERSION"))),
    ];
    let doc = format!(
        "{} decoder with a key/value cache, exported by twin from libtorch",
        c.family.model_type()
    );
    let bytes = graph
        .g
        .finish_external(OPSET, &doc, &metadata)
        .map_err(io(&data_path))?;
    let model_path = out.join(MODEL_FILE);
    let tmp = out.join(format!(".{MODEL_FILE}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &model_path).map_err(io(&model_path))?;
    crate::export::write_configs(model, out)?;
    crate::export::copy_tokenizer(tokenizer_from, out)?;
    let data_bytes = if external {
        Some(std::fs::metadata(&data_path).map_err(io(&data_path))?.len())
    } else {
        None
    };
    Ok(OnnxSummary {
        dir: out.to_path_buf(),
        parameters: c.parameter_count(),
        graph_bytes: bytes.len() as u64,
        data_bytes,
    })
}

/// The graph under construction, with the model it reads weights from.
struct Graph<'a> {
    g: GraphBuilder,
    model: &'a CausalLm,
    c: &'a ModelConfig,
    /// The rotate-half matrix, once made.
    rotation: Option<String>,
}

impl Graph<'_> {
    fn tensor(&self, name: &str) -> Result<Tensor> {
        self.model
            .params()
            .get(name)
            .map(|t| t.to_kind(Kind::Float).contiguous())
            .ok_or_else(|| TrainingError::Invalid(format!("the model has no parameter `{name}`")))
    }

    /// A parameter as an initializer, as it is.
    fn weight(&mut self, name: &str) -> Result<String> {
        let t = self.tensor(name)?;
        Ok(self.initializer(name, &t))
    }

    /// A `torch.nn.Linear` weight (`[out, in]`) transposed for `MatMul` (`[in, out]`).
    fn weight_transposed(&mut self, name: &str) -> Result<String> {
        let t = self.tensor(name)?.tr().contiguous();
        Ok(self.initializer(name, &t))
    }

    fn initializer(&mut self, name: &str, t: &Tensor) -> String {
        let data = Vec::<f32>::from(t);
        self.g.f32s(name, &t.size(), &data)
    }

    fn scalar(&mut self, value: f32) -> String {
        self.g.constant_f32(&[], &[value])
    }

    fn ints(&mut self, values: &[i64]) -> String {
        self.g.constant_i64(&[values.len() as i64], values)
    }

    /// `x W^T + b` for a `Linear` module, `x W + b` for GPT-2's `Conv1D`.
    fn linear(&mut self, x: &str, module: &str, conv1d: bool, bias: bool) -> Result<String> {
        let weight = if conv1d {
            self.weight(&format!("{module}.weight"))?
        } else {
            self.weight_transposed(&format!("{module}.weight"))?
        };
        let y = self.g.node("MatMul", &[x, &weight], vec![]);
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&format!("{module}.bias"))?;
        Ok(self.g.node("Add", &[&y, &b], vec![]))
    }

    fn rms_norm(&mut self, x: &str, name: &str) -> Result<String> {
        // The pattern ONNX Runtime fuses into one kernel: x / sqrt(mean(x^2) + eps) * w.
        let two = self.scalar(2.0);
        let eps = self.scalar(self.c.norm_eps as f32);
        let squared = self.g.node("Pow", &[x, &two], vec![]);
        let mean = self.g.node(
            "ReduceMean",
            &[&squared],
            vec![attr_ints("axes", &[-1]), attr_int("keepdims", 1)],
        );
        let shifted = self.g.node("Add", &[&mean, &eps], vec![]);
        let root = self.g.node("Sqrt", &[&shifted], vec![]);
        let normed = self.g.node("Div", &[x, &root], vec![]);
        let weight = self.weight(name)?;
        Ok(self.g.node("Mul", &[&normed, &weight], vec![]))
    }

    fn layer_norm(&mut self, x: &str, prefix: &str) -> Result<String> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias = self.weight(&format!("{prefix}.bias"))?;
        Ok(self.g.node(
            "LayerNormalization",
            &[x, &weight, &bias],
            vec![
                attr_int("axis", -1),
                attr_float("epsilon", self.c.norm_eps as f32),
            ],
        ))
    }

    fn activation(&mut self, x: &str, activation: Activation) -> String {
        match activation {
            Activation::Relu => self.g.node("Relu", &[x], vec![]),
            Activation::Silu => {
                let gate = self.g.node("Sigmoid", &[x], vec![]);
                self.g.node("Mul", &[x, &gate], vec![])
            }
            Activation::Gelu => {
                // 0.5 x (1 + erf(x / sqrt 2))
                let inv_sqrt2 = self.scalar(std::f32::consts::FRAC_1_SQRT_2);
                let (one, half) = (self.scalar(1.0), self.scalar(0.5));
                let scaled = self.g.node("Mul", &[x, &inv_sqrt2], vec![]);
                let erf = self.g.node("Erf", &[&scaled], vec![]);
                let erf1 = self.g.node("Add", &[&erf, &one], vec![]);
                let y = self.g.node("Mul", &[x, &erf1], vec![]);
                self.g.node("Mul", &[&y, &half], vec![])
            }
            Activation::GeluTanh => {
                // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                let beta = self.scalar((2.0f64 / std::f64::consts::PI).sqrt() as f32);
                let kappa = self.scalar(0.044715);
                let (one, half) = (self.scalar(1.0), self.scalar(0.5));
                let x2 = self.g.node("Mul", &[x, x], vec![]);
                let x3 = self.g.node("Mul", &[&x2, x], vec![]);
                let cubic = self.g.node("Mul", &[&x3, &kappa], vec![]);
                let inner = self.g.node("Add", &[x, &cubic], vec![]);
                let inner = self.g.node("Mul", &[&inner, &beta], vec![]);
                let tanh = self.g.node("Tanh", &[&inner], vec![]);
                let tanh1 = self.g.node("Add", &[&tanh, &one], vec![]);
                let y = self.g.node("Mul", &[x, &tanh1], vec![]);
                self.g.node("Mul", &[&y, &half], vec![])
            }
        }
    }

    /// `[batch, heads, sequence, head_dim]` rotated: `x cos + rotate_half(x) sin`.
    fn rotate(&mut self, x: &str, cos: &str, sin: &str) -> String {
        // rotate_half as a product with a signed permutation: one node instead of four, and
        // exact (each output is one input, or its negation, plus zeros).
        let half = self.c.head_dim() as usize / 2;
        let rotation = match &self.rotation {
            Some(r) => r.clone(),
            None => {
                let d = 2 * half;
                let mut r = vec![0f32; d * d];
                for j in 0..half {
                    r[(j + half) * d + j] = -1.0;
                    r[j * d + j + half] = 1.0;
                }
                let name = self.g.f32s("rotate_half", &[d as i64, d as i64], &r);
                self.rotation = Some(name.clone());
                name
            }
        };
        let rotated = self.g.node("MatMul", &[x, &rotation], vec![]);
        let a = self.g.node("Mul", &[x, cos], vec![]);
        let b = self.g.node("Mul", &[&rotated, sin], vec![]);
        self.g.node("Add", &[&a, &b], vec![])
    }

    /// Rotary `(cos, sin)` of `position_ids`, as [`CausalLm`] computes them.
    fn rotary(&mut self, position_ids: &str) -> Result<(String, String)> {
        let c = self.c;
        let positions = self
            .g
            .node("Cast", &[position_ids], vec![attr_int("to", FLOAT as i64)]);
        let stretch = rotary_stretch(c);
        let positions = if stretch != 1.0 {
            let s = self.scalar(stretch as f32);
            self.g.node("Div", &[&positions, &s], vec![])
        } else {
            positions
        };
        let inv_freq = match c.rope_scaling {
            Some(RopeScaling::Dynamic { factor }) => self.dynamic_inv_freq(position_ids, factor),
            _ => {
                let t = rotary_inv_freq(c, 0);
                self.initializer("rotary_inv_freq", &t)
            }
        };
        let last = self.ints(&[-1]);
        let t = self.g.node("Unsqueeze", &[&positions, &last], vec![]);
        let freqs = self.g.node("Mul", &[&t, &inv_freq], vec![]);
        let emb = self
            .g
            .node("Concat", &[&freqs, &freqs], vec![attr_int("axis", -1)]);
        let heads_axis = self.ints(&[1]);
        let emb = self.g.node("Unsqueeze", &[&emb, &heads_axis], vec![]);
        let cos = self.g.node("Cos", &[&emb], vec![]);
        let sin = self.g.node("Sin", &[&emb], vec![]);
        Ok((cos, sin))
    }

    /// Dynamic NTK scaling: the base grows with the longest position once past the trained
    /// context, `base * max(factor * longest / max_positions - (factor - 1), 1)^(d / (d - 2))`.
    fn dynamic_inv_freq(&mut self, position_ids: &str, factor: f64) -> String {
        let c = self.c;
        let d = c.head_dim();
        let top = self
            .g
            .node("ReduceMax", &[position_ids], vec![attr_int("keepdims", 0)]);
        let top = self
            .g
            .node("Cast", &[&top], vec![attr_int("to", FLOAT as i64)]);
        let one = self.scalar(1.0);
        let longest = self.g.node("Add", &[&top, &one], vec![]);
        let slope = self.scalar((factor / c.max_positions as f64) as f32);
        let ratio = self.g.node("Mul", &[&longest, &slope], vec![]);
        let offset = self.scalar((factor - 1.0) as f32);
        let ratio = self.g.node("Sub", &[&ratio, &offset], vec![]);
        let ratio = self.g.node("Max", &[&ratio, &one], vec![]);
        let power = self.scalar(d as f32 / (d as f32 - 2.0));
        let stretch = self.g.node("Pow", &[&ratio, &power], vec![]);
        let base = self.scalar(c.rope_theta as f32);
        let base = self.g.node("Mul", &[&base, &stretch], vec![]);
        let exponents: Vec<f32> = (0..d).step_by(2).map(|i| i as f32 / d as f32).collect();
        let exponents = self.g.constant_f32(&[exponents.len() as i64], &exponents);
        let powers = self.g.node("Pow", &[&base, &exponents], vec![]);
        self.g.node("Reciprocal", &[&powers], vec![])
    }

    /// The mask every layer shares: causal over the cache's axis (the query of step `i` sits at
    /// `past + i`), not on padding, and within the sliding window if the model has one.
    fn mask(&mut self, input_ids: &str, attention_mask: &str) -> String {
        let (zero, one) = (
            self.g.constant_i64(&[], &[0]),
            self.g.constant_i64(&[], &[1]),
        );
        let ids_shape = self.g.node("Shape", &[input_ids], vec![]);
        let sequence = self
            .g
            .node("Gather", &[&ids_shape, &one], vec![attr_int("axis", 0)]);
        let mask_shape = self.g.node("Shape", &[attention_mask], vec![]);
        let total = self
            .g
            .node("Gather", &[&mask_shape, &one], vec![attr_int("axis", 0)]);
        let past = self.g.node("Sub", &[&total, &sequence], vec![]);
        let queries = self.g.node("Range", &[&past, &total, &one], vec![]);
        let keys = self.g.node("Range", &[&zero, &total, &one], vec![]);
        let (axis0, axis1) = (self.ints(&[0]), self.ints(&[1]));
        let queries = self.g.node("Unsqueeze", &[&queries, &axis1], vec![]);
        let keys = self.g.node("Unsqueeze", &[&keys, &axis0], vec![]);
        let mut allowed = self.g.node("LessOrEqual", &[&keys, &queries], vec![]);
        if let Some(window) = self.c.sliding_window {
            let w = self.g.constant_i64(&[], &[window]);
            let oldest = self.g.node("Sub", &[&queries, &w], vec![]);
            let recent = self.g.node("Greater", &[&keys, &oldest], vec![]);
            allowed = self.g.node("And", &[&allowed, &recent], vec![]);
        }
        let present = self
            .g
            .node("Cast", &[attention_mask], vec![attr_int("to", BOOL as i64)]);
        let axes = self.ints(&[1, 2]);
        let present = self.g.node("Unsqueeze", &[&present, &axes], vec![]);
        self.g.node("And", &[&allowed, &present], vec![])
    }

    /// Several `Linear` modules reading the same input as one `MatMul` (their weights side by
    /// side) and a `Split`: fewer, larger products, which is what small batches need.
    fn fused_linear(
        &mut self,
        x: &str,
        modules: &[String],
        bias: bool,
        name: &str,
    ) -> Result<Vec<String>> {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for module in modules {
            weights.push(self.tensor(&format!("{module}.weight"))?);
            if bias {
                biases.push(self.tensor(&format!("{module}.bias"))?);
            }
        }
        let sizes: Vec<i64> = weights.iter().map(|w| w.size()[0]).collect();
        let joined = Tensor::cat(&weights, 0).tr().contiguous();
        let weight = self.initializer(&format!("{name}.weight"), &joined);
        let mut y = self.g.node("MatMul", &[x, &weight], vec![]);
        if bias {
            let joined = Tensor::cat(&biases, 0);
            let b = self.initializer(&format!("{name}.bias"), &joined);
            y = self.g.node("Add", &[&y, &b], vec![]);
        }
        Ok(self.split(&y, &sizes))
    }

    /// `x` cut along its last axis into parts of `sizes`.
    fn split(&mut self, x: &str, sizes: &[i64]) -> Vec<String> {
        let sizes_value = self.ints(sizes);
        self.g.node_outputs(
            "Split",
            &[x, &sizes_value],
            vec![attr_int("axis", -1)],
            sizes.len(),
        )
    }

    fn build(&mut self) -> Result<()> {
        let c = self.c;
        let gpt2 = c.family == Family::Gpt2;
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim());
        let rep = heads / kv_heads;
        let input_ids = self.g.input("input_ids", INT64, &[BATCH, SEQUENCE]);
        let attention_mask = self.g.input("attention_mask", INT64, &[BATCH, TOTAL]);
        let position_ids = self.g.input("position_ids", INT64, &[BATCH, SEQUENCE]);
        let cache_dims = [BATCH, Dim::Fixed(kv_heads), PAST, Dim::Fixed(d)];
        let present_dims = [BATCH, Dim::Fixed(kv_heads), TOTAL, Dim::Fixed(d)];
        let mut pasts = Vec::new();
        for layer in 0..c.num_layers {
            let key = format!("past_key_values.{layer}.key");
            let value = format!("past_key_values.{layer}.value");
            pasts.push((
                self.g.input(&key, FLOAT, &cache_dims),
                self.g.input(&value, FLOAT, &cache_dims),
            ));
        }
        let embed_name = if gpt2 {
            "transformer.wte.weight"
        } else {
            "model.embed_tokens.weight"
        };
        let embed = self.weight(embed_name)?;
        let mut h = self
            .g
            .node("Gather", &[&embed, &input_ids], vec![attr_int("axis", 0)]);
        if gpt2 {
            let wpe = self.weight("transformer.wpe.weight")?;
            let positions =
                self.g
                    .node("Gather", &[&wpe, &position_ids], vec![attr_int("axis", 0)]);
            h = self.g.node("Add", &[&h, &positions], vec![]);
        }
        // The mask as scores to add: 0 where a query may look, f32::MIN where not (what
        // masked_fill writes in transformers and in our model), repeated for the query heads
        // that share a key/value head, which sit one after another on the query axis.
        let allowed = self.mask(&input_ids, &attention_mask);
        let (open, shut) = (self.scalar(0.0), self.scalar(f32::MIN));
        let mut mask_bias = self.g.node("Where", &[&allowed, &open, &shut], vec![]);
        if rep > 1 {
            let repeats = self.ints(&[1, 1, rep, 1]);
            mask_bias = self.g.node("Tile", &[&mask_bias, &repeats], vec![]);
        }
        let rotary = if gpt2 {
            None
        } else {
            Some(self.rotary(&position_ids)?)
        };
        let split_q = self.ints(&[0, 0, heads, d]);
        let split_kv = self.ints(&[0, 0, kv_heads, d]);
        let group_q = self.ints(&[0, kv_heads, -1, d]);
        let ungroup = self.ints(&[0, heads, -1, d]);
        let merge_heads = self.ints(&[0, 0, c.hidden_size]);
        for layer in 0..c.num_layers {
            let x = if gpt2 {
                self.layer_norm(&h, &format!("transformer.h.{layer}.ln_1"))?
            } else {
                self.rms_norm(&h, &format!("model.layers.{layer}.input_layernorm.weight"))?
            };
            let qkv = if gpt2 {
                let y = self.linear(
                    &x,
                    &format!("transformer.h.{layer}.attn.c_attn"),
                    true,
                    true,
                )?;
                let hs = c.hidden_size;
                self.split(&y, &[hs, hs, hs])
            } else {
                let p = format!("model.layers.{layer}.self_attn");
                let modules = ["q_proj", "k_proj", "v_proj"].map(|m| format!("{p}.{m}"));
                self.fused_linear(&x, &modules, c.qkv_bias, &format!("{p}.qkv_proj"))?
            };
            let to_heads = |g: &mut GraphBuilder, x: &str, shape: &str| {
                let x = g.node("Reshape", &[x, shape], vec![]);
                g.node("Transpose", &[&x], vec![attr_ints("perm", &[0, 2, 1, 3])])
            };
            let q = to_heads(&mut self.g, &qkv[0], &split_q);
            let k = to_heads(&mut self.g, &qkv[1], &split_kv);
            let v = to_heads(&mut self.g, &qkv[2], &split_kv);
            let (q, k) = match &rotary {
                Some((cos, sin)) => (self.rotate(&q, cos, sin), self.rotate(&k, cos, sin)),
                None => (q, k),
            };
            let (past_key, past_value) = &pasts[layer as usize];
            let key = self.g.node_as_output(
                "Concat",
                &[past_key, &k],
                vec![attr_int("axis", 2)],
                &format!("present.{layer}.key"),
                FLOAT,
                &present_dims,
            );
            let value = self.g.node_as_output(
                "Concat",
                &[past_value, &v],
                vec![attr_int("axis", 2)],
                &format!("present.{layer}.value"),
                FLOAT,
                &present_dims,
            );
            // Queries grouped by the key/value head they share, [b, kv, rep * s, d] against
            // [b, kv, t, d]: the cache is never repeated, and each product is larger.
            let q = self.g.node("Reshape", &[&q, &group_q], vec![]);
            let key_t = self
                .g
                .node("Transpose", &[&key], vec![attr_ints("perm", &[0, 1, 3, 2])]);
            let mut scale = 1.0 / (d as f64).sqrt();
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (layer + 1) as f64;
            }
            let scale = self.scalar(scale as f32);
            let scores = self.g.node("MatMul", &[&q, &key_t], vec![]);
            let scores = self.g.node("Mul", &[&scores, &scale], vec![]);
            let scores = self.g.node("Add", &[&scores, &mask_bias], vec![]);
            let probs = self
                .g
                .node("Softmax", &[&scores], vec![attr_int("axis", -1)]);
            let attended = self.g.node("MatMul", &[&probs, &value], vec![]);
            let attended = self.g.node("Reshape", &[&attended, &ungroup], vec![]);
            let attended = self.g.node(
                "Transpose",
                &[&attended],
                vec![attr_ints("perm", &[0, 2, 1, 3])],
            );
            let attended = self.g.node("Reshape", &[&attended, &merge_heads], vec![]);
            let out = if gpt2 {
                self.linear(
                    &attended,
                    &format!("transformer.h.{layer}.attn.c_proj"),
                    true,
                    true,
                )?
            } else {
                self.linear(
                    &attended,
                    &format!("model.layers.{layer}.self_attn.o_proj"),
                    false,
                    c.output_bias,
                )?
            };
            h = self.g.node("Add", &[&h, &out], vec![]);
            let m = if gpt2 {
                let p = format!("transformer.h.{layer}");
                let x = self.layer_norm(&h, &format!("{p}.ln_2"))?;
                let y = self.linear(&x, &format!("{p}.mlp.c_fc"), true, true)?;
                let y = self.activation(&y, c.activation);
                self.linear(&y, &format!("{p}.mlp.c_proj"), true, true)?
            } else {
                let p = format!("model.layers.{layer}");
                let x = self.rms_norm(&h, &format!("{p}.post_attention_layernorm.weight"))?;
                let modules = ["gate_proj", "up_proj"].map(|m| format!("{p}.mlp.{m}"));
                let gate_up =
                    self.fused_linear(&x, &modules, false, &format!("{p}.mlp.gate_up_proj"))?;
                let gate = self.activation(&gate_up[0], Activation::Silu);
                let y = self.g.node("Mul", &[&gate, &gate_up[1]], vec![]);
                self.linear(&y, &format!("{p}.mlp.down_proj"), false, false)?
            };
            h = self.g.node("Add", &[&h, &m], vec![]);
        }
        let h = if gpt2 {
            self.layer_norm(&h, "transformer.ln_f")?
        } else {
            self.rms_norm(&h, "model.norm.weight")?
        };
        let head = if c.tie_word_embeddings {
            // The embedding table, transposed at load: the file holds it once.
            self.g
                .node("Transpose", &[&embed], vec![attr_ints("perm", &[1, 0])])
        } else {
            self.weight_transposed("lm_head.weight")?
        };
        self.g.node_as_output(
            "MatMul",
            &[&h, &head],
            vec![],
            "logits",
            FLOAT,
            &[BATCH, SEQUENCE, Dim::Fixed(c.vocab_size)],
        );
        // Outputs in Optimum's order: logits, then the cache layer by layer.
        let outputs = &mut self.g.graph.output;
        if let Some(at) = outputs.iter().position(|o| o.name == "logits") {
            let logits = outputs.remove(at);
            outputs.insert(0, logits);
        }
        Ok(())
    }
}
