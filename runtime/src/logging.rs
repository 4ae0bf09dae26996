//! Structured logging to standard error, and OpenTelemetry tracing when it is configured:
//! [`init_telemetry`] sets up both, once, at start-up.
//!
//! Two layers share the `tracing` subscriber, each with its own filter:
//! - the log layer writes the *events* that `RUST_LOG` lets through (default `info`) as
//!   JSON or text. It is not given spans, so a log line reads the same with tracing on or
//!   off;
//! - the OpenTelemetry layer, present only when [`crate::telemetry`] finds an OTLP endpoint,
//!   turns the spans of Tally's own crates (targets `tally*`, `INFO` and above) into
//!   OpenTelemetry spans; events inside them become span events.
//!
//! With tracing off no layer wants a span, so every `info_span!` of the services is
//! disabled where it is written: no span is built and its fields are never evaluated.

use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::cli::LogFormat;
use crate::telemetry::{Settings, Telemetry};

/// The targets whose spans are exported: Tally's crates (`tally_collector`, ...).
const TRACED_TARGETS: &str = "tally";

/// Starts logging to standard error (the level comes from `RUST_LOG`, default `info`) and,
/// when the OpenTelemetry environment names an OTLP endpoint, tracing with
/// `default_service` as `service.name` unless `OTEL_SERVICE_NAME` says otherwise. Keep the
/// returned [`Telemetry`] until the process exits: dropping it flushes the last spans.
///
/// Fails when a tracing variable is set to something that cannot work (see
/// [`crate::telemetry`]), or when called twice.
pub fn init_telemetry(format: LogFormat, default_service: &str) -> anyhow::Result<Telemetry> {
    let settings = Settings::from_env(default_service)?;
    let registry = tracing_subscriber::registry().with(log_layer(format, std::io::stderr));
    let Some(settings) = settings else {
        registry.try_init()?;
        return Ok(Telemetry::off());
    };
    let (telemetry, tracer) = Telemetry::install(&settings)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_filter(Targets::new().with_target(TRACED_TARGETS, tracing::Level::INFO));
    registry.with(traces).try_init()?;
    tracing::info!(
        endpoint = %settings.traces_endpoint,
        service = settings.service_name.as_deref().unwrap_or("(from OTEL_RESOURCE_ATTRIBUTES)"),
        sampler = ?settings.sampler,
        "exporting traces over OTLP"
    );
    Ok(telemetry)
}

/// The log layer: the events `RUST_LOG` lets through (default `info`), no spans.
fn log_layer<S, W>(format: LogFormat, writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(writer).boxed(),
    }
    .with_filter(filter_fn(|meta| meta.is_event()).and(filter))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Captures what the log layer writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[test]
    fn with_tracing_off_spans_are_disabled_and_logs_unchanged() {
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(log_layer(LogFormat::Json, out.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let mut evaluated = false;
            let span = tracing::info_span!(
                "request",
                field = {
                    evaluated = true;
                    1
                }
            );
            // Nobody wants the span: it is not built, its fields are not evaluated.
            assert!(span.is_disabled());
            assert!(!evaluated);
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            tracing::debug!("filtered out at the default level");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(line["message"], "inside");
        assert_eq!(line["answer"], 42);
        assert!(
            line.get("span").is_none() && line.get("spans").is_none(),
            "{line}"
        );
    }
}
