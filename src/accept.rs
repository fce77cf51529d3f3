//! The accept loop both ports share: a cap on open connections, TLS when configured, a task per
//! connection, and a bounded drain on shutdown. Each port says only how it serves one
//! connection (HTTP/1.1 webhooks, HTTP/2 gRPC).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::tls::{MaybeTls, TlsPort};

/// After a failed `accept` (out of file descriptors and the like): pause instead of spinning.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// How a port accepts connections.
pub struct AcceptPolicy {
    /// The port's name in log lines.
    pub port: &'static str,
    /// Most connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// TLS for this port; `None`: plain TCP.
    pub tls: Option<Arc<TlsPort>>,
    /// A client must finish its TLS handshake within this time.
    pub handshake_timeout: Duration,
    /// After shutdown, open connections get this long to finish.
    pub grace: Duration,
}

/// Accepts connections on `listener` until `shutdown` is cancelled, and hands each (after TLS)
/// to `serve` in its own task, which must register it with the [`Watcher`] so the drain waits
/// for it. Then lets open connections finish for up to the policy's grace period.
pub async fn serve_connections<S, F>(
    listener: TcpListener,
    policy: AcceptPolicy,
    shutdown: CancellationToken,
    serve: S,
) where
    S: Fn(MaybeTls, SocketAddr, Watcher) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let port = policy.port;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(policy.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(port, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
        };
        // Without TCP_NODELAY, Nagle's algorithm stalls small answers by ~40 ms.
        let _ = stream.set_nodelay(true);
        let tls = policy.tls.clone();
        let deadline = policy.handshake_timeout;
        let watcher = graceful.watcher();
        let serve = serve.clone();
        tokio::spawn(async move {
            // The TLS handshake (if any) happens here, off the accept loop, within its deadline;
            // the connection holds its place under the cap meanwhile.
            match MaybeTls::accept(stream, tls.as_deref(), deadline).await {
                Ok(io) => serve(io, peer, watcher).await,
                Err(e) => tracing::debug!(port, %peer, error = %e, "TLS handshake failed"),
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(policy.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            port,
            grace = ?policy.grace,
            "connections still open after the grace period; closing"
        );
    }
}
