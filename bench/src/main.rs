//! `tally-bench`: measures Tally on this machine and prints a table (and writes JSON).
//!
//! By default it starts its own stack the way `make dev` does — release binaries, real
//! nats-server and ClickHouse on free loopback ports (the e2e harness, `tally_e2e::Stack`)
//! — with a `bench` pipeline of 50 sites that has the settings of `examples/`, and stops
//! every process it started when it ends, however it ends.
//! `--target URL` measures a stack that is already running instead.
//!
//! Phases, in order (`--phases` picks some):
//! 1. `baseline` — the ceilings: raw JetStream async publishes of the collector's envelopes,
//!    and raw ClickHouse RowBinary inserts of the same rows;
//! 2. `single`, `batch` — the collector alone (the processor is not running yet, so the
//!    collector, NATS and the load generator share the machine): closed-loop maximum, then
//!    latencies at an open-loop rate of half that maximum, for single-event POSTs and batch
//!    POSTs of 100 and 1000 events; for single events also the two floors at that rate:
//!    JetStream's own publish-to-acknowledgement latency and the collector's `GET /healthz`;
//! 3. `overload` — 10× the batch maximum offered over many connections: does the collector
//!    shed load (503/429), and does its memory stay bounded;
//! 4. `enrichment` — the processor alone, draining the same backlog of browser-like
//!    envelopes (user agents, referrers, campaign links) published straight into the stream,
//!    once with `--no-enrichment` and once enriching; and one enrichment's cost in-process;
//! 5. `e2e` — the stream is purged and the processor started; batch POSTs as fast as they go,
//!    counted until visible in the rollups; then the lag from POST to visible at half that;
//! 6. `reads` — 10 million generated events over 30 days and 50 sites are inserted straight
//!    into `events` (the views fill the rollups), then `/v1/stats` and the documented SQL
//!    are timed;
//!    `queries` — over the same history, a dashboard's requests of the read API
//!    (`/v1/query` panels, an experiment summary, the session browser with a search), with
//!    the rollup SQL and the search without its index as baselines (`dashboard.rs`);
//!    `console` — over the same history, the console's first useful paint in headless
//!    Chromium (the figures shown; every panel loaded), with the figures' own request as
//!    the baseline (`console.rs`);
//!    `import` — `tally-import` from a real S3 API (moto's server) until visible in the
//!    rollups, with a dry run of the same objects as the baseline (`import.rs`);
//! 7. `isolation` — single-event POSTs at a fixed rate, alone, then while `/v1/stats` reads
//!    run against the query service (paced, then as fast as they go), then alone again: the
//!    collector's p99 with reads against its p99 alone; once on shared cores, once with the
//!    ingest side and the read side pinned to cores of their own (as nodes of a cluster);
//! 8. the peak resident memory (VmHWM) of every process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

mod baseline;
mod client;
mod console;
mod dashboard;
mod e2e;
mod enrichment;
mod generate;
mod import;
mod ingest;
mod isolation;
mod load;
mod memory;
mod reads;
mod report;
mod target;
mod tenancy;

use target::{PipelineSettings, Target};

