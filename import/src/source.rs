//! The objects of a SOURCE: `s3://bucket/prefix` (every object under the prefix, or the one
//! object of that key) or a local file or directory (every file in it, recursively), in
//! key order, each with its ETag. S3 is `object_store`'s client, configured the standard
//! way: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
//! `AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL` from the environment, else the profile
//! (`AWS_PROFILE`, default `default`) of `~/.aws/credentials` and `~/.aws/config`
//! (`AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use futures::TryStreamExt as _;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _};

/// How to reach S3.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// An S3-compatible server's URL (MinIO, …); `AWS_ENDPOINT_URL` otherwise.
    pub endpoint_url: Option<String>,
    /// `https://server/bucket/key` rather than `https://bucket.server/key`.
    pub path_style: bool,
}

/// One object to import.
#[derive(Clone)]
pub struct Object {
    /// `s3://bucket/key` or `file:///absolute/path`: what rejects and checkpoints name.
    pub id: String,
    pub etag: String,
    pub size: u64,
    store: Arc<dyn ObjectStore>,
    path: Path,
}

impl Object {
    /// The object's whole content.
    pub async fn bytes(&self) -> anyhow::Result<bytes::Bytes> {
        Ok(self.store.get(&self.path).await?.bytes().await?)
    }

    /// The object's name, for its format (`.gz`).
    pub fn name(&self) -> &str {
        self.path.as_ref()
    }
}

/// Every object of `source`, in key order.
pub async fn objects(source: &str, s3: &S3Options) -> anyhow::Result<Vec<Object>> {
    if let Some(rest) = source.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            bail!("{source}: no bucket (use s3://bucket/prefix)");
        }
        let store: Arc<dyn ObjectStore> = Arc::new(s3_store(bucket, s3)?);
        let prefix = prefix.trim_end_matches('/');
        let mut found = list(
            &store,
            (!prefix.is_empty()).then(|| Path::from(prefix)),
            &|p| format!("s3://{bucket}/{p}"),
        )
        .await
        .with_context(|| format!("listing {source}"))?;
        if found.is_empty() && !prefix.is_empty() {
            // Not a prefix: perhaps the key of one object.
            let path = Path::from(prefix);
            if let Ok(meta) = store.head(&path).await {
                found.push(Object {
                    id: format!("s3://{bucket}/{prefix}"),
                    etag: meta.e_tag.unwrap_or_default(),
                    size: meta.size,
                    store: store.clone(),
                    path,
                });
            }
        }
        return Ok(found);
    }
    let path = PathBuf::from(source.strip_prefix("file://").unwrap_or(source));
    let path = path
        .canonicalize()
        .with_context(|| format!("{source}: no such file or directory"))?;
    let (dir, only) = if path.is_dir() {
        (path.clone(), None)
    } else {
        let parent = path.parent().map(FsPath::to_path_buf).unwrap_or_default();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        (parent, name)
    };
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&dir)?);
    let root = dir.display().to_string();
    let mut found = list(&store, None, &|p| format!("file://{root}/{p}")).await?;
    if let Some(name) = only {
        found.retain(|o| o.path.as_ref() == name);
    }
    Ok(found)
}

async fn list(
    store: &Arc<dyn ObjectStore>,
    prefix: Option<Path>,
    id: &dyn Fn(&str) -> String,
) -> anyhow::Result<Vec<Object>> {
    let mut metas: Vec<_> = store.list(prefix.as_ref()).try_collect().await?;
    metas.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(metas
        .into_iter()
        .map(|meta| Object {
            id: id(meta.location.as_ref()),
            etag: meta.e_tag.unwrap_or_default(),
            size: meta.size,
            store: store.clone(),
            path: meta.location,
        })
        .collect())
}

fn s3_store(bucket: &str, options: &S3Options) -> anyhow::Result<object_store::aws::AmazonS3> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!options.path_style);
    // `from_env` took AWS_ENDPOINT_URL(_S3); plain HTTP is allowed to an http:// endpoint.
    if let Some(endpoint) = &options.endpoint_url {
        builder = builder.with_endpoint(endpoint);
    }
    let endpoint = options
        .endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none()
        && let Some(keys) = profile_values(
            &credentials_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            &profile,
        )
    {
        if let Some(id) = keys.get("aws_access_key_id") {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = keys.get("aws_secret_access_key") {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = keys.get("aws_session_token") {
            builder = builder.with_token(token);
        }
    }
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        let section = if profile == "default" {
            profile.clone()
        } else {
            format!("profile {profile}")
        };
        let region = profile_values(&credentials_file("AWS_CONFIG_FILE", "config"), &section)
            .and_then(|values| values.get("region").cloned());
        builder = builder.with_region(region.unwrap_or_else(|| "us-east-1".into()));
    }
    builder.build().context("configuring S3")
}

fn credentials_file(variable: &str, name: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".aws")
                .join(name)
        })
}

/// The `key = value` lines of `[section]` in an AWS profile file.
fn profile_values(
    file: &FsPath,
    section: &str,
) -> Option<std::collections::HashMap<String, String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let mut values = std::collections::HashMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
        } else if inside && let Some((key, value)) = line.split_once('=') {
            values.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
    }
    (!values.is_empty()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_files_are_read_by_section() {
        let file =
            std::env::temp_dir().join(format!("tally-import-profile-{}", std::process::id()));
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = A\n\n[profile logs]\nregion = eu-west-1\n[other]\nregion=x\n",
        )
        .unwrap();
        assert_eq!(
            profile_values(&file, "default").unwrap()["aws_access_key_id"],
            "A"
        );
        assert_eq!(
            profile_values(&file, "profile logs").unwrap()["region"],
            "eu-west-1"
        );
        assert!(profile_values(&file, "missing").is_none());
        std::fs::remove_file(file).unwrap();
    }
}
