//! The decoder models on libtorch: built from a [`ModelConfig`], with every parameter held by
//! its Hugging Face name so that checkpoints load and save without a translation table.
//!
//! One forward pass serves plain batches and packed ones: each row carries segment ids (which
//! sample a token belongs to; 0 for padding) and position ids that restart per segment, and a
//! token attends only to earlier tokens of its own segment (and, with a sliding window, only
//! to the last `window` of them).

use std::collections::BTreeSet;
use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::architecture::{Activation, Family, ModelConfig, RopeScaling};
use crate::weights::{self, Weights};
use crate::{Result, TrainingError};

/// LoRA on one projection: `y = W x + (B A dropout(x)) * alpha / rank`.
#[derive(Debug)]
pub struct LoraPair {
    /// `[rank, in]`, drawn like PEFT (Kaiming uniform).
    pub a: Tensor,
    /// `[out, rank]`, zeros at the start.
    pub b: Tensor,
    /// `alpha / rank`.
    pub scale: f64,
    /// Dropout on the input of A.
    pub dropout: f64,
}

/// A projection, stored as `torch.nn.Linear` (`[out, in]`) or as GPT-2's `Conv1D` (`[in, out]`).
#[derive(Debug)]
pub struct Linear {
    /// The module's name (`model.layers.0.self_attn.q_proj`).
    pub name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    conv1d: bool,
    lora: Option<LoraPair>,
}

impl Linear {
    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let weight = cast(&self.weight, x.kind());
        let bias = self.bias.as_ref().map(|b| cast(b, x.kind()));
        let y = if self.conv1d {
            let y = x.matmul(&weight);
            match bias {
                Some(b) => y + b,
                None => y,
            }
        } else {
            x.linear(&weight, bias.as_ref())
        };
        match &self.lora {
            None => y,
            Some(lora) => {
                let input = if train && lora.dropout > 0.0 {
                    x.dropout(lora.dropout, true)
                } else {
                    x.shallow_clone()
                };
                let a = cast(&lora.a, x.kind());
                let b = cast(&lora.b, x.kind());
                y + input.linear::<Tensor>(&a, None).linear::<Tensor>(&b, None) * lora.scale
            }
        }
    }

    /// `(in, out)` features.
    fn features(&self) -> (i64, i64) {
        let size = self.weight.size();
        if self.conv1d {
            (size[0], size[1])
        } else {
            (size[1], size[0])
        }
    }
}

fn cast(t: &Tensor, kind: Kind) -> Tensor {
    if t.kind() == kind {
        t.shallow_clone()
    } else {
        t.to_kind(kind)
    }
}

#[derive(Debug)]
enum Norm {
    Rms {
        weight: Tensor,
        eps: f64,
    },
    Layer {
        weight: Tensor,
        bias: Tensor,
        eps: f64,
    },
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            // As transformers: in f32, then back to the input's kind, then the weight.
            Norm::Rms { weight, eps } => {
                let h = x.to_kind(Kind::Float);
                let variance = h
                    .pow_tensor_scalar(2)
                    .mean_dim(&[-1i64][..], true, Kind::Float);
                let h = (h * (variance + *eps).rsqrt()).to_kind(x.kind());
                cast(weight, x.kind()) * h
            }
            Norm::Layer { weight, bias, eps } => x.layer_norm(
                &[x.size()[x.dim() - 1]],
                Some(&cast(weight, x.kind())),
                Some(&cast(bias, x.kind())),
                *eps,
                false,
            ),
        }
    }
}

#[derive(Debug)]
enum Attention {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
    },
    Fused {
        qkv: Linear,
        o: Linear,
    },
}

#[derive(Debug)]
enum Mlp {
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
    Plain {
        fc: Linear,
        proj: Linear,
        activation: Activation,
    },
}

#[derive(Debug)]
struct Block {
    attn_norm: Norm,
    attention: Attention,
    mlp_norm: Norm,
    mlp: Mlp,
}

