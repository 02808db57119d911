//! `twin serve`: the inference service: retrieval-augmented generation over HTTP, with the
//! model on ONNX Runtime and the vector store the feature pipeline fills.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twin_config::{TwinConfig, VectorStoreBackend};
use twin_serving::backend::{Backend, Remote};
use twin_serving::http::{self, Limits, ServerState};
use twin_serving::retrieval::{RetrievalSettings, Retriever};
use twin_serving::trace::Tracer;
use twin_serving::Engine;

use crate::ServeArgs;

/// `twin serve`: until Ctrl-C or SIGTERM.
pub async fn serve(config: &TwinConfig, args: ServeArgs) -> Result<ExitCode> {
    let (ready, _) = tokio::sync::oneshot::channel();
    serve_until(config, args, None, crate::signals::shutdown_signal(), ready).await?;
    Ok(ExitCode::SUCCESS)
}

/// What a server in the same process as the stream worker shares with it (`twin up`): the
/// embedded stores have one owner per process.
pub struct Shared {
    pub embedder: Arc<twin_embedding::Embedder>,
    pub store: Arc<dyn twin_vectorstore::VectorStore>,
    pub warehouse: Arc<dyn twin_warehouse::Warehouse>,
}

/// Serve until `stop` resolves, then finish the requests in flight (at most
/// `shutdown_grace_secs`). `ready` gets the address once the server listens. Without `shared`
/// the server opens the embedder and the stores itself.
pub async fn serve_until(
    config: &TwinConfig,
    args: ServeArgs,
    shared: Option<Shared>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
    ready: tokio::sync::oneshot::Sender<std::net::SocketAddr>,
) -> Result<()> {
    let settings = &config.serving;
    let address = args.address.unwrap_or_else(|| settings.address.clone());
    check_exposure(&address, &settings.api_token, args.insecure_no_auth).await?;
    let remote = &settings.remote;
    let (backend, model) = if remote.base_url.is_empty() {
        let model = args.model.unwrap_or_else(|| settings.model.clone());
        if model.is_empty() {
            bail!(
                "which model? twin serve --model NAME (a registry name, a checkpoint folder or \
                 an exported folder), [serving] model, or an external one in [serving.remote]"
            );
        }
        let dir = crate::generate::resolve(&config.layout(), &model)?;
        let engine = Engine::load(&dir, crate::generate::engine_options(config))?;
        (Backend::Local(Arc::new(engine)), model)
    } else {
        if remote.model.is_empty() {
            bail!("[serving.remote] base_url is set: set its model too (the model it serves)");
        }
        if args.model.is_some() {
            bail!(
                "--model serves a model on our engine, but [serving.remote] base_url sends \
                 generation to {}: give one or the other",
                remote.base_url
            );
        }
        let backend = Backend::Remote(Remote::new(
            &remote.base_url,
            &remote.model,
            remote.resolve_api_key(),
            remote.context_tokens,
            Duration::from_secs(remote.timeout_secs.max(1)),
        )?);
        (backend, remote.model.clone())
    };
    let Shared {
        embedder,
        store,
        warehouse,
    } = match shared {
        Some(shared) => shared,
        None => open_stores(config).await?,
    };
    let retriever = Retriever::new(
        embedder,
        store,
        warehouse.as_ref(),
        RetrievalSettings {
            candidates: settings.candidates,
            mmr_lambda: settings.mmr_lambda,
            max_query_chars: settings.max_query_chars,
        },
    )
    .await?;
    let retriever = if settings.reranker.model.is_empty() {
        retriever
    } else {
        let reranker = twin_embedding::open_cross_encoder(
            &settings.reranker,
            &config.embedding,
            &config.data_dir,
        )
        .await
        .with_context(|| format!("loading the re-ranker {}", settings.reranker.model))?;
        tracing::info!(model = %settings.reranker.model, "re-ranking with a cross-encoder");
        retriever.with_reranker(Arc::new(reranker))
    };
    retriever.check_model().await?;
    let recorder = prometheus()?;
    let name = std::path::Path::new(&model)
        .file_name()
        .map_or_else(|| model.clone(), |n| n.to_string_lossy().into_owned());
    let state = ServerState {
        backend,
        model: name.clone(),
        retriever: Arc::new(retriever),
        author: config.author.full_name.clone(),
        limits: Limits {
            max_concurrent: settings.max_concurrent_requests,
            max_queued: settings.max_queued_requests,
            timeout: Duration::from_secs(settings.request_timeout_secs.max(1)),
            max_body_bytes: settings.max_body_bytes,
            k: settings.k,
            max_tokens: settings.max_tokens,
            expansions: settings.expansions,
            retrieval: settings.retrieval,
        },
        token: (!settings.api_token.is_empty()).then(|| settings.api_token.clone()),
        metrics: Some(Arc::new(move || recorder.render())),
        tracer: (settings.trace_sample_rate > 0.0)
            .then(|| Tracer::start(warehouse.clone(), settings.trace_sample_rate, &model)),
    };
    let mut router = http::router(state);
    if !settings.cors_origins.is_empty() {
        router = router.layer(http::cors(&settings.cors_origins)?);
    }
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("listening on {address}"))?;
    let bound = listener.local_addr()?;
    println!("serving {name} on http://{bound} (OpenAPI at /openapi.json)");
    let _ = ready.send(bound);
    tracing::info!(%bound, model = %name, "serving");
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let limits = twin_serving::server::ConnectionLimits {
        header_read_timeout: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
        idle_timeout: Duration::from_secs(settings.idle_timeout_secs.max(1)),
        max_connections: settings.max_connections.max(1),
    };
    let server = twin_serving::server::serve(listener, router, limits, async move {
        stop.await;
        eprintln!(
            "stopping: finishing the requests in flight (at most {} s)",
            grace.as_secs()
        );
        let _ = stopping.send(());
    });
    // In-flight requests get `grace` to finish after the signal; then the process ends.
    let deadline = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = server => {},
        () = deadline => eprintln!("requests still in flight after {} s: stopping anyway", grace.as_secs()),
    }
    Ok(())
}

