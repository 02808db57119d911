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
