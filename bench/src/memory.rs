//! Resident memory of processes, from `/proc/<pid>/status`: `VmHWM` (the peak) and
//! `VmRSS` (now), plus a sampler that follows `VmRSS` while load runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A `kB` field of `/proc/<pid>/status`, in MiB.
pub fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())?;
    Some(kb / 1024.0)
}

/// A `kB` field of `/proc/meminfo`, in MiB.
pub fn status_mib_meminfo(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn peak_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmHWM:")
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    status_mib(pid, "VmRSS:")
}

/// Samples a process's `VmRSS` every 100 ms until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: tokio::task::JoinHandle<Vec<(f64, f64)>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = tokio::spawn(async move {
            let start = Instant::now();
            let mut samples = Vec::new();
            // Bounded: at most an hour of samples.
            for _ in 0..36_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Some(mib) = rss_mib(pid) {
                    samples.push((start.elapsed().as_secs_f64(), mib));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        });
        Self { stop, handle }
    }

    /// (seconds since start, RSS MiB) samples.
    pub async fn finish(self) -> Vec<(f64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.await.unwrap_or_default()
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After "(comm)": state is field 3 of the line, utime 14 and stime 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// (busy, total) CPU seconds of the whole machine, from `/proc/stat`.
fn machine_seconds() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / 100.0, total / 100.0))
}

/// CPU used by one process during a measurement, in cores (1.0 = one core busy).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CpuUse {
    pub process: String,
    pub cores: f64,
}

/// Follows the CPU time of the bench's processes, and of the whole machine, over a phase.
pub struct CpuMeter {
    start: Instant,
    processes: Vec<(String, u32, f64)>,
    machine: Option<(f64, f64)>,
}

impl CpuMeter {
    pub fn start(processes: Vec<(String, u32)>) -> Self {
        Self {
            start: Instant::now(),
            processes: processes
                .into_iter()
                .filter_map(|(name, pid)| Some((name, pid, cpu_seconds(pid)?)))
                .collect(),
            machine: machine_seconds(),
        }
    }

    /// Cores used by each process since `start`, then `others` (everything else on the
    /// machine: other engineers' builds and tests) and `idle`.
    pub fn finish(&self) -> Vec<CpuUse> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-3);
        let mut out: Vec<CpuUse> = self
            .processes
            .iter()
            .filter_map(|(name, pid, before)| {
                Some(CpuUse {
                    process: name.clone(),
                    cores: (cpu_seconds(*pid)? - before) / wall,
                })
            })
            .collect();
        if let (Some((busy0, total0)), Some((busy1, total1))) = (self.machine, machine_seconds()) {
            let cores = (total1 - total0) / wall;
            let busy = (busy1 - busy0) / wall;
            let ours: f64 = out.iter().map(|c| c.cores).sum();
            out.push(CpuUse {
                process: "others".into(),
                cores: (busy - ours).max(0.0),
            });
            out.push(CpuUse {
                process: "idle".into(),
                cores: (cores - busy).max(0.0),
            });
        }
        out
    }
}
