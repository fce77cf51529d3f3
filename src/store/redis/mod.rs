//! The production store: consent state in Redis, shared by every callgate replica.
//!
//! All Redis knowledge lives in this module: key names in [`keys`], value formats in [`codec`],
//! and the Lua scripts next to this file. It behaves exactly like
//! [`MemoryStore`](crate::store::memory::MemoryStore); the conformance suite in `tests/api`
//! runs the same tests against both.
//!
//! # Key layout: sharded, cluster-ready
//!
//! Pairs are spread over [`SHARDS`] shards by a stable hash ([`keys::shard_of`]). Every key of
//! a shard carries the shard's hash tag (`{callgate:s07-3}`), so every key one script touches is
//! in one Cluster slot, and the shards spread over the cluster's nodes. Each shard has its own
//! event stream and due-time index; a subscriber's cursor is one stream id per shard. See
//! [`keys`] for the full list.
//!
//! # The consent key holds the current decision: a check is a plain `MGET`
//!
//! Each pair has up to four keys. Its history (`h:`, a list) holds every decision ever kept,
//! with its full evidence and its dedup id; its dedup hash (`d:`) maps each kept delivery's id
//! to the fingerprint of what it said. Its consent key (`c:`) holds the **whole** current
//! decision (its dedup id and body, see [`codec`]). While the current decision is a temporary
//! grant, its lapse record (`x:`) holds the same value without a TTL.
//!
//! A temporary grant's consent key carries Redis's own expiry at the grant's expiry instant
//! (`PXAT` from the decision, not from arrival), so Redis reclaims it without callgate doing
//! anything. A check after the expiry must answer EXPIRED, with the grant's evidence, not
//! NO_CONSENT: that is what the lapse record is for. A grant already expired on arrival gets
//! only the lapse record; a permanent grant or a denial that wins deletes it.
//!
//! So a check ([`current`](RedisStore::current)) is one `MGET c: x:` (both keys share the
//! shard's hash tag): `c:` when present, else `x:`, else no decision. No script runs on the
//! read path. A batch check ([`current_many`](RedisStore::current_many)) groups its pairs by
//! shard and sends one `MGET` per shard with all of that shard's `c:`/`x:` keys (one Cluster
//! slot each), all of them in one pipeline: at most [`SHARDS`] commands and one round trip for
//! any batch size.
//!
//! The trade-off: the current decision's body is stored twice (in `c:` and in the history),
//! three times for a live temporary grant, and `c:` is no longer small enough for Redis's
//! `embstr` encoding. That costs Redis memory per consent (see BENCHMARKS.md and
//! `callgate-bench redis-memory`); a pointer into the history would save it, but following a
//! pointer in one round trip needs a Lua script, and the check is the hot path: an `EVALSHA`
//! costs Redis several times the CPU of an `MGET`, and Redis shares the machine's cores with
//! callgate.
//!
//! # Atomicity
//!
//! Each decision is recorded by one Lua script (`record.lua`): de-duplication (one `HGET` of
//! the delivery id in the pair's `d:` hash, the twin of
//! [`redelivery`](crate::domain::rules::redelivery): same fingerprint = duplicate, another =
//! conflict, nothing written; the hash never expires, so a retry is recognised however late,
//! which more than covers [`DEDUP_RETENTION`](crate::store::DEDUP_RETENTION), and the cost
//! does not grow with the history), arbitration (the twin of
//! [`precedence`](crate::domain::rules::precedence)), history, current decision, due index
//! and event (`XADD` with exact `MINID` trimming). No reader ever sees half a decision.
//! A call of several decisions is first checked for conflicts in one pipelined round trip of
//! `HGET`s, so a conflict stores nothing; the one gap is a conflicting delivery of the same
//! message id recorded by another replica between that check and the `EXEC`: then the other
//! decisions of the call are stored, the call still answers the conflict, and a retry finds
//! them as duplicates.
//! Several decisions given to one [`record`](RedisStore::record) call are sent as `EVALSHA`s
//! inside `MULTI`/`EXEC`, so on a standalone Redis they are applied together or (on a
//! connection error before `EXEC`) not at all. `EXEC` does not roll back: if one script fails
//! inside it (say Redis hits `maxmemory`), the call is an error and the sender's retry records
//! the rest, the ones already stored being recognised as duplicates.
//!
//! The expiry sweep (`claim_expired.lua`) runs per shard: `ZREM` of a due-index member inside
//! the script is the claim, so every replica may sweep at once and each lapse still yields
//! exactly one EXPIRED event.
//!
//! # The event log
//!
//! One stream per shard; event ids are the Redis stream ids, set by the scripts to
//! `<ms>-<microsecond within the ms>` of the server's clock (or the stream's newest id plus one
//! if that would not be greater), so [`cursor_at`](crate::store::cursor_at) works and events
//! of different shards sort by id in the order they were logged;
//! [`read_events`](RedisStore::read_events) merges the shards by id. Every `XADD` trims exactly (`MINID =`, not `~`)
//! to [`RedisConfig::event_retention`]. A cursor is out of range when it is older than an event
//! that was trimmed away. Redis 7.0 does not record that (`XINFO STREAM`'s
//! `max-deleted-entry-id` only follows `XDEL`, not trimming), so the scripts keep the newest
//! trimmed id per shard in a `trimmed` key, and [`read_events`](RedisStore::read_events)
//! pipelines one `MGET` of those with its `XREAD`: the check costs no extra round trip.
//!
//! # Redis Cluster
//!
//! With [`RedisConfig::cluster`] (`CALLGATE_REDIS_CLUSTER_NODES`) the same keys live on a Redis
//! Cluster; the shard tags are chosen so a default 3-master cluster holds a third of the shards
//! on each master ([`keys`]). A cluster refuses any command or transaction whose keys span
//! slots (even on one node), and redis-rs refuses a pipeline that spans slots, so on a cluster:
//!
//! - a check is the same single-slot `MGET`; a batch check sends one `MGET` per shard, all at
//!   once ([`current_each`](ConsentStore::current_each)), so a shard whose master is down fails
//!   only its own pairs (`UNAVAILABLE` each) while the others are answered;
//! - a multi-decision [`record`](RedisStore::record) sends one single-slot pipeline per shard
//!   (a pair's decisions in order), the shards at once, with no `MULTI`: each decision is atomic
//!   by itself. The call succeeds (HTTP 200) only if every decision was stored; if one shard
//!   fails, the call fails (503), the sender retries the whole delivery, and the decisions
//!   already stored are recognised as duplicates. All or none *acknowledged*, not all or none
//!   *stored*: a reader may see some decisions of a failed call before its retry;
//! - [`read_events`](RedisStore::read_events) reads each shard's stream by itself (with its
//!   `trimmed` mark, one slot), none blocking; a waiting read repeats every `CLUSTER_POLL`
//!   (20 ms) until its wait ends. A blocking `XREAD` holds its node's connection (a check to
//!   that node waited 1.9 s behind `XREAD BLOCK 2000`), and one blocking read per shard would
//!   need a dedicated connection per shard per process: polling costs one cheap `XREAD` per
//!   shard per 20 ms per tailer instead, and up to 20 ms of extra StreamGrants latency;
//! - the sweep claims per shard, each shard by itself, so a shard failing over does not hold
//!   back the others' expiries;
//! - `maxmemory-policy` is checked on every master (`CONFIG GET` to all of them).
//!
//! Connections: one redis-rs cluster connection per third of the shards, plus one for keyless
//! commands (see [`cluster::Lanes`]: a refreshing cluster connection stalls every request it
//! carries, and must not carry a healthy master's checks while another master fails over), each
//! replaced if it keeps failing ([`cluster`]). Cross-shard order of events: stream ids come from
//! each master's clock, so events of different masters are ordered by those clocks (as close
//! as the masters' clocks agree); a pair's events are always in order (one stream).
//!
//! Failover: a master's death makes its shards answer `UNAVAILABLE` (never a default) until its
//! replica is promoted (2–3 s with `cluster-node-timeout 1000`, measured in
//! `tests/api/cluster.rs`), then they answer again with no restart; a promoted replica lacks
//! the scripts, which are loaded again on the first `NOSCRIPT`. Replication is asynchronous:
//! a promotion can lose the newest writes of the dead master. With
//! [`RedisConfig::replica_acks`] = n, each write pipeline ends with `WAIT n` (after `EXEC`,
//! on the writes' own connection, so it waits for exactly those writes), and fewer than n
//! replicas within half the store timeout fails the call (503, the sender retries): a 200
//! then means n replicas hold the decision. (`WAITAOF` would also cover the replicas' disks;
//! it needs Redis 7.2.) The expiry claim writes without `WAIT`: if a promotion loses a claim,
//! the new master sweeps that lapse again, and a subscriber that read the first `EXPIRED`
//! from the old master may see a second one (exactly once holds when no write is lost).
//!
//! # Failure behaviour
//!
//! On a standalone Redis, checks and writes share one multiplexed connection (`TCP_NODELAY`,
//! TCP keepalive; writes get their own when replica acks are asked for, since `WAIT` holds its
//! connection), owned by a supervisor task in `connection` that replaces it after **any** fault: an I/O error, an
//! unreadable reply, a call with no reply in time that a `PING` then confirms, a failed health
//! `PING` (every [`RedisConfig::health_interval`]), a failed reconnect of any kind (`AUTH`
//! refused, handshake cut short, connect timed out), retried for ever with a short backoff.
//! Every call is bounded by [`RedisConfig::timeout`] (a `tokio` timeout, which also bounds
//! waiting for a reconnect). A connection error is [`StoreError::Unavailable`], a slow answer
//! [`StoreError::Timeout`], an unreadable one [`StoreError::Corrupt`]: never a default value,
//! so a check can never read "allowed" from a failure. No restart is ever needed.
//!
//! Blocking `XREAD`s would stall every check queued behind them on a multiplexed connection,
//! so (standalone) they use dedicated connections from a small pool; a connection that failed or timed out
//! is dropped, idle ones are dropped when the shared connection was replaced, and the next read
//! opens a fresh one.
//!
//! Redis must run with `maxmemory-policy noeviction`: evicting a denial would turn it into
//! "no consent", and evicting a history would forget decisions and their de-duplication.
//! [`RedisStore::connect`] and [`ping`](RedisStore::ping) refuse any other policy. If
//! `CONFIG GET` is disabled or renamed, the policy cannot be verified and that is also refused
//! as misconfigured (the error says so): callgate does not run on an unverified policy.

