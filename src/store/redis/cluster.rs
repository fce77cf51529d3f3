//! How callgate reaches a Redis Cluster (a standalone Redis is reached through `connection`).
//!
//! [`Conn`] is a redis-rs cluster connection (one multiplexed connection per node, routing each
//! command or pipeline by its first key's slot, following `MOVED`/`ASK` and refreshing the slot
//! map after a failover) that replaces itself when it keeps failing; [`Lanes`] gives each
//! master's shards a `Conn` of their own. Pipelines must stay in one slot, and keyless commands
//! go to every master: the store decides that (`RedisStore`'s `Backend::Cluster`).
//!
//! redis-rs's cluster defaults are not callgate's: 16 retries, a 1 s connection timeout and no
//! response timeout. Here every bound derives from `CALLGATE_REDIS_TIMEOUT_MS` (see
//! [`client`]); a `TRYAGAIN`/`CLUSTERDOWN` retry sleeps at least 1.28 s in redis-rs, longer than
//! any check may wait, so the store's own `tokio` timeout ends such a call and answers
//! `UNAVAILABLE` itself.
//!
//! # Replacing a cluster connection that stays broken
//!
//! After a master's `kill -9`, a redis-rs cluster connection usually learns the new topology
//! by itself (a refused connection or `MOVED` refreshes its slot map). Under load it sometimes
//! did not: in about one run of three of the failover test, one callgate process kept timing
//! out on the dead master's slots for 20 s after the promotion, while a fresh connection
//! answered at once. So every failed call on a cluster connection reports itself
//! ([`Conn::suspect`]); at most once per [`RESET_INTERVAL`] a new cluster connection is built
//! in the background (it reads the slot map afresh) and, once connected, replaces the old one
//! for new calls. Calls in flight finish on the old one; healthy shards see no error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::io::tcp::TcpSettings;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};

/// Retries redis-rs may make for one request (reconnects, `MOVED` after a failover). Few: the
/// store timeout bounds the whole request anyway.
const CLUSTER_RETRIES: u32 = 3;
/// Bounds of redis-rs's wait between retries, in milliseconds.
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 10;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 100;
/// Least time between two replacements of a cluster connection.
pub const RESET_INTERVAL: Duration = Duration::from_secs(1);

/// A cluster connection that can be replaced while in use (see the module docs).
pub struct ClusterHandle {
    client: ClusterClient,
    current: RwLock<ClusterConnection>,
    /// Bound on building a replacement.
    connect_timeout: Duration,
    last_reset: Mutex<Instant>,
    resetting: AtomicBool,
}

impl ClusterHandle {
    /// Connects to the cluster (bounded by `connect_timeout`).
    pub async fn connect(
        client: ClusterClient,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>, ConnectError> {
        let conn = tokio::time::timeout(connect_timeout, client.get_async_connection())
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Redis)?;
        Ok(Arc::new(ClusterHandle {
            client,
            current: RwLock::new(conn),
            connect_timeout,
            last_reset: Mutex::new(Instant::now()),
            resetting: AtomicBool::new(false),
        }))
    }

    fn get(&self) -> ClusterConnection {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A call failed: replace the connection in the background, at most once per
    /// [`RESET_INTERVAL`].
    fn suspect(self: &Arc<Self>) {
        {
            let mut last = self.last_reset.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < RESET_INTERVAL || self.resetting.swap(true, Ordering::AcqRel) {
                return;
            }
            *last = Instant::now();
        }
        let handle = self.clone();
        tokio::spawn(async move {
            let fresh =
                tokio::time::timeout(handle.connect_timeout, handle.client.get_async_connection())
                    .await;
            match fresh {
                Ok(Ok(conn)) => {
                    *handle.current.write().unwrap_or_else(|e| e.into_inner()) = conn;
                    tracing::info!("replaced the Redis Cluster connection after failed calls");
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot reconnect to the Redis Cluster yet")
                }
                Err(_) => tracing::warn!("reconnecting to the Redis Cluster timed out"),
            }
            handle.resetting.store(false, Ordering::Release);
        });
    }
}

/// Why connecting to a cluster failed.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Redis(RedisError),
}

