//! callgate: the consent authority for outbound calls. See ARCHITECTURE.md for the map.

pub(crate) mod accept;
pub mod app;
pub mod calling_list;
pub mod check_cache;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod config;
pub mod consent_requests;
pub mod domain;
pub mod export;
pub mod fanout;
pub mod grpc_api;
pub(crate) mod grpc_port;
pub(crate) mod http_port;
/// The limits of the HTTP port's JSON checks (`POST /v1/check`, `POST /v1/check-batch`).
pub mod json_checks {
    pub use crate::http_port::{
        CHUNK, MAX_BATCH_BODY, MAX_BATCH_CHECKS, MAX_BATCHES_IN_FLIGHT, MAX_CHECK_BODY,
    };
}
pub mod ingest;
pub mod metrics;
/// OpenTelemetry span export (cargo feature `otlp`), set up by the binary's `main`.
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod outbound;
pub(crate) mod secret;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/callgate/v1/callgate.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("callgate.v1");

    /// Descriptor set for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("callgate_descriptor");
}