pub mod cluster;
pub mod codec;
mod connection;
mod inspect;
pub mod keys;

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{
    Client, ErrorKind, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult, Script,
    ServerErrorKind, Value,
};
use tokio::time::Instant;

use super::{
    ConsentStore, Cursor, CursorError, DeliveryConflict, HistoryPage, LoggedEvent, RecordOutcome,
    StoreError, StreamId, check_deliveries,
};
use crate::domain::{Choice, ConsentEvent, Decision, Pair};
use cluster::{Conn, Lanes};
use connection::{BlockingPool, Lease, SharedConnection, Verdict};
use keys::Keys;

pub use inspect::{KindUsage, MemoryReport, MemoryUsage, RedisAddress};
pub use keys::SHARDS;

const RECORD_LUA: &str = include_str!("record.lua");
const CLAIM_EXPIRED_LUA: &str = include_str!("claim_expired.lua");

/// Lapsed grants claimed per shard per script call, so one call never blocks Redis for long.
const CLAIM_BATCH: usize = 500;
/// Bound on claim rounds per [`RedisStore::claim_expired`] call; the sweep runs again soon.
const CLAIM_MAX_ROUNDS: usize = 20;
/// On a cluster, how often a waiting event-log read looks again (see `read_events`).
const CLUSTER_POLL: Duration = Duration::from_millis(20);

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; for a cluster, any of its nodes' URLs, separated
    /// by commas. May hold passwords: never printed by `Debug`.
    pub url: String,
    /// `url` names nodes of a Redis Cluster (`CALLGATE_REDIS_CLUSTER_NODES`).
    pub cluster: bool,
    /// A decision is acknowledged only once this many replicas hold it (`WAIT`, on the write's
    /// own connection); fewer within the store timeout is an error (HTTP 503). 0: once the
    /// master holds it.
    pub replica_acks: u32,
    /// Start of every key name, so several deployments can share one Redis.
    pub prefix: String,
    /// Bound on every call (and on connecting). A check that cannot be answered in time fails.
    pub timeout: Duration,
    /// How often the shared connection is `PING`ed, so a wedged one is replaced even when idle.
    pub health_interval: Duration,
    /// Events older than this are trimmed from the log.
    pub event_retention: Duration,
}

impl RedisConfig {
    pub const DEFAULT_PREFIX: &'static str = "callgate";
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
    pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A config with every default but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            cluster: false,
            replica_acks: 0,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            timeout: Self::DEFAULT_TIMEOUT,
            health_interval: Self::DEFAULT_HEALTH_INTERVAL,
            event_retention: Self::DEFAULT_EVENT_RETENTION,
        }
    }

    /// The URL with any password replaced by `***`.
    /// A config for a Redis Cluster reached through `nodes` (comma-separated URLs of any of
    /// its nodes), with every other default.
    pub fn cluster(nodes: impl Into<String>) -> Self {
        RedisConfig {
            cluster: true,
            ..Self::new(nodes)
        }
    }

    /// The URL (each URL of a node list) with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(redact_url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("cluster", &self.cluster)
            .field("replica_acks", &self.replica_acks)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("health_interval", &self.health_interval)
            .field("event_retention", &self.event_retention)
            .finish()
    }
}

/// Masks the password of `scheme://user:password@host…` (keeps the user name).
fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let masked = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            // `redis://secret@host`: a lone userinfo is a password for Redis.
            None if !userinfo.is_empty() => format!("***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{masked}{tail}"),
        None => format!("{masked}{tail}"),
    }
}

/// The Redis consent store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RedisStore {
    config: RedisConfig,
    keys: Keys,
    backend: Backend,
    record_script: Script,
    claim_script: Script,
    /// Stream keys in shard order, for XREAD.
    streams: Vec<String>,
    /// Trimmed-id marks in shard order, for the range check of `read_events`.
    trimmed: Vec<String>,
}

