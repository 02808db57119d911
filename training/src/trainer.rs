//! The training loop: micro-batches of packed rows, loss on the target tokens, gradient
//! accumulation, clipping, AdamW with warm-up and decay, evaluation on the test split,
//! checkpoints and resume.
//!
//! Everything a step does follows from the step number (the rows it sees, the learning rate,
//! the dropout seed), and a checkpoint holds the trainable weights, AdamW's moments and the
//! step: a run resumed from a checkpoint takes the same steps as one never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;
use twin_config::TrainingConfig;

use crate::data::{self, Examples, Row};
use crate::dpo::Rewards;
use crate::model::{Batch, CausalLm};
use crate::optim::{self, AdamW, AdamWSettings};
use crate::weights;
use crate::{Result, TrainingError};

/// What one optimizer step measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step, from 1.
    pub step: u64,
    /// Epochs done, fractional.
    pub epoch: f64,
    /// Mean loss per target token.
    pub loss: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding excluded) per second of this step.
    pub tokens_per_second: f64,
    /// Preference tuning's rewards of this step's pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
}

/// An evaluation on the test split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// After this step.
    pub step: u64,
    /// Mean loss per target token.
    pub loss: f64,
    /// Target tokens evaluated.
    pub tokens: u64,
    /// Preference tuning's rewards on the test pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
}

/// Told of what training does, as it does it.
pub trait Observer {
    /// After each optimizer step.
    fn step(&mut self, _metrics: &StepMetrics, _total_steps: u64) {}
    /// After each evaluation.
    fn eval(&mut self, _metrics: &EvalMetrics) {}
    /// After a checkpoint is written.
    fn checkpoint(&mut self, _step: u64, _dir: &Path) {}
}

/// Observes nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// How a call of [`train`] ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Steps done in all (resumed ones included).
    pub steps: u64,
    /// Steps planned.
    pub total_steps: u64,
    /// Stopped early (Ctrl-C); a checkpoint was saved.
    pub interrupted: bool,
    /// The last step's loss.
    pub last_loss: Option<f64>,
    /// The last evaluation.
    pub last_eval: Option<EvalMetrics>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// How many steps a run takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Rows of the training split.
    pub rows: u64,
    /// Micro-batches per epoch.
    pub micro_batches_per_epoch: u64,
    /// Optimizer steps in all.
    pub total_steps: u64,
}

impl Plan {
    /// The plan for `rows` rows under `params`.
    pub fn new(rows: usize, params: &TrainingConfig) -> Plan {
        let batch = params.batch_size.max(1) as u64;
        let accumulation = params.gradient_accumulation.max(1) as u64;
        let micro = (rows as u64).div_ceil(batch).max(1);
        let per_epoch = micro.div_ceil(accumulation).max(1);
        let total = params
            .max_steps
            .unwrap_or(per_epoch * u64::from(params.epochs.max(1)));
        Plan {
            rows: rows as u64,
            micro_batches_per_epoch: micro,
            total_steps: total,
        }
    }
}

/// What a checkpoint folder's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Steps done.
    pub step: u64,
    /// Steps planned.
    pub total_steps: u64,
}

/// What one optimizer step's micro-batches gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss {
    /// The step's loss (what was differentiated).
    pub loss: f64,
    /// Tokens processed, padding excluded.
    pub tokens: usize,
    /// Preference tuning's rewards.
    pub rewards: Option<Rewards>,
}

/// What a run optimises: supervised fine-tuning on rows, or preference tuning on pairs.
pub trait Objective {
    /// Training items (rows, or pairs) in an epoch.
    fn items(&self) -> usize;
    /// Whether there is a test split.
    fn has_test(&self) -> bool;
    /// Forward and backward over the step's micro-batches (item indexes), the loss normalised
    /// over the whole step.
    fn step(&mut self, model: &mut CausalLm, micro: &[Vec<usize>]) -> Result<StepLoss>;
    /// The loss on the test split, without gradients.
    fn evaluate(&mut self, model: &mut CausalLm, step: u64, batch: usize) -> EvalMetrics;
}

/// Supervised fine-tuning: cross-entropy on the target tokens of (packed) rows.
pub struct Sft {
    train: Vec<Row>,
    test: Vec<Row>,
    pad: i64,
}

