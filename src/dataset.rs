//! `twin dataset`: build instruct and preference datasets from a snapshot, list, show, export,
//! import and delete them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use twin_config::TwinConfig;
use twin_datasets::build::{self, BuildParams, Metadata};
use twin_datasets::formats::{self, Format};
use twin_datasets::{DatasetKind, Generator, OfflineGenerator, OpenAiGenerator, Split};
use twin_warehouse::{find_dataset, DatasetRecord, Warehouse};

use crate::snapshot::{describe, time};
use crate::DatasetCommand;

/// Run a `twin dataset` subcommand.
pub async fn dataset(config: &TwinConfig, command: DatasetCommand) -> Result<ExitCode> {
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    match command {
        DatasetCommand::Build {
            snapshot,
            kind,
            method,
            generator,
            max_samples,
            seed,
            test_fraction,
            name,
            force,
        } => {
            let snapshot = crate::snapshot::find(warehouse.as_ref(), &snapshot).await?;
            let kind: DatasetKind = kind.parse().map_err(|e: String| anyhow!(e))?;
            let mut params = BuildParams::from_config(&config.datasets, kind);
            if let Some(method) = method {
                params.method = method.parse().map_err(|e: String| anyhow!(e))?;
            }
            params.max_samples = max_samples;
            params.seed = seed.unwrap_or(params.seed);
            params.test_fraction = test_fraction.unwrap_or(params.test_fraction);
            if !(0.0..1.0).contains(&params.test_fraction) {
                bail!(
                    "--test-fraction must be at least 0 and below 1, not {}",
                    params.test_fraction
                );
            }
            let generator = generator_named(
                config,
                generator.as_deref().unwrap_or(&config.datasets.generator),
            )?;
            let id = build::dataset_id(&snapshot, generator.as_ref(), &params);
            if !force && find_exact(warehouse.as_ref(), &id).await?.is_some() {
                println!(
                    "dataset {id} is already built from snapshot {} with these parameters \
                     (`--force` builds it again)",
                    snapshot.id
                );
                return Ok(ExitCode::SUCCESS);
            }
            let progress = progress_bar();
            let mut built = build::build(
                warehouse.as_ref(),
                &snapshot,
                &params,
                generator.as_ref(),
                &progress,
            )
            .await?;
            built.record.name = name;
            if built.samples.is_empty() {
                let s = &built.stats;
                bail!(
                    "no sample to keep from snapshot {} ({} documents, {} passages; dropped: {} \
                     too short, {} too long, {} duplicates, {} near-duplicates, {} without a \
                     usable answer): nothing stored",
                    snapshot.id,
                    s.documents,
                    s.passages,
                    s.too_short,
                    s.too_long,
                    s.duplicates,
                    s.near_duplicates,
                    s.generator_dropped
                );
            }
            warehouse.put_dataset(&built.record, &built.rows()?).await?;
            let s = &built.stats;
            let count = |m: &std::collections::BTreeMap<String, usize>, k: &str| {
                m.get(k).copied().unwrap_or(0)
            };
            println!(
                "dataset {} ({kind}, {}): {} train and {} test samples from {} and {} documents",
                built.record.id,
                generator.name(),
                count(&s.samples, "train"),
                count(&s.samples, "test"),
                count(&s.split_documents, "train"),
                count(&s.split_documents, "test"),
            );
            println!(
                "passages: {} of {} used; dropped: {} too short, {} too long, {} duplicates, \
                 {} near-duplicates, {} without a usable answer",
                s.passages_used,
                s.passages,
                s.too_short,
                s.too_long,
                s.duplicates,
                s.near_duplicates,
                s.generator_dropped
            );
            let g = &s.generator;
            println!(
                "generator: {} requests ({} answered from the cache), {} rate limited, {} server \
                 errors, {} timeouts, {} invalid answers; tokens: {} prompt + {} completion",
                g.requests,
                g.cached,
                g.rate_limited,
                g.server_errors,
                g.timeouts,
                g.invalid_answers,
                g.prompt_tokens,
                g.completion_tokens
            );
        }
        DatasetCommand::List => {
            let all = warehouse.datasets().await?;
            if all.is_empty() {
                println!(
                    "no datasets yet: `twin dataset build --snapshot ID --kind instruct` makes one"
                );
            }
            for d in all {
                let meta = metadata(&d)?;
                println!(
                    "{}  {:<12}  {:<10}  {:<16}  {:<22}  train {:>5}  test {:>5}  {}",
                    d.id,
                    d.name.as_deref().unwrap_or("-"),
                    d.kind,
                    d.snapshot_id.as_deref().unwrap_or("imported"),
                    meta.lineage.generator.as_deref().unwrap_or("import"),
                    meta.samples.get("train").copied().unwrap_or(0),
                    meta.samples.get("test").copied().unwrap_or(0),
                    time(d.created_at)
                );
            }
        }
        DatasetCommand::Show { id, samples } => {
            let d = find(warehouse.as_ref(), &id).await?;
            let meta = metadata(&d)?;
            println!(
                "dataset {}{}",
                d.id,
                d.name.map(|n| format!(" ({n})")).unwrap_or_default()
            );
            println!("kind       {}", d.kind);
            println!("created    {}", time(d.created_at));
            match &meta.lineage.snapshot {
                Some(s) => println!("snapshot   {} at {}", s.id, describe(&s.positions)),
                None => println!("imported   {}", meta.lineage.imported.join("; ")),
            }
            if let Some(g) = &meta.lineage.generator {
                println!("generator  {g}");
                println!("prompts    {}", meta.lineage.prompts.join(", "));
            }
            if let Some(method) = meta.lineage.method {
                println!("method     {method}");
            }
            println!(
                "samples    {}",
                meta.samples
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(params) = &meta.params {
                println!("params     {}", serde_json::to_string(params)?);
            }
            if let Some(stats) = &meta.stats {
                println!("stats      {}", serde_json::to_string(stats)?);
            }
            if samples > 0 {
                let rows = warehouse.dataset_samples(&d.id).await?;
                for (split, sample) in build::samples_of(&rows)?.into_iter().take(samples) {
                    println!("\n[{split}] {}", serde_json::to_string_pretty(&sample)?);
                }
            }
        }
        DatasetCommand::Export { id, format, out } => {
            let d = find(warehouse.as_ref(), &id).await?;
            let kind: DatasetKind = d.kind.parse().map_err(|e: String| anyhow!(e))?;
            let format: Format = match format {
                Some(f) => f.parse().map_err(|e: String| anyhow!(e))?,
                None => match kind {
                    DatasetKind::Instruct => Format::Alpaca,
                    DatasetKind::Preference => Format::Trl,
                },
            };
            let samples = build::samples_of(&warehouse.dataset_samples(&d.id).await?)?;
            for (path, n) in formats::export(kind, &samples, format, &out)? {
                println!("{}: {n} samples ({format})", path.display());
            }
        }
        DatasetCommand::Import { paths, name } => {
            let inputs = paths
                .iter()
                .map(|p| parse_input(p))
                .collect::<Result<Vec<_>>>()?;
            let imported = formats::import(&inputs)?;
            let (record, rows) = build::imported(&imported, name)?;
            warehouse.put_dataset(&record, &rows).await?;
            println!(
                "dataset {} ({}) imported: {}",
                record.id,
                imported.kind,
                metadata(&record)?
                    .samples
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for file in &imported.files {
                println!("  {file}");
            }
        }
        DatasetCommand::Delete { id } => {
            let d = find(warehouse.as_ref(), &id).await?;
            warehouse.delete_dataset(&d.id).await?;
            println!("dataset {} deleted", d.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `SPLIT=PATH` or `PATH`.
fn parse_input(arg: &str) -> Result<(Option<Split>, PathBuf)> {
    if let Some((split, path)) = arg.split_once('=') {
        if let Ok(split) = split.parse::<Split>() {
            return Ok((Some(split), PathBuf::from(path)));
        }
    }
    Ok((None, PathBuf::from(arg)))
}

fn metadata(d: &DatasetRecord) -> Result<Metadata> {
    serde_json::from_str(&d.metadata).with_context(|| format!("dataset {}: its metadata", d.id))
}

async fn find(warehouse: &dyn Warehouse, key: &str) -> Result<DatasetRecord> {
    find_dataset(warehouse, key)
        .await?
        .ok_or_else(|| anyhow!("no dataset {key:?} (`twin dataset list` shows them)"))
}

async fn find_exact(warehouse: &dyn Warehouse, id: &str) -> Result<Option<DatasetRecord>> {
    Ok(warehouse.datasets().await?.into_iter().find(|d| d.id == id))
}

/// `offline`, or a generator of `[datasets.generators]`.
fn generator_named(config: &TwinConfig, name: &str) -> Result<Box<dyn Generator>> {
    if name == "offline" {
        return Ok(Box::new(OfflineGenerator::new()));
    }
    let Some(generator) = config.datasets.generators.get(name) else {
        let known: Vec<&str> = std::iter::once("offline")
            .chain(config.datasets.generators.keys().map(String::as_str))
            .collect();
        bail!(
            "no generator {name:?}: configure [datasets.generators.{name}] (base_url, model, \
             api_key_env) or use one of: {}",
            known.join(", ")
        );
    };
    Ok(Box::new(OpenAiGenerator::new(
        name,
        generator,
        &config.layout().generator_cache(),
    )?))
}

/// A bar with an ETA on a terminal; hidden otherwise (the build logs instead).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "building [{bar:30}] {pos}/{len} passages, {msg} ({elapsed}, eta {eta})",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}
