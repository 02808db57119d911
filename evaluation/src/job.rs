//! A whole evaluation of one model on a dataset's test split, and its record.
//!
//! 1. Perplexity of the author's answers, on libtorch ([`crate::perplexity`]).
//! 2. An answer to each test instruction, generated on ONNX Runtime by the model's export with
//!    the seed `seed + i` for sample `i` (so an evaluation repeats), all submitted at once so
//!    that the engine batches them.
//! 3. Each answer scored against the author's: cosine similarity of their embeddings (the
//!    pipeline's embedder), ROUGE-L, length ratio; and with a judge, its accuracy and style.
//!
//! Nothing is recorded until every part has succeeded. Then the evaluation is a metric row of
//! kind `evaluation` on the run that trained the model (found through the registry's lineage),
//! or, for a model no run of ours trained (a base checkpoint), on an evaluation run of its own
//! that its later evaluations share; the answers, scores and the
//! judge's reasons go to `runs/RUN/evaluations/eval-TIME.jsonl`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use twin_chat::Message;
use twin_config::{DataLayout, EvaluationConfig, TrainingConfig};
use twin_datasets::{Sample, Split};
use twin_embedding::Embedder;
use twin_serving::{Engine, EngineOptions, GenerationRequest, Prompt, SamplingParams};
use twin_training::registry;
use twin_training::runs::{self, RunInfo, RunKind};
use twin_warehouse::{MetricRow, Warehouse};

use crate::judge::{Judge, Verdict};
use crate::perplexity::{self, Perplexity};
use crate::scores;
use crate::{EvalError, Result};

/// The kind of the metric rows that hold evaluations.
pub const ROW_KIND: &str = "evaluation";

/// One evaluation of one model on one dataset's test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The model, as it was named.
    pub model: String,
    /// Its family and size.
    pub family: String,
    /// Its parameters.
    pub parameters: i64,
    /// The dataset's id (or file).
    pub dataset: String,
    /// The snapshot the dataset was built from.
    pub snapshot_id: Option<String>,
    /// Test samples evaluated.
    pub samples: usize,
    /// Perplexity of the reference answers.
    pub perplexity: Perplexity,
    /// The generated answers' scores.
    pub generation: GenerationScores,
    /// The judge's mean scores, when there was a judge.
    pub judge: Option<JudgeScores>,
    /// The code that evaluated.
    pub code_version: String,
    /// When, ms since the epoch.
    pub created_at: i64,
    /// Seconds it took.
    pub seconds: f64,
    /// The run it is recorded with (once recorded).
    #[serde(default)]
    pub run_id: Option<String>,
    /// The answers, their scores and the judge's reasons, one JSON line each (once recorded).
    #[serde(default)]
    pub answers_file: Option<PathBuf>,
}

/// Means over the generated answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationScores {
    /// Answers generated.
    pub answers: usize,
    /// Samples whose prompt left no room in the context to answer.
    pub too_long: usize,
    /// Mean cosine similarity of answer and reference embeddings.
    pub cosine: f64,
    /// Mean ROUGE-L F-measure against the reference.
    pub rouge_l: f64,
    /// Mean of answer words over reference words.
    pub length_ratio: f64,
    /// The embedding model.
    pub embedder: String,
    /// Most tokens per answer.
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Nucleus sampling.
    pub top_p: f32,
    /// Sample `i` was drawn with `seed + i`.
    pub seed: u64,
    /// Tokens generated per second, all answers together.
    pub tokens_per_second: f64,
}

/// The judge's means (1 to 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeScores {
    /// The judge's endpoint, model and prompts' version.
    pub judge: String,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean style.
    pub style: f64,
    /// Answers judged.
    pub judged: usize,
}

/// One test sample's answer and its scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// The sample's place in the test split.
    pub index: usize,
    /// What was asked.
    pub instruction: String,
    /// The author's answer.
    pub reference: String,
    /// The model's answer.
    pub answer: String,
    /// `stop` or `length`.
    pub finish_reason: String,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Cosine similarity of the two answers' embeddings.
    pub cosine: f64,
    /// ROUGE-L F-measure.
    pub rouge_l: f64,
    /// Answer words over reference words.
    pub length_ratio: Option<f64>,
    /// The judge's verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// The test split of a dataset.
