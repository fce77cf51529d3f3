//! Outbound webhooks (issue 17): every consent event, POSTed and signed to the endpoints that
//! subscribed to it, never silently lost.
//!
//! - [`Outbound::run`] (one per replica) lists the subscriptions every
//!   `CALLGATE_OUTBOUND_SCAN_MS` (and at once after a change made through this replica) and
//!   keeps one task per active subscription. A slow or dead endpoint holds only its own task;
//!   the check path never waits for a delivery.
//! - A task delivers only while it holds the subscription's lease in the store
//!   ([`ConsentStore::webhook_lease`]); so one replica delivers a subscription at a time, and
//!   another takes over when the holder dies (the lease lapses) or stops (it gives it up).
//! - It reads the event log after the subscription's cursor, strictly in log order, one event at
//!   a time: the cursor moves past an event only after a 2xx (or when the event is filtered
//!   out), and only with the lease's fencing token ([`ConsentStore::webhook_progress`]). A crash
//!   between the 2xx and the cursor write re-delivers that event with the same `webhook-id`.
//! - A failure is retried with exponential backoff and jitter; after `CALLGATE_OUTBOUND_RETRY_FOR_SECS`
//!   (3 days) without a 2xx the subscription is marked failing (log line, metric) and its cursor
//!   kept. `410 Gone` disables it. A cursor older than the retained event log marks it failing
//!   with that reason: nothing is skipped silently.
//!
//! `signature` signs, `destination` says where a delivery may go, `http` sends one attempt,
//! `payload` builds the body, `manage` is what the admin API does.
//!
//! [`ConsentStore::webhook_lease`]: crate::store::ConsentStore::webhook_lease
//! [`ConsentStore::webhook_progress`]: crate::store::ConsentStore::webhook_progress

pub mod destination;
pub mod http;
pub mod manage;
pub mod payload;
pub mod signature;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::Clock;
use crate::domain::{Subscription, SubscriptionState, backoff};
use crate::metrics::Metrics;
use crate::store::{ConsentStore, CursorError, Lease, LoggedEvent, Progress, StoreError};
use destination::AllowList;
use http::{Attempt, Sender};

/// Events read from the log per read.
const READ_BATCH: usize = 100;
/// Wait after a store error before trying again.
const STORE_RETRY: Duration = Duration::from_millis(500);

/// The settings of outbound delivery (see `config.rs` for the variables and defaults).
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    pub allow: AllowList,
    /// One attempt (connect, TLS, request, answer) must finish within this.
    pub timeout: Duration,
    /// The delivery lease's length; a dead holder is replaced after at most this (plus a scan).
    pub lease: Duration,
    /// How often every replica looks for subscriptions it does not deliver yet.
    pub scan_every: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long one event is retried before the subscription is marked failing.
    pub retry_for: Duration,
    /// How long the previous signing key keeps signing after a rotation.
    pub secret_overlap: Duration,
}

/// Outbound delivery on one replica.
pub struct Outbound {
    store: Arc<dyn ConsentStore>,
    clock: Clock,
    config: OutboundConfig,
    sender: Sender,
    metrics: Arc<Metrics>,
    /// This replica's name in the leases it holds (random per process).
    holder: String,
    /// Rescan now (a subscription was created or changed through this replica).
    wake: Notify,
}

/// Why a task stopped delivering under its current lease.
enum Stop {
    /// The lease was lost, or the record changed under it: take the lease anew.
    Restart,
    /// The subscription is no longer active (failing, disabled, gone).
    Ended,
    /// The replica is shutting down.
    Shutdown,
}

