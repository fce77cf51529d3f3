//! Assembles callgate from a config, a store and two bound listeners, and runs it until a
//! shutdown future completes. The caller binds the sockets (tests use port 0) and chooses the
//! stop signal (`main` uses SIGTERM / Ctrl-C).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tracing::Instrument;

use crate::calling_list::CallingLists;
use crate::check_cache::CheckCache;
use crate::checks::Checker;
use crate::clock::Clock;
use crate::config::{Config, ENV_TLS_CERT, ENV_TLS_KEY};
use crate::consent_requests::ConsentRequests;
use crate::domain::DateRules;
use crate::fanout::{Hub, HubConfig, RING_CAPACITY};
use crate::grpc_api::auth::{self, AuthSource, ClientsError, Guard};
use crate::grpc_api::{Api, StreamLimits, Traced};
use crate::grpc_port::{self, GrpcLimits};
use crate::http_port::{self, Console, HttpLimits, HttpState, WebhookSecurity};
use crate::ingest::IngestContext;
use crate::metrics::{Metrics, StoreOp};
use crate::outbound::Outbound;
use crate::pb;
use crate::store::ConsentStore;
use crate::tls::{self, Tls, TlsError};

/// How often the gRPC health status is refreshed from the store.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long the background tasks (sweep, health, tailer, reload watchers) get to end after the
/// ports have drained.
const BACKGROUND_STOP_DEADLINE: Duration = Duration::from_secs(2);

/// Failures that stop the service.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("webhook authentication settings: {0}")]
    Auth(#[from] crate::ingest::auth::AuthConfigError),
    #[error("API clients file: {0}")]
    ApiClients(#[from] ClientsError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Loads the TLS files (if configured) and logs which ports are plaintext.
fn transport_security(config: &Config) -> Result<Option<Tls>, TlsError> {
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    match &tls {
        None => tracing::warn!(
            http = "plaintext",
            grpc = "plaintext",
            "both ports serve PLAINTEXT (no TLS): set {ENV_TLS_CERT} and {ENV_TLS_KEY} unless a \
             proxy in front terminates TLS"
        ),
        Some(t) => tracing::info!(
            http = "tls",
            grpc = if t.grpc.mutual() { "mutual-tls" } else { "tls" },
            reload_every = ?config.tls_reload_interval,
            "both ports serve TLS"
        ),
    }
    Ok(tls)
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
    let clock = config.clock;
    // Background tasks: each stops when `stop` is cancelled, and is awaited (bounded) before
    // `run` returns.
    let mut background: Vec<(&'static str, JoinHandle<()>)> = Vec::new();
    // The clients file if it declares any client, else open with `--insecure-no-auth`, else
    // closed (every call refused).
    let auth = Arc::new(AuthSource::load(
        config.api_clients_file.as_deref(),
        config.insecure_no_auth,
    )?);
    auth.current().log_startup();
    background.push((
        "api_clients_watch",
        tokio::spawn(
            auth::watch(
                auth.clone(),
                config.api_clients_reload_interval,
                stop.clone(),
            )
            .instrument(tracing::info_span!("api_clients_watch")),
        ),
    ));
    let tls = transport_security(&config)?;
    if let Some(tls) = &tls {
        background.push((
            "tls_watch",
            tokio::spawn(
                tls::watch(tls.clone(), config.tls_reload_interval, stop.clone())
                    .instrument(tracing::info_span!("tls_watch")),
            ),
        ));
    }
    let metrics = Arc::new(Metrics::default());
    // Issue 16: one check cache per replica, fed by the fan-out tailer and shared by both
    // front ends' checks through one `Checker`.
    let cache = config.check_cache.enabled.then(|| {
        Arc::new(CheckCache::new(
            &config.check_cache,
            store.shards(),
            clock,
            metrics.clone(),
        ))
    });
    let checker =
        Arc::new(Checker::new(store.clone(), clock, metrics.clone()).with_cache(cache.clone()));
    let (hub, tailer) = Hub::start(
        store.clone(),
        HubConfig {
            checkpoint: config.checkpoint_interval,
            ring_capacity: RING_CAPACITY,
            cache,
        },
        metrics.clone(),
        stop.clone(),
    );
    background.push(("fanout_tailer", tailer));
    background.push((
        "expiry_sweep",
        tokio::spawn(
            sweep_expiries(
                store.clone(),
                metrics.clone(),
                clock,
                config.expiry_sweep_interval,
                stop.clone(),
            )
            .instrument(tracing::info_span!("expiry_sweep")),
        ),
    ));

    // issue 17: outbound webhooks, one delivery task per subscription this replica leases.
    let outbound = Outbound::new(
        store.clone(),
        clock,
        config.outbound.clone(),
        metrics.clone(),
    );
    background.push((
        "outbound_webhooks",
        tokio::spawn(
            outbound
                .clone()
                .run(stop.clone())
                .instrument(tracing::info_span!("outbound_webhooks")),
        ),
    ));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    background.push((
        "health_reporter",
        tokio::spawn(
            report_health(
                store.clone(),
                health_reporter,
                metrics.clone(),
                stop.clone(),
            )
            .instrument(tracing::info_span!("health_reporter")),
        ),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // issue 13: consent requests, shared by the gRPC API and the HTTP port.
    let requests = Arc::new(ConsentRequests::new(
        store.clone(),
        clock,
        &config.attribution,
        config.max_clock_skew,
    ));
    // Issue 13: the calling lists, for both ports.
    let lists = CallingLists::new(store.clone(), config.attribution.unattributed);
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
            dates: DateRules {
                temporary_window: config.temporary_grant,
                max_clock_skew: config.max_clock_skew,
            },
        },
        metrics: metrics.clone(),
        clock,
        tls: tls.as_ref().map(|t| t.http.clone()),
        auth: auth.clone(),
        requests: requests.clone(),
        console: Console::new(tls.is_some()),
        checker: checker.clone(),
        batches: Arc::new(Semaphore::new(http_port::MAX_BATCHES_IN_FLIGHT)),
        lists: lists.clone(),
    });
    let http = tokio::spawn(http_port::serve(
        listeners.http,
        http_state,
        stop.clone(),
        config.shutdown_grace,
    ));

    let api = Api::new(
        store.clone(),
        hub,
        metrics.clone(),
        StreamLimits {
            max_subscriptions: config.max_subscriptions,
            stall_timeout: config.stream_stall_timeout,
        },
        clock,
    )
    .with_attribution(requests.clone(), config.attribution.unattributed)
    .with_outbound(outbound)
    .with_calling_lists(lists)
    .with_checker(checker);
    let api = Traced::new(Guard::new(api.into_server(), auth, metrics));
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(api)
        .prepare();
    let grpc = tokio::spawn(grpc_port::serve(
        listeners.grpc,
        routes,
        GrpcLimits {
            max_connections: config.grpc_max_connections,
            max_streams_per_connection: config.grpc_max_streams_per_connection,
        },
        tls.as_ref().map(|t| t.grpc.clone()),
        stop.clone(),
        config.shutdown_grace,
    ));

    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested; draining");
        signal_stop.cancel();
    });

    // Each port drains within the grace period by itself once `stop` is cancelled.
    let (http, grpc) = tokio::join!(http, grpc);
    for (port, result) in [("http", http), ("grpc", grpc)] {
        if let Err(join) = result {
            tracing::error!(port, error = %join, "server task failed");
        }
    }
    // The ports end only after `stop` (or by failing): make sure the background tasks see it.
    stop.cancel();
    join_background(background).await;
    tracing::info!("stopped");
    Ok(())
}

