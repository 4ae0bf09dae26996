//! A real S3 API on loopback for `tally-import`'s tests and bench: moto's server
//! (`moto[server]` from PyPI, installed by install-servers.sh: `TALLY_MOTO_PYTHONPATH`) with
//! one bucket, and uploads through boto3 (moto's own dependency), signed as a real S3
//! client signs them.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use crate::{Process, env_path, eventually, free_port};

/// The access key the server is given (moto takes any).
pub const ACCESS_KEY_ID: &str = "test-access-key";
pub const SECRET_ACCESS_KEY: &str = "test-secret-key";

/// moto's S3 server with a bucket; stopped when dropped.
pub struct S3 {
    pub url: String,
    pub bucket: String,
    _process: Process,
}

impl S3 {
    /// Starts the server on a free loopback port (its log in `dir`) and creates `bucket`.
    pub async fn start(dir: &Path, bucket: &str) -> anyhow::Result<Self> {
        let port = free_port();
        let mut command = std::process::Command::new("python3");
        command
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("PYTHONPATH", env_path("TALLY_MOTO_PYTHONPATH")?);
        let process = Process::spawn("moto", &mut command, dir.join("moto.log"))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("moto's S3 server", Duration::from_secs(60), || async {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await?;
        let created = http.put(format!("{url}/{bucket}")).send().await?;
        anyhow::ensure!(
            created.status().is_success(),
            "creating the bucket {bucket}: {}",
            created.status()
        );
        Ok(Self {
            url,
            bucket: bucket.to_owned(),
            _process: process,
        })
    }

    /// Uploads every file under `dir` (its path below `dir` as the key), then removes `dir`.
    /// Through boto3: moto refuses unsigned overwrites.
    pub async fn upload(&self, dir: &Path) -> anyhow::Result<()> {
        const SCRIPT: &str = "import boto3, os, sys
s3 = boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[4],
                  aws_secret_access_key=sys.argv[5], region_name='us-east-1')
root = sys.argv[3]
for base, _, files in os.walk(root):
    for name in files:
        path = os.path.join(base, name)
        s3.upload_file(path, sys.argv[2], os.path.relpath(path, root))
";
        let output = tokio::process::Command::new("python3")
            .args(["-c", SCRIPT, &self.url, &self.bucket])
            .arg(dir)
            .args([ACCESS_KEY_ID, SECRET_ACCESS_KEY])
            .env("PYTHONPATH", env_path("TALLY_MOTO_PYTHONPATH")?)
            .output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "uploading {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
    }

    /// The environment a client of this server runs with (`AWS_*`).
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT_URL", self.url.clone()),
        ]
    }
}

/// `tally-import` (`binary`) with the resources `config`, the mapping `work/mapping.yaml`,
/// the rejects file `work/rejects.ndjson`, path-style addressing and this server's
/// credentials, its output captured; the caller adds the rest.
pub fn import_command(
    binary: &Path,
    config: &Path,
    work: &Path,
    s3: &S3,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary);
    command
        .arg("--config")
        .arg(config)
        .arg("--mapping")
        .arg(work.join("mapping.yaml"))
        .arg("--rejects")
        .arg(work.join("rejects.ndjson"))
        .arg("--path-style")
        .envs(s3.env())
        .env("HOME", work)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The mapping of the access logs that [`log_line`] writes: one event a line.
pub const LOG_MAPPING: &str = "fields:
  event_type: action
  timestamp: {field: ts, format: epoch_millis}
  user_id: user
  session_id: visit
  path: page
properties:
  object: obj
  line: line
";

/// One line of an access log (NDJSON, newline included), as [`LOG_MAPPING`] reads it.
pub fn log_line(
    ts_ms: i64,
    user: &str,
    visit: &str,
    page: &str,
    action: &str,
    obj: usize,
    line: usize,
) -> String {
    serde_json::json!({"ts": ts_ms, "user": user, "visit": visit, "page": page, "action": action, "obj": obj, "line": line})
        .to_string()
        + "\n"
}

/// `text` gzipped, as a gzipped log object holds it.
pub fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(text.as_bytes()).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

/// Writes `body` at `key` under `dir`, for [`S3::upload`].
pub fn stage(dir: &Path, key: &str, body: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let path = dir.join(key);
    std::fs::create_dir_all(path.parent().context("a parent directory")?)?;
    Ok(std::fs::write(path, body)?)
}