/// How the store reaches Redis.
enum Backend {
    /// One Redis (or a primary with replicas).
    Single {
        /// Checks, reads, and writes when no replica acknowledgement is asked for.
        conn: SharedConnection,
        /// Writes when replica acks are asked for: `WAIT` holds its connection until the
        /// replicas answer, and checks must never queue behind it.
        writer: Option<SharedConnection>,
        /// Dedicated connections for blocking `XREAD`s.
        blocking: Box<BlockingPool>,
    },
    /// A Redis Cluster: connections by shard (see [`Lanes`]), for checks and for writes.
    Cluster { conn: Lanes, writer: Lanes },
}

/// Which connection a call needs: one shard's, or any (keyless commands, and on a standalone
/// Redis everything).
#[derive(Debug, Clone, Copy)]
enum Route {
    Shard(usize),
    Keyless,
}

impl Route {
    fn on(self, lanes: &Lanes) -> &Conn {
        match self {
            Route::Shard(s) => lanes.shard(s),
            Route::Keyless => lanes.keyless(),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Maps a redis-rs error to a store error. Never to a value.
fn map_error(e: RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    // The scripts answer `CORRUPT …` when a stored value has no readable header.
    if has_code(&e, "CORRUPT") {
        return StoreError::Corrupt(e.to_string());
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// True if the error, or any command's error in a failed pipeline or transaction, has `code`.
fn has_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == code))
}

/// True for an error the server answered (`ERR …`, `NOPERM …`), as opposed to a connection
/// failure, a timeout or a cluster redirection.
fn is_reply_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}

/// `CONFIG GET` refused (disabled or renamed, as on some managed Redis offerings): the policy
/// cannot be verified, and callgate refuses to run on an unverified one.
fn unverifiable_policy(e: &RedisError) -> StoreError {
    StoreError::Misconfigured(format!(
        "cannot verify maxmemory-policy (CONFIG GET failed: {e}); callgate needs noeviction, \
         because an evicted denial would read as no consent"
    ))
}

/// Redis lost the scripts (it restarted, or `SCRIPT FLUSH`): load them and try again.
fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || has_code(e, "NOSCRIPT")
}

