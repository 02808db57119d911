//! A build: a snapshot's passages, in a seeded order, through the generator and the quality
//! filters, until the samples run out or `max_samples` are kept; split by document.
//!
//! The dataset's id is derived from the snapshot, the kind, the method, the generator's
//! fingerprint (model, prompts, sampling) and the parameters: the same inputs give the same id,
//! and, with a deterministic generator (the offline one, or cached answers), the same samples
//! byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use futures::TryStreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tracing::info;
use twin_config::DatasetsConfig;
use twin_schemas::{Chunk, CleanedDocument};
use twin_warehouse::{
    scan_chunks, scan_cleaned, DatasetRecord, DocumentFilter, SampleRow, Snapshot, Warehouse,
};

use crate::generator::{Failure, Generator, GeneratorCounts};
use crate::quality::{Deduplicator, Duplicate, LengthLimits, LengthVerdict};
use crate::sample::Origin;
use crate::source::{passages, Passage};
use crate::split::{seeded_rank, split_of, test_documents};
use crate::{DatasetError, DatasetKind, Result, Sample, Split};

/// How instruct samples are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Instruction back-translation: the answer is the author's passage; the generator writes
    /// the instruction it answers.
    Backtranslate,
    /// Extraction: the generator writes instruction/answer pairs from the passage, answers in
    /// the author's voice.
    Extract,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Backtranslate => "backtranslate",
            Method::Extract => "extract",
        })
    }
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "backtranslate" | "back-translation" => Ok(Method::Backtranslate),
            "extract" | "extraction" => Ok(Method::Extract),
            other => Err(format!(
                "unknown method {other:?}: use backtranslate or extract"
            )),
        }
    }
}

/// What a build is asked for (everything but the snapshot and the generator).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildParams {
    /// Instruct or preference.
    pub kind: DatasetKind,
    /// How instruct samples are made (preference samples are always back-translated).
    pub method: Method,
    /// Stop once this many samples are kept.
    pub max_samples: Option<usize>,
    /// Seed of the split and the order.
    pub seed: u64,
    /// Share of documents in test.
    pub test_fraction: f64,
    /// Length limits.
    pub limits: LengthLimits,
    /// MinHash similarity at which an answer is a near-duplicate.
    pub near_duplicate_threshold: f64,
    /// Passage size, in tokens.
    pub passage_tokens: usize,
}

impl BuildParams {
    /// The configuration's defaults for `kind`.
    pub fn from_config(config: &DatasetsConfig, kind: DatasetKind) -> Self {
        Self {
            kind,
            method: Method::Backtranslate,
            max_samples: None,
            seed: config.seed,
            test_fraction: config.test_fraction,
            limits: LengthLimits {
                min_instruction: config.min_instruction_chars,
                max_instruction: config.max_instruction_chars,
                min_answer: config.min_answer_chars,
                max_answer: config.max_answer_chars,
            },
            near_duplicate_threshold: config.near_duplicate_threshold,
            passage_tokens: config.passage_tokens,
        }
    }

    /// The method that applies: preference samples are back-translated.
    fn effective_method(&self) -> Method {
        match self.kind {
            DatasetKind::Instruct => self.method,
            DatasetKind::Preference => Method::Backtranslate,
        }
    }
}

/// What a build did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildStats {
    /// Documents in the snapshot with text.
    pub documents: usize,
    /// Passages made from them.
    pub passages: usize,
    /// Passages the generator worked on (fewer when `max_samples` stopped the build).
    pub passages_used: usize,
    /// Samples proposed.
    pub candidates: usize,
    /// Samples kept.
    pub kept: usize,
    /// Dropped: too short.
    pub too_short: usize,
    /// Dropped: too long.
    pub too_long: usize,
    /// Dropped: the same as a kept one.
    pub duplicates: usize,
    /// Dropped: near a kept one.
    pub near_duplicates: usize,
    /// Passages the generator gave nothing usable for.
    pub generator_dropped: usize,
    /// Samples per split.
    pub samples: BTreeMap<String, usize>,
    /// Documents per split.
    pub split_documents: BTreeMap<String, usize>,
    /// The generator's counters (requests, retries, invalid answers, tokens).
    pub generator: GeneratorCounts,
}

