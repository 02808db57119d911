//! Choosing the next token from a row of logits, as transformers' `generate` does: repetition
//! penalty, then temperature, top-k and top-p, then a draw from what is left (or the most likely
//! token, greedy, at temperature 0). Each request draws from its own generator seeded by its
//! seed, so the same seed gives the same tokens whoever else is in the batch.

use serde::{Deserialize, Serialize};

use crate::ServingError;

/// How a request wants its tokens chosen and when to stop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Most tokens to generate; `None`: up to [`DEFAULT_MAX_TOKENS`], or what the context has
    /// left if that is less.
    pub max_tokens: Option<usize>,
    /// Softmax temperature; 0 chooses greedily.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities add up to `top_p`; 1 keeps all.
    pub top_p: f32,
    /// Above 1, makes tokens already in the text less likely (CTRL's penalty, as transformers
    /// applies it); 1 is off.
    pub repetition_penalty: f32,
    /// Seed of the request's random draws; `None`: a fresh one, reported with the result.
    pub seed: Option<u64>,
    /// Texts that end the generation; the text returned stops before them.
    pub stop: Vec<String>,
    /// Tokens that end the generation, besides the model's end-of-sequence tokens.
    pub stop_token_ids: Vec<u32>,
    /// Go on past the model's end-of-sequence tokens (benchmarks that need a fixed length).
    pub ignore_eos: bool,
}

/// Tokens generated when a request does not say.
pub const DEFAULT_MAX_TOKENS: usize = 256;
/// Most stop sequences a request may give.
pub const MAX_STOP_SEQUENCES: usize = 16;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_tokens: None,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: None,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Refuse what makes no sense, saying which parameter and why.
    pub fn validate(&self, vocab_size: usize) -> Result<(), ServingError> {
        let bad = |name: &str, reason: String| {
            Err(ServingError::InvalidParameter {
                name: name.into(),
                reason,
            })
        };
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(
                "temperature",
                format!(
                    "{} is not allowed: use 0 (greedy) or a positive number",
                    self.temperature
                ),
            );
        }
        if !self.top_p.is_finite() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition_penalty",
                format!(
                    "{} is not allowed: it must be positive (1 is off)",
                    self.repetition_penalty
                ),
            );
        }
        if self.max_tokens == Some(0) {
            return bad("max_tokens", "must be at least 1".into());
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad(
                "stop",
                format!(
                    "{} stop sequences given, at most {MAX_STOP_SEQUENCES} allowed",
                    self.stop.len()
                ),
            );
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "an empty stop sequence would stop at once".into());
        }
        if let Some(id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= vocab_size)
        {
            return bad(
                "stop_token_ids",
                format!("{id} is not a token of this model (vocabulary of {vocab_size})"),
            );
        }
        Ok(())
    }
}

/// SplitMix64: small, fast and the same on every platform, so a seed means the same draws
/// everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Choose the next token from `logits` (changed in place) after `history` (the prompt and what
/// was generated).
pub fn next_token(
    logits: &mut [f32],
    history: &[u32],
    params: &SamplingParams,
    rng: &mut Rng,
) -> u32 {
    if params.repetition_penalty != 1.0 {
        let penalty = params.repetition_penalty;
        let mut seen = std::collections::HashSet::with_capacity(history.len());
        for &id in history {
            let Some(logit) = logits.get_mut(id as usize) else {
                continue;
            };
            if seen.insert(id) {
                *logit = if *logit < 0.0 {
                    *logit * penalty
                } else {
                    *logit / penalty
                };
            }
        }
    }
    if params.temperature == 0.0 {
        return argmax(logits);
    }
    let temperature = params.temperature;
    // Candidates, most likely first: the top k, or as many as top-p needs (found by growing a
    // partial sort rather than sorting the whole vocabulary).
    let n = logits.len();
    let limit = if params.top_k > 0 {
        params.top_k.min(n)
    } else {
        n
    };
    let mut take = if params.top_p < 1.0 {
        limit.min(64)
    } else {
        limit
    };
    let mut order: Vec<u32> = (0..n as u32).collect();
    let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    let max = logits[argmax(logits) as usize];
    let weight = |id: u32| (((logits[id as usize] - max) / temperature) as f64).exp();
    // The normaliser over every candidate the top-k filter leaves.
    let total: f64 = if limit < n {
        order.select_nth_unstable_by(limit - 1, by_logit);
        order[..limit].iter().map(|&id| weight(id)).sum()
    } else {
        logits
            .iter()
            .map(|&l| (((l - max) / temperature) as f64).exp())
            .sum()
    };
    if limit == n && params.top_p >= 1.0 {
        // Nothing cut: draw over the whole vocabulary, no sorting needed.
        let mut draw = rng.next_f64() * total;
        for (id, &l) in logits.iter().enumerate() {
            draw -= (((l - max) / temperature) as f64).exp();
            if draw < 0.0 {
                return id as u32;
            }
        }
        return argmax(logits);
    }
    let kept = loop {
        if take < limit {
            order[..limit].select_nth_unstable_by(take - 1, by_logit);
        }
        order[..take].sort_unstable_by(by_logit);
        if params.top_p >= 1.0 {
            break take;
        }
        let mut cumulative = 0.0;
        let mut crossed = None;
        for (i, &id) in order[..take].iter().enumerate() {
            cumulative += weight(id) / total;
            if cumulative >= params.top_p as f64 {
                crossed = Some(i + 1);
                break;
            }
        }
        match crossed {
            Some(k) => break k,
            None if take >= limit => break take,
            None => take = (take * 4).min(limit),
        }
    };
    let candidates = &order[..kept.max(1)];
    let mass: f64 = candidates.iter().map(|&id| weight(id)).sum();
    let mut draw = rng.next_f64() * mass;
    for &id in candidates {
        draw -= weight(id);
        if draw < 0.0 {
            return id;
        }
    }
    candidates[candidates.len() - 1]
}

