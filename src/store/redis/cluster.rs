//! The two ways callgate reaches Redis, behind one small type: [`Conn`].
//!
//! - [`Conn::Single`]: one Redis (or a primary with replicas), through a redis-rs
//!   [`ConnectionManager`] (one multiplexed connection, reconnecting on its own).
//! - [`Conn::Cluster`]: a Redis Cluster, through a redis-rs cluster connection (one multiplexed
//!   connection per node, routing each command or pipeline by its first key's slot, following
//!   `MOVED`/`ASK` and refreshing the slot map after a failover).
//!
//! Both implement redis-rs's `ConnectionLike`, so the store sends commands the same way to
//! either; what differs (pipelines must stay in one slot on a cluster, keyless commands go to
//! every master) is decided in the store by [`Conn::is_cluster`].
//!
//! redis-rs's cluster defaults are not callgate's: 16 retries, a 1 s connection timeout and no
//! response timeout. Here every bound derives from `CALLGATE_REDIS_TIMEOUT_MS` (see
//! [`connect`]); a `TRYAGAIN`/`CLUSTERDOWN` retry sleeps at least 1.28 s in redis-rs, longer than
//! any check may wait, so the store's own `tokio` timeout ends such a call and answers
//! `UNAVAILABLE` itself.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
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

/// A connection to a standalone Redis or to a Redis Cluster. Cheap to clone: clones share the
/// underlying connections.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Sends a keyless command to every master; the answers keyed by node address. On a
    /// standalone Redis, the one answer under the name `"redis"`.
    pub async fn on_every_master(&mut self, cmd: &Cmd) -> Result<Vec<(String, Value)>, RedisError> {
        match self {
            Conn::Single(conn) => Ok(vec![("redis".to_owned(), cmd.query_async(conn).await?)]),
            Conn::Cluster(conn) => {
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                match conn.route_command(cmd.clone(), routing).await? {
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
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
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