/// A built dataset: its record (id, lineage) and samples, not yet stored.
#[derive(Debug, Clone)]
pub struct Built {
    /// The record to store.
    pub record: DatasetRecord,
    /// The samples, by split, in order.
    pub samples: Vec<(Split, Sample)>,
    /// What the build did.
    pub stats: BuildStats,
}

impl Built {
    /// The samples as stored rows.
    pub fn rows(&self) -> Result<Vec<SampleRow>> {
        rows(&self.samples)
    }
}

/// Samples as stored rows, numbered within their split.
pub fn rows(samples: &[(Split, Sample)]) -> Result<Vec<SampleRow>> {
    let mut next: BTreeMap<Split, u32> = BTreeMap::new();
    samples
        .iter()
        .map(|(split, sample)| {
            let index = next.entry(*split).or_default();
            let row = SampleRow {
                split: split.name().into(),
                index: *index,
                body: serde_json::to_string(sample)
                    .map_err(|e| DatasetError::Invalid(format!("sample: {e}")))?,
            };
            *index += 1;
            Ok(row)
        })
        .collect()
}

/// Stored rows as samples, in split then index order.
pub fn samples_of(rows: &[SampleRow]) -> Result<Vec<(Split, Sample)>> {
    let mut out: Vec<(Split, u32, Sample)> = rows
        .iter()
        .map(|row| {
            let split: Split = row.split.parse().map_err(DatasetError::Invalid)?;
            let sample: Sample = serde_json::from_str(&row.body)
                .map_err(|e| DatasetError::Invalid(format!("stored sample: {e}")))?;
            Ok((split, row.index, sample))
        })
        .collect::<Result<_>>()?;
    out.sort_by_key(|(split, index, _)| (*split, *index));
    Ok(out.into_iter().map(|(s, _, sample)| (s, sample)).collect())
}

/// The id of the dataset these inputs make.
pub fn dataset_id(snapshot: &Snapshot, generator: &dyn Generator, params: &BuildParams) -> String {
    let params = serde_json::to_string(params).unwrap_or_default();
    let id = crate::digest([
        snapshot.id.as_bytes(),
        generator.fingerprint().as_bytes(),
        params.as_bytes(),
    ]);
    format!("d-{}", &id[..12])
}

/// Lineage and statistics, as stored with the dataset.
#[derive(Debug, Serialize, Deserialize)]
pub struct Metadata {
    /// Where the samples come from.
    pub lineage: Lineage,
    /// The parameters (none when imported).
    pub params: Option<BuildParams>,
    /// What the build did (none when imported).
    pub stats: Option<BuildStats>,
    /// Samples per split.
    pub samples: BTreeMap<String, usize>,
    /// How long the build took, in milliseconds.
    pub elapsed_ms: u64,
}

/// Where a dataset's samples come from.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Lineage {
    /// The snapshot, with its positions.
    pub snapshot: Option<Snapshot>,
    /// The generator (`offline`, `NAME:MODEL`).
    pub generator: Option<String>,
    /// What decides the generator's answers.
    pub fingerprint: Option<String>,
    /// The method.
    pub method: Option<Method>,
    /// The prompts (with versions) that wrote the samples.
    pub prompts: Vec<String>,
    /// The files an imported dataset was read from.
    pub imported: Vec<String>,
}

