//! The `import` phase: `tally-import` from a real S3 API on loopback (moto's server, as in
//! `e2e/tests/import.rs`) into the bench pipeline, timed until its events are visible in
//! the rollups. 100 objects of 2,000 NDJSON records (every other one gzipped), one event
//! each. The baseline in the same run: a `--dry-run` of the same objects (read from S3,
//! mapped and validated, nothing sent), the import's ceiling before JetStream and the
//! processor.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;
use tally_contracts::schema::EVENT_TYPE_DAILY;
use tally_e2e::s3::{LOG_MAPPING, S3, gzip, import_command, log_line, stage};

use crate::target::Target;

const OBJECTS: usize = 100;
const RECORDS: usize = 2000;
const EVENT_TYPE: &str = "bench_import";

#[derive(Debug, Clone, Serialize)]
pub struct Import {
    pub objects: usize,
    pub events: u64,
    /// The dry run's events per second (read, map, validate).
    pub dry_run_events_per_s: f64,
    /// The import's own events per second (until its last acknowledgement).
    pub publish_events_per_s: f64,
    /// From the start of the import until every event is counted in the rollups.
    pub visible_seconds: f64,
    pub visible_events_per_s: f64,
}

async fn run_import(
    binary: &Path,
    config: &Path,
    work: &Path,
    s3: &S3,
    site: &str,
    dry_run: bool,
) -> anyhow::Result<serde_json::Value> {
    let mut command = import_command(binary, config, work, s3);
    command.args([
        "--site",
        site,
        "--progress",
        "none",
        "--max-in-flight",
        "2000",
    ]);
    if dry_run {
        command.arg("--dry-run");
    }
    command.arg(format!("s3://{}/", s3.bucket));
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .context("tally-import did not end within 600 s")??;
    anyhow::ensure!(
        output.status.success(),
        "tally-import failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("tally-import printed no summary")
}

pub async fn run(target: &Target, bin_dir: &Path, site: &str) -> anyhow::Result<Import> {
    let stack = target
        .local
        .as_ref()
        .context("the import phase needs the bench's own stack (no --target)")?;
    let binary = bin_dir.join("tally-import");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing (e2e/scripts/bench.sh builds it)",
        binary.display()
    );
    let work = stack.dir.join("import-bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("mapping.yaml"), LOG_MAPPING)?;
    let s3 = S3::start(&work, "bench-logs").await?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let staged = work.join("staged");
    for obj in 0..OBJECTS {
        let text: String = (0..RECORDS)
            .map(|line| {
                log_line(
                    now_ms - 3_600_000 + (obj * RECORDS + line) as i64,
                    &format!("u{}", line % 997),
                    &format!("v{obj}-{}", line / 20),
                    &format!("/import/p{}", line % 50),
                    EVENT_TYPE,
                    obj,
                    line,
                )
            })
            .collect();
        if obj % 2 == 0 {
            stage(
                &staged,
                &format!("logs/obj-{obj:03}.ndjson.gz"),
                gzip(&text),
            )?;
        } else {
            stage(&staged, &format!("logs/obj-{obj:03}.ndjson"), text)?;
        }
    }
    s3.upload(&staged).await?;
    let events = (OBJECTS * RECORDS) as u64;

    let started = Instant::now();
    let dry = run_import(&binary, &stack.config, &work, &s3, site, true).await?;
    let dry_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        dry["events"].as_u64() == Some(events),
        "the dry run mapped {} events, not {events}",
        dry["events"]
    );

    let db = target.database();
    let visible_sql = format!(
        "SELECT sum(events) FROM {db}.{EVENT_TYPE_DAILY} WHERE site_id = '{site}' AND event_type = '{EVENT_TYPE}'"
    );
    let visible = || target.sql_u64(&visible_sql);
    let before = visible().await.unwrap_or(0);
    let started = Instant::now();
    let summary = run_import(&binary, &stack.config, &work, &s3, site, false).await?;
    let published = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(300);
    while visible().await.unwrap_or(0) < before + events {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the imported events were not all visible within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let visible_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        summary["events"].as_u64() == Some(events),
        "the import sent {} events",
        summary["events"]
    );
    Ok(Import {
        objects: OBJECTS,
        events,
        dry_run_events_per_s: events as f64 / dry_seconds,
        publish_events_per_s: events as f64 / published,
        visible_seconds,
        visible_events_per_s: events as f64 / visible_seconds,
    })
}
