//! What long-running roles share: stopping on a signal, and serving metrics.

/// Serve `/metrics` for Prometheus on `listen` (`[metrics] ROLE`; empty: off). A port already
/// taken (another worker of the same role on this machine) is reported and the work goes on
/// without metrics.
pub fn serve_metrics(role: &str, listen: &str) {
    if listen.is_empty() {
        return;
    }
    let address: std::net::SocketAddr = match listen.parse() {
        Ok(address) => address,
        Err(e) => {
            tracing::warn!(role, listen, error = %e, "[metrics] address is not an address; metrics are off");
            return;
        }
    };
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
    {
        Ok(()) => tracing::info!(role, %address, "serving Prometheus metrics on /metrics"),
        Err(e) => {
            tracing::warn!(role, %address, error = %e, "cannot serve metrics; going on without")
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: the worker finishes its batch, commits and stops.
pub async fn shutdown_signal() {
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