/// Tally's load generator and benchmark: collector ingestion against the JetStream
/// ceiling, end-to-end throughput and lag, stats reads over 10 million events, memory
/// under 10× overload. Prints a table and writes JSON.
#[derive(Debug, Parser)]
#[command(name = "tally-bench")]
pub struct Cli {
    /// Smaller sizes and shorter runs, for a smoke run (about three minutes).
    #[arg(long)]
    quick: bool,
    /// Measure a running collector (e.g. http://127.0.0.1:8080 of `make dev`) instead of
    /// starting a stack. Loopback addresses only.
    #[arg(long, value_name = "URL")]
    target: Option<String>,
    /// With --target: its query service (`/v1/stats`).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    query_url: String,
    /// With --target: a key that reads every site of its pipeline (an admin key; for
    /// `make dev`, the `admin` key of examples/keys.yaml).
    #[arg(long, env = "TALLY_READ_KEY", value_name = "KEY")]
    read_key: Option<String>,
    /// With --target: its NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// With --target: its ClickHouse HTTP interface.
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// With --target: the resources it runs (sites, database).
    #[arg(long, default_value = "examples/")]
    config: PathBuf,
    /// With --target: also insert the generated history into its database (it is kept).
    #[arg(long)]
    load_read_data: bool,
    /// With --target: the collector's pid, to read its memory.
    #[arg(long)]
    collector_pid: Option<u32>,
    /// With --target: the processor's pid, to read its memory.
    #[arg(long)]
    processor_pid: Option<u32>,
    /// Where to write the JSON report [default: $CARGO_TARGET_DIR/bench/tally-bench-<time>.json].
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// A label stored in the JSON report (e.g. "before", "after").
    #[arg(long, default_value = "")]
    label: String,
    /// Comma-separated phases:
    /// baseline,single,batch,overload,enrichment,e2e,reads,queries,console,import,isolation,tenancy.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,single,batch,overload,enrichment,e2e,reads,queries,console,import,isolation,tenancy"
    )]
    phases: Vec<String>,
    /// Seconds of each measurement [default: 10, --quick 3].
    #[arg(long)]
    duration: Option<u64>,
    /// Connections for single-event POSTs.
    #[arg(long, default_value_t = 64)]
    single_connections: usize,
    /// Connections for batch POSTs.
    #[arg(long, default_value_t = 8)]
    batch_connections: usize,
    /// Connections during the overload [default: 1000, --quick 300].
    #[arg(long)]
    overload_connections: Option<usize>,
    /// Offered load during the overload, as a multiple of the measured batch maximum.
    #[arg(long, default_value_t = 10.0)]
    overload_factor: f64,
    /// Events in the read history [default: 10000000, --quick 200000].
    #[arg(long)]
    read_events: Option<u64>,
    /// Days the read history spans.
    #[arg(long, default_value_t = 30)]
    read_days: u32,
    /// Sites of the bench pipeline (site-00 …).
    #[arg(long, default_value_t = 50)]
    sites: usize,
    /// Queries timed per read query kind [default: 300, --quick 60].
    #[arg(long)]
    read_queries: Option<usize>,
    /// Isolation phase: single-event POSTs per second in each leg.
    #[arg(long, default_value_t = 2000.0)]
    isolation_rate: f64,
    /// Isolation phase: `/v1/stats` requests per second in the paced leg.
    #[arg(long, default_value_t = 20.0)]
    isolation_read_rate: f64,
    /// Tenancy phase: single-event POSTs per second of the steady site in each leg.
    #[arg(long, default_value_t = 1000.0)]
    tenancy_rate: f64,
    /// Isolation phase: connections of the readers.
    #[arg(long, default_value_t = 4)]
    read_connections: usize,
    /// The bench pipeline's spec.processor.batchMaxRows.
    #[arg(long, default_value_t = 10_000)]
    batch_max_rows: u32,
    /// The bench pipeline's spec.processor.batchMaxWait.
    #[arg(long, default_value = "500ms")]
    batch_max_wait: String,
    /// Where tally-collector, tally-processor and tally-query are [default: next to this
    /// binary].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// An extra argument for the local collector (repeatable), e.g.
    /// --collector-arg=--max-in-flight-events=0.
    #[arg(long, allow_hyphen_values = true)]
    collector_arg: Vec<String>,
    /// Rounds of the ClickHouse baselines (their modes alternate, so that a change in the
    /// machine's load hits them all alike).
    #[arg(long, default_value_t = 1)]
    baseline_rounds: usize,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Hard limit on the whole run, in minutes.
    #[arg(long, default_value_t = 45)]
    max_minutes: u64,
}

