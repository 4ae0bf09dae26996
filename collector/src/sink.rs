//! Where accepted events go. [`JetStreamSink`] publishes to the pipeline's stream with
//! asynchronous publishes whose acknowledgements are awaited together, so a batch costs one
//! round trip, not one per event; the handler only knows the [`EventSink`] trait.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use futures::future::{BoxFuture, join_all};
use tally_contracts::{Event, RuntimeConfig, naming, stream};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

/// The outcome of one stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stream already held this event id (within its duplicate window).
    pub duplicate: bool,
}

/// A destination for validated events.
pub trait EventSink: Send + Sync + 'static {
    /// Stores `events`, answering for each (in order) whether it is durably stored. An event
    /// whose result is `Err` was not stored and may be retried.
    fn store<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, String>>>;

    /// `Ok` when events can be stored now, else why not.
    fn ready(&self) -> Result<(), String>;
}

/// Publishes events to the pipeline's JetStream stream.
pub struct JetStreamSink {
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: HashMap<String, async_nats::Subject>,
    /// The pipeline, for the subject of a site added by a reload after the start.
    pipeline: String,
    stream_ready: Arc<AtomicBool>,
    /// The JetStream publish window (`maxInFlightPublishes`). A request takes the slots of
    /// all the events it is about to send at once, before sending any (see `store`).
    window: Arc<Semaphore>,
    window_size: usize,
    publish_timeout: Duration,
}

impl JetStreamSink {
    /// Connects to NATS (retrying in the background while it is unreachable) and makes sure
    /// the pipeline's stream exists.
    pub async fn connect(config: &RuntimeConfig) -> Result<Self, async_nats::Error> {
        let collector = &config.pipeline.spec.collector;
        let window_size = (collector.max_in_flight_publishes as usize).max(1);
        let client = config
            .credentials
            .nats
            .connect_options()?
            .name("tally-collector")
            .retry_on_initial_connect()
            .connect(
                stream::nats_servers(&config.pipeline.spec.nats.url)
                    .map_err(|e| format!("spec.nats.url: {e}"))?,
            )
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.timings.publish_timeout)
            .max_ack_inflight(window_size)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let subjects = config
            .sites
            .iter()
            .map(|s| {
                let id = s.spec.site_id.clone();
                let subject = config.event_subject(&id).into();
                (id, subject)
            })
            .collect();
        let stream_ready = Arc::new(AtomicBool::new(false));
        tokio::spawn(keep_stream(
            js.clone(),
            config.clone(),
            stream_ready.clone(),
        ));
        Ok(Self {
            client,
            js,
            subjects,
            pipeline: config.name().to_owned(),
            stream_ready,
            window: Arc::new(Semaphore::new(window_size)),
            window_size,
            publish_timeout: config.timings.publish_timeout,
        })
    }

    /// Waits until every published message has been handed to the server.
    pub async fn flush(&self) {
        if let Err(e) = self.client.flush().await {
            tracing::warn!(error = %e, "flushing NATS on shutdown failed");
        }
    }
}

impl JetStreamSink {
    /// The JetStream context the sink publishes with (the salt bucket uses it too).
    pub fn jetstream(&self) -> jetstream::Context {
        self.js.clone()
    }

    /// Sends one event, with `trace` (the publish span's W3C trace context, when tracing
    /// is on) among its headers; the returned future is its acknowledgement.
    async fn send(
        &self,
        event: &Event,
        trace: Option<&HeaderMap>,
    ) -> Result<PublishAckFuture, String> {
        let subject = match self.subjects.get(&event.site_id) {
            Some(subject) => subject.clone(),
            None => naming::event_subject(&self.pipeline, &event.site_id).into(),
        };
        let payload = encode(event).map_err(|e| format!("cannot encode event: {e}"))?;
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let mut publish = PublishMessage::build().payload(payload.into());
        if let Some(trace) = trace {
            publish = publish.headers(trace.clone());
        }
        let publish = publish.message_id(&*event.event_id.hyphenated().encode_lower(&mut id));
        self.js
            .send_publish(subject, publish)
            .await
            .map_err(|e| format!("JetStream publish failed: {e}"))
    }
}

