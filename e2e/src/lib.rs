//! The end-to-end harness: starts a real `nats-server`, a real ClickHouse server and the
//! real `tally-collector` / `tally-processor` / `tally-query` binaries on free loopback
//! ports, each in its own temporary directory, and stops them all when dropped. Events go
//! to the collector ([`Stack::post`]); reads go to the query service ([`Stack::stats`]).
//! When a test fails, the tail of every process log is printed.
//!
//! Server locations come from the environment that `make test` sets up:
//! `TALLY_NATS_SERVER` (the nats-server binary), `TALLY_CLICKHOUSE_SERVER` (the launcher
//! script) and `TALLY_JAEGER` (the trace backend, [`jaeger`]). The Tally binaries are found in `TALLY_BIN_DIR`, or next to the test binary's
//! directory (cargo's `target/<profile>/`).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod chart;
pub mod cluster;
pub mod jaeger;
pub mod nats_cluster;

/// The sites every test stack declares.
pub const SITES: [&str; 2] = ["shop", "docs"];
/// The pipeline name of every test stack; its database is `tally_e2e`.
pub const PIPELINE: &str = "e2e";
pub const DATABASE: &str = "tally_e2e";

/// A port free on 127.0.0.1, never handed out before by this process. Ports come from below
/// the kernel's ephemeral range (which starts at 32768), so neither outgoing connections nor
/// another test of this process can take a port that a stopped server will bind again.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Start where this process's id points, so concurrent test processes rarely meet.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}

pub(crate) fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set: run the tests with `make test`, which installs the servers and sets it"))
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("TALLY_BIN_DIR") {
        return Ok(dir.into());
    }
    // target/<profile>/deps/<test binary> → target/<profile>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot locate cargo's target directory")?;
    Ok(dir.to_owned())
}

/// A process started by the harness, with its log file.
pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with its output appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        })
    }

    /// The process id, while the harness holds the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails, naming the process and its log, when a process that was started has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() && !self.is_running() {
            bail!("{} exited; see {}", self.name, self.log.display());
        }
        Ok(())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The exit code once the process has ended on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within 10 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            self.kill();
        }
        self.child = None;
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last lines of {} ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        self.kill();
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Settings of a test stack's pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    pub batch_max_rows: u32,
    pub batch_max_wait: &'static str,
    pub ack_wait: &'static str,
    /// The stream's `duplicateWindow` (the pipeline's default when `None`).
    pub duplicate_window: Option<&'static str>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch_max_rows: 5000,
            batch_max_wait: "100ms",
            ack_wait: "3s",
            duplicate_window: None,
        }
    }
}

static NEXT_STACK: AtomicU32 = AtomicU32::new(0);

/// NATS, ClickHouse, a processor, a collector and a query service for one test.
pub struct Stack {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub nats_port: u16,
    pub nats_monitor_port: u16,
    pub clickhouse_port: u16,
    pub clickhouse_tcp_port: u16,
    pub collector_port: u16,
    pub processor_port: u16,
    /// The query service's port: `/v1/stats` and its health endpoints.
    pub query_port: u16,
    pub nats: Process,
    pub clickhouse: Process,
    pub processor: Process,
    pub collector: Process,
    pub query: Process,
    pub http: reqwest::Client,
    /// Environment variables the processor and collector are started with, on top of the
    /// test's own less every `OTEL_*` variable (so that tracing is off unless a test turns
    /// it on here).
    pub env: Vec<(String, String)>,
}