/// One batch of rows: token ids, position ids and segment ids, all `[batch, time]` int64.
#[derive(Debug)]
pub struct Batch {
    /// Token ids.
    pub ids: Tensor,
    /// Position of each token within its segment.
    pub positions: Tensor,
    /// Which sample of the row a token belongs to (1, 2, ...); 0 for padding.
    pub segments: Tensor,
}

impl Batch {
    /// Rows of token ids, padded on the right (with `pad`) to the longest; one sample per row.
    pub fn plain(rows: &[Vec<i64>], pad: i64, device: Device) -> Batch {
        let packed: Vec<Vec<(i64, i64, i64)>> = rows
            .iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .map(|(i, id)| (*id, i as i64, 1))
                    .collect()
            })
            .collect();
        Batch::from_tokens(&packed, pad, device)
    }

    /// Rows of `(id, position, segment)`, padded on the right to the longest.
    pub fn from_tokens<R: AsRef<[(i64, i64, i64)]>>(rows: &[R], pad: i64, device: Device) -> Batch {
        let width = rows
            .iter()
            .map(|r| r.as_ref().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Vec::with_capacity(rows.len() * width);
        let mut positions = Vec::with_capacity(rows.len() * width);
        let mut segments = Vec::with_capacity(rows.len() * width);
        for row in rows {
            let row = row.as_ref();
            for i in 0..width {
                let (id, position, segment) = row.get(i).copied().unwrap_or((pad, 0, 0));
                ids.push(id);
                positions.push(position);
                segments.push(segment);
            }
        }
        let shape = [rows.len() as i64, width as i64];
        let tensor = |v: &[i64]| Tensor::of_slice(v).reshape(&shape).to_device(device);
        Batch {
            ids: tensor(&ids),
            positions: tensor(&positions),
            segments: tensor(&segments),
        }
    }
}

/// A causal language model of one of the four families.
#[derive(Debug)]
pub struct CausalLm {
    /// Its configuration.
    pub config: ModelConfig,
    /// Every parameter by its Hugging Face name (LoRA matrices by PEFT's names).
    params: Weights,
    trainable: BTreeSet<String>,
    embed: Tensor,
    learned_positions: Option<Tensor>,
    blocks: Vec<Block>,
    final_norm: Norm,
    lm_head: Tensor,
    device: Device,
    compute: Kind,
}

/// Where LoRA goes and how strong it is.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// Rank of A and B.
    pub rank: i64,
    /// Scale numerator: updates are scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on LoRA's input while training.
    pub dropout: f64,
    /// Module names (the last part: `q_proj`, `c_attn`) that get LoRA.
    pub targets: Vec<String>,
}