impl Sft {
    /// The rows of `examples` under `params` (packed or not), padded with `pad`.
    pub fn new(examples: &Examples, params: &TrainingConfig, pad: i64) -> Self {
        Self {
            train: data::rows(&examples.train, params.max_seq_len, params.packing),
            test: data::rows(&examples.test, params.max_seq_len, params.packing),
            pad,
        }
    }
}

impl Objective for Sft {
    fn items(&self) -> usize {
        self.train.len()
    }

    fn has_test(&self) -> bool {
        !self.test.is_empty()
    }

    fn step(&mut self, model: &mut CausalLm, micro: &[Vec<usize>]) -> Result<StepLoss> {
        let rows: Vec<Vec<&Row>> = micro
            .iter()
            .map(|m| m.iter().map(|&i| &self.train[i]).collect())
            .collect();
        let targets: usize = rows
            .iter()
            .flat_map(|r| r.iter().map(|row| row.target_count()))
            .sum();
        let tokens = rows
            .iter()
            .flat_map(|r| r.iter().map(|row| row.tokens.len()))
            .sum();
        let mut loss_sum = 0.0;
        for rows in &rows {
            if let Some(sum) = summed_loss(model, rows, self.pad, model.device(), true) {
                (&sum / targets.max(1) as f64).f_backward()?;
                loss_sum += sum.double_value(&[]);
            }
        }
        Ok(StepLoss {
            loss: loss_sum / targets.max(1) as f64,
            tokens,
            rewards: None,
        })
    }

    fn evaluate(&mut self, model: &mut CausalLm, step: u64, batch: usize) -> EvalMetrics {
        evaluate(model, &self.test, batch, self.pad, step)
    }
}

/// Check what would stop training before any time is spent on it.
pub fn validate(params: &TrainingConfig, model: &CausalLm) -> Result<()> {
    let bad = |m: String| Err(TrainingError::Invalid(m));
    if params.batch_size == 0 || params.gradient_accumulation == 0 {
        return bad("batch_size and gradient_accumulation must be at least 1".into());
    }
    if params.max_seq_len < 2 {
        return bad(format!("max_seq_len {} is too short", params.max_seq_len));
    }
    if params.max_seq_len as i64 > model.config.max_positions {
        return bad(format!(
            "max_seq_len {} is longer than the model's {} positions: pass --max-seq-len {} or \
             less",
            params.max_seq_len, model.config.max_positions, model.config.max_positions
        ));
    }
    if !(params.learning_rate > 0.0 && params.learning_rate.is_finite()) {
        return bad(format!(
            "learning_rate must be positive, not {}",
            params.learning_rate
        ));
    }
    if params.max_steps == Some(0) {
        return bad("max_steps must be at least 1".into());
    }
    Ok(())
}

/// Train `model` (whose trainable parameters are already chosen: full, or LoRA added) on
/// `examples`. Checkpoints go to `checkpoints/step-N/`; `resume` continues from one. `stop`
/// (set by Ctrl-C) ends training after the current step, with a checkpoint.
pub fn train(
    model: &mut CausalLm,
    examples: &Examples,
    params: &TrainingConfig,
    checkpoints: &Path,
    resume: Option<&Path>,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    let pad = model.config.eos_token_id.unwrap_or(0);
    let mut objective = Sft::new(examples, params, pad);
    optimize(
        model,
        &mut objective,
        params,
        checkpoints,
        resume,
        stop,
        observer,
    )
}

