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

/// The durable pull consumer shared by every processor replica of the pipeline.
pub fn consumer_config(config: &RuntimeConfig) -> consumer::pull::Config {
    let spec = &config.pipeline.spec.processor;
    consumer::pull::Config {
        durable_name: Some(naming::CONSUMER_NAME.to_owned()),
        description: Some("Tally processors: JetStream to ClickHouse".to_owned()),
        filter_subject: naming::event_subjects(config.name()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: config.timings.ack_wait,
        max_deliver: spec.max_deliver.into(),
        // Room for a full batch being written plus the next one being fetched, per replica.
        max_ack_pending: i64::from(spec.batch_max_rows).saturating_mul(4).max(1024),
        max_batch: spec.batch_max_rows.try_into().unwrap_or(i64::MAX),
        ..Default::default()
    }
}