impl CausalLm {
    /// Load a Hugging Face checkpoint folder (`config.json` and safetensors weights).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let files = weights::checkpoint_files(dir)?;
        let mut found = weights::load(&files)?;
        let mut params = Weights::new();
        for (name, shape) in parameter_shapes(&config) {
            let tensor = found
                .remove(&name)
                .or_else(|| {
                    // GPT-2 base-model checkpoints name tensors without `transformer.`.
                    name.strip_prefix("transformer.")
                        .and_then(|short| found.remove(short))
                })
                .ok_or_else(|| TrainingError::MissingTensor {
                    path: dir.to_path_buf(),
                    name: name.clone(),
                })?;
            if tensor.size() != shape {
                return Err(TrainingError::Config {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "tensor `{name}` has shape {:?}, but config.json implies {shape:?}",
                        tensor.size()
                    ),
                });
            }
            params.insert(name, tensor.to_kind(Kind::Float).to_device(device));
        }
        Self::assemble(config, params, device)
    }

    /// A new model with random weights, drawn as transformers initialises them (normal with
    /// `initializer_range`, zero biases, unit norms).
    pub fn init(config: ModelConfig, seed: i64, device: Device) -> Result<Self> {
        let _rng = crate::torch_rng();
        tch::manual_seed(seed);
        let std = config
            .raw
            .get("initializer_range")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.02);
        let mut params = Weights::new();
        for (name, shape) in parameter_shapes(&config) {
            let t = if name.ends_with(".bias") {
                Tensor::zeros(&shape, (Kind::Float, device))
            } else if shape.len() == 1 {
                Tensor::ones(&shape, (Kind::Float, device))
            } else {
                Tensor::randn(&shape, (Kind::Float, device)) * std
            };
            params.insert(name, t);
        }
        Self::assemble(config, params, device)
    }

    fn assemble(config: ModelConfig, params: Weights, device: Device) -> Result<Self> {
        let get = |name: &str| -> Result<Tensor> {
            params
                .get(name)
                .map(Tensor::shallow_clone)
                .ok_or_else(|| TrainingError::Torch(format!("no parameter `{name}`")))
        };
        let linear = |module: String, bias: bool, conv1d: bool| -> Result<Linear> {
            Ok(Linear {
                weight: get(&format!("{module}.weight"))?,
                bias: if bias {
                    Some(get(&format!("{module}.bias"))?)
                } else {
                    None
                },
                conv1d,
                lora: None,
                name: module,
            })
        };
        let mut blocks = Vec::new();
        let (embed, learned_positions, final_norm, lm_head);
        if config.family == Family::Gpt2 {
            let eps = config.norm_eps;
            let layer_norm = |p: String| -> Result<Norm> {
                Ok(Norm::Layer {
                    weight: get(&format!("{p}.weight"))?,
                    bias: get(&format!("{p}.bias"))?,
                    eps,
                })
            };
            for i in 0..config.num_layers {
                let p = format!("transformer.h.{i}");
                blocks.push(Block {
                    attn_norm: layer_norm(format!("{p}.ln_1"))?,
                    attention: Attention::Fused {
                        qkv: linear(format!("{p}.attn.c_attn"), true, true)?,
                        o: linear(format!("{p}.attn.c_proj"), true, true)?,
                    },
                    mlp_norm: layer_norm(format!("{p}.ln_2"))?,
                    mlp: Mlp::Plain {
                        fc: linear(format!("{p}.mlp.c_fc"), true, true)?,
                        proj: linear(format!("{p}.mlp.c_proj"), true, true)?,
                        activation: config.activation,
                    },
                });
            }
            embed = get("transformer.wte.weight")?;
            learned_positions = Some(get("transformer.wpe.weight")?);
            final_norm = layer_norm("transformer.ln_f".into())?;
            lm_head = if config.tie_word_embeddings {
                embed.shallow_clone()
            } else {
                get("lm_head.weight")?
            };
        } else {
            let eps = config.norm_eps;
            let rms = |name: String| -> Result<Norm> {
                Ok(Norm::Rms {
                    weight: get(&name)?,
                    eps,
                })
            };
            for i in 0..config.num_layers {
                let p = format!("model.layers.{i}");
                let (qkv_bias, out_bias) = (config.qkv_bias, config.output_bias);
                blocks.push(Block {
                    attn_norm: rms(format!("{p}.input_layernorm.weight"))?,
                    attention: Attention::Separate {
                        q: linear(format!("{p}.self_attn.q_proj"), qkv_bias, false)?,
                        k: linear(format!("{p}.self_attn.k_proj"), qkv_bias, false)?,
                        v: linear(format!("{p}.self_attn.v_proj"), qkv_bias, false)?,
                        o: linear(format!("{p}.self_attn.o_proj"), out_bias, false)?,
                    },
                    mlp_norm: rms(format!("{p}.post_attention_layernorm.weight"))?,
                    mlp: Mlp::SwiGlu {
                        gate: linear(format!("{p}.mlp.gate_proj"), false, false)?,
                        up: linear(format!("{p}.mlp.up_proj"), false, false)?,
                        down: linear(format!("{p}.mlp.down_proj"), false, false)?,
                    },
                });
            }
            embed = get("model.embed_tokens.weight")?;
            learned_positions = None;
            final_norm = rms("model.norm.weight".into())?;
            lm_head = if config.tie_word_embeddings {
                embed.shallow_clone()
            } else {
                get("lm_head.weight")?
            };
        }
        let trainable = params.keys().cloned().collect();
        Ok(CausalLm {
            config,
            params,
            trainable,
            embed,
            learned_positions,
            blocks,
            final_norm,
            lm_head,
            device,
            compute: Kind::Float,
        })
    }

    /// The device its tensors live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Compute in `kind` (bf16 on a GPU); parameters stay f32 and are cast on the way.
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = kind;
    }

    /// Every parameter by name.
    pub fn params(&self) -> &Weights {
        &self.params
    }

    /// The names of the parameters training updates.
    pub fn trainable(&self) -> &BTreeSet<String> {
        &self.trainable
    }

    /// Add LoRA to every projection named in `settings.targets`, freeze the rest. Returns how
    /// many projections got it; none is an error (the targets name nothing in this model).
    pub fn add_lora(&mut self, settings: &LoraSettings) -> Result<usize> {
        let mut added = Vec::new();
        for linear in self.linears_mut() {
            let short = linear.name.rsplit('.').next().unwrap_or_default();
            if !settings.targets.iter().any(|t| t == short) {
                continue;
            }
            let (fan_in, fan_out) = linear.features();
            let device = linear.weight.device();
            // PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0.
            let bound = 1.0 / (fan_in as f64).sqrt();
            let a = Tensor::zeros(&[settings.rank, fan_in], (Kind::Float, device))
                .uniform_(-bound, bound);
            let b = Tensor::zeros(&[fan_out, settings.rank], (Kind::Float, device));
            linear.lora = Some(LoraPair {
                a: a.shallow_clone(),
                b: b.shallow_clone(),
                scale: settings.alpha / settings.rank as f64,
                dropout: settings.dropout,
            });
            added.push((linear.name.clone(), a, b));
        }
        if added.is_empty() {
            return Err(TrainingError::Invalid(format!(
                "LoRA targets {:?} name no projection of this {} model (it has {:?})",
                settings.targets,
                self.config.family.model_type(),
                self.config.family.default_lora_targets()
            )));
        }
        self.trainable.clear();
        let count = added.len();
        for (module, a, b) in added {
            let (an, bn) = lora_names(&module);
            self.trainable.insert(an.clone());
            self.trainable.insert(bn.clone());
            self.params.insert(an, a);
            self.params.insert(bn, b);
        }
        Ok(count)
    }

    /// Whether LoRA is on.
    pub fn has_lora(&self) -> bool {
        self.params.keys().any(|k| k.contains(".lora_A."))
    }

    /// Replace LoRA matrices by those of `adapter` (PEFT names), e.g. when resuming.
    pub fn load_lora(&mut self, adapter: &Weights) -> Result<()> {
        let names: Vec<String> = self
            .params
            .keys()
            .filter(|k| k.contains(".lora_"))
            .cloned()
            .collect();
        for name in names {
            let source = adapter
                .get(&name)
                .ok_or_else(|| TrainingError::MissingTensor {
                    path: Path::new("adapter_model.safetensors").to_path_buf(),
                    name: name.clone(),
                })?;
            let mut target = self.params[&name].shallow_clone();
            tch::no_grad(|| target.copy_(source));
        }
        Ok(())
    }

    /// Fold LoRA into the base weights (`W += scale * B A`, transposed for `Conv1D`) and drop
    /// it: the model is then a plain checkpoint of its family.
    pub fn merge_lora(&mut self) {
        let _guard = tch::no_grad_guard();
        for linear in self.linears_mut() {
            if let Some(lora) = linear.lora.take() {
                let delta = lora.b.matmul(&lora.a) * lora.scale;
                let delta = if linear.conv1d { delta.tr() } else { delta };
                let _ = linear.weight.g_add_(&delta);
            }
        }
        self.params.retain(|k, _| !k.contains(".lora_"));
        self.trainable = self.params.keys().cloned().collect();
    }

    /// A copy of the model's weights (LoRA left out) that training this model does not change:
    /// the reference of full-weight DPO computed at every step.
    pub fn frozen_copy(&self) -> Result<CausalLm> {
        let _guard = tch::no_grad_guard();
        let params: Weights = self
            .params
            .iter()
            .filter(|(k, _)| !k.contains(".lora_"))
            .map(|(k, t)| (k.clone(), t.detach().copy()))
            .collect();
        let mut copy = Self::assemble(self.config.clone(), params, self.device)?;
        copy.compute = self.compute;
        Ok(copy)
    }

    /// Run `f` on the model with its LoRA adapters taken out (the base model), then put them
    /// back: DPO's reference without a second copy of the weights.
    pub fn without_lora<T>(&mut self, f: impl FnOnce(&CausalLm) -> T) -> T {
        let taken: Vec<Option<LoraPair>> = self
            .linears_mut()
            .into_iter()
            .map(|l| l.lora.take())
            .collect();
        let out = f(self);
        for (linear, lora) in self.linears_mut().into_iter().zip(taken) {
            linear.lora = lora;
        }
        out
    }

    /// Mark the trainable parameters as needing gradients and the rest as not.
    pub fn prepare_for_training(&self) {
        for (name, t) in &self.params {
            let _ = t.set_requires_grad(self.trainable.contains(name));
        }
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut out = Vec::new();
        for block in &mut self.blocks {
            match &mut block.attention {
                Attention::Separate { q, k, v, o } => out.extend([q, k, v, o]),
                Attention::Fused { qkv, o } => out.extend([qkv, o]),
            }
            match &mut block.mlp {
                Mlp::SwiGlu { gate, up, down } => out.extend([gate, up, down]),
                Mlp::Plain { fc, proj, .. } => out.extend([fc, proj]),
            }
        }
        out
    }

    /// The last hidden states, `[batch, time, hidden]`.
    pub fn hidden(&self, batch: &Batch, train: bool) -> Tensor {
        let c = &self.config;
        let (b, t) = (batch.ids.size()[0], batch.ids.size()[1]);
        let mut h = Tensor::embedding(&self.embed, &batch.ids, -1, false, false);
        if let Some(wpe) = &self.learned_positions {
            // Not `+=`: tch's AddAssign is in place, which autograd cannot differentiate here.
            h = &h + Tensor::embedding(wpe, &batch.positions, -1, false, false);
        }
        let mut h = h.to_kind(self.compute);
        let allowed = attention_mask(&batch.segments, c.sliding_window);
        let rotary = (c.family != Family::Gpt2).then(|| self.rotary(&batch.positions));
        let (heads, kv_heads, d) = (c.num_heads, c.num_kv_heads, c.head_dim());
        for (layer, block) in self.blocks.iter().enumerate() {
            let x = block.attn_norm.forward(&h);
            let (q, k, v, o) = match &block.attention {
                Attention::Separate { q, k, v, o } => (
                    q.forward(&x, train),
                    k.forward(&x, train),
                    v.forward(&x, train),
                    o,
                ),
                Attention::Fused { qkv, o } => {
                    let parts = qkv.forward(&x, train).split(c.hidden_size, 2);
                    (
                        parts[0].shallow_clone(),
                        parts[1].shallow_clone(),
                        parts[2].shallow_clone(),
                        o,
                    )
                }
            };
            let q = q.view([b, t, heads, d]).transpose(1, 2);
            let k = k.view([b, t, kv_heads, d]).transpose(1, 2);
            let v = v.view([b, t, kv_heads, d]).transpose(1, 2);
            let (q, k) = match &rotary {
                Some((cos, sin)) => (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin)),
                None => (q, k),
            };
            let (k, v) = if kv_heads != heads {
                let rep = heads / kv_heads;
                let repeat = |x: Tensor| {
                    x.unsqueeze(2)
                        .expand(&[b, kv_heads, rep, t, d], false)
                        .reshape(&[b, heads, t, d])
                };
                (repeat(k), repeat(v))
            } else {
                (k, v)
            };
            let mut scale = 1.0 / (d as f64).sqrt();
            if c.scale_attn_by_inverse_layer_idx {
                scale /= (layer + 1) as f64;
            }
            let scores = q.matmul(&k.transpose(-2, -1)) * scale;
            let scores = scores.masked_fill(&allowed.logical_not(), f32::MIN as f64);
            let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
            let attended = probs
                .matmul(&v)
                .transpose(1, 2)
                .reshape(&[b, t, c.hidden_size]);
            h = &h + o.forward(&attended, train);
            let x = block.mlp_norm.forward(&h);
            let m = match &block.mlp {
                Mlp::SwiGlu { gate, up, down } => down.forward(
                    &(gate.forward(&x, train).silu() * up.forward(&x, train)),
                    train,
                ),
                Mlp::Plain {
                    fc,
                    proj,
                    activation,
                } => {
                    let y = fc.forward(&x, train);
                    let y = match activation {
                        Activation::GeluTanh => y.gelu("tanh"),
                        Activation::Gelu => y.gelu("none"),
                        Activation::Relu => y.relu(),
                        Activation::Silu => y.silu(),
                    };
                    proj.forward(&y, train)
                }
            };
            h = &h + m;
        }
        self.final_norm.forward(&h)
    }

    /// Logits (f32) of hidden states `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        hidden
            .linear::<Tensor>(&cast(&self.lm_head, hidden.kind()), None)
            .to_kind(Kind::Float)
    }

    /// Logits of every position of a batch, `[batch, time, vocab]`.
    pub fn forward(&self, batch: &Batch) -> Tensor {
        tch::no_grad(|| self.logits(&self.hidden(batch, false)))
    }

    /// `(cos, sin)`, `[batch, 1, time, head_dim]`, of the rotary positions.
    fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let c = &self.config;
        let longest = positions.max().int64_value(&[]) + 1;
        let inv_freq = rotary_inv_freq(c, longest).to_device(positions.device());
        let t = positions.to_kind(Kind::Float) / rotary_stretch(c);
        let freqs = t.unsqueeze(-1) * inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (
            emb.cos().to_kind(self.compute),
            emb.sin().to_kind(self.compute),
        )
    }
}

