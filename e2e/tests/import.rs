//! `tally-import` against a real S3 API on loopback (moto's server, `moto[server]` from
//! PyPI) and a real stack: a thousand-object prefix of plain and gzipped NDJSON is imported
//! with exact counts in ClickHouse, and the bad line, the invalid event and the broken gzip
//! object are reported with their object and line while the rest is stored; a second run
//! adds nothing; a run killed with SIGKILL half-way and run again ends with exact counts,
//! while live events are posted and all of them stored too; a changed object is imported
//! again; records older than the raw retention stop a run that did not choose what to do
//! with them; `--list` and `--status` show the runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tally_e2e::s3::{LOG_MAPPING, S3, gzip, import_command, log_line, stage};
use tally_e2e::{Options, Stack, eventually};

const BUCKET: &str = "logs";

/// `n` records of object `obj` under `prefix` (paths `/<prefix>/…`), one event each.
fn records(prefix: &str, obj: usize, n: usize, ts: i64) -> String {
    (0..n)
        .map(|line| {
            log_line(
                ts + line as i64,
                &format!("u{}", obj % 50),
                &format!("{prefix}-{obj}"),
                &format!("/{prefix}/p{}", line % 7),
                "view",
                obj,
                line + 1,
            )
        })
        .collect()
}

struct Import {
    code: i32,
    summary: Value,
    stderr: String,
}

/// `tally-import` against the test server, its output captured.
fn command(
    s3: &S3,
    work: &Path,
    config: &Path,
    args: &[&str],
) -> anyhow::Result<tokio::process::Command> {
    let mut command = import_command(&Stack::binary("tally-import")?, config, work, s3);
    // The endpoint as a flag here (the bench passes it as AWS_ENDPOINT_URL).
    command
        .args(["--endpoint-url", &s3.url, "--progress", "json"])
        .args(args);
    Ok(command)
}

async fn import(s3: &S3, work: &Path, config: &Path, args: &[&str]) -> anyhow::Result<Import> {
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        command(s3, work, config, args)?.output(),
    )
    .await
    .context("tally-import did not end within 300 s")??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let summary = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    Ok(Import {
        code: output.status.code().unwrap_or(-1),
        summary,
        stderr,
    })
}

async fn count(stack: &Stack, condition: &str) -> anyhow::Result<u64> {
    stack
        .sql_u64(&format!(
            "SELECT count() FROM tally_e2e.events WHERE {condition}"
        ))
        .await
}

/// Waits until `condition` counts `want` events, then a little longer to see no more come.
async fn exactly(stack: &Stack, condition: &str, want: u64) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut got = count(stack, condition).await?;
    while got < want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        got = count(stack, condition).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(stack, condition).await?,
        want,
        "{condition} (counted {got} at first)"
    );
    Ok(())
}

