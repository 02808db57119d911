//! Perplexity of the author's answers: each test sample rendered with the model's chat template
//! as training renders it, and the mean negative log-likelihood of the answer's tokens (the
//! prompt's are not counted), exponentiated. Lower means the model finds the author's text
//! less surprising. Two models compare on it only when they share a tokenizer (a base and its
//! fine-tuned versions do): a token is the unit it averages over.

use serde::{Deserialize, Serialize};
use tch::Device;
use twin_config::DataLayout;
use twin_datasets::Sample;
use twin_training::data::{self, Tokenising};
use twin_training::{job, tokenizer, trainer};

use crate::Result;

/// The perplexity of a model on the reference answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// Mean negative log-likelihood per answer token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Answer tokens counted.
    pub tokens: u64,
    /// Samples counted.
    pub samples: usize,
    /// Samples left out: longer than the model's context.
    pub too_long: usize,
}

/// What an evaluation records of the model it loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFacts {
    /// `llama`, `qwen2`, ...
    pub family: String,
    /// Parameters.
    pub parameters: i64,
    /// Context length, tokens.
    pub context: usize,
}

/// The perplexity of `model` (a checkpoint folder, adapter folder or registry reference) on the
/// answers of `samples`, `batch` rows at a time, on a GPU when libtorch sees one.
pub fn perplexity(
    layout: &DataLayout,
    model: &str,
    samples: &[&Sample],
    batch: usize,
) -> Result<(Perplexity, ModelFacts)> {
    let (lm, dir) = job::load_model(layout, model, Device::cuda_if_available())?;
    let tokenizer = tokenizer::load(&dir)?;
    let template = tokenizer::template(&dir, &lm.config, &tokenizer, None)?;
    let context = lm.config.max_positions.max(1) as usize;
    let tokenising = Tokenising {
        template: &template,
        tokenizer: &tokenizer,
        max_seq_len: context,
        answer_only: true,
    };
    let mut examples = Vec::new();
    let mut too_long = 0;
    for sample in samples {
        match tokenising.example(sample)? {
            Some(example) if example.ids.len() <= context => examples.push(example),
            Some(_) => too_long += 1,
            None => {}
        }
    }
    let rows = data::rows(&examples, context, false);
    let pad = lm.config.eos_token_id.unwrap_or(0);
    let metrics = trainer::evaluate(&lm, &rows, batch, pad, 0);
    Ok((
        Perplexity {
            loss: metrics.loss,
            perplexity: metrics.loss.exp(),
            tokens: metrics.tokens,
            samples: examples.len(),
            too_long,
        },
        ModelFacts {
            family: lm.config.family.model_type().to_string(),
            parameters: lm.config.parameter_count(),
            context,
        },
    ))
}

/// The perplexity of `model` on each of `texts` as plain text (no template; every token after
/// the first counted): how expected a text is to that model. The demo scores the twin's answer
/// under the base model with it, beside the author's own passages.
pub fn text_perplexities(layout: &DataLayout, model: &str, texts: &[String]) -> Result<Vec<f64>> {
    let (lm, dir) = job::load_model(layout, model, Device::cuda_if_available())?;
    let tokenizer = tokenizer::load(&dir)?;
    let context = lm.config.max_positions.max(2) as usize;
    let pad = lm.config.eos_token_id.unwrap_or(0);
    let mut scores = Vec::with_capacity(texts.len());
    for text in texts {
        let ids: Vec<i64> = twin_chat::checkpoint::encode(&tokenizer, text, false)
            .map_err(twin_training::TrainingError::from)?
            .into_iter()
            .take(context)
            .map(i64::from)
            .collect();
        if ids.len() < 2 {
            scores.push(f64::NAN);
            continue;
        }
        let targets = (0..ids.len()).map(|i| i > 0).collect();
        let rows = data::rows(&[data::Example { ids, targets }], context, false);
        let metrics = trainer::evaluate(&lm, &rows, 1, pad, 0);
        scores.push(metrics.loss.exp());
    }
    Ok(scores)
}
