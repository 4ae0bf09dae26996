//! `tally-dev`, what `make dev` runs (through `e2e/scripts/dev.sh`, which installs the
//! servers and builds the release binaries first): the whole stack on this machine, on a
//! [`Stack`] with fixed ports, a data directory that survives restarts and the resources of
//! `examples/`. It prints what to curl, runs until Ctrl-C (or SIGTERM, SIGHUP), then stops
//! the services in reverse order and exits 0; when a process dies on its own it shows the
//! end of its log, stops the others and exits 1.
//!
//! What is decided here and not by spawning processes — the command line, the settings
//! read from the environment, the port check, the text printed — is a plain function with
//! unit tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tally_contracts::RuntimeConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{Options, Ports, Stack, announce};

/// The environment `tally-dev` reads, as `--help` shows it.
const ENVIRONMENT: &str = "\
Environment (defaults in brackets; an empty value counts as unset):
  SITE                 site id used in the printed examples [shop]
  NATS_PORT            NATS client port [4222]
  NATS_MONITOR_PORT    NATS monitoring port (/healthz) [8222]
  CLICKHOUSE_HTTP_PORT ClickHouse HTTP port [8123]
  CLICKHOUSE_TCP_PORT  ClickHouse native TCP port [9000]
  PROCESSOR_PORT       processor health/metrics port [9091]
  COLLECTOR_PORT       collector HTTP port [8080]
  QUERY_PORT           query service HTTP port (/v1/stats) [8081]
  DEMO_PORT            the demo website (examples/demo-site/, site demo) [8090]
  TALLY_DEV_DIR        data directory [$TALLY_CACHE/dev]; the logs are in it too
  TALLY_CONFIG         resources the services read [$TALLY_ROOT/examples/]
  RUST_LOG             log filter for the Tally services [info]
  OTEL_*               OpenTelemetry settings, passed to the services (docs/tracing.md) [unset: no tracing]
  TALLY_CACHE, CARGO_TARGET_DIR  see e2e/scripts/lib.sh [~/.cache/tally, $TALLY_CACHE/cargo-target]";

/// Run the whole Tally stack locally (what `make dev` runs):
///
///   nats-server (JetStream) -> ClickHouse -> tally-processor -> tally-collector, tally-query
///
/// e2e/scripts/dev.sh installs the pinned servers into the cache (install-servers.sh),
/// builds the release binaries, then runs tally-dev, which starts everything through the
/// e2e harness (tally_e2e::Stack) bound to 127.0.0.1 with the resources in examples/,
/// waits until each answers, prints what to curl, and runs until Ctrl-C. Ctrl-C (or
/// SIGTERM, SIGHUP) stops the services in reverse order and exits 0. If a service dies
/// on its own, its log tail is printed and tally-dev exits 1.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(
    name = "tally-dev",
    verbatim_doc_comment,
    override_usage = "e2e/scripts/dev.sh [--no-build] [--reset] [--help]",
    after_long_help = ENVIRONMENT,
    disable_help_flag = true
)]
pub struct Cli {
    /// Use the binaries already in $CARGO_TARGET_DIR/release (dev.sh builds them otherwise).
    #[arg(long)]
    pub no_build: bool,
    /// Delete the data directory first (fresh NATS stream and ClickHouse).
    #[arg(long)]
    pub reset: bool,
    /// Where tally-collector, tally-processor and tally-query are [default: next to this
    /// program].
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Print this help.
    #[arg(short, long, action = clap::ArgAction::HelpLong)]
    help: Option<bool>,
}

/// The ports of the local stack, each set by its environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevPorts {
    pub nats: u16,
    pub nats_monitor: u16,
    pub clickhouse_http: u16,
    pub clickhouse_tcp: u16,
    pub processor: u16,
    pub collector: u16,
    pub query: u16,
    /// The demo website, served by tally-dev itself.
    pub demo: u16,
}