/// What positions are divided by before rotation: linear rope scaling's factor, else 1.
pub(crate) fn rotary_stretch(c: &ModelConfig) -> f64 {
    match c.rope_scaling {
        Some(RopeScaling::Linear { factor }) => factor,
        _ => 1.0,
    }
}

/// The rotary frequencies (f32, `[head_dim / 2]`, on the CPU) for sequences whose longest
/// position is `longest - 1`: `1 / base^(2i/d)`, with the base stretched by dynamic NTK scaling
/// past the trained context and the frequencies rescaled by Llama 3's scheme.
pub(crate) fn rotary_inv_freq(c: &ModelConfig, longest: i64) -> Tensor {
    let dim = c.head_dim();
    let mut base = c.rope_theta;
    if let Some(RopeScaling::Dynamic { factor }) = c.rope_scaling {
        if longest > c.max_positions {
            let ratio = factor * longest as f64 / c.max_positions as f64 - (factor - 1.0);
            base *= ratio.powf(dim as f64 / (dim as f64 - 2.0));
        }
    }
    let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, Device::Cpu))
        .to_kind(Kind::Float)
        / dim as f64;
    let inv_freq = Tensor::pow_scalar(base, &exponents).reciprocal();
    let Some(RopeScaling::Llama3 {
        factor,
        low_freq_factor,
        high_freq_factor,
        original_max_position_embeddings: original,
    }) = c.rope_scaling
    else {
        return inv_freq;
    };
    let freqs: Vec<f32> = Vec::<f32>::from(&inv_freq);
    let (low, high) = (original / low_freq_factor, original / high_freq_factor);
    let scaled: Vec<f32> = freqs
        .iter()
        .map(|f| {
            let f = *f as f64;
            let wavelength = 2.0 * std::f64::consts::PI / f;
            let v = if wavelength < high {
                f
            } else if wavelength > low {
                f / factor
            } else {
                let smooth = (original / wavelength - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            };
            v as f32
        })
        .collect();
    Tensor::of_slice(&scaled)
}