#[derive(Debug, Clone)]
pub struct TestSplit {
    /// The dataset's id (or file).
    pub dataset: String,
    /// Its snapshot.
    pub snapshot_id: Option<String>,
    /// The samples evaluated, in the split's order.
    pub samples: Vec<Sample>,
    /// Test samples in the dataset (before `samples` is limited).
    pub available: usize,
}

/// One model to evaluate.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// A checkpoint folder, adapter folder or registry reference (for perplexity on libtorch).
    pub model: String,
    /// Its ONNX export (for generation).
    pub onnx_dir: PathBuf,
}

/// Told what an evaluation is doing.
pub trait Progress: Send + Sync {
    /// A phase begins: `total` things to do.
    fn phase(&self, _model: &str, _phase: &str, _total: usize) {}
    /// One more done.
    fn advance(&self) {}
    /// Everything is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// What evaluations share: where things are, the embedder, the judge, the settings.
pub struct Evaluator {
    /// The data folder's layout (registry, runs).
    pub layout: DataLayout,
    /// Where datasets are read and results recorded.
    pub warehouse: Arc<dyn Warehouse>,
    /// The embedder of the cosine similarity.
    pub embedder: Arc<Embedder>,
    /// The judge, if any.
    pub judge: Option<Judge>,
    /// `[evaluation]` with the options over it.
    pub settings: EvaluationConfig,
    /// How the generation engine batches.
    pub engine: EngineOptions,
    /// Progress.
    pub progress: Arc<dyn Progress>,
}

impl Evaluator {
    /// The test split of `dataset` (an id, name or prefix, or a file or folder of samples),
    /// its first `settings.samples` samples (all with 0).
    pub async fn test_split(&self, dataset: &str) -> Result<TestSplit> {
        let (samples, id, snapshot) =
            twin_training::job::load_dataset(self.warehouse.as_ref(), dataset).await?;
        let test: Vec<Sample> = samples
            .into_iter()
            .filter(|(split, _)| *split == Split::Test)
            .map(|(_, sample)| sample)
            .collect();
        if test.is_empty() {
            return Err(EvalError::Invalid(format!(
                "{id} has no test split to evaluate on: build it with a test fraction above 0 \
                 (twin dataset build --test-fraction 0.1), or give a folder with a test.jsonl"
            )));
        }
        let available = test.len();
        let limit = match self.settings.samples {
            0 => available,
            n => n.min(available),
        };
        Ok(TestSplit {
            dataset: id,
            snapshot_id: snapshot.map(|s| s.id),
            samples: test.into_iter().take(limit).collect(),
            available,
        })
    }

    /// Evaluate one model on `split`. Nothing is recorded: see [`Evaluator::record`].
    pub async fn evaluate(
        &self,
        request: &EvalRequest,
        split: &TestSplit,
    ) -> Result<(Evaluation, Vec<Answer>)> {
        let started = Instant::now();
        let created_at = twin_datasets::build::now_ms();
        let settings = &self.settings;
        if settings.batch_size == 0 {
            return Err(EvalError::Invalid(
                "the evaluation's batch size must be at least 1".into(),
            ));
        }
        // Checked before any time is spent.
        let check = SamplingParams {
            temperature: settings.temperature,
            top_p: settings.top_p,
            ..SamplingParams::default()
        };
        check.validate(usize::MAX)?;

        self.progress
            .phase(&request.model, "perplexity", split.samples.len());
        let (perplexity, facts) = {
            let layout = self.layout.clone();
            let model = request.model.clone();
            let samples = split.samples.clone();
            let batch = settings.batch_size;
            tokio::task::spawn_blocking(move || {
                let refs: Vec<&Sample> = samples.iter().collect();
                perplexity::perplexity(&layout, &model, &refs, batch)
            })
            .await
            .map_err(|e| EvalError::Invalid(format!("perplexity: {e}")))??
        };
        tracing::info!(
            model = %request.model,
            perplexity = perplexity.perplexity,
            tokens = perplexity.tokens,
            "perplexity of the reference answers"
        );

        let (mut answers, too_long, tokens_per_second) =
            self.generate(request, &split.samples).await?;
        if answers.is_empty() {
            return Err(EvalError::Invalid(format!(
                "no test sample of {} leaves room to answer in {}'s context of {} tokens",
                split.dataset, request.model, facts.context
            )));
        }
        self.score(&mut answers).await?;
        let judge = match &self.judge {
            Some(judge) => Some(self.judge_all(judge, &request.model, &mut answers).await?),
            None => None,
        };
        let evaluation = Evaluation {
            model: request.model.clone(),
            family: facts.family,
            parameters: facts.parameters,
            dataset: split.dataset.clone(),
            snapshot_id: split.snapshot_id.clone(),
            samples: split.samples.len(),
            perplexity,
            generation: GenerationScores {
                answers: answers.len(),
                too_long,
                cosine: scores::mean(answers.iter().map(|a| a.cosine)).unwrap_or(0.0),
                rouge_l: scores::mean(answers.iter().map(|a| a.rouge_l)).unwrap_or(0.0),
                length_ratio: scores::mean(answers.iter().filter_map(|a| a.length_ratio))
                    .unwrap_or(0.0),
                embedder: self.embedder.model_id().to_string(),
                max_tokens: settings.max_tokens,
                temperature: settings.temperature,
                top_p: settings.top_p,
                seed: settings.seed,
                tokens_per_second,
            },
            judge,
            code_version: runs::code_version(),
            created_at,
            seconds: started.elapsed().as_secs_f64(),
            run_id: None,
            answers_file: None,
        };
        Ok((evaluation, answers))
    }

