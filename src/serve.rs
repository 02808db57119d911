//! `twin serve`: the inference service: retrieval-augmented generation over HTTP, with the
//! model on ONNX Runtime and the vector store the feature pipeline fills.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twin_config::{TwinConfig, VectorStoreBackend};
use twin_serving::http::{self, Limits, ServerState};
use twin_serving::retrieval::{RetrievalSettings, Retriever};
use twin_serving::{Engine, EngineOptions};

use crate::ServeArgs;

/// `twin serve`.
pub async fn serve(config: &TwinConfig, args: ServeArgs) -> Result<ExitCode> {
    let settings = &config.serving;
    let model = args.model.unwrap_or_else(|| settings.model.clone());
    if model.is_empty() {
        bail!(
            "which model? twin serve --model NAME (a registry name, a checkpoint folder or an \
             exported folder), or [serving] model"
        );
    }
    let address = args.address.unwrap_or_else(|| settings.address.clone());
    let layout = config.layout();
    let dir = crate::generate::resolve(&layout, &model)?;
    let generation = &config.generation;
    let engine = Engine::load(
        &dir,
        EngineOptions {
            max_batch_size: generation.max_batch_size,
            max_batch_tokens: generation.max_batch_tokens,
            use_cache: true,
            intra_threads: generation.threads,
        },
    )?;
    let embedder = Arc::new(twin_embedding::open(&config.embedding, &config.data_dir).await?);
    let store = twin_vectorstore::open(&config.vectors, &config.data_dir, embedder.dimension())
        .await
        .map_err(|e| {
            let hint = if config.vectors.backend == VectorStoreBackend::Edge {
                " (the embedded vector store is opened by one process at a time: stop `twin \
                 stream` first, or use the Qdrant server backend, where any number of `twin \
                 serve` replicas run beside the stream)"
            } else {
                ""
            };
            anyhow::anyhow!("opening the vector store: {e}{hint}")
        })?;
    let warehouse = twin_warehouse::open(&config.warehouse, &config.data_dir).await?;
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
    retriever.check_model().await?;
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let name = std::path::Path::new(&model)
        .file_name()
        .map_or_else(|| model.clone(), |n| n.to_string_lossy().into_owned());
    let state = ServerState {
        engine: Arc::new(engine),
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
        },
        token: (!settings.api_token.is_empty()).then(|| settings.api_token.clone()),
        metrics: Some(Arc::new(move || recorder.render())),
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
    tracing::info!(%bound, model = %name, "serving");
    let grace = Duration::from_secs(settings.shutdown_grace_secs);
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        crate::signals::shutdown_signal().await;
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
        result = server => result?,
        () = deadline => eprintln!("requests still in flight after {} s: stopping anyway", grace.as_secs()),
    }
    Ok(ExitCode::SUCCESS)
}