/// Build a dataset from `snapshot`.
pub async fn build(
    warehouse: &dyn Warehouse,
    snapshot: &Snapshot,
    params: &BuildParams,
    generator: &dyn Generator,
    progress: &ProgressBar,
) -> Result<Built> {
    let started = Instant::now();
    let as_of = snapshot.as_of();
    let documents: BTreeMap<String, CleanedDocument> =
        scan_cleaned(warehouse, as_of.clone(), DocumentFilter::all())
            .map_ok(|d| (d.value.id.clone(), d.value))
            .try_collect()
            .await?;
    let mut all: Vec<Passage> = Vec::new();
    let mut chunks = scan_chunks(warehouse, as_of, DocumentFilter::all());
    let mut run: Vec<Chunk> = Vec::new();
    let flush = |run: &mut Vec<Chunk>, all: &mut Vec<Passage>| {
        if let Some(doc) = run.first().and_then(|c| documents.get(&c.document_id)) {
            all.extend(passages(doc, run, params.passage_tokens));
        }
        run.clear();
    };
    while let Some(chunk) = chunks.try_next().await? {
        if run
            .first()
            .is_some_and(|c| c.document_id != chunk.value.document_id)
        {
            flush(&mut run, &mut all);
        }
        run.push(chunk.value);
    }
    flush(&mut run, &mut all);
    drop(chunks);

    let with_text: BTreeSet<&str> = all.iter().map(|p| p.document_id.as_str()).collect();
    let test = test_documents(with_text.iter().copied(), params.seed, params.test_fraction);
    let mut stats = BuildStats {
        documents: with_text.len(),
        passages: all.len(),
        ..BuildStats::default()
    };
    all.sort_by_cached_key(|p| seeded_rank(params.seed, &p.id));
    info!(
        snapshot = %snapshot.id,
        kind = %params.kind,
        documents = stats.documents,
        passages = stats.passages,
        generator = %generator.name(),
        "building a dataset"
    );

    progress.set_length(all.len() as u64);
    let window = (generator.concurrency() * 2).max(8);
    let limit = params.max_samples.unwrap_or(usize::MAX);
    let mut dedup = Deduplicator::new(params.near_duplicate_threshold);
    let mut kept: Vec<(Split, Sample)> = Vec::new();
    let mut prompts = BTreeSet::new();
    'windows: for batch in all.chunks(window) {
        if kept.len() >= limit {
            break;
        }
        let results =
            futures::future::join_all(batch.iter().map(|p| candidates(generator, params, p))).await;
        for (passage, result) in batch.iter().zip(results) {
            stats.passages_used += 1;
            progress.inc(1);
            let proposed = match result {
                Ok(proposed) => proposed,
                Err(Failure::Dropped(_)) => {
                    stats.generator_dropped += 1;
                    continue;
                }
                Err(Failure::Fatal(reason)) => {
                    return Err(DatasetError::Generator {
                        generator: generator.name(),
                        reason,
                    })
                }
            };
            let split = split_of(&test, &passage.document_id);
            for sample in proposed {
                stats.candidates += 1;
                // The limits are the author's answer's; a rejected answer need only say something.
                if sample
                    .rejected
                    .as_deref()
                    .is_some_and(|r| r.trim().is_empty())
                {
                    stats.too_short += 1;
                    continue;
                }
                match params.limits.check(&sample.instruction, &[&sample.output]) {
                    LengthVerdict::Fits => {}
                    LengthVerdict::TooShort => {
                        stats.too_short += 1;
                        continue;
                    }
                    LengthVerdict::TooLong => {
                        stats.too_long += 1;
                        continue;
                    }
                }
                let key = format!("{}\n{}", sample.instruction, sample.output);
                match dedup.admit(&key, &sample.output) {
                    Ok(()) => {}
                    Err(Duplicate::Exact) => {
                        stats.duplicates += 1;
                        continue;
                    }
                    Err(Duplicate::Near(_)) => {
                        stats.near_duplicates += 1;
                        continue;
                    }
                }
                prompts.extend(sample.origin.prompts.iter().cloned());
                kept.push((split, sample));
                if kept.len() >= limit {
                    break 'windows;
                }
            }
        }
        progress.set_message(format!("{} samples", kept.len()));
        // Off a terminal the bar is hidden: a log line every tenth of the way instead.
        let tenth = (all.len() / 10).max(1);
        if progress.is_hidden()
            && stats.passages_used / tenth != (stats.passages_used - batch.len()) / tenth
        {
            info!(
                passages = stats.passages_used,
                of = all.len(),
                samples = kept.len(),
                elapsed_s = started.elapsed().as_secs(),
                "building"
            );
        }
    }
    progress.finish_and_clear();

    // Train first, then test; each in the order kept.
    kept.sort_by_key(|(split, _)| *split);
    stats.kept = kept.len();
    for (split, _) in &kept {
        *stats.samples.entry(split.name().into()).or_default() += 1;
    }
    for split in Split::ALL {
        let docs: BTreeSet<&str> = kept
            .iter()
            .filter(|(s, _)| *s == split)
            .filter_map(|(_, sample)| sample.origin.document_id.as_deref())
            .collect();
        stats
            .split_documents
            .insert(split.name().into(), docs.len());
    }
    stats.generator = generator.stats().counts();
    let metadata = Metadata {
        lineage: Lineage {
            snapshot: Some(snapshot.clone()),
            generator: Some(generator.name()),
            fingerprint: Some(generator.fingerprint()),
            method: Some(params.effective_method()),
            prompts: prompts.into_iter().collect(),
            imported: Vec::new(),
        },
        params: Some(params.clone()),
        stats: Some(stats.clone()),
        samples: stats.samples.clone(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    let record = DatasetRecord {
        id: dataset_id(snapshot, generator, params),
        name: None,
        kind: params.kind.to_string(),
        snapshot_id: Some(snapshot.id.clone()),
        created_at: now_ms(),
        metadata: serde_json::to_string(&metadata)
            .map_err(|e| DatasetError::Invalid(format!("metadata: {e}")))?,
    };
    Ok(Built {
        record,
        samples: kept,
        stats,
    })
}

/// The samples one passage proposes.
async fn candidates(
    generator: &dyn Generator,
    params: &BuildParams,
    passage: &Passage,
) -> Result<Vec<Sample>, Failure> {
    let origin = |prompts: Vec<&str>| Origin {
        document_id: Some(passage.document_id.clone()),
        chunk_ids: passage.chunk_ids.clone(),
        generator: generator.name(),
        prompts: prompts.into_iter().map(str::to_string).collect(),
    };
    match (params.kind, params.method) {
        (DatasetKind::Instruct, Method::Extract) => {
            let pairs = generator.pairs(passage).await?;
            Ok(pairs
                .value
                .into_iter()
                .map(|pair| Sample {
                    system: None,
                    instruction: pair.instruction,
                    input: String::new(),
                    output: pair.answer,
                    rejected: None,
                    origin: origin(vec![pairs.prompt]),
                })
                .collect())
        }
        (DatasetKind::Instruct, Method::Backtranslate) => {
            let instruction = generator.instruction(passage).await?;
            Ok(vec![Sample {
                system: None,
                instruction: instruction.value,
                input: String::new(),
                output: passage.text.clone(),
                rejected: None,
                origin: origin(vec![instruction.prompt]),
            }])
        }
        (DatasetKind::Preference, _) => {
            let instruction = generator.instruction(passage).await?;
            let rejected = generator.plain_answer(&instruction.value, passage).await?;
            Ok(vec![Sample {
                system: None,
                instruction: instruction.value,
                input: String::new(),
                output: passage.text.clone(),
                rejected: Some(rejected.value),
                origin: origin(vec![instruction.prompt, rejected.prompt]),
            }])
        }
    }
}

/// The record and rows of a dataset read from files: its id derived from its kind and samples,
/// its lineage the files it came from.
pub fn imported(
    imported: &crate::formats::Imported,
    name: Option<String>,
) -> Result<(DatasetRecord, Vec<SampleRow>)> {
    let rows = rows(&imported.samples)?;
    let kind = imported.kind.to_string();
    let id = crate::digest(
        std::iter::once(kind.as_bytes()).chain(
            rows.iter()
                .flat_map(|r| [r.split.as_bytes(), r.body.as_bytes()]),
        ),
    );
    let mut samples = BTreeMap::new();
    for (split, _) in &imported.samples {
        *samples.entry(split.name().to_string()).or_insert(0usize) += 1;
    }
    let metadata = Metadata {
        lineage: Lineage {
            imported: imported.files.clone(),
            ..Default::default()
        },
        params: None,
        stats: None,
        samples,
        elapsed_ms: 0,
    };
    let record = DatasetRecord {
        id: format!("d-{}", &id[..12]),
        name,
        kind,
        snapshot_id: None,
        created_at: now_ms(),
        metadata: serde_json::to_string(&metadata)
            .map_err(|e| DatasetError::Invalid(format!("metadata: {e}")))?,
    };
    Ok((record, rows))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
