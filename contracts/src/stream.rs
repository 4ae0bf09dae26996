//! The JetStream stream of a pipeline, and the processors' durable consumer on it, derived
//! from the pipeline spec.

use async_nats::jetstream::{self, consumer, stream};
use tally_crds::StreamStorage;

use crate::{RuntimeConfig, naming};

/// The stream as the pipeline spec declares it.
pub fn stream_config(config: &RuntimeConfig) -> stream::Config {
    let spec = &config.pipeline.spec.nats.stream;
    stream::Config {
        name: config.stream_name(),
        subjects: vec![naming::event_subjects(config.name())],
        storage: match spec.storage {
            StreamStorage::File => stream::StorageType::File,
            StreamStorage::Memory => stream::StorageType::Memory,
        },
        num_replicas: spec.replicas.into(),
        max_age: config.timings.stream_max_age,
        duplicate_window: config.timings.duplicate_window,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Creates the stream when missing and brings an existing one to the declared settings.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &RuntimeConfig,
) -> Result<stream::Stream, async_nats::Error> {
    let wanted = stream_config(config);
    js.create_or_update_stream(wanted.clone()).await?;
    Ok(js.get_stream(&wanted.name).await?)
}

/// The stream that keeps the pipeline's dead letters (`TALLY_<PIPELINE>_DLQ` on
/// `tally.<pipeline>.dlq.>`), with the events stream's storage, replicas, age limit and
/// duplicate window. The processor creates it when it writes its first dead letter (see
/// [`ensure_dead_letter_stream`]), so a pipeline that never had one has no extra stream.
pub fn dead_letter_stream_config(config: &RuntimeConfig) -> stream::Config {
    let events = stream_config(config);
    stream::Config {
        name: naming::dead_letter_stream_name(config.name()),
        subjects: vec![naming::dead_letter_subjects(config.name())],
        description: Some(format!(
            "Tally: messages of {} the processor could not store",
            events.name
        )),
        ..events
    }
}

/// Creates the dead-letter stream when missing and brings an existing one to the declared
/// settings.
pub async fn ensure_dead_letter_stream(
    js: &jetstream::Context,
    config: &RuntimeConfig,
) -> Result<(), async_nats::Error> {
    js.create_or_update_stream(dead_letter_stream_config(config))
        .await?;
    Ok(())
}

/// The pipeline's queue as JetStream sees it: what the processors have yet to take, what
/// they hold, what failed, and how far behind they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events in the stream the processors have not been given yet (the consumer's pending).
    pub waiting: u64,
    /// Events given to a processor and not yet acknowledged (being written).
    pub in_flight: u64,
    /// Deliveries beyond the first, of the events in flight.
    pub redelivered: u64,
    /// Messages in the dead-letter stream.
    pub dead_lettered: u64,
    /// Messages the events stream holds (until `spec.nats.stream.maxAge`), stored or not.
    pub in_stream: u64,
    /// When the oldest waiting event reached the stream (Unix ms); `None` when none waits.
    pub oldest_waiting_ms: Option<i64>,
    /// When the oldest event not yet acknowledged reached the stream (Unix ms): how far the
    /// processors are behind. `None` when they have acknowledged everything.
    pub oldest_unacknowledged_ms: Option<i64>,
}

impl Backlog {
    /// The events not yet stored: waiting and in flight.
    pub fn unstored(&self) -> u64 {
        self.waiting + self.in_flight
    }
}