/// The index of the largest logit (the first, on ties, as `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(logits: &[f32], params: &SamplingParams, draws: usize) -> Vec<usize> {
        let mut rng = Rng::new(7);
        let mut out = vec![0; logits.len()];
        for _ in 0..draws {
            let mut l = logits.to_vec();
            out[next_token(&mut l, &[], params, &mut rng) as usize] += 1;
        }
        out
    }

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let mut logits = vec![0.1, 3.0, 3.0, -1.0];
        assert_eq!(
            next_token(
                &mut logits,
                &[],
                &SamplingParams::greedy(),
                &mut Rng::new(1)
            ),
            1
        );
    }

    #[test]
    fn sampling_follows_the_softmax() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln()];
        let c = counts(&logits, &SamplingParams::default(), 10_000);
        // Probabilities 0.1, 0.2, 0.7.
        for (seen, p) in c.iter().zip([0.1, 0.2, 0.7]) {
            let freq = *seen as f64 / 10_000.0;
            assert!((freq - p).abs() < 0.02, "{c:?}");
        }
    }

    #[test]
    fn top_k_and_top_p_cut_the_tail() {
        let logits = [0.0f32, (2.0f32).ln(), (7.0f32).ln(), (10.0f32).ln()];
        let top_k = SamplingParams {
            top_k: 2,
            ..SamplingParams::default()
        };
        let c = counts(&logits, &top_k, 2_000);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        assert!(c[2] > 0 && c[3] > 0);
        // 10/20 = 0.5 alone is below 0.6; with 7/20 it crosses: two tokens stay.
        let top_p = SamplingParams {
            top_p: 0.6,
            ..SamplingParams::default()
        };
        let c = counts(&logits, &top_p, 2_000);
        assert_eq!((c[0], c[1]), (0, 0), "{c:?}");
        assert!(c[2] > 0 && c[3] > 0);
        // A large vocabulary where the nucleus needs more than the first partial sort.
        let wide: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.001).collect();
        let c = counts(
            &wide,
            &SamplingParams {
                top_p: 0.5,
                ..SamplingParams::default()
            },
            3_000,
        );
        let last = c.iter().rposition(|&n| n > 0).unwrap_or(0);
        // Probabilities fall as e^(-i/1000): half the mass lies in the first 380 tokens.
        assert!((360..=380).contains(&last), "nucleus ends at {last}");
    }

    #[test]
    fn repetition_penalty_lowers_seen_tokens_as_transformers_does() {
        let mut logits = vec![2.0, -2.0, 1.0];
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        assert_eq!(
            next_token(&mut logits, &[0, 1, 0], &params, &mut Rng::new(1)),
            0
        );
        assert_eq!(logits, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20)
                .map(|_| {
                    next_token(
                        &mut logits.clone(),
                        &[],
                        &SamplingParams::default(),
                        &mut rng,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn nonsensical_parameters_are_refused_by_name() {
        let cases = [
            (
                SamplingParams {
                    temperature: -0.5,
                    ..SamplingParams::default()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    top_p: 1.5,
                    ..SamplingParams::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    top_p: 0.0,
                    ..SamplingParams::default()
                },
                "top_p",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..SamplingParams::default()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    max_tokens: Some(0),
                    ..SamplingParams::default()
                },
                "max_tokens",
            ),
            (
                SamplingParams {
                    stop: vec![String::new()],
                    ..SamplingParams::default()
                },
                "stop",
            ),
            (
                SamplingParams {
                    stop_token_ids: vec![99],
                    ..SamplingParams::default()
                },
                "stop_token_ids",
            ),
        ];
        for (params, name) in cases {
            let err = params.validate(10).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(SamplingParams::default().validate(10).is_ok());
    }
}
