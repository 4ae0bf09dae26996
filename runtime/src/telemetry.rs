//! OpenTelemetry tracing, off unless an OTLP endpoint is configured.
//!
//! [`Settings::from_env`] decides from the standard OpenTelemetry environment variables, and
//! nothing else, whether this process exports traces and how:
//!
//! | variable | meaning here |
//! | --- | --- |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the full URL spans are POSTed to (used as is) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's base URL; `/v1/traces` is appended |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (the default, and the only one this build speaks) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default: the binary's name, e.g. `tally-collector`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | further resource attributes (`key=value,...`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (default `parentbased_always_on`) |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (default) or `none` |
//! | `OTEL_SDK_DISABLED` | `true` turns tracing off whatever else is set |
//!
//! With neither endpoint variable set, tracing is off: no exporter, no OpenTelemetry layer,
//! and the spans the services declare are disabled at their call sites (see
//! [`crate::logging`]), so they cost next to nothing. A value that is set but cannot work (an
//! unknown sampler, a ratio outside 0..=1, `grpc`, an `https://` endpoint, which needs TLS
//! that this build leaves out) stops the process at start-up with a message naming the
//! variable, rather than leaving traces silently missing or sampled otherwise than asked.
//!
//! The exporter's own variables (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`, `..._TIMEOUT`,
//! `..._COMPRESSION`: gzip needs a feature this build leaves out) and the batch span
//! processor's (`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`,
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, ...) are read by the OpenTelemetry SDK itself.
//!
//! Spans reach the exporter through a bounded queue (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048 by
//! default) drained by the SDK's own thread: when the collector of traces is slow or down,
//! spans are dropped, never the events. [`Telemetry`]'s drop flushes what is queued.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};

/// Whether this process installed an exporter ([`enabled`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// True once [`crate::init_telemetry`] installed an OTLP exporter: only then do spans
/// carry OpenTelemetry contexts, and only then does [`crate::propagation`] write trace
/// headers.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// How traces are exported, when they are (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The URL spans are POSTed to (OTLP over HTTP with protobuf bodies).
    pub traces_endpoint: String,
    /// `service.name`, unless `OTEL_RESOURCE_ATTRIBUTES` names the service and
    /// `OTEL_SERVICE_NAME` is unset (then `None`: the SDK takes it from there).
    pub service_name: Option<String>,
    pub sampler: SamplerSetting,
}

/// `OTEL_TRACES_SAMPLER` (with `OTEL_TRACES_SAMPLER_ARG` for the ratio samplers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

/// A tracing variable that is set to something that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub variable: &'static str,
    pub message: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

impl std::error::Error for SettingsError {}

fn invalid(variable: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError {
        variable,
        message: message.into(),
    }
}

impl Settings {
    /// The settings the process environment asks for; `Ok(None)` when tracing is off.
    /// `default_service` is the `service.name` when none is configured.
    pub fn from_env(default_service: &str) -> Result<Option<Self>, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok(), default_service)
    }

    /// [`Self::from_env`] over any source of variables (the unit tests pass a map). An empty
    /// value counts as unset, as the OpenTelemetry specification says.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, SettingsError> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_EXPORTER",
                    format!("{other:?} is not supported: use otlp (the default) or none"),
                ));
            }
        }
        let (variable, traces_endpoint) =
            if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)
            } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
                let url = format!("{}/v1/traces", base.trim_end_matches('/'));
                ("OTEL_EXPORTER_OTLP_ENDPOINT", url)
            } else {
                // Nothing to send spans to: tracing stays off.
                return Ok(None);
            };
        check_endpoint(variable, &traces_endpoint)?;

        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(variable) {
                if protocol != "http/protobuf" {
                    return Err(invalid(
                        variable,
                        format!("{protocol:?} is not supported by this build: use http/protobuf"),
                    ));
                }
                // The signal's own variable wins over the general one.
                break;
            }
        }

        let sampler = parse_sampler(
            var("OTEL_TRACES_SAMPLER").as_deref(),
            var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        let named_in_attributes = var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| {
            attributes
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .any(|(key, value)| key.trim() == "service.name" && !value.trim().is_empty())
        });
        let service_name = match var("OTEL_SERVICE_NAME") {
            Some(name) => Some(name),
            None if named_in_attributes => None,
            None => Some(default_service.to_owned()),
        };
        Ok(Some(Self {
            traces_endpoint,
            service_name,
            sampler,
        }))
    }
}

