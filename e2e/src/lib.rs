//! The end-to-end harness: starts a real `nats-server`, a ClickHouse server (the ClickHouse
//! engine of `chdb-core` serving HTTP and native TCP) and the real `tally-collector` /
//! `tally-processor` / `tally-query` binaries on free loopback ports, each in its own
//! temporary directory, and stops them all when dropped. Events go
//! to the collector ([`Stack::post`]); reads go to the query service ([`Stack::stats`]).
//! When a test fails, the tail of every process log is printed.
//!
//! The same [`Stack`] runs the local stack of `make dev` ([`dev`], the `tally-dev` binary:
//! fixed ports, a kept data directory, the resources of `examples/`) and the bench's (the
//! `tally-bench` crate: release binaries, its own pipeline); [`Options`] says how.
//!
//! Server locations come from the environment that `make test` sets up:
//! `TALLY_NATS_SERVER` (the nats-server binary), `TALLY_CLICKHOUSE_SERVER` (the launcher
//! script) and `TALLY_JAEGER` (the trace backend, [`jaeger`]). The Tally binaries are found
//! in [`Options::bin_dir`], else `TALLY_BIN_DIR`, else next to the test binary's directory
//! (cargo's `target/<profile>/`).

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tally_contracts::RuntimeConfig;
use tally_contracts::credentials::{ClickHouseCredentials, Credentials, NatsLogin};
use tally_crds::{AnalyticsPipeline, AnalyticsSite, AnalyticsSiteSpec, PipelineRef};

pub mod chart;
pub mod cluster;
pub mod demo_site;
pub mod dev;
pub mod jaeger;
pub mod nats_cluster;
pub mod s3;

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

