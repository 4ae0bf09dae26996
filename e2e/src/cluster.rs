//! A real Kubernetes control plane for a test: kube-apiserver, etcd, controller-manager,
//! scheduler and a kwok fake node, started by `e2e/scripts/k8s-up.sh` on loopback and torn
//! down by `k8s-down.sh` when dropped. `kubectl` drives it exactly as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, bail};

fn scripts() -> PathBuf {
    e2e_dir().join("scripts")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    e2e_dir().join("..")
}

/// This crate's directory, read at run time when cargo provides it, so a test binary built
/// from another checkout that shares the target directory uses this checkout's scripts.
fn e2e_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
}

impl Cluster {
    /// Brings a cluster up in `dir` (which must not exist yet).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        let out = Command::new(scripts().join("k8s-up.sh"))
            .arg(dir)
            .output()
            .context("cannot run e2e/scripts/k8s-up.sh")?;
        if !out.status.success() {
            bail!(
                "k8s-up.sh failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = std::fs::read_to_string(dir.join("k8s.env"))?;
        let var = |name: &str| -> anyhow::Result<PathBuf> {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(PathBuf::from)
                .with_context(|| format!("{name} missing from k8s.env"))
        };
        Ok(Self {
            dir: dir.to_owned(),
            kubeconfig: var("KUBECONFIG")?,
            kubectl: var("KUBECTL")?,
            helm: var("HELM")?,
        })
    }

    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        use std::io::Write;
        let mut child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(input.as_bytes())?;
        }
        drop(child.stdin.take());
        Ok(child.wait_with_output()?)
    }

    /// `kubectl ARGS`; fails with kubectl's own message unless it succeeds.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// `kubectl ARGS` with `stdin` as standard input (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.run(&self.kubectl, args, stdin)?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `kubectl ARGS` that is expected to fail; returns its error text.
    pub fn kubectl_fails(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.run(&self.kubectl, args, stdin)?;
        if out.status.success() {
            bail!(
                "kubectl {} succeeded but should have failed",
                args.join(" ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }

    /// `kubectl patch RESOURCE --type merge -p PATCH`.
    pub fn merge_patch(&self, resource: &str, patch: &str) -> anyhow::Result<String> {
        self.kubectl(&["patch", resource, "--type", "merge", "-p", patch])
    }

    /// A merge patch that the API server must refuse; returns its error text.
    pub fn merge_patch_refused(&self, resource: &str, patch: &str) -> anyhow::Result<String> {
        self.kubectl_fails(&["patch", resource, "--type", "merge", "-p", patch], None)
    }

    /// `kubectl ARGS` whose exit code is part of the answer (e.g. `auth can-i` says `no` with
    /// status 1): returns standard output either way.
    pub fn kubectl_fails_or_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(&self.kubectl, args, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `helm ARGS`.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(&self.helm, args, None)?;
        if !out.status.success() {
            bail!(
                "helm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `kubectl wait --for=condition=TYPE` on `resource` (what users run to wait for Ready).
    pub fn wait_condition(
        &self,
        resource: &str,
        condition: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.kubectl(&[
            "wait",
            &format!("--for=condition={condition}"),
            resource,
            &format!("--timeout={}s", timeout.as_secs()),
        ])
        .map(|_| ())
    }

    /// Polls a JSONPath of `resource` until it equals `expected`.
    pub fn wait_jsonpath(
        &self,
        resource: &str,
        path: &str,
        expected: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(value) = self.kubectl(&["get", resource, "-o", &format!("jsonpath={path}")]) {
                if value == expected {
                    return Ok(());
                }
                last = value;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("{resource} {path} stayed {last:?}, expected {expected:?}")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("k8s-down.sh"))
            .arg(&self.dir)
            .output();
    }
}
