//! `tally-import`: loads logs (NDJSON, JSON arrays, gzipped or not; from S3 or local files)
//! into a pipeline through the same door as live events. Each record is mapped into
//! events (`mapping.rs`), validated by the collector's own code
//! (`tally_contracts::validate`), and published to the pipeline's JetStream stream with a
//! bounded number of unacknowledged publishes, so the processor de-duplicates and stores
//! them as it does every event.
//!
//! Idempotent: an event's id is a UUIDv5 of the object (its URL and ETag) and the record's
//! position, so a second run publishes the same ids, which JetStream and the processor drop.
//! Resumable: after each acknowledged chunk the object's checkpoint (`checkpoint.rs`) says
//! how far it went; a re-run skips finished objects and resumes inside the others. A
//! changed object (another ETag) is imported again.

pub mod checkpoint;
pub mod mapping;
pub mod progress;
pub mod records;
pub mod source;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use serde_json::Value;
use serde_json::value::RawValue;
use tally_contracts::validate::{Caller, Limits, Rejection, validate_event};
use tally_contracts::{Event, RuntimeConfig, stream};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use checkpoint::{Checkpoint, Run, Store};
use mapping::Mapping;
use source::{Object, S3Options};

/// The namespace of imported events' ids (UUIDv5).
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9a4d_4f6b_8e21_7d5c_0a9b_3e14);

/// What to do with records older than the raw events' retention (`retentionDays`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutsideRetention {
    /// Leave them out.
    Skip,
    /// Send them: the rollups count them, and ClickHouse's TTL drops their raw rows at once.
    Rollups,
}

/// Everything a run is asked to do.
pub struct Options {
    pub config: PathBuf,
    pub secrets_dir: Option<PathBuf>,
    pub mapping: PathBuf,
    pub site: Option<String>,
    pub sources: Vec<String>,
    pub s3: S3Options,
    pub dry_run: bool,
    pub rejects: PathBuf,
    pub outside_retention: Option<OutsideRetention>,
    pub max_in_flight: usize,
    pub max_rate: Option<f64>,
    pub run_id: Option<String>,
    pub progress: progress::Mode,
}

/// How a run ended (besides an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every record became events (or was outside the retention, as chosen).
    Clean,
    /// Some records were rejected or some objects could not be read; the rest is stored.
    WithRejects,
    /// Records fall outside the raw retention and `--outside-retention` was not given:
    /// nothing was imported.
    RetentionUnchosen,
}

/// The pipeline's resources, as its services load them.
fn load(
    path: &std::path::Path,
    secrets_dir: Option<&std::path::Path>,
) -> anyhow::Result<RuntimeConfig> {
    RuntimeConfig::load_with_secrets(path, secrets_dir)
        .map_err(|e| anyhow::anyhow!("the resources in {} do not load: {e}", path.display()))
}

/// Loads the resources and the mapping, and checks the site.
fn prepare(options: &Options) -> anyhow::Result<(RuntimeConfig, Mapping, String)> {
    let config = load(&options.config, options.secrets_dir.as_deref())?;
    let text = std::fs::read_to_string(&options.mapping)
        .with_context(|| format!("cannot read the mapping {}", options.mapping.display()))?;
    let mapping = Mapping::parse(&text)
        .map_err(|e| anyhow::anyhow!("the mapping {}: {e}", options.mapping.display()))?;
    let Some(site) = options.site.clone().or_else(|| mapping.site_id.clone()) else {
        bail!("no site: give --site or the mapping's site_id");
    };
    if config.site(&site).is_none() {
        bail!(
            "site {site:?} is not a site of pipeline {:?}",
            config.name()
        );
    }
    Ok((config, mapping, site))
}

fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn rfc3339_now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The id of an imported event: the object, its ETag, the record and the event's place in it.
pub fn event_id(object: &str, etag: &str, position: u64, index: usize) -> Uuid {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{object}\n{etag}\n{position}\n{index}").as_bytes(),
    )
}

/// A refused event, as the rejects file and the summary say it.
fn rejection_text(rejection: &Rejection) -> String {
    match rejection {
        Rejection::Invalid(problems) => problems
            .iter()
            .map(|p| format!("{} {}", p.field, p.message))
            .collect::<Vec<_>>()
            .join("; "),
        Rejection::UnknownSite(site) => format!("site_id {site:?} is not configured"),
        other => format!("{other:?}"),
    }
}

