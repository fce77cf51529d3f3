//! The HTTP port: webhooks in, health out. This module is the transport: the accept loop and
//! the connection limits. What a request means lives in the rooms below it:
//!
//! - `routes`: the routing table, and the one place a request is traced (one `http` span per
//!   request) and counted;
//! - `webhooks`: the webhook handlers and how they authenticate senders;
//! - `probes`: `/healthz`, `/readyz`, `/metrics`;
//! - `error`: [`WebhookError`], mapped to an HTTP status and error code in one `match`;
//! - `console`: the compliance console's pages (`/console`), with its own sessions;
//! - `export`: issue 14's `GET /v1/export` (a business's decisions as NDJSON or CSV, streamed).
//! - `check_api`: the JSON checks for REST-only dialers (`POST /v1/check`,
//!   `POST /v1/check-batch`, streamed), `check_json` their wire format, `api_error` their
//!   refusals mapped to a status in one `match`;
//! - `body`: reading a JSON body within a route's size cap and the body deadline;
//! - `reply`: what handlers answer.
//! - `reply`: what handlers answer;
//! - `export`: issue 14's `GET /v1/export` (a business's decisions as NDJSON or CSV, streamed).
//! - `consent_requests` (issue 13): `POST /v1/consent-requests`, registering the consent
//!   requests a team sent (JSON, API key with the `register` scope).
//! - `callable` (issue 13): `GET /v1/callable`, a business's calling list as JSON or CSV,
//!   streamed, for dialers that load lists over REST.
//!
//! A webhook is answered 200 only after its decision is stored; a refused request stores
//! nothing.
//!
//! Defences for a port facing the internet: the body is capped at [`MAX_BODY`] (checked against
//! `Content-Length` before reading, and while reading), headers and body must arrive within a
//! deadline, and the number of open connections is capped.
//!
//! The port speaks HTTP/1.1 only (webhook senders and probes all do). Every connection must make
//! progress from the moment it is accepted: the header deadline runs from accept for the first
//! request and from the end of the previous response for the next one, so a socket that never
//! sends a byte, or a kept-alive connection that goes quiet, is closed within
//! `header_timeout`. An HTTP/2 preface is refused like any malformed request: HTTP/2 would let
//! one connection carry many requests past the connection cap, outside these deadlines.

mod api_error;
mod body;
mod callable;
mod check_api;
mod check_json;
mod consent_requests;
mod console;
mod error;
mod export;
mod probes;
mod reply;
mod routes;
mod webhooks;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use check_api::{CHUNK, MAX_BATCHES_IN_FLIGHT};
pub use check_json::{MAX_BATCH_BODY, MAX_BATCH_CHECKS, MAX_CHECK_BODY};
pub use console::Console;
pub use error::WebhookError;
pub use webhooks::WebhookSecurity;

use crate::accept::{AcceptPolicy, serve_connections};
use crate::calling_list::CallingLists;
use crate::checks::Checker;
use crate::clock::Clock;
use crate::consent_requests::ConsentRequests;
use crate::grpc_api::auth::AuthSource;
use crate::ingest::IngestContext;
use crate::metrics::Metrics;
use crate::store::ConsentStore;
use crate::tls::TlsPort;

/// Largest webhook body accepted (the JSON checks have their own caps, [`MAX_CHECK_BODY`] and
/// [`MAX_BATCH_BODY`]).
pub const MAX_BODY: usize = 64 * 1024;

/// Shared state of the HTTP port.
pub struct HttpState {
    pub limits: HttpLimits,
    pub security: WebhookSecurity,
    pub store: Arc<dyn ConsentStore>,
    pub ingest: IngestContext,
    pub metrics: Arc<Metrics>,
    /// Where a webhook's arrival time is read.
    pub clock: Clock,
    /// TLS for this port; `None`: plain TCP.
    pub tls: Option<Arc<TlsPort>>,
    /// issue 13: the API clients of the port's API endpoints (the gRPC API's keys, scopes and
    /// businesses): the JSON checks, `/v1/consent-requests`, `/v1/callable`.
    pub auth: Arc<AuthSource>,
    /// The compliance console: its sessions and overview cache.
    pub console: Console,
    /// issue 13: answers the JSON checks (the gRPC API's code).
    pub checker: Arc<Checker>,
    /// issue 13: one permit per check batch being answered ([`MAX_BATCHES_IN_FLIGHT`]).
    pub batches: Arc<tokio::sync::Semaphore>,
    /// issue 13: consent requests (`POST /v1/consent-requests`).
    pub requests: Arc<ConsentRequests>,
    /// Issue 13: the calling lists.
    pub lists: CallingLists,
}

/// Slow-client and connection limits of the port.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Serves the HTTP port on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // HTTP/1.1 only: hyper's header deadline starts when it first polls for a request head,
    // which is at once for a new connection (no protocol sniffing that waits for bytes first)
    // and right after each response on a kept-alive one.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_timeout);
    let builder = Arc::new(builder);
    let policy = AcceptPolicy {
        port: "http",
        max_connections: state.limits.max_connections,
        tls: state.tls.clone(),
        // The handshake counts against the header deadline.
        handshake_timeout: state.limits.header_timeout,
        grace,
    };
    serve_connections(listener, policy, shutdown, move |io, peer, watcher| {
        let builder = builder.clone();
        let state = state.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(routes::handle(&state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        }
    })
    .await;
}
