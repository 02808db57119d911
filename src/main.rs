//! `twin`: the one command of the LLM twin platform, with a subcommand per role.
//!
//! Configuration is layered (defaults, `twin.toml`, `TWIN_*` environment variables; see the
//! `twin-config` crate); `--config` and `--data-dir` override where it comes from and where data
//! goes. Logs go to stderr: text on a terminal, JSON lines otherwise (`--log-format`), filtered
//! by `RUST_LOG`.
//!
//! A module per role's commands: [`ingest`], [`stream`] (with `dlq`), [`snapshot`],
//! [`dataset`], [`train`] (with `runs`), [`generate`], [`eval`], [`log`], [`models`]; [`signals`] holds what long-running roles share (stopping
//! on a signal, serving metrics).

mod dataset;
mod demo;
mod eval;
mod generate;
mod ingest;
mod log;
mod models;
mod serve;
mod signals;
mod snapshot;
mod stream;
mod train;
mod up;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use twin_config::{Sources, TwinConfig};

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
    /// The whole loop on a sample author that ships with the project, offline: crawl her
    /// articles, posts and code from local servers in the platforms' shapes, stream them into
    /// features, snapshot, build a dataset, train a small model from scratch, evaluate, export
    /// and serve it, and answer a question with retrieved sources. Data in `DATA_DIR/demo`.
    Demo(DemoArgs),
    /// Several roles in one process, on whatever backends the configuration names: the crawlers
    /// on their schedules, the stream worker and the HTTP endpoint (all three by default; the
    /// way to run them together on the embedded stores, which one process owns). Ctrl-C/SIGTERM
    /// stops them all cleanly.
    Up(UpArgs),
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
    /// Pin what the warehouse holds now, so that training data is read from it reproducibly.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Build instruct and preference datasets from a snapshot; export and import them.
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Fine-tune a model (Llama, Mistral, Qwen2, GPT-2) on a dataset, LoRA or full; or resume a
    /// run. Options not given come from `[training]`.
    Train(Box<TrainArgs>),
    /// Training runs: list, show, compare (a table and loss curves) and delete them.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Generate text from a model on ONNX Runtime and stream it to the terminal, for a quick
    /// try (a registry model or checkpoint is exported to ONNX on first use).
    Generate(Box<GenerateArgs>),
    /// Evaluate models on a dataset's test split: perplexity of the author's answers, answers
    /// generated with fixed seeds scored by embedding similarity, ROUGE-L and length, and with
    /// `--judge` an LLM judge's accuracy and style. Results are recorded with the runs; two or
    /// more models are printed side by side.
    Eval(Box<EvalArgs>),
    /// Serve retrieval-augmented generation over HTTP: OpenAI-compatible chat completions
    /// (streamed or not), completions, embeddings and models; `/rag`, `/v1/search`, health,
    /// readiness and metrics. Options not given come from `[serving]`.
    Serve(ServeArgs),
    /// Traces of the requests `twin serve` answered: list, show, and export as an evaluation
    /// dataset.
    Traces {
        #[command(subcommand)]
        command: TracesCommand,
    },
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
    /// Models: the embedding model (pull, export, embed), the registry of trained models (list,
    /// show, merge) and checkpoints (forward).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

/// `twin up` options.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The roles, comma-separated: ingest, stream, serve.
    #[arg(long, default_value = "ingest,stream,serve")]
    pub roles: String,
    /// The model served (default: `[serving] model`).
    #[arg(long)]
    pub model: Option<String>,
    /// Where the server listens (default: `[serving] address`).
    #[arg(long)]
    pub address: Option<String>,
    /// Serve beyond loopback without `[serving] api_token` (see `twin serve --help`).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// The stream worker's consumer group.
    #[arg(long, default_value = twin_stream::worker::DEFAULT_GROUP)]
    pub group: String,
}