impl Outbound {
    pub fn new(
        store: Arc<dyn ConsentStore>,
        clock: Clock,
        config: OutboundConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut id = [0u8; 8];
        // A fixed name would make two replicas one holder: fall back to the process id + time.
        let holder = match getrandom::fill(&mut id) {
            Ok(()) => hex::encode(id),
            Err(_) => format!("{}-{}", std::process::id(), clock.now().timestamp_millis()),
        };
        Arc::new(Outbound {
            sender: Sender::new(config.allow.clone(), config.timeout),
            store,
            clock,
            config,
            metrics,
            holder,
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn ConsentStore> {
        &self.store
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Asks the scanner to look at the subscriptions now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Keeps one delivery task per active subscription until `stop`; then the tasks give their
    /// leases up and are awaited.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            tasks.retain(|_, task| !task.is_finished());
            match self.store.webhook_list().await {
                Ok(records) => {
                    for record in records {
                        let sub = record.subscription;
                        if sub.state != SubscriptionState::Active || tasks.contains_key(&sub.id) {
                            continue;
                        }
                        let span = tracing::info_span!("outbound", subscription = %sub.id);
                        let task = tokio::spawn(
                            self.clone()
                                .deliver(sub.id.clone(), stop.clone())
                                .instrument(span),
                        );
                        tasks.insert(sub.id, task);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list webhook subscriptions; will retry")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.config.scan_every) => {}
                _ = self.wake.notified() => {}
            }
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }

    async fn lease(&self, id: &str) -> Result<Lease, StoreError> {
        self.store
            .webhook_lease(id, &self.holder, self.config.lease, self.clock.now())
            .await
    }

    /// One subscription's task: take the lease, deliver under it, again.
    async fn deliver(self: Arc<Self>, id: String, stop: CancellationToken) {
        let retry_lease = self.config.lease / 3;
        loop {
            let token = match self.lease(&id).await {
                Ok(Lease::Held(token)) => token,
                Ok(Lease::Gone) => return,
                Ok(Lease::Busy) => {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(retry_lease) => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the delivery lease; will retry");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(STORE_RETRY) => continue,
                    }
                }
            };
            let outcome = self.under_lease(&id, token, &stop).await;
            if !matches!(outcome, Stop::Restart)
                && let Err(e) = self.store.webhook_release(&id, &self.holder, token).await
            {
                tracing::debug!(error = %e, "could not give the lease up; it will lapse");
            }
            match outcome {
                Stop::Restart => {
                    self.metrics.outbound_lag(&id, None);
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(STORE_RETRY.min(retry_lease)) => {}
                    }
                }
                Stop::Ended | Stop::Shutdown => {
                    self.metrics.outbound_lag(&id, None);
                    return;
                }
            }
        }
    }

    /// Delivers while the lease with `token` is held.
    async fn under_lease(&self, id: &str, token: u64, stop: &CancellationToken) -> Stop {
        let record = match self.store.webhook_get(id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Stop::Ended,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the subscription; will retry");
                return Stop::Restart;
            }
        };
        let sub = record.subscription;
        self.metrics
            .outbound_failing(id, sub.state == SubscriptionState::Failing);
        if sub.state != SubscriptionState::Active {
            return Stop::Ended;
        }
        tracing::info!(subscription = %id, token, "delivering");
        let mut cursor = record.cursor;
        let mut lease = LeaseClock::new(self.config.lease);
        loop {
            if lease.due()
                && let Some(stop) = self.renew(id, token, &mut lease).await
            {
                return stop;
            }
            let read = tokio::select! {
                _ = stop.cancelled() => return Stop::Shutdown,
                r = self.store.read_events(&cursor, READ_BATCH, lease.left()) => r,
            };
            let events = match read {
                Ok(events) => events,
                Err(StoreError::Cursor(CursorError::OutOfRange { .. })) => {
                    let reason = "fell behind the retained event log: events after its cursor \
                                  were trimmed (CALLGATE_EVENT_RETENTION_SECS); replay from a \
                                  time within the retained log after resyncing the receiver"
                        .to_owned();
                    return self
                        .end(id, token, cursor, SubscriptionState::Failing, reason)
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log; will retry");
                    tokio::select! {
                        _ = stop.cancelled() => return Stop::Shutdown,
                        _ = tokio::time::sleep(STORE_RETRY) => continue,
                    }
                }
            };
            let now_ms = self.clock.now().timestamp_millis().max(0) as u64;
            let lag = events
                .first()
                .map_or(0.0, |e| now_ms.saturating_sub(e.id.ms) as f64 / 1000.0);
            self.metrics.outbound_lag(id, Some(lag));
            let mut unsaved = false;
            for event in &events {
                if !sub.wants(&event.event, payload::tags(event)) {
                    cursor.advance(event.shard, event.id);
                    unsaved = true;
                    continue;
                }
                match self.deliver_one(&sub, event, token, &mut lease, stop).await {
                    Ok(Attempt::Delivered) => {
                        cursor.advance(event.shard, event.id);
                        self.metrics.outbound_delivered(id);
                        let progress = Progress {
                            cursor: cursor.clone(),
                            state: None,
                        };
                        if !self.save(id, token, &progress).await {
                            return Stop::Restart;
                        }
                        unsaved = false;
                    }
                    Ok(Attempt::Gone) => {
                        let reason = "the receiver answered 410 Gone".to_owned();
                        return self
                            .end(id, token, cursor, SubscriptionState::Disabled, reason)
                            .await;
                    }
                    Ok(Attempt::Failed(reason)) => {
                        return self
                            .end(id, token, cursor, SubscriptionState::Failing, reason)
                            .await;
                    }
                    Err(stop) => return stop,
                }
            }
            if unsaved {
                let progress = Progress {
                    cursor: cursor.clone(),
                    state: None,
                };
                if !self.save(id, token, &progress).await {
                    return Stop::Restart;
                }
            }
        }
    }

    /// Renews the lease; `Some` if it was lost (or could not be renewed).
    async fn renew(&self, id: &str, token: u64, lease: &mut LeaseClock) -> Option<Stop> {
        match self.lease(id).await {
            Ok(Lease::Held(t)) if t == token => {
                lease.renewed();
                None
            }
            Ok(Lease::Gone) => Some(Stop::Ended),
            Ok(_) => {
                tracing::info!(
                    "delivery lease lost (another replica, or the subscription changed)"
                );
                Some(Stop::Restart)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the delivery lease; stopping under it");
                Some(Stop::Restart)
            }
        }
    }

    /// Writes progress with the fencing token; false if the lease was lost or the write failed
    /// (then the task takes the lease anew and re-reads the cursor: at worst one event is
    /// delivered again, with the same `webhook-id`).
    async fn save(&self, id: &str, token: u64, progress: &Progress) -> bool {
        match self.store.webhook_progress(id, token, progress).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!("cursor not moved: the fencing token is stale");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot save the delivery cursor");
                false
            }
        }
    }

