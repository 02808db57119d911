//! AdamW, the learning-rate schedule and gradient clipping, written out (rather than tch's
//! optimizer) so that the optimizer's moments can be saved in a checkpoint and a resumed run
//! continues exactly where it stopped. The arithmetic is PyTorch's `AdamW`.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};
use twin_config::LrSchedule;

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    /// Decoupled weight decay (applied to matrices only).
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    settings: AdamWSettings,
    /// First moments, by parameter name.
    pub exp_avg: BTreeMap<String, Tensor>,
    /// Second moments, by parameter name.
    pub exp_avg_sq: BTreeMap<String, Tensor>,
    /// Steps taken.
    pub step: u64,
}

impl AdamW {
    /// Zero moments for `params`.
    pub fn new(settings: AdamWSettings, params: &BTreeMap<String, Tensor>) -> Self {
        let zeros = |t: &Tensor| Tensor::zeros_like(t).set_requires_grad(false);
        Self {
            settings,
            exp_avg: params.iter().map(|(k, t)| (k.clone(), zeros(t))).collect(),
            exp_avg_sq: params.iter().map(|(k, t)| (k.clone(), zeros(t))).collect(),
            step: 0,
        }
    }

    /// One update of every parameter that has a gradient, at learning rate `lr`.
    pub fn step(&mut self, params: &BTreeMap<String, Tensor>, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.step += 1;
        let s = self.settings;
        let bias1 = 1.0 - s.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - s.beta2.powi(self.step as i32)).sqrt();
        for (name, p) in params {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let mut p = p.shallow_clone();
            if s.weight_decay > 0.0 && p.dim() >= 2 {
                let _ = p.g_mul_scalar_(1.0 - lr * s.weight_decay);
            }
            let mut m = self.exp_avg[name].shallow_clone();
            let mut v = self.exp_avg_sq[name].shallow_clone();
            let _ = m.g_mul_scalar_(s.beta1);
            let _ = m.g_add_(&(&g * (1.0 - s.beta1)));
            let _ = v.g_mul_scalar_(s.beta2);
            let _ = v.g_add_(&(&g * &g * (1.0 - s.beta2)));
            let denom = v.sqrt() / bias2_sqrt + s.eps;
            let _ = p.g_sub_(&(m / denom * (lr / bias1)));
        }
    }
}

/// Clear the gradients of `params`.
pub fn zero_grad(params: &BTreeMap<String, Tensor>) {
    for p in params.values() {
        let mut p = p.shallow_clone();
        p.zero_grad();
    }
}

/// Scale gradients down to a global norm of `max_norm` (as `clip_grad_norm_`); returns the
/// norm before clipping.
pub fn clip_grad_norm(params: &BTreeMap<String, Tensor>, max_norm: f64) -> f64 {
    let _guard = tch::no_grad_guard();
    let grads: Vec<Tensor> = params
        .values()
        .map(|p| p.grad())
        .filter(Tensor::defined)
        .collect();
    if grads.is_empty() {
        return 0.0;
    }
    let squares: Vec<Tensor> = grads
        .iter()
        .map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float))
        .collect();
    let total = Tensor::stack(&squares, 0)
        .sum(Kind::Float)
        .sqrt()
        .double_value(&[]);
    if max_norm > 0.0 {
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
    }
    total
}

/// The learning rate of optimizer step `step` (0-based) of `total`, as transformers'
/// schedulers: linear warm-up from 0, then the decay.
pub fn learning_rate(peak: f64, schedule: LrSchedule, warmup: u64, step: u64, total: u64) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        LrSchedule::Constant => peak,
        LrSchedule::Linear => peak * (1.0 - progress).max(0.0),
        LrSchedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, step| learning_rate(1.0, s, 10, step, 110);
        assert_eq!(lr(LrSchedule::Cosine, 0), 0.0);
        assert!((lr(LrSchedule::Cosine, 5) - 0.5).abs() < 1e-12);
        assert!((lr(LrSchedule::Cosine, 10) - 1.0).abs() < 1e-12);
        assert!((lr(LrSchedule::Cosine, 60) - 0.5).abs() < 1e-12);
        assert!((lr(LrSchedule::Linear, 60) - 0.5).abs() < 1e-12);
        assert_eq!(lr(LrSchedule::Constant, 100), 1.0);
    }

    #[test]
    fn adamw_matches_pytorch_on_one_parameter() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01), p = [[1, -2]], three steps with
        // the gradient [[0.5, 0.25]] (PyTorch 1.13.1 gives [[0.6973029, -2.2937059]]).
        let p = Tensor::of_slice(&[1.0f32, -2.0])
            .reshape(&[1, 2])
            .set_requires_grad(true);
        let params: BTreeMap<String, Tensor> = [("p".to_string(), p.shallow_clone())].into();
        let mut opt = AdamW::new(
            AdamWSettings {
                weight_decay: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            &params,
        );
        for _ in 0..3 {
            zero_grad(&params);
            (&p * Tensor::of_slice(&[0.5f32, 0.25]).reshape(&[1, 2]))
                .sum(Kind::Float)
                .backward();
            opt.step(&params, 0.1);
        }
        let got = Vec::<f32>::from(&p.detach().reshape(&[-1]));
        let expected = [0.697_303f32, -2.293_706];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?} vs {expected:?}");
        }
    }
}
