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
        crate::logging::init_logging(self.log_format);
    }
}
