//! How every Tally binary runs, written once: the command-line arguments that locate the
//! configuration ([`cli`]), structured logging and OpenTelemetry tracing ([`logging`],
//! [`telemetry`]; trace context in NATS headers: [`propagation`]), the shutdown signal
//! ([`signal`]), the API key of a request and the read rules ([`access`]), the `/healthz`, `/readyz` and `/metrics` endpoints ([`health`]), the
//! request-duration metric of the HTTP APIs ([`http`]) and retries with exponential backoff
//! ([`backoff`]). The wire contracts live in `tally-contracts`.

pub mod access;
pub mod backoff;
pub mod cli;
pub mod health;
pub mod http;
pub mod logging;
pub mod propagation;
pub mod server;
pub mod signal;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

pub use backoff::{Backoff, retry};
pub use cli::{CommonArgs, LogFormat};
pub use health::{Health, serve_health};
pub use logging::init_telemetry;
pub use server::{ServerLimits, serve};
pub use signal::{reload_on_hangup, shutdown_signal};
pub use telemetry::Telemetry;
