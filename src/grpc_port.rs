//! The gRPC port's transport: accepts connections and serves HTTP/2 on them, within limits.
//!
//! tonic's own server exposes no bound on what HTTP/2 buffers per stream for a client that does
//! not read, so the port is served here with hyper directly; tonic supplies the routes. What a
//! client can make the service hold is bounded by explicit limits:
//! - at most `max_connections` connections (more wait in the listen backlog);
//! - at most `max_streams_per_connection` concurrent streams on each;
//! - at most [`STREAM_SEND_BUFFER`] bytes queued for sending per stream, whatever window the
//!   client advertises (HTTP/2 windows only say what a peer *may* send, not what it reads);
//! - explicit receive windows ([`STREAM_WINDOW`], [`CONNECTION_WINDOW`]) for what clients send;
//! - keepalive pings: a peer that stops answering is disconnected and everything it held freed.
//!
//! StreamGrants adds its own limits on top (a cap on subscriptions and a stall deadline), in
//! [`crate::grpc_api`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service;
use tonic::service::Routes;

use crate::accept::{AcceptPolicy, serve_connections};
use crate::tls::{GRPC_HANDSHAKE_TIMEOUT, TlsPort};

/// Most bytes HTTP/2 queues for sending on one stream before the sender waits.
pub const STREAM_SEND_BUFFER: usize = 8 * 1024;
/// What one stream may send us before we read it (requests are small).
pub const STREAM_WINDOW: u32 = 64 * 1024;
/// What one connection may send us before we read it.
pub const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest request header block accepted.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Ping idle connections so dead peers (and their streams) are dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection and stream limits of the port.
#[derive(Debug, Clone)]
pub struct GrpcLimits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
}

/// Serves `routes` on `listener` until `shutdown` is cancelled, then lets open calls finish
/// for up to `grace` (StreamGrants streams end by themselves on shutdown).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: GrpcLimits,
    tls: Option<Arc<TlsPort>>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_send_buf_size(STREAM_SEND_BUFFER)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    let builder = Arc::new(builder);
    let policy = AcceptPolicy {
        port: "grpc",
        max_connections: limits.max_connections,
        tls,
        handshake_timeout: GRPC_HANDSHAKE_TIMEOUT,
        grace,
    };
    serve_connections(listener, policy, shutdown, move |io, peer, watcher| {
        let builder = builder.clone();
        let routes = routes.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let mut routes = routes.clone();
                async move { Ok::<_, Infallible>(routes.call(req).await.unwrap_or_else(|e| match e {})) }
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "grpc connection ended with an error");
            }
        }
    })
    .await;
}