/// The training loop, for any objective: seeded per-epoch order of its items, accumulation,
/// clipping, AdamW with warm-up and decay, evaluation, checkpoints and resume.
pub fn optimize(
    model: &mut CausalLm,
    objective: &mut dyn Objective,
    params: &TrainingConfig,
    checkpoints: &Path,
    resume: Option<&Path>,
    stop: &AtomicBool,
    observer: &mut dyn Observer,
) -> Result<Outcome> {
    validate(params, model)?;
    // Dropout draws from libtorch's one generator, seeded per step below.
    let _rng = crate::torch_rng();
    let items = objective.items();
    let plan = Plan::new(items, params);
    model.prepare_for_training();
    let trainable: BTreeMap<String, Tensor> = model
        .params()
        .iter()
        .filter(|(k, _)| model.trainable().contains(*k))
        .map(|(k, t)| (k.clone(), t.shallow_clone()))
        .collect();
    let mut adamw = AdamW::new(
        AdamWSettings {
            weight_decay: params.weight_decay,
            beta1: params.adam_beta1,
            beta2: params.adam_beta2,
            eps: params.adam_epsilon,
        },
        &trainable,
    );
    let mut total_steps = plan.total_steps;
    if let Some(dir) = resume {
        let state = load_checkpoint(dir, &trainable, &mut adamw)?;
        total_steps = state.total_steps;
    }
    let batch = params.batch_size.max(1);
    let accumulation = params.gradient_accumulation.max(1) as u64;
    let mut outcome = Outcome {
        steps: adamw.step,
        total_steps,
        interrupted: false,
        last_loss: None,
        last_eval: None,
        checkpoint: None,
    };
    // The item order of the current epoch, drawn once per epoch.
    let mut order: (u64, Vec<usize>) = (0, data::epoch_order(items, params.seed, 0));
    let mut micro_items = |global: u64| -> Vec<usize> {
        let epoch = global / plan.micro_batches_per_epoch;
        let within = (global % plan.micro_batches_per_epoch) as usize;
        if order.0 != epoch {
            order = (epoch, data::epoch_order(items, params.seed, epoch));
        }
        order
            .1
            .iter()
            .skip(within * batch)
            .take(batch)
            .copied()
            .collect()
    };
    while adamw.step < total_steps {
        let step = adamw.step; // 0-based index of the step being taken
        let started = Instant::now();
        tch::manual_seed(params.seed as i64 ^ (step as i64).wrapping_mul(0x5851_F42D));
        let micro: Vec<Vec<usize>> = (0..accumulation)
            .map(|a| micro_items(step * accumulation + a))
            .collect();
        optim::zero_grad(&trainable);
        let result = objective.step(model, &micro)?;
        let grad_norm = optim::clip_grad_norm(&trainable, params.max_grad_norm);
        let lr = optim::learning_rate(
            params.learning_rate,
            params.schedule,
            params.warmup_steps,
            step,
            total_steps,
        );
        adamw.step(&trainable, lr);
        let loss = result.loss;
        if !loss.is_finite() {
            return Err(TrainingError::Invalid(format!(
                "the loss is {loss} at step {}: lower the learning rate",
                step + 1
            )));
        }
        let metrics = StepMetrics {
            step: adamw.step,
            epoch: (adamw.step * accumulation) as f64 / plan.micro_batches_per_epoch as f64,
            loss,
            learning_rate: lr,
            grad_norm,
            tokens_per_second: result.tokens as f64 / started.elapsed().as_secs_f64().max(1e-9),
            rewards: result.rewards,
        };
        outcome.steps = adamw.step;
        outcome.last_loss = Some(loss);
        observer.step(&metrics, total_steps);
        let last = adamw.step == total_steps;
        let interrupted = stop.load(Ordering::SeqCst) && !last;
        if (params.eval_every > 0 && adamw.step.is_multiple_of(params.eval_every) || last)
            && objective.has_test()
        {
            let eval = objective.evaluate(model, adamw.step, batch);
            observer.eval(&eval);
            outcome.last_eval = Some(eval);
        }
        if last
            || interrupted
            || (params.checkpoint_every > 0 && adamw.step.is_multiple_of(params.checkpoint_every))
        {
            let dir = checkpoints.join(format!("step-{:06}", adamw.step));
            save_checkpoint(&dir, &trainable, &adamw, total_steps)?;
            observer.checkpoint(adamw.step, &dir);
            outcome.checkpoint = Some(dir);
        }
        if interrupted {
            outcome.interrupted = true;
            break;
        }
    }
    Ok(outcome)
}

