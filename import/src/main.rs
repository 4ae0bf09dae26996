//! The `tally-import` command line. See `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tally_import::{Ending, OutsideRetention, progress};

const EXAMPLES: &str = "\
Examples:
  # The seed conversations of examples/import/ into the local stack (make dev):
  tally-import --config examples --mapping examples/import/conversations.yaml examples/import/logs

  # A year of logs from S3; an S3-compatible server with path-style addressing:
  AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_REGION=eu-west-1 \\
    tally-import --config /etc/tally --mapping map.yaml --site shop s3://logs/2025/
  tally-import --endpoint-url http://127.0.0.1:9000 --path-style … s3://logs/2025/

  # Check a mapping without sending anything; then see the runs:
  tally-import --dry-run --mapping map.yaml --site shop ./sample.ndjson.gz
  tally-import --list
  tally-import --status import-20261207T120000Z

Exit status:
  0  every record was imported (or left outside the retention, as chosen)
  1  the import could not run or stopped (the resources, the mapping, a source, NATS)
  2  the command line is wrong
  3  finished, but some records were rejected or some objects could not be read
     (each is in the rejects file with its object, line and reason)
  4  some records are older than the raw retention and --outside-retention was not given:
     nothing was imported";

/// Imports logs into a Tally pipeline: NDJSON or JSON arrays (gzipped or not), from S3 or
/// local files, mapped into events by a YAML mapping, validated as the collector validates,
/// and published to the pipeline's JetStream stream. Re-running stores nothing twice, and
/// a run stopped half-way resumes where it was.
#[derive(Parser, Debug)]
#[command(name = "tally-import", version, after_help = EXAMPLES)]
struct Cli {
    /// The pipeline's resources: a YAML file or a directory of them, as the services read
    /// (the pipeline, its sites and the Secrets of their keys).
    #[arg(
        long,
        env = "TALLY_CONFIG",
        default_value = "examples",
        value_name = "DIR_OR_FILE"
    )]
    config: PathBuf,
    /// Where the Secrets of the servers' credentials are mounted, `<dir>/<secret>/<key>`
    /// (in a cluster: /etc/tally/secrets, as the pipeline's pods have them).
    #[arg(long, env = "TALLY_SECRETS_DIR", value_name = "DIR")]
    secrets_dir: Option<PathBuf>,
    /// The mapping (YAML) from the source's records to Tally events; see the README's
    /// "Importing logs".
    #[arg(long, value_name = "FILE", required_unless_present_any = ["list", "status"])]
    mapping: Option<PathBuf>,
    /// The site of every event (instead of the mapping's site_id).
    #[arg(long, value_name = "SITE")]
    site: Option<String>,
    /// s3://bucket/prefix (every object under it, or the object of that key), or a local
    /// file or directory (every file in it).
    #[arg(value_name = "SOURCE", required_unless_present_any = ["list", "status"])]
    sources: Vec<String>,
    /// An S3-compatible server's URL (MinIO and the like) [default: AWS_ENDPOINT_URL, else AWS].
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Path-style S3 addressing (https://server/bucket/key), which most S3-compatible servers need.
    #[arg(long)]
    path_style: bool,
    /// Map and validate every record, send nothing, and print the summary.
    #[arg(long)]
    dry_run: bool,
    /// Where refused records and unreadable objects are written, one JSON line each
    /// ({"object", "record", "reason"}); created only when there is one.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "tally-import-rejects.ndjson"
    )]
    rejects: PathBuf,
    /// Records older than the pipeline's raw retention (spec.clickhouse.retentionDays):
    /// `skip` leaves them out; `rollups` sends them, so the rollups (and /v1/stats) count
    /// them while ClickHouse's TTL drops their raw rows at once. Without it, a run that finds
    /// such records says how many and imports nothing (exit 4).
    #[arg(long, value_enum, value_name = "CHOICE")]
    outside_retention: Option<OutsideRetention>,
    /// At most this many published events wait for JetStream's acknowledgement; the import
    /// waits beyond it (and checkpoints after each such chunk).
    #[arg(long, default_value_t = 1000, value_name = "N")]
    max_in_flight: usize,
    /// At most this many events a second, to leave room for live traffic [default: no limit].
    #[arg(long, value_name = "EVENTS")]
    max_rate: Option<f64>,
    /// The run's name, for --status [default: import-<UTC time>].
    #[arg(long, value_name = "ID")]
    run_id: Option<String>,
    /// auto: a progress bar on a terminal, JSON lines on stderr otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    progress: progress::Mode,
    /// List the pipeline's imports (from its JetStream) and exit.
    #[arg(long, conflicts_with_all = ["mapping", "sources", "status"])]
    list: bool,
    /// Show one import's status (objects done/total, records, events, rejects, rate) and exit.
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["mapping", "sources"])]
    status: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list || cli.status.is_some() {
        return match tally_import::runs(
            &cli.config,
            cli.secrets_dir.as_deref(),
            cli.status.as_deref(),
        )
        .await
        {
            Ok(runs) if cli.status.is_some() && runs.is_empty() => {
                eprintln!(
                    "tally-import: no import {:?}",
                    cli.status.unwrap_or_default()
                );
                ExitCode::FAILURE
            }
            Ok(runs) => {
                for run in runs {
                    println!("{}", serde_json::to_string(&run).unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tally-import: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let options = tally_import::Options {
        config: cli.config,
        secrets_dir: cli.secrets_dir,
        mapping: cli.mapping.unwrap_or_default(),
        site: cli.site,
        sources: cli.sources,
        s3: tally_import::source::S3Options {
            endpoint_url: cli.endpoint_url,
            path_style: cli.path_style,
        },
        dry_run: cli.dry_run,
        rejects: cli.rejects,
        outside_retention: cli.outside_retention,
        max_in_flight: cli.max_in_flight.max(1),
        max_rate: cli.max_rate.filter(|r| *r > 0.0),
        run_id: cli.run_id,
        progress: cli.progress,
    };
    match tally_import::import(&options).await {
        Ok((run, ending)) => {
            println!("{}", serde_json::to_string(&run).unwrap_or_default());
            eprintln!(
                "tally-import: {}: {} of {} objects ({} skipped as done, {} unreadable), {} records, {} events, {} rejects, {} outside the retention, {:.0} events/s",
                run.state,
                run.objects_done,
                run.objects_total,
                run.objects_skipped,
                run.objects_unreadable,
                run.records,
                run.events,
                run.rejects,
                run.outside_retention,
                run.events_per_second
            );
            if run.rejects > 0 || run.objects_unreadable > 0 {
                eprintln!(
                    "tally-import: the rejects are in {}",
                    options.rejects.display()
                );
            }
            match ending {
                Ending::Clean => ExitCode::SUCCESS,
                Ending::WithRejects => ExitCode::from(3),
                Ending::RetentionUnchosen => ExitCode::from(4),
            }
        }
        Err(e) => {
            eprintln!("tally-import: {e:#}");
            ExitCode::FAILURE
        }
    }
}
