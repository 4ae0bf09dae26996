//! The `console` phase: the console's first useful paint over the `reads` phase's history
//! (10 million events), in headless Chromium (`e2e/browser/paint.mjs`): each load a first
//! visit (an empty cache) of a site's 30-day overview, signed in. Measured: when the top
//! figures show, and when every panel has loaded, in ms after the navigation began. The
//! baseline in the same run: the top figures' own `/v1/query` request, timed alone.

use std::path::PathBuf;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::client::Request;
use crate::reads::{Query, time_queries};
use crate::target::Target;

#[derive(Debug, Clone, Serialize)]
pub struct Console {
    pub loads: usize,
    pub figures_p50_ms: f64,
    pub figures_max_ms: f64,
    pub complete_p50_ms: f64,
    pub complete_max_ms: f64,
    /// The figures' request alone, as the console sends it.
    pub figures_request: Query,
}

#[derive(Deserialize)]
struct Load {
    figures_ms: f64,
    complete_ms: f64,
}

#[derive(Deserialize)]
struct Report {
    loads: Vec<Load>,
}

fn p50(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub async fn run(target: &Target, sites: &[String], loads: usize) -> anyhow::Result<Console> {
    let env = |name: &str| {
        std::env::var_os(name)
            .with_context(|| format!("{name} is not set (make bench sets it from servers.env)"))
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../e2e/browser/paint.mjs");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .env("NODE_PATH", env("TALLY_PLAYWRIGHT_NODE_PATH")?)
        .env("TALLY_CHROMIUM", env("TALLY_CHROMIUM")?)
        .env("TALLY_CONSOLE_URL", format!("http://{}", target.stats))
        .env("TALLY_CONSOLE_KEY", &target.read_key)
        .env("TALLY_CONSOLE_SITES", sites.join(","))
        .env("TALLY_PAINT_LOADS", loads.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .context("running node e2e/browser/paint.mjs")?;
    anyhow::ensure!(
        output.status.success(),
        "paint.mjs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Report =
        serde_json::from_slice(&output.stdout).context("paint.mjs printed no report")?;
    anyhow::ensure!(!report.loads.is_empty(), "paint.mjs timed no load");
    let figures: Vec<f64> = report.loads.iter().map(|l| l.figures_ms).collect();
    let complete: Vec<f64> = report.loads.iter().map(|l| l.complete_ms).collect();
    let figures_request = time_queries("console's figures request, 30d", target.stats, loads.max(20), sites, 1, |site, _| {
        let body = format!(
            r#"{{"site_id":"{site}","date_range":"30d","metrics":["visitors","visits","pageviews","views_per_visit","bounce_rate","visit_duration"],"include":{{"comparisons":"previous_period"}},"filters":[]}}"#
        );
        Request::read_post(&target.stats_host, "/v1/query", body.as_bytes(), &target.read_key)
    })
    .await?;
    Ok(Console {
        loads: report.loads.len(),
        figures_max_ms: figures.iter().copied().fold(0.0, f64::max),
        figures_p50_ms: p50(figures),
        complete_max_ms: complete.iter().copied().fold(0.0, f64::max),
        complete_p50_ms: p50(complete),
        figures_request,
    })
}