impl DevPorts {
    /// Each port with the variable that sets it and its default.
    const VARIABLES: [(&str, u16); 8] = [
        ("NATS_PORT", 4222),
        ("NATS_MONITOR_PORT", 8222),
        ("CLICKHOUSE_HTTP_PORT", 8123),
        ("CLICKHOUSE_TCP_PORT", 9000),
        ("PROCESSOR_PORT", 9091),
        ("COLLECTOR_PORT", 8080),
        ("QUERY_PORT", 8081),
        ("DEMO_PORT", 8090),
    ];

    /// Reads the ports from the environment: defaults for those unset, an error for a value
    /// that is not a port, or for two variables giving the same port.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut ports = [0u16; 8];
        for (slot, (name, default)) in ports.iter_mut().zip(Self::VARIABLES) {
            *slot = match env(name) {
                None => default,
                Some(text) => text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|&p| p != 0)
                    .with_context(|| {
                        format!("{name} must be a port number from 1 to 65535, not {text:?}")
                    })?,
            };
        }
        let ports = Self {
            nats: ports[0],
            nats_monitor: ports[1],
            clickhouse_http: ports[2],
            clickhouse_tcp: ports[3],
            processor: ports[4],
            collector: ports[5],
            query: ports[6],
            demo: ports[7],
        };
        let named = ports.named();
        for (i, (a, port)) in named.iter().enumerate() {
            if let Some((b, _)) = named[i + 1..].iter().find(|(_, p)| p == port) {
                bail!("{a} and {b} are both {port}; give each its own port");
            }
        }
        Ok(ports)
    }

    /// Each port with the variable that sets it.
    pub fn named(&self) -> [(&'static str, u16); 8] {
        let values = [
            self.nats,
            self.nats_monitor,
            self.clickhouse_http,
            self.clickhouse_tcp,
            self.processor,
            self.collector,
            self.query,
            self.demo,
        ];
        let mut out = [("", 0); 8];
        for (slot, ((name, _), port)) in out.iter_mut().zip(Self::VARIABLES.into_iter().zip(values))
        {
            *slot = (name, port);
        }
        out
    }

    /// Fails, as dev.sh did, on the first port something on 127.0.0.1 already holds.
    pub fn check_free(&self, in_use: impl Fn(u16) -> bool) -> anyhow::Result<()> {
        for (name, port) in self.named() {
            if in_use(port) {
                bail!(
                    "port {port} ({name}) is already in use on 127.0.0.1; stop what holds it or set {name}"
                );
            }
        }
        Ok(())
    }

    /// The harness's ports: all of them fixed.
    pub fn stack_ports(&self) -> Ports {
        Ports {
            nats: Some(self.nats),
            nats_monitor: Some(self.nats_monitor),
            clickhouse_http: Some(self.clickhouse_http),
            clickhouse_tcp: Some(self.clickhouse_tcp),
            processor: Some(self.processor),
            collector: Some(self.collector),
            query: Some(self.query),
        }
    }
}

/// Whether a server on 127.0.0.1 could not bind `port` now.
pub fn port_in_use(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Everything a run of the local stack is decided by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub reset: bool,
    /// The site id of the printed examples.
    pub site: String,
    pub ports: DevPorts,
    /// The data directory (NATS's store, ClickHouse's data, the logs, the configuration
    /// the services read).
    pub dir: PathBuf,
    /// The resources the services run.
    pub config: PathBuf,
    pub rust_log: String,
    pub bin_dir: PathBuf,
}