impl RedisStore {
    /// Connects, checks that Redis is usable (see [`ping`](ConsentStore::ping): refuses a
    /// `maxmemory-policy` other than `noeviction`), and loads the scripts.
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let backend = if config.cluster {
            Self::connect_cluster(&config).await?
        } else {
            Self::connect_single(&config).await?
        };
        let keys = Keys::new(&config.prefix);
        let store = RedisStore {
            streams: (0..SHARDS).map(|s| keys.stream(s)).collect(),
            trimmed: (0..SHARDS).map(|s| keys.trimmed(s)).collect(),
            keys,
            backend,
            record_script: Script::new(RECORD_LUA),
            claim_script: Script::new(CLAIM_EXPIRED_LUA),
            config,
        };
        store.ping().await?;
        store.load_scripts().await?;
        Ok(store)
    }

    fn bad_url(config: &RedisConfig) -> impl Fn(RedisError) -> StoreError + '_ {
        move |e| {
            StoreError::Misconfigured(format!(
                "cannot use Redis URL {}: {e}",
                config.redacted_url()
            ))
        }
    }

    async fn connect_single(config: &RedisConfig) -> Result<Backend, StoreError> {
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(Self::bad_url(config))?;
        let client = Client::open(connection::tcp_settings(info)).map_err(Self::bad_url(config))?;
        let settings = connection::Settings {
            client,
            connect_timeout: config.timeout,
            response_timeout: config.timeout,
            health_interval: config.health_interval,
        };
        let conn = SharedConnection::start(settings.clone()).await?;
        let writer = if config.replica_acks > 0 {
            Some(SharedConnection::start(settings.clone()).await?)
        } else {
            None
        };
        Ok(Backend::Single {
            conn,
            writer,
            blocking: Box::new(BlockingPool::new(settings)),
        })
    }

    /// A Redis Cluster: a cluster connection per third of the shards and one for keyless
    /// commands (see [`Lanes`]); as many again for writes when replica acks are asked for.
    async fn connect_cluster(config: &RedisConfig) -> Result<Backend, StoreError> {
        let nodes = cluster::node_list(&config.url);
        if nodes.is_empty() {
            return Err(StoreError::Misconfigured(
                "no Redis Cluster node given (CALLGATE_REDIS_CLUSTER_NODES is empty)".into(),
            ));
        }
        let client = cluster::client(&nodes, config.timeout).map_err(Self::bad_url(config))?;
        let connect = || async {
            match cluster::ClusterHandle::connect(client.clone(), config.timeout * 4).await {
                Ok(handle) => Ok(Conn(handle)),
                Err(cluster::ConnectError::Redis(e)) => Err(map_error(e, config.timeout)),
                Err(cluster::ConnectError::Timeout) => Err(StoreError::Timeout(config.timeout * 4)),
            }
        };
        let mut by_third = Vec::new();
        for _ in 0..3 {
            by_third.push(connect().await?);
        }
        let keyless = connect().await?;
        let writer = if config.replica_acks > 0 {
            let mut writers = Vec::new();
            for _ in 0..3 {
                writers.push(connect().await?);
            }
            Lanes::cluster(writers, keyless.clone(), SHARDS)
        } else {
            Lanes::cluster(by_third.clone(), keyless.clone(), SHARDS)
        };
        Ok(Backend::Cluster {
            conn: Lanes::cluster(by_third, keyless, SHARDS),
            writer,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// True when the store runs on a Redis Cluster.
    fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// One call on the shared standalone connection `conn`, bounded by `deadline`. `Err` if no
    /// connection could be leased or no answer came in time; otherwise Redis's answer, whose
    /// failure (if any) was reported to the connection's supervisor.
    async fn attempt<T: FromRedisValue>(
        &self,
        conn: &SharedConnection,
        call: Call<'_>,
        deadline: Instant,
    ) -> Result<RedisResult<T>, StoreError> {
        let lease = conn.lease(deadline).await?;
        self.attempt_on(lease, call, deadline).await.1
    }

    /// [`attempt`](Self::attempt) on a leased connection; gives the lease back too.
    async fn attempt_on<'s, T: FromRedisValue>(
        &'s self,
        mut lease: Lease<'s>,
        call: Call<'_>,
        deadline: Instant,
    ) -> (Lease<'s>, Result<RedisResult<T>, StoreError>) {
        let query = async {
            match call {
                Call::Cmd(cmd) => cmd.query_async::<T>(&mut lease.conn).await,
                Call::Pipe(pipe) => pipe.query_async::<T>(&mut lease.conn).await,
            }
        };
        let outcome = match tokio::time::timeout_at(deadline, query).await {
            Ok(result) => {
                if let Err(e) = &result {
                    lease.report_error(e);
                }
                Ok(result)
            }
            Err(_) => {
                lease.report(Verdict::Suspect, || {
                    format!("no reply within {:?}", self.config.timeout)
                });
                Err(StoreError::Timeout(self.config.timeout))
            }
        };
        (lease, outcome)
    }

    /// One call on a cluster connection, bounded by `deadline`. A failure or a timeout is
    /// reported to the connection ([`Conn::suspect`]).
    async fn attempt_cluster<T: FromRedisValue>(
        &self,
        conn: &Conn,
        call: Call<'_>,
        deadline: Instant,
    ) -> Result<RedisResult<T>, StoreError> {
        let mut c = conn.clone();
        let query = async {
            match call {
                Call::Cmd(cmd) => cmd.query_async::<T>(&mut c).await,
                Call::Pipe(pipe) => pipe.query_async::<T>(&mut c).await,
            }
        };
        match tokio::time::timeout_at(deadline, query).await {
            Ok(result) => {
                if let Err(e) = &result
                    && Verdict::of(e) != Verdict::Healthy
                {
                    conn.suspect();
                }
                Ok(result)
            }
            Err(_) => {
                conn.suspect();
                Err(StoreError::Timeout(self.config.timeout))
            }
        }
    }

    /// Runs a read. Reads are idempotent, so a call whose connection broke (Redis restarted
    /// or failed over since the last call) is retried once on the connection put in its place;
    /// both attempts share the one store timeout. Writes are not retried: a lost reply would
    /// turn "applied" into "duplicate".
    async fn read<T: FromRedisValue>(&self, route: Route, call: Call<'_>) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.config.timeout;
        match &self.backend {
            Backend::Single { conn, .. } => {
                let lease = conn.lease(deadline).await?;
                let (lease, first) = self.attempt_on::<T>(lease, call, deadline).await;
                match first? {
                    Err(e) if Verdict::of(&e) == Verdict::Broken => {
                        let fresh = conn.lease_replacing(&lease, deadline).await?;
                        self.attempt_on::<T>(fresh, call, deadline)
                            .await
                            .1?
                            .map_err(|e| map_error(e, self.config.timeout))
                    }
                    result => result.map_err(|e| map_error(e, self.config.timeout)),
                }
            }
            Backend::Cluster { conn, .. } => {
                let conn = route.on(conn);
                match self.attempt_cluster::<T>(conn, call, deadline).await? {
                    Err(e) if Verdict::of(&e) == Verdict::Broken => self
                        .attempt_cluster::<T>(conn, call, deadline)
                        .await?
                        .map_err(|e| map_error(e, self.config.timeout)),
                    result => result.map_err(|e| map_error(e, self.config.timeout)),
                }
            }
        }
    }

    async fn read_cmd<T: FromRedisValue>(
        &self,
        route: Route,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.read(route, Call::Cmd(cmd)).await
    }

    async fn read_pipe<T: FromRedisValue>(
        &self,
        route: Route,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.read(route, Call::Pipe(pipe)).await
    }

    /// One call on the connection `route` and `write` choose (writes go to the write
    /// connections), bounded by the store timeout.
    async fn attempt_routed<T: FromRedisValue>(
        &self,
        route: Route,
        write: bool,
        call: Call<'_>,
    ) -> Result<RedisResult<T>, StoreError> {
        let deadline = Instant::now() + self.config.timeout;
        match &self.backend {
            Backend::Single { conn, writer, .. } => {
                let conn = if write {
                    writer.as_ref().unwrap_or(conn)
                } else {
                    conn
                };
                self.attempt(conn, call, deadline).await
            }
            Backend::Cluster { conn, writer } => {
                let lanes = if write { writer } else { conn };
                self.attempt_cluster(route.on(lanes), call, deadline).await
            }
        }
    }

    /// Loads every script into Redis's script cache (done at connect, and again after a
    /// `NOSCRIPT`, e.g. when Redis restarted). On a cluster each `SCRIPT LOAD` goes alone, so
    /// redis-rs sends it to every master (a keyless pipeline would reach one node only); a
    /// replica promoted later answers `NOSCRIPT` and gets them then.
    async fn load_scripts(&self) -> Result<(), StoreError> {
        if self.is_cluster() {
            for source in [RECORD_LUA, CLAIM_EXPIRED_LUA] {
                let mut load = redis::cmd("SCRIPT");
                load.arg("LOAD").arg(source);
                self.attempt_routed::<String>(Route::Keyless, false, Call::Cmd(&load))
                    .await?
                    .map_err(|e| map_error(e, self.config.timeout))?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.load_script(&self.record_script)
            .load_script(&self.claim_script);
        self.attempt_routed::<Vec<String>>(Route::Keyless, false, Call::Pipe(&pipe))
            .await?
            .map(drop)
            .map_err(|e| map_error(e, self.config.timeout))
    }

    /// Runs a pipeline of script calls (on a write connection if `write`), reloading the
    /// scripts once if Redis lost them (a restart, or a replica promoted on a cluster).
    async fn query_scripts<T: FromRedisValue>(
        &self,
        route: Route,
        write: bool,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let first = self
            .attempt_routed::<T>(route, write, Call::Pipe(pipe))
            .await?;
        match first {
            Ok(v) => Ok(v),
            Err(e) if is_noscript(&e) => {
                self.load_scripts().await?;
                self.attempt_routed::<T>(route, write, Call::Pipe(pipe))
                    .await?
                    .map_err(|e| map_error(e, self.config.timeout))
            }
            Err(e) => Err(map_error(e, self.config.timeout)),
        }
    }

    /// Decodes a check's `MGET c: x:` of `pair`: the consent key when present, else the lapse
    /// record (a temporary grant whose consent key expired natively), else no decision. The two
    /// must agree (the lapse record exists exactly while the current decision is a temporary
    /// grant, and then holds the same value); anything else is corrupt, never a default.
    fn decode_current(
        pair: &Pair,
        consent: Option<Vec<u8>>,
        lapse: Option<Vec<u8>>,
    ) -> Result<Option<Decision>, StoreError> {
        let (value, from_lapse) = match (&consent, &lapse) {
            (Some(c), _) => (c, false),
            (None, Some(x)) => (x, true),
            (None, None) => return Ok(None),
        };
        let decision = codec::decode_consent(pair, value)?;
        let temporary = matches!(decision.choice, Choice::GrantTemporary { .. });
        let consistent = if from_lapse {
            temporary
        } else if temporary {
            lapse.as_deref() == Some(value.as_slice())
        } else {
            lapse.is_none()
        };
        if !consistent {
            return Err(StoreError::Corrupt(
                "consent key and lapse record disagree".into(),
            ));
        }
        Ok(Some(decision))
    }

    /// For a call of several decisions: reads the fingerprint stored under each one's id (one
    /// pipelined `HGET` each) and refuses the call before anything is written if one conflicts.
    /// On a cluster, one single-slot pipeline per shard, the shards at once.
    async fn precheck_deliveries(&self, decisions: &[Decision]) -> Result<(), StoreError> {
        let hget = |d: &Decision| {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys.pair(&d.pair).dedup)
                .arg(codec::dedup_bytes(d));
            cmd
        };
        let seen: Vec<Option<Vec<u8>>> = if self.is_cluster() {
            let groups = by_shard(decisions);
            let replies = all(&groups, |(shard, indices)| {
                let mut pipe = redis::pipe();
                for &i in indices {
                    pipe.add_command(hget(&decisions[i]));
                }
                async move {
                    self.read_pipe::<Vec<Option<Vec<u8>>>>(Route::Shard(*shard), &pipe)
                        .await
                }
            })
            .await;
            let mut seen = vec![None; decisions.len()];
            for ((_, indices), reply) in groups.iter().zip(replies) {
                let reply = reply?;
                if reply.len() != indices.len() {
                    return Err(corrupt_reply("HGET dedup"));
                }
                for (&i, f) in indices.iter().zip(reply) {
                    seen[i] = f;
                }
            }
            seen
        } else {
            let mut pipe = redis::pipe();
            for d in decisions {
                pipe.add_command(hget(d));
            }
            self.read_pipe(Route::Keyless, &pipe).await?
        };
        if seen.len() != decisions.len() {
            return Err(corrupt_reply("HGET dedup"));
        }
        let seen = seen
            .into_iter()
            .map(|f| {
                f.map(|f| <[u8; 8]>::try_from(f.as_slice()))
                    .transpose()
                    .map_err(|_| StoreError::Corrupt("dedup fingerprint".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_deliveries(decisions, &seen)?;
        Ok(())
    }

    fn outcome(decisions: &[Decision], i: usize, code: i64) -> Result<RecordOutcome, StoreError> {
        match code {
            0 => Ok(RecordOutcome::Applied),
            1 => Ok(RecordOutcome::Stale),
            2 => Ok(RecordOutcome::Duplicate),
            3 => Err(DeliveryConflict::of(decisions, i).into()),
            other => Err(StoreError::Corrupt(format!(
                "record script answered {other}"
            ))),
        }
    }
}

/// A command or a pipeline, to run on the shared connection.
#[derive(Clone, Copy)]
enum Call<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn corrupt_reply(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unexpected reply to {what}"))
}

fn stream_id_of(v: &Value, what: &str) -> Result<StreamId, StoreError> {
    bytes_of(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(StreamId::parse)
        .ok_or_else(|| corrupt_reply(what))
}

/// Pairs of a RESP2 flat array or a RESP3 map.
fn pairs_of(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(a) if a.len() % 2 == 0 => {
            Some(a.chunks(2).map(|kv| (&kv[0], &kv[1])).collect())
        }
        _ => None,
    }
}

/// Decodes one stream entry `[id, [field, value, ...]]`.
fn decode_entry(shard: usize, entry: &Value) -> Result<LoggedEvent, StoreError> {
    let Value::Array(parts) = entry else {
        return Err(corrupt_reply("stream entry"));
    };
    let [id, fields] = parts.as_slice() else {
        return Err(corrupt_reply("stream entry"));
    };
    let id = stream_id_of(id, "stream entry id")?;
    let (mut kind, mut decision) = (None, None);
    for (k, v) in pairs_of(fields).ok_or_else(|| corrupt_reply("stream entry fields"))? {
        match bytes_of(k) {
            Some(b"k") => kind = bytes_of(v),
            Some(b"d") => decision = bytes_of(v),
            _ => {}
        }
    }
    let (Some(kind), Some(decision)) = (kind, decision) else {
        return Err(StoreError::Corrupt(format!(
            "event {id} in shard {shard} lacks fields"
        )));
    };
    Ok(LoggedEvent {
        shard,
        id,
        event: codec::decode_event(kind, decision)?,
    })
}

/// Runs `f` for every item concurrently and collects the results in order.
async fn all<I, F, Fut, T>(items: I, f: F) -> Vec<T>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = T>,
{
    futures_util::future::join_all(items.into_iter().map(f)).await
}

/// The indices of `decisions` grouped by shard (shard order; each group in call order).
fn by_shard(decisions: &[Decision]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
    for (i, d) in decisions.iter().enumerate() {
        groups[keys::shard_of(&d.pair)].push(i);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .collect()
}

impl RedisStore {
    /// The `WAIT` timeout: half the store timeout, so the write before it and the round trip
    /// fit in the rest.
    fn wait_ms(&self) -> u64 {
        (self.config.timeout.as_millis() as u64 / 2).max(1)
    }

    /// Records `decisions` (given by index into `all`) with one pipeline on the write
    /// connection: one `record.lua` call each, inside `MULTI`/`EXEC` when `atomic`, then
    /// `WAIT replica_acks` when asked for. `WAIT` must follow `EXEC` (inside a transaction it
    /// does not block) and share the connection of the writes: it waits for this connection's
    /// writes. Returns one outcome per index, in order.
    async fn record_group(
        &self,
        all: &[Decision],
        indices: &[usize],
        received_at: DateTime<Utc>,
        atomic: bool,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        let received = codec::base36(received_at.timestamp_millis());
        let mut pipe = redis::pipe();
        if atomic {
            pipe.cmd("MULTI").ignore();
        }
        for &i in indices {
            let decision = &all[i];
            let k = self.keys.pair(&decision.pair);
            let event = ConsentEvent::for_applied(decision, received_at)
                .map(|e| codec::event_kind_code(e.kind))
                .unwrap_or("");
            let mut invocation = self.record_script.prepare_invoke();
            invocation
                .key(&k.consent)
                .key(&k.lapse)
                .key(&k.history)
                .key(&k.stream)
                .key(&k.due)
                .key(&k.trimmed)
                .key(&k.dedup)
                .arg(codec::encode_body(decision))
                .arg(codec::dedup_bytes(decision))
                .arg(&received)
                .arg(event)
                .arg(self.config.event_retention.as_millis() as u64)
                .arg(&k.member)
                .arg(decision.fingerprint().as_slice());
            pipe.invoke_script(&invocation);
            if atomic {
                pipe.ignore(); // `QUEUED`; the results come with EXEC.
            }
        }
        if atomic {
            pipe.cmd("EXEC");
        }
        let acks = self.config.replica_acks;
        if acks > 0 {
            pipe.cmd("WAIT").arg(acks).arg(self.wait_ms());
        }
        let shard = keys::shard_of(&all[indices[0]].pair);
        let mut replies: Vec<Value> = self.query_scripts(Route::Shard(shard), true, &pipe).await?;
        if acks > 0 {
            let acked: i64 = replies
                .pop()
                .and_then(|v| redis::from_redis_value(v).ok())
                .ok_or_else(|| corrupt_reply("WAIT"))?;
            if acked < i64::from(acks) {
                return Err(StoreError::Unavailable(format!(
                    "the write reached {acked} of the {acks} replicas required \
                     (CALLGATE_REDIS_REPLICA_ACKS) within {} ms; not acknowledged, the sender \
                     will retry",
                    self.wait_ms()
                )));
            }
        }
        let codes: Vec<i64> = if atomic {
            match replies.pop() {
                Some(exec) if replies.is_empty() => {
                    redis::from_redis_value(exec).map_err(|_| corrupt_reply("EXEC"))?
                }
                _ => return Err(corrupt_reply("EXEC")),
            }
        } else {
            replies
                .into_iter()
                .map(|v| redis::from_redis_value(v).map_err(|_| corrupt_reply("record")))
                .collect::<Result<_, _>>()?
        };
        if codes.len() != indices.len() {
            return Err(corrupt_reply("record"));
        }
        indices
            .iter()
            .zip(codes)
            .map(|(&i, code)| Self::outcome(all, i, code))
            .collect()
    }

    /// Reads shard `shard`'s events after `after` (without blocking) and its trimmed mark, in
    /// one single-slot pipeline; fails with `OutOfRange` if events after `after` were trimmed.
    async fn read_shard(
        &self,
        shard: usize,
        after: StreamId,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&self.trimmed[shard]);
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(limit)
            .arg("STREAMS")
            .arg(&self.streams[shard])
            .arg(after.to_string());
        let (trimmed, reply): (Option<String>, Value) =
            self.read_pipe(Route::Shard(shard), &pipe).await?;
        if let Some(id) = trimmed {
            let id = StreamId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}")))?;
            if after < id {
                return Err(CursorError::OutOfRange { shard }.into());
            }
        }
        let mut events = Vec::new();
        self.decode_xread(&reply, &mut events)?;
        Ok(events)
    }

    /// Appends the events of an `XREAD` reply (RESP2 or RESP3) to `events`.
    fn decode_xread(&self, reply: &Value, events: &mut Vec<LoggedEvent>) -> Result<(), StoreError> {
        let streams: Vec<(&Value, &Value)> = match reply {
            Value::Nil => Vec::new(),
            // RESP3: a map of key to entries.
            Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            // RESP2: an array of [key, entries] arrays.
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| corrupt_reply("XREAD"))?,
            _ => return Err(corrupt_reply("XREAD")),
        };
        for (key, entries) in streams {
            let shard = bytes_of(key)
                .and_then(|k| self.streams.iter().position(|s| s.as_bytes() == k))
                .ok_or_else(|| corrupt_reply("XREAD stream key"))?;
            let Value::Array(entries) = entries else {
                return Err(corrupt_reply("XREAD entries"));
            };
            for entry in entries {
                events.push(decode_entry(shard, entry)?);
            }
        }
        Ok(())
    }

    /// Standalone: every shard in one `XREAD` (blocking if asked to) on a dedicated
    /// connection, pipelined after one `MGET` of every shard's trimmed mark.
    async fn read_events_single(
        &self,
        shared: &SharedConnection,
        blocking: &BlockingPool,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        // One round trip: the range check (the newest trimmed id of every shard), then the
        // read, blocking if asked to. If the cursor is out of range, retained events follow
        // it (a trim never removes the entry just added), so the XREAD returns at once.
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(limit);
        let block_ms = wait.as_millis().min(u128::from(u32::MAX)) as u64;
        if block_ms > 0 {
            xread.arg("BLOCK").arg(block_ms);
        }
        xread.arg("STREAMS").arg(&self.streams);
        for id in after.ids() {
            xread.arg(id.to_string());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&self.trimmed).add_command(xread);

        let bound = wait + self.config.timeout;
        let (trimmed, reply) = loop {
            let epoch = shared.replacements();
            let (mut conn, reused) = blocking.take(epoch).await?;
            match tokio::time::timeout(
                bound,
                pipe.query_async::<(Vec<Option<String>>, Value)>(&mut conn),
            )
            .await
            {
                Ok(Ok(v)) => {
                    blocking.give_back(conn, epoch);
                    break v;
                }
                // An idle connection may have died with a Redis restart: the read is
                // idempotent, so try once more on a fresh connection.
                Ok(Err(e)) if reused && Verdict::of(&e) == Verdict::Broken => {}
                Ok(Err(e)) => return Err(map_error(e, self.config.timeout)),
                // The connection still owes the reply: it is dropped, not reused.
                Err(_) => return Err(StoreError::Timeout(bound)),
            }
        };

        if trimmed.len() != SHARDS {
            return Err(corrupt_reply("MGET trimmed"));
        }
        for (shard, id) in trimmed.iter().enumerate() {
            let Some(id) = id else { continue };
            let id = StreamId::parse(id)
                .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}")))?;
            if after.get(shard) < id {
                return Err(CursorError::OutOfRange { shard }.into());
            }
        }
        let mut events = Vec::new();
        self.decode_xread(&reply, &mut events)?;
        Ok(events)
    }

    /// Cluster: an `XREAD` cannot span slots, so each shard is read by itself (one
    /// single-slot pipeline per shard, all at once, none blocking: a blocking read would hold
    /// its node's shared connection, and every check to that node would queue behind it).
    /// To wait for a new event the read is repeated every [`CLUSTER_POLL`] until `wait` ends.
    async fn read_events_cluster(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut events = Vec::new();
            for shard in all(0..SHARDS, |s| self.read_shard(s, after.get(s), limit)).await {
                events.extend(shard?);
            }
            let now = tokio::time::Instant::now();
            if !events.is_empty() || now >= deadline {
                return Ok(events);
            }
            tokio::time::sleep(CLUSTER_POLL.min(deadline - now)).await;
        }
    }

    /// Claims lapsed grants of one shard, in rounds of at most [`CLAIM_BATCH`].
    async fn claim_shard(&self, shard: usize, now_ms: i64) -> Result<usize, StoreError> {
        let prefix = self.keys.shard_prefix(shard);
        let due = self.keys.due(shard);
        let retention = self.config.event_retention.as_millis() as u64;
        let mut published = 0;
        for _ in 0..CLAIM_MAX_ROUNDS {
            let mut invocation = self.claim_script.prepare_invoke();
            invocation
                .key(&due)
                .key(&self.streams[shard])
                .key(&self.trimmed[shard])
                .arg(now_ms)
                .arg(CLAIM_BATCH)
                .arg(&prefix)
                .arg(retention);
            let mut pipe = redis::pipe();
            pipe.invoke_script(&invocation);
            let (p, claimed): (usize, usize) = self
                .query_scripts::<Vec<(usize, usize)>>(Route::Shard(shard), false, &pipe)
                .await?
                .pop()
                .ok_or_else(|| corrupt_reply("claim"))?;
            published += p;
            if claimed < CLAIM_BATCH {
                break;
            }
        }
        Ok(published)
    }

    /// The newest id of shard `shard`'s stream (zero if empty).
    async fn head_of(&self, shard: usize) -> Result<StreamId, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.streams[shard])
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let reply: Value = self.read_cmd(Route::Shard(shard), &cmd).await?;
        newest_id(&reply)
    }

    /// [`ConsentStore::current_each`] on a cluster: one single-slot `MGET` per shard, all at
    /// once, each bounded by the store timeout. A shard that fails (its master died and its
    /// replica is not yet promoted) fails only its own pairs.
    async fn current_each_cluster(
        &self,
        pairs: &[Pair],
    ) -> Vec<Result<Option<Decision>, StoreError>> {
        let mut mgets: Vec<Option<redis::Cmd>> = vec![None; SHARDS];
        let mut asked: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, pair) in pairs.iter().enumerate() {
            let (shard, consent, lapse) = self.keys.current(pair);
            mgets[shard]
                .get_or_insert_with(|| redis::cmd("MGET"))
                .arg(consent)
                .arg(lapse);
            asked[shard].push(i);
        }
        let groups: Vec<(usize, Vec<usize>, redis::Cmd)> = asked
            .into_iter()
            .zip(mgets)
            .enumerate()
            .filter_map(|(shard, (indices, cmd))| cmd.map(|c| (shard, indices, c)))
            .collect();
        let replies = all(&groups, |(shard, _, cmd)| {
            self.read_cmd::<Vec<Option<Vec<u8>>>>(Route::Shard(*shard), cmd)
        })
        .await;
        let mut out: Vec<Result<Option<Decision>, StoreError>> =
            (0..pairs.len()).map(|_| Ok(None)).collect();
        for ((_, indices, _), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(values) if values.len() == 2 * indices.len() => {
                    let mut values = values.into_iter();
                    for &i in indices {
                        let (consent, lapse) = (values.next().flatten(), values.next().flatten());
                        out[i] = Self::decode_current(&pairs[i], consent, lapse);
                    }
                }
                Ok(_) => indices
                    .iter()
                    .for_each(|&i| out[i] = Err(corrupt_reply("MGET current"))),
                Err(e) => indices.iter().for_each(|&i| out[i] = Err(e.clone())),
            }
        }
        out
    }
}

