//! Plumbing every Tally service shares: the command-line arguments that locate the
//! configuration and override server addresses, structured logging, and the shutdown signal.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::{ConfigError, RuntimeConfig};

/// Arguments common to the collector and the processor.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// The pipeline and site resources: a YAML file (documents separated by `---`) or a
    /// directory of `.yaml`/`.yml` files.
    #[arg(long, env = "TALLY_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
    /// NATS URL; overrides `spec.nats.url` of the pipeline.
    #[arg(long, env = "TALLY_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// ClickHouse HTTP URL; overrides `spec.clickhouse.url` of the pipeline.
    #[arg(long, env = "TALLY_CLICKHOUSE_URL", value_name = "URL")]
    pub clickhouse_url: Option<String>,
    /// Log format: one JSON object per line, or human-readable text.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

impl CommonArgs {
    /// Loads the configuration and applies the address overrides.
    pub fn load_config(&self) -> Result<RuntimeConfig, ConfigError> {
        let mut config = RuntimeConfig::load(&self.config)?;
        if let Some(url) = &self.nats_url {
            config.pipeline.spec.nats.url = url.clone();
        }
        if let Some(url) = &self.clickhouse_url {
            config.pipeline.spec.clickhouse.url = url.clone();
        }
        Ok(config)
    }

    /// Starts logging in the chosen format.
    pub fn init_logging(&self) {
        init_logging(self.log_format);
    }
}

/// Starts logging to standard error; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

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