/// `x * cos + rotate_half(x) * sin`, where `rotate_half([a, b]) = [-b, a]`.
fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let (x1, x2) = (x.narrow(3, 0, half), x.narrow(3, half, half));
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}

/// `[batch, 1, time, time]` booleans: may query `i` see key `j`? Same segment, `j <= i`, within
/// the window; padding (segment 0) sees itself only, so that no row is all masked.
fn attention_mask(segments: &Tensor, window: Option<i64>) -> Tensor {
    let t = segments.size()[1];
    let device = segments.device();
    let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1));
    let idx = Tensor::arange(t, (Kind::Int64, device));
    let (i, j) = (idx.unsqueeze(1), idx.unsqueeze(0));
    let mut allowed = j.le_tensor(&i).unsqueeze(0).logical_and(&same);
    if let Some(w) = window {
        allowed = allowed.logical_and(&j.gt_tensor(&(&i - w)).unsqueeze(0));
    }
    let diagonal = i.eq_tensor(&j).unsqueeze(0);
    allowed.logical_or(&diagonal).unsqueeze(1)
}

/// PEFT's names of a module's LoRA matrices.
pub fn lora_names(module: &str) -> (String, String) {
    (
        format!("base_model.model.{module}.lora_A.weight"),
        format!("base_model.model.{module}.lora_B.weight"),
    )
}