impl RedisStore {
    /// Readiness of a degraded cluster: `Ok` if the first shard of any lane (any master of a
    /// default cluster) answers a read, else `failure`.
    async fn any_shard_answers(&self, failure: StoreError) -> Result<(), StoreError> {
        let per_lane = SHARDS / 3;
        let answers = all((0..3).map(|lane| lane * per_lane), |shard| {
            let mut get = redis::cmd("GET");
            get.arg(&self.trimmed[shard]);
            async move {
                self.read_cmd::<Option<String>>(Route::Shard(shard), &get)
                    .await
            }
        })
        .await;
        if answers.iter().any(Result::is_ok) {
            tracing::warn!(error = %failure, "a Redis Cluster master is unreachable; serving the others");
            Ok(())
        } else {
            Err(failure)
        }
    }
}

/// The id of the one entry of an `XREVRANGE … COUNT 1` reply, zero for an empty stream.
fn newest_id(reply: &Value) -> Result<StreamId, StoreError> {
    match reply {
        Value::Array(entries) => match entries.first() {
            None => Ok(StreamId::ZERO),
            Some(Value::Array(entry)) => entry
                .first()
                .map(|id| stream_id_of(id, "XREVRANGE id"))
                .unwrap_or_else(|| Err(corrupt_reply("XREVRANGE"))),
            Some(_) => Err(corrupt_reply("XREVRANGE")),
        },
        _ => Err(corrupt_reply("XREVRANGE")),
    }
}

