//! Test builders: the pipeline and site objects the tests start from, the API server's
//! answers, and scripted API-server scenarios for reconcile tests (a mock `kube::Client`
//! whose every request is checked against the next expected step and answered by the
//! script).

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use tally_crds::{AnalyticsPipeline, AnalyticsSite, AnalyticsSiteSpec, PipelineRef};

use crate::context::{Context, Metrics, NatsPool};
use crate::render::Images;

/// An assertion on a request's JSON body.
pub type BodyCheck = Box<dyn Fn(&Value) + Send>;

/// One expected request and the answer to give.
pub struct Step {
    pub method: Method,
    /// The request path must end with this (query strings are ignored).
    pub path: &'static str,
    /// Checks on the request body, if any.
    pub check: Option<BodyCheck>,
    pub status: StatusCode,
    pub answer: Value,
}

impl Step {
    pub fn new(method: Method, path: &'static str, status: StatusCode, answer: Value) -> Self {
        Self {
            method,
            path,
            check: None,
            status,
            answer,
        }
    }

    pub fn checking(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }
}

pub fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// A context whose client talks to the script, and the task that plays the script. The task
/// fails the test on any unexpected request, and on steps left unplayed.
pub fn scripted(steps: Vec<Step>) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(Context {
        backoff: crate::context::Backoff::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "tally-operator".into(),
                instance: Some("test".into()),
            },
        ),
        client,
        metrics: Arc::new(Metrics::default()),
        nats: NatsPool::default(),
        images: Images {
            collector: "tally/collector:test".into(),
            processor: "tally/processor:test".into(),
            query: "tally/query:test".into(),
        },
    });
    (ctx, tokio::spawn(play(handle, steps)))
}

/// Waits for the script of [`scripted`] to finish (5 s at most), failing the test with
/// the script's own failure.
pub async fn played(script: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(std::time::Duration::from_secs(5), script)
        .await
        .expect("the script finished within 5 s")
        .expect("the script's steps all played");
}

async fn play(mut handle: Handle<Request<Body>, Response<Body>>, steps: Vec<Step>) {
    for (i, step) in steps.into_iter().enumerate() {
        let (request, send) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "step {i}: expected {} {}, but no request came",
                step.method, step.path
            )
        });
        let path = request.uri().path().to_owned();
        assert_eq!(
            (request.method(), path.ends_with(step.path)),
            (&step.method, true),
            "step {i}: expected {} …{}, got {} {path}",
            step.method,
            step.path,
            request.method()
        );
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        if let Some(check) = &step.check {
            let value: Value = serde_json::from_slice(&body).expect("a JSON request body");
            check(&value);
        }
        let bytes = serde_json::to_vec(&step.answer).expect("JSON");
        send.send_response(
            Response::builder()
                .status(step.status)
                .body(Body::from(bytes))
                .expect("a response"),
        );
    }
}

/// A pipeline `web` in `namespace` with the spec's defaults, a uid and generation 2.
pub fn pipeline(namespace: &str) -> AnalyticsPipeline {
    let mut p = AnalyticsPipeline::new("web", serde_json::from_str("{}").expect("defaults"));
    p.metadata.namespace = Some(namespace.into());
    p.metadata.uid = Some("pipeline-uid".into());
    p.metadata.generation = Some(2);
    p
}

/// A site `name` of pipeline `web` in `namespace`, with `site_id`, a uid and generation 4.
pub fn site(name: &str, site_id: &str, namespace: &str) -> AnalyticsSite {
    let mut s = AnalyticsSite::new(
        name,
        AnalyticsSiteSpec {
            pipeline_ref: PipelineRef { name: "web".into() },
            site_id: site_id.into(),
            domains: vec!["example.com".into()],
            api_keys: vec![],
            browser_ingest: true,
            rate_limit: None,
            privacy: Default::default(),
            bots: Default::default(),
            time_zone: None,
            goals: Vec::new(),
            experiments: Vec::new(),
        },
    );
    s.metadata.namespace = Some(namespace.into());
    s.metadata.uid = Some(format!("uid-{name}"));
    s.metadata.generation = Some(4);
    s
}

/// The API server's answer to a list of `kind` (e.g. `AnalyticsSiteList`).
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": tally_crds::API_VERSION, "kind": kind, "metadata": {}, "items": items})
}

/// The API server's answer to a Deployment apply, reporting `available`.
pub fn deployment_answer(name: &str, available: bool) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {}},
        "status": {"conditions": [{"type": "Available", "status": if available { "True" } else { "False" }, "message": "from the test"}]},
    })
}

/// The API server's answer to a recorded Event.
pub fn event_answer() -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "default"},
        "eventTime": "2026-01-01T00:00:00.000000Z",
    })
}