/// `twin demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The question the served model answers at the end.
    #[arg(
        long,
        default_value = "What should I do with the events my pipeline cannot read?"
    )]
    pub question: String,
    /// Optimizer steps of the training [default: 12 fine-tuning SmolLM2 with LoRA, 120 from
    /// scratch; a few minutes on 2 cores either way].
    #[arg(long)]
    pub train_steps: Option<u64>,
    /// The pretrained base model to fine-tune, a GGUF file [default: SmolLM2-135M-Instruct, as
    /// `scripts/setup.sh` installs it in the tool cache].
    #[arg(long, value_name = "FILE.gguf")]
    pub base_gguf: Option<PathBuf>,
    /// Train a small Llama from scratch on the author's text instead (4 layers, its own
    /// tokenizer): no pretrained model needed, but it cannot write.
    #[arg(long)]
    pub from_scratch: bool,
    /// Test samples evaluated.
    #[arg(long, default_value_t = 8)]
    pub eval_samples: usize,
    /// Train again even if the model was trained on this dataset before.
    #[arg(long)]
    pub retrain: bool,
    /// Start from nothing: remove `DATA_DIR/demo` first.
    #[arg(long)]
    pub fresh: bool,
    /// Keep serving after the answer, until Ctrl-C.
    #[arg(long)]
    pub keep_serving: bool,
}

