//! The system under test: either a local stack started the way `make dev` runs it — the e2e
//! harness's [`Stack`] with the release binaries and the bench pipeline, on free loopback
//! ports — or a stack already running (`--target`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tally_contracts::RuntimeConfig;
use tally_e2e::{Options, Stack};

use crate::tenancy;

/// Name of the bench pipeline: stream `TALLY_BENCH`, database `tally_bench`.
pub const PIPELINE: &str = "bench";
/// The site of the end-to-end lag probes.
pub const PROBE_SITE: &str = "probe";

/// Where the load goes and what it reads.
pub struct Target {
    pub collector: SocketAddr,
    pub host: String,
    /// Where `/v1/stats` is served: the query service ([`Stack::stats_url`] locally,
    /// `--query-url` with `--target`).
    pub stats: SocketAddr,
    pub stats_host: String,
    pub nats_url: String,
    pub clickhouse_url: String,
    pub config: RuntimeConfig,
    /// The stack the bench started (none with `--target`); dropping it stops every process.
    pub local: Option<Stack>,
    pub http: reqwest::Client,
    /// The key `/v1/stats` is read with: an admin key of the pipeline.
    pub read_key: String,
}

/// Settings of the bench pipeline.
pub struct PipelineSettings {
    pub sites: Vec<String>,
    pub batch_max_rows: u32,
    pub batch_max_wait: String,
}

/// The bench pipeline: the example pipeline (`examples/`, what `make dev` runs) renamed
/// `bench`, with the bench's batch settings and its sites plus the probe site.
pub fn resources(settings: &PipelineSettings, examples: &Path) -> anyhow::Result<RuntimeConfig> {
    let example = RuntimeConfig::load(examples)
        .map_err(|e| anyhow::anyhow!("the example pipeline does not load: {e}"))?;
    let mut pipeline = example.pipeline;
    pipeline.metadata.name = Some(PIPELINE.to_owned());
    pipeline.spec.processor.batch_max_rows = settings.batch_max_rows;
    pipeline.spec.processor.batch_max_wait = settings.batch_max_wait.clone();
    let sites = settings
        .sites
        .iter()
        .cloned()
        .chain([PROBE_SITE.to_owned(), tenancy::FLOODED_SITE.to_owned()]);
    let config = tally_e2e::with_sites(pipeline, sites).context("the bench pipeline")?;
    // The tenancy phase's site: the one with a rate limit. Every site counts signups as a
    // goal and declares the experiment the generated history takes part in.
    let mut sites = config.sites;
    for site in &mut sites {
        site.spec.goals = vec![tally_crds::Goal {
            name: crate::dashboard::GOAL.to_owned(),
            event_type: Some("signup".to_owned()),
            page_path: None,
            properties: Default::default(),
        }];
        site.spec.experiments = vec![tally_crds::Experiment {
            id: crate::dashboard::EXPERIMENT.to_owned(),
            description: None,
            variants: ["A", "B"]
                .map(|name| tally_crds::Variant {
                    name: name.to_owned(),
                    weight: 1,
                })
                .to_vec(),
            control: "A".to_owned(),
            goal: crate::dashboard::GOAL.to_owned(),
            start: None,
            end: None,
            status: Default::default(),
        }];
        if site.spec.site_id == tenancy::FLOODED_SITE {
            site.spec.rate_limit = Some(tally_crds::RateLimit {
                events_per_second: tenancy::FLOODED_LIMIT,
                burst: None,
            });
        }
    }
    RuntimeConfig::from_resources(
        "the bench pipeline",
        config.pipeline,
        sites,
        &Default::default(),
    )
    .map_err(|e| anyhow::anyhow!("the bench pipeline: {e}"))
}

/// `host:port` of an `http://` URL, and its address.
fn http_host(url: &str, what: &str) -> anyhow::Result<(String, SocketAddr)> {
    let host = url
        .strip_prefix("http://")
        .with_context(|| format!("{what} must be an http:// URL"))?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let host = if host.contains(':') {
        host
    } else {
        format!("{host}:80")
    };
    let addr = host
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{what} does not resolve"))?;
    Ok((host, addr))
}

