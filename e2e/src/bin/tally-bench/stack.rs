//! The system under test: either a local stack started the way `make dev` runs it (release
//! binaries, real nats-server and ClickHouse, on free loopback ports, via the e2e harness),
//! or a stack already running (`--target`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tally_contracts::RuntimeConfig;
use tally_e2e::{Options, Process, Stack};

/// Name of the bench pipeline: stream `TALLY_BENCH`, database `tally_bench`.
pub const PIPELINE: &str = "bench";
/// The site of the end-to-end lag probes.
pub const PROBE_SITE: &str = "probe";

/// Where the load goes and what it reads.
pub struct Target {
    pub collector: SocketAddr,
    pub host: String,
    pub nats_url: String,
    pub clickhouse_url: String,
    pub config: RuntimeConfig,
    pub local: Option<Local>,
    pub http: reqwest::Client,
}

/// The processes of a local stack. Fields drop in order: the services before the servers.
pub struct Local {
    pub collector: Option<Process>,
    pub processor: Option<Process>,
    pub stack: Stack,
    pub bin_dir: PathBuf,
    pub collector_args: Vec<String>,
    pub processor_port: u16,
}

/// Settings of the bench pipeline.
pub struct PipelineSettings {
    pub sites: Vec<String>,
    pub batch_max_rows: u32,
    pub batch_max_wait: String,
}

/// The bench pipeline: the example pipeline's settings (what `make dev` runs), with the
/// bench's sites.
pub fn pipeline_yaml(settings: &PipelineSettings, nats_port: u16, clickhouse_port: u16) -> String {
    let mut yaml = format!(
        "apiVersion: tally.dev/v1alpha1
kind: AnalyticsPipeline
metadata:
  name: {PIPELINE}
spec:
  nats:
    url: nats://127.0.0.1:{nats_port}
    stream:
      storage: File
      maxAge: 7d
      duplicateWindow: 2m
  clickhouse:
    url: http://127.0.0.1:{clickhouse_port}
    retentionDays: 400
  collector:
    maxBodyBytes: 1048576
    maxBatchEvents: 1000
  processor:
    batchMaxRows: {rows}
    batchMaxWait: {wait}
    ackWait: 30s
    maxDeliver: 10
",
        rows = settings.batch_max_rows,
        wait = settings.batch_max_wait,
    );
    for site in settings
        .sites
        .iter()
        .map(String::as_str)
        .chain([PROBE_SITE])
    {
        yaml.push_str(&format!(
            "---
apiVersion: tally.dev/v1alpha1
kind: AnalyticsSite
metadata:
  name: {site}
spec:
  pipelineRef:
    name: {PIPELINE}
  siteId: {site}
"
        ));
    }
    yaml
}