impl Cli {
    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
    fn duration(&self) -> Duration {
        Duration::from_secs(self.duration.unwrap_or(if self.quick { 3 } else { 10 }))
    }
    fn overload_connections(&self) -> usize {
        self.overload_connections
            .unwrap_or(if self.quick { 300 } else { 1000 })
    }
    fn read_events(&self) -> u64 {
        self.read_events
            .unwrap_or(if self.quick { 200_000 } else { 10_000_000 })
    }
    /// Where the release binaries are: `--bin-dir`, else this binary's directory.
    fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(std::env::current_exe()?
                .parent()
                .context("no directory for this binary")?
                .to_owned()),
        }
    }

    fn enrichment_events(&self) -> usize {
        if self.quick { 50_000 } else { 300_000 }
    }
    fn read_queries(&self) -> usize {
        self.read_queries
            .unwrap_or(if self.quick { 60 } else { 300 })
    }
}

/// Everything measured; written as JSON.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub label: String,
    pub started_at: String,
    pub quick: bool,
    pub target: String,
    pub machine: Machine,
    pub settings: serde_json::Value,
    pub baseline_jetstream: Option<baseline::Rate>,
    pub baseline_clickhouse: Vec<baseline::Rate>,
    pub collector: Vec<ingest::Shape>,
    pub overload: Option<ingest::Overload>,
    pub enrichment: Option<enrichment::Enrichment>,
    pub e2e_capacity: Option<e2e::Capacity>,
    pub e2e_lag: Option<e2e::Lag>,
    pub read_load: Option<reads::Load>,
    pub reads: Vec<reads::Query>,
    pub dashboard: Option<dashboard::Dashboard>,
    pub console: Option<console::Console>,
    pub import: Option<import::Import>,
    pub isolation: Option<isolation::Isolation>,
    pub tenancy: Option<tenancy::Tenancy>,
    pub memory: Vec<report::Memory>,
    pub errors: Vec<String>,
    pub seconds: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo: the same model name can still differ in speed from
    /// one virtual machine to the next, so compare runs by their ratios to the ceilings.
    pub cpu_model: String,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub memory_total_mib: f64,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.client_threads.max(1))
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    match runtime.block_on(async_main(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn async_main(cli: Cli) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut report = Report {
        label: cli.label.clone(),
        started_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        quick: cli.quick,
        target: cli.target.clone().unwrap_or_else(|| "local stack".into()),
        machine: Machine {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(),
            load_average_at_start: load_average(),
            load_average_at_end: String::new(),
            memory_total_mib: memory::status_mib_meminfo("MemTotal:").unwrap_or(0.0),
        },
        ..Default::default()
    };
    let out = cli.out.clone().unwrap_or_else(default_out);
    eprintln!(
        "tally-bench: load average {}",
        report.machine.load_average_at_start
    );

    // Everything the bench starts lives in `target`; dropping it stops them all, so the run
    // ends cleanly on success, error, time limit, Ctrl-C or SIGTERM alike.
    let mut target: Option<Target> = None;
    let limit = Duration::from_secs(cli.max_minutes * 60);
    let outcome = tokio::select! {
        r = tokio::time::timeout(limit, run(&cli, &mut report, &mut target)) => match r {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("the run exceeded --max-minutes {}", cli.max_minutes)),
        },
        _ = interrupted() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = &outcome {
        report.errors.push(format!("{e:#}"));
    }
    if let Some(t) = &target {
        report.memory = report::memory(t, &cli);
    }
    if let Some(mut t) = target.take() {
        eprintln!("tally-bench: stopping the stack");
        t.shutdown();
    }
    report.machine.load_average_at_end = load_average();
    report.seconds = started.elapsed().as_secs_f64();
    report::print(&report);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("\nJSON report: {}", out.display());
    outcome
}

async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn default_out() -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/release/tally-bench → target
            std::env::current_exe()
                .ok()?
                .parent()?
                .parent()
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    base.join("bench").join(format!("tally-bench-{stamp}.json"))
}

