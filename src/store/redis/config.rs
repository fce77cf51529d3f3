//! Where and how to reach Redis: [`RedisConfig`], its defaults, and the URL's redacted form
//! for logs and errors.
//!
//! The URL may hold a password, so it stays a [`Secret`] from the environment to the one place
//! a client is opened (`routing`; `inspect` reads where it points); logs and errors get
//! [`RedisConfig::redacted_url`]. The defaults are the service's (`crate::config`): one
//! source for each value.

use std::fmt;
use std::time::Duration;

use crate::config::{
    DEFAULT_EVENT_RETENTION, DEFAULT_REDIS_HEALTH_INTERVAL, DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_TIMEOUT,
};
use crate::secret::Secret;

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; for a cluster, any of its nodes' URLs, separated
    /// by commas. May hold passwords: a [`Secret`], never printed (see
    /// [`redacted_url`](Self::redacted_url)).
    pub url: Secret,
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
    /// Layout v2: hot-record buckets per shard ([`keys::HOT_BUCKETS`](super::keys::HOT_BUCKETS)
    /// by default). A layout constant like the shard count: sized once, at deployment, for
    /// about 64 pairs a bucket; changing it later moves every pair's hot record.
    pub hot_buckets: u32,
    /// The key layout written and read (`CALLGATE_REDIS_LAYOUT`; [`Layout::Auto`] by default).
    /// A store keeps the layout it was first written in (`{prefix}:layout`); a replica
    /// configured otherwise is refused.
    pub layout: Layout,
}

/// The key layout of a store (`docs/redis-layout-v2.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The store's own layout (`{prefix}:layout`): v2 for an empty store (marked at the first
    /// connect), v1 for a store written in v1 before the marker existed. After
    /// [`RedisStore::connect`](super::RedisStore::connect) the store's config holds the
    /// layout it chose, never `Auto`.
    #[default]
    Auto,
    /// Per-pair keys: `c:`, `x:`, `h:`, `d:` (`keys.rs`): about four times v2's memory.
    V1,
    /// Packed history segments, hot-record buckets, leases and chunked sorted indexes
    /// (`layout_v2.rs`, `docs/redis-layout-v2.md`): about a quarter of v1's memory. No
    /// migration from v1 yet.
    V2,
}

impl RedisConfig {
    /// The default key prefix ([`DEFAULT_REDIS_PREFIX`]), for tools that take a prefix.
    pub const DEFAULT_PREFIX: &'static str = DEFAULT_REDIS_PREFIX;

    /// A config with every default but the URL.
    pub fn new(url: impl Into<Secret>) -> Self {
        RedisConfig {
            url: url.into(),
            cluster: false,
            replica_acks: 0,
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            health_interval: DEFAULT_REDIS_HEALTH_INTERVAL,
            event_retention: DEFAULT_EVENT_RETENTION,
            layout: Layout::Auto,
            hot_buckets: super::keys::HOT_BUCKETS,
        }
    }

    /// A config for a Redis Cluster reached through `nodes` (comma-separated URLs of any of
    /// its nodes), with every other default.
    pub fn cluster(nodes: impl Into<Secret>) -> Self {
        RedisConfig {
            cluster: true,
            ..Self::new(nodes)
        }
    }

    /// The URL (each URL of a node list) with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.url
            .expose()
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
            .field("layout", &self.layout)
            .field("hot_buckets", &self.hot_buckets)
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
