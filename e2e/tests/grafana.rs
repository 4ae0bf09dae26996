//! The chart's Grafana dashboards (charts/tally/dashboards/*.json): each is read strictly
//! into the dashboard model of Grafana's foundation SDK (`e2e/scripts/check-dashboards.sh`;
//! Grafana itself cannot run here), a broken copy is refused naming the field, the chart
//! ships them in a ConfigMap for Grafana's sidecar only when asked, and every query of
//! every panel and variable runs on a real ClickHouse holding a pipeline's schema and
//! answers rows.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use tally_e2e::chart::{Helm, chart_dir};
use tally_e2e::cluster::repo_root;
use tally_e2e::{DATABASE, Options, Stack, clickhouse_time};

fn dashboards() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("dashboards"))?
        .map(|e| Ok(e?.path()))
        .collect::<anyhow::Result<_>>()?;
    files.retain(|f| f.extension().is_some_and(|e| e == "json"));
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no dashboards in charts/tally/dashboards/"
    );
    Ok(files)
}

fn check(files: &[PathBuf]) -> anyhow::Result<std::process::Output> {
    Ok(
        Command::new(repo_root().join("e2e/scripts/check-dashboards.sh"))
            .args(files)
            .output()?,
    )
}

#[test]
fn the_dashboards_keep_grafanas_dashboard_model() -> anyhow::Result<()> {
    let files = dashboards()?;
    let out = check(&files)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(": valid").count(), files.len(), "{stdout}");

    // The check refuses what Grafana's model does not have.
    let mut broken: Value = serde_json::from_slice(&std::fs::read(&files[0])?)?;
    broken["panels"][0]["options"]["colour"] = json!("red");
    let file = std::env::temp_dir().join(format!(
        "tally-broken-dashboard-{}.json",
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_vec(&broken)?)?;
    let out = check(std::slice::from_ref(&file))?;
    std::fs::remove_file(&file)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("panels[0].options") && stderr.contains("colour"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_chart_ships_them_for_grafanas_sidecar_only_when_asked() -> anyhow::Result<()> {
    let helm = Helm::new("helm")?;
    let is_dashboards = |d: &serde_yaml::Value| {
        d["kind"] == "ConfigMap"
            && d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-grafana-dashboards"))
    };
    assert!(
        !helm.render("defaults")?.iter().any(is_dashboards),
        "off by default"
    );
    let docs = helm.render("all-on")?;
    let map = docs
        .iter()
        .find(|d| is_dashboards(d))
        .expect("the ConfigMap of dashboards");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Tally");
    for file in dashboards()? {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let shipped = map["data"][name.as_str()].as_str().unwrap_or_default();
        let kept: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        assert_eq!(
            serde_json::from_str::<Value>(shipped)?,
            kept,
            "{name} as shipped"
        );
    }
    Ok(())
}

/// A dashboard query with the ClickHouse data source's macros and the variables filled in
/// as Grafana would for the last day of site `shop`.
fn as_grafana_sends(sql: &str) -> String {
    let mut sql = sql
        .replace("${database}", DATABASE)
        .replace("${site}", "shop");
    while let Some(at) = sql.find("$__timeFilter(") {
        let rest = &sql[at + "$__timeFilter(".len()..];
        let end = rest.find(')').expect("a closed macro");
        let column = rest[..end].to_owned();
        sql = format!(
            "{}{column} >= now() - INTERVAL 1 DAY AND {column} <= now() + INTERVAL 1 DAY{}",
            &sql[..at],
            &rest[end + 1..]
        );
    }
    sql
}

#[tokio::test]
async fn every_dashboard_query_runs_on_a_pipelines_schema() -> anyhow::Result<()> {
    let stack = Stack::start(Options::default()).await?;
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let rows: Vec<Value> = (0..20)
        .map(|i| {
            let ts = clickhouse_time(now_ms - i * 60_000);
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "site_id": "shop",
                "event_type": if i % 3 == 0 { "purchase" } else { "page_view" }, "timestamp": ts, "received_at": ts,
                "path": format!("/p{}", i % 4), "visitor_id": format!("v{}", i % 7), "session_id": format!("s{i}")})
        })
        .collect();
    stack.insert_events(&rows, rows.len()).await?;
    let mut asked = 0;
    for file in dashboards()? {
        let board: Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let mut queries: Vec<(String, String)> = Vec::new();
        for panel in board["panels"].as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                queries.push((
                    panel["title"].as_str().unwrap_or_default().to_owned(),
                    target["rawSql"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for variable in board["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] == "query" {
                queries.push((
                    format!("variable {}", variable["name"]),
                    variable["query"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for (what, sql) in queries {
            let answer = stack
                .sql(&format!("{} FORMAT JSONCompact", as_grafana_sends(&sql)))
                .await
                .map_err(|e| anyhow::anyhow!("{}: {what}: {e:#}", file.display()))?;
            let answer: Value = serde_json::from_str(&answer)?;
            assert!(
                answer["rows"].as_u64().unwrap_or(0) > 0,
                "{}: {what} answered no rows: {answer}",
                file.display()
            );
            asked += 1;
        }
    }
    assert!(asked >= 10, "{asked} queries");
    Ok(())
}
