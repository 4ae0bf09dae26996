//! The daily salt of `hash` visitor ids. One salt per UTC day lives in the JetStream
//! key-value bucket `TALLY_<PIPELINE>_SALTS`: the first collector to need a day's salt
//! creates it (an atomic create, so replicas racing at midnight agree on one), every other
//! collector reads it, and a restarted collector finds it again. At each day's start the
//! older days' salts are purged, and the bucket's age limit removes any a purge missed, so
//! yesterday's visitor ids cannot be recomputed.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt as _;
use tally_contracts::{RuntimeConfig, naming};
use time::{Date, OffsetDateTime};

/// One day's salt.
#[derive(Clone, PartialEq, Eq)]
pub struct DaySalt {
    key: [u8; 32],
}

impl DaySalt {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        Self { key }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }
}

impl std::fmt::Debug for DaySalt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DaySalt(..)") // never the key
    }
}

/// The salt `hash` mode uses now; `None` until the bucket has answered once.
#[derive(Default)]
pub struct Salts {
    current: ArcSwapOption<DaySalt>,
}

impl Salts {
    /// Makes `salt` the current one.
    pub fn set(&self, salt: DaySalt) {
        self.current.store(Some(Arc::new(salt)));
    }

    pub fn current(&self) -> Option<Arc<DaySalt>> {
        self.current.load_full()
    }
}

fn key_of(day: Date) -> String {
    format!("day-{day}")
}

/// The pipeline's salt bucket: at most one value per key, and nothing older than two days.
pub async fn bucket(js: &jetstream::Context, config: &RuntimeConfig) -> anyhow::Result<kv::Store> {
    let bucket = naming::salt_bucket(config.name());
    if let Ok(store) = js.get_key_value(&bucket).await {
        return Ok(store);
    }
    let stream = &config.pipeline.spec.nats.stream;
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        description: "daily salts of hash visitor ids".into(),
        history: 1,
        max_age: Duration::from_secs(2 * 24 * 3600),
        storage: jetstream::stream::StorageType::File,
        num_replicas: stream.replicas as usize,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("cannot create the key-value bucket {bucket}: {e}"))
}

/// `day`'s salt from the bucket, created if no collector has yet; the other days' salts
/// are purged.
pub async fn salt_of(store: &kv::Store, day: Date) -> anyhow::Result<DaySalt> {
    let key = key_of(day);
    let mut fresh = [0u8; 32];
    getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let salt = match store.create(&key, fresh.to_vec().into()).await {
        Ok(_) => DaySalt::from_bytes(fresh),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let value = store
                .get(&key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("salt {key} vanished"))?;
            let bytes: [u8; 32] = value
                .as_ref()
                .try_into()
                .map_err(|_| anyhow::anyhow!("salt {key} is not 32 bytes"))?;
            DaySalt::from_bytes(bytes)
        }
        Err(e) => return Err(anyhow::anyhow!("cannot store salt {key}: {e}")),
    };
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    for old in keys.into_iter().filter(|k| *k != key) {
        store.purge(&old).await?;
        tracing::info!(salt = %old, "purged an old visitor-id salt");
    }
    Ok(salt)
}

/// Keeps `salts` at the current UTC day's salt: fetches it now, then again at every
/// midnight (UTC); while NATS does not answer, retries every few seconds. While no site of
/// the configuration (`needed`, read again after a reload) uses `hash` ids, the bucket is
/// not touched: a pipeline without them needs no key-value permission on NATS.
pub async fn keep(
    salts: Arc<Salts>,
    js: jetstream::Context,
    config: RuntimeConfig,
    needed: impl Fn() -> bool,
) {
    let mut store = None;
    loop {
        if !needed() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let result = async {
            if store.is_none() {
                store = Some(bucket(&js, &config).await?);
            }
            salt_of(store.as_ref().expect("opened above"), now.date()).await
        }
        .await;
        let wait = match result {
            Ok(salt) => {
                salts.set(salt);
                let midnight = now
                    .date()
                    .next_day()
                    .unwrap_or(now.date())
                    .midnight()
                    .assume_utc();
                (midnight - now)
                    .try_into()
                    .unwrap_or(Duration::from_secs(60))
            }
            Err(error) => {
                tracing::warn!(%error, "the visitor-id salt is not available; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
