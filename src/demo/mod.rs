//! `twin demo`: the whole feature-training-inference loop on a sample author that ships with the
//! project, on one machine, offline.
//!
//! - [`sample`]: the fictional author's articles, posts and code repository;
//! - [`platforms`]: local servers that serve them in the shapes of Medium, Substack, GitHub and
//!   a LinkedIn export, to the real crawlers.
//!
//! Each step is the `twin` command a user would type (printed before it runs), run in this
//! process on a configuration whose data lives in `DATA_DIR/demo`. A second run finds the
//! crawled documents unchanged, the snapshot and dataset already made and the model already
//! trained on that dataset, and goes straight to the answer.

mod platforms;
mod sample;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use twin_config::TwinConfig;

use crate::{Cli, DemoArgs};

/// The registry name of the demo's model.
pub const MODEL_NAME: &str = "nora-twin";

/// `twin demo`.
pub async fn demo(base: &TwinConfig, args: DemoArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let data_dir = base.data_dir.join("demo");
    if args.fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("removing {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let mut steps = Steps::new(11);

    steps.begin(
        "sample platforms",
        "start local servers in the shapes of Medium, Substack and GitHub, and write a LinkedIn \
         data export, all serving the sample author, Nora Castellan (fictional)",
    );
    let platforms = platforms::Platforms::start(&data_dir.join("platforms")).await?;
    println!("  medium   {}/@{}", platforms.medium, sample::AUTHOR_ID);
    println!("  substack {}", platforms.substack);
    println!("  github   {} (REST API)", platforms.github);
    println!("  linkedin {}", platforms.linkedin_export.display());
    let config = demo_config(base, &data_dir, &platforms);
    let layout = config.layout();

    steps.begin("ingest", "crawl the four sources into raw-document events");
    run(&config, &["ingest", "--once"]).await?;

    steps.begin(
        "stream",
        "clean, chunk and embed the documents into the warehouse and the vector store",
    );
    run(&config, &["stream", "--once"]).await?;

    steps.begin(
        "snapshot",
        "pin what the warehouse holds, so that training reads it reproducibly",
    );
    run(&config, &["snapshot", "create", "--name", "demo"]).await?;
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    let snapshot = warehouse
        .snapshots()
        .await?
        .into_iter()
        .filter(|s| s.name.as_deref() == Some("demo"))
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| anyhow!("the snapshot just made is not in the warehouse"))?;

    steps.begin(
        "dataset",
        "build an instruct dataset from the snapshot with the offline generator (questions \
         written from each passage, the author's own words as answers)",
    );
    run(
        &config,
        &[
            "dataset",
            "build",
            "--snapshot",
            &snapshot.id,
            "--kind",
            "instruct",
            "--generator",
            "offline",
            "--test-fraction",
            "0.2",
            "--name",
            "demo",
        ],
    )
    .await?;
    let dataset = warehouse
        .datasets()
        .await?
        .into_iter()
        .filter(|d| d.snapshot_id.as_deref() == Some(snapshot.id.as_str()))
        .max_by_key(|d| d.created_at)
        .ok_or_else(|| anyhow!("the dataset just built is not in the warehouse"))?;
    drop(warehouse);

    steps.begin(
        "train",
        "train a small Llama (4 layers, 4 M parameters) from scratch on the author's text, \
         with a byte-level BPE tokenizer of its own",
    );
    let trained = twin_training::registry::find(&layout.registry(), MODEL_NAME)?
        .filter(|entry| entry.lineage.dataset == dataset.id && !args.retrain);
    let model = match trained {
        Some(entry) => {
            println!(
                "  {} was trained on dataset {} already (run {}); `twin demo --retrain` trains \
                 it again",
                entry.reference(),
                dataset.id,
                entry.lineage.run_id
            );
            entry
        }
        None => {
            let init = data_dir.join("demo-llama.json");
            std::fs::write(&init, demo_model_config()?)
                .with_context(|| format!("writing {}", init.display()))?;
            let steps_arg = args.train_steps.to_string();
            let init_arg = init.display().to_string();
            let code = run(
                &config,
                &[
                    "train",
                    "--dataset",
                    &dataset.id,
                    "--init",
                    &init_arg,
                    "--method",
                    "full",
                    "--max-steps",
                    &steps_arg,
                    "--batch-size",
                    "8",
                    "--max-seq-len",
                    "512",
                    "--lr",
                    "0.001",
                    "--weight-decay",
                    "0.1",
                    "--warmup-steps",
                    "20",
                    "--eval-every",
                    "25",
                    "--seed",
                    "7",
                    "--name",
                    "demo",
                    "--register-as",
                    MODEL_NAME,
                ],
            )
            .await?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            twin_training::registry::find(&layout.registry(), MODEL_NAME)?
                .ok_or_else(|| anyhow!("{MODEL_NAME} is not in the registry after training"))?
        }
    };
    let run_id = model.lineage.run_id.clone();

    steps.begin(
        "loss curve",
        "draw the run's training and evaluation losses",
    );
    let curve = data_dir.join("loss");
    println!("$ twin runs compare {run_id} --out {}", curve.display());
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    let curves = twin_training::runs::curves(warehouse.as_ref(), &run_id).await?;
    drop(warehouse);
    let (png, svg) = twin_training::runs::plot(&[("demo".to_string(), curves.clone())], &curve)?;
    print_losses(&curves);
    println!("  loss curves: {} and {}", png.display(), svg.display());

    steps.begin(
        "export",
        "export the model to ONNX with a key/value cache, for generation on ONNX Runtime",
    );
    if model.dir.join("onnx").join("model.onnx").exists() {
        println!("  exported already: {}", model.dir.join("onnx").display());
    } else {
        run(&config, &["models", "export-llm", MODEL_NAME]).await?;
    }

    steps.begin(
        "evaluate",
        "perplexity of the author's answers on the test split, and answers generated with a \
         fixed seed scored against hers",
    );
    let samples = args.eval_samples.to_string();
    run(
        &config,
        &[
            "eval",
            MODEL_NAME,
            "--dataset",
            &dataset.id,
            "--samples",
            &samples,
            "--max-tokens",
            "48",
        ],
    )
    .await?;

    steps.begin(
        "serve",
        "serve the model with retrieval over HTTP (what `twin serve` does), and ask it",
    );
    println!("$ twin serve --model {MODEL_NAME}");
    let answered = serve_and_ask(&config, &args).await?;

    steps.begin("where things are", "");
    let registry_dir = model.dir.display().to_string();
    println!("  data (embedded stores)  {}", data_dir.display());
    println!("  model                   {registry_dir}");
    println!("  loss curve              {}", png.display());
    println!(
        "  run                     twin --data-dir {} runs show {run_id}",
        data_dir.display()
    );
    println!(
        "  serve it yourself       twin --data-dir {} serve --model {MODEL_NAME}",
        data_dir.display()
    );
    steps.finish();
    println!(
        "\ndemo finished in {:.0} s{}",
        started.elapsed().as_secs_f64(),
        if answered {
            ""
        } else {
            " (the question was not answered: see above)"
        }
    );
    drop(platforms);
    Ok(if answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo's model: the shipped demo Llama, with room for the question, three retrieved
/// passages and the answer (rotary positions train on 512 and run on 1,024).
fn demo_model_config() -> Result<String> {
    let mut config: serde_json::Value =
        serde_json::from_str(twin_training::architecture::DEMO_CONFIG)?;
    config["max_position_embeddings"] = serde_json::json!(1024);
    Ok(serde_json::to_string_pretty(&config)?)
}

/// The losses in two lines: where training started and ended, and the evaluation's best and last.
fn print_losses(curves: &twin_training::runs::Curves) {
    if let (Some(first), Some(last)) = (curves.train.first(), curves.train.last()) {
        println!(
            "  train loss {:.2} at step {} -> {:.2} at step {}",
            first.loss, first.step, last.loss, last.step
        );
    }
    let best = curves.eval.iter().min_by(|a, b| a.loss.total_cmp(&b.loss));
    if let (Some(best), Some(last)) = (best, curves.eval.last()) {
        println!(
            "  eval loss (the test split) best {:.2} at step {}, last {:.2} at step {}{}",
            best.loss,
            best.step,
            last.loss,
            last.step,
            if last.loss > best.loss + 0.1 {
                " (a small model on a small author memorises its training split)"
            } else {
                ""
            }
        );
    }
}

/// The configuration of the demo: the user's (backends included), with data in `data_dir`,
/// the sample platforms as the only sources, the sample author, chunks sized for the small
/// model, and no metrics ports (the steps share one process).
fn demo_config(base: &TwinConfig, data_dir: &Path, platforms: &platforms::Platforms) -> TwinConfig {
    let mut config = base.clone();
    config.data_dir = data_dir.to_path_buf();
    config.author.id = sample::AUTHOR_ID.into();
    config.author.full_name = sample::AUTHOR_NAME.into();
    config.ingest.sources = platforms.sources();
    config.ingest.http.requests_per_second = 0.0;
    config.ingest.github.api_url = platforms.github.clone();
    config.ingest.github.token = String::new();
    config.metrics.stream = String::new();
    config.metrics.ingest = String::new();
    config.metrics.train = String::new();
    // Smaller chunks than the defaults: more samples from a small author, and two sources fit
    // the small model's 512-token context beside the question and the answer.
    for rule in [
        &mut config.chunking.article,
        &mut config.chunking.repository,
    ] {
        rule.max_tokens = 128;
        rule.overlap_tokens = rule.overlap_tokens.min(16);
    }
    config.datasets.passage_tokens = 128;
    config.serving.model = MODEL_NAME.into();
    config.serving.address = "127.0.0.1:0".into();
    config
}

/// Parse `args` as the `twin` command line and run it on `config`; a failing step ends the demo.
async fn run(config: &TwinConfig, args: &[&str]) -> Result<ExitCode> {
    println!("$ twin {}", args.join(" "));
    let cli = Cli::try_parse_from(std::iter::once("twin").chain(args.iter().copied()))
        .map_err(|e| anyhow!("the demo built a command twin does not take: {e}"))?;
    let code = Box::pin(crate::dispatch(config, cli.command))
        .await
        .with_context(|| format!("`twin {}`", args.join(" ")))?;
    if code != ExitCode::SUCCESS && args.first() != Some(&"train") {
        bail!("`twin {}` did not succeed", args.join(" "));
    }
    Ok(code)
}

/// Start the server in this process, ask it one question through `/rag`, print the answer and
/// its sources, and stop it (or keep serving until Ctrl-C with `--keep-serving`).
async fn serve_and_ask(config: &TwinConfig, args: &DemoArgs) -> Result<bool> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keep_serving = args.keep_serving;
    let stop = async move {
        if keep_serving {
            crate::signals::shutdown_signal().await;
        } else {
            tokio::select! {
                _ = stop_rx => {}
                () = crate::signals::shutdown_signal() => {}
            }
        }
    };
    let server_config = config.clone();
    let server = tokio::spawn(async move {
        crate::serve::serve_until(
            &server_config,
            crate::ServeArgs {
                model: None,
                address: None,
            },
            None,
            stop,
            ready_tx,
        )
        .await
    });
    let address = match ready_rx.await {
        Ok(address) => address,
        Err(_) => {
            return match server.await {
                Ok(Err(e)) => Err(e.context("starting the server")),
                _ => Err(anyhow!("the server stopped before it listened")),
            };
        }
    };
    let answered = ask(address, &args.question).await;
    if keep_serving {
        println!("\nserving on http://{address} until Ctrl-C (try /rag, /v1/chat/completions)");
    }
    let _ = stop_tx.send(());
    match server.await {
        Ok(result) => result?,
        Err(e) => bail!("the server task failed: {e}"),
    }
    match answered {
        Ok(()) => Ok(true),
        Err(e) => {
            eprintln!("error: asking the server: {e:#}");
            Ok(false)
        }
    }
}

async fn ask(address: std::net::SocketAddr, question: &str) -> Result<()> {
    let request = serde_json::json!({
        "query": question, "k": 3, "max_tokens": 64, "temperature": 0.7, "seed": 7
    });
    println!("$ curl -s http://{address}/rag -d '{request}'");
    let response = reqwest::Client::new()
        .post(format!("http://{address}/rag"))
        .header("content-type", "application/json")
        .body(request.to_string())
        .timeout(Duration::from_secs(120))
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("{status}: {text}");
    }
    let answer: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("the answer is not JSON: {text}"))?;
    println!("\nQ: {question}");
    println!(
        "A ({MODEL_NAME}): {}",
        answer["answer"].as_str().unwrap_or("").trim()
    );
    let sources = answer["context"].as_array().cloned().unwrap_or_default();
    if sources.is_empty() {
        bail!("the answer cites no source: {text}");
    }
    println!("sources:");
    for source in &sources {
        println!(
            "  [{}] {} ({}), similarity {:.2}",
            source["n"],
            source["title"].as_str().unwrap_or(""),
            source["url"].as_str().unwrap_or(""),
            source["score"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// Numbered steps with their time.
struct Steps {
    total: usize,
    done: usize,
    current: Option<(String, Instant)>,
}

impl Steps {
    fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            current: None,
        }
    }

    fn begin(&mut self, name: &str, what: &str) {
        self.finish();
        self.done += 1;
        println!("\n== {}/{} {name}", self.done, self.total);
        if !what.is_empty() {
            println!("   {what}");
        }
        self.current = Some((name.to_string(), Instant::now()));
    }

    fn finish(&mut self) {
        if let Some((name, at)) = self.current.take() {
            println!("   ({name}: {:.1} s)", at.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.finish();
    }
}
