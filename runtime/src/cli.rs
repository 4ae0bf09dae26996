//! The command-line arguments every service that reads the pipeline's resources shares.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use tally_contracts::{ConfigError, RuntimeConfig};

/// Arguments common to the collector, the processor and the query service (each ignores the
/// server it does not use).
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
    /// A directory of mounted Secrets (`<dir>/<secret>/<key>`, as Kubernetes mounts them):
    /// where the Secrets the resources name are looked up when no `v1` `Secret` document of
    /// the configuration holds them. The operator mounts them at /etc/tally/secrets.
    #[arg(long, env = "TALLY_SECRETS_DIR", value_name = "DIR")]
    pub secrets_dir: Option<PathBuf>,
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
        let mut config =
            RuntimeConfig::load_with_secrets(&self.config, self.secrets_dir.as_deref())?;
        if let Some(url) = &self.nats_url {
            config.pipeline.spec.nats.url = url.clone();
        }
        if let Some(url) = &self.clickhouse_url {
            config.pipeline.spec.clickhouse.url = url.clone();
        }
        Ok(config)
    }

    /// Starts logging in the chosen format, and tracing when the OpenTelemetry environment
    /// asks for it (see [`crate::logging::init_telemetry`]); keep the returned guard until
    /// the process exits.
    pub fn init_telemetry(&self, default_service: &str) -> anyhow::Result<crate::Telemetry> {
        crate::logging::init_telemetry(self.log_format, default_service)
    }
}