/// One object's records turned into validated events (`position`, the events), from
/// `from` on; rejects are written as they are found.
struct Mapped {
    /// (position, events) per record that gave events.
    records: Vec<(u64, Vec<Event>)>,
    records_read: u64,
    rejects: u64,
    outside_retention: u64,
}

struct Context<'a> {
    config: &'a RuntimeConfig,
    mapping: &'a Mapping,
    site: &'a str,
    caller: Caller<'a>,
    limits: Limits,
    /// Events before this are outside the raw retention.
    retention_cutoff_ms: Option<i64>,
    outside: Option<OutsideRetention>,
}

impl Context<'_> {
    fn map(
        &self,
        object: &Object,
        bytes: &[u8],
        from: u64,
        rejects: &mut Rejects,
    ) -> Result<Mapped, String> {
        let records = records::records(object.name(), bytes)?;
        let now = now_ms();
        let mut mapped = Mapped {
            records: Vec::new(),
            records_read: 0,
            rejects: 0,
            outside_retention: 0,
        };
        for record in records.into_iter().filter(|r| r.position >= from) {
            mapped.records_read += 1;
            let outcome = record
                .value
                .and_then(|value| self.events(object, record.position, &value, now));
            match outcome {
                Err(reason) => {
                    mapped.rejects += 1;
                    rejects.write(&object.id, Some(record.position), &reason);
                }
                Ok(events) => {
                    let (old, kept): (Vec<Event>, Vec<Event>) = events.into_iter().partition(|e| {
                        self.retention_cutoff_ms
                            .is_some_and(|cutoff| e.timestamp_ms < cutoff)
                    });
                    mapped.outside_retention += old.len() as u64;
                    let mut events = kept;
                    if self.outside == Some(OutsideRetention::Rollups) {
                        events.extend(old);
                    }
                    mapped.records.push((record.position, events));
                }
            }
        }
        Ok(mapped)
    }

    /// A record's events, each validated as the collector validates a posted one.
    fn events(
        &self,
        object: &Object,
        position: u64,
        value: &Value,
        now: i64,
    ) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        for (index, mut fields) in self.mapping.events(value)?.into_iter().enumerate() {
            fields.insert(
                "event_id".into(),
                event_id(&object.id, &object.etag, position, index)
                    .to_string()
                    .into(),
            );
            fields.insert("site_id".into(), self.site.into());
            let raw = RawValue::from_string(Value::Object(fields).to_string())
                .map_err(|e| e.to_string())?;
            let event = validate_event(&raw, self.config, &self.limits, now, self.caller)
                .map_err(|r| rejection_text(&r))?;
            events.push(event);
        }
        Ok(events)
    }
}

/// The rejects file: one JSON line per refused record or unreadable object, created at
/// the first. Without a path (the retention count's pass) rejects are only counted.
struct Rejects {
    file: Option<std::io::BufWriter<std::fs::File>>,
    path: Option<PathBuf>,
}

impl Rejects {
    fn write(&mut self, object: &str, position: Option<u64>, reason: &str) {
        let Some(path) = &self.path else { return };
        if self.file.is_none() {
            match std::fs::File::create(path) {
                Ok(f) => self.file = Some(std::io::BufWriter::new(f)),
                Err(e) => {
                    eprintln!("cannot write the rejects file {}: {e}", path.display());
                    return;
                }
            }
        }
        if let Some(file) = &mut self.file {
            let line = serde_json::json!({"object": object, "record": position, "reason": reason});
            let _ = writeln!(file, "{line}");
        }
    }

    fn flush(&mut self) {
        if let Some(file) = &mut self.file {
            let _ = file.flush();
        }
    }
}

