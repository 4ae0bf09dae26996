//! The printed table, the memory figures, and stream housekeeping between phases.

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use serde::Serialize;
use tally_contracts::naming;

use crate::memory::peak_mib;
use crate::target::Target;
use crate::{Cli, Report};

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub process: String,
    pub pid: u32,
    /// VmHWM: the peak resident set over the process's life.
    pub peak_rss_mib: Option<f64>,
}

pub fn memory(target: &Target, cli: &Cli) -> Vec<Memory> {
    let mut out = Vec::new();
    let mut add = |name: &str, pid: Option<u32>| {
        if let Some(pid) = pid {
            out.push(Memory {
                process: name.to_owned(),
                pid,
                peak_rss_mib: peak_mib(pid),
            });
        }
    };
    add("collector", target.collector_pid().or(cli.collector_pid));
    add("processor", target.processor_pid().or(cli.processor_pid));
    add("query", target.query_pid());
    for (name, pid) in target.servers() {
        // The ClickHouse launcher runs the engine inside python3.
        let name = if name == "clickhouse" {
            "clickhouse (chdb engine)"
        } else {
            name
        };
        add(name, Some(pid));
    }
    out
}

/// A JetStream context on a new connection to the target's NATS, with its credentials.
pub async fn jetstream(target: &Target) -> anyhow::Result<jetstream::Context> {
    let client = target
        .config
        .credentials
        .nats
        .connect_options()
        .map_err(|e| anyhow::anyhow!(e))?
        .name("tally-bench")
        .connect(target.nats_url.as_str())
        .await
        .context("cannot connect to NATS")?;
    Ok(jetstream::new(client))
}

/// Empties the pipeline's stream (a local stack only: the collector phases' events are not
/// meant for ClickHouse).
pub async fn purge_stream(target: &Target) -> anyhow::Result<()> {
    let js = jetstream(target).await?;
    let mut stream = js
        .get_stream(target.config.stream_name())
        .await
        .context("the pipeline stream")?;
    let messages = stream.info().await?.state.messages;
    stream.purge().await.context("purging the stream")?;
    eprintln!("tally-bench: purged {messages} messages of the collector phases from the stream");
    Ok(())
}

/// Waits until the processors' consumer has nothing pending (bounded by `timeout`).
pub async fn wait_drained(target: &Target, timeout: Duration) -> anyhow::Result<()> {
    let js = jetstream(target).await?;
    let stream = js.get_stream(target.config.stream_name()).await?;
    let deadline = Instant::now() + timeout;
    loop {
        let info = match stream.consumer_info(naming::CONSUMER_NAME).await {
            Ok(info) => info.clone(),
            Err(e) => {
                eprintln!("tally-bench: no processor consumer yet ({e}); not waiting for it");
                return Ok(());
            }
        };
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the processor still had {} pending and {} unacknowledged messages after {timeout:?}",
                info.num_pending,
                info.num_ack_pending
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Timed queries, one line each: count, p50, p95, p99 and max.
fn query_table<'a>(what: &str, queries: impl Iterator<Item = &'a crate::reads::Query>) {
    println!(
        "  {:<30} {:>7} {:>8} {:>8} {:>8} {:>8}",
        what, "count", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for q in queries {
        println!(
            "  {:<30} {:>7} {:>8} {:>8} {:>8} {:>8}",
            q.name,
            q.queries,
            f(q.p50_ms, 2),
            f(q.p95_ms, 2),
            f(q.p99_ms, 2),
            f(q.max_ms, 1)
        );
    }
}

fn n(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let whole = v.round() as i64;
    let s = whole.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if whole < 0 { format!("-{out}") } else { out }
}

fn f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| f(v, 0))
}

