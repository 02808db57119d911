//! Direct preference optimisation (Rafailov et al., "Direct Preference Optimization: Your
//! Language Model is Secretly a Reward Model", 2023): the policy learns to prefer the chosen
//! answer of each pair over the rejected one, relative to a frozen reference model.
//!
//! The loss is TRL's (`DPOTrainer.dpo_loss`): with `x = (log π(c) − log π(r)) − (log π_ref(c) −
//! log π_ref(r))`, the sigmoid loss `−log σ(βx)(1 − ε) − log σ(−βx) ε` (ε: label smoothing, the
//! conservative DPO of Mitchell 2023), or IPO's `(x − 1/(2β))²` (Azar et al., 2023) on
//! per-token average log-probabilities. The rewards TRL logs come with it: `β (log π − log
//! π_ref)` of the chosen and rejected answers, their margin and how often the chosen one wins.
//!
//! With LoRA the reference is the same model with its adapters taken out
//! ([`CausalLm::without_lora`]), so no second copy of the weights is held.

use tch::{Device, Kind, Tensor};

use crate::data::Example;
use crate::model::{Batch, CausalLm};

/// Which preference loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpoLoss {
    /// DPO's logistic loss (with optional label smoothing).
    Sigmoid,
    /// Identity preference optimisation: a squared loss on per-token averages.
    Ipo,
}

impl DpoLoss {
    /// `sigmoid` or `ipo`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sigmoid" | "dpo" => Some(DpoLoss::Sigmoid),
            "ipo" => Some(DpoLoss::Ipo),
            _ => None,
        }
    }
}

/// DPO's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpoSettings {
    /// How far the policy may move from the reference (β).
    pub beta: f64,
    /// Probability that a pair's labels are flipped (ε); 0 for plain DPO.
    pub label_smoothing: f64,
    /// Which loss.
    pub loss: DpoLoss,
}

/// A preference pair as tokens: the prompt with the chosen answer, and with the rejected one
/// (answer tokens marked as targets).
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    /// Prompt + chosen answer.
    pub chosen: Example,
    /// Prompt + rejected answer.
    pub rejected: Example,
}

/// The log-probability of each row's target tokens under `model`, `[rows]`: summed, or averaged
/// per token (IPO). With gradients when `train`.
pub fn sequence_logps(
    model: &CausalLm,
    rows: &[&Example],
    pad: i64,
    train: bool,
    average: bool,
) -> Tensor {
    let device = model.device();
    let tokens: Vec<Vec<(i64, i64, i64)>> = rows
        .iter()
        .map(|e| {
            e.ids
                .iter()
                .enumerate()
                .map(|(i, &t)| (t, i as i64, 1))
                .collect()
        })
        .collect();
    let batch = Batch::from_tokens(&tokens, pad, device);
    let width = batch.ids.size()[1] as usize;
    let (mut positions, mut labels, mut owners) = (Vec::new(), Vec::new(), Vec::new());
    let mut counts = vec![0f32; rows.len()];
    for (r, e) in rows.iter().enumerate() {
        for i in 1..e.ids.len() {
            if e.targets[i] {
                positions.push((r * width + i - 1) as i64);
                labels.push(e.ids[i]);
                owners.push(r as i64);
                counts[r] += 1.0;
            }
        }
    }
    let hidden = model.hidden(&batch, train);
    let size = hidden.size();
    let picked = hidden
        .reshape(&[-1, size[2]])
        .index_select(0, &Tensor::of_slice(&positions).to_device(device));
    let logps = model
        .logits(&picked)
        .log_softmax(-1, Kind::Float)
        .gather(
            1,
            &Tensor::of_slice(&labels).to_device(device).unsqueeze(1),
            false,
        )
        .squeeze_dim(1);
    let sums = Tensor::zeros(&[rows.len() as i64], (Kind::Float, device)).index_add(
        0,
        &Tensor::of_slice(&owners).to_device(device),
        &logps,
    );
    if average {
        sums / Tensor::of_slice(&counts).to_device(device).clamp_min(1.0)
    } else {
        sums
    }
}

/// What one batch of pairs gives.
#[derive(Debug)]
pub struct DpoBatch {
    /// The loss of each pair, `[pairs]`, differentiable.
    pub losses: Tensor,
    /// `β (log π(c) − log π_ref(c))`, `[pairs]`.
    pub chosen_rewards: Tensor,
    /// `β (log π(r) − log π_ref(r))`, `[pairs]`.
    pub rejected_rewards: Tensor,
}