/// `twin models` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the configured model from the Hugging Face Hub (`embedding.hub_endpoint`) into
    /// the data folder.
    Pull,
    /// Export the configured model's safetensors weights to ONNX.
    Export {
        /// Where to write the ONNX file [default: DATA_DIR/models/MODEL/model.PRECISION.v2.onnx,
        /// at `embedding.precision`].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Embed texts and print one JSON object per text.
    Embed {
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Run a checkpoint (folder or registry name) on token ids and print the logits of the last
    /// position (every position with `--all`).
    Forward {
        /// A Hugging Face checkpoint folder, or `name[@vN]` of the registry.
        model: String,
        /// Token ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        ids: Vec<i64>,
        /// Every position, not only the last.
        #[arg(long)]
        all: bool,
        /// `text` (one line of logits per position) or `json`.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Import a GGUF model file (llama.cpp's format, as Ollama and LM Studio keep them) as a
    /// Hugging Face checkpoint, and register it as a base model to fine-tune, export and serve.
    /// Reads llama (Llama, SmolLM, Mistral) and qwen2 files, tensors F32, F16, BF16, Q8_0, Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (dequantized to f32), and the tokenizer in the file.
    Import {
        /// The `.gguf` file.
        file: PathBuf,
        /// The registry name [default: the file's name without `.gguf`].
        #[arg(long)]
        name: Option<String>,
    },
    /// The trained models of the registry, newest version of each name last.
    List,
    /// One registered model: its lineage, config and files.
    Show {
        /// `name` (its newest version) or `name@vN`.
        model: String,
    },
    /// Export a trained model (Llama, Mistral, Qwen2, GPT-2; a LoRA adapter merged first) to
    /// ONNX with a key/value cache, in Hugging Face Optimum's layout, for generation on ONNX
    /// Runtime.
    ExportLlm {
        /// `name[@vN]` of the registry, a Hugging Face checkpoint folder or a PEFT adapter folder.
        model: String,
        /// Where to write the folder [default: `onnx/` inside the model's folder].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Keep the weights in `model.onnx_data` beside the graph (always done above 1 GB).
        #[arg(long)]
        external_data: bool,
    },
    /// Fold a LoRA adapter into its base model and write a full checkpoint.
    Merge {
        /// The adapter: a folder or `name[@vN]` of the registry.
        adapter: String,
        /// The base model folder [default: the one the adapter records].
        #[arg(long, value_name = "DIR")]
        base: Option<PathBuf>,
        /// Where to write the merged model.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Also register the merged model under this name.
        #[arg(long, value_name = "NAME")]
        register: Option<String>,
    },
}

/// `twin generate` options.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// An exported folder (`model.onnx`), a checkpoint folder, or `name[@vN]` of the registry.
    pub model: String,
    /// The text to continue (with `--chat`, the user's message).
    pub prompt: String,
    /// Send the prompt as a user's turn through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user's (implies `--chat`).
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate [default: 256, or what the context leaves].
    #[arg(long, allow_negative_numbers = true)]
    pub max_tokens: Option<usize>,
    /// Softmax temperature; 0 is greedy [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Keep the k most likely tokens (0: all).
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<usize>,
    /// Keep the most likely tokens up to this probability mass [default: 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Penalise tokens already in the text (1: off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the draws: the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// `text` (the text streamed) or `json` (the completion, once done).
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// `twin traces` subcommands.
#[derive(Debug, Subcommand)]
pub enum TracesCommand {
    /// The newest traces: time, route, model, query, chunks retrieved, tokens, milliseconds.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only `/rag`, `/v1/chat/completions` or `/v1/search`.
        #[arg(long)]
        route: Option<String>,
    },
    /// One trace in full, as JSON.
    Show {
        /// Its id, or a unique prefix.
        id: String,
    },
    /// Write the answered queries as an evaluation dataset: `DIR/test.jsonl` of Alpaca records
    /// (instruction: the query, output: the answer), for `twin dataset import DIR`.
    Export {
        /// The folder.
        #[arg(long)]
        out: PathBuf,
        /// The newest N traces with an answer.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
}

/// `twin serve` options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The model: `name[@vN]` of the registry, a checkpoint folder or an exported folder
    /// [default: `[serving] model`].
    #[arg(long)]
    pub model: Option<String>,
    /// Address to listen on [default: `[serving] address`, 127.0.0.1:8000].
    #[arg(long)]
    pub address: Option<String>,
    /// Listen beyond loopback without `[serving] api_token`: anyone who reaches the address
    /// can use the model and read the author's documents.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// `twin eval` options.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The models: `name[@vN]` of the registry, checkpoint or adapter folders (exported to ONNX
    /// on first use for generation).
    #[arg(required = true)]
    pub models: Vec<String>,
    /// The dataset whose test split is evaluated on: an id, name or prefix, or a folder or
    /// file of samples.
    #[arg(long)]
    pub dataset: String,
    /// An LLM judge: the name of a `[datasets.generators.NAME]` endpoint, or the base url of
    /// an OpenAI-compatible API (`http://localhost:8000/v1`; key from `OPENAI_API_KEY`).
    #[arg(long, value_name = "ENDPOINT")]
    pub judge: Option<String>,
    /// The judge's model when `--judge` is a url [default: `[evaluation] judge_model`].
    #[arg(long)]
    pub judge_model: Option<String>,
    /// Test samples evaluated, the first of the split (0: all) [default: `[evaluation]`].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Most tokens per generated answer.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Sampling temperature of the answers (0: greedy).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Nucleus sampling of the answers.
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Seed of the answers (sample i uses seed + i).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also draw the evaluations as bar charts to FILE.png and FILE.svg.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// `text` (a table) or `json` (the evaluations).
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// `twin train` subcommands.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Size a run before it starts, for this machine or GPUs we do not have: memory per GPU
    /// (weights, gradients, optimizer state, activations, logits), how it splits over N GPUs,
    /// tokens per second from the GPUs' peak, and whether it fits (exit code 1 if not, with
    /// what would).
    Plan(Box<PlanArgs>),
}

/// `twin train plan` options.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// A preset (llama-3.1-8b, llama-3.1-70b, mistral-7b, qwen2.5-7b, qwen2.5-14b, qwen2.5-32b,
    /// qwen2.5-72b), a checkpoint folder, a `config.json`, or `name[@vN]` of the registry.
    #[arg(long)]
    pub model: String,
    /// `full`, `lora` or `qlora`.
    #[arg(long, default_value = "lora")]
    pub method: String,
    /// GPUs.
    #[arg(long, default_value_t = 1)]
    pub gpus: u64,
    /// A GPU by name (h100, h200, a100-80gb, a100-40gb, l40s, a10g): its memory and peak.
    #[arg(long, default_value = "h100")]
    pub gpu: String,
    /// Memory of each GPU (`80GiB`, `48GB`), instead of the named GPU's.
    #[arg(long)]
    pub gpu_memory: Option<String>,
    /// Dense bf16 peak of each GPU in TFLOP/s, instead of the named GPU's.
    #[arg(long)]
    pub gpu_tflops: Option<f64>,
    /// Share of the peak a step reaches.
    #[arg(long, default_value_t = 0.4)]
    pub efficiency: f64,
    /// Tokens per row.
    #[arg(long, default_value_t = 2048)]
    pub seq: u64,
    /// Rows per micro-batch on each GPU.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Recompute activations in the backward pass.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// GPUs each layer is split over (tensor parallel; it must divide the key/value heads); the
    /// optimizer state is sharded over all of them.
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel: u64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub lora_rank: u64,
    /// `text` or `json`.
    #[arg(long, default_value = "text")]
    pub format: String,
}