/// Refuse to listen beyond loopback without a token, unless told `--insecure-no-auth` (then
/// say so loudly): such a server answers anyone who reaches it, with the author's documents.
pub async fn check_exposure(address: &str, api_token: &str, insecure_no_auth: bool) -> Result<()> {
    if !api_token.is_empty() {
        return Ok(());
    }
    let resolved = tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("the address to listen on, {address}, is not host:port"))?;
    let Some(exposed) = resolved.map(|a| a.ip()).find(|ip| !ip.is_loopback()) else {
        return Ok(());
    };
    if insecure_no_auth {
        let warning = format!(
            "listening on {address} ({exposed}) WITHOUT AUTHENTICATION (--insecure-no-auth): \
             anyone who reaches it can use the model and read the author's documents"
        );
        eprintln!("WARNING: {warning}");
        tracing::warn!("{warning}");
        return Ok(());
    }
    bail!(
        "refusing to listen on {address} ({exposed} is not a loopback address) without an API \
         token: anyone who reaches it could use the model and read the author's documents. Set \
         [serving] api_token (or TWIN_SERVING__API_TOKEN), listen on 127.0.0.1, or pass \
         --insecure-no-auth to accept the risk"
    )
}

/// The embedder and the stores, opened for a server of its own.
async fn open_stores(config: &TwinConfig) -> Result<Shared> {
    let embedder = Arc::new(twin_embedding::open(&config.embedding, &config.data_dir).await?);
    let store = twin_vectorstore::open(&config.vectors, &config.data_dir, embedder.dimension())
        .await
        .map_err(|e| {
            let hint = if config.vectors.backend == VectorStoreBackend::Edge {
                " (the embedded vector store is opened by one process at a time: stop `twin \
                 stream` first, run both in one process with `twin up`, or use the Qdrant server \
                 backend, where any number of `twin serve` replicas run beside the stream)"
            } else {
                ""
            };
            anyhow::anyhow!("opening the vector store: {e}{hint}")
        })?;
    // The embedded store indexes only when asked (the stream asks when it has caught up).
    if store.optimize().await? {
        tracing::info!("vector store indexed");
    }
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    Ok(Shared {
        embedder,
        store,
        warehouse,
    })
}

/// `twin traces`.
pub async fn traces(config: &TwinConfig, command: crate::TracesCommand) -> Result<ExitCode> {
    use crate::TracesCommand;
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
    match command {
        TracesCommand::List { limit, route } => {
            let rows = warehouse
                .traces(0, if route.is_some() { 100_000 } else { limit })
                .await?;
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|t| route.as_ref().is_none_or(|r| &t.route == r))
                .take(limit)
                .collect();
            if rows.is_empty() {
                println!("no traces yet (twin serve writes them; [serving] trace_sample_rate)");
            }
            for t in rows {
                let body: serde_json::Value = serde_json::from_str(&t.body).unwrap_or_default();
                let query: String = body["query"]
                    .as_str()
                    .unwrap_or("-")
                    .chars()
                    .take(60)
                    .collect();
                println!(
                    "{}  {}  {:<20} {}  chunks {}  tokens {}+{}  {:.0} ms  {:?}",
                    t.id,
                    crate::snapshot::time(t.created_at),
                    t.route,
                    t.model,
                    body["retrieved"].as_array().map_or(0, Vec::len),
                    body["prompt_tokens"].as_u64().unwrap_or(0),
                    body["completion_tokens"].as_u64().unwrap_or(0),
                    body["millis"]["total"]
                        .as_f64()
                        .or(body["millis"]["retrieval"].as_f64())
                        .unwrap_or(0.0),
                    query
                );
            }
        }
        TracesCommand::Show { id } => {
            let Some(t) = twin_warehouse::find_trace(warehouse.as_ref(), &id).await? else {
                bail!("{id}: no such trace (twin traces list)");
            };
            let body: serde_json::Value = serde_json::from_str(&t.body)?;
            let shown = serde_json::json!({
                "id": t.id,
                "created_at": crate::snapshot::time(t.created_at),
                "route": t.route,
                "model": t.model,
                "trace": body,
            });
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        TracesCommand::Export { out, limit } => {
            let mut lines = Vec::new();
            for t in warehouse.traces(0, 100_000).await? {
                let body: serde_json::Value = serde_json::from_str(&t.body).unwrap_or_default();
                let (Some(query), Some(answer)) = (body["query"].as_str(), body["answer"].as_str())
                else {
                    continue;
                };
                if query.trim().is_empty() || answer.trim().is_empty() {
                    continue;
                }
                lines.push(
                    serde_json::json!({"instruction": query, "input": "", "output": answer})
                        .to_string(),
                );
                if lines.len() == limit {
                    break;
                }
            }
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let file = out.join("test.jsonl");
            std::fs::write(&file, lines.join("\n") + "\n")
                .with_context(|| format!("writing {}", file.display()))?;
            println!(
                "{} answered queries written to {} (twin dataset import {})",
                lines.len(),
                file.display(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The process's Prometheus recorder: installed by its first server and shared by the next (the
/// metrics system takes one recorder per process, and the demo serves two models in turn).
fn prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}