/// Whether JetStream answered that the stream does not exist.
pub fn is_missing_stream(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// Whether JetStream answered that the stream holds no such message.
pub fn is_missing_message(e: &jetstream::stream::RawMessageError) -> bool {
    e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound
}

/// The [`Backlog`] of `config`'s pipeline. A stream no processor has consumed yet is all
/// waiting; a missing dead-letter stream holds none.
pub async fn backlog(
    js: &jetstream::Context,
    config: &RuntimeConfig,
) -> Result<Backlog, async_nats::Error> {
    let stream = js.get_stream(config.stream_name()).await?;
    let state = stream.get_info().await?.state;
    let mut backlog = Backlog {
        in_stream: state.messages,
        ..Backlog::default()
    };
    let (delivered, acknowledged) = match stream.consumer_info(naming::CONSUMER_NAME).await {
        Ok(info) => {
            backlog.waiting = info.num_pending;
            backlog.in_flight = info.num_ack_pending as u64;
            backlog.redelivered = info.num_redelivered as u64;
            (
                info.delivered.stream_sequence,
                info.ack_floor.stream_sequence,
            )
        }
        Err(e) if e.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
            backlog.waiting = state.messages;
            (0, 0)
        }
        Err(e) => return Err(e.into()),
    };
    // The first message after a sequence, when it is still in the stream.
    let arrived_after = |sequence: u64| {
        let stream = &stream;
        async move {
            let sequence = (sequence + 1).max(state.first_sequence);
            if sequence > state.last_sequence {
                return None;
            }
            let message = stream.get_raw_message(sequence).await.ok()?;
            Some((message.time.unix_timestamp_nanos() / 1_000_000) as i64)
        }
    };
    if backlog.waiting > 0 {
        backlog.oldest_waiting_ms = arrived_after(delivered).await;
    }
    if backlog.unstored() > 0 {
        backlog.oldest_unacknowledged_ms = arrived_after(acknowledged).await;
    }
    backlog.dead_lettered = match js
        .get_stream(naming::dead_letter_stream_name(config.name()))
        .await
    {
        Ok(dlq) => dlq.get_info().await?.state.messages,
        Err(e) if is_missing_stream(&e) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(backlog)
}

/// The headers of a dead letter. Its payload is the original message's payload, unchanged.
pub mod dead_letter {
    /// Why the message could not be stored, in words (one line, at most 1024 bytes).
    pub const REASON: &str = "Tally-Dead-Letter-Reason";
    /// The kind of failure, one of [`NOT_AN_EVENT`], [`INVALID_EVENT`], [`REJECTED`].
    pub const KIND: &str = "Tally-Dead-Letter-Kind";
    /// The subject the message was published on.
    pub const ORIGINAL_SUBJECT: &str = "Tally-Original-Subject";
    /// The stream that held it.
    pub const ORIGINAL_STREAM: &str = "Tally-Original-Stream";
    /// Its sequence number in that stream.
    pub const ORIGINAL_SEQUENCE: &str = "Tally-Original-Sequence";
    /// How many times JetStream had delivered it when it was dead-lettered.
    pub const DELIVERIES: &str = "Tally-Deliveries";
    /// The `event_id` of the envelope, when the payload is one.
    pub const EVENT_ID: &str = "Tally-Event-Id";

    /// The payload is not a Tally event envelope (not JSON, or fields missing or mistyped).
    pub const NOT_AN_EVENT: &str = "not_an_event";
    /// The envelope decodes but holds a value no table can store (a timestamp outside the
    /// range of ClickHouse's `DateTime`).
    pub const INVALID_EVENT: &str = "invalid_event";
    /// ClickHouse refused to insert the event (a data error, such as a violated constraint).
    pub const REJECTED: &str = "rejected_by_clickhouse";
}

/// The NATS servers of a `spec.nats.url`: one URL or a comma-separated list of them
/// (`nats://a:4222,nats://b:4222`). `async_nats` reads a single string as one URL, so a list
/// must be split before connecting.
pub fn nats_servers(url: &str) -> std::io::Result<Vec<async_nats::ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::parse::<async_nats::ServerAddr>)
        .collect::<std::io::Result<Vec<_>>>()?;
    if servers.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no NATS server URL in {url:?}"),
        ));
    }
    Ok(servers)
}

/// The durable pull consumer shared by every processor replica of the pipeline.
pub fn consumer_config(config: &RuntimeConfig) -> consumer::pull::Config {
    let spec = &config.pipeline.spec.processor;
    consumer::pull::Config {
        durable_name: Some(naming::CONSUMER_NAME.to_owned()),
        description: Some("Tally processors: JetStream to ClickHouse".to_owned()),
        filter_subject: naming::event_subjects(config.name()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.timings.ack_wait,
        // JetStream itself never gives up on a message: a message it stops delivering would
        // sit in the stream, neither stored nor recorded anywhere. The processor applies
        // `spec.processor.maxDeliver` instead, to messages that fail for a reason of their own
        // (not an envelope, refused by ClickHouse), and dead-letters them to
        // `TALLY_<PIPELINE>_DLQ` (see [`dead_letter_stream_config`]).
        max_deliver: -1,
        // Room for a full batch being written plus the next one being fetched, per replica.
        max_ack_pending: i64::from(spec.batch_max_rows).saturating_mul(4).max(1024),
        max_batch: i64::from(spec.batch_max_rows),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RuntimeConfig {
        RuntimeConfig::parse(
            "test",
            "apiVersion: tally.dev/v1alpha1\nkind: AnalyticsPipeline\nmetadata: {name: web}\n\
             spec: {nats: {stream: {replicas: 3, storage: Memory}}}\n",
        )
        .unwrap()
    }

    #[test]
    fn a_comma_separated_url_is_a_list_of_servers() {
        let one = nats_servers("nats://127.0.0.1:4222").unwrap();
        assert_eq!(one.len(), 1);
        let three = nats_servers("nats://10.0.0.1:4222, nats://10.0.0.2:4223,10.0.0.3").unwrap();
        let ports: Vec<u16> = three.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4223, 4222]);
        assert!(nats_servers(" , ").is_err());
        assert!(nats_servers("nats://a:1,nats://b:notaport").is_err());
        // What the list would be to async_nats unsplit: one malformed URL.
        assert!(
            "nats://a:1,nats://b:2"
                .parse::<async_nats::ServerAddr>()
                .is_err()
        );
    }

    #[test]
    fn the_dead_letter_stream_mirrors_the_events_stream_on_its_own_subjects() {
        let config = config();
        let events = stream_config(&config);
        let dlq = dead_letter_stream_config(&config);
        assert_eq!(dlq.name, "TALLY_WEB_DLQ");
        assert_eq!(dlq.subjects, ["tally.web.dlq.>"]);
        assert_eq!(
            (
                dlq.num_replicas,
                dlq.storage,
                dlq.max_age,
                dlq.duplicate_window
            ),
            (
                3,
                stream::StorageType::Memory,
                events.max_age,
                events.duplicate_window
            )
        );
        assert_eq!(events.subjects, ["tally.web.events.>"]);
    }

    #[test]
    fn jetstream_never_abandons_a_message_on_its_own() {
        assert_eq!(consumer_config(&config()).max_deliver, -1);
    }
}