/// `twin train` options (each also a `[training]` setting).
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TrainArgs {
    /// Size a run instead of starting one.
    #[command(subcommand)]
    pub command: Option<TrainCommand>,
    /// A dataset id, name or id prefix (twin dataset list), or a JSONL file of samples.
    #[arg(long, value_name = "ID-OR-FILE")]
    pub dataset: Option<String>,
    /// The model to start from: a Hugging Face checkpoint folder or `name[@vN]` of the registry.
    #[arg(long, value_name = "DIR-OR-NAME")]
    pub model: Option<String>,
    /// Start from scratch with this `config.json`, and a byte-level BPE tokenizer trained on
    /// the dataset's snapshot.
    #[arg(long, value_name = "CONFIG.json")]
    pub init: Option<PathBuf>,
    /// Continue a run from its newest checkpoint (every other option comes from the run).
    #[arg(long, value_name = "RUN")]
    pub resume: Option<String>,
    /// `lora`, `full` or `dpo` (preference tuning on a preference dataset).
    #[arg(long)]
    pub method: Option<String>,
    /// Passes over the training split.
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Stop after this many optimizer steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Rows per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long = "grad-accum")]
    pub gradient_accumulation: Option<usize>,
    /// Longest row, in tokens.
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Peak learning rate.
    #[arg(long = "lr")]
    pub learning_rate: Option<f64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Warm-up steps.
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// `cosine`, `linear` or `constant`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// Clip gradients to this global norm (0: off).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// One sample per row.
    #[arg(long)]
    pub no_packing: bool,
    /// Loss on every token, not only the answer's.
    #[arg(long)]
    pub all_tokens: bool,
    /// Evaluate every N steps.
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Seed of initialisation, data order and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_rank: Option<i64>,
    /// DPO: how far the policy may move from the reference (beta).
    #[arg(long)]
    pub dpo_beta: Option<f64>,
    /// DPO: label smoothing (conservative DPO), in [0, 0.5).
    #[arg(long)]
    pub dpo_label_smoothing: Option<f64>,
    /// DPO: `sigmoid` or `ipo`.
    #[arg(long)]
    pub dpo_loss: Option<String>,
    /// DPO: `cached` (computed once before training) or `on_the_fly` reference log-probabilities.
    #[arg(long)]
    pub dpo_reference: Option<String>,
    /// DPO: train `lora` adapters (the reference is the base with them off) or `full` weights.
    #[arg(long)]
    pub dpo_weights: Option<String>,
    /// LoRA alpha.
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// LoRA target modules, comma-separated (`q_proj,v_proj`).
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// `auto`, `cpu` or `cuda`.
    #[arg(long)]
    pub device: Option<String>,
    /// `auto`, `f32` or `bf16`.
    #[arg(long)]
    pub precision: Option<String>,
    /// A built-in chat template (`alpaca`, `chatml`, `llama3`) instead of the checkpoint's.
    #[arg(long)]
    pub template: Option<String>,
    /// A name for the run.
    #[arg(long)]
    pub name: Option<String>,
    /// The registry name of the trained model [default: the run's name, else `twin`].
    #[arg(long, value_name = "NAME")]
    pub register_as: Option<String>,
}

/// `twin runs` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Every run: status, method, model, dataset, steps and losses.
    List,
    /// One run: parameters, lineage, code version, last steps and evaluations.
    Show {
        /// Its id, id prefix or name.
        run: String,
    },
    /// Runs side by side: parameters that differ and final metrics, and their loss curves
    /// drawn to PNG and SVG.
    Compare {
        /// Two or more runs (id, id prefix or name).
        #[arg(required = true, num_args = 1..)]
        runs: Vec<String>,
        /// Where to draw the curves (`.png` and `.svg` are added) [default:
        /// DATA_DIR/runs/compare-RUNS].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Every parameter, not only those that differ.
        #[arg(long)]
        all: bool,
    },
    /// Forget a run: its record, metrics, checkpoints and outputs (registered models stay).
    Delete {
        /// Its id, id prefix or name.
        run: String,
    },
}

/// `twin snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Pin the log positions the warehouse has applied; what is read through the snapshot never
    /// changes afterwards.
    Create {
        /// A name to find it by.
        #[arg(long)]
        name: Option<String>,
        /// If the warehouse has not applied the whole raw-documents topic yet, wait for it
        /// (instead of pinning what it has applied).
        #[arg(long)]
        wait: bool,
        /// Longest wait with `--wait`, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// List the snapshots, oldest first.
    List,
    /// A snapshot's positions, and its documents and chunks per author, kind and platform.
    Show {
        /// Its id, a unique prefix of it, or its name.
        id: String,
    },
    /// Forget a snapshot (its data stays until `compact`).
    Delete {
        /// Its id, a unique prefix of it, or its name.
        id: String,
    },
    /// Remove the warehouse history that no kept snapshot can read (all superseded versions
    /// when none is kept).
    Compact,
}