#[async_trait]
impl ConsentStore for RedisStore {
    async fn record(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        if decisions.is_empty() {
            return Ok(Vec::new());
        }
        // A conflict anywhere in the call must store nothing. One decision is checked inside
        // its script; several are checked first, in one round trip per shard (see the module
        // docs for the one race this leaves).
        if decisions.len() > 1 {
            self.precheck_deliveries(decisions).await?;
        }
        if !self.is_cluster() {
            // Standalone Redis: all decisions in one MULTI/EXEC, applied together or (on a
            // connection error before EXEC) not at all.
            let indices: Vec<usize> = (0..decisions.len()).collect();
            return self
                .record_group(decisions, &indices, received_at, decisions.len() > 1)
                .await;
        }
        // Cluster: a transaction cannot span slots. Each shard's decisions go in one
        // single-slot pipeline (in order, so a pair's decisions keep their order), the shards
        // at once. Each decision is atomic by itself; the call is acknowledged only if every
        // shard's were stored (and replicated, with replica acks). If one shard fails, the
        // call fails, the sender retries it, and the decisions already stored are recognised
        // as duplicates: all or none acknowledged, not all or none stored.
        let groups = by_shard(decisions);
        let results = all(&groups, |(_, g)| {
            self.record_group(decisions, g, received_at, false)
        })
        .await;
        let mut out = vec![RecordOutcome::Duplicate; decisions.len()];
        for ((_, group), result) in groups.iter().zip(results) {
            for (&i, outcome) in group.iter().zip(result?) {
                out[i] = outcome;
            }
        }
        Ok(out)
    }

    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError> {
        let (shard, consent, lapse) = self.keys.current(pair);
        let mut values: Vec<Option<Vec<u8>>> = self
            .read_cmd(
                Route::Shard(shard),
                redis::cmd("MGET").arg(consent).arg(lapse),
            )
            .await?;
        match (values.pop(), values.pop(), values.is_empty()) {
            (Some(lapse), Some(consent), true) => Self::decode_current(pair, consent, lapse),
            _ => Err(corrupt_reply("MGET current")),
        }
    }

    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            return self.current_each_cluster(pairs).await.into_iter().collect();
        }
        // One MGET per shard with every c:/x: key of that shard's pairs (one slot each), all
        // in one pipeline; `asked[s]` remembers which requests shard `s`'s MGET answers.
        let mut mgets: Vec<Option<redis::Cmd>> = vec![None; SHARDS];
        let mut asked: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, pair) in pairs.iter().enumerate() {
            let (shard, consent, lapse) = self.keys.current(pair);
            mgets[shard]
                .get_or_insert_with(|| redis::cmd("MGET"))
                .arg(consent)
                .arg(lapse);
            asked[shard].push(i);
        }
        let mut pipe = redis::pipe();
        for cmd in mgets.into_iter().flatten() {
            pipe.add_command(cmd);
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> = self.read_pipe(Route::Keyless, &pipe).await?;
        let asked: Vec<Vec<usize>> = asked.into_iter().filter(|a| !a.is_empty()).collect();
        if replies.len() != asked.len() {
            return Err(corrupt_reply("MGET current"));
        }
        let mut out: Vec<Option<Decision>> = vec![None; pairs.len()];
        for (indices, values) in asked.iter().zip(replies) {
            if values.len() != 2 * indices.len() {
                return Err(corrupt_reply("MGET current"));
            }
            let mut values = values.into_iter();
            for &i in indices {
                let (consent, lapse) = (values.next().flatten(), values.next().flatten());
                out[i] = Self::decode_current(&pairs[i], consent, lapse)?;
            }
        }
        Ok(out)
    }

    async fn current_each(&self, pairs: &[Pair]) -> Vec<Result<Option<Decision>, StoreError>> {
        if self.is_cluster() {
            return self.current_each_cluster(pairs).await;
        }
        // One Redis: one pipeline, so it answers for all pairs or fails for all.
        match self.current_many(pairs).await {
            Ok(answers) => answers.into_iter().map(Ok).collect(),
            Err(e) => pairs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let k = self.keys.pair(pair);
        let limit = limit.max(1);
        // One entry more than asked, to know whether another page follows.
        let last = start.saturating_add(limit);
        let mut entries: Vec<Vec<u8>> = self
            .read_cmd(
                Route::Shard(k.shard),
                redis::cmd("LRANGE").arg(&k.history).arg(start).arg(last),
            )
            .await?;
        let next = (entries.len() > limit).then_some(last);
        entries.truncate(limit);
        Ok(HistoryPage {
            entries: entries
                .iter()
                .map(|e| codec::decode_history(pair, e))
                .collect::<Result<_, _>>()?,
            next,
        })
    }

    fn shards(&self) -> usize {
        SHARDS
    }

    async fn read_events(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        after.expect_shards(SHARDS)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut events = match &self.backend {
            Backend::Single { conn, blocking, .. } => {
                self.read_events_single(conn, blocking, after, limit, wait)
                    .await?
            }
            Backend::Cluster { .. } => self.read_events_cluster(after, limit, wait).await?,
        };
        // Merge the shards by log position: ids are stamped by the masters' clocks (one clock
        // on a standalone Redis), so (id, shard) order is the order events were logged. COUNT
        // applies per stream; the first `limit` of the merge are all among the shards' first
        // `limit`, and they keep a
        // prefix of every shard's events, so a cursor advanced over them misses nothing.
        events.sort_by_key(|e| (e.id, e.shard));
        events.truncate(limit);
        Ok(events)
    }

    async fn retained_from(&self) -> Result<Cursor, StoreError> {
        let trimmed: Vec<Option<String>> = if self.is_cluster() {
            // One slot per shard: one GET each, all at once.
            all(0..SHARDS, |s| {
                let mut get = redis::cmd("GET");
                get.arg(&self.trimmed[s]);
                async move { self.read_cmd::<Option<String>>(Route::Shard(s), &get).await }
            })
            .await
            .into_iter()
            .collect::<Result<_, _>>()?
        } else {
            self.read_cmd(Route::Keyless, redis::cmd("MGET").arg(&self.trimmed))
                .await?
        };
        if trimmed.len() != SHARDS {
            return Err(corrupt_reply("MGET trimmed"));
        }
        let ids = trimmed
            .iter()
            .map(|id| match id {
                None => Ok(StreamId::ZERO),
                Some(id) => StreamId::parse(id)
                    .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cursor::from_ids(ids))
    }

    async fn head(&self) -> Result<Cursor, StoreError> {
        if self.is_cluster() {
            let ids = all(0..SHARDS, |s| self.head_of(s))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Cursor::from_ids(ids));
        }
        let mut pipe = redis::pipe();
        for key in &self.streams {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = self.read_pipe(Route::Keyless, &pipe).await?;
        if replies.len() != SHARDS {
            return Err(corrupt_reply("XREVRANGE"));
        }
        let ids = replies
            .iter()
            .map(newest_id)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cursor::from_ids(ids))
    }

    async fn claim_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now_ms = now.timestamp_millis();
        if self.is_cluster() {
            // Each shard by itself (one slot each): a shard whose master is failing over
            // does not hold back the others' expiries; its lapses are claimed by a later
            // sweep.
            let mut published = 0;
            let mut failed = None;
            for result in all(0..SHARDS, |s| self.claim_shard(s, now_ms)).await {
                match result {
                    Ok(n) => published += n,
                    Err(e) => failed = Some(e),
                }
            }
            return match failed {
                Some(e) => Err(e),
                None => Ok(published),
            };
        }
        let retention = self.config.event_retention.as_millis() as u64;
        let prefixes: Vec<String> = (0..SHARDS).map(|s| self.keys.shard_prefix(s)).collect();
        let dues: Vec<String> = (0..SHARDS).map(|s| self.keys.due(s)).collect();
        let mut published = 0;
        for _ in 0..CLAIM_MAX_ROUNDS {
            // One script per shard, all in one pipeline (not a transaction: each shard's
            // claim is atomic by itself).
            let mut pipe = redis::pipe();
            for shard in 0..SHARDS {
                let mut invocation = self.claim_script.prepare_invoke();
                invocation
                    .key(&dues[shard])
                    .key(&self.streams[shard])
                    .key(&self.trimmed[shard])
                    .arg(now_ms)
                    .arg(CLAIM_BATCH)
                    .arg(&prefixes[shard])
                    .arg(retention);
                pipe.invoke_script(&invocation);
            }
            let replies: Vec<(usize, usize)> =
                self.query_scripts(Route::Keyless, false, &pipe).await?;
            published += replies.iter().map(|(p, _)| p).sum::<usize>();
            if replies.iter().all(|(_, claimed)| *claimed < CLAIM_BATCH) {
                break;
            }
        }
        Ok(published)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let replies = match &self.backend {
            Backend::Single { conn, .. } => {
                let pong: String = self.read_cmd(Route::Keyless, &redis::cmd("PING")).await?;
                if pong != "PONG" {
                    return Err(corrupt_reply("PING"));
                }
                let mut config_get = redis::cmd("CONFIG");
                config_get.arg("GET").arg("maxmemory-policy");
                let reply = self
                    .attempt::<Value>(
                        conn,
                        Call::Cmd(&config_get),
                        Instant::now() + self.config.timeout,
                    )
                    .await?;
                match reply {
                    Ok(v) => vec![("redis".to_owned(), v)],
                    // Not an answer from Redis: the connection failed, not the command.
                    Err(e) if Verdict::of(&e) != Verdict::Healthy => {
                        return Err(map_error(e, self.config.timeout));
                    }
                    Err(e) => return Err(unverifiable_policy(&e)),
                }
            }
            Backend::Cluster { conn, .. } => {
                // Every master must refuse to evict.
                let mut get = redis::cmd("CONFIG");
                get.arg("GET").arg("maxmemory-policy");
                let mut keyless = conn.keyless().clone();
                let replies =
                    tokio::time::timeout(self.config.timeout, keyless.on_every_master(&get)).await;
                match replies {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) if is_reply_error(&e) => return Err(unverifiable_policy(&e)),
                    // A cluster with a master down (or failing over) still serves the other
                    // masters' shards: it is ready if any shard answers. The dead master's
                    // policy is checked again once it (or its promoted replica) answers.
                    Ok(Err(e)) => {
                        return self
                            .any_shard_answers(map_error(e, self.config.timeout))
                            .await;
                    }
                    Err(_) => {
                        return self
                            .any_shard_answers(StoreError::Timeout(self.config.timeout))
                            .await;
                    }
                }
            }
        };
        for (node, reply) in &replies {
            let policy = pairs_of(reply)
                .and_then(|pairs| {
                    pairs
                        .into_iter()
                        .find(|(k, _)| bytes_of(k) == Some(b"maxmemory-policy"))
                        .and_then(|(_, v)| bytes_of(v))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_else(|| "unknown".to_owned());
            if policy != "noeviction" {
                let (on, every) = if self.is_cluster() {
                    (format!(" on master {node}"), " on every master")
                } else {
                    (String::new(), "")
                };
                return Err(StoreError::Misconfigured(format!(
                    "maxmemory-policy is {policy}{on}; callgate needs noeviction, because an \
                     evicted denial would read as no consent (set `maxmemory-policy \
                     noeviction`{every})"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_password() {
        let cases = [
            ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
            ("redis://user:secret@host", "redis://user:***@host"),
            ("rediss://secret@host/1", "rediss://***@host/1"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://:p@ss@host", "redis://:***@host"),
        ];
        for (url, want) in cases {
            let config = RedisConfig::new(url);
            let debug = format!("{config:?}");
            assert!(!debug.contains("secret"), "{debug}");
            assert_eq!(config.redacted_url(), want, "{url}");
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = RedisConfig::new("redis://localhost");
        assert_eq!(c.prefix, "callgate");
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.event_retention, Duration::from_secs(7 * 24 * 3600));
    }
}