    /// Marks the subscription failing or disabled (fenced), keeping its cursor.
    async fn end(
        &self,
        id: &str,
        token: u64,
        cursor: crate::store::Cursor,
        state: SubscriptionState,
        reason: String,
    ) -> Stop {
        let progress = Progress {
            cursor,
            state: Some((state, reason.clone())),
        };
        if !self.save(id, token, &progress).await {
            return Stop::Restart;
        }
        if state == SubscriptionState::Failing {
            self.metrics.outbound_failing(id, true);
        }
        tracing::error!(
            state = state.as_str(),
            reason = %reason,
            "webhook subscription stopped; its cursor is kept (enable it, or replay from a time)"
        );
        Stop::Ended
    }

    /// Delivers one event, retrying until a 2xx, a 410, or the retry window's end (then
    /// `Failed` with the last reason). `Err` if the lease was lost or the replica stops.
    async fn deliver_one(
        &self,
        sub: &Subscription,
        event: &LoggedEvent,
        token: u64,
        lease: &mut LeaseClock,
        stop: &CancellationToken,
    ) -> Result<Attempt, Stop> {
        let webhook_id = payload::event_id(event);
        let first = Instant::now();
        let mut attempt = 0u32;
        loop {
            // The lease is confirmed right before each attempt (one small script): a replica
            // that lost it, or whose subscription an operator changed (rotation, replay,
            // disable), stops before sending rather than after.
            if let Some(stop) = self.renew(&sub.id, token, lease).await {
                return Err(stop);
            }
            let now = self.clock.now();
            let body = payload::body(event, now);
            let timestamp = now.timestamp();
            let signature = signature::sign(sub.signing_keys(now), &webhook_id, timestamp, &body);
            let headers = [
                ("webhook-id", webhook_id.clone()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", signature),
            ];
            let sent = tokio::select! {
                _ = stop.cancelled() => return Err(Stop::Shutdown),
                a = self.sender.post(&sub.url, &headers, Bytes::from(body)) => a,
            };
            let reason = match sent {
                Attempt::Failed(reason) => reason,
                done => return Ok(done),
            };
            if first.elapsed() >= self.config.retry_for {
                return Ok(Attempt::Failed(format!(
                    "no 2xx for {:?} (since the first failed attempt of event {webhook_id}); \
                     last attempt: {reason}",
                    self.config.retry_for
                )));
            }
            self.metrics.outbound_retried(&sub.id);
            let wait = backoff(
                attempt,
                self.config.backoff_min,
                self.config.backoff_max,
                jitter(),
            );
            attempt = attempt.saturating_add(1);
            tracing::warn!(
                event = %webhook_id,
                attempt,
                reason = %reason,
                retry_in = ?wait,
                "delivery failed; will retry"
            );
            let until = Instant::now() + wait;
            loop {
                let next = until.min(lease.next_renewal());
                tokio::select! {
                    _ = stop.cancelled() => return Err(Stop::Shutdown),
                    _ = tokio::time::sleep_until(next) => {}
                }
                if lease.due()
                    && let Some(stop) = self.renew(&sub.id, token, lease).await
                {
                    return Err(stop);
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
    }
}

/// When the lease was last renewed, and so when it is due again (a third of its length).
struct LeaseClock {
    every: Duration,
    renewed: Instant,
}

impl LeaseClock {
    fn new(length: Duration) -> Self {
        LeaseClock {
            every: length / 3,
            renewed: Instant::now(),
        }
    }

    fn renewed(&mut self) {
        self.renewed = Instant::now();
    }

    fn next_renewal(&self) -> Instant {
        self.renewed + self.every
    }

    fn due(&self) -> bool {
        Instant::now() >= self.next_renewal()
    }

    /// Time until the next renewal (how long a read may wait for events).
    fn left(&self) -> Duration {
        self.next_renewal()
            .saturating_duration_since(Instant::now())
    }
}

/// A random number in [0, 1) for the backoff's jitter.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}
