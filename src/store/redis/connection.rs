//! Connections to one standalone Redis that replace themselves after any fault.
//!
//! redis-rs's `ConnectionManager` (1.8) caches the outcome of its last reconnect and starts a
//! new one only when that outcome is an I/O error: a reconnect that ended in a failed `AUTH` or
//! an unreadable, cut-short handshake left it failing for good. And it does not count a
//! response timeout as a reason to reconnect, so a connection whose TCP flow went silent (no
//! data, no FIN, no RST) was never replaced. This module does not trust a connection it cannot
//! see answering:
//!
//! - [`SharedConnection`]: one multiplexed connection for every non-blocking call, owned by a
//!   **supervisor task**. Callers lease the current connection and report how their call
//!   ended. A transport error (I/O, an unreadable reply, a revoked session) replaces the
//!   connection at once; a timeout makes the supervisor `PING` it (bounded by the response
//!   timeout) and replace it if that fails too; a health `PING` every
//!   [`health_interval`](Settings::health_interval) finds a wedged connection nobody is using.
//!   A Redis error reply (a script error, `NOSCRIPT`, `OOM`) says nothing against the
//!   connection and keeps it. Reconnecting retries for ever, with a backoff from
//!   [`RECONNECT_MIN_DELAY`] to [`RECONNECT_MAX_DELAY`], whatever the last attempt failed with,
//!   so callgate works again within that delay (plus one connect) of Redis being healthy.
//! - [`BlockingPool`]: dedicated connections for blocking `XREAD`s, which must not stall the
//!   checks multiplexed on the shared connection. A connection that failed or timed out is
//!   dropped; idle ones are dropped too when the shared connection was replaced since they
//!   were last used (whatever broke one connection to Redis likely broke them all).
//!
//! Every connection attempt is bounded by the connect timeout (TCP connect and the whole
//! handshake: `HELLO`/`AUTH`/`SELECT`/`CLIENT SETINFO`), and every socket has `TCP_NODELAY`,
//! TCP keepalive and `TCP_USER_TIMEOUT`, so even a connection no one pings is closed by the
//! kernel once its peer is gone. While Redis cannot be reached, calls fail at once with
//! [`StoreError::Unavailable`] (a check never waits out its timeout during an outage); only
//! while the first attempt after a fault is under way do they wait for it, within their own
//! deadline.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::io::tcp::{TcpSettings, socket2};
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, ErrorKind, RedisError};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::store::StoreError;

