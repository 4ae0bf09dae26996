//! How every Tally binary runs, written once: the command-line arguments that locate the
//! configuration ([`cli`]), structured logging ([`logging`]), the shutdown signal
//! ([`signal`]), the `/healthz`, `/readyz` and `/metrics` endpoints ([`health`]), the
//! request-duration metric of the HTTP APIs ([`http`]) and retries with exponential backoff
//! ([`backoff`]). The wire contracts live in `tally-contracts`.

pub mod backoff;
pub mod cli;
pub mod health;
pub mod http;
pub mod logging;
pub mod signal;

pub use backoff::{Backoff, retry};
pub use cli::{CommonArgs, LogFormat};
pub use health::{Health, serve_health};
pub use logging::init_logging;
pub use signal::shutdown_signal;
