//! The processor with and without enrichment: the same backlog of browser-like envelopes
//! (real user agents, referrers, campaign links) is drained from the stream once by a
//! processor started with `--no-enrichment` and once by one that enriches, on the same
//! servers in the same run (each way twice, alternating); plus the in-process cost of one
//! enrichment (cached and uncached user agent).

use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tally_contracts::{Event, naming};
use tally_processor::enrich::Enricher;

use crate::generate::{Gen, now_ms};
use crate::target::Target;

#[derive(Debug, Clone, Serialize)]
pub struct Enrichment {
    pub events: u64,
    /// Events per second from the processor being ready until the stream is drained.
    pub without_enrichment_per_second: f64,
    pub with_enrichment_per_second: f64,
    /// Events per second of the processor's CPU time (user + system), each way: what the
    /// wall clock of a shared machine blurs.
    pub without_enrichment_per_core_second: f64,
    pub with_enrichment_per_core_second: f64,
    /// The time to drain with enrichment over the time without (> 1: enrichment costs).
    pub time_ratio: f64,
    /// One event's enrichment in the process, its user agent in the cache.
    pub cached_micros_per_event: f64,
    /// One event's enrichment when every user agent is new.
    pub uncached_micros_per_event: f64,
}

/// Browser-like envelopes for `sites`, each with a user agent, referrer and page of a
/// realistic mix.
pub fn envelopes(sites: &[String], n: usize, seed: u64) -> Vec<Event> {
    let mut generator = Gen::new(seed);
    let now = now_ms();
    (0..n)
        .map(|_| generator.browser_envelope(sites, now))
        .collect()
}

async fn publish(target: &Target, events: &[Event]) -> anyhow::Result<()> {
    let js = crate::report::jetstream(target).await?;
    let mut acks = FuturesUnordered::new();
    for event in events {
        let subject = naming::event_subject(target.config.name(), &event.site_id);
        let message = PublishMessage::build()
            .payload(serde_json::to_vec(event)?.into())
            .message_id(event.event_id.to_string());
        acks.push(js.send_publish(subject, message).await?.into_future());
        while acks.len() >= 4096 {
            acks.next().await.transpose()?;
        }
    }
    while acks.next().await.transpose()?.is_some() {}
    Ok(())
}

/// Seconds, and the processor's CPU seconds, from a processor (started with `args`) being
/// ready until it drained `events` from the stream; the processor is stopped afterwards.
/// Counting from ready leaves out its start (the user-agent patterns compile then, in a
/// fraction of a second), which would weigh on a backlog this size but not on a running
/// processor.
async fn drain(target: &mut Target, events: &[Event], args: &[&str]) -> anyhow::Result<(f64, f64)> {
    publish(target, events).await?;
    let stack = target.local.as_mut().context("a local stack")?;
    stack.start_processor(args).await?;
    let pid = stack.processor.pid().context("the processor's pid")?;
    let cpu = || crate::memory::cpu_seconds(pid).context("the processor's CPU time");
    let (start, cpu_start) = (Instant::now(), cpu()?);
    crate::report::wait_drained(target, Duration::from_secs(600)).await?;
    let (seconds, cpu_seconds) = (start.elapsed().as_secs_f64(), cpu()? - cpu_start);
    target
        .local
        .as_mut()
        .context("a local stack")?
        .processor
        .stop();
    Ok((seconds, cpu_seconds))
}

/// Runs the comparison on a local stack whose processor is not running: a first start
/// applies the schema (so that neither measured start does), then each way twice,
/// alternating, the best of each kept.
pub async fn measure(
    target: &mut Target,
    sites: &[String],
    n: usize,
) -> anyhow::Result<Enrichment> {
    drain(target, &envelopes(sites, 1_000, 10), &[]).await?;
    let best = |a: (f64, f64), b: (f64, f64)| (a.0.min(b.0), a.1.min(b.1));
    let mut without = (f64::INFINITY, f64::INFINITY);
    let mut with = without;
    for round in 0..2 {
        let seed = 11 + 2 * round;
        let off = drain(target, &envelopes(sites, n, seed), &["--no-enrichment"]).await?;
        without = best(without, off);
        let on = drain(target, &envelopes(sites, n, seed + 1), &[]).await?;
        with = best(with, on);
    }

    let enricher = Enricher::new()?;
    let sample = envelopes(sites, 20_000, 13);
    for event in &sample {
        enricher.enrich(event);
    }
    let start = Instant::now();
    for event in &sample {
        std::hint::black_box(enricher.enrich(event));
    }
    let cached = start.elapsed().as_secs_f64() * 1e6 / sample.len() as f64;
    let mut fresh = envelopes(sites, 2_000, 14);
    for (i, event) in fresh.iter_mut().enumerate() {
        event.user_agent = format!("{} Build/{i}", event.user_agent);
    }
    let start = Instant::now();
    for event in &fresh {
        std::hint::black_box(enricher.enrich(event));
    }
    let uncached = start.elapsed().as_secs_f64() * 1e6 / fresh.len() as f64;

    let per_second = |seconds: f64| n as f64 / seconds;
    Ok(Enrichment {
        events: n as u64,
        without_enrichment_per_second: per_second(without.0),
        with_enrichment_per_second: per_second(with.0),
        without_enrichment_per_core_second: per_second(without.1),
        with_enrichment_per_core_second: per_second(with.1),
        time_ratio: with.0 / without.0,
        cached_micros_per_event: cached,
        uncached_micros_per_event: uncached,
    })
}
