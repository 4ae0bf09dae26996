//! The signals a service answers: SIGINT and SIGTERM ask it to stop; SIGHUP asks it to
//! reload its configuration.

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler never fails on unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested; draining in-flight work");
}

/// Calls `apply` with a freshly loaded configuration on every SIGHUP, for as long as the
/// runtime runs. A configuration that does not load is logged (the message names the file
/// and field, never a key) and the running one is kept.
pub fn reload_on_hangup(
    load: impl Fn() -> Result<tally_contracts::RuntimeConfig, tally_contracts::ConfigError>
    + Send
    + 'static,
    apply: impl Fn(tally_contracts::RuntimeConfig) + Send + 'static,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot install a SIGHUP handler: the configuration is not reloadable");
            return;
        };
        while hangups.recv().await.is_some() {
            match load() {
                Ok(config) => {
                    let (sites, keys) = (config.sites.len(), config.keys().len());
                    apply(config);
                    tracing::info!(sites, keys, "configuration reloaded");
                }
                Err(error) => {
                    tracing::error!(%error, "configuration not reloaded; the running one is kept")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (load, apply);
}
