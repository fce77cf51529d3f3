//! Telemetry: the process-wide `tracing` subscriber, set up once by `main`.
//!
//! Logs go to stdout as text or JSON lines ([`LogFormat`], `CALLGATE_LOG_FORMAT`); `RUST_LOG`
//! filters them (default `info`). With the cargo feature `otlp` and `CALLGATE_OTLP_ENDPOINT`
//! set, spans are also exported over OTLP ([`crate::otlp`]). What is traced:
//! - one span per HTTP request (the HTTP port) and per RPC (`grpc_api::Traced`: `rpc`,
//!   `client`, `outcome`);
//! - one span per background task: `expiry_sweep`, `health_reporter`, `fanout_tailer`,
//!   `api_clients_watch`, `tls_watch`, `outbound_webhooks` (issue 17), and one `outbound` span
//!   (`subscription` id) per webhook subscription's delivery task.
//!
//! No span or event carries a phone number or a secret. Tests stay quiet unless `TEST_LOG=1`
//! (see `tests/api/helpers.rs`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[cfg(feature = "otlp")]
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpError),
}

/// What must be flushed before exit: the OTLP exporter, when one runs.
#[must_use = "call shutdown() before exit, so queued spans are sent"]
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    otlp: Option<crate::otlp::Exporter>,
}

impl Telemetry {
    /// Flushes what is queued for export.
    pub fn shutdown(self) {
        #[cfg(feature = "otlp")]
        if let Some(exporter) = self.otlp {
            exporter.shutdown();
        }
    }
}

/// The filter from `RUST_LOG`, or [`DEFAULT_FILTER`].
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global subscriber: logs in `format`, plus OTLP export to `otlp_endpoint` in a
/// build with the `otlp` feature (without it, a set endpoint is warned about). Call once, first
/// thing in `main` (inside the runtime: the exporter needs it); `version` names the build.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    version: &'static str,
) -> Result<Telemetry, TelemetryError> {
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer().json().boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
    };
    let registry = tracing_subscriber::registry().with(env_filter()).with(logs);
    #[cfg(feature = "otlp")]
    if let Some(endpoint) = otlp_endpoint {
        let (exporter, layer) = crate::otlp::Exporter::start(endpoint, version)?;
        registry.with(layer).init();
        tracing::info!(endpoint, "exporting spans over OTLP");
        return Ok(Telemetry {
            otlp: Some(exporter),
        });
    }
    registry.init();
    #[cfg(not(feature = "otlp"))]
    {
        let _ = version;
        if otlp_endpoint.is_some() {
            tracing::warn!(
                "{} is set, but this build has no OTLP export (build with --features otlp); \
                 spans are not exported",
                crate::config::ENV_OTLP_ENDPOINT
            );
        }
    }
    Ok(Telemetry {
        #[cfg(feature = "otlp")]
        otlp: None,
    })
}