/// The path in the environment variable `name` (a server binary the scripts installed).
pub fn env_path(name: &str) -> anyhow::Result<PathBuf> {
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

    /// A process not started yet: what its name and log will be.
    pub fn not_started(name: &str, log: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            child: None,
            log,
        }
    }

    /// The name the harness gave the process (`nats-server`, `collector`, …).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The process id, while the harness holds the process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How the process ended, once a process that was started has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// An error naming the process, saying `what` happened to it, with its log's last lines.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "{} {what}\n----- last lines of {} -----\n{}\n-----",
            self.name,
            self.log.display(),
            self.log_tail()
        )
    }

    /// Fails, naming the process and showing its log's last lines, when a process that was
    /// started has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status() {
            return Err(self.failure(&format!("exited ({status})")));
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
        self.stop_within(Duration::from_secs(10));
    }

    /// SIGTERM, then SIGKILL if it has not exited within `timeout`; true when it had to be
    /// killed.
    pub fn stop_within(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        let mut killed = true;
        while Instant::now() < deadline {
            if !self.is_running() {
                killed = false;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        killed
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
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

/// Ports of a stack; each one left `None` is a free one ([`free_port`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ports {
    pub nats: Option<u16>,
    pub nats_monitor: Option<u16>,
    pub clickhouse_http: Option<u16>,
    pub clickhouse_tcp: Option<u16>,
    pub processor: Option<u16>,
    pub collector: Option<u16>,
    pub query: Option<u16>,
}

/// How a stack runs. The first five settings shape the test pipeline ([`pipeline_yaml`]);
/// the others serve the stacks of `make dev` and the bench, and default to what a test
/// wants.
#[derive(Debug, Clone)]
pub struct Options {
    pub batch_max_rows: u32,
    pub batch_max_wait: &'static str,
    pub ack_wait: &'static str,
    /// The stream's `duplicateWindow` (the pipeline's default when `None`).
    pub duplicate_window: Option<&'static str>,
    /// More `spec.collector` settings of the test pipeline, as YAML lines
    /// (`"requestTimeout: 2s"`).
    pub collector_spec: Vec<String>,
    /// More `spec` settings of the test pipeline's sites: (site id, a YAML line such as
    /// `"timeZone: Europe/Berlin"`). A site id other than [`SITES`]' is one more site.
    pub site_spec: Vec<(&'static str, String)>,
    /// Resources to run instead of the test pipeline (`make dev` runs `examples/`, the bench
    /// its `bench` pipeline); the stack points their NATS and ClickHouse URLs at its own
    /// servers ([`local_resources`]).
    pub resources: Option<RuntimeConfig>,
    pub ports: Ports,
    /// The stack's directory (server data, logs, the configuration the services read),
    /// created if missing and kept when the stack stops. `None`: a fresh temporary
    /// directory, removed when the stack is dropped (unless a test failed).
    pub dir: Option<PathBuf>,
    /// Where `tally-collector`, `tally-processor` and `tally-query` are. `None`: `TALLY_BIN_DIR`, else the
    /// directory above the test binary's (cargo's `target/<profile>/`).
    pub bin_dir: Option<PathBuf>,
    /// `RUST_LOG` of the Tally services; `None`: this process's own.
    pub rust_log: Option<String>,
    /// Extra arguments of the collector.
    pub collector_args: Vec<String>,
    /// Starts every process in a process group of its own, so that a Ctrl-C at the terminal
    /// reaches only this program, which then stops them in order ([`Stack::stop`]). Off for
    /// tests: when a test binary is interrupted, its servers get the signal too.
    pub own_process_groups: bool,
    /// Prints a timestamped line on stderr as each process starts, is ready and stops.
    pub progress: bool,
    /// Passes this process's `OTEL_*` variables on to the services, so that `make dev` and
    /// the bench are traced by setting them. Off for tests: their services trace only
    /// when the test sets [`Stack::env`].
    pub otel_from_env: bool,
    /// How long each process gets to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch_max_rows: 5000,
            batch_max_wait: "100ms",
            ack_wait: "3s",
            duplicate_window: None,
            collector_spec: Vec::new(),
            resources: None,
            site_spec: Vec::new(),
            ports: Ports::default(),
            dir: None,
            bin_dir: None,
            rust_log: None,
            collector_args: Vec::new(),
            own_process_groups: false,
            progress: false,
            otel_from_env: false,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// A line on stderr, stamped with the time of day (UTC), as the scripts' `log` writes them.
pub fn announce(message: &str) {
    let now = time::OffsetDateTime::now_utc();
    eprintln!(
        "[{:02}:{:02}:{:02}] {message}",
        now.hour(),
        now.minute(),
        now.second()
    );
}

/// [`announce`]s, when `options.progress` asks for it.
fn progress(options: &Options, message: &str) {
    if options.progress {
        announce(message);
    }
}

/// Starts `command` as the process `name` of a stack, its output in `dir/<log>.log`.
fn spawn(
    options: &Options,
    dir: &Path,
    name: &str,
    log: &str,
    command: &mut Command,
) -> anyhow::Result<Process> {
    if options.own_process_groups {
        command.process_group(0);
    }
    let log = dir.join(format!("{log}.log"));
    progress(
        options,
        &format!("starting {name} (log: {})", log.display()),
    );
    Process::spawn(name, command, log)
}

/// Polls `url` until it answers 2xx. Fails early, with the log's last lines, when `process`
/// exits, and once `timeout` has passed.
async fn wait_ready(
    http: &reqwest::Client,
    process: &mut Process,
    url: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if http_ok(http, url).await {
            return Ok(());
        }
        if let Some(status) = process.exit_status() {
            return Err(process.failure(&format!("exited during start-up ({status})")));
        }
        if Instant::now() > deadline {
            return Err(process.failure(&format!("did not answer {url} within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a GET of [`Stack::get`] answered.
#[derive(Debug, Clone)]
pub struct Answer {
    /// 0 when nothing answered (then `body` says why).
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

static NEXT_STACK: AtomicU32 = AtomicU32::new(0);

/// NATS, ClickHouse, a processor, a collector and a query service for one test (or for
/// `make dev`, or the bench: see [`Options`]).
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
    /// Environment variables the processor and collector are started with, on top of this
    /// process's own less its `OTEL_*` variables unless [`Options::otel_from_env`] (so that
    /// tracing is off unless a test turns it on here).
    pub env: Vec<(String, String)>,
    /// The servers' logins, from the pipeline's Secrets.
    pub credentials: Credentials,
    /// How the stack was started.
    pub options: Options,
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
        let dir = match &options.dir {
            Some(dir) => {
                fs::create_dir_all(dir)?;
                // The logs are this run's; the data stays.
                for entry in fs::read_dir(dir)?.flatten() {
                    if entry.path().extension().is_some_and(|e| e == "log") {
                        fs::remove_file(entry.path())?;
                    }
                }
                dir.clone()
            }
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "tally-e2e-{}-{}",
                    std::process::id(),
                    NEXT_STACK.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir)?;
                dir
            }
        };
        let ports = options.ports;
        let nats_port = ports.nats.unwrap_or_else(free_port);
        let nats_monitor_port = ports.nats_monitor.unwrap_or_else(free_port);
        let clickhouse_port = ports.clickhouse_http.unwrap_or_else(free_port);
        let clickhouse_tcp_port = ports.clickhouse_tcp.unwrap_or_else(free_port);
        let collector_port = ports.collector.unwrap_or_else(free_port);
        let processor_port = ports.processor.unwrap_or_else(free_port);
        let query_port = ports.query.unwrap_or_else(free_port);
        let config = dir.join("pipeline.yaml");
        // The servers take the logins the pipeline gives (the test pipeline's: a NATS user
        // and ClickHouse's `default` with passwords; the examples': none).
        let (yaml, credentials) = match &options.resources {
            Some(resources) => {
                let local = local_resources(resources, nats_port, clickhouse_port);
                (local.to_yaml(), local.credentials)
            }
            None => {
                let yaml = pipeline_yaml(&options, nats_port, clickhouse_port);
                let parsed = RuntimeConfig::parse("the test pipeline", &yaml)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                (yaml, parsed.credentials)
            }
        };
        fs::write(&config, yaml)?;
        // The mounted-Secrets directory of the services: the test servers' logins.
        let secrets = dir.join("secrets").join(SERVERS_SECRET);
        fs::create_dir_all(&secrets)?;
        for (key, value) in servers_secret() {
            fs::write(secrets.join(key), value)?;
        }

        let nats = Self::spawn_nats(&options, &dir, nats_port, nats_monitor_port, &credentials)?;
        let clickhouse = Self::spawn_clickhouse(
            &options,
            &dir,
            clickhouse_port,
            clickhouse_tcp_port,
            &credentials,
        )?;
        let secrets_dir = dir.join("secrets").display().to_string();
        let mut stack = Self {
            processor: Process::not_started("processor", dir.join("processor.log")),
            collector: Process::not_started("collector", dir.join("collector.log")),
            query: Process::not_started("query", dir.join("query.log")),
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
            http: reqwest::Client::new(),
            env: vec![("TALLY_SECRETS_DIR".to_owned(), secrets_dir)],
            credentials,
            options,
        };
        stack.wait_nats().await?;
        stack.wait_clickhouse().await?;
        stack.check_alive()?;
        Ok(stack)
    }

    fn spawn_clickhouse(
        options: &Options,
        dir: &Path,
        http_port: u16,
        tcp_port: u16,
        credentials: &Credentials,
    ) -> anyhow::Result<Process> {
        let mut command = Command::new(env_path("TALLY_CLICKHOUSE_SERVER")?);
        command
            .arg("--data-dir")
            .arg(dir.join("clickhouse"))
            .args(["--http-port", &http_port.to_string()])
            .args(["--tcp-port", &tcp_port.to_string()]);
        // The password of its user `tally`, through the environment (not the command line).
        if let Some(password) = &credentials.clickhouse.password {
            command.env("TALLY_CLICKHOUSE_PASSWORD", password);
        }
        spawn(options, dir, "clickhouse", "clickhouse", &mut command)
    }

    async fn wait_clickhouse(&mut self) -> anyhow::Result<()> {
        let ping = self.clickhouse_url() + "/ping";
        wait_ready(
            &self.http,
            &mut self.clickhouse,
            &ping,
            Duration::from_secs(60),
        )
        .await?;
        progress(&self.options, "clickhouse ready");
        Ok(())
    }

    /// Stops ClickHouse (SIGTERM; its data stays).
    pub fn stop_clickhouse(&mut self) {
        self.clickhouse.stop();
    }

    /// Starts ClickHouse again on the same ports with the same data.
    pub async fn restart_clickhouse(&mut self) -> anyhow::Result<()> {
        self.clickhouse = Self::spawn_clickhouse(
            &self.options,
            &self.dir,
            self.clickhouse_port,
            self.clickhouse_tcp_port,
            &self.credentials,
        )?;
        self.wait_clickhouse().await
    }

    /// The processor's `/readyz` status code.
    pub async fn processor_ready_status(&self) -> u16 {
        self.get(&self.processor_url("/readyz")).await.status
    }

    /// A GET of `url`; to the query service with [`ADMIN_KEY`].
    fn get_request(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        if url.starts_with(&self.query_url("")) {
            request.header("x-api-key", ADMIN_KEY)
        } else {
            request
        }
    }

    /// GETs `url` (from the query service with [`ADMIN_KEY`]), waiting 10 s at most for the
    /// answer.
    pub async fn get(&self, url: &str) -> Answer {
        let sent = self
            .get_request(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) => Answer {
                status: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: response.text().await.unwrap_or_default(),
            },
            Err(error) => Answer {
                status: 0,
                retry_after: None,
                body: format!("no answer from {url}: {error}"),
            },
        }
    }

    fn spawn_nats(
        options: &Options,
        dir: &Path,
        port: u16,
        monitor: u16,
        credentials: &Credentials,
    ) -> anyhow::Result<Process> {
        let mut command = Command::new(env_path("TALLY_NATS_SERVER")?);
        command
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-js", "-sd"])
            .arg(dir.join("nats"));
        match &credentials.nats.login {
            None => {}
            Some(NatsLogin::UserPassword { user, password }) => {
                command.args(["--user", user, "--pass", password]);
            }
            Some(NatsLogin::Token(token)) => {
                command.args(["--auth", token]);
            }
            Some(_) => bail!("the harness starts NATS with a user and password or a token only"),
        }
        spawn(options, dir, "nats-server", "nats", &mut command)
    }

    /// A NATS client of the stack's server, with the pipeline's login.
    pub async fn nats_client(&self) -> anyhow::Result<async_nats::Client> {
        let options = self
            .credentials
            .nats
            .connect_options()
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(options.connect(self.nats_url()).await?)
    }

    async fn wait_nats(&mut self) -> anyhow::Result<()> {
        let health = self.nats_monitor_url() + "/healthz?js-enabled-only=true";
        wait_ready(&self.http, &mut self.nats, &health, Duration::from_secs(30)).await?;
        progress(&self.options, "nats-server ready");
        Ok(())
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

    /// A Tally service's command line: its binary (from [`Options::bin_dir`] when given),
    /// the stack's configuration, the services' log level and [`Self::env`] as its
    /// OpenTelemetry environment.
    fn service(&self, binary: &str) -> anyhow::Result<Command> {
        let path = match &self.options.bin_dir {
            Some(dir) => {
                let path = dir.join(binary);
                if !path.exists() {
                    bail!(
                        "{} is missing: build the release binaries first",
                        path.display()
                    );
                }
                path
            }
            None => Self::binary(binary)?,
        };
        let mut command = Command::new(path);
        if !self.options.otel_from_env {
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("OTEL_") {
                    command.env_remove(name);
                }
            }
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command.arg("--config").arg(&self.config);
        if let Some(level) = &self.options.rust_log {
            command.env("RUST_LOG", level);
        }
        Ok(command)
    }

    /// Starts the processor with extra arguments, without waiting for it.
    pub fn spawn_processor(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let mut command = self.service("tally-processor")?;
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.processor_port)])
            .args(extra);
        self.processor = spawn(
            &self.options,
            &self.dir,
            "processor",
            "processor",
            &mut command,
        )?;
        Ok(())
    }

    /// Starts the processor with extra arguments and waits until it is ready.
    pub async fn start_processor(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.spawn_processor(extra)?;
        self.wait_started(|stack| &mut stack.processor, self.processor_port)
            .await
    }

    /// Waits until the service `pick` chooses answers `/readyz` on `port` (failing early if
    /// it exits), then checks that every process of the stack still runs.
    async fn wait_started(
        &mut self,
        pick: fn(&mut Self) -> &mut Process,
        port: u16,
    ) -> anyhow::Result<()> {
        let ready = format!("http://127.0.0.1:{port}/readyz");
        let http = self.http.clone();
        let process = pick(self);
        wait_ready(&http, process, &ready, Duration::from_secs(60)).await?;
        let name = process.name.clone();
        progress(&self.options, &format!("{name} ready"));
        self.check_alive()
    }

    /// Starts the collector (with [`Options::collector_args`]) and waits until it is ready.
    pub async fn start_collector(&mut self) -> anyhow::Result<()> {
        let mut command = self.service("tally-collector")?;
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.collector_port)])
            .args(&self.options.collector_args);
        self.collector = spawn(
            &self.options,
            &self.dir,
            "collector",
            "collector",
            &mut command,
        )?;
        self.wait_started(|stack| &mut stack.collector, self.collector_port)
            .await
    }

    /// Every process of the stack in start order, the servers first ([`Stack::stop`] stops
    /// them in reverse); those not started (yet) too.
    pub fn processes(&mut self) -> [&mut Process; 5] {
        [
            &mut self.nats,
            &mut self.clickhouse,
            &mut self.processor,
            &mut self.collector,
            &mut self.query,
        ]
    }

    /// Stops every process still running, the services before the servers: SIGTERM, then
    /// SIGKILL after [`Options::stop_timeout`]. Dropping the stack does the same.
    pub fn stop(&mut self) {
        let options = self.options.clone();
        for process in self.processes().into_iter().rev() {
            if !process.is_running() {
                continue;
            }
            progress(&options, &format!("stopping {}", process.name));
            if process.stop_within(options.stop_timeout) {
                progress(
                    &options,
                    &format!(
                        "{} did not stop within {:?}; killed it",
                        process.name, options.stop_timeout
                    ),
                );
            }
        }
    }

    /// Starts the query service and waits until it is ready (it is once ClickHouse holds
    /// the pipeline's rollups, which the processor creates).
    pub async fn start_query(&mut self) -> anyhow::Result<()> {
        self.spawn_query()?;
        self.wait_started(|stack| &mut stack.query, self.query_port)
            .await
    }

    /// Starts the query service without waiting for it.
    pub fn spawn_query(&mut self) -> anyhow::Result<()> {
        let mut command = self.service("tally-query")?;
        command.args(["--listen", &format!("127.0.0.1:{}", self.query_port)]);
        self.query = spawn(&self.options, &self.dir, "query", "query", &mut command)?;
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

    /// The query service's `/readyz`: its status code and text (0 when it does not answer).
    pub async fn query_readiness(&self) -> (u16, String) {
        let answer = self.get(&self.query_url("/readyz")).await;
        (answer.status, answer.body)
    }

    /// Fails when a server this stack started has exited. A server that lost its port to
    /// another process exits at once, while the other process answers the readiness probe:
    /// without this check the test would silently talk to somebody else's server.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for process in self.processes() {
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
        self.nats = Self::spawn_nats(
            &self.options,
            &self.dir,
            self.nats_port,
            self.nats_monitor_port,
            &self.credentials,
        )?;
        self.wait_nats().await
    }

    pub fn collector_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.collector_port)
    }

    /// A URL of the query service: the read side (`/v1/stats`).
    pub fn query_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// The URL of the query service's `/v1/stats` with the given query string.
    pub fn stats_url(&self, query: &str) -> String {
        self.query_url(&format!("/v1/stats?{query}"))
    }

    /// A URL of the processor's health and metrics server.
    pub fn processor_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.processor_port)
    }

    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.nats_port)
    }

    /// nats-server's monitoring endpoint.
    pub fn nats_monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nats_monitor_port)
    }

    /// ClickHouse's HTTP interface.
    pub fn clickhouse_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.clickhouse_port)
    }

    /// POSTs a body to `/v1/events`; returns the status and the JSON answer.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        self.post_with(body, &[]).await
    }

    /// POSTs a body to `/v1/events` with extra headers (an API key, an `Origin`).
    pub async fn post_with(
        &self,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self
            .http
            .post(self.collector_url("/v1/events"))
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
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
        let url = self.processor_url("/metrics");
        Ok(self.http.get(url).send().await?.text().await?)
    }

    /// GETs `/v1/stats` from the query service with the given query string (and
    /// [`ADMIN_KEY`]); returns the status and the JSON answer.
    pub async fn stats(&self, query: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        let response = self
            .get_request(&self.stats_url(query))
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

    /// Stores `rows` (JSON objects of `events` columns) straight into the test database,
    /// `batch` rows per insert as the processor's batches arrive; ClickHouse's materialized
    /// views fill the rollups from each insert.
    pub async fn insert_events(
        &self,
        rows: &[serde_json::Value],
        batch: usize,
    ) -> anyhow::Result<()> {
        for chunk in rows.chunks(batch.max(1)) {
            let lines: Vec<String> = chunk.iter().map(serde_json::Value::to_string).collect();
            self.sql(&format!(
                "INSERT INTO {DATABASE}.events FORMAT JSONEachRow\n{}",
                lines.join("\n")
            ))
            .await?;
        }
        Ok(())
    }

    /// Runs SQL on ClickHouse and returns the TabSeparated answer, trimmed.
    pub async fn sql(&self, query: &str) -> anyhow::Result<String> {
        let url = self.clickhouse_url() + "/";
        clickhouse_sql(
            &self.http,
            &url,
            &self.credentials.clickhouse,
            query,
            Duration::from_secs(30),
        )
        .await
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
        self.stop();
        if self.options.dir.is_none() && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// `config` pointed at a stack's local servers: `spec.nats.url` and `spec.clickhouse.url`
/// replaced, everything else as it was.
pub fn local_resources(
    config: &RuntimeConfig,
    nats_port: u16,
    clickhouse_port: u16,
) -> RuntimeConfig {
    let mut config = config.clone();
    let spec = &mut config.pipeline.spec;
    spec.nats.url = format!("nats://127.0.0.1:{nats_port}");
    spec.clickhouse.url = format!("http://127.0.0.1:{clickhouse_port}");
    config
}

/// `pipeline` with one `AnalyticsSite` for each id of `site_ids` (named after it, without
/// domains or keys), and [`ADMIN_KEY`] as its one admin key, checked like any configuration.
pub fn with_sites(
    mut pipeline: AnalyticsPipeline,
    site_ids: impl IntoIterator<Item = String>,
) -> anyhow::Result<RuntimeConfig> {
    pipeline.spec.admin_keys = vec![admin_key()];
    let name = pipeline.metadata.name.clone().unwrap_or_default();
    let sites = site_ids
        .into_iter()
        .map(|site_id| {
            AnalyticsSite::new(
                &site_id,
                AnalyticsSiteSpec {
                    pipeline_ref: PipelineRef { name: name.clone() },
                    site_id: site_id.clone(),
                    domains: Vec::new(),
                    api_keys: Vec::new(),
                    browser_ingest: true,
                    rate_limit: None,
                    privacy: Default::default(),
                    bots: Default::default(),
                    time_zone: None,
                    goals: Vec::new(),
                    experiments: Vec::new(),
                },
            )
        })
        .collect();
    RuntimeConfig::from_resources("generated sites", pipeline, sites, &Default::default())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The repository's `examples/`: what `make dev` runs, and where the bench's pipeline
/// settings come from. `$TALLY_ROOT/examples` when the scripts set `TALLY_ROOT`, else the
/// `examples/` of the workspace this crate was built in.
pub fn examples_dir() -> PathBuf {
    match std::env::var_os("TALLY_ROOT") {
        Some(root) => PathBuf::from(root).join("examples"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the e2e crate is inside the workspace")
            .join("examples"),
    }
}

/// Runs SQL over ClickHouse's HTTP interface at `url` with `login` and returns the
/// TabSeparated answer, trimmed; an answer other than 2xx is an error that quotes the query
/// and ClickHouse's text.
pub async fn clickhouse_sql(
    http: &reqwest::Client,
    url: &str,
    login: &ClickHouseCredentials,
    query: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let mut request = http.post(url);
    if let Some(user) = &login.user {
        request = request.header("x-clickhouse-user", user);
    }
    if let Some(password) = &login.password {
        request = request.header("x-clickhouse-key", password);
    }
    let response = request
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

/// The admin read key of every stack the harness configures (the test pipeline, the
/// bench's): the tests and the bench read `/v1/stats` with it. The configuration holds only
/// its digest.
pub const ADMIN_KEY: &str = "tally-harness-admin-read-key-5b1e0c";

/// [`ADMIN_KEY`] as a pipeline's `adminKeys` entry.
pub fn admin_key() -> tally_crds::AdminKey {
    tally_crds::AdminKey {
        source: tally_crds::KeySource {
            secret_ref: None,
            sha256: Some(tally_contracts::access::to_hex(
                &tally_contracts::access::digest_of(ADMIN_KEY),
            )),
        },
    }
}

/// The Secret of the test servers' logins: `kubectl apply` of the test pipeline creates it,
/// and the harness writes it as the mounted-Secrets directory the services read
/// (`TALLY_SECRETS_DIR`), as the operator's pods have it.
pub const SERVERS_SECRET: &str = "tally-servers";
/// The NATS user of the test servers.
pub const NATS_USER: &str = "tally";
/// The test servers' passwords (NATS's user, ClickHouse's `tally`, the user the test
/// server's launcher creates when given a password).
pub const NATS_PASSWORD: &str = "harness-nats-password-3f9c1e";
pub const CLICKHOUSE_PASSWORD: &str = "harness-clickhouse-password-8d2a7b";

/// The keys of [`SERVERS_SECRET`] and their values.
fn servers_secret() -> [(&'static str, &'static str); 2] {
    [
        ("nats-password", NATS_PASSWORD),
        ("clickhouse-password", CLICKHOUSE_PASSWORD),
    ]
}

/// [`SERVERS_SECRET`] as a `v1` `Secret` document.
pub fn servers_secret_yaml() -> String {
    let data: String = servers_secret()
        .iter()
        .map(|(key, value)| format!("\n  {key}: {value}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {SERVERS_SECRET}\nstringData:{data}\n"
    )
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
    auth:
      user: {NATS_USER}
      passwordSecretRef: {{name: {SERVERS_SECRET}, key: nats-password}}
  clickhouse:
    url: http://127.0.0.1:{clickhouse_port}
    user: tally
    passwordSecretRef: {{name: {SERVERS_SECRET}, key: clickhouse-password}}
  collector:
    publishTimeout: 2s{collector}
  processor:
    batchMaxRows: {rows}
    batchMaxWait: {wait}
    ackWait: {ack}
  adminKeys:
    - sha256: {admin}
",
        admin = admin_key().source.sha256.unwrap_or_default(),
        rows = options.batch_max_rows,
        wait = options.batch_max_wait,
        ack = options.ack_wait,
        collector = options
            .collector_spec
            .iter()
            .map(|line| format!("\n    {line}"))
            .collect::<String>(),
        stream = options
            .duplicate_window
            .map(|w| format!("\n    stream:\n      duplicateWindow: {w}"))
            .unwrap_or_default(),
    );
    yaml.push_str("---\n");
    yaml.push_str(&servers_secret_yaml());
    let mut sites = SITES.to_vec();
    for (id, _) in &options.site_spec {
        if !sites.contains(id) {
            sites.push(id);
        }
    }
    for site in sites {
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
        for (_, line) in options.site_spec.iter().filter(|(id, _)| *id == site) {
            yaml.push_str(&format!("  {line}\n"));
        }
    }
    yaml
}

/// A UTC millisecond as ClickHouse reads a `DateTime64(3, 'UTC')` (`2026-01-31 12:00:00.000`),
/// for rows a test inserts itself.
pub fn clickhouse_time(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("a time of this era");
    format!(
        "{} {:02}:{:02}:{:02}.{:03}",
        t.date(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
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
