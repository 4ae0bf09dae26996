//! What Tally's services share, declared once: the runtime configuration (the pipeline and
//! site resources as YAML), the names derived from it (stream, subjects, database), the
//! API keys (as digests), the servers' credentials, the event envelope on the wire between collector and processor, the JetStream stream
//! configuration and the ClickHouse schema.

pub mod access;
pub mod config;
pub mod credentials;
pub mod event;
#[cfg(feature = "event-row")]
pub mod event_row;
pub mod naming;
pub mod schema;
pub mod stream;
pub mod validate;

pub use config::{ConfigError, RuntimeConfig};
pub use event::Event;
#[cfg(feature = "event-row")]
pub use event_row::{Agent, Enrichment, EventRow};