/// TRL's `dpo_loss` on log-probabilities of `[pairs]`.
pub fn dpo_loss(
    settings: &DpoSettings,
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference_chosen: &Tensor,
    reference_rejected: &Tensor,
) -> DpoBatch {
    let beta = settings.beta;
    let logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected);
    let losses = match settings.loss {
        DpoLoss::Sigmoid => {
            let eps = settings.label_smoothing;
            let scaled = &logits * beta;
            -scaled.log_sigmoid() * (1.0 - eps) - (-&scaled).log_sigmoid() * eps
        }
        DpoLoss::Ipo => (&logits - 1.0 / (2.0 * beta)).pow_tensor_scalar(2),
    };
    DpoBatch {
        losses,
        chosen_rewards: ((policy_chosen - reference_chosen) * beta).detach(),
        rejected_rewards: ((policy_rejected - reference_rejected) * beta).detach(),
    }
}

/// Rewards as TRL logs them, averaged over pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rewards {
    /// Mean reward of the chosen answers.
    pub chosen: f64,
    /// Mean reward of the rejected answers.
    pub rejected: f64,
    /// Mean of chosen − rejected.
    pub margins: f64,
    /// Share of pairs whose chosen answer has the higher reward.
    pub accuracies: f64,
}

impl Rewards {
    /// The rewards of `batch`.
    pub fn of(batch: &DpoBatch) -> Rewards {
        let chosen = Vec::<f32>::from(&batch.chosen_rewards.to_device(Device::Cpu));
        let rejected = Vec::<f32>::from(&batch.rejected_rewards.to_device(Device::Cpu));
        Rewards::of_values(&chosen, &rejected)
    }

    /// The rewards of pairs' values.
    pub fn of_values(chosen: &[f32], rejected: &[f32]) -> Rewards {
        let n = chosen.len().max(1) as f64;
        let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let wins = chosen.iter().zip(rejected).filter(|(c, r)| c > r).count();
        Rewards {
            chosen: mean(chosen),
            rejected: mean(rejected),
            margins: mean(chosen) - mean(rejected),
            accuracies: wins as f64 / n,
        }
    }
}

/// The reference log-probabilities of `pairs` (chosen, rejected), without gradients: from
/// `reference` if given, else from `model` with its LoRA adapters taken out.
pub fn reference_logps(
    model: &mut CausalLm,
    reference: Option<&CausalLm>,
    pairs: &[&Pair],
    pad: i64,
    average: bool,
) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let chosen: Vec<&Example> = pairs.iter().map(|p| &p.chosen).collect();
    let rejected: Vec<&Example> = pairs.iter().map(|p| &p.rejected).collect();
    let run = |m: &CausalLm| {
        (
            sequence_logps(m, &chosen, pad, false, average),
            sequence_logps(m, &rejected, pad, false, average),
        )
    };
    match reference {
        Some(r) => run(r),
        None => model.without_lora(run),
    }
}

/// Where the reference's log-probabilities come from.
pub enum Reference<'r> {
    /// Computed once before training: `(chosen, rejected)` of the training and test pairs.
    Cached {
        /// The training pairs'.
        train: (Vec<f32>, Vec<f32>),
        /// The test pairs'.
        test: (Vec<f32>, Vec<f32>),
    },
    /// At every step: from this model, or (`None`) from the policy with its adapters out.
    OnTheFly(Option<&'r CausalLm>),
}

/// Preference tuning as a training objective ([`crate::trainer::optimize`]).
pub struct DpoObjective<'r> {
    train: Vec<Pair>,
    test: Vec<Pair>,
    settings: DpoSettings,
    pad: i64,
    reference: Reference<'r>,
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::from(&t.to_device(Device::Cpu))
}