impl Target {
    /// Starts NATS and ClickHouse (not yet the processor and collector) with the bench
    /// pipeline.
    pub async fn start_local(
        settings: &PipelineSettings,
        bin_dir: PathBuf,
        collector_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        for bin in ["tally-collector", "tally-processor", "tally-query"] {
            if !bin_dir.join(bin).exists() {
                bail!(
                    "{} is missing: build the release binaries first (e2e/scripts/bench.sh does)",
                    bin_dir.join(bin).display()
                );
            }
        }
        let stack = Stack::start_servers(Options {
            resources: Some(resources(settings, &tally_e2e::examples_dir())?),
            bin_dir: Some(bin_dir),
            rust_log: Some("warn".into()),
            collector_args,
            // Tracing is measured by setting the OTEL_* variables (docs/performance.md).
            otel_from_env: true,
            ..Options::default()
        })
        .await?;
        let config = RuntimeConfig::load(&stack.config)
            .map_err(|e| anyhow::anyhow!("the bench pipeline does not load: {e}"))?;
        let (host, collector) = http_host(&stack.collector_url(""), "the collector")?;
        let (stats_host, stats) = http_host(&stack.stats_url(""), "the stats API")?;
        Ok(Self {
            host,
            collector,
            stats_host,
            stats,
            nats_url: stack.nats_url(),
            clickhouse_url: stack.clickhouse_url(),
            config,
            http: reqwest::Client::new(),
            local: Some(stack),
            read_key: tally_e2e::ADMIN_KEY.to_owned(),
        })
    }

    /// A stack that is already running.
    pub fn remote(
        collector_url: &str,
        query_url: &str,
        nats_url: &str,
        clickhouse_url: &str,
        config: &Path,
        read_key: String,
    ) -> anyhow::Result<Self> {
        let (host, collector) = http_host(collector_url, "--target")?;
        if !collector.ip().is_loopback() {
            bail!("--target must be a loopback address: the bench sends load only to this machine");
        }
        let (stats_host, stats) = http_host(query_url, "--query-url")?;
        if !stats.ip().is_loopback() {
            bail!("--query-url must be a loopback address");
        }
        let config = RuntimeConfig::load(config)
            .map_err(|e| anyhow::anyhow!("cannot load --config: {e}"))?;
        Ok(Self {
            collector,
            stats,
            stats_host,
            host,
            nats_url: nats_url.to_owned(),
            clickhouse_url: clickhouse_url.to_owned(),
            config,
            local: None,
            http: reqwest::Client::new(),
            read_key,
        })
    }