async fn run(cli: &Cli, report: &mut Report, slot: &mut Option<Target>) -> anyhow::Result<()> {
    let sites = generate::sites(cli.sites);
    let duration = cli.duration();
    let settings = PipelineSettings {
        sites: sites.clone(),
        batch_max_rows: cli.batch_max_rows,
        batch_max_wait: cli.batch_max_wait.clone(),
    };
    report.settings = serde_json::json!({
        "duration_seconds": duration.as_secs(),
        "single_connections": cli.single_connections,
        "batch_connections": cli.batch_connections,
        "overload_connections": cli.overload_connections(),
        "overload_factor": cli.overload_factor,
        "read_events": cli.read_events(),
        "read_days": cli.read_days,
        "sites": cli.sites,
        "read_queries": cli.read_queries(),
        "batch_max_rows": cli.batch_max_rows,
        "batch_max_wait": cli.batch_max_wait,
        "collector_args": cli.collector_arg,
        "client_threads": cli.client_threads,
        "isolation_rate": cli.isolation_rate,
        "isolation_read_rate": cli.isolation_read_rate,
        "tenancy_rate": cli.tenancy_rate,
        "read_connections": cli.read_connections,
        "phases": cli.phases,
    });

    let local = cli.target.is_none();
    let target = match &cli.target {
        None => {
            let bin_dir = cli.bin_dir()?;
            eprintln!("tally-bench: starting nats-server and ClickHouse");
            let mut t = Target::start_local(&settings, bin_dir, cli.collector_arg.clone()).await?;
            t.start_collector().await?;
            t
        }
        Some(url) => Target::remote(
            url,
            &cli.query_url,
            &cli.nats_url,
            &cli.clickhouse_url,
            &cli.config,
            cli.read_key.clone().unwrap_or_default(),
        )?,
    };
    let target = slot.insert(target);
    // The sites the load goes to: the bench's 50, or those of a remote target that take
    // events without a key (the load carries none).
    let load_sites: Vec<String> = if local {
        sites.clone()
    } else {
        target
            .config
            .sites
            .iter()
            .filter(|s| !s.spec.has_key_with(tally_crds::KeyScope::Ingest))
            .map(|s| s.spec.site_id.clone())
            .collect()
    };
    if load_sites.is_empty() {
        anyhow::bail!(
            "every site of --config needs an ingest key; the bench sends events without one"
        );
    }

    let procs = |t: &Target| t.processes(cli.collector_pid, cli.processor_pid);
    let mut jetstream = 0.0;
    if cli.has("baseline") {
        eprintln!("baseline: JetStream");
        let meter = memory::CpuMeter::start(procs(target));
        let mut rate = baseline::jetstream(&target.nats_url, &load_sites, duration).await?;
        rate.cpu = meter.finish();
        eprintln!("  {:.0} publishes/s", rate.per_second);
        jetstream = rate.per_second;
        report.baseline_jetstream = Some(rate);
        // The crate's defaults (what the processor did before tuning), then without the
        // per-row type validation, then without compression, then without the views.
        let mut modes = vec![
            baseline::InsertMode {
                with_rollups: true,
                validation: true,
                compression: true,
                parallel_views: false,
            },
            baseline::InsertMode {
                with_rollups: true,
                validation: false,
                compression: true,
                parallel_views: false,
            },
        ];
        if !cli.quick {
            modes.push(baseline::InsertMode {
                with_rollups: true,
                validation: false,
                compression: true,
                parallel_views: true,
            });
            modes.push(baseline::InsertMode {
                with_rollups: true,
                validation: false,
                compression: false,
                parallel_views: false,
            });
            modes.push(baseline::InsertMode {
                with_rollups: false,
                validation: false,
                compression: true,
                parallel_views: false,
            });
        }
        let rounds = cli.baseline_rounds.max(1);
        for mode in (0..rounds).flat_map(|_| modes.iter()) {
            eprintln!("baseline: ClickHouse");
            let meter = memory::CpuMeter::start(procs(target));
            let mut rate = baseline::clickhouse(
                &target.clickhouse_url,
                &load_sites,
                cli.batch_max_rows as usize,
                duration,
                mode,
            )
            .await?;
            rate.cpu = meter.finish();
            eprintln!("  {}: {:.0} rows/s", rate.what, rate.per_second);
            report.baseline_clickhouse.push(rate);
        }
    }

    let mut batch_max_rps = 0.0;
    if cli.has("single") {
        eprintln!("collector: single-event POSTs");
        let requests = ingest::requests(&target.host, &load_sites, 1, 4096);
        let mut shape = ingest::shape(
            target.collector,
            "single event",
            requests,
            cli.single_connections,
            duration,
            jetstream,
            procs(target),
        )
        .await;
        target.check_alive()?;
        let rate = shape.half_load_requests_per_second;
        eprintln!(
            "baseline: JetStream publish latency at {rate:.0} publishes/s, {} publishers",
            cli.single_connections
        );
        match baseline::jetstream_latency(
            &target.nats_url,
            &load_sites,
            rate,
            cli.single_connections,
            duration,
        )
        .await
        {
            Ok(h) => {
                let latency = ingest::Latency::of_histogram(&h);
                eprintln!(
                    "  p50 {:.2} ms, p99 {:.2} ms",
                    latency.p50_ms, latency.p99_ms
                );
                shape.jetstream_latency_at_half_load = Some(latency);
            }
            Err(e) => report
                .errors
                .push(format!("JetStream publish latency: {e:#}")),
        }
        eprintln!("collector: GET /healthz at {rate:.0} req/s (the HTTP floor)");
        let healthz = Arc::new(vec![client::Request::get(&target.host, "/healthz")]);
        let floor = load::run(
            target.collector,
            healthz,
            cli.single_connections,
            load::Pace::Open { rate },
            duration,
            Duration::from_secs(30),
        )
        .await;
        shape.http_latency_at_half_load = Some(ingest::Latency::of(&floor));
        report.collector.push(shape);
    }
    if cli.has("batch") {
        for events in [100, 1000] {
            eprintln!("collector: batch POSTs of {events}");
            let requests = ingest::requests(&target.host, &load_sites, events, 32);
            let shape = ingest::shape(
                target.collector,
                &format!("batch of {events}"),
                requests,
                cli.batch_connections,
                duration,
                jetstream,
                procs(target),
            )
            .await;
            if events == 1000 {
                batch_max_rps = shape.max_requests_per_second;
            }
            report.collector.push(shape);
            target.check_alive()?;
        }
    }
    if cli.has("overload") {
        eprintln!("collector: overload");
        let requests = ingest::requests(&target.host, &load_sites, 1000, 32);
        if batch_max_rps == 0.0 {
            // No batch phase ran: measure the maximum briefly.
            let probe = load::run(
                target.collector,
                requests.clone(),
                cli.batch_connections,
                load::Pace::Closed,
                Duration::from_secs(3),
                Duration::from_secs(30),
            )
            .await;
            batch_max_rps = probe.ok_per_second();
        }
        let pid = target.collector_pid().or(cli.collector_pid);
        report.overload = Some(
            ingest::overload(
                target.collector,
                requests,
                ingest::OverloadPlan {
                    connections: cli.overload_connections(),
                    max_rps: batch_max_rps,
                    factor: cli.overload_factor,
                    // Twice as long as the other phases: memory must be seen to level off.
                    duration: (duration * 2).max(Duration::from_secs(6)),
                },
                pid,
                procs(target),
            )
            .await,
        );
        target.check_alive()?;
        // Back to normal before anything else is measured.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    if [
        "enrichment",
        "e2e",
        "reads",
        "queries",
        "console",
        "import",
        "isolation",
    ]
    .iter()
    .any(|p| cli.has(p))
    {
        if local {
            // The collector phases filled the stream; the processor starts on an empty one.
            report::purge_stream(target).await?;
            if cli.has("enrichment") {
                eprintln!("enrichment: the processor with and without it");
                let measured =
                    enrichment::measure(target, &load_sites, cli.enrichment_events()).await?;
                eprintln!(
                    "  {:.0} events/s without, {:.0} with",
                    measured.without_enrichment_per_second, measured.with_enrichment_per_second
                );
                report.enrichment = Some(measured);
            }
            eprintln!("tally-bench: starting the processor");
            target.start_processor().await?;
        }
        report::wait_drained(target, Duration::from_secs(300)).await?;
    }
    if cli.has("e2e") {
        eprintln!("end to end: capacity");
        let requests = ingest::requests(&target.host, &load_sites, 1000, 32);
        let capacity = e2e::capacity(
            target,
            requests.clone(),
            cli.batch_connections,
            duration * 2,
            procs(target),
        )
        .await?;
        eprintln!(
            "  {:.0} events/s sustained until visible",
            capacity.sustained_events_per_second
        );
        let rate = capacity.sustained_events_per_second / 2.0;
        report.e2e_capacity = Some(capacity);
        report::wait_drained(target, Duration::from_secs(300)).await?;
        eprintln!("end to end: lag at {rate:.0} events/s");
        let lag = e2e::lag(
            target,
            requests,
            cli.batch_connections,
            rate,
            duration,
            procs(target),
        )
        .await?;
        eprintln!("  lag p50 {:.0} ms, p99 {:.0} ms", lag.p50_ms, lag.p99_ms);
        report.e2e_lag = Some(lag);
        target.check_alive()?;
    }
    if cli.has("reads") || cli.has("queries") || cli.has("console") {
        if local || cli.load_read_data {
            eprintln!(
                "reads: loading {} events over {} days and {} sites",
                cli.read_events(),
                cli.read_days,
                load_sites.len()
            );
            report.read_load = Some(
                reads::load(
                    target,
                    cli.read_events(),
                    cli.read_days,
                    &load_sites,
                    procs(target),
                )
                .await?,
            );
            reads::check(target, &load_sites[0]).await?;
        }
        if cli.has("reads") {
            eprintln!("reads: timing queries");
            report.reads =
                reads::queries(target, &load_sites, cli.read_days, cli.read_queries()).await?;
        }
        if cli.has("queries") {
            eprintln!("queries: a dashboard's requests over the same history");
            let n = (cli.read_queries() / 3).max(20);
            report.dashboard = Some(dashboard::run(target, &load_sites, n).await?);
        }
        if cli.has("console") {
            eprintln!("console: the first useful paint in headless Chromium");
            report.console = Some(console::run(target, &load_sites, 10).await?);
        }
    }
    if cli.has("import") {
        eprintln!("import: tally-import from S3 (moto's server) until visible in the rollups");
        let bin_dir = cli.bin_dir()?;
        report.import = Some(import::run(target, &bin_dir, &load_sites[0]).await?);
        target.check_alive()?;
    }
    if cli.has("isolation") {
        eprintln!(
            "isolation: single-event POSTs at {:.0}/s beside /v1/stats reads",
            cli.isolation_rate
        );
        let plan = isolation::Plan {
            ingest_rate: cli.isolation_rate,
            ingest_connections: cli.single_connections,
            read_rate: cli.isolation_read_rate,
            read_connections: cli.read_connections,
            duration,
        };
        report.isolation = Some(
            isolation::run(
                target.collector,
                ingest::requests(&target.host, &load_sites, 1, 4096),
                target.stats,
                isolation::stats_requests(
                    &target.stats_host,
                    &target.read_key,
                    &load_sites,
                    cli.read_days,
                ),
                &plan,
                procs(target),
            )
            .await,
        );
        target.check_alive()?;
    }
    if cli.has("tenancy") {
        if !local {
            anyhow::bail!(
                "the tenancy phase needs the bench's own pipeline (its rate-limited site {}): run it without --target",
                tenancy::FLOODED_SITE
            );
        }
        let plan = tenancy::Plan {
            steady_rate: cli.tenancy_rate,
            steady_connections: cli.single_connections,
            flood_events_per_second: 10.0 * f64::from(tenancy::FLOODED_LIMIT),
            flood_connections: 8,
            flood_limit: tenancy::FLOODED_LIMIT,
            duration,
        };
        eprintln!(
            "tenancy: single-event POSTs at {:.0}/s beside a flood of {} at {:.0} events/s (10x its limit)",
            plan.steady_rate,
            tenancy::FLOODED_SITE,
            plan.flood_events_per_second
        );
        report.tenancy = Some(
            tenancy::run(
                target.collector,
                ingest::requests(&target.host, &load_sites, 1, 4096),
                tenancy::flood_requests(&target.host),
                &plan,
            )
            .await,
        );
        target.check_alive()?;
    }
    Ok(())
}