impl Settings {
    /// The settings of the command line `cli` in the environment `env` (a variable set to
    /// the empty string counts as unset, as `${VAR:-default}` has it); `exe_dir` is where
    /// this program is, the default of `--bin-dir`.
    pub fn new(
        cli: &Cli,
        env: impl Fn(&str) -> Option<String>,
        exe_dir: &Path,
    ) -> anyhow::Result<Self> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let dir = match (env("TALLY_DEV_DIR"), env("TALLY_CACHE"), env("HOME")) {
            (Some(dir), _, _) => PathBuf::from(dir),
            (None, Some(cache), _) => Path::new(&cache).join("dev"),
            (None, None, Some(home)) => Path::new(&home).join(".cache/tally/dev"),
            (None, None, None) => bail!("set TALLY_DEV_DIR, TALLY_CACHE or HOME"),
        };
        let config = match (env("TALLY_CONFIG"), env("TALLY_ROOT")) {
            (Some(config), _) => PathBuf::from(config),
            (None, Some(root)) => Path::new(&root).join("examples/"),
            (None, None) => crate::examples_dir(),
        };
        Ok(Self {
            reset: cli.reset,
            site: env("SITE").unwrap_or_else(|| "shop".into()),
            ports: DevPorts::from_env(&env)?,
            dir,
            config,
            rust_log: env("RUST_LOG").unwrap_or_else(|| "info".into()),
            bin_dir: cli.bin_dir.clone().unwrap_or_else(|| exe_dir.to_owned()),
        })
    }

    /// The harness options of this run.
    pub fn options(&self, resources: RuntimeConfig) -> Options {
        Options {
            resources: Some(resources),
            ports: self.ports.stack_ports(),
            dir: Some(self.dir.clone()),
            bin_dir: Some(self.bin_dir.clone()),
            rust_log: Some(self.rust_log.clone()),
            own_process_groups: true,
            progress: true,
            otel_from_env: true,
            stop_timeout: Duration::from_secs(20),
            ..Options::default()
        }
    }
}

/// What the banner shows of a running stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub collector: String,
    pub query: String,
    /// `/v1/stats` of the example site today.
    pub stats: String,
    pub processor_metrics: String,
    pub nats: String,
    pub nats_monitor: String,
    pub clickhouse: String,
    pub clickhouse_tcp_port: u16,
    pub dir: PathBuf,
    /// The log files' names, in start order.
    pub logs: Vec<String>,
    /// Whether the example site takes server-side events only with one of its ingest keys.
    pub ingest_key: bool,
    /// The resources the services run, where their Secrets (and so the keys) are.
    pub config: PathBuf,
    /// The demo website, and `/v1/stats` of its site today.
    pub demo: String,
    pub demo_stats: String,
    /// The pipeline's ClickHouse database.
    pub database: String,
}

impl Running {
    pub fn of(
        stack: &mut Stack,
        settings: &Settings,
        ingest_key: bool,
        date: &str,
        database: &str,
    ) -> Self {
        let site = &settings.site;
        let logs = stack
            .processes()
            .iter()
            .filter_map(|p| p.log().file_stem()?.to_str().map(str::to_owned))
            .collect();
        Self {
            collector: stack.collector_url(""),
            query: stack.query_url(""),
            stats: stack.stats_url(&format!("site_id={site}&date={date}")),
            processor_metrics: stack.processor_url("/metrics"),
            nats: stack.nats_url(),
            nats_monitor: stack.nats_monitor_url(),
            clickhouse: stack.clickhouse_url(),
            clickhouse_tcp_port: stack.clickhouse_tcp_port,
            dir: stack.dir.clone(),
            logs,
            ingest_key,
            config: settings.config.clone(),
            demo: format!("http://127.0.0.1:{}/", settings.ports.demo),
            demo_stats: stack.stats_url(&format!("site_id=demo&date={date}")),
            database: database.to_owned(),
        }
    }
}