#[tokio::test]
async fn a_thousand_objects_from_s3_once_each_however_often_and_however_stopped()
-> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let work = tempdir("import")?;
    std::fs::write(
        work.join("mapping.yaml"),
        format!("site_id: shop\n{LOG_MAPPING}"),
    )?;
    let server = S3::start(&work, BUCKET).await?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let ts = now_ms - 2 * 86_400_000;

    // A thousand objects of ten records, every third gzipped; object 7 has a line that is
    // not JSON, object 11 an event a year ahead, and object 9 is a broken gzip stream.
    let staged = work.join("staged");
    for obj in 0..1000 {
        let mut text = records("a", obj, 10, ts + obj as i64 * 100);
        if obj == 7 {
            let mut lines: Vec<&str> = text.lines().collect();
            lines[3] = "{\"ts\": 1, not json";
            text = lines.join("\n") + "\n";
        }
        if obj == 11 {
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines[1] = records("a", obj, 1, now_ms + 365 * 86_400_000)
                .trim()
                .to_owned();
            text = lines.join("\n") + "\n";
        }
        let (key, body) = if obj % 3 == 0 {
            let mut body = gzip(&text);
            if obj == 9 {
                body.truncate(body.len() / 2);
            }
            (format!("a/obj-{obj:05}.ndjson.gz"), body)
        } else {
            (format!("a/obj-{obj:05}.ndjson"), text.into_bytes())
        };
        stage(&staged, &key, body)?;
    }
    server.upload(&staged).await?;
    let first = import(
        &server,
        &work,
        &stack.config,
        &["--run-id", "first", &format!("s3://{BUCKET}/a/")],
    )
    .await?;
    assert_eq!(
        first.code, 3,
        "rejects make exit status 3: {}",
        first.stderr
    );
    let s = &first.summary;
    assert_eq!(
        (
            s["objects_total"].as_u64(),
            s["objects_done"].as_u64(),
            s["objects_unreadable"].as_u64()
        ),
        (Some(1000), Some(1000), Some(1)),
        "{s}"
    );
    assert_eq!(
        (s["events"].as_u64(), s["rejects"].as_u64()),
        (Some(10_000 - 10 - 2), Some(2)),
        "{s}"
    );
    exactly(&stack, "startsWith(path, '/a/')", 9_988).await?;
    let rejects = std::fs::read_to_string(work.join("rejects.ndjson"))?;
    let rejects: Vec<Value> = rejects
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(rejects.len(), 3, "{rejects:?}");
    let find = |key: &str| {
        rejects
            .iter()
            .find(|r| r["object"] == format!("s3://{BUCKET}/a/{key}"))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(find("obj-00007.ndjson")["record"], 4);
    assert!(
        find("obj-00007.ndjson")["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("is not JSON")
    );
    assert_eq!(find("obj-00011.ndjson")["record"], 2);
    assert!(
        find("obj-00011.ndjson")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("24 hours in the future")
    );
    assert_eq!(find("obj-00009.ndjson.gz")["record"], Value::Null);
    assert!(
        find("obj-00009.ndjson.gz")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("gzip")
    );

    // Again: the finished objects are skipped, nothing is stored twice.
    let second = import(
        &server,
        &work,
        &stack.config,
        &["--run-id", "second", &format!("s3://{BUCKET}/a/")],
    )
    .await?;
    assert_eq!(
        (
            second.summary["objects_skipped"].as_u64(),
            second.summary["events"].as_u64()
        ),
        (Some(999), Some(0)),
        "{}",
        second.summary
    );
    exactly(&stack, "startsWith(path, '/a/')", 9_988).await?;

    // Killed half-way (SIGKILL), then run again, while live events are posted: every event once.
    for obj in 0..100 {
        stage(
            &staged,
            &format!("b/obj-{obj:03}.ndjson"),
            records("b", obj, 100, ts + obj as i64 * 1000),
        )?;
    }
    server.upload(&staged).await?;
    let b = format!("s3://{BUCKET}/b/");
    let live = {
        let http = stack.http.clone();
        let url = stack.collector_url("/v1/events");
        tokio::spawn(async move {
            let mut accepted = 0;
            for i in 0..300 {
                let event = json!({"site_id": "docs", "event_type": "live", "path": "/live", "properties": {"i": i}});
                if let Ok(r) = http.post(&url).json(&event).send().await
                    && r.status().as_u16() == 202
                {
                    accepted += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            accepted
        })
    };
    let mut slow = command(
        &server,
        &work,
        &stack.config,
        &[
            "--run-id",
            "killed",
            "--max-rate",
            "2000",
            // Chunks of 10 of an object's 100 records: the kill lands inside an object.
            "--max-in-flight",
            "10",
            &b,
        ],
    )?
    .spawn()?;
    eventually(
        "the slow import to store some events",
        Duration::from_secs(60),
        || {
            let got = count(&stack, "startsWith(path, '/b/')");
            async { got.await.ok().filter(|n| *n >= 1000).map(|_| ()) }
        },
    )
    .await?;
    slow.start_kill()?;
    let status = slow.wait().await?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status:?}"
    );
    let stored_when_killed = count(&stack, "startsWith(path, '/b/')").await?;
    assert!(
        stored_when_killed < 10_000,
        "the import was killed too late to tell: {stored_when_killed}"
    );
    let resumed = import(&server, &work, &stack.config, &["--run-id", "resumed", &b]).await?;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.summary["events"].as_u64().unwrap_or(0) < 10_000,
        "the resumed run started over: {}",
        resumed.summary
    );
    exactly(&stack, "startsWith(path, '/b/')", 10_000).await?;
    let accepted = live.await?;
    assert_eq!(
        accepted, 300,
        "every live event accepted while the import ran"
    );
    exactly(&stack, "site_id = 'docs' AND path = '/live'", 300).await?;

    // A changed object (another ETag) is imported again.
    stage(
        &staged,
        "a/obj-00001.ndjson",
        records("a-changed", 1, 3, ts),
    )?;
    server.upload(&staged).await?;
    let changed = import(
        &server,
        &work,
        &stack.config,
        &["--run-id", "changed", &format!("s3://{BUCKET}/a/")],
    )
    .await?;
    assert_eq!(
        (
            changed.summary["objects_skipped"].as_u64(),
            changed.summary["events"].as_u64()
        ),
        (Some(998), Some(3)),
        "{}",
        changed.summary
    );
    exactly(&stack, "startsWith(path, '/a-changed/')", 3).await?;

    // Records older than the raw retention: without a choice nothing is sent (exit 4).
    let config = work.join("retention.yaml");
    let yaml = std::fs::read_to_string(&stack.config)?;
    std::fs::write(
        &config,
        yaml.replacen(
            "  clickhouse:\n",
            "  clickhouse:\n    retentionDays: 30\n",
            1,
        ),
    )?;
    stage(
        &staged,
        "old/obj.ndjson",
        records("old", 0, 5, now_ms - 90 * 86_400_000),
    )?;
    server.upload(&staged).await?;
    let old = format!("s3://{BUCKET}/old/");
    let unchosen = import(&server, &work, &config, &[&old]).await?;
    assert_eq!(unchosen.code, 4, "{}", unchosen.stderr);
    assert!(
        unchosen
            .stderr
            .contains("5 events are older than the raw events' retention (30 days"),
        "{}",
        unchosen.stderr
    );
    let skipped = import(
        &server,
        &work,
        &config,
        &["--outside-retention", "skip", &old],
    )
    .await?;
    assert_eq!(
        (
            skipped.code,
            skipped.summary["events"].as_u64(),
            skipped.summary["outside_retention"].as_u64()
        ),
        (0, Some(0), Some(5)),
        "{}",
        skipped.summary
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&stack, "startsWith(path, '/old/')").await?, 0);

    // The runs, as --list and --status show them.
    let listed = tokio::process::Command::new(Stack::binary("tally-import")?)
        .arg("--config")
        .arg(&stack.config)
        .arg("--list")
        .output()
        .await?;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let runs: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let ids: Vec<&str> = runs.iter().filter_map(|r| r["run_id"].as_str()).collect();
    for id in ["first", "second", "killed", "resumed", "changed"] {
        assert!(ids.contains(&id), "{id} not in {ids:?}");
    }
    let first_run = runs.iter().find(|r| r["run_id"] == "first").unwrap();
    assert_eq!(
        (
            first_run["state"].as_str(),
            first_run["objects_done"].as_u64()
        ),
        (Some("finished_with_rejects"), Some(1000))
    );
    assert_eq!(
        runs.iter().find(|r| r["run_id"] == "killed").unwrap()["state"],
        "running",
        "a killed run stays as it was last seen"
    );
    Ok(())
}

fn tempdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
