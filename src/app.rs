//! Assembles callgate from a config, a store and two bound listeners, and runs it until a
//! shutdown future completes. The caller binds the sockets (tests use port 0) and chooses the
//! stop signal (`main` uses SIGTERM / Ctrl-C).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::fanout::{Hub, HubConfig, RING_CAPACITY};
use crate::grpc_api::Api;
use crate::http_port::{self, HttpLimits, HttpState, WebhookSecurity};
use crate::ingest::IngestContext;
use crate::metrics::{Metrics, StoreOp};
use crate::pb;
use crate::store::ConsentStore;

/// gRPC HTTP/2 keepalive: ping idle connections so dead peers (and their streams) are dropped.
const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the gRPC health status is refreshed from the store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Failures that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("could not build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("webhook authentication settings: {0}")]
    Auth(#[from] crate::ingest::auth::AuthConfigError),
}

/// The sockets callgate serves on.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
}

/// Runs callgate until `shutdown` completes, then drains: HTTP requests in flight finish,
/// StreamGrants streams end with a status carrying their cursor, within `shutdown_grace`.
pub async fn run(
    config: Config,
    store: Arc<dyn ConsentStore>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::start(
        store.clone(),
        HubConfig {
            checkpoint: config.checkpoint_interval,
            ring_capacity: RING_CAPACITY,
        },
        stop.clone(),
    );
    tokio::spawn(sweep_expiries(
        store.clone(),
        metrics.clone(),
        config.expiry_sweep_interval,
        stop.clone(),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(
        store.clone(),
        health_reporter,
        metrics.clone(),
        stop.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let security = WebhookSecurity::from_config(&config)?;
    let http_state = Arc::new(HttpState {
        security,
        limits: HttpLimits {
            header_timeout: config.http_header_timeout,
            body_timeout: config.http_body_timeout,
            max_connections: config.http_max_connections,
        },
        store: store.clone(),
        ingest: IngestContext {
            temporary_grant: config.temporary_grant,
        },
        metrics: metrics.clone(),
        hub: hub.clone(),
    });
    let http = tokio::spawn(http_port::serve(
        listeners.http,
        http_state,
        stop.clone(),
        config.shutdown_grace,
    ));

    let grpc_stop = stop.clone();
    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let grpc = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(Api::new(store.clone(), hub, metrics).into_server())
        // `Server::tcp_nodelay` does not reach sockets of an incoming stream we hand over, so
        // they get TCP_NODELAY here; without it, Nagle's algorithm stalls answers by ~40 ms.
        .serve_with_incoming_shutdown(incoming, async move { grpc_stop.cancelled().await });
    let grpc = tokio::spawn(grpc);

    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested; draining");
        signal_stop.cancel();
    });

    let mut grpc = grpc;
    let grace = config.shutdown_grace;
    // The gRPC server ends by itself once every RPC has finished; a stream whose client stopped
    // reading may not, so the grace period bounds the wait.
    let grpc_result = tokio::select! {
        r = &mut grpc => Some(r),
        _ = async { stop.cancelled().await; tokio::time::sleep(grace).await } => None,
    };
    stop.cancel();
    let _ = tokio::time::timeout(grace, http).await;
    match grpc_result {
        Some(Ok(r)) => r?,
        Some(Err(join)) => tracing::error!(error = %join, "gRPC server task failed"),
        None => {
            tracing::warn!(
                ?grace,
                "gRPC calls still open after the grace period; closing"
            );
            grpc.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Turns lapsed temporary grants into `EXPIRED` events, on every replica (claims are atomic).
async fn sweep_expiries(
    store: Arc<dyn ConsentStore>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.claim_expired(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.expired(n);
                tracing::info!(expired = n, "temporary grants lapsed");
            }
            Err(e) => {
                metrics.store_error(StoreOp::Sweep);
                tracing::warn!(error = %e, "expiry sweep failed; will retry");
            }
        }
    }
}

/// Keeps `grpc.health.v1` and the `callgate_ready` gauge in step with the store: NOT_SERVING
/// (and 0) while the store is unreachable.
async fn report_health(
    store: Arc<dyn ConsentStore>,
    reporter: tonic_health::server::HealthReporter,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    type Svc = pb::consent_authority_server::ConsentAuthorityServer<Api>;
    let mut serving = None;
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                reporter.set_not_serving::<Svc>().await;
                metrics.set_ready(false);
                return;
            }
            _ = tick.tick() => {}
        }
        let ok = matches!(
            tokio::time::timeout(HEALTH_INTERVAL, store.ping()).await,
            Ok(Ok(()))
        );
        metrics.set_ready(ok);
        if serving != Some(ok) {
            if ok {
                reporter.set_serving::<Svc>().await;
            } else {
                reporter.set_not_serving::<Svc>().await;
            }
            serving = Some(ok);
        }
    }
}