/// What to curl, once everything is up.
pub fn banner(running: &Running, site: &str) -> String {
    let Running {
        collector: c,
        query,
        stats,
        processor_metrics,
        nats,
        nats_monitor,
        clickhouse,
        clickhouse_tcp_port,
        dir,
        logs,
        ingest_key,
        config,
        demo,
        demo_stats,
        database,
    } = running;
    let dir = dir.display();
    let logs = logs.join(",");
    let config = config.display();
    // The keys are named, never printed: they are the Secrets of the configuration.
    let key_header = if *ingest_key {
        r#"-H "X-API-Key: $INGEST_KEY" "#
    } else {
        ""
    };
    format!(
        r#"
Tally is running.
  collector   {c}
  query       {query}
  console     {query}/console/   (the dashboard: sign in with a read key or the admin key)
  processor   {processor_metrics}
  NATS        {nats}   (monitoring {nats_monitor})
  ClickHouse  {clickhouse}   (native tcp 127.0.0.1:{clickhouse_tcp_port})
  demo site   {demo}   (site "demo": open it and click around)
  data        {dir}
  logs        {dir}/{{{logs}}}.log
              follow them with: tail -F {dir}/*.log

Keys: the Secret documents of {config}
  (the examples': examples/keys.yaml). Set INGEST_KEY to an ingest key of {site} and
  READ_KEY to a read key of {site} or an admin key of the pipeline.

Send an event:
  curl -i -X POST {c}/v1/events -H 'content-type: application/json' {key_header}\
    -d '{{"site_id":"{site}","type":"page_view","url":"https://{site}.example/","path":"/"}}'

Today's stats:
  curl -sS -H "X-API-Key: $READ_KEY" "{stats}"

SQL:
  curl -sS {clickhouse}/ --data-binary 'SHOW DATABASES'

The demo website ({demo}): its latest events, and its stats (site demo has no keys of its
own: READ_KEY must be the pipeline's admin key):
  curl -sS {clickhouse}/ --data-binary "SELECT timestamp, event_type, path, properties, browser, device FROM {database}.events WHERE site_id = 'demo' ORDER BY timestamp DESC LIMIT 20 FORMAT PrettyCompact"
  curl -sS -H "X-API-Key: $READ_KEY" "{demo_stats}"

Press Ctrl-C to stop.
"#
    )
}

/// Stops a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGINT, SIGTERM and SIGHUP, caught from the start: each one stops the stack in order.
struct Signals(Vec<(Signal, &'static str)>);

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let mut signals = Vec::new();
        for (kind, name) in [
            (SignalKind::interrupt(), "Ctrl-C"),
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
        ] {
            signals.push((signal(kind).context("installing a signal handler")?, name));
        }
        Ok(Self(signals))
    }

    /// The name of the next signal to arrive.
    async fn recv(&mut self) -> &'static str {
        let waits = self.0.iter_mut().map(|(signal, name)| {
            Box::pin(async move {
                signal.recv().await;
                *name
            })
        });
        futures::future::select_all(waits).await.0
    }
}

/// Runs the local stack until a signal (then success) or until a process dies (reported,
/// then failure); an error when it cannot start.
pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    for binary in ["tally-collector", "tally-processor", "tally-query"] {
        let path = settings.bin_dir.join(binary);
        if !path.exists() {
            bail!("{} is missing; run without --no-build", path.display());
        }
    }
    if !settings.config.exists() {
        bail!(
            "no resources at {} (set TALLY_CONFIG)",
            settings.config.display()
        );
    }
    let resources = RuntimeConfig::load(&settings.config)
        .map_err(|e| anyhow::anyhow!("the resources do not load: {e}"))?;
    settings.ports.check_free(port_in_use)?;
    if settings.reset && settings.dir.exists() {
        announce(&format!("deleting {}", settings.dir.display()));
        std::fs::remove_dir_all(&settings.dir)
            .with_context(|| format!("cannot delete {}", settings.dir.display()))?;
    }

    let mut signals = Signals::install()?;
    let stopped = |why: &str| {
        announce(&format!("stopping ({why})"));
    };
    // Interrupted while starting: dropping the half-started stack stops what runs.
    let database = resources.database();
    let ingest_key = resources
        .site(&settings.site)
        .is_some_and(|site| site.has_key_with(tally_crds::KeyScope::Ingest));
    let mut stack = tokio::select! {
        stack = Stack::start(settings.options(resources)) => stack?,
        why = signals.recv() => {
            stopped(why);
            announce(&format!("stopped; data kept in {}", settings.dir.display()));
            return Ok(ExitCode::SUCCESS);
        }
    };
    let demo = tokio::net::TcpListener::bind(("127.0.0.1", settings.ports.demo))
        .await
        .with_context(|| {
            format!(
                "cannot serve the demo website on port {}",
                settings.ports.demo
            )
        })?;
    let demo_site = tokio::spawn(crate::demo_site::serve(
        demo,
        crate::demo_site::demo_dir(),
        stack.collector_url(""),
    ));
    let _stop_demo = AbortOnDrop(demo_site);
    let today = crate::today();
    let running = Running::of(&mut stack, &settings, ingest_key, &today, &database);
    print!("{}", banner(&running, &settings.site));

    loop {
        tokio::select! {
            why = signals.recv() => {
                // Past the terminal's echo of ^C.
                eprintln!();
                stopped(why);
                stack.stop();
                announce(&format!("stopped; data kept in {}", settings.dir.display()));
                return Ok(ExitCode::SUCCESS);
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                let died = stack.processes().into_iter().find_map(|process| {
                    let status = process.exit_status()?;
                    Some(process.failure(&format!("exited unexpectedly ({status})")))
                });
                if let Some(error) = died {
                    announce(&format!("error: {error:#}"));
                    stack.stop();
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    }
}

/// The `tally-dev` program: 0 after a signal, 1 on failure, 2 for a bad command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or_default();
    let settings = match Settings::new(&cli, |name| std::env::var(name).ok(), &exe_dir) {
        Ok(settings) => settings,
        Err(e) => {
            announce(&format!("error: {e:#}"));
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(run(settings)) {
        Ok(code) => code,
        Err(e) => {
            announce(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::CommandFactory;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tally-dev").chain(args.iter().copied()))
    }

    #[test]
    fn the_flags_of_dev_sh() {
        let cli = parse(&[]).unwrap();
        assert!(!cli.reset && !cli.no_build && cli.bin_dir.is_none());
        let cli = parse(&["--reset", "--no-build", "--bin-dir", "/opt/tally"]).unwrap();
        assert!(cli.reset && cli.no_build);
        assert_eq!(cli.bin_dir.as_deref(), Some(Path::new("/opt/tally")));
        // An unknown argument is a usage error: exit code 2, as dev.sh had it.
        let error = parse(&["--rest"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        // -h and --help both print the whole help (exit 0).
        for flag in ["-h", "--help"] {
            let error = parse(&[flag]).unwrap_err();
            assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp, "{flag}");
            assert_eq!(error.exit_code(), 0);
        }
    }

    #[test]
    fn the_help_lists_the_flags_and_the_environment() {
        let help = Cli::command().render_long_help().to_string();
        for text in [
            "e2e/scripts/dev.sh [--no-build] [--reset] [--help]",
            "--no-build",
            "--reset",
            "Ctrl-C",
        ] {
            assert!(help.contains(text), "{text} not in:\n{help}");
        }
        for (name, default) in DevPorts::VARIABLES {
            assert!(help.contains(name), "{name} not in:\n{help}");
            assert!(
                help.contains(&format!("[{default}]")),
                "{default} not in:\n{help}"
            );
        }
        for name in ["SITE", "TALLY_DEV_DIR", "TALLY_CONFIG", "RUST_LOG"] {
            assert!(help.contains(name), "{name} not in:\n{help}");
        }
    }

    #[test]
    fn defaults_are_dev_sh_defaults() {
        let cli = parse(&[]).unwrap();
        let settings = Settings::new(
            &cli,
            env(&[("TALLY_CACHE", "/cache"), ("TALLY_ROOT", "/repo")]),
            Path::new("/target/release"),
        )
        .unwrap();
        assert_eq!(
            settings,
            Settings {
                reset: false,
                site: "shop".into(),
                ports: DevPorts {
                    nats: 4222,
                    nats_monitor: 8222,
                    clickhouse_http: 8123,
                    clickhouse_tcp: 9000,
                    processor: 9091,
                    collector: 8080,
                    query: 8081,
                    demo: 8090,
                },
                dir: "/cache/dev".into(),
                config: "/repo/examples/".into(),
                rust_log: "info".into(),
                bin_dir: "/target/release".into(),
            }
        );
    }

    #[test]
    fn the_environment_overrides_each_default() {
        let cli = parse(&["--reset"]).unwrap();
        let settings = Settings::new(
            &cli,
            env(&[
                ("SITE", "docs"),
                ("NATS_PORT", "14222"),
                ("NATS_MONITOR_PORT", "18222"),
                ("CLICKHOUSE_HTTP_PORT", "18123"),
                ("CLICKHOUSE_TCP_PORT", "19000"),
                ("PROCESSOR_PORT", "19091"),
                ("COLLECTOR_PORT", "18080"),
                ("QUERY_PORT", "18081"),
                ("DEMO_PORT", "18090"),
                ("TALLY_DEV_DIR", "/data"),
                ("TALLY_CACHE", "/cache"),
                ("TALLY_CONFIG", "/etc/tally.yaml"),
                ("RUST_LOG", "debug"),
            ]),
            Path::new("/bin"),
        )
        .unwrap();
        assert!(settings.reset);
        assert_eq!(settings.site, "docs");
        assert_eq!(
            settings.ports.named().map(|(_, port)| port),
            [14222, 18222, 18123, 19000, 19091, 18080, 18081, 18090]
        );
        assert_eq!(settings.dir, Path::new("/data"));
        assert_eq!(settings.config, Path::new("/etc/tally.yaml"));
        assert_eq!(settings.rust_log, "debug");
    }

    #[test]
    fn empty_values_count_as_unset_and_home_is_the_last_resort() {
        let cli = parse(&[]).unwrap();
        let settings = Settings::new(
            &cli,
            env(&[
                ("TALLY_DEV_DIR", ""),
                ("TALLY_CACHE", ""),
                ("HOME", "/home/me"),
                ("NATS_PORT", ""),
                ("SITE", ""),
            ]),
            Path::new("/bin"),
        )
        .unwrap();
        assert_eq!(settings.dir, Path::new("/home/me/.cache/tally/dev"));
        assert_eq!(settings.ports.nats, 4222);
        assert_eq!(settings.site, "shop");
        // Without TALLY_ROOT, the examples of the workspace this was built in.
        assert!(settings.config.ends_with("examples"));
        assert!(settings.config.join("pipeline.yaml").exists());
        let error = Settings::new(&cli, env(&[]), Path::new("/bin")).unwrap_err();
        assert!(error.to_string().contains("TALLY_DEV_DIR"), "{error}");
    }

    #[test]
    fn ports_must_be_ports_and_distinct() {
        for bad in ["http", "0", "65536", "-1"] {
            let error = DevPorts::from_env(&env(&[("COLLECTOR_PORT", bad)])).unwrap_err();
            assert!(
                error
                    .to_string()
                    .starts_with("COLLECTOR_PORT must be a port number"),
                "{bad}: {error}"
            );
        }
        let error = DevPorts::from_env(&env(&[("PROCESSOR_PORT", "8080")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "PROCESSOR_PORT and COLLECTOR_PORT are both 8080; give each its own port"
        );
    }

    #[test]
    fn a_port_in_use_is_named_with_its_variable() {
        let ports = DevPorts::from_env(&env(&[])).unwrap();
        ports.check_free(|_| false).unwrap();
        let error = ports.check_free(|port| port == 8123).unwrap_err();
        assert_eq!(
            error.to_string(),
            "port 8123 (CLICKHOUSE_HTTP_PORT) is already in use on 127.0.0.1; stop what holds it or set CLICKHOUSE_HTTP_PORT"
        );
        // And the real check sees a listener.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(port_in_use(listener.local_addr().unwrap().port()));
    }

    #[test]
    fn the_options_fix_every_port_and_keep_the_data() {
        let cli = parse(&[]).unwrap();
        let settings =
            Settings::new(&cli, env(&[("TALLY_CACHE", "/cache")]), Path::new("/bin")).unwrap();
        let resources = RuntimeConfig::load(&crate::examples_dir()).unwrap();
        let options = settings.options(resources);
        assert_eq!(
            options.ports,
            Ports {
                nats: Some(4222),
                nats_monitor: Some(8222),
                clickhouse_http: Some(8123),
                clickhouse_tcp: Some(9000),
                processor: Some(9091),
                collector: Some(8080),
                query: Some(8081),
            }
        );
        assert_eq!(options.dir.as_deref(), Some(Path::new("/cache/dev")));
        assert_eq!(options.bin_dir.as_deref(), Some(Path::new("/bin")));
        assert_eq!(options.rust_log.as_deref(), Some("info"));
        assert!(options.own_process_groups && options.progress && options.otel_from_env);
        assert_eq!(options.stop_timeout, Duration::from_secs(20));
        assert_eq!(options.resources.unwrap().name(), "web");
    }

    #[test]
    fn the_banner_says_what_to_curl() {
        let running = Running {
            collector: "http://127.0.0.1:8080".into(),
            query: "http://127.0.0.1:8081".into(),
            stats: "http://127.0.0.1:8081/v1/stats?site_id=docs&date=2026-01-31".into(),
            processor_metrics: "http://127.0.0.1:9091/metrics".into(),
            nats: "nats://127.0.0.1:4222".into(),
            nats_monitor: "http://127.0.0.1:8222".into(),
            clickhouse: "http://127.0.0.1:8123".into(),
            clickhouse_tcp_port: 9000,
            dir: "/cache/dev".into(),
            logs: vec![
                "nats".into(),
                "clickhouse".into(),
                "processor".into(),
                "collector".into(),
                "query".into(),
            ],
            ingest_key: true,
            config: "/repo/examples/".into(),
            demo: "http://127.0.0.1:8090/".into(),
            demo_stats: "http://127.0.0.1:8081/v1/stats?site_id=demo&date=2026-01-31".into(),
            database: "tally_web".into(),
        };
        let text = banner(&running, "docs");
        for line in [
            "  collector   http://127.0.0.1:8080\n",
            "  query       http://127.0.0.1:8081\n",
            "  console     http://127.0.0.1:8081/console/   (the dashboard: sign in with a read key or the admin key)\n",
            "  processor   http://127.0.0.1:9091/metrics\n",
            "  NATS        nats://127.0.0.1:4222   (monitoring http://127.0.0.1:8222)\n",
            "  ClickHouse  http://127.0.0.1:8123   (native tcp 127.0.0.1:9000)\n",
            "  logs        /cache/dev/{nats,clickhouse,processor,collector,query}.log\n",
            "tail -F /cache/dev/*.log\n",
            "Keys: the Secret documents of /repo/examples/\n",
            "  curl -i -X POST http://127.0.0.1:8080/v1/events -H 'content-type: application/json' -H \"X-API-Key: $INGEST_KEY\" \\\n",
            r#"-d '{"site_id":"docs","type":"page_view","url":"https://docs.example/","path":"/"}'"#,
            "  curl -sS -H \"X-API-Key: $READ_KEY\" \"http://127.0.0.1:8081/v1/stats?site_id=docs&date=2026-01-31\"\n",
            "  curl -sS http://127.0.0.1:8123/ --data-binary 'SHOW DATABASES'\n",
            "  demo site   http://127.0.0.1:8090/   (site \"demo\": open it and click around)\n",
            "FROM tally_web.events WHERE site_id = 'demo'",
            "  curl -sS -H \"X-API-Key: $READ_KEY\" \"http://127.0.0.1:8081/v1/stats?site_id=demo&date=2026-01-31\"\n",
            "Press Ctrl-C to stop.",
        ] {
            assert!(text.contains(line), "{line:?} not in:\n{text}");
        }
    }
}