/// Every parameter a model of `config` has, by Hugging Face name, with its shape.
pub fn parameter_shapes(c: &ModelConfig) -> Vec<(String, Vec<i64>)> {
    let (h, i, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let mut out = Vec::new();
    let mut push = |name: String, shape: &[i64]| out.push((name, shape.to_vec()));
    if c.family == Family::Gpt2 {
        push("transformer.wte.weight".into(), &[v, h]);
        push("transformer.wpe.weight".into(), &[c.max_positions, h]);
        for l in 0..c.num_layers {
            let p = format!("transformer.h.{l}");
            for norm in ["ln_1", "ln_2"] {
                push(format!("{p}.{norm}.weight"), &[h]);
                push(format!("{p}.{norm}.bias"), &[h]);
            }
            push(format!("{p}.attn.c_attn.weight"), &[h, 3 * h]);
            push(format!("{p}.attn.c_attn.bias"), &[3 * h]);
            push(format!("{p}.attn.c_proj.weight"), &[h, h]);
            push(format!("{p}.attn.c_proj.bias"), &[h]);
            push(format!("{p}.mlp.c_fc.weight"), &[h, i]);
            push(format!("{p}.mlp.c_fc.bias"), &[i]);
            push(format!("{p}.mlp.c_proj.weight"), &[i, h]);
            push(format!("{p}.mlp.c_proj.bias"), &[h]);
        }
        push("transformer.ln_f.weight".into(), &[h]);
        push("transformer.ln_f.bias".into(), &[h]);
    } else {
        let kv = c.num_kv_heads * c.head_dim();
        push("model.embed_tokens.weight".into(), &[v, h]);
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), &[h]);
            push(format!("{p}.post_attention_layernorm.weight"), &[h]);
            for (proj, out) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
                push(format!("{p}.self_attn.{proj}.weight"), &[out, h]);
                if c.qkv_bias {
                    push(format!("{p}.self_attn.{proj}.bias"), &[out]);
                }
            }
            push(format!("{p}.self_attn.o_proj.weight"), &[h, h]);
            if c.output_bias {
                push(format!("{p}.self_attn.o_proj.bias"), &[h]);
            }
            push(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
            push(format!("{p}.mlp.up_proj.weight"), &[i, h]);
            push(format!("{p}.mlp.down_proj.weight"), &[h, i]);
        }
        push("model.norm.weight".into(), &[h]);
    }
    if !c.tie_word_embeddings {
        push("lm_head.weight".into(), &[v, h]);
    }
    out
}