impl JetStreamSink {
    /// Publishes the events of one window's worth at once and awaits their acknowledgements.
    async fn publish_chunk(&self, chunk: &[Event]) -> Vec<Result<Stored, String>> {
        let slots = chunk.len() as u32;
        let Ok(Ok(permits)) = tokio::time::timeout(
            self.publish_timeout,
            self.window.clone().acquire_many_owned(slots),
        )
        .await
        else {
            return chunk
                .iter()
                .map(|_| Err("the JetStream publish window stayed full; retry".to_owned()))
                .collect();
        };
        let trace = tally_runtime::propagation::trace_headers(&tracing::Span::current());
        let mut pending = Vec::with_capacity(chunk.len());
        for event in chunk {
            pending.push(self.send(event, trace.as_ref()).await);
        }
        let results = join_all(pending.into_iter().map(|sent| async move {
            let ack = sent?
                .await
                .map_err(|e| format!("JetStream did not acknowledge the event: {e}"))?;
            Ok(Stored {
                duplicate: ack.duplicate,
            })
        }))
        .await;
        drop(permits);
        results
    }
}

/// Creates the stream when missing, retrying with backoff until NATS answers.
async fn keep_stream(js: jetstream::Context, config: RuntimeConfig, ready: Arc<AtomicBool>) {
    tally_runtime::retry("ensure the JetStream stream", || {
        stream::ensure_stream(&js, &config)
    })
    .await;
    tracing::info!(stream = %config.stream_name(), "JetStream stream ready");
    ready.store(true, Ordering::Release);
}

impl EventSink for JetStreamSink {
    fn store<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Vec<Result<Stored, String>>> {
        Box::pin(async move {
            if let Err(why) = self.ready() {
                return events.iter().map(|_| Err(why.clone())).collect();
            }
            // A request takes the window slots for all the events it sends at once (a FIFO
            // semaphore: only the first waiter collects slots as they free up, the others
            // hold none), then sends them all and awaits their acknowledgements together, so
            // a batch costs one round trip and one wake-up, not one per event. Taking the
            // slots one publish at a time, as the JetStream context's own window does,
            // deadlocked as soon as concurrent requests together wanted more than the
            // window: each held a part of it while waiting for more, and none got to
            // awaiting its acknowledgements (the benchmark's overload found it).
            let mut results = Vec::with_capacity(events.len());
            for chunk in events.chunks(self.window_size) {
                // One span per round trip; its context travels in every message's headers.
                let span = tracing::info_span!(
                    "publish",
                    otel.kind = "producer",
                    otel.status_code = tracing::field::Empty,
                    messaging.system = "nats",
                    messaging.operation.type = "send",
                    events = chunk.len() as i64,
                    failed = tracing::field::Empty,
                );
                let published = self.publish_chunk(chunk).instrument(span.clone()).await;
                let failed = published.iter().filter(|r| r.is_err()).count();
                span.record("failed", failed as i64);
                if failed > 0 {
                    span.record("otel.status_code", "ERROR");
                }
                results.extend(published);
            }
            results
        })
    }

    fn ready(&self) -> Result<(), String> {
        if self.client.connection_state() != State::Connected {
            return Err("not connected to NATS".into());
        }
        if !self.stream_ready.load(Ordering::Acquire) {
            return Err("the JetStream stream is not ready yet".into());
        }
        Ok(())
    }
}

/// The envelope's JSON, written into a buffer sized for it up front (one allocation instead
/// of the repeated growth of `serde_json::to_vec`).
fn encode(event: &Event) -> serde_json::Result<Vec<u8>> {
    // Field names, the id, the two timestamps and the quotes take under 256 bytes; texts may
    // grow a little when escaped, which the spare room absorbs.
    let texts = event.site_id.len()
        + event.event_type.len()
        + event.path.len()
        + event.url.len()
        + event.referrer.len()
        + event.title.len()
        + event.user_id.len()
        + event.visitor_id.len()
        + event.session_id.len()
        + event.user_agent.len()
        + event.properties.get().len();
    let mut out = Vec::with_capacity(256 + texts + texts / 8);
    serde_json::to_writer(&mut out, event)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_encodes_as_serde_json_does() {
        let event = Event {
            event_id: uuid::Uuid::now_v7(),
            site_id: "shop".into(),
            event_type: "page_view".into(),
            timestamp_ms: 1,
            received_at_ms: 2,
            path: "/a \"b\"".into(),
            url: "https://shop.example.com/a".into(),
            referrer: String::new(),
            title: "caf\u{e9}\n".into(),
            user_id: "u".into(),
            visitor_id: String::new(),
            session_id: String::new(),
            properties: Event::empty_properties(),
            user_agent: String::new(),
            screen_width: 0,
            screen_height: 0,
            bot: false,
        };
        assert_eq!(encode(&event).unwrap(), serde_json::to_vec(&event).unwrap());
    }
}
