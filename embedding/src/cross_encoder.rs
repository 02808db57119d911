//! A cross-encoder: a BERT sequence classifier that reads a query and a passage together and
//! scores how well the passage answers the query, as sentence-transformers' `CrossEncoder`
//! computes it (the pair tokenised as `[CLS] query [SEP] passage [SEP]`, truncated longest first
//! to the model's window; the score is the first logit, before any activation).
//!
//! It re-ranks a few dozen candidates per query, so it is one ONNX Runtime session behind a
//! lock, fed batches of pairs; async callers use [`CrossEncoder::score_async`], which runs it on
//! tokio's blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams, TruncationStrategy};

use crate::embedder::{pad, session, tokenizer};
use crate::{EmbeddingError, ModelFiles};

/// How a cross-encoder runs.
#[derive(Debug, Clone)]
pub struct CrossEncoderOptions {
    /// Longest pair in tokens; longer ones lose tokens from the longer side first.
    pub max_tokens: usize,
    /// Most pairs in one batch.
    pub max_batch_size: usize,
    /// ONNX Runtime intra-op threads; 0 lets ONNX Runtime use every core.
    pub intra_threads: usize,
}

impl Default for CrossEncoderOptions {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            max_batch_size: 32,
            intra_threads: 0,
        }
    }
}

/// A loaded cross-encoder.
pub struct CrossEncoder {
    session: Mutex<Session>,
    tokenizer: Tokenizer,
    model_id: String,
    options: CrossEncoderOptions,
}

impl CrossEncoder {
    /// Load the tokenizer of `model` and its exported ONNX file `onnx` (whose output must be
    /// `logits`: the checkpoint a `BertForSequenceClassification`).
    pub fn load(
        environment: &Environment,
        model: &ModelFiles,
        onnx: &Path,
        options: CrossEncoderOptions,
    ) -> Result<Self, EmbeddingError> {
        let tokenizer = tokenizer(
            &model.dir,
            TruncationParams {
                max_length: options.max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            },
        )?;
        let session = session(environment, onnx, options.intra_threads)?;
        if session.outputs().first().map(|o| o.name()) != Some("logits") {
            return Err(EmbeddingError::Model {
                path: model.dir.clone(),
                reason: "not a cross-encoder: its config.json does not name \
                         BertForSequenceClassification among its architectures"
                    .into(),
            });
        }
        Ok(Self {
            session: Mutex::new(session),
            tokenizer,
            model_id: model.id.clone(),
            options,
        })
    }

    /// The model's id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The score of each passage for `query`, in the order of `passages`: higher is more
    /// relevant.
    pub fn score(&self, query: &str, passages: &[&str]) -> Result<Vec<f32>, EmbeddingError> {
        let mut scores = Vec::with_capacity(passages.len());
        for batch in passages.chunks(self.options.max_batch_size.max(1)) {
            let pairs: Vec<EncodeInput> = batch
                .iter()
                .map(|p| EncodeInput::Dual(query.into(), (*p).into()))
                .collect();
            let encodings = self
                .tokenizer
                .encode_batch(pairs, true)
                .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
            let all: Vec<usize> = (0..encodings.len()).collect();
            let batch = pad(&all, &encodings);
            let shape = [batch.rows as i64, batch.width as i64];
            let mut session = self
                .session
                .lock()
                .map_err(|_| EmbeddingError::Worker("a re-ranking panicked".into()))?;
            let outputs = session.run(ort::inputs![
                "input_ids" => Tensor::from_array((shape, batch.ids))?,
                "attention_mask" => Tensor::from_array((shape, batch.mask))?,
                "token_type_ids" => Tensor::from_array((shape, batch.types))?,
            ])?;
            let (shape, logits) = outputs[0].try_extract_tensor::<f32>()?;
            let labels = shape.get(1).copied().unwrap_or(1).max(1) as usize;
            scores.extend(logits.chunks(labels).map(|row| row[0]));
        }
        Ok(scores)
    }

    /// [`CrossEncoder::score`] on tokio's blocking pool.
    pub async fn score_async(
        self: &Arc<Self>,
        query: String,
        passages: Vec<String>,
    ) -> Result<Vec<f32>, EmbeddingError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = passages.iter().map(String::as_str).collect();
            this.score(&query, &refs)
        })
        .await
        .map_err(|e| EmbeddingError::Worker(format!("re-ranking task failed: {e}")))?
    }
}
