//! Embedding texts as sentence-transformers does: tokenise (truncating to the model's window),
//! run the encoder, mean-pool the token states over the attention mask, L2-normalise.
//!
//! Texts are sorted by token length and cut into batches that stay within a token budget
//! (`max_batch_tokens`, counted after padding), so short texts are not padded to long ones and
//! the attention matrices stay cache-sized.
//!
//! Inference runs on long-lived workers, one ONNX Runtime session and one thread each, fed by one
//! bounded queue (as text-embeddings-inference does): a call tokenises and pads on its own
//! thread, queues its batches, and waits for them; whichever worker is free takes the next batch.
//! A large call spreads over every worker, and concurrent single-text calls (retrieval queries)
//! run side by side instead of waiting for one session. A full queue makes callers wait
//! (backpressure). Inference is blocking: async callers use [`Embedder::embed_async`], which runs
//! it on tokio's blocking pool.

use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use crate::{EmbeddingError, ModelFiles};

/// How an embedder runs.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// ONNX Runtime intra-op threads of each worker; 0 lets ONNX Runtime use every core.
    pub intra_threads: usize,
    /// Sessions that embed batches concurrently, each on its own thread. On a few cores, two
    /// single-threaded workers beat one two-threaded session: no synchronisation per operator.
    pub workers: usize,
    /// Longest input in tokens; longer texts are truncated (the model's window: 256).
    pub max_tokens: usize,
    /// Most tokens in one batch, padding included.
    pub max_batch_tokens: usize,
    /// Most texts in one batch.
    pub max_batch_size: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            intra_threads: 0,
            workers: 1,
            max_tokens: 256,
            max_batch_tokens: 512,
            max_batch_size: 64,
        }
    }
}

/// Batches waiting per worker before callers wait: enough to keep every worker busy.
const QUEUED_PER_WORKER: usize = 4;

/// One padded batch, ready for the encoder.
pub(crate) struct Padded {
    pub(crate) rows: usize,
    pub(crate) width: usize,
    pub(crate) ids: Vec<i64>,
    pub(crate) mask: Vec<i64>,
    pub(crate) types: Vec<i64>,
}

/// A batch's index in its call, and its pooled embeddings row after row.
type Pooled = (usize, Result<Vec<f32>, EmbeddingError>);

/// A batch for a worker, and where its result goes.
struct Job {
    index: usize,
    batch: Padded,
    reply: mpsc::Sender<Pooled>,
}

/// A loaded embedding model.
pub struct Embedder {
    queue: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    tokenizer: Tokenizer,
    model_id: String,
    dimension: usize,
    options: EmbedderOptions,
}

impl Embedder {
    /// Load the tokenizer of `model` and the ONNX file `onnx` on the runtime `environment`, and
    /// start the workers.
    pub fn load(
        environment: &Environment,
        model: &ModelFiles,
        onnx: &Path,
        options: EmbedderOptions,
    ) -> Result<Self, EmbeddingError> {
        let tokenizer = tokenizer(
            &model.dir,
            TruncationParams {
                max_length: options.max_tokens,
                ..Default::default()
            },
        )?;
        let mut sessions = Vec::new();
        for _ in 0..options.workers.max(1) {
            sessions.push(session(environment, onnx, options.intra_threads)?);
        }
        let dimension = sessions[0]
            .outputs()
            .first()
            .and_then(|o| o.dtype().tensor_shape().and_then(|s| s.last().copied()))
            .filter(|d| *d > 0)
            .map(|d| d as usize)
            .ok_or_else(|| EmbeddingError::Model {
                path: onnx.to_path_buf(),
                reason: "the model's output has no fixed hidden size".into(),
            })?;
        let (queue, jobs) = crossbeam_channel::bounded(sessions.len() * QUEUED_PER_WORKER);
        let mut workers = Vec::new();
        for (n, session) in sessions.into_iter().enumerate() {
            let jobs = jobs.clone();
            let worker = std::thread::Builder::new()
                .name(format!("twin-embed-{n}"))
                .spawn(move || work(session, jobs, dimension))
                .map_err(|e| EmbeddingError::Worker(format!("cannot start a worker: {e}")))?;
            workers.push(worker);
        }
        Ok(Self {
            queue: Some(queue),
            workers,
            tokenizer,
            model_id: model.id.clone(),
            dimension,
            options,
        })
    }

