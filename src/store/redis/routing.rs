//! How the store reaches Redis and runs one call: the [`Backend`] (a standalone Redis through
//! `connection`, or a Redis Cluster through `cluster`), which connection a call takes
//! ([`Route`], reads or writes), the store timeout on every call, one retry of a read whose
//! connection broke, and reloading the scripts after a `NOSCRIPT`.

use redis::{Client, FromRedisValue, IntoConnectionInfo, RedisError, RedisResult};
use tokio::time::Instant;

use super::cluster::{self, Conn, Lanes};
use super::connection::{self, BlockingPool, Lease, SharedConnection, Verdict};
use super::error::{is_noscript, map_error};
use super::{
    CLAIM_EXPIRED_LUA, RECORD_LUA, REQUESTS_LUA, RedisConfig, RedisStore, SHARDS, V2_CLAIM_LUA,
    V2_READ_LUA, V2_RECORD_LUA, V2_REQUESTS_LUA,
};
use crate::store::StoreError;

/// How the store reaches Redis.
pub(super) enum Backend {
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
pub(super) enum Route {
    Shard(usize),
    Keyless,
}

impl Route {
    pub(super) fn on(self, lanes: &Lanes) -> &Conn {
        match self {
            Route::Shard(s) => lanes.shard(s),
            Route::Keyless => lanes.keyless(),
        }
    }
}

/// A command or a pipeline, to run on the shared connection.
#[derive(Clone, Copy)]
pub(super) enum Call<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

impl RedisStore {
    fn bad_url(config: &RedisConfig) -> impl Fn(RedisError) -> StoreError + '_ {
        move |e| {
            StoreError::Misconfigured(format!(
                "cannot use Redis URL {}: {e}",
                config.redacted_url()
            ))
        }
    }

    pub(super) async fn connect_single(config: &RedisConfig) -> Result<Backend, StoreError> {
        // The one place the URL is read in clear: to open the client.
        let info = config
            .url
            .expose()
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
    pub(super) async fn connect_cluster(config: &RedisConfig) -> Result<Backend, StoreError> {
        let nodes = cluster::node_list(config.url.expose());
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

    /// One call on the shared standalone connection `conn`, bounded by `deadline`. `Err` if no
    /// connection could be leased or no answer came in time; otherwise Redis's answer, whose
    /// failure (if any) was reported to the connection's supervisor.
    pub(super) async fn attempt<T: FromRedisValue>(
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

    pub(super) async fn read_cmd<T: FromRedisValue>(
        &self,
        route: Route,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.read(route, Call::Cmd(cmd)).await
    }

    pub(super) async fn read_pipe<T: FromRedisValue>(
        &self,
        route: Route,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        self.read(route, Call::Pipe(pipe)).await
    }

    /// One call on the connection `route` and `write` choose (writes go to the write
    /// connections), bounded by the store timeout.
    pub(super) async fn attempt_routed<T: FromRedisValue>(
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
    pub(super) async fn load_scripts(&self) -> Result<(), StoreError> {
        if self.is_cluster() {
            for source in [
                RECORD_LUA,
                CLAIM_EXPIRED_LUA,
                REQUESTS_LUA,
                V2_RECORD_LUA,
                V2_READ_LUA,
                V2_CLAIM_LUA,
                V2_REQUESTS_LUA,
            ] {
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
            .load_script(&self.claim_script)
            .load_script(&self.requests_script)
            .load_script(&self.v2_record_script)
            .load_script(&self.v2_read_script)
            .load_script(&self.v2_claim_script)
            .load_script(&self.v2_requests_script);
        self.attempt_routed::<Vec<String>>(Route::Keyless, false, Call::Pipe(&pipe))
            .await?
            .map(drop)
            .map_err(|e| map_error(e, self.config.timeout))
    }

    /// Runs a pipeline of script calls (on a write connection if `write`), reloading the
    /// scripts once if Redis lost them (a restart, or a replica promoted on a cluster).
    pub(super) async fn query_scripts<T: FromRedisValue>(
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
}