impl Target {
    /// Starts NATS and ClickHouse (not yet the processor and collector) with the bench
    /// pipeline.
    pub async fn start_local(
        settings: &PipelineSettings,
        bin_dir: PathBuf,
        collector_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        for bin in ["tally-collector", "tally-processor"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} is missing: build the release binaries first (e2e/scripts/bench.sh does)",
                    bin_dir.join(bin).display()
                );
            }
        }
        let options = Options {
            batch_max_rows: settings.batch_max_rows,
            batch_max_wait: "1s",
            ack_wait: "30s",
            duplicate_window: None,
        };
        let stack = Stack::start_servers(options).await?;
        let yaml = pipeline_yaml(settings, stack.nats_port, stack.clickhouse_port);
        std::fs::write(&stack.config, &yaml)?;
        let config = RuntimeConfig::load(&stack.config)
            .map_err(|e| anyhow::anyhow!("the bench pipeline does not load: {e}"))?;
        let collector = SocketAddr::from(([127, 0, 0, 1], stack.collector_port));
        Ok(Self {
            host: collector.to_string(),
            collector,
            nats_url: format!("nats://127.0.0.1:{}", stack.nats_port),
            clickhouse_url: format!("http://127.0.0.1:{}", stack.clickhouse_port),
            config,
            http: reqwest::Client::new(),
            local: Some(Local {
                collector: None,
                processor: None,
                processor_port: stack.processor_port,
                stack,
                bin_dir,
                collector_args,
            }),
        })
    }

    /// A stack that is already running.
    pub fn remote(
        collector_url: &str,
        nats_url: &str,
        clickhouse_url: &str,
        config: &Path,
    ) -> anyhow::Result<Self> {
        let host = collector_url
            .strip_prefix("http://")
            .context("--target must be an http:// URL")?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let host = if host.contains(':') {
            host
        } else {
            format!("{host}:80")
        };
        let collector = host
            .to_socket_addrs()?
            .next()
            .context("--target does not resolve")?;
        if !collector.ip().is_loopback() {
            bail!("--target must be a loopback address: the bench sends load only to this machine");
        }
        let config = RuntimeConfig::load(config)
            .map_err(|e| anyhow::anyhow!("cannot load --config: {e}"))?;
        Ok(Self {
            collector,
            host,
            nats_url: nats_url.to_owned(),
            clickhouse_url: clickhouse_url.to_owned(),
            config,
            local: None,
            http: reqwest::Client::new(),
        })
    }

    pub fn collector_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.host)
    }

    pub fn database(&self) -> String {
        self.config.database()
    }

    async fn wait_ready(&self, url: &str, what: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .http
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{what} did not become ready within {timeout:?}")
    }

    /// Starts the local collector (no-op for a remote target).
    pub async fn start_collector(&mut self) -> anyhow::Result<()> {
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        let service = Process::spawn(
            "collector",
            Command::new(local.bin_dir.join("tally-collector"))
                .arg("--config")
                .arg(&local.stack.config)
                .args([
                    "--listen",
                    &format!("127.0.0.1:{}", local.stack.collector_port),
                ])
                .args(&local.collector_args)
                .env("RUST_LOG", "warn"),
            local.stack.dir.join("collector.log"),
        )?;
        local.collector = Some(service);
        let url = self.collector_url("/readyz");
        self.wait_ready(&url, "the collector", Duration::from_secs(60))
            .await
    }

    /// Starts the local processor (no-op for a remote target).
    pub async fn start_processor(&mut self) -> anyhow::Result<()> {
        let Some(local) = self.local.as_mut() else {
            return Ok(());
        };
        let service = Process::spawn(
            "processor",
            Command::new(local.bin_dir.join("tally-processor"))
                .arg("--config")
                .arg(&local.stack.config)
                .args(["--listen", &format!("127.0.0.1:{}", local.processor_port)])
                .env("RUST_LOG", "warn"),
            local.stack.dir.join("processor.log"),
        )?;
        local.processor = Some(service);
        let url = format!("http://127.0.0.1:{}/readyz", local.processor_port);
        self.wait_ready(&url, "the processor", Duration::from_secs(60))
            .await
    }

    pub fn collector_pid(&self) -> Option<u32> {
        self.local.as_ref()?.collector.as_ref()?.pid()
    }

    pub fn processor_pid(&self) -> Option<u32> {
        self.local.as_ref()?.processor.as_ref()?.pid()
    }

    /// The `/metrics` text of the processor the bench started (none with `--target`).
    pub async fn processor_metrics(&self) -> Option<String> {
        let port = self.local.as_ref()?.processor_port;
        let url = format!("http://127.0.0.1:{port}/metrics");
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    /// The processes whose CPU the bench follows: itself, and those of the stack it knows.
    pub fn processes(
        &self,
        collector_pid: Option<u32>,
        processor_pid: Option<u32>,
    ) -> Vec<(String, u32)> {
        let mut out = vec![("tally-bench".to_owned(), std::process::id())];
        if let Some(pid) = self.collector_pid().or(collector_pid) {
            out.push(("collector".into(), pid));
        }
        if let Some(pid) = self.processor_pid().or(processor_pid) {
            out.push(("processor".into(), pid));
        }
        if self.local.is_some() {
            for pid in crate::memory::children_named("nats-server") {
                out.push(("nats-server".into(), pid));
            }
            for pid in crate::memory::children_named("python3") {
                out.push(("clickhouse".into(), pid));
            }
        }
        out
    }

    /// Fails when a local service has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(local) = self.local.as_mut() {
            for service in [&mut local.collector, &mut local.processor]
                .into_iter()
                .flatten()
            {
                service.ensure_running()?;
            }
        }
        Ok(())
    }

    /// Stops the local services, then the servers.
    pub fn shutdown(&mut self) {
        if let Some(mut local) = self.local.take() {
            if let Some(c) = local.collector.as_mut() {
                c.stop();
            }
            if let Some(p) = local.processor.as_mut() {
                p.stop();
            }
            drop(local);
        }
    }

    /// Runs SQL on ClickHouse's HTTP interface and returns the answer, trimmed. Long
    /// statements (the read phase's history load) may take minutes.
    pub async fn sql(&self, query: &str) -> anyhow::Result<String> {
        let url = format!("{}/", self.clickhouse_url);
        tally_e2e::clickhouse_sql(&self.http, &url, query, Duration::from_secs(600)).await
    }

    pub async fn sql_u64(&self, query: &str) -> anyhow::Result<u64> {
        tally_e2e::parse_u64(query, &self.sql(query).await?)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.shutdown();
    }
}