/// The endpoint must be a plain-HTTP URL with a host: the exporter of this build has no TLS.
fn check_endpoint(variable: &'static str, url: &str) -> Result<(), SettingsError> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(invalid(
            variable,
            format!(
                "{url:?}: this build exports over plain HTTP only (no TLS); send spans to an \
                 OpenTelemetry Collector or agent reachable over http://"
            ),
        ));
    }
    let host = lower
        .strip_prefix("http://")
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default());
    match host {
        Some(host) if !host.is_empty() => Ok(()),
        _ => Err(invalid(
            variable,
            format!(
                "{url:?} is not an http:// URL with a host (for example http://127.0.0.1:4318)"
            ),
        )),
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument, as the OpenTelemetry specification defines them.
/// Unset means `parentbased_always_on`; a ratio sampler without an argument samples
/// everything (ratio 1.0).
pub fn parse_sampler(
    sampler: Option<&str>,
    arg: Option<&str>,
) -> Result<SamplerSetting, SettingsError> {
    let ratio = || -> Result<f64, SettingsError> {
        let Some(arg) = arg else { return Ok(1.0) };
        match arg.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
            _ => Err(invalid(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("{arg:?} is not a sampling ratio between 0 and 1"),
            )),
        }
    };
    Ok(
        match sampler
            .map(str::trim)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("parentbased_always_on") => SamplerSetting::ParentBasedAlwaysOn,
            Some("always_on") => SamplerSetting::AlwaysOn,
            Some("always_off") => SamplerSetting::AlwaysOff,
            Some("traceidratio") => SamplerSetting::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => SamplerSetting::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => SamplerSetting::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "{other:?} is not supported: use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                    ),
                ));
            }
        },
    )
}

impl SamplerSetting {
    fn sampler(self) -> Sampler {
        let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
            Self::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
            Self::ParentBasedTraceIdRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
        }
    }
}