    /// An answer to each sample, generated with its own seed; returns the answers, the samples
    /// that left no room to answer, and tokens per second.
    async fn generate(
        &self,
        request: &EvalRequest,
        samples: &[Sample],
    ) -> Result<(Vec<Answer>, usize, f64)> {
        let dir = request.onnx_dir.clone();
        let options = self.engine.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::load(&dir, options))
            .await
            .map_err(|e| EvalError::Invalid(format!("loading the ONNX model: {e}")))??;
        let context = engine.info().context_length;
        let budget = self.engine.max_batch_tokens;
        let settings = &self.settings;
        let started = Instant::now();
        let mut running = Vec::new();
        let mut too_long = 0;
        for (index, sample) in samples.iter().enumerate() {
            let mut messages = Vec::new();
            if let Some(system) = &sample.system {
                messages.push(Message::new("system", system.clone()));
            }
            messages.push(Message::new("user", sample.prompt()));
            let prompt = Prompt::Chat(messages);
            let length = engine.tokenize(&prompt)?.len();
            let room = context.min(budget).saturating_sub(length);
            if room == 0 {
                too_long += 1;
                continue;
            }
            let params = SamplingParams {
                max_tokens: Some(settings.max_tokens.max(1).min(room)),
                temperature: settings.temperature,
                top_p: settings.top_p,
                seed: Some(settings.seed.wrapping_add(index as u64)),
                ..SamplingParams::default()
            };
            let generation = engine.submit(GenerationRequest { prompt, params })?;
            running.push((index, sample, generation));
        }
        self.progress
            .phase(&request.model, "answers", running.len());
        let mut answers = Vec::new();
        let mut tokens = 0;
        for (index, sample, generation) in running {
            let done = generation.collect().await?;
            tokens += done.completion_tokens;
            answers.push(Answer {
                index,
                instruction: sample.prompt(),
                reference: sample.output.clone(),
                answer: done.text.trim().to_string(),
                finish_reason: format!("{:?}", done.finish_reason).to_lowercase(),
                completion_tokens: done.completion_tokens,
                cosine: 0.0,
                rouge_l: 0.0,
                length_ratio: None,
                verdict: None,
            });
            self.progress.advance();
        }
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        Ok((answers, too_long, tokens as f64 / seconds))
    }

    /// Cosine, ROUGE-L and length ratio of each answer.
    async fn score(&self, answers: &mut [Answer]) -> Result<()> {
        let texts: Vec<String> = answers
            .iter()
            .flat_map(|a| [a.answer.clone(), a.reference.clone()])
            .collect();
        let vectors = self.embedder.embed_async(texts).await?;
        for (answer, pair) in answers.iter_mut().zip(vectors.chunks(2)) {
            answer.cosine = scores::cosine(&pair[0], &pair[1]);
            answer.rouge_l = scores::rouge_l(&answer.reference, &answer.answer);
            answer.length_ratio = scores::length_ratio(&answer.reference, &answer.answer);
        }
        Ok(())
    }