impl Stack {
    /// Starts everything and waits until the processor, the collector and the query
    /// service are ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let mut stack = Self::start_servers(options).await?;
        stack.start_processor(&[]).await?;
        stack.start_collector().await?;
        stack.start_query().await?;
        Ok(stack)
    }

    /// Starts NATS and ClickHouse only; the processor, collector and query service are left
    /// to the test (`self.config` names the configuration they will read).
    pub async fn start_servers(options: Options) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tally-e2e-{}-{}",
            std::process::id(),
            NEXT_STACK.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let (nats_port, nats_monitor_port) = (free_port(), free_port());
        let (clickhouse_port, clickhouse_tcp_port) = (free_port(), free_port());
        let (collector_port, processor_port, query_port) = (free_port(), free_port(), free_port());
        let config = dir.join("pipeline.yaml");
        fs::write(&config, pipeline_yaml(&options, nats_port, clickhouse_port))?;

        let nats = Self::spawn_nats(&dir, nats_port, nats_monitor_port)?;
        let clickhouse = Self::spawn_clickhouse(&dir, clickhouse_port, clickhouse_tcp_port)?;
        let http = reqwest::Client::new();
        let mut stack = Self {
            processor: Process {
                name: "processor".into(),
                child: None,
                log: dir.join("processor.log"),
            },
            collector: Process {
                name: "collector".into(),
                child: None,
                log: dir.join("collector.log"),
            },
            query: Process {
                name: "query".into(),
                child: None,
                log: dir.join("query.log"),
            },
            dir,
            config,
            nats_port,
            nats_monitor_port,
            clickhouse_port,
            clickhouse_tcp_port,
            collector_port,
            processor_port,
            query_port,
            nats,
            clickhouse,
            http,
            env: Vec::new(),
        };
        stack.wait_nats().await?;
        stack.wait_clickhouse().await?;
        stack.check_alive()?;
        Ok(stack)
    }

    fn spawn_clickhouse(dir: &Path, http_port: u16, tcp_port: u16) -> anyhow::Result<Process> {
        Process::spawn(
            "clickhouse",
            Command::new(env_path("TALLY_CLICKHOUSE_SERVER")?)
                .arg("--data-dir")
                .arg(dir.join("clickhouse"))
                .args(["--http-port", &http_port.to_string()])
                .args(["--tcp-port", &tcp_port.to_string()]),
            dir.join("clickhouse.log"),
        )
    }

    async fn wait_clickhouse(&self) -> anyhow::Result<()> {
        let ping = format!("http://127.0.0.1:{}/ping", self.clickhouse_port);
        eventually(
            "ClickHouse to answer /ping",
            Duration::from_secs(60),
            || {
                let (http, ping) = (&self.http, &ping);
                async move { http_ok(http, ping).await.then_some(()) }
            },
        )
        .await
    }

    /// Stops ClickHouse (SIGTERM; its data stays).
    pub fn stop_clickhouse(&mut self) {
        self.clickhouse.stop();
    }

    /// Starts ClickHouse again on the same ports with the same data.
    pub async fn restart_clickhouse(&mut self) -> anyhow::Result<()> {
        self.clickhouse =
            Self::spawn_clickhouse(&self.dir, self.clickhouse_port, self.clickhouse_tcp_port)?;
        self.wait_clickhouse().await
    }

    /// The processor's `/readyz` status code.
    pub async fn processor_ready_status(&self) -> u16 {
        self.http
            .get(format!("http://127.0.0.1:{}/readyz", self.processor_port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    fn spawn_nats(dir: &Path, port: u16, monitor: u16) -> anyhow::Result<Process> {
        Process::spawn(
            "nats-server",
            Command::new(env_path("TALLY_NATS_SERVER")?)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string(), "-js", "-sd"])
                .arg(dir.join("nats")),
            dir.join("nats.log"),
        )
    }

    async fn wait_nats(&self) -> anyhow::Result<()> {
        let health = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.nats_monitor_port
        );
        eventually("nats-server to be healthy", Duration::from_secs(30), || {
            let (http, health) = (&self.http, &health);
            async move { http_ok(http, health).await.then_some(()) }
        })
        .await
    }

    /// The path of a workspace binary.
    pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
        let path = bin_dir()?.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build the workspace binaries first (`make test` does)",
                path.display()
            );
        }
        Ok(path)
    }

    /// A command for a Tally binary, with [`Self::env`] as its OpenTelemetry environment.
    fn tally_command(&self, binary: &str) -> anyhow::Result<Command> {
        let mut command = Command::new(Self::binary(binary)?);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("OTEL_") {
                command.env_remove(name);
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        Ok(command)
    }

    /// Starts the processor with extra arguments, without waiting for it.
    pub fn spawn_processor(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.processor = Process::spawn(
            "processor",
            self.tally_command("tally-processor")?
                .arg("--config")
                .arg(&self.config)
                .args(["--listen", &format!("127.0.0.1:{}", self.processor_port)])
                .args(extra),
            self.dir.join("processor.log"),
        )?;
        Ok(())
    }

    /// Starts the processor with extra arguments and waits until it is ready.
    pub async fn start_processor(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.spawn_processor(extra)?;
        let ready = format!("http://127.0.0.1:{}/readyz", self.processor_port);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_ok(&self.http, &ready).await {
                return self.check_alive();
            }
            if !self.processor.is_running() {
                bail!("the processor exited during start-up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the processor did not become ready within 60 s")
    }

    /// Starts the collector and waits until it is ready.
    pub async fn start_collector(&mut self) -> anyhow::Result<()> {
        self.collector = Process::spawn(
            "collector",
            self.tally_command("tally-collector")?
                .arg("--config")
                .arg(&self.config)
                .args(["--listen", &format!("127.0.0.1:{}", self.collector_port)]),
            self.dir.join("collector.log"),
        )?;
        self.wait_collector_ready(Duration::from_secs(60)).await?;
        self.check_alive()
    }

    /// Starts the query service and waits until it is ready (it is once ClickHouse holds
    /// the pipeline's rollups, which the processor creates).
    pub async fn start_query(&mut self) -> anyhow::Result<()> {
        self.spawn_query()?;
        self.wait_query_ready(Duration::from_secs(60)).await?;
        self.check_alive()
    }

    /// Starts the query service without waiting for it.
    pub fn spawn_query(&mut self) -> anyhow::Result<()> {
        self.query = Process::spawn(
            "query",
            Command::new(Self::binary("tally-query")?)
                .arg("--config")
                .arg(&self.config)
                .args(["--listen", &format!("127.0.0.1:{}", self.query_port)]),
            self.dir.join("query.log"),
        )?;
        Ok(())
    }

    pub async fn wait_query_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let ready = self.query_url("/readyz");
        eventually("the query service to be ready", timeout, || {
            let (http, ready) = (&self.http, &ready);
            async move { http_ok(http, ready).await.then_some(()) }
        })
        .await
    }

    /// The query service's `/readyz`: its status code and text (0 and empty when it does not
    /// answer).
    pub async fn query_readiness(&self) -> (u16, String) {
        match self
            .http
            .get(self.query_url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(response) => (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            ),
            Err(_) => (0, String::new()),
        }
    }

    /// Fails when a server this stack started has exited. A server that lost its port to
    /// another process exits at once, while the other process answers the readiness probe:
    /// without this check the test would silently talk to somebody else's server.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in [
            &mut self.nats,
            &mut self.clickhouse,
            &mut self.processor,
            &mut self.collector,
            &mut self.query,
        ] {
            process.ensure_running()?;
        }
        Ok(())
    }

    pub async fn wait_collector_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let ready = self.collector_url("/readyz");
        eventually("the collector to be ready", timeout, || {
            let (http, ready) = (&self.http, &ready);
            async move { http_ok(http, ready).await.then_some(()) }
        })
        .await
    }

    /// Stops nats-server (SIGKILL, as a crash would).
    pub fn stop_nats(&mut self) {
        self.nats.kill();
    }

    /// Starts nats-server again on the same port with the same store.
    pub async fn restart_nats(&mut self) -> anyhow::Result<()> {
        self.nats = Self::spawn_nats(&self.dir, self.nats_port, self.nats_monitor_port)?;
        self.wait_nats().await
    }

    pub fn collector_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.collector_port)
    }

    /// A URL of the query service: the read side (`/v1/stats`).
    pub fn query_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// POSTs a body to `/v1/events`; returns the status and the JSON answer.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .post(self.collector_url("/v1/events"))
            .header("content-type", "application/json")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = response.status().as_u16();
        let json = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }

    /// The processor's `/metrics` text.
    pub async fn processor_metrics(&self) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.processor_port);
        Ok(self.http.get(url).send().await?.text().await?)
    }

    /// GETs `/v1/stats` from the query service with the given query string; returns the
    /// status and the JSON answer.
    pub async fn stats(&self, query: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .http
            .get(self.query_url(&format!("/v1/stats?{query}")))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Polls `/v1/stats?{query}` until `done` accepts the answer, and returns it. Each
    /// materialized view's part becomes visible a moment after the raw rows' part (one
    /// insert writes them in turn), so a test waits on what the stats API shows.
    pub async fn wait_stats(
        &self,
        query: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, stats) = self.stats(query).await?;
            if status == 200 && done(&stats) {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                bail!("/v1/stats?{query} never matched; last answer ({status}): {stats}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs SQL on ClickHouse and returns the TabSeparated answer, trimmed.
    pub async fn sql(&self, query: &str) -> anyhow::Result<String> {
        let url = format!("http://127.0.0.1:{}/", self.clickhouse_port);
        clickhouse_sql(&self.http, &url, query, Duration::from_secs(30)).await
    }

    /// A single number from SQL.
    pub async fn sql_u64(&self, query: &str) -> anyhow::Result<u64> {
        parse_u64(query, &self.sql(query).await?)
    }

    /// Waits until `query` returns `expected`, then returns it; on timeout, the error shows the
    /// last answer.
    pub async fn wait_sql(
        &self,
        query: &str,
        expected: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut last = String::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            // The tables appear once the processor applied the schema; errors until then.
            if let Ok(answer) = self.sql(query).await {
                if answer == expected {
                    return Ok(());
                }
                last = answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("timed out after {timeout:?}: {query} gave {last:?}, expected {expected:?}")
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.query.stop();
        self.collector.stop();
        self.processor.stop();
        self.clickhouse.stop();
        self.nats.kill();
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs SQL over ClickHouse's HTTP interface at `url` and returns the TabSeparated answer,
/// trimmed; an answer other than 2xx is an error that quotes the query and ClickHouse's text.
pub async fn clickhouse_sql(
    http: &reqwest::Client,
    url: &str,
    query: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let response = http
        .post(url)
        .body(query.to_owned())
        .timeout(timeout)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("ClickHouse answered {status} to {query}: {text}");
    }
    Ok(text.trim().to_owned())
}

/// The single number `query` answered with `text`.
pub fn parse_u64(query: &str, text: &str) -> anyhow::Result<u64> {
    text.parse()
        .with_context(|| format!("expected a number from {query}, got {text:?}"))
}

/// The test pipeline and its sites, pointing at the given local servers.
pub fn pipeline_yaml(options: &Options, nats_port: u16, clickhouse_port: u16) -> String {
    let mut yaml = format!(
        "apiVersion: tally.dev/v1alpha1
kind: AnalyticsPipeline
metadata:
  name: {PIPELINE}
spec:
  nats:
    url: nats://127.0.0.1:{nats_port}{stream}
  clickhouse:
    url: http://127.0.0.1:{clickhouse_port}
  collector:
    publishTimeout: 2s
  processor:
    batchMaxRows: {rows}
    batchMaxWait: {wait}
    ackWait: {ack}
",
        rows = options.batch_max_rows,
        wait = options.batch_max_wait,
        ack = options.ack_wait,
        stream = options
            .duplicate_window
            .map(|w| format!("\n    stream:\n      duplicateWindow: {w}"))
            .unwrap_or_default(),
    );
    for site in SITES {
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

/// Today's UTC date as `YYYY-MM-DD`.
pub fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

/// The rollup totals that must each equal the number of accepted events (every test event
/// is a page view): table and column.
const ROLLUP_TOTALS: [(&str, &str); 5] = [
    ("site_daily", "page_views"),
    ("site_daily", "events"),
    ("site_hourly", "events"),
    ("path_daily", "page_views"),
    ("event_type_daily", "events"),
];

/// Counts, after the fact, what the data path stored: the raw rows, their distinct event ids
/// and every rollup's event count must all equal `n` (each accepted event exactly once).
pub async fn assert_exact(stack: &Stack, n: u64) -> anyhow::Result<()> {
    let raw = stack
        .sql(&format!(
            "SELECT count(), uniqExact(event_id) FROM {DATABASE}.events"
        ))
        .await?;
    assert_eq!(raw, format!("{n}\t{n}"), "raw rows and distinct event ids");
    for (table, column) in ROLLUP_TOTALS {
        let total = stack
            .sql_u64(&format!("SELECT sum({column}) FROM {DATABASE}.{table}"))
            .await?;
        assert_eq!(total, n, "{table}.{column}");
    }
    Ok(())
}

/// Waits (up to `timeout`) until the raw table and every rollup hold exactly `n` events (an
/// insert's rollup rows land a moment after its raw rows), gives a wrong double insert time
/// to show up, then counts with [`assert_exact`]. Panics rather than returning an error, so
/// that the stack keeps the servers' data and prints their logs.
pub async fn settle_and_count(stack: &Stack, n: u64, timeout: Duration) {
    let mut totals = vec![format!("(SELECT count() FROM {DATABASE}.events)")];
    for (table, column) in ROLLUP_TOTALS {
        totals.push(format!("(SELECT sum({column}) FROM {DATABASE}.{table})"));
    }
    let all = format!("SELECT {}", totals.join(", "));
    let expected = vec![n.to_string(); totals.len()].join("\t");
    if let Err(e) = stack.wait_sql(&all, &expected, timeout).await {
        panic!("raw rows, then each rollup of {ROLLUP_TOTALS:?}: {e}");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Err(e) = assert_exact(stack, n).await {
        panic!("counting: {e}");
    }
}