/// The tracer provider of a process that exports traces; flushed and shut down on drop.
/// A process with tracing off holds one too, holding nothing.
#[must_use = "dropping it shuts tracing down: keep it until the process exits"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub(crate) fn off() -> Self {
        Self { provider: None }
    }

    /// Builds the OTLP exporter and the tracer provider for `settings`, and makes them this
    /// process's (OpenTelemetry's global provider and propagator included). Returns the
    /// tracer that the `tracing` layer sends spans to.
    pub(crate) fn install(settings: &Settings) -> anyhow::Result<(Self, Tracer)> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_endpoint.clone())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
        let mut resource = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ));
        if let Some(name) = &settings.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(settings.sampler.sampler())
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("tally");
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        ENABLED.store(true, Ordering::Relaxed);
        Ok((
            Self {
                provider: Some(provider),
            },
            tracer,
        ))
    }

    /// Whether traces are exported.
    pub fn is_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still queued and stops the exporter (also done on drop).
    pub fn shutdown(&mut self) {
        if let Some(provider) = self.provider.take() {
            ENABLED.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown() {
                // Logging still works: the subscriber outlives the provider.
                tracing::warn!(error = %e, "flushing the last spans failed");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<Settings>, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned(), "tally-test")
    }

    fn on(vars: &[(&str, &str)]) -> Settings {
        settings(vars).unwrap().expect("tracing should be on")
    }

    fn error_variable(vars: &[(&str, &str)]) -> &'static str {
        settings(vars).unwrap_err().variable
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(settings(&[]), Ok(None));
        // Everything else set, but nowhere to send spans: still off, and not checked.
        assert_eq!(
            settings(&[
                ("OTEL_SERVICE_NAME", "x"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
            Ok(None)
        );
        // An empty value is unset.
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")]),
            Ok(None)
        );
    }

    #[test]
    fn the_sdk_can_be_disabled_or_the_exporter_set_to_none() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]),
            Ok(None)
        );
        assert!(
            on(&[endpoint, ("OTEL_SDK_DISABLED", "false")])
                .traces_endpoint
                .ends_with("/v1/traces")
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
        assert!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")])
                .unwrap()
                .is_some()
        );
        assert_eq!(
            error_variable(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]),
            "OTEL_TRACES_EXPORTER"
        );
    }

    #[test]
    fn the_endpoint_comes_from_the_signal_variable_first_else_the_base_url() {
        let base = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318")]);
        assert_eq!(base.traces_endpoint, "http://otel:4318/v1/traces");
        let slash = on(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318/prefix/")]);
        assert_eq!(slash.traces_endpoint, "http://otel:4318/prefix/v1/traces");
        // The signal's URL is used as it is, and wins.
        let signal = on(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:9999/custom",
            ),
        ]);
        assert_eq!(signal.traces_endpoint, "http://traces:9999/custom");
    }

    #[test]
    fn endpoints_that_cannot_work_are_refused() {
        for url in [
            "https://otel:4318",
            "otel:4318",
            "http://",
            "grpc://otel:4317",
            "http:///v1",
        ] {
            assert_eq!(
                error_variable(&[("OTEL_EXPORTER_OTLP_ENDPOINT", url)]),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "{url}"
            );
        }
        assert_eq!(
            error_variable(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "HTTPS://otel/v1/traces"
            )]),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        );
    }

    #[test]
    fn only_http_protobuf_is_spoken() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318");
        assert!(settings(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).is_ok());
        assert_eq!(
            error_variable(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL"
        );
        assert_eq!(
            error_variable(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")
            ]),
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        );
        // The signal's own protocol wins over the general one.
        assert!(
            settings(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ])
            .is_ok()
        );
    }

    #[test]
    fn the_service_name_defaults_to_the_binary_unless_configured() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318");
        assert_eq!(on(&[endpoint]).service_name.as_deref(), Some("tally-test"));
        let named = on(&[endpoint, ("OTEL_SERVICE_NAME", "ingest-eu")]);
        assert_eq!(named.service_name.as_deref(), Some("ingest-eu"));
        // service.name in the resource attributes is the SDK's to apply...
        let attributes = (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod, service.name = a",
        );
        assert_eq!(on(&[endpoint, attributes]).service_name, None);
        // ...unless OTEL_SERVICE_NAME is set, which wins.
        let both = on(&[endpoint, attributes, ("OTEL_SERVICE_NAME", "b")]);
        assert_eq!(both.service_name.as_deref(), Some("b"));
        let other = ("OTEL_RESOURCE_ATTRIBUTES", "service.namespace=tally");
        assert_eq!(
            on(&[endpoint, other]).service_name.as_deref(),
            Some("tally-test")
        );
    }

    #[test]
    fn samplers_parse_as_the_specification_names_them() {
        use SamplerSetting::*;
        assert_eq!(parse_sampler(None, None), Ok(ParentBasedAlwaysOn));
        assert_eq!(parse_sampler(None, Some("0.5")), Ok(ParentBasedAlwaysOn));
        assert_eq!(parse_sampler(Some("always_on"), None), Ok(AlwaysOn));
        assert_eq!(parse_sampler(Some("ALWAYS_OFF"), None), Ok(AlwaysOff));
        assert_eq!(
            parse_sampler(Some("parentbased_always_on"), None),
            Ok(ParentBasedAlwaysOn)
        );
        assert_eq!(
            parse_sampler(Some("parentbased_always_off"), None),
            Ok(ParentBasedAlwaysOff)
        );
        assert_eq!(
            parse_sampler(Some("traceidratio"), Some("0.25")),
            Ok(TraceIdRatio(0.25))
        );
        assert_eq!(
            parse_sampler(Some("parentbased_traceidratio"), Some(" 0 ")),
            Ok(ParentBasedTraceIdRatio(0.0))
        );
        // A ratio sampler without its argument samples everything.
        assert_eq!(
            parse_sampler(Some("traceidratio"), None),
            Ok(TraceIdRatio(1.0))
        );
        // The argument of a sampler that takes none is ignored, even when it is nonsense.
        assert_eq!(parse_sampler(Some("always_on"), Some("lots")), Ok(AlwaysOn));
    }

    #[test]
    fn bad_sampler_values_are_refused_with_the_variable_named() {
        for (sampler, arg, variable) in [
            ("traceidratio", "1.5", "OTEL_TRACES_SAMPLER_ARG"),
            ("traceidratio", "-0.1", "OTEL_TRACES_SAMPLER_ARG"),
            ("parentbased_traceidratio", "0,1", "OTEL_TRACES_SAMPLER_ARG"),
            ("traceidratio", "NaN", "OTEL_TRACES_SAMPLER_ARG"),
            ("jaeger_remote", "", "OTEL_TRACES_SAMPLER"),
            ("xray", "", "OTEL_TRACES_SAMPLER"),
            ("sometimes", "", "OTEL_TRACES_SAMPLER"),
        ] {
            let arg = (!arg.is_empty()).then_some(arg);
            assert_eq!(
                parse_sampler(Some(sampler), arg).unwrap_err().variable,
                variable,
                "{sampler} {arg:?}"
            );
        }
        // Checked as part of the settings too, once tracing is on.
        assert_eq!(
            error_variable(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                ("OTEL_TRACES_SAMPLER", "traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ]),
            "OTEL_TRACES_SAMPLER_ARG"
        );
    }
}