impl<'r> DpoObjective<'r> {
    /// The objective over `train` and `test` pairs. With `cached`, the reference's
    /// log-probabilities are computed now (from `reference`, else from `model` with its adapters
    /// out), `batch` pairs at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &mut CausalLm,
        reference: Option<&'r CausalLm>,
        train: Vec<Pair>,
        test: Vec<Pair>,
        settings: DpoSettings,
        pad: i64,
        cached: bool,
        batch: usize,
    ) -> Self {
        let average = settings.loss == DpoLoss::Ipo;
        let reference = if cached {
            let mut all = |pairs: &[Pair]| {
                let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
                for chunk in pairs.chunks(batch.max(1)) {
                    let refs: Vec<&Pair> = chunk.iter().collect();
                    let (c, r) = reference_logps(model, reference, &refs, pad, average);
                    chosen.extend(values(&c));
                    rejected.extend(values(&r));
                }
                (chosen, rejected)
            };
            let train_logps = all(&train);
            let test_logps = all(&test);
            Reference::Cached {
                train: train_logps,
                test: test_logps,
            }
        } else {
            Reference::OnTheFly(reference)
        };
        Self {
            train,
            test,
            settings,
            pad,
            reference,
        }
    }

    /// Losses and rewards of `indexes` of the training (or test) pairs.
    fn batch(
        &self,
        model: &mut CausalLm,
        indexes: &[usize],
        test: bool,
        train: bool,
    ) -> (DpoBatch, usize) {
        let pairs = if test { &self.test } else { &self.train };
        let chosen: Vec<&Example> = indexes.iter().map(|&i| &pairs[i].chosen).collect();
        let rejected: Vec<&Example> = indexes.iter().map(|&i| &pairs[i].rejected).collect();
        let tokens = chosen.iter().chain(&rejected).map(|e| e.ids.len()).sum();
        let average = self.settings.loss == DpoLoss::Ipo;
        let mut rows = chosen.clone();
        rows.extend(&rejected);
        let logps = sequence_logps(model, &rows, self.pad, train, average);
        let n = indexes.len() as i64;
        let (policy_chosen, policy_rejected) = (logps.narrow(0, 0, n), logps.narrow(0, n, n));
        let device = model.device();
        let (reference_chosen, reference_rejected) = match &self.reference {
            Reference::Cached { train, test: held } => {
                let (c, r) = if test { held } else { train };
                let pick = |v: &Vec<f32>| {
                    let picked: Vec<f32> = indexes.iter().map(|&i| v[i]).collect();
                    Tensor::of_slice(&picked).to_device(device)
                };
                (pick(c), pick(r))
            }
            Reference::OnTheFly(reference) => {
                let refs: Vec<&Pair> = indexes.iter().map(|&i| &pairs[i]).collect();
                reference_logps(model, *reference, &refs, self.pad, average)
            }
        };
        (
            dpo_loss(
                &self.settings,
                &policy_chosen,
                &policy_rejected,
                &reference_chosen,
                &reference_rejected,
            ),
            tokens,
        )
    }
}

impl crate::trainer::Objective for DpoObjective<'_> {
    fn items(&self) -> usize {
        self.train.len()
    }

    fn has_test(&self) -> bool {
        !self.test.is_empty()
    }

    fn step(
        &mut self,
        model: &mut CausalLm,
        micro: &[Vec<usize>],
    ) -> crate::Result<crate::trainer::StepLoss> {
        let pairs: usize = micro.iter().map(Vec::len).sum();
        let (mut loss_sum, mut tokens) = (0.0, 0);
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for indexes in micro.iter().filter(|m| !m.is_empty()) {
            let (batch, n) = self.batch(model, indexes, false, true);
            let sum = batch.losses.sum(Kind::Float);
            (&sum / pairs.max(1) as f64).f_backward()?;
            loss_sum += sum.double_value(&[]);
            tokens += n;
            chosen.extend(values(&batch.chosen_rewards));
            rejected.extend(values(&batch.rejected_rewards));
        }
        Ok(crate::trainer::StepLoss {
            loss: loss_sum / pairs.max(1) as f64,
            tokens,
            rewards: Some(Rewards::of_values(&chosen, &rejected)),
        })
    }

    fn evaluate(
        &mut self,
        model: &mut CausalLm,
        step: u64,
        batch: usize,
    ) -> crate::trainer::EvalMetrics {
        let _guard = tch::no_grad_guard();
        let (mut loss_sum, mut tokens) = (0.0, 0u64);
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        let all: Vec<usize> = (0..self.test.len()).collect();
        for indexes in all.chunks(batch.max(1)) {
            let (b, _) = self.batch(model, indexes, true, false);
            loss_sum += b.losses.sum(Kind::Float).double_value(&[]);
            tokens += indexes
                .iter()
                .map(|&i| {
                    (self.test[i].chosen.target_count() + self.test[i].rejected.target_count())
                        as u64
                })
                .sum::<u64>();
            chosen.extend(values(&b.chosen_rewards));
            rejected.extend(values(&b.rejected_rewards));
        }
        crate::trainer::EvalMetrics {
            step,
            loss: loss_sum / self.test.len().max(1) as f64,
            tokens,
            rewards: Some(Rewards::of_values(&chosen, &rejected)),
        }
    }
}