/// `twin dataset` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatasetCommand {
    /// Build a dataset from a snapshot.
    Build {
        /// The snapshot: id, unique id prefix or name.
        #[arg(long)]
        snapshot: String,
        /// `instruct` (instruction, answer) or `preference` (prompt, chosen, rejected).
        #[arg(long)]
        kind: String,
        /// Instruct samples: `backtranslate` (the answer is the author's text; the generator
        /// writes the instruction) or `extract` (the generator writes pairs in the author's voice).
        #[arg(long)]
        method: Option<String>,
        /// `offline` (no LLM) or the name of a `[datasets.generators.NAME]` endpoint
        /// [default: datasets.generator].
        #[arg(long)]
        generator: Option<String>,
        /// Stop once this many samples are kept.
        #[arg(long)]
        max_samples: Option<usize>,
        /// Seed of the split and the sample order [default: datasets.seed].
        #[arg(long)]
        seed: Option<u64>,
        /// Share of documents whose samples are held out for test [default: datasets.test_fraction].
        #[arg(long)]
        test_fraction: Option<f64>,
        /// A name to find it by.
        #[arg(long)]
        name: Option<String>,
        /// Build it again even if a dataset with the same id exists (cached answers are reused).
        #[arg(long)]
        force: bool,
    },
    /// List the datasets.
    List,
    /// A dataset's lineage, parameters and statistics, and its first samples.
    Show {
        /// Its id, a unique prefix of it, or its name.
        id: String,
        /// Print this many samples.
        #[arg(long, default_value_t = 0)]
        samples: usize,
    },
    /// Write a dataset as JSONL, one file per split (`train.jsonl`, `test.jsonl`).
    Export {
        /// Its id, a unique prefix of it, or its name.
        id: String,
        /// `alpaca`, `chatml` (OpenAI messages) or `trl` (prompt, chosen, rejected)
        /// [default: alpaca for instruct data, trl for preference data].
        #[arg(long)]
        format: Option<String>,
        /// The folder to write to.
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a dataset made elsewhere: Alpaca, ChatML or TRL records, as JSONL or a JSON array.
    Import {
        /// Files or folders; `test=FILE` or `train=FILE` sets a file's split (otherwise a name
        /// with test, valid or eval in it is test, and the rest train).
        #[arg(required = true)]
        paths: Vec<String>,
        /// A name to find it by.
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget a dataset.
    Delete {
        /// Its id, a unique prefix of it, or its name.
        id: String,
    },
}

/// `twin dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
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
        Command::Demo(args) => demo::demo(&config, args).await,
        Command::Up(args) => up::up(&config, args).await,
        command => dispatch(&config, command).await,
    }
}

/// Run one command on `config` (the demo runs its steps through here too).
async fn dispatch(config: &TwinConfig, command: Command) -> Result<ExitCode> {
    match command {
        Command::Demo(_) | Command::Up(_) => {
            anyhow::bail!("`twin demo` and `twin up` do not run inside another command")
        }
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            print!("{}", config.to_masked_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let log = twin_eventlog::open(config)?;
            log::print_topics(config, log.as_ref()).await?;
            println!();
            let crawled = ingest::ingest(config, log, true, None).await?;
            println!("\nstreaming what the log holds...");
            let streamed =
                stream::stream(config, false, true, twin_stream::worker::DEFAULT_GROUP).await?;
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
        } => stream::stream(config, rebuild, once, &group).await,
        Command::Dlq { command } => stream::dlq(config, command).await,
        Command::Log {
            command: LogCommand::Topics,
        } => {
            let log = twin_eventlog::open(config)?;
            log::print_topics(config, log.as_ref()).await?;
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
            let log = twin_eventlog::open(config)?;
            log::tail(log.as_ref(), &topic, group.as_deref(), max, follow).await
        }
        Command::Models { command } => models::models(config, command).await,
        Command::Ingest { once, source } => {
            let log = twin_eventlog::open(config)?;
            ingest::ingest(config, log, once, source.as_deref()).await
        }
        Command::Snapshot { command } => snapshot::snapshot(config, command).await,
        Command::Dataset { command } => dataset::dataset(config, command).await,
        Command::Train(args) => train::train(config, *args).await,
        Command::Runs { command } => train::runs(config, command).await,
        Command::Generate(args) => generate::generate(config, *args).await,
        Command::Eval(args) => eval::eval(config, *args).await,
        Command::Serve(args) => serve::serve(config, args).await,
        Command::Traces { command } => serve::traces(config, command).await,
    }
}