    /// The model's id.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Length of every embedding.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Concurrent inference workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The tokenizer, truncating to the model's window (for chunking by tokens).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Embed texts; the result is in the order of `texts`, each L2-normalised.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        let batches = batches(
            &order,
            |i| encodings[i].get_ids().len().max(1),
            &self.options,
        );
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| EmbeddingError::Worker("the embedder is shut down".into()))?;
        let (reply, results) = mpsc::channel();
        for (index, batch) in batches.iter().enumerate() {
            let job = Job {
                index,
                batch: pad(batch, &encodings),
                reply: reply.clone(),
            };
            queue
                .send(job)
                .map_err(|_| EmbeddingError::Worker("every worker has stopped".into()))?;
        }
        drop(reply);
        let mut out = vec![Vec::new(); texts.len()];
        for _ in 0..batches.len() {
            let (index, pooled) = results
                .recv()
                .map_err(|_| EmbeddingError::Worker("a worker stopped mid-batch".into()))?;
            let pooled = pooled?;
            for (r, &i) in batches[index].iter().enumerate() {
                out[i] = pooled[r * self.dimension..(r + 1) * self.dimension].to_vec();
            }
        }
        Ok(out)
    }

    /// [`Embedder::embed`] on tokio's blocking pool, off the async runtime's threads.
    pub async fn embed_async(
        self: &Arc<Self>,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            this.embed(&refs)
        })
        .await
        .map_err(|e| EmbeddingError::Worker(format!("embedding task failed: {e}")))?
    }
}

impl Drop for Embedder {
    fn drop(&mut self) {
        // Closing the queue ends every worker once it has finished its batch.
        self.queue.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The tokenizer of the model in `model_dir`, truncating as `truncation` says and padding
/// nothing (batches are padded by [`pad`]).
pub(crate) fn tokenizer(
    model_dir: &Path,
    truncation: TruncationParams,
) -> Result<Tokenizer, EmbeddingError> {
    let path = model_dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| EmbeddingError::Model {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    tokenizer
        .with_truncation(Some(truncation))
        .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// An ONNX Runtime session of `onnx`, fully optimised, with `intra_threads` (0: every core).
///
/// Measured on the exported MiniLM (batches of 2 x 256 tokens, one thread; see the README):
/// every optimization level runs the fused graph at the same speed, as do the memory arena and
/// memory pattern off, sequential execution and flushing denormals; pinning workers to cores
/// changed nothing. One option mattered: fusing residual `Add`s and `LayerNormalization` into
/// `SkipLayerNormalization` made the encoder 6% slower, so that pass is off.
pub(crate) fn session(
    environment: &Environment,
    onnx: &Path,
    intra_threads: usize,
) -> Result<Session, EmbeddingError> {
    let mut builder = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| EmbeddingError::Runtime(e.into()))?
        .with_disabled_optimizers("SkipLayerNormFusion")
        .map_err(|e| EmbeddingError::Runtime(e.into()))?;
    if intra_threads > 0 {
        builder = builder
            .with_intra_threads(intra_threads)
            .map_err(|e| EmbeddingError::Runtime(e.into()))?;
    }
    Ok(builder.commit_from_file(onnx)?)
}

/// A worker: run batches from the queue on its session until the queue closes.
fn work(mut session: Session, jobs: Receiver<Job>, dimension: usize) {
    for job in jobs.iter() {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_batch(&mut session, &job.batch, dimension)
        }))
        .unwrap_or_else(|_| Err(EmbeddingError::Worker("a batch panicked".into())));
        // The caller may have gone (an error in another batch): nothing to do then.
        let _ = job.reply.send((job.index, result));
    }
}

