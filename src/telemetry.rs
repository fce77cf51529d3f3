//! Telemetry: the process-wide `tracing` subscriber, set up once by `main`.
//!
//! Logs go to stdout as text or JSON lines ([`LogFormat`], `CALLGATE_LOG_FORMAT`); `RUST_LOG`
//! filters them (default `info`). What is traced:
//! - one span per HTTP request (the HTTP port) and per RPC (`grpc_api::Traced`: `rpc`,
//!   `client`, `outcome`);
//! - one span per background task: `expiry_sweep`, `health_reporter`, `fanout_tailer`,
//!   `api_clients_watch`, `tls_watch`.
//!
//! No span or event carries a phone number or a secret. Tests stay quiet unless `TEST_LOG=1`
//! (see `tests/api/helpers.rs`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// The filter from `RUST_LOG`, or [`DEFAULT_FILTER`].
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