fn cpu(uses: &[crate::memory::CpuUse]) -> String {
    if uses.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = uses
        .iter()
        .map(|u| format!("{} {:.2}", u.process, u.cores))
        .collect();
    format!("      cores: {}", parts.join(", "))
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

pub fn print(r: &Report) {
    println!();
    println!(
        "Tally benchmark{} — {} — {} CPUs ({}), {:.0} MiB; load average {} at start, {} at end; {:.0} s",
        if r.label.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.label)
        },
        r.started_at,
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_total_mib,
        r.machine.load_average_at_start,
        r.machine.load_average_at_end,
        r.seconds,
    );
    println!(
        "target: {}{}",
        r.target,
        if r.quick { " (--quick)" } else { "" }
    );

    if r.baseline_jetstream.is_some() || !r.baseline_clickhouse.is_empty() {
        println!("\nCeilings (same run, same servers)");
        if let Some(js) = &r.baseline_jetstream {
            println!("  {:<92} {:>10} msg/s", js.what, n(js.per_second));
            println!("{}", cpu(&js.cpu));
        }
        for ch in &r.baseline_clickhouse {
            println!("  {:<92} {:>10} rows/s", ch.what, n(ch.per_second));
            println!("{}", cpu(&ch.cpu));
        }
    }

    if !r.collector.is_empty() {
        println!("\nCollector (closed-loop maximum; latency at an open-loop rate of half of it)");
        println!(
            "  {:<14} {:>5} {:>9} {:>10} {:>6} | {:>9} {:>7} {:>7} {:>7} {:>7} {:>6}",
            "shape",
            "conns",
            "max req/s",
            "max ev/s",
            "×JS",
            "half req/s",
            "p50 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "non2xx"
        );
        for s in &r.collector {
            println!(
                "  {:<14} {:>5} {:>9} {:>10} {:>6} | {:>10} {:>7} {:>7} {:>7} {:>7} {:>6}",
                s.name,
                s.connections,
                n(s.max_requests_per_second),
                n(s.max_events_per_second),
                f(s.ratio_to_jetstream, 2),
                n(s.half_load_achieved_per_second),
                f(s.latency_at_half_load.p50_ms, 2),
                f(s.latency_at_half_load.p99_ms, 2),
                f(s.latency_at_half_load.p999_ms, 2),
                f(s.latency_at_half_load.max_ms, 1),
                s.non_2xx_at_half_load + s.non_2xx_at_max,
            );
            // The floors under the single-event latency, measured at the same rate.
            for (what, floor) in [
                ("GET /healthz", &s.http_latency_at_half_load),
                ("JetStream alone", &s.jetstream_latency_at_half_load),
            ] {
                if let Some(l) = floor {
                    println!(
                        "  {:<14} {what:<16} at the same rate: p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms",
                        "",
                        f(l.p50_ms, 2),
                        f(l.p99_ms, 2),
                        f(l.p999_ms, 2),
                        f(l.max_ms, 1)
                    );
                }
            }
            println!("{} (at max)", cpu(&s.cpu_at_max));
        }
    }

    if let Some(o) = &r.overload {
        println!(
            "\nOverload: {} req/s of {}-event batches offered ({}× the maximum) over {} connections for {:.0} s",
            n(o.offered_requests_per_second),
            o.events_per_request,
            o.offered_factor,
            o.connections,
            o.seconds
        );
        println!(
            "  answers: 202 × {}, 503 × {}, 429 × {}, other × {}, no answer (10 s) × {}; goodput {} events/s",
            o.answered_202,
            o.answered_503,
            o.answered_429,
            o.answered_other,
            o.no_answer,
            n(o.goodput_events_per_second)
        );
        println!(
            "  latency: 202 p50 {} ms p99 {} ms; all answers p50 {} ms p99 {} ms",
            f(o.latency_202.p50_ms, 1),
            f(o.latency_202.p99_ms, 1),
            f(o.latency_all.p50_ms, 1),
            f(o.latency_all.p99_ms, 1)
        );
        println!(
            "  collector RSS MiB: before {}, peak {} (middle third {}, last third {}), after {}",
            opt(o.rss_before_mib),
            opt(o.rss_peak_mib),
            opt(o.rss_peak_middle_third_mib),
            opt(o.rss_peak_last_third_mib),
            opt(o.rss_after_mib)
        );
        println!("{}", cpu(&o.cpu));
        let timeline: Vec<String> = o
            .rss_timeline_mib
            .iter()
            .map(|(t, m)| format!("{t:.0}s {m:.0}"))
            .collect();
        println!("      RSS MiB each second: {}", timeline.join(", "));
    }

    if let Some(e) = &r.enrichment {
        println!(
            "\nProcessor enrichment (the same backlog of browser events, drained from the stream)"
        );
        println!(
            "  without enrichment {:>10} events/s   with {:>10} events/s   time with / without {:.2} (best of 2 each, {} events)",
            n(e.without_enrichment_per_second),
            n(e.with_enrichment_per_second),
            e.time_ratio,
            n(e.events as f64)
        );
        println!(
            "  per processor core-second: without {:>10} events   with {:>10} events",
            n(e.without_enrichment_per_core_second),
            n(e.with_enrichment_per_core_second)
        );
        println!(
            "  one event's enrichment in-process: {:.2} µs (user agent cached), {:.1} µs (new user agent)",
            e.cached_micros_per_event, e.uncached_micros_per_event
        );
    }
    if r.e2e_capacity.is_some() || r.e2e_lag.is_some() {
        println!("\nEnd to end (POST → JetStream → processor → ClickHouse rollups)");
    }
    if let Some(c) = &r.e2e_capacity {
        println!(
            "  sustained {} events/s: {} events in {}-event POSTs over {} connections for {:.1} s, all in site_daily after {:.1} s (collector took {} events/s)",
            n(c.sustained_events_per_second),
            n(c.events_accepted as f64),
            c.events_per_request,
            c.connections,
            c.post_seconds,
            c.seconds_until_visible,
            n(c.ingest_events_per_second)
        );
        println!("{}", cpu(&c.cpu));
        if let Some(p) = &c.processor_stages {
            let stages: Vec<String> = p
                .mean_ms
                .iter()
                .map(|(stage, ms)| format!("{stage} {}", f(*ms, 1)))
                .collect();
            println!(
                "      processor: {} batches of {} rows; mean ms per batch: {} (fetch overlaps the write, acks the next write)",
                p.batches,
                n(p.rows_per_batch),
                stages.join(", ")
            );
        }
    }
    if let Some(l) = &r.e2e_lag {
        println!(
            "  lag POST → visible in path_daily at {} events/s (achieved {}): p50 {} ms, p99 {} ms, max {} ms ({} of {} probes seen, polled every {} ms)",
            n(l.background_events_per_second),
            n(l.background_achieved_events_per_second),
            f(l.p50_ms, 0),
            f(l.p99_ms, 0),
            f(l.max_ms, 0),
            l.probes_seen,
            l.probes_sent,
            l.poll_interval_ms
        );
        println!("{}", cpu(&l.cpu));
    }

    if !r.reads.is_empty() {
        match &r.read_load {
            Some(l) => println!(
                "\nReads over {} events, {} days, {} sites (loaded in {:.1} s = {} rows/s with the views; merges settled in {:.1} s)",
                n(l.events as f64),
                l.days,
                l.sites,
                l.seconds,
                n(l.rows_per_second),
                l.merge_wait_seconds
            ),
            None => println!("\nReads (existing data)"),
        }
        query_table("query", r.reads.iter());
    }

    if let Some(i) = &r.import {
        println!(
            "\ntally-import from S3 (moto's server on loopback): {} events in {} objects",
            i.events, i.objects
        );
        println!(
            "  dry run (read, map, validate; baseline): {:.0} events/s",
            i.dry_run_events_per_s
        );
        println!(
            "  published and acknowledged:              {:.0} events/s",
            i.publish_events_per_s
        );
        println!(
            "  visible in the rollups:                  {:.0} events/s ({:.1} s); ÷ the dry run: {:.2}×",
            i.visible_events_per_s,
            i.visible_seconds,
            i.visible_events_per_s / i.dry_run_events_per_s.max(0.001)
        );
    }

    if let Some(c) = &r.console {
        println!(
            "\nThe console in headless Chromium (a first visit of a site's 30 days, signed in; {} loads)",
            c.loads
        );
        println!(
            "  first useful paint (the figures shown): p50 {:.0} ms, max {:.0} ms",
            c.figures_p50_ms, c.figures_max_ms
        );
        println!(
            "  every panel loaded:                     p50 {:.0} ms, max {:.0} ms",
            c.complete_p50_ms, c.complete_max_ms
        );
        println!(
            "  the figures' request alone: p50 {:.1} ms, p95 {:.1} ms; paint ÷ request (p50): {:.1}×",
            c.figures_request.p50_ms,
            c.figures_request.p95_ms,
            c.figures_p50_ms / c.figures_request.p50_ms.max(0.001)
        );
    }

    if let Some(d) = &r.dashboard {
        println!(
            "\nA dashboard's requests over the same history (one at a time, a random site each)"
        );
        query_table(
            "request",
            d.queries
                .iter()
                .chain([&d.search_with_index, &d.search_without_index]),
        );
        let totals = d.queries.iter().find(|q| q.name == "totals 7d");
        let rollup = r.reads.iter().find(|q| q.name == "SQL totals (site_daily)");
        if let (Some(t), Some(b)) = (totals, rollup) {
            println!(
                "  totals from raw events ÷ one day's totals from the rollup (p50): {:.1}×",
                t.p50_ms / b.p50_ms
            );
        }
        println!(
            "  session search without the index ÷ with it (p50): {:.1}×; the index is {:.1} MiB of {:.1} MiB ({:.1} %)",
            d.search_without_index.p50_ms / d.search_with_index.p50_ms,
            d.index_bytes as f64 / 1_048_576.0,
            d.table_bytes as f64 / 1_048_576.0,
            100.0 * d.index_bytes as f64 / d.table_bytes.max(1) as f64
        );
        let slowest = d.queries.iter().map(|q| q.p95_ms).fold(0.0, f64::max);
        println!("  slowest p95 {:.1} ms (target < 100 ms)", slowest);
    }

    if let Some(iso) = &r.isolation {
        println!(
            "\nIngest beside reads: single-event POSTs at {} req/s over {} connections, {:.0} s per leg; reads: /v1/stats from the query service over {} connections ({} req/s when paced)",
            n(iso.plan.ingest_rate),
            iso.plan.ingest_connections,
            iso.plan.duration.as_secs_f64(),
            iso.plan.read_connections,
            n(iso.plan.read_rate)
        );
        for run in &iso.runs {
            println!("  {}", run.placement);
            println!(
                "    {:<26} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6} | {:>8} {:>7} {:>7} {:>6}",
                "leg",
                "req/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "×alone",
                "non2xx",
                "reads/s",
                "p50 ms",
                "p99 ms",
                "non2xx"
            );
            for leg in &run.legs {
                let read = leg.read_latency.as_ref();
                println!(
                    "    {:<26} {:>9} {:>7} {:>7} {:>7} {:>7} {:>6} | {:>8} {:>7} {:>7} {:>6}",
                    leg.name,
                    n(leg.ingest_achieved_per_second),
                    f(leg.ingest_latency.p50_ms, 2),
                    f(leg.ingest_latency.p99_ms, 2),
                    f(leg.ingest_latency.max_ms, 1),
                    f(leg.p99_ratio_to_alone, 2),
                    leg.ingest_non_2xx,
                    n(leg.reads_per_second),
                    read.map_or("-".into(), |l| f(l.p50_ms, 2)),
                    read.map_or("-".into(), |l| f(l.p99_ms, 2)),
                    leg.read_non_2xx
                );
                println!("  {}", cpu(&leg.cpu));
            }
        }
        if let Some(why) = &iso.not_pinned {
            println!("  not run with the sides pinned apart: {why}");
        }
    }

    if let Some(t) = &r.tenancy {
        println!(
            "\nOne tenant's flood beside another: single-event POSTs for a steady site at {} req/s over {} connections, {:.0} s per leg; the flood: {} events/s in batches for a site limited to {}/s",
            n(t.plan.steady_rate),
            t.plan.steady_connections,
            t.plan.duration.as_secs_f64(),
            n(t.plan.flood_events_per_second),
            t.plan.flood_limit
        );
        println!(
            "    {:<18} {:>7} {:>7} {:>7} {:>6} | {:>14} {:>8} {:>6}",
            "leg", "p50 ms", "p99 ms", "max ms", "non2xx", "flood taken/s", "429s", "other"
        );
        for leg in &t.legs {
            println!(
                "    {:<18} {:>7} {:>7} {:>7} {:>6} | {:>14} {:>8} {:>6}",
                leg.name,
                f(leg.steady_latency.p50_ms, 2),
                f(leg.steady_latency.p99_ms, 2),
                f(leg.steady_latency.max_ms, 1),
                leg.steady_non_2xx,
                if leg.flood {
                    n(leg.flood_accepted_events_per_second)
                } else {
                    "-".into()
                },
                leg.flood_429,
                leg.flood_other_non_2xx
            );
        }
    }

    if !r.memory.is_empty() {
        println!("\nPeak resident memory (VmHWM over the whole run)");
        for m in &r.memory {
            println!("  {:<26} {:>8} MiB", m.process, opt(m.peak_rss_mib));
        }
    }

    println!("\nTargets (this machine, everything on it)");
    let single = r.collector.iter().find(|s| s.events_per_request == 1);
    let best_batch = r
        .collector
        .iter()
        .map(|s| s.max_events_per_second)
        .fold(f64::NAN, f64::max);
    let js = r.baseline_jetstream.as_ref().map(|j| j.per_second);
    let stats = r.reads.iter().find(|q| q.name == "GET /v1/stats");
    let line = |what: &str, value: String, ok: Option<bool>| {
        println!(
            "  {:<48} {:>24}  {}",
            what,
            value,
            ok.map_or("not measured", verdict)
        );
    };
    line(
        "end to end ≥ 100,000 events/s (batch POSTs)",
        r.e2e_capacity
            .as_ref()
            .map_or("-".into(), |c| n(c.sustained_events_per_second)),
        r.e2e_capacity
            .as_ref()
            .map(|c| c.sustained_events_per_second >= 100_000.0),
    );
    line(
        "single-event POSTs ≥ 25,000 req/s",
        single.map_or("-".into(), |s| n(s.max_requests_per_second)),
        single.map(|s| s.max_requests_per_second >= 25_000.0),
    );
    line(
        "single-event p99 < 5 ms at half load",
        single.map_or("-".into(), |s| match &s.jetstream_latency_at_half_load {
            Some(js) => format!(
                "{} ms (JetStream {} ms)",
                f(s.latency_at_half_load.p99_ms, 2),
                f(js.p99_ms, 2)
            ),
            None => format!("{} ms", f(s.latency_at_half_load.p99_ms, 2)),
        }),
        single.map(|s| s.latency_at_half_load.p99_ms < 5.0),
    );
    line(
        "collector events/s ≥ 0.5 × JetStream baseline",
        match js {
            Some(js) if best_batch.is_finite() => {
                format!("{} / {} = {}", n(best_batch), n(js), f(best_batch / js, 2))
            }
            _ => "-".into(),
        },
        js.filter(|_| best_batch.is_finite())
            .map(|js| best_batch >= 0.5 * js),
    );
    line(
        "stats p95 < 50 ms at 10M events",
        stats.map_or("-".into(), |q| format!("{} ms", f(q.p95_ms, 2))),
        stats
            .filter(|_| r.read_load.as_ref().is_some_and(|l| l.events >= 10_000_000))
            .map(|q| q.p95_ms < 50.0),
    );
    // The verdict reads the paced leg with the sides on cores of their own, as a cluster
    // runs them; the shared-core run shows what a small machine does (docs/performance.md).
    let pinned = r
        .isolation
        .as_ref()
        .and_then(|iso| iso.runs.iter().find(|run| run.pinned));
    let tenancy = r.tenancy.as_ref();
    line(
        "steady site p99 beside a 10x flood of another ≤ 2x",
        tenancy
            .and_then(|t| t.flood_against_alone())
            .map_or("-".into(), |(flood, alone)| {
                format!("{} ms vs {} ms alone", f(flood, 2), f(alone, 2))
            }),
        tenancy.and_then(|t| t.unchanged_beside_the_flood()),
    );
    line(
        "single-event p99 beside reads unchanged (pinned)",
        pinned
            .and_then(|run| run.paced_against_alone())
            .map_or("-".into(), |(paced, alone)| {
                format!("{} ms vs {} ms alone", f(paced, 2), f(alone, 2))
            }),
        pinned.and_then(|run| run.unchanged_beside_paced_reads()),
    );
    line(
        "10× overload: sheds load, memory bounded",
        r.overload.as_ref().map_or("-".into(), |o| {
            format!(
                "{} shed, peak {} MiB",
                o.answered_503 + o.answered_429,
                opt(o.rss_peak_mib)
            )
        }),
        // Without memory samples of both thirds the verdict is "not measured", never "met".
        r.overload.as_ref().and_then(|o| {
            let (a, b) = (o.rss_peak_middle_third_mib?, o.rss_peak_last_third_mib?);
            // Stopped growing: the last third within 10 % (+32 MiB) of the middle.
            Some(o.sheds_load && b <= a * 1.1 + 32.0)
        }),
    );
    for e in &r.errors {
        println!("\nerror: {e}");
    }
}
