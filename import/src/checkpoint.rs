//! What survives a crash: per object, a checkpoint in the pipeline's JetStream key-value
//! bucket `TALLY_<PIPELINE>_IMPORTS` (the object's ETag, the records done, whether it is
//! finished), and per run its status in `TALLY_<PIPELINE>_IMPORT_RUNS`, kept after it ends
//! for `--list` and `--status`.

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tally_contracts::{RuntimeConfig, naming};
use uuid::Uuid;

/// How far an object's import went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub object: String,
    pub etag: String,
    /// Records before this position are published (and acknowledged) or rejected.
    pub next_position: u64,
    pub finished: bool,
    pub events: u64,
    pub rejects: u64,
}

/// A run's status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub run_id: String,
    /// `running`, `finished`, `finished_with_rejects` or `failed` (the error in `error`).
    pub state: String,
    pub started_at: String,
    pub updated_at: String,
    pub sources: Vec<String>,
    pub site_id: Option<String>,
    pub objects_total: u64,
    pub objects_done: u64,
    /// Objects skipped because an earlier run finished them with the same ETag.
    pub objects_skipped: u64,
    pub objects_unreadable: u64,
    pub records: u64,
    pub events: u64,
    pub rejects: u64,
    /// Records older than the raw events' retention: skipped, or sent for the rollups only.
    pub outside_retention: u64,
    pub events_per_second: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Run {
    /// The rate so far and the time of this look, `started` being when publishing began.
    pub fn measure(&mut self, started: std::time::Instant) {
        self.events_per_second = self.events as f64 / started.elapsed().as_secs_f64().max(0.001);
        self.updated_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
    }
}

/// The two buckets of a pipeline.
pub struct Store {
    checkpoints: kv::Store,
    runs: kv::Store,
}

async fn bucket(
    js: &jetstream::Context,
    name: String,
    what: &str,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = js.get_key_value(&name).await {
        return Ok(store);
    }
    js.create_key_value(kv::Config {
        bucket: name.clone(),
        description: what.into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the key-value bucket {name}: {e}"))
}

/// The JSON value at `key` (none when absent or unreadable: a fresh start then).
async fn read<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> anyhow::Result<Option<T>> {
    Ok(store
        .get(key)
        .await?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

/// A key for an object (bucket keys allow few characters: the object's name hashed).
fn key_of(object: &str) -> String {
    format!(
        "object.{}",
        Uuid::new_v5(&Uuid::NAMESPACE_URL, object.as_bytes()).simple()
    )
}

impl Store {
    pub async fn open(js: &jetstream::Context, config: &RuntimeConfig) -> anyhow::Result<Self> {
        let replicas = config.pipeline.spec.nats.stream.replicas as usize;
        Ok(Self {
            checkpoints: bucket(
                js,
                naming::import_checkpoint_bucket(config.name()),
                "tally-import: how far each object's import went",
                replicas,
            )
            .await?,
            runs: bucket(
                js,
                naming::import_run_bucket(config.name()),
                "tally-import: the status of each run",
                replicas,
            )
            .await?,
        })
    }

    pub async fn checkpoint(&self, object: &str) -> anyhow::Result<Option<Checkpoint>> {
        read(&self.checkpoints, &key_of(object)).await
    }

    pub async fn save(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        self.checkpoints
            .put(
                key_of(&checkpoint.object),
                serde_json::to_vec(checkpoint)?.into(),
            )
            .await?;
        Ok(())
    }

    pub async fn save_run(&self, run: &Run) -> anyhow::Result<()> {
        self.runs
            .put(&run.run_id, serde_json::to_vec(run)?.into())
            .await?;
        Ok(())
    }

    pub async fn run(&self, run_id: &str) -> anyhow::Result<Option<Run>> {
        read(&self.runs, run_id).await
    }

    /// Every run, oldest first.
    pub async fn runs(&self) -> anyhow::Result<Vec<Run>> {
        let keys: Vec<String> = self.runs.keys().await?.try_collect().await?;
        let mut runs = Vec::new();
        for key in keys {
            if let Some(run) = self.run(&key).await? {
                runs.push(run);
            }
        }
        runs.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        Ok(runs)
    }
}
