//! `twin`: the one command of the LLM twin platform, with a subcommand per role.
//!
//! Configuration is layered (defaults, `twin.toml`, `TWIN_*` environment variables; see the
//! `twin-config` crate); `--config` and `--data-dir` override where it comes from and where data
//! goes. Logs go to stderr: text on a terminal, JSON lines otherwise (`--log-format`), filtered
//! by `RUST_LOG`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use twin_config::{Sources, TwinConfig};
use twin_eventlog::{EventConsumer, EventLog, StartFrom};
use twin_schemas::Event;

/// The LLM twin platform: crawl a person's writing into an event log, turn it into features,
/// fine-tune a model on it and serve it with retrieval.
#[derive(Debug, Parser)]
#[command(name = "twin", version, about, long_about = None)]
struct Cli {
    /// Configuration file [default: ./twin.toml if it exists].
    #[arg(long, global = true, env = "TWIN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where embedded backends keep their data (overrides `data_dir` of the configuration).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Text on a terminal, JSON lines otherwise.
    Auto,
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job on the configured backends: prepare the event log, crawl every
    /// configured source once, then stream what the log holds into the warehouse and vector store.
    Run,
    /// Crawl the configured sources (Medium, Substack, LinkedIn export and posts, GitHub, web
    /// articles) into raw-document events: on their schedules until stopped, or once.
    Ingest {
        /// One pass over every source, a summary, then exit (non-zero if any source failed).
        #[arg(long)]
        once: bool,
        /// Only the sources whose label contains this text (e.g. `github`, `substack`).
        #[arg(long, value_name = "TEXT")]
        source: Option<String>,
    },
    /// Clean, chunk and embed raw documents into the warehouse and the vector store, in near
    /// real time, until stopped (Ctrl-C or SIGTERM).
    Stream {
        /// Drop the projections and rebuild them from offset zero.
        #[arg(long)]
        rebuild: bool,
        /// Stop once every event already on the topic is handled.
        #[arg(long)]
        once: bool,
        /// Consumer group (workers of one group share the partitions).
        #[arg(long, default_value = twin_stream::worker::DEFAULT_GROUP)]
        group: String,
    },
    /// Look at and retry the events the pipeline could not handle.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Fine-tune a model on a dataset snapshot (not built yet).
    Train,
    /// Serve retrieval-augmented generation over HTTP (not built yet).
    Serve,
    /// Inspect the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect the event log.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Manage the embedding model: pull it, export it to ONNX, embed texts with it.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Download the configured model from the Hugging Face Hub (`embedding.hub_endpoint`) into
    /// the data folder.
    Pull,
    /// Export the configured model's safetensors weights to ONNX.
    Export {
        /// Where to write the ONNX file [default: DATA_DIR/models/MODEL/model.onnx].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Embed texts and print one JSON object per text.
    Embed {
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print every dead letter as a JSON line: source topic, partition, offset, reason.
    List,
    /// Append every dead letter's original event to its source topic again.
    Retry,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration as TOML, secrets masked.
    Show,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Create the pipeline's topics where missing and list each with its partitions and
    /// end offsets.
    Topics,
    /// Print a topic's events as JSON lines, undecodable ones as errors on stderr.
    Tail {
        /// The topic.
        topic: String,
        /// Consumer group to read and commit as; without it, read from the beginning and commit
        /// nothing.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        max: Option<u64>,
        /// Keep waiting for new events instead of stopping when the topic is read.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rdkafka=warn,qdrant_edge=error")
    });
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Text => false,
        LogFormat::Json => true,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn load_config(cli: &Cli) -> Result<TwinConfig> {
    let (mut config, file) = twin_config::load(&Sources {
        file: cli.config.clone(),
        ignore_env: false,
    })?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    tracing::debug!(file = ?file, backend = ?config.log.backend, "configuration loaded");
    Ok(config)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let config = load_config(&cli)?;
    match cli.command {
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            print!("{}", config.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let log = twin_eventlog::open(&config)?;
            print_topics(&config, log.as_ref()).await?;
            println!();
            let crawled = ingest(&config, log, true, None).await?;
            println!("\nstreaming what the log holds...");
            let streamed = stream(&config, false, true, twin_stream::worker::DEFAULT_GROUP).await?;
            // A failed source is reported above; the stream still ran over everything else.
            Ok(if crawled == ExitCode::SUCCESS {
                streamed
            } else {
                crawled
            })
        }
        Command::Stream {
            rebuild,
            once,
            group,
        } => stream(&config, rebuild, once, &group).await,
        Command::Dlq { command } => {
            let log = twin_eventlog::open(&config)?;
            let topic = &config.topics.dead_letters;
            match command {
                DlqCommand::List => {
                    let stdout = std::io::stdout();
                    for (_, letter) in twin_stream::dlq::list(log.as_ref(), topic).await? {
                        let mut line = serde_json::to_value(&letter)?;
                        if let serde_json::Value::Object(map) = &mut line {
                            map.remove("payload_base64");
                        }
                        writeln!(stdout.lock(), "{line}")?;
                    }
                }
                DlqCommand::Retry => {
                    let n = twin_stream::dlq::retry(log.as_ref(), topic).await?;
                    println!("{n} event(s) appended to their source topics again");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            command: LogCommand::Topics,
        } => {
            let log = twin_eventlog::open(&config)?;
            print_topics(&config, log.as_ref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            command:
                LogCommand::Tail {
                    topic,
                    group,
                    max,
                    follow,
                },
        } => {
            let log = twin_eventlog::open(&config)?;
            tail(log.as_ref(), &topic, group.as_deref(), max, follow).await
        }
        Command::Models { command } => models(&config, command).await,
        Command::Ingest { once, source } => {
            let log = twin_eventlog::open(&config)?;
            ingest(&config, log, once, source.as_deref()).await
        }
        Command::Train => not_built("train", "a training issue"),
        Command::Serve => not_built("serve", "a serving issue"),
    }
}

async fn models(config: &TwinConfig, command: ModelsCommand) -> Result<ExitCode> {
    let settings = &config.embedding;
    match command {
        ModelsCommand::Pull => {
            let files = twin_embedding::pull_configured(settings, &config.data_dir).await?;
            println!("{} pulled into {}", files.id, files.dir.display());
        }
        ModelsCommand::Export { out } => {
            let files = twin_embedding::model_files(settings, &config.data_dir).await?;
            let out = out.unwrap_or_else(|| {
                config
                    .data_dir
                    .join("models")
                    .join(&files.id)
                    .join("model.onnx")
            });
            let summary = files.export(&out)?;
            println!(
                "{} exported to {}: {} layers, {} dimensions, {} parameters, {} bytes",
                files.id,
                out.display(),
                summary.layers,
                summary.hidden_size,
                summary.parameters,
                summary.bytes
            );
        }
        ModelsCommand::Embed { texts } => {
            let embedder =
                std::sync::Arc::new(twin_embedding::open(settings, &config.data_dir).await?);
            let vectors = embedder.embed_async(texts.clone()).await?;
            let stdout = std::io::stdout();
            for (text, vector) in texts.iter().zip(vectors) {
                let line = serde_json::json!({
                    "model": embedder.model_id(),
                    "text": text,
                    "dimension": vector.len(),
                    "embedding": vector,
                });
                writeln!(stdout.lock(), "{line}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Crawl the configured sources: once (a summary, then a failure exit if any source failed), or
/// on their schedules until Ctrl-C/SIGTERM. A stop lets every source publish what it fetched.
async fn ingest(
    config: &TwinConfig,
    log: std::sync::Arc<dyn EventLog>,
    once: bool,
    filter: Option<&str>,
) -> Result<ExitCode> {
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("stopping: finishing what was fetched");
        on_signal.cancel();
    });
    let mut crawlers =
        twin_ingest::Ingest::new(config, log, twin_ingest::Progress::auto(), stop.clone())?;
    if let Some(filter) = filter {
        crawlers.retain(filter)?;
    }
    if crawlers.sources().is_empty() {
        println!(
            "ingest: no sources configured; list them as [[ingest.sources]] in twin.toml (see README)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !once {
        serve_metrics(&config.metrics.listen);
        crawlers
            .run_scheduled(|report| {
                println!("{report}");
                for error in &report.errors {
                    eprintln!("  failed: {error}");
                }
            })
            .await;
        return Ok(ExitCode::SUCCESS);
    }
    let reports = crawlers.run_once().await;
    print!("{}", twin_ingest::summary(&reports));
    let failed: Vec<_> = reports.iter().filter(|r| r.failed()).collect();
    for report in &failed {
        for error in &report.errors {
            eprintln!("failed: {}: {error}", report.source);
        }
    }
    if stop.is_cancelled() {
        eprintln!("ingest: stopped before the end; the next run picks up the rest");
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn stream(config: &TwinConfig, rebuild: bool, once: bool, group: &str) -> Result<ExitCode> {
    serve_metrics(&config.metrics.listen);
    let pipeline = twin_stream::Pipeline::open(config).await?;
    let options = twin_stream::RunOptions {
        group: group.to_string(),
        rebuild,
        until_caught_up: once,
        ..Default::default()
    };
    let stats = pipeline.run(&options, shutdown_signal()).await?;
    println!(
        "documents: {}, chunks: {}, deleted: {}, dead letters: {}",
        stats.documents, stats.chunks, stats.deleted, stats.dead_letters
    );
    let counts = pipeline.warehouse.counts().await?;
    println!(
        "warehouse ({}): {} raw, {} cleaned, {} chunks",
        pipeline.warehouse.backend(),
        counts.raw,
        counts.cleaned,
        counts.chunks
    );
    Ok(ExitCode::SUCCESS)
}

/// Serve `/metrics` for Prometheus on `listen` (empty: off). A port already taken (another
/// worker on this machine) is reported and the work goes on without metrics.
fn serve_metrics(listen: &str) {
    if listen.is_empty() {
        return;
    }
    let address: std::net::SocketAddr = match listen.parse() {
        Ok(address) => address,
        Err(e) => {
            tracing::warn!(listen, error = %e, "metrics.listen is not an address; metrics are off");
            return;
        }
    };
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
    {
        Ok(()) => tracing::info!(%address, "serving Prometheus metrics on /metrics"),
        Err(e) => tracing::warn!(%address, error = %e, "cannot serve metrics; going on without"),
    }
}

/// Resolves on Ctrl-C or SIGTERM: the worker finishes its batch, commits and stops.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn not_built(role: &str, issue: &str) -> Result<ExitCode> {
    bail!("`twin {role}` is not built yet; it lands with {issue}")
}

async fn print_topics(config: &TwinConfig, log: &dyn EventLog) -> Result<()> {
    println!("{:<20} {:>10} {:>12}", "topic", "partitions", "events");
    for topic in config.topics.all() {
        let partitions = log
            .ensure_topic(topic)
            .await
            .with_context(|| format!("topic {topic}"))?;
        let ends = log.end_offsets(topic).await?;
        println!(
            "{topic:<20} {partitions:>10} {:>12}",
            ends.iter().sum::<u64>()
        );
    }
    Ok(())
}

async fn tail(
    log: &dyn EventLog,
    topic: &str,
    group: Option<&str>,
    max: Option<u64>,
    follow: bool,
) -> Result<ExitCode> {
    let (group, start, commit) = match group {
        Some(g) => (g.to_string(), StartFrom::Committed, true),
        None => (
            format!("twin-tail-{}", std::process::id()),
            StartFrom::Beginning,
            false,
        ),
    };
    if log.partitions(topic).await?.is_none() {
        bail!(
            "topic {topic} does not exist on the {} log (`twin log topics` lists the pipeline's topics)",
            log.backend()
        );
    }
    let ends = log.end_offsets(topic).await?;
    let mut consumer = EventConsumer::new(log.consumer(topic, &group, start).await?, topic);
    let mut seen = vec![0u64; ends.len()];
    let mut printed = 0u64;
    let mut bad = 0u64;
    let stdout = std::io::stdout();
    loop {
        if max.is_some_and(|m| printed >= m) {
            break;
        }
        let caught_up = seen.iter().zip(&ends).all(|(s, e)| s >= e);
        if caught_up && !follow {
            break;
        }
        let Some(delivery) = consumer.next(Duration::from_millis(500)).await? else {
            if !follow && start == StartFrom::Committed {
                break; // a group with nothing left to read
            }
            continue;
        };
        let p = delivery.position.partition as usize;
        if p < seen.len() {
            seen[p] = seen[p].max(delivery.position.offset + 1);
        }
        match &delivery.event {
            Ok(event) => {
                let mut line = event_json(event);
                line["_partition"] = delivery.position.partition.into();
                line["_offset"] = delivery.position.offset.into();
                writeln!(stdout.lock(), "{line}")?;
                printed += 1;
            }
            Err(e) => {
                eprintln!("{e}");
                bad += 1;
            }
        }
        if commit {
            consumer.commit(delivery.position).await?;
        }
    }
    if bad > 0 {
        eprintln!("{bad} undecodable event(s) skipped");
    }
    Ok(ExitCode::SUCCESS)
}

fn event_json(event: &Event) -> serde_json::Value {
    let (kind, body) = match event {
        Event::Raw(d) => ("RawDocument", serde_json::to_value(d)),
        Event::Cleaned(d) => ("CleanedDocument", serde_json::to_value(d)),
        Event::Chunk(c) => ("Chunk", serde_json::to_value(c)),
        Event::Embedded(e) => ("EmbeddedChunk", serde_json::to_value(e)),
        Event::Deleted(d) => ("DocumentDeleted", serde_json::to_value(d)),
    };
    let mut value = body.unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        map.insert("_type".into(), kind.into());
    }
    value
}