/// The connections of a store, by shard.
///
/// A redis-rs cluster connection stops sending every request while it refreshes its slot map,
/// and it refreshes after any request fails, so one connection shared by all shards would let
/// a dead master stall the checks of the healthy ones (measured: ~0.8 s of timeouts on every
/// shard around the promotion, in 2 runs of 5). So on a cluster each third of the shards
/// (the shards of one master of a default 3-master cluster, see
/// [`keys`](super::keys)) has a cluster connection of its own, never used for another
/// master's shards, plus one for keyless commands (`PING`, `CONFIG GET`, `SCRIPT LOAD`, sent
/// to every master). On a cluster laid out otherwise, routing stays correct; only the
/// isolation is weaker.
#[derive(Clone)]
pub struct Lanes {
    /// One per third of the shards, then the keyless lane.
    lanes: Vec<Conn>,
    shards_per_lane: usize,
}

impl Lanes {
    /// `by_third` (3 connections) and `keyless`.
    pub fn cluster(by_third: Vec<Conn>, keyless: Conn, shards: usize) -> Self {
        let per = shards.div_ceil(by_third.len().max(1));
        let mut lanes = by_third;
        lanes.push(keyless);
        Lanes {
            lanes,
            shards_per_lane: per,
        }
    }

    /// The connection for the keys of `shard`.
    pub fn shard(&self, shard: usize) -> &Conn {
        let last = self.lanes.len().saturating_sub(2);
        &self.lanes[(shard / self.shards_per_lane).min(last)]
    }

    /// The connection for keyless commands.
    pub fn keyless(&self) -> &Conn {
        self.lanes.last().expect("at least one lane")
    }
}

/// A cluster connection that replaces itself when its calls keep failing. Cheap to clone:
/// clones share the underlying connections.
#[derive(Clone)]
pub struct Conn(pub Arc<ClusterHandle>);

impl Conn {
    /// A call on this connection failed or timed out: the connection may be replaced (see the
    /// module docs).
    pub fn suspect(&self) {
        self.0.suspect();
    }

    /// Sends a keyless command to every master; the answers keyed by node address.
    pub async fn on_every_master(&mut self, cmd: &Cmd) -> Result<Vec<(String, Value)>, RedisError> {
        let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        match self.0.get().route_command(cmd.clone(), routing).await? {
            Value::Map(answers) => Ok(answers
                .into_iter()
                .map(|(addr, v)| {
                    let addr = match addr {
                        Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                        Value::SimpleString(s) => s,
                        other => format!("{other:?}"),
                    };
                    (addr, v)
                })
                .collect()),
            other => Ok(vec![("cluster".to_owned(), other)]),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.0.get();
        Box::pin(async move { conn.req_packed_command(cmd).await })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.0.get();
        Box::pin(async move { conn.req_packed_commands(pipeline, offset, count).await })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

/// A cluster client for `nodes` (any reachable nodes of the cluster), with every timeout set
/// from `timeout`: each connection attempt and each response within it, few retries, and short
/// waits between them. `TCP_NODELAY` on, as for a standalone Redis.
pub fn client(nodes: &[String], timeout: Duration) -> Result<ClusterClient, RedisError> {
    let infos = nodes
        .iter()
        .map(|n| n.as_str().into_connection_info())
        .collect::<Result<Vec<_>, _>>()?;
    ClusterClientBuilder::new(infos)
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(CLUSTER_RETRIES)
        .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
        .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS)
        .tcp_settings(TcpSettings::default().set_nodelay(true))
        .build()
}

/// Splits `CALLGATE_REDIS_CLUSTER_NODES` (comma-separated URLs) into its URLs.
pub fn node_list(nodes: &str) -> Vec<String> {
    nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_are_split_on_commas_and_trimmed() {
        assert_eq!(
            node_list(" redis://a:1, redis://b:2 ,,"),
            vec!["redis://a:1", "redis://b:2"]
        );
        assert!(node_list(" , ").is_empty());
    }
}
