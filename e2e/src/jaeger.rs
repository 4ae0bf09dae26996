//! A real trace backend for the tracing tests: Jaeger all-in-one (`TALLY_JAEGER`, built by
//! `e2e/scripts/install-jaeger.sh`) with in-memory storage, receiving OTLP and answering its
//! HTTP query API, every listener on a free 127.0.0.1 port. [`Trace`] reads the query API's
//! answer.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{Process, env_path, eventually, free_port};

/// A running Jaeger; stopped when dropped.
pub struct Jaeger {
    pub otlp_http_port: u16,
    pub otlp_grpc_port: u16,
    pub query_port: u16,
    pub process: Process,
    http: reqwest::Client,
}

impl Jaeger {
    /// Starts Jaeger with its configuration and log in `dir`, and waits until both its OTLP
    /// receiver and its query API answer.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let (otlp_http_port, otlp_grpc_port) = (free_port(), free_port());
        let (query_port, query_grpc_port) = (free_port(), free_port());
        let config = dir.join("jaeger.yaml");
        fs::write(
            &config,
            config_yaml(otlp_http_port, otlp_grpc_port, query_port, query_grpc_port),
        )?;
        let process = Process::spawn(
            "jaeger",
            Command::new(env_path("TALLY_JAEGER")?)
                .arg("--config")
                .arg(&config)
                // Its own telemetry stays home.
                .env("OTEL_SDK_DISABLED", "true"),
            dir.join("jaeger.log"),
        )?;
        let mut jaeger = Self {
            otlp_http_port,
            otlp_grpc_port,
            query_port,
            process,
            http: reqwest::Client::new(),
        };
        let services = jaeger.query_url("/api/services");
        let otlp = format!("127.0.0.1:{otlp_http_port}");
        eventually("Jaeger to answer", Duration::from_secs(60), || {
            let (http, services, otlp) = (&jaeger.http, &services, &otlp);
            async move {
                let query = http
                    .get(services)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                (query && std::net::TcpStream::connect(otlp).is_ok()).then_some(())
            }
        })
        .await?;
        jaeger.process.ensure_running()?;
        Ok(jaeger)
    }

    /// The base URL to give `OTEL_EXPORTER_OTLP_ENDPOINT` (OTLP over HTTP).
    pub fn otlp_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp_http_port)
    }

    /// The environment that makes a Tally binary export its spans here promptly (the batch
    /// span processor exports every 100 ms instead of every 5 s).
    pub fn otel_env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.otlp_endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    fn query_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.query_port)
    }

    /// The traces holding spans of `service` (at most `limit`), as the query API answers
    /// `/api/traces?service=...`.
    pub async fn traces(&self, service: &str, limit: usize) -> anyhow::Result<Vec<Trace>> {
        let url = reqwest::Url::parse_with_params(
            &self.query_url("/api/traces"),
            [
                ("service", service),
                ("limit", &limit.to_string()),
                ("lookback", "1h"),
            ],
        )?;
        let response = self
            .http
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("Jaeger answered {status}: {body}");
        }
        body["data"]
            .as_array()
            .map(|traces| traces.iter().map(Trace::from_json).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// The trace with this id (hex), if Jaeger holds it.
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Option<Trace>> {
        let response = self
            .http
            .get(self.query_url(&format!("/api/traces/{trace_id}")))
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: Value = response.json().await?;
        match body["data"].as_array().and_then(|d| d.first()) {
            Some(trace) => Trace::from_json(trace).map(Some),
            None => Ok(None),
        }
    }
}

/// One trace from Jaeger's query API.
#[derive(Debug, Clone)]
pub struct Trace {
    pub trace_id: String,
    pub spans: Vec<SpanRecord>,
}

/// One span of a [`Trace`]: what the tests look at.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: String,
    pub span_id: String,
    pub operation: String,
    pub service: String,
    /// `CHILD_OF` references: the parent (trace id, span id).
    pub parent: Option<(String, String)>,
    /// `FOLLOWS_FROM` references (OpenTelemetry span links): (trace id, span id).
    pub links: Vec<(String, String)>,
    /// Tags (span attributes), their values as JSON.
    pub tags: HashMap<String, Value>,
}

impl SpanRecord {
    /// A tag's value as an integer (Jaeger gives int64 tags as numbers).
    pub fn int(&self, tag: &str) -> Option<i64> {
        self.tags.get(tag).and_then(Value::as_i64)
    }

    /// A tag's value as text.
    pub fn text(&self, tag: &str) -> Option<&str> {
        self.tags.get(tag).and_then(Value::as_str)
    }
}

impl Trace {
    fn from_json(trace: &Value) -> anyhow::Result<Self> {
        let trace_id = trace["traceID"].as_str().context("trace without traceID")?;
        let processes = &trace["processes"];
        let spans = trace["spans"]
            .as_array()
            .context("trace without spans")?
            .iter()
            .map(|span| {
                let reference = |kind: &str| -> Vec<(String, String)> {
                    span["references"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["refType"] == kind)
                        .map(|r| {
                            (
                                r["traceID"].as_str().unwrap_or_default().to_owned(),
                                r["spanID"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect()
                };
                let process = span["processID"].as_str().unwrap_or_default();
                SpanRecord {
                    trace_id: span["traceID"].as_str().unwrap_or_default().to_owned(),
                    span_id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    operation: span["operationName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    service: processes[process]["serviceName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    parent: reference("CHILD_OF").into_iter().next(),
                    links: reference("FOLLOWS_FROM"),
                    tags: span["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| Some((t["key"].as_str()?.to_owned(), t["value"].clone())))
                        .collect(),
                }
            })
            .collect();
        Ok(Self {
            trace_id: trace_id.to_owned(),
            spans,
        })
    }

    /// The spans of `service` named `operation`.
    pub fn spans_named(&self, service: &str, operation: &str) -> Vec<&SpanRecord> {
        self.spans
            .iter()
            .filter(|s| s.service == service && s.operation == operation)
            .collect()
    }

    /// The one span of `service` named `operation`; fails when there is not exactly one.
    pub fn only(&self, service: &str, operation: &str) -> anyhow::Result<&SpanRecord> {
        let found = self.spans_named(service, operation);
        match found[..] {
            [one] => Ok(one),
            _ => bail!(
                "expected one {service} span {operation:?} in trace {}, found {}: {:?}",
                self.trace_id,
                found.len(),
                self.spans
                    .iter()
                    .map(|s| format!("{}/{}", s.service, s.operation))
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// The spans whose parent is `parent`.
    pub fn children_of<'a>(
        &'a self,
        parent: &'a SpanRecord,
    ) -> impl Iterator<Item = &'a SpanRecord> + 'a {
        self.spans.iter().filter(move |s| {
            s.parent
                .as_ref()
                .is_some_and(|(t, id)| *t == parent.trace_id && *id == parent.span_id)
        })
    }
}

/// Jaeger all-in-one: OTLP in, memory storage, the query API; loopback only, and none of
/// the default fixed ports (no metrics endpoint, no Jaeger/Zipkin receivers).
fn config_yaml(otlp_http: u16, otlp_grpc: u16, query_http: u16, query_grpc: u16) -> String {
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{query_http}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"
    )
}
