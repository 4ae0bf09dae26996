//! Scripted API-server scenarios for reconcile tests: a mock `kube::Client` whose every
//! request is checked against the next expected step and answered by the script.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

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
        },
    });
    (ctx, tokio::spawn(play(handle, steps)))
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