/// First pause between failed connection attempts; doubles up to [`RECONNECT_MAX_DELAY`].
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest pause between connection attempts: how late, at most, callgate notices that Redis
/// is back (plus one connect).
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Idle time before the kernel sends TCP keepalive probes, their interval and count.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Sent data unacknowledged this long closes the socket (Linux `TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle blocking-read connections kept for reuse.
const BLOCKING_POOL_IDLE: usize = 8;
/// Reports queued for the supervisor; more are dropped (one is enough to act on).
const REPORT_QUEUE: usize = 16;

/// How to open and watch connections.
#[derive(Clone)]
pub struct Settings {
    pub client: Client,
    /// Bound on one connection attempt: TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Bound on one reply on the shared connection (and on a health `PING`).
    pub response_timeout: Duration,
    /// How often the supervisor `PING`s the shared connection.
    pub health_interval: Duration,
}

/// The socket options of every connection: no Nagle delay (a check is one small request),
/// keepalive and a user timeout so the kernel closes a connection whose peer vanished.
pub fn tcp_settings(info: ConnectionInfo) -> ConnectionInfo {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(TCP_USER_TIMEOUT);
    info.set_tcp_settings(tcp)
}

/// Opens one connection, the whole handshake bounded by the connect timeout.
async fn connect(
    settings: &Settings,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection, StoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(response_timeout);
    let attempt = settings
        .client
        .get_multiplexed_async_connection_with_config(&config);
    match tokio::time::timeout(settings.connect_timeout, attempt).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) if e.is_timeout() => Err(StoreError::Timeout(settings.connect_timeout)),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!(
            "cannot connect to Redis: {e}"
        ))),
        Err(_) => Err(StoreError::Timeout(settings.connect_timeout)),
    }
}

/// What a failed call says about the connection it ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Redis answered (with an error reply, or a reply of another type than asked for): the
    /// connection works.
    Healthy,
    /// No answer in time: the connection may be wedged, or Redis only slow. Verify it.
    Suspect,
    /// The connection is broken (I/O error, unreadable reply, closed, or a session Redis no
    /// longer accepts): replace it.
    Broken,
}

impl Verdict {
    pub fn of(e: &RedisError) -> Verdict {
        if e.is_timeout() {
            return Verdict::Suspect;
        }
        // A session whose credentials were revoked, or a node demoted to replica under a
        // fixed address: a new connection authenticates again / reaches the new primary.
        if matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "READONLY")) {
            return Verdict::Broken;
        }
        match e.kind() {
            ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType => {
                Verdict::Healthy
            }
            _ => Verdict::Broken,
        }
    }
}

#[derive(Clone)]
enum Slot {
    Up {
        generation: u64,
        conn: MultiplexedConnection,
    },
    /// The first connection attempt after a fault is under way: callers may wait for it.
    Connecting,
    /// The last attempt failed (the reason); the supervisor retries after a pause.
    Down(String),
}

struct Report {
    generation: u64,
    verdict: Verdict,
    reason: String,
}

/// The shared multiplexed connection and its supervisor (stopped when this is dropped).
pub struct SharedConnection {
    slot: watch::Receiver<Slot>,
    reports: mpsc::Sender<Report>,
    /// How many times a connection was replaced; the blocking pool compares it.
    replaced: Arc<AtomicU64>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Drop for SharedConnection {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

/// A connection lent for one call, and where to report how the call went.
pub struct Lease<'a> {
    pub conn: MultiplexedConnection,
    generation: u64,
    reports: &'a mpsc::Sender<Report>,
}

impl Lease<'_> {
    /// Tells the supervisor what a failed call says about this connection.
    pub fn report(&self, verdict: Verdict, reason: impl FnOnce() -> String) {
        if verdict == Verdict::Healthy {
            return;
        }
        // A full queue already holds reports enough to act on.
        let _ = self.reports.try_send(Report {
            generation: self.generation,
            verdict,
            reason: reason(),
        });
    }

    /// Reports a failed call's error (see [`Verdict::of`]).
    pub fn report_error(&self, e: &RedisError) {
        self.report(Verdict::of(e), || e.to_string());
    }
}

impl SharedConnection {
    /// Connects (failing if Redis cannot be reached now), then hands the connection to a
    /// supervisor task that keeps one up from then on.
    pub async fn start(settings: Settings) -> Result<SharedConnection, StoreError> {
        let conn = connect(&settings, Some(settings.response_timeout)).await?;
        let (slot_tx, slot) = watch::channel(Slot::Up {
            generation: 1,
            conn: conn.clone(),
        });
        let (reports, reports_rx) = mpsc::channel(REPORT_QUEUE);
        let replaced = Arc::new(AtomicU64::new(0));
        let supervisor = tokio::spawn(supervise(
            settings,
            conn,
            slot_tx,
            reports_rx,
            replaced.clone(),
        ));
        Ok(SharedConnection {
            slot,
            reports,
            replaced,
            supervisor,
        })
    }

    /// The current connection. While the first reconnect after a fault is under way, waits
    /// for it until `deadline`; when Redis cannot be reached, fails at once.
    pub async fn lease(&self, deadline: Instant) -> Result<Lease<'_>, StoreError> {
        self.lease_other_than(None, deadline).await
    }

    /// [`lease`](Self::lease), but not the connection `broken` (reported broken by the caller):
    /// waits for its replacement, within `deadline`.
    pub async fn lease_replacing(
        &self,
        broken: &Lease<'_>,
        deadline: Instant,
    ) -> Result<Lease<'_>, StoreError> {
        self.lease_other_than(Some(broken.generation), deadline)
            .await
    }

    async fn lease_other_than(
        &self,
        broken: Option<u64>,
        deadline: Instant,
    ) -> Result<Lease<'_>, StoreError> {
        let mut slot = self.slot.clone();
        let settled = |s: &Slot| match s {
            Slot::Up { generation, .. } => Some(*generation) != broken,
            Slot::Connecting => false,
            Slot::Down(_) => true,
        };
        let ready = tokio::time::timeout_at(deadline, slot.wait_for(settled)).await;
        let current = match ready {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_closed)) => Slot::Down("the Redis connection supervisor stopped".into()),
            Err(_) => Slot::Down("reconnecting to Redis".into()),
        };
        match current {
            Slot::Up { generation, conn } => Ok(Lease {
                conn,
                generation,
                reports: &self.reports,
            }),
            Slot::Down(reason) => Err(StoreError::Unavailable(reason)),
            Slot::Connecting => unreachable!("waited for a settled slot"),
        }
    }

    /// How many times the connection was replaced so far.
    pub fn replacements(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }
}

/// Keeps one connection up: watches it, replaces it when it breaks, retries for ever.
async fn supervise(
    settings: Settings,
    mut conn: MultiplexedConnection,
    slot: watch::Sender<Slot>,
    mut reports: mpsc::Receiver<Report>,
    replaced: Arc<AtomicU64>,
) {
    let mut generation = 1;
    loop {
        let reason = watch_over(&settings, &mut conn, generation, &mut reports).await;
        replaced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = %reason, "Redis connection is broken; replacing it");
        slot.send_replace(Slot::Connecting);
        let mut delay = RECONNECT_MIN_DELAY;
        let mut attempts: u64 = 0;
        conn = loop {
            match connect(&settings, Some(settings.response_timeout)).await {
                Ok(conn) => break conn,
                Err(e) => {
                    attempts += 1;
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(error = %e, attempts, "cannot reconnect to Redis; retrying");
                    }
                    slot.send_replace(Slot::Down(e.to_string()));
                    tokio::time::sleep(jitter(delay, attempts)).await;
                    delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                }
            }
        };
        generation += 1;
        tracing::info!(attempts = attempts + 1, "reconnected to Redis");
        slot.send_replace(Slot::Up {
            generation,
            conn: conn.clone(),
        });
    }
}

/// Returns why the connection must be replaced, once it must.
async fn watch_over(
    settings: &Settings,
    conn: &mut MultiplexedConnection,
    generation: u64,
    reports: &mut mpsc::Receiver<Report>,
) -> String {
    let mut tick = tokio::time::interval_at(
        Instant::now() + settings.health_interval,
        settings.health_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else {
                    // Every sender is gone: the store was dropped and this task is aborted.
                    return std::future::pending().await;
                };
                // Reports about a connection already replaced are old news.
                if report.generation != generation {
                    continue;
                }
                match report.verdict {
                    Verdict::Healthy => {}
                    Verdict::Broken => return report.reason,
                    Verdict::Suspect => {
                        if let Err(e) = health_ping(settings, conn).await {
                            return format!("{} (then {e})", report.reason);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                if let Err(e) = health_ping(settings, conn).await {
                    return e;
                }
            }
        }
    }
}

/// `PING`, answered `PONG` within the response timeout.
async fn health_ping(settings: &Settings, conn: &mut MultiplexedConnection) -> Result<(), String> {
    let ping = redis::cmd("PING");
    match tokio::time::timeout(settings.response_timeout, ping.query_async::<String>(conn)).await {
        Ok(Ok(pong)) if pong == "PONG" => Ok(()),
        Ok(Ok(other)) => Err(format!("health PING answered {other:?}")),
        Ok(Err(e)) => Err(format!("health PING failed: {e}")),
        Err(_) => Err(format!(
            "health PING unanswered after {:?}",
            settings.response_timeout
        )),
    }
}

/// `delay` give or take a quarter, so replicas that lost Redis together do not reconnect in
/// lockstep.
fn jitter(delay: Duration, attempt: u64) -> Duration {
    let spread = RandomState::new().hash_one(attempt) % 501; // 0..=500 per mille
    delay.mul_f64(0.75 + spread as f64 / 1000.0)
}

/// Dedicated connections for blocking reads, so a waiting `XREAD` never delays a check.
pub struct BlockingPool {
    settings: Settings,
    /// Idle connections, each with the shared connection's replacement count when it was
    /// last used cleanly.
    idle: Mutex<Vec<(MultiplexedConnection, u64)>>,
}

impl BlockingPool {
    pub fn new(settings: Settings) -> Self {
        BlockingPool {
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection (`reused` = true) still trusted as of `epoch` (the shared
    /// connection's replacement count), or a new one.
    pub async fn take(&self, epoch: u64) -> Result<(MultiplexedConnection, bool), StoreError> {
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            // A replacement of the shared connection since these were used: distrust them.
            idle.retain(|(_, seen)| *seen == epoch);
            idle.pop()
        };
        if let Some((conn, _)) = idle {
            return Ok((conn, true));
        }
        // No response timeout: the caller bounds each blocking read by its own block time
        // plus the store timeout, which a fixed per-connection timeout could not express.
        connect(&self.settings, None)
            .await
            .map(|conn| (conn, false))
    }

    /// Returns a connection that answered cleanly. Failed ones are simply dropped.
    pub fn give_back(&self, conn: MultiplexedConnection, epoch: u64) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < BLOCKING_POOL_IDLE {
            idle.push((conn, epoch));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    #[test]
    fn only_answers_from_redis_keep_a_connection() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let cases = [
            (io, Verdict::Broken),
            (timeout, Verdict::Suspect),
            (
                RedisError::from((ErrorKind::Parse, "truncated")),
                Verdict::Broken,
            ),
            (
                RedisError::from((ErrorKind::AuthenticationFailed, "bad password")),
                Verdict::Broken,
            ),
            (
                RedisError::from((ErrorKind::UnexpectedReturnType, "not a string")),
                Verdict::Healthy,
            ),
            (server_error("CORRUPT"), Verdict::Healthy),
            (server_error("NOAUTH"), Verdict::Broken),
            (server_error("READONLY"), Verdict::Broken),
        ];
        for (error, want) in cases {
            assert_eq!(Verdict::of(&error), want, "{error:?}");
        }
    }

    #[test]
    fn jitter_stays_within_a_quarter_of_the_delay() {
        for attempt in 0..200 {
            let d = jitter(Duration::from_millis(400), attempt);
            assert!(
                (Duration::from_millis(300)..=Duration::from_millis(500)).contains(&d),
                "{d:?}"
            );
        }
    }
}