/// Awaits the background tasks after `stop` was cancelled, each within
/// [`BACKGROUND_STOP_DEADLINE`]; one that does not stop in time is aborted and logged.
async fn join_background(tasks: Vec<(&'static str, JoinHandle<()>)>) {
    let deadline = tokio::time::Instant::now() + BACKGROUND_STOP_DEADLINE;
    for (task, mut handle) in tasks {
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(task, error = %e, "background task failed"),
            Err(_) => {
                tracing::warn!(task, "background task did not stop in time; aborted");
                handle.abort();
            }
        }
    }
}

/// Turns lapsed temporary grants into `EXPIRED` events, on every replica (claims are atomic).
async fn sweep_expiries(
    store: Arc<dyn ConsentStore>,
    metrics: Arc<Metrics>,
    clock: Clock,
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
        match store.claim_expired(clock.now()).await {
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
    // After a stall (a paused process, a busy runtime), one check, not a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn background_tasks_are_awaited_and_a_stuck_one_is_aborted_at_the_deadline() {
        let finished = Arc::new(AtomicBool::new(false));
        let slow = tokio::spawn({
            let finished = finished.clone();
            async move {
                tokio::time::sleep(BACKGROUND_STOP_DEADLINE / 2).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        let stuck = tokio::spawn(std::future::pending::<()>());
        let stuck_abort = stuck.abort_handle();
        let started = tokio::time::Instant::now();
        join_background(vec![("slow", slow), ("stuck", stuck)]).await;
        assert!(
            finished.load(Ordering::SeqCst),
            "returned before a task ended"
        );
        assert_eq!(started.elapsed(), BACKGROUND_STOP_DEADLINE);
        tokio::task::yield_now().await;
        assert!(stuck_abort.is_finished(), "the stuck task was left running");
    }
}