    /// The judge's verdict on every answer; the first that fails fails it all.
    async fn judge_all(
        &self,
        judge: &Judge,
        model: &str,
        answers: &mut [Answer],
    ) -> Result<JudgeScores> {
        self.progress.phase(model, "judge", answers.len());
        let verdicts: Vec<Verdict> = futures::stream::iter(answers.iter())
            .map(|a| async move {
                let verdict = judge
                    .judge(a.index, &a.instruction, &a.reference, &a.answer)
                    .await;
                self.progress.advance();
                verdict
            })
            .buffered(judge.concurrency())
            .try_collect()
            .await?;
        for (answer, verdict) in answers.iter_mut().zip(verdicts) {
            answer.verdict = Some(verdict);
        }
        let mean = |f: fn(&Verdict) -> u8| {
            scores::mean(
                answers
                    .iter()
                    .filter_map(|a| a.verdict.as_ref())
                    .map(|v| f64::from(f(v))),
            )
            .unwrap_or(0.0)
        };
        Ok(JudgeScores {
            judge: judge.name(),
            accuracy: mean(|v| v.accuracy.score),
            style: mean(|v| v.style.score),
            judged: answers.len(),
        })
    }

    /// Record `evaluation` (and its answers) with the run that trained its model, or with a
    /// run of its own; sets its `run_id` and `answers_file`.
    pub async fn record(&self, evaluation: &mut Evaluation, answers: &[Answer]) -> Result<String> {
        let run_id = match self.training_run(&evaluation.model).await? {
            Some(run_id) => run_id,
            None => self.evaluation_run(evaluation).await?,
        };
        let dir = self.layout.runs().join(&run_id).join("evaluations");
        std::fs::create_dir_all(&dir).map_err(|source| EvalError::Io {
            path: dir.clone(),
            source,
        })?;
        let file = dir.join(format!("eval-{}.jsonl", evaluation.created_at));
        let mut lines = String::new();
        for answer in answers {
            lines.push_str(&serde_json::to_string(answer).unwrap_or_default());
            lines.push('\n');
        }
        std::fs::write(&file, lines).map_err(|source| EvalError::Io {
            path: file.clone(),
            source,
        })?;
        evaluation.run_id = Some(run_id.clone());
        evaluation.answers_file = Some(file);
        self.warehouse
            .put_run_metrics(&[MetricRow {
                run_id: run_id.clone(),
                kind: ROW_KIND.into(),
                // Keyed by time: each evaluation of a run is a row of its own.
                step: evaluation.created_at.max(0) as u64,
                body: serde_json::to_string(evaluation).unwrap_or_default(),
            }])
            .await?;
        Ok(run_id)
    }

    /// The run that trained `model`, when it is a registry reference whose run is recorded.
    async fn training_run(&self, model: &str) -> Result<Option<String>> {
        let Some(entry) = registry::find(&self.layout.registry(), model)? else {
            return Ok(None);
        };
        let run = twin_warehouse::find_run(self.warehouse.as_ref(), &entry.lineage.run_id).await?;
        Ok(run.map(|r| r.id))
    }

    /// The run of the evaluations of a model no run of ours trained: the one its earlier
    /// evaluations were recorded with, else a new one.
    async fn evaluation_run(&self, evaluation: &Evaluation) -> Result<String> {
        let model = match std::fs::canonicalize(&evaluation.model) {
            Ok(path) => path.display().to_string(),
            Err(_) => evaluation.model.clone(),
        };
        for record in self.warehouse.runs().await? {
            if let Ok(info) = runs::info(&record) {
                if info.kind == RunKind::Evaluation && info.model == model {
                    return Ok(record.id);
                }
            }
        }
        let run_id = runs::new_run_id(evaluation.created_at);
        let info = RunInfo {
            kind: RunKind::Evaluation,
            params: TrainingConfig::default(),
            model,
            family: evaluation.family.clone(),
            parameters: evaluation.parameters,
            trainable_parameters: 0,
            dataset: evaluation.dataset.clone(),
            snapshot_id: evaluation.snapshot_id.clone(),
            positions: Vec::new(),
            examples: (
                0,
                evaluation.samples,
                evaluation.perplexity.too_long + evaluation.generation.too_long,
            ),
            code_version: evaluation.code_version.clone(),
            device: format!("{:?} f32", tch::Device::cuda_if_available()),
            plan: Default::default(),
            result: None,
        };
        let record = runs::record(
            &run_id,
            Some(format!("eval {}", evaluation.model)),
            "evaluated",
            evaluation.created_at,
            &info,
        );
        self.warehouse.put_run(&record).await?;
        Ok(run_id)
    }
}