/// The pipeline's JetStream, with at most `window` publishes waiting for their
/// acknowledgement (publishing waits beyond that).
async fn connect(config: &RuntimeConfig, window: usize) -> anyhow::Result<jetstream::Context> {
    let client = config
        .credentials
        .nats
        .connect_options()
        .map_err(|e| anyhow::anyhow!("the NATS login: {e}"))?
        .name("tally-import")
        .connect(
            stream::nats_servers(&config.pipeline.spec.nats.url)
                .map_err(|e| anyhow::anyhow!("spec.nats.url: {e}"))?,
        )
        .await
        .with_context(|| {
            format!(
                "cannot connect to NATS at {}",
                config.pipeline.spec.nats.url
            )
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.timings.publish_timeout)
        .max_ack_inflight(window)
        .backpressure_on_inflight(true)
        .build(client);
    js.get_stream(config.stream_name()).await.with_context(|| {
        format!(
            "the pipeline's stream {} is not there: start its collector (or operator) first",
            config.stream_name()
        )
    })?;
    Ok(js)
}

/// Publishes events and waits for every acknowledgement.
async fn publish(
    js: &jetstream::Context,
    config: &RuntimeConfig,
    events: &[Event],
) -> anyhow::Result<()> {
    let mut acks = Vec::with_capacity(events.len());
    for event in events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            event.event_id.to_string().as_str(),
        );
        let payload = serde_json::to_vec(event)?;
        let ack = js
            .publish_with_headers(
                config.event_subject(&event.site_id),
                headers,
                payload.into(),
            )
            .await
            .context("publishing to JetStream")?;
        acks.push(ack);
    }
    for ack in
        futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future)).await
    {
        ack.context("JetStream did not acknowledge a publish")?;
    }
    Ok(())
}