/// Pad a batch's encodings (`batch` indexes `encodings`) to its longest text.
pub(crate) fn pad(batch: &[usize], encodings: &[tokenizers::Encoding]) -> Padded {
    let width = batch
        .iter()
        .map(|&i| encodings[i].get_ids().len().max(1))
        .max()
        .unwrap_or(1);
    let rows = batch.len();
    let mut padded = Padded {
        rows,
        width,
        ids: vec![0i64; rows * width],
        mask: vec![0i64; rows * width],
        types: vec![0i64; rows * width],
    };
    for (r, &i) in batch.iter().enumerate() {
        let e = &encodings[i];
        for (c, ((&id, &m), &t)) in e
            .get_ids()
            .iter()
            .zip(e.get_attention_mask())
            .zip(e.get_type_ids())
            .enumerate()
        {
            padded.ids[r * width + c] = i64::from(id);
            padded.mask[r * width + c] = i64::from(m);
            padded.types[r * width + c] = i64::from(t);
        }
    }
    padded
}

/// Run one padded batch through the encoder and pool it.
fn run_batch(
    session: &mut Session,
    batch: &Padded,
    dimension: usize,
) -> Result<Vec<f32>, EmbeddingError> {
    let shape = [batch.rows as i64, batch.width as i64];
    let outputs = session.run(ort::inputs![
        "input_ids" => Tensor::from_array((shape, batch.ids.clone()))?,
        "attention_mask" => Tensor::from_array((shape, batch.mask.clone()))?,
        "token_type_ids" => Tensor::from_array((shape, batch.types.clone()))?,
    ])?;
    let (_, hidden) = outputs[0].try_extract_tensor::<f32>()?;
    Ok(mean_pool(
        hidden,
        &batch.mask,
        batch.rows,
        batch.width,
        dimension,
    ))
}

/// Cut `order` (sorted longest first) into batches within the token budget.
fn batches<'a>(
    order: &'a [usize],
    len: impl Fn(usize) -> usize,
    options: &EmbedderOptions,
) -> Vec<&'a [usize]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < order.len() {
        // Longest first: the first text of a batch sets its padded width.
        let width = len(order[start]);
        let fit = (options.max_batch_tokens / width).clamp(1, options.max_batch_size.max(1));
        let end = (start + fit).min(order.len());
        out.push(&order[start..end]);
        start = end;
    }
    out
}

/// Mean of each row's token states over its attention mask, L2-normalised.
fn mean_pool(hidden: &[f32], mask: &[i64], rows: usize, width: usize, dim: usize) -> Vec<f32> {
    let mut pooled = vec![0f32; rows * dim];
    for r in 0..rows {
        let acc = &mut pooled[r * dim..(r + 1) * dim];
        let mut count = 0f32;
        for c in 0..width {
            if mask[r * width + c] == 0 {
                continue;
            }
            count += 1.0;
            let state = &hidden[(r * width + c) * dim..(r * width + c + 1) * dim];
            for (a, s) in acc.iter_mut().zip(state) {
                *a += s;
            }
        }
        let count = count.max(1e-9);
        acc.iter_mut().for_each(|a| *a /= count);
        let norm = acc.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
        acc.iter_mut().for_each(|a| *a /= norm);
    }
    pooled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_token_budget_and_the_size_cap() {
        let lens = [256, 256, 200, 100, 10, 10, 10, 10];
        let order: Vec<usize> = (0..lens.len()).collect();
        let options = EmbedderOptions {
            max_batch_tokens: 512,
            max_batch_size: 3,
            ..Default::default()
        };
        let got: Vec<Vec<usize>> = batches(&order, |i| lens[i], &options)
            .iter()
            .map(|b| b.to_vec())
            .collect();
        assert_eq!(got, vec![vec![0, 1], vec![2, 3], vec![4, 5, 6], vec![7]]);
        // A text longer than the budget still gets a batch of its own.
        let tiny = EmbedderOptions {
            max_batch_tokens: 8,
            ..options
        };
        assert_eq!(batches(&order[..1], |i| lens[i], &tiny).len(), 1);
    }

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        // Two rows of width 2, dim 2; the second row's second token is padding.
        let hidden = [1.0, 0.0, 0.0, 1.0, 3.0, 4.0, 100.0, 100.0];
        let mask = [1, 1, 1, 0];
        let pooled = mean_pool(&hidden, &mask, 2, 2, 2);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((pooled[0] - s).abs() < 1e-6 && (pooled[1] - s).abs() < 1e-6);
        assert!((pooled[2] - 0.6).abs() < 1e-6 && (pooled[3] - 0.8).abs() < 1e-6);
    }
}