/// The summed cross-entropy of `rows`' target tokens, or `None` when they have none.
fn summed_loss(
    model: &CausalLm,
    rows: &[&Row],
    pad: i64,
    device: tch::Device,
    train: bool,
) -> Option<Tensor> {
    let tokens: Vec<&[(i64, i64, i64)]> = rows.iter().map(|r| r.tokens.as_slice()).collect();
    let batch = Batch::from_tokens(&tokens, pad, device);
    let width = batch.ids.size()[1] as usize;
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for (i, target) in row.targets.iter().enumerate() {
            if *target && i > 0 {
                positions.push((r * width + i - 1) as i64);
                labels.push(row.tokens[i].0);
            }
        }
    }
    if positions.is_empty() {
        return None;
    }
    let hidden = model.hidden(&batch, train);
    let size = hidden.size();
    // Only the positions that predict a target go through the output layer: with loss on
    // the answer only, most do not, and the vocabulary projection is the largest matmul.
    let picked = hidden
        .reshape(&[-1, size[2]])
        .index_select(0, &Tensor::of_slice(&positions).to_device(device));
    let logits = model.logits(&picked);
    let labels = Tensor::of_slice(&labels).to_device(device);
    Some(logits.cross_entropy_loss::<Tensor>(&labels, None, tch::Reduction::Sum, -100, 0.0))
}

/// Mean loss per target token of `rows`, without gradients or dropout.
pub fn evaluate(model: &CausalLm, rows: &[Row], batch: usize, pad: i64, step: u64) -> EvalMetrics {
    let _guard = tch::no_grad_guard();
    let mut sum = 0.0;
    let mut tokens = 0u64;
    for chunk in rows.chunks(batch.max(1)) {
        let refs: Vec<&Row> = chunk.iter().collect();
        if let Some(s) = summed_loss(model, &refs, pad, model.device(), false) {
            sum += s.double_value(&[]);
            tokens += chunk.iter().map(|r| r.target_count() as u64).sum::<u64>();
        }
    }
    EvalMetrics {
        step,
        loss: if tokens > 0 { sum / tokens as f64 } else { 0.0 },
        tokens,
        rewards: None,
    }
}

fn save_checkpoint(
    dir: &Path,
    trainable: &BTreeMap<String, Tensor>,
    adamw: &AdamW,
    total_steps: u64,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| TrainingError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    weights::save(&dir.join("trainable.safetensors"), trainable, None)?;
    let mut moments = BTreeMap::new();
    for (k, t) in &adamw.exp_avg {
        moments.insert(format!("exp_avg.{k}"), t.shallow_clone());
    }
    for (k, t) in &adamw.exp_avg_sq {
        moments.insert(format!("exp_avg_sq.{k}"), t.shallow_clone());
    }
    weights::save(&dir.join("optimizer.safetensors"), &moments, None)?;
    let state = CheckpointState {
        step: adamw.step,
        total_steps,
    };
    weights::write_json(
        &dir.join("state.json"),
        &serde_json::to_value(state).unwrap_or_default(),
    )
}

fn load_checkpoint(
    dir: &Path,
    trainable: &BTreeMap<String, Tensor>,
    adamw: &mut AdamW,
) -> Result<CheckpointState> {
    let state_path = dir.join("state.json");
    let state: CheckpointState = weights::read_json(&state_path)?;
    let saved = weights::load(&[dir.join("trainable.safetensors")])?;
    let moments = weights::load(&[dir.join("optimizer.safetensors")])?;
    let _guard = tch::no_grad_guard();
    for (name, p) in trainable {
        let missing = |n: String| TrainingError::MissingTensor {
            path: dir.to_path_buf(),
            name: n,
        };
        let source = saved.get(name).ok_or_else(|| missing(name.clone()))?;
        p.shallow_clone().copy_(source);
        for (prefix, target) in [
            ("exp_avg", &mut adamw.exp_avg),
            ("exp_avg_sq", &mut adamw.exp_avg_sq),
        ] {
            let key = format!("{prefix}.{name}");
            let m = moments.get(&key).ok_or_else(|| missing(key.clone()))?;
            target[name].shallow_clone().copy_(m);
        }
    }
    adamw.step = state.step;
    Ok(state)
}

/// The newest `step-N` folder under `checkpoints`.
pub fn latest_checkpoint(checkpoints: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(checkpoints)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
                && p.join("state.json").exists()
        })
        .collect();
    found.sort();
    found.pop()
}
