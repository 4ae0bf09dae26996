//! What a person sees while an import runs: on a terminal a progress bar (bytes of the
//! objects, with the objects, records, events per second and the time left), otherwise a
//! JSON line every two seconds and one per finished object, on stderr.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::checkpoint::Run;

/// `auto`: a bar on a terminal, JSON lines otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Bar,
    Json,
    None,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    json: bool,
    last: Instant,
}

impl Progress {
    pub fn new(mode: Mode, total_bytes: u64) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = (mode == Mode::Bar || (mode == Mode::Auto && terminal)).then(|| {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes}  {msg}  ETA {eta}")
                    .expect("a valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            json: mode == Mode::Json || (mode == Mode::Auto && !terminal),
            bar,
            last: Instant::now(),
        }
    }

    /// The run so far; `bytes_done` of the objects read.
    pub fn update(&mut self, run: &Run, bytes_done: u64, object_done: Option<&str>) {
        if let Some(bar) = &self.bar {
            bar.set_position(bytes_done);
            bar.set_message(format!(
                "objects {}/{}  records {}  events {}  rejects {}  {:.0} events/s",
                run.objects_done,
                run.objects_total,
                run.records,
                run.events,
                run.rejects,
                run.events_per_second
            ));
        }
        if self.json && (object_done.is_some() || self.last.elapsed() >= Duration::from_secs(2)) {
            self.last = Instant::now();
            let line = json!({
                "progress": {
                    "run_id": run.run_id, "object": object_done, "objects_done": run.objects_done,
                    "objects_total": run.objects_total, "records": run.records, "events": run.events,
                    "rejects": run.rejects, "events_per_second": run.events_per_second,
                }
            });
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    /// A line for the person running the import, above the bar when there is one.
    pub fn say(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.json => eprintln!("{}", json!({ "message": text })),
            None => eprintln!("{text}"),
        }
    }
}