/// Runs an import to its end. `Ok` with the run's status and how it ended; `Err` when it
/// could not go on (the resources, the mapping, NATS).
pub async fn import(options: &Options) -> anyhow::Result<(Run, Ending)> {
    let (config, mapping, site) = prepare(options)?;
    let mut objects = Vec::new();
    for source in &options.sources {
        let found = source::objects(source, &options.s3).await?;
        if found.is_empty() {
            bail!("{source}: no objects");
        }
        objects.extend(found);
    }
    let grant = config.keys().grants().find(|g| g.may_ingest(&site));
    let context = Context {
        config: &config,
        mapping: &mapping,
        site: &site,
        caller: Caller {
            origin_host: None,
            key: grant,
        },
        limits: Limits {
            max_properties_bytes: config.pipeline.spec.collector.max_properties_bytes as usize,
        },
        retention_cutoff_ms: config
            .pipeline
            .spec
            .clickhouse
            .retention_days
            .map(|days| now_ms() - i64::from(days) * 86_400_000),
        outside: options.outside_retention,
    };
    let mut run = Run {
        run_id: options.run_id.clone().unwrap_or_else(|| {
            let now = OffsetDateTime::now_utc();
            format!(
                "import-{}",
                now.format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default()
            )
        }),
        state: "running".into(),
        started_at: rfc3339_now(),
        updated_at: rfc3339_now(),
        sources: options.sources.clone(),
        site_id: Some(site.clone()),
        objects_total: objects.len() as u64,
        ..Run::default()
    };
    let mut rejects = Rejects {
        file: None,
        path: Some(options.rejects.clone()),
    };
    let mut progress =
        progress::Progress::new(options.progress, objects.iter().map(|o| o.size).sum());

    // Records older than the raw retention: said before anything is sent.
    if let (Some(days), None, false) = (
        config.pipeline.spec.clickhouse.retention_days,
        options.outside_retention,
        options.dry_run,
    ) {
        let mut old = 0;
        let mut uncounted = Rejects {
            file: None,
            path: None,
        };
        for object in &objects {
            if let Ok(bytes) = object.bytes().await
                && let Ok(mapped) = context.map(object, &bytes, 0, &mut uncounted)
            {
                old += mapped.outside_retention;
            }
        }
        if old > 0 {
            progress.say(&format!(
                "{old} events are older than the raw events' retention ({days} days, spec.clickhouse.retentionDays): \
                 choose --outside-retention skip (leave them out) or rollups (count them in the rollups; \
                 ClickHouse drops their raw rows at once). Nothing was imported."
            ));
            run.outside_retention = old;
            run.state = "not_started".into();
            return Ok((run, Ending::RetentionUnchosen));
        }
    }

    let (js, store) = if options.dry_run {
        (None, None)
    } else {
        let js = connect(&config, options.max_in_flight.max(1)).await?;
        let store = Store::open(&js, &config).await?;
        store.save_run(&run).await?;
        (Some(js), Some(store))
    };
    if let (Some(days), Some(choice)) = (
        config.pipeline.spec.clickhouse.retention_days,
        options.outside_retention,
    ) {
        progress.say(&format!(
            "events older than {days} days (the raw retention) are {}",
            match choice {
                OutsideRetention::Skip => "left out",
                OutsideRetention::Rollups => "sent for the rollups only",
            }
        ));
    }

    let started = Instant::now();
    let mut bytes_done = 0;
    let mut last_saved = Instant::now();
    let result: anyhow::Result<()> = async {
        for object in &objects {
            let mut checkpoint = match &store {
                Some(store) => store.checkpoint(&object.id).await?,
                None => None,
            }
            .filter(|c| c.etag == object.etag)
            .unwrap_or_else(|| Checkpoint {
                object: object.id.clone(),
                etag: object.etag.clone(),
                ..Checkpoint::default()
            });
            if checkpoint.finished {
                run.objects_skipped += 1;
                run.objects_done += 1;
                bytes_done += object.size;
                progress.update(&run, bytes_done, Some(&object.id));
                continue;
            }
            let mapped = match object.bytes().await {
                Err(e) => Err(format!("cannot be read: {e:#}")),
                Ok(bytes) => context.map(object, &bytes, checkpoint.next_position, &mut rejects),
            };
            let mapped = match mapped {
                Ok(mapped) => mapped,
                Err(reason) => {
                    rejects.write(&object.id, None, &format!("the object {reason}"));
                    run.objects_unreadable += 1;
                    run.objects_done += 1;
                    bytes_done += object.size;
                    progress.update(&run, bytes_done, Some(&object.id));
                    continue;
                }
            };
            run.records += mapped.records_read;
            run.rejects += mapped.rejects;
            checkpoint.rejects += mapped.rejects;
            run.outside_retention += mapped.outside_retention;
            // Chunks of whole records, at most max_in_flight events each (but a record's
            // events together); the checkpoint moves after each acknowledged chunk.
            let mut chunk: Vec<Event> = Vec::new();
            let records = mapped.records.len();
            for (i, (position, events)) in mapped.records.into_iter().enumerate() {
                chunk.extend(events);
                let last = i + 1 == records;
                if chunk.len() >= options.max_in_flight || last {
                    if let Some(js) = &js {
                        publish(js, &config, &chunk).await?;
                    }
                    run.events += chunk.len() as u64;
                    checkpoint.events += chunk.len() as u64;
                    checkpoint.next_position = position + 1;
                    chunk.clear();
                    if let Some(store) = &store
                        && !last
                    {
                        store.save(&checkpoint).await?;
                    }
                    if let Some(rate) = options.max_rate {
                        let due = Duration::from_secs_f64(run.events as f64 / rate);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    run.measure(started);
                    progress.update(&run, bytes_done, None);
                    // What --status shows follows inside a large object too.
                    if let Some(store) = &store
                        && last_saved.elapsed() >= Duration::from_secs(2)
                    {
                        store.save_run(&run).await?;
                        last_saved = Instant::now();
                    }
                }
            }
            checkpoint.finished = true;
            run.objects_done += 1;
            bytes_done += object.size;
            if let Some(store) = &store {
                store.save(&checkpoint).await?;
            }
            run.measure(started);
            progress.update(&run, bytes_done, Some(&object.id));
        }
        Ok(())
    }
    .await;
    progress.finish();
    rejects.flush();
    run.measure(started);
    let ending = if run.rejects > 0 || run.objects_unreadable > 0 {
        Ending::WithRejects
    } else {
        Ending::Clean
    };
    run.state = match (&result, ending) {
        (Err(_), _) => "failed",
        (Ok(()), Ending::WithRejects) => "finished_with_rejects",
        _ => "finished",
    }
    .into();
    if options.dry_run {
        run.state = format!("dry_run_{}", run.state);
    }
    if let Err(e) = &result {
        run.error = Some(format!("{e:#}"));
    }
    if let Some(store) = &store {
        // A failed run keeps its status too (best effort: NATS may be what failed).
        let _ = store.save_run(&run).await;
    }
    result.map(|()| (run, ending))
}

/// The runs of the pipeline, oldest first (`--list`), or one (`--status`).
pub async fn runs(
    config_path: &std::path::Path,
    secrets_dir: Option<&std::path::Path>,
    run_id: Option<&str>,
) -> anyhow::Result<Vec<Run>> {
    let config = load(config_path, secrets_dir)?;
    let js = connect(&config, 1).await?;
    let store = Store::open(&js, &config).await?;
    match run_id {
        Some(id) => Ok(store.run(id).await?.into_iter().collect()),
        None => store.runs().await,
    }
}