    /// A URL of the stats API.
    pub fn stats_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.stats_host)
    }

    pub fn database(&self) -> String {
        self.config.database()
    }

    /// Starts the local collector (no-op for a remote target).
    pub async fn start_collector(&mut self) -> anyhow::Result<()> {
        match self.local.as_mut() {
            Some(stack) => stack.start_collector().await,
            None => Ok(()),
        }
    }

    /// Starts the local processor, then the query service, which is ready once the
    /// processor has created the rollups (no-op for a remote target).
    pub async fn start_processor(&mut self) -> anyhow::Result<()> {
        match self.local.as_mut() {
            Some(stack) => {
                stack.start_processor(&[]).await?;
                stack.start_query().await
            }
            None => Ok(()),
        }
    }

    pub fn collector_pid(&self) -> Option<u32> {
        self.local.as_ref()?.collector.pid()
    }

    pub fn processor_pid(&self) -> Option<u32> {
        self.local.as_ref()?.processor.pid()
    }

    pub fn query_pid(&self) -> Option<u32> {
        self.local.as_ref()?.query.pid()
    }

    /// The `/metrics` text of the processor the bench started (none with `--target`).
    pub async fn processor_metrics(&self) -> Option<String> {
        self.local.as_ref()?.processor_metrics().await.ok()
    }

    /// The servers of a local stack: (name, pid). The ClickHouse launcher `exec`s the
    /// engine inside python3, so its pid is the engine's.
    pub fn servers(&self) -> Vec<(&'static str, u32)> {
        let Some(stack) = &self.local else {
            return Vec::new();
        };
        [
            ("nats-server", &stack.nats),
            ("clickhouse", &stack.clickhouse),
        ]
        .into_iter()
        .filter_map(|(name, process)| Some((name, process.pid()?)))
        .collect()
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
        if let Some(pid) = self.query_pid() {
            out.push(("query".into(), pid));
        }
        for (name, pid) in self.servers() {
            out.push((name.into(), pid));
        }
        out
    }

    /// Fails when a local process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.local.as_mut() {
            Some(stack) => stack.check_alive(),
            None => Ok(()),
        }
    }

    /// Stops the local services, then the servers.
    pub fn shutdown(&mut self) {
        if let Some(mut stack) = self.local.take() {
            stack.stop();
        }
    }

    /// Runs SQL on ClickHouse's HTTP interface and returns the answer, trimmed. Long
    /// statements (the read phase's history load) may take minutes.
    pub async fn sql(&self, query: &str) -> anyhow::Result<String> {
        let url = format!("{}/", self.clickhouse_url);
        tally_e2e::clickhouse_sql(
            &self.http,
            &url,
            &self.config.credentials.clickhouse,
            query,
            Duration::from_secs(600),
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_pipeline_is_the_example_one_with_the_bench_sites() {
        let settings = PipelineSettings {
            sites: crate::generate::sites(3),
            batch_max_rows: 20_000,
            batch_max_wait: "250ms".into(),
        };
        let examples = tally_e2e::examples_dir();
        let config = resources(&settings, &examples).unwrap();
        let example = RuntimeConfig::load(&examples).unwrap();
        assert_eq!(config.name(), "bench");
        assert_eq!(config.database(), "tally_bench");
        assert_eq!(config.stream_name(), "TALLY_BENCH");
        let ids: Vec<&str> = config
            .sites
            .iter()
            .map(|s| s.spec.site_id.as_str())
            .collect();
        assert_eq!(ids, ["site-00", "site-01", "site-02", "probe", "flooded"]);
        // Only the tenancy phase's site has a rate limit.
        let limited: Vec<&str> = config
            .sites
            .iter()
            .filter(|s| s.spec.rate_limit.is_some())
            .map(|s| s.spec.site_id.as_str())
            .collect();
        assert_eq!(limited, [tenancy::FLOODED_SITE]);
        let (spec, example) = (&config.pipeline.spec, &example.pipeline.spec);
        assert_eq!(spec.processor.batch_max_rows, 20_000);
        assert_eq!(spec.processor.batch_max_wait, "250ms");
        // Everything else is the example's.
        assert_eq!(spec.nats.stream, example.nats.stream);
        assert_eq!(spec.clickhouse, example.clickhouse);
        assert_eq!(spec.collector, example.collector);
        assert_eq!(spec.processor.ack_wait, example.processor.ack_wait);
        assert_eq!(spec.processor.max_deliver, example.processor.max_deliver);
        // What the stack writes for the services reads back the same.
        let local = tally_e2e::local_resources(&config, 4222, 8123);
        let again = RuntimeConfig::parse("rendered", &local.to_yaml()).unwrap();
        assert_eq!(again.pipeline.spec.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(again.pipeline.spec.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(again.sites.len(), 5);
    }

    #[test]
    fn hosts_of_urls() {
        let (host, addr) = http_host("http://127.0.0.1:8080/v1/stats?x=1", "it").unwrap();
        assert_eq!(host, "127.0.0.1:8080");
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            http_host("http://127.0.0.1", "it").unwrap().0,
            "127.0.0.1:80"
        );
        assert!(http_host("https://127.0.0.1", "--target").is_err());
    }
}
