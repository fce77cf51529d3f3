//! Configuration: one typed struct, every environment variable a named constant.
//!
//! Each setting comes from its command-line flag, else its environment variable, else its
//! default. [`Config::resolve`] takes the environment as a lookup function, so parsing is tested
//! without touching the process environment. Secrets are wrapped in [`Secret`] and never printed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::clock::Clock;
use crate::outbound::OutboundConfig;
use crate::outbound::destination::AllowList;

pub use crate::secret::Secret;

pub const ENV_HTTP_ADDR: &str = "CALLGATE_HTTP_ADDR";
pub const ENV_GRPC_ADDR: &str = "CALLGATE_GRPC_ADDR";
pub const ENV_REDIS_URL: &str = "CALLGATE_REDIS_URL";
pub const ENV_REDIS_PREFIX: &str = "CALLGATE_REDIS_PREFIX";
pub const ENV_REDIS_TIMEOUT_MS: &str = "CALLGATE_REDIS_TIMEOUT_MS";
pub const ENV_REDIS_CLUSTER_NODES: &str = "CALLGATE_REDIS_CLUSTER_NODES";
pub const ENV_REDIS_REPLICA_ACKS: &str = "CALLGATE_REDIS_REPLICA_ACKS";
pub const ENV_REDIS_LAYOUT: &str = "CALLGATE_REDIS_LAYOUT";
pub const ENV_REDIS_HOT_BUCKETS: &str = "CALLGATE_REDIS_HOT_BUCKETS";
pub const ENV_REDIS_HEALTH_INTERVAL_MS: &str = "CALLGATE_REDIS_HEALTH_INTERVAL_MS";
pub const ENV_TEMPORARY_GRANT_SECS: &str = "CALLGATE_TEMPORARY_GRANT_SECS";
pub const ENV_MAX_CLOCK_SKEW_SECS: &str = "CALLGATE_MAX_CLOCK_SKEW_SECS";
pub const ENV_EVENT_RETENTION_SECS: &str = "CALLGATE_EVENT_RETENTION_SECS";
pub const ENV_CHECKPOINT_SECS: &str = "CALLGATE_CHECKPOINT_SECS";
pub const ENV_EXPIRY_SWEEP_MS: &str = "CALLGATE_EXPIRY_SWEEP_MS";
pub const ENV_SHUTDOWN_GRACE_SECS: &str = "CALLGATE_SHUTDOWN_GRACE_SECS";
pub const ENV_LOG_FORMAT: &str = "CALLGATE_LOG_FORMAT";
pub const ENV_HTTP_HEADER_TIMEOUT_MS: &str = "CALLGATE_HTTP_HEADER_TIMEOUT_MS";
pub const ENV_HTTP_BODY_TIMEOUT_MS: &str = "CALLGATE_HTTP_BODY_TIMEOUT_MS";
pub const ENV_HTTP_MAX_CONNECTIONS: &str = "CALLGATE_HTTP_MAX_CONNECTIONS";
pub const ENV_GRPC_MAX_CONNECTIONS: &str = "CALLGATE_GRPC_MAX_CONNECTIONS";
pub const ENV_GRPC_MAX_STREAMS_PER_CONNECTION: &str = "CALLGATE_GRPC_MAX_STREAMS_PER_CONNECTION";
pub const ENV_MAX_SUBSCRIPTIONS: &str = "CALLGATE_MAX_SUBSCRIPTIONS";
pub const ENV_STREAM_STALL_TIMEOUT_MS: &str = "CALLGATE_STREAM_STALL_TIMEOUT_MS";
pub const ENV_WEBHOOK_TOKENS: &str = "CALLGATE_WEBHOOK_TOKENS";
pub const ENV_WEBHOOK_AUTH_HEADER: &str = "CALLGATE_WEBHOOK_AUTH_HEADER";
pub const ENV_WHATSAPP_VERIFY_TOKEN: &str = "CALLGATE_WHATSAPP_VERIFY_TOKEN";
pub const ENV_WHATSAPP_APP_SECRET: &str = "CALLGATE_WHATSAPP_APP_SECRET";
pub const ENV_OTLP_ENDPOINT: &str = "CALLGATE_OTLP_ENDPOINT";
pub const ENV_API_CLIENTS_FILE: &str = "CALLGATE_API_CLIENTS_FILE";
pub const ENV_API_CLIENTS_RELOAD_SECS: &str = "CALLGATE_API_CLIENTS_RELOAD_SECS";
pub const ENV_TLS_CERT: &str = "CALLGATE_TLS_CERT";
pub const ENV_TLS_KEY: &str = "CALLGATE_TLS_KEY";
pub const ENV_TLS_CLIENT_CA: &str = "CALLGATE_TLS_CLIENT_CA";
pub const ENV_TLS_RELOAD_SECS: &str = "CALLGATE_TLS_RELOAD_SECS";
// issue 17: outbound webhooks.
pub const ENV_OUTBOUND_ALLOW_NETWORKS: &str = "CALLGATE_OUTBOUND_ALLOW_NETWORKS";
pub const ENV_OUTBOUND_TIMEOUT_MS: &str = "CALLGATE_OUTBOUND_TIMEOUT_MS";
pub const ENV_OUTBOUND_LEASE_MS: &str = "CALLGATE_OUTBOUND_LEASE_MS";
pub const ENV_OUTBOUND_SCAN_MS: &str = "CALLGATE_OUTBOUND_SCAN_MS";
pub const ENV_OUTBOUND_BACKOFF_MIN_MS: &str = "CALLGATE_OUTBOUND_BACKOFF_MIN_MS";
pub const ENV_OUTBOUND_BACKOFF_MAX_SECS: &str = "CALLGATE_OUTBOUND_BACKOFF_MAX_SECS";
pub const ENV_OUTBOUND_RETRY_FOR_SECS: &str = "CALLGATE_OUTBOUND_RETRY_FOR_SECS";
pub const ENV_OUTBOUND_SECRET_OVERLAP_SECS: &str = "CALLGATE_OUTBOUND_SECRET_OVERLAP_SECS";
// issue 13 (attribution)
pub const ENV_UNATTRIBUTED_REPLIES: &str = "CALLGATE_UNATTRIBUTED_REPLIES";
pub const ENV_REQUEST_LIMITS: &str = "CALLGATE_REQUEST_LIMITS";
pub const ENV_REQUEST_RETENTION_SECS: &str = "CALLGATE_REQUEST_RETENTION_SECS";
// issue 16: the replica-local check cache (see `check_cache`).
pub const ENV_CHECK_CACHE: &str = "CALLGATE_CHECK_CACHE";
pub const ENV_CHECK_CACHE_TTL_SECS: &str = "CALLGATE_CHECK_CACHE_TTL_SECS";
pub const ENV_CHECK_CACHE_MAX_STALENESS_MS: &str = "CALLGATE_CHECK_CACHE_MAX_STALENESS_MS";
pub const ENV_CHECK_CACHE_ENTRIES: &str = "CALLGATE_CHECK_CACHE_ENTRIES";

pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
pub const DEFAULT_REDIS_PREFIX: &str = "callgate";
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// How often the shared Redis connection is `PING`ed, so a wedged one is found while idle.
pub const DEFAULT_REDIS_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// "Allow for 7 Days".
pub const DEFAULT_TEMPORARY_GRANT: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far ahead of arrival a sender's event time may be before it is clamped to arrival.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(120);
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_CHECKPOINT: Duration = Duration::from_secs(5);
pub const DEFAULT_EXPIRY_SWEEP: Duration = Duration::from_millis(250);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_HTTP_BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 4096;
/// How often the API clients file is checked for a change.
pub const DEFAULT_API_CLIENTS_RELOAD: Duration = Duration::from_secs(10);
/// How often the TLS files are checked for a replacement.
pub const DEFAULT_TLS_RELOAD: Duration = Duration::from_secs(10);
pub const DEFAULT_GRPC_MAX_CONNECTIONS: usize = 1024;
pub const DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION: u32 = 128;
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1024;
pub const DEFAULT_STREAM_STALL_TIMEOUT: Duration = Duration::from_secs(30);
// issue 17: outbound webhooks.
/// One delivery attempt (connect, TLS, request, answer) must finish within this.
pub const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(10);
/// The delivery lease: a dead replica's subscriptions are taken over after at most this.
pub const DEFAULT_OUTBOUND_LEASE: Duration = Duration::from_secs(30);
/// How often every replica looks for subscriptions nobody delivers.
pub const DEFAULT_OUTBOUND_SCAN: Duration = Duration::from_secs(5);
pub const DEFAULT_OUTBOUND_BACKOFF_MIN: Duration = Duration::from_secs(5);
pub const DEFAULT_OUTBOUND_BACKOFF_MAX: Duration = Duration::from_secs(3600);
/// A failing event is retried this long before its subscription is marked failing.
pub const DEFAULT_OUTBOUND_RETRY_FOR: Duration = Duration::from_secs(3 * 24 * 3600);
/// After a rotation the previous secret keeps signing this long.
pub const DEFAULT_OUTBOUND_SECRET_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// issue 13: Meta's request budget, `<max>/<window>` pairs (see [`parse_request_limits`]).
/// issue 16: longest life of a check-cache entry (a grant's own expiry ends it sooner).
pub const DEFAULT_CHECK_CACHE_TTL: Duration = Duration::from_secs(1800);
/// issue 16: B, the staleness bound of an answer from the check cache. The bound is
/// at most 100 ms; larger values (up to [`MAX_CHECK_CACHE_STALENESS`]) trade freshness for
/// fewer store reads and are the operator's choice.
pub const DEFAULT_CHECK_CACHE_MAX_STALENESS: Duration = Duration::from_millis(100);
/// issue 16: the largest B accepted.
pub const MAX_CHECK_CACHE_STALENESS: Duration = Duration::from_secs(10);
/// issue 16: most pairs the check cache holds.
pub const DEFAULT_CHECK_CACHE_ENTRIES: usize = 200_000;
pub const DEFAULT_REQUEST_LIMITS: &str = "1/24h,2/7d";
/// issue 13: how long a registered consent request is kept after it was sent (at least the
/// longest budget window); see [`crate::domain::attribution::retention`].
pub const DEFAULT_REQUEST_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// issue 13 (attribution): consent requests, the request budget and the unattributed-reply
/// policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributionConfig {
    /// Whether team-filtered views (StreamGrants `teams`/`campaigns`/`labels`, ListCallable's
    /// team and campaign) include replies that matched no registration.
    pub unattributed: crate::domain::UnattributedPolicy,
    /// The request budget per (business, customer).
    pub request_limits: Vec<crate::domain::RequestLimit>,
    /// How long a registration is kept after its `sent_at` (never less than the longest
    /// budget window), and how long a reply waits for a registration that lands late.
    pub request_retention: Duration,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            unattributed: crate::domain::UnattributedPolicy::default(),
            request_limits: crate::domain::attribution::DEFAULT_REQUEST_LIMITS.to_vec(),
            request_retention: DEFAULT_REQUEST_RETENTION,
        }
    }
}

/// Parses `CALLGATE_REQUEST_LIMITS`: comma-separated `<max>/<window>`, the window a number
/// with a unit `s`, `m`, `h` or `d` (`1/24h,2/7d`).
pub fn parse_request_limits(s: &str) -> Result<Vec<crate::domain::RequestLimit>, String> {
    let limits = s
        .split(',')
        .map(|part| {
            let (max, window) = part
                .trim()
                .split_once('/')
                .ok_or_else(|| format!("{part:?} is not <max>/<window>"))?;
            let max: u32 = max
                .trim()
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{max:?} is not a whole number above zero"))?;
            let window = window.trim();
            let (n, unit) = window.split_at(window.len().saturating_sub(1));
            let unit = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(format!("{window:?} needs a unit: s, m, h or d")),
            };
            let n: u64 = n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{window:?} is not a whole number and a unit"))?;
            Ok(crate::domain::RequestLimit {
                max,
                window: Duration::from_secs(n.saturating_mul(unit)),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(limits)
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json".into()),
        }
    }
}

/// Everything `callgate serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Unset: the embedded in-memory store.
    pub redis_url: Option<Secret>,
    pub redis_prefix: String,
    /// A Redis call slower than this fails (closed).
    pub redis_timeout: Duration,
    /// Some: a Redis Cluster reached through these nodes (comma-separated URLs), instead of
    /// `redis_url`. May hold passwords.
    pub redis_cluster_nodes: Option<Secret>,
    /// A write is acknowledged only once this many replicas hold it (`WAIT`); 0: once the
    /// master does.
    pub redis_replica_acks: u32,
    /// `CALLGATE_REDIS_LAYOUT`: the Redis key layout (`docs/redis-layout-v2.md`).
    pub redis_layout: crate::store::redis::Layout,
    /// `CALLGATE_REDIS_HOT_BUCKETS`: layout v2's hot-record buckets a shard.
    pub redis_hot_buckets: u32,
    /// How often the shared Redis connection is health-`PING`ed (a wedged one is replaced).
    pub redis_health_interval: Duration,
    /// Length of a temporary grant when the sender gives no expiry.
    pub temporary_grant: Duration,
    /// A sender's event time further ahead of arrival than this is ordered at arrival; also
    /// the tolerance on a stated temporary expiry (see `domain::rules`).
    pub max_clock_skew: Duration,
    /// How long the event log keeps events for resuming subscribers.
    pub event_retention: Duration,
    /// An idle StreamGrants stream gets a checkpoint this often.
    pub checkpoint_interval: Duration,
    /// How often lapsed temporary grants are turned into `EXPIRED` events.
    pub expiry_sweep_interval: Duration,
    /// How long in-flight requests get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// A client must send its request headers within this time.
    pub http_header_timeout: Duration,
    /// A client must send its whole body within this time.
    pub http_body_timeout: Duration,
    /// Most HTTP connections served at once; more wait in the listen backlog.
    pub http_max_connections: usize,
    /// Most gRPC connections served at once; more wait in the listen backlog.
    pub grpc_max_connections: usize,
    /// Most concurrent HTTP/2 streams (RPCs) one gRPC connection may open.
    pub grpc_max_streams_per_connection: u32,
    /// Most StreamGrants subscriptions open at once on this replica; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_subscriptions: usize,
    /// A StreamGrants client that takes nothing for this long is ended with `UNAVAILABLE`
    /// carrying its resume cursor.
    pub stream_stall_timeout: Duration,
    /// Shared secrets accepted on `/webhooks/doubletick` (several, so they can rotate).
    pub webhook_tokens: Vec<Secret>,
    /// A header that may carry a webhook secret, besides `Authorization`.
    pub webhook_auth_header: Option<String>,
    /// Meta's GET handshake token for `/webhooks/whatsapp`.
    pub whatsapp_verify_token: Option<Secret>,
    /// Meta app secret: `X-Hub-Signature-256` is checked with it.
    pub whatsapp_app_secret: Option<Secret>,
    /// Serve the webhook routes and the gRPC API without authentication (local demos only;
    /// logged loudly).
    pub insecure_no_auth: bool,
    /// OpenTelemetry collector to export spans to (OTLP/gRPC); needs the `otlp` build feature.
    pub otlp_endpoint: Option<String>,
    /// The TOML file declaring the gRPC API clients; unset: no client (every call refused).
    pub api_clients_file: Option<PathBuf>,
    /// How often the API clients file is checked for a change.
    pub api_clients_reload_interval: Duration,
    /// Certificate and key for both ports; unset: plain TCP.
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are checked for a replacement.
    pub tls_reload_interval: Duration,
    /// Outbound webhooks (issue 17).
    pub outbound: OutboundConfig,
    /// Where the service reads the time: not a setting of the environment (always the
    /// system clock there); tests pass a [`Clock::tokio`] and pause it.
    pub clock: Clock,
    /// issue 13: consent requests and attribution.
    pub attribution: AttributionConfig,
    /// issue 16: the replica-local check cache.
    pub check_cache: crate::check_cache::CheckCacheConfig,
}

/// PEM files for TLS on both ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates for mutual TLS on the gRPC port; unset: no client certificate asked.
    pub client_ca: Option<PathBuf>,
}

/// Command-line values; `None` falls back to the environment, then the default.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub http_addr: Option<String>,
    pub grpc_addr: Option<String>,
    pub redis_url: Option<String>,
    /// `--insecure-no-auth`.
    pub insecure_no_auth: bool,
}

/// A setting that could not be parsed; names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {problem} (got {value:?})")]
pub struct ConfigError {
    pub name: &'static str,
    pub value: String,
    pub problem: String,
}

impl Config {
    /// Resolves every setting from `flags`, then `env`, then the default.
    pub fn resolve(
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = |flag: &Option<String>, name: &'static str| -> Option<(String, &'static str)> {
            flag.clone()
                .or_else(|| env(name))
                .filter(|v| !v.trim().is_empty())
                .map(|v| (v, name))
        };
        let parsed = |flag: &Option<String>, name: &'static str, default: &str| {
            let (value, name) = raw(flag, name).unwrap_or((default.to_owned(), name));
            value.trim().parse::<SocketAddr>().map_err(|e| ConfigError {
                name,
                value: value.clone(),
                problem: e.to_string(),
            })
        };
        let secs = |name: &'static str, default: Duration| duration(raw(&None, name), default, 1.0);
        let millis =
            |name: &'static str, default: Duration| duration(raw(&None, name), default, 0.001);
        let count = |name: &'static str, default: usize| match raw(&None, name) {
            None => Ok(default),
            Some((value, name)) => match value.trim().parse::<u32>() {
                Ok(n) if n > 0 => Ok(n as usize),
                _ => Err(ConfigError {
                    name,
                    value,
                    problem: "must be a whole number greater than zero".into(),
                }),
            },
        };
        let redis_url = raw(&flags.redis_url, ENV_REDIS_URL).map(|(v, _)| Secret::new(v));
        let redis_cluster_nodes = raw(&None, ENV_REDIS_CLUSTER_NODES).map(|(v, _)| Secret::new(v));
        if redis_url.is_some() && redis_cluster_nodes.is_some() {
            return Err(ConfigError {
                name: ENV_REDIS_CLUSTER_NODES,
                value: "[redacted]".into(),
                problem: format!(
                    "set either {ENV_REDIS_URL} or {ENV_REDIS_CLUSTER_NODES}, not both"
                ),
            });
        }
        let redis_replica_acks = match raw(&None, ENV_REDIS_REPLICA_ACKS) {
            None => 0,
            Some((value, name)) => value.trim().parse::<u32>().map_err(|_| ConfigError {
                name,
                value: value.clone(),
                problem: "must be a whole number (0 or more)".into(),
            })?,
        };
        let redis_layout = match raw(&None, ENV_REDIS_LAYOUT) {
            None => crate::store::redis::Layout::Auto,
            Some((value, name)) => match value.trim() {
                "auto" => crate::store::redis::Layout::Auto,
                "v1" | "1" => crate::store::redis::Layout::V1,
                "v2" | "2" => crate::store::redis::Layout::V2,
                _ => {
                    return Err(ConfigError {
                        name,
                        value: value.clone(),
                        problem: "must be auto, v1 or v2".into(),
                    });
                }
            },
        };
        let redis_hot_buckets = match raw(&None, ENV_REDIS_HOT_BUCKETS) {
            None => crate::store::redis::keys::HOT_BUCKETS,
            Some((value, name)) => value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=65_536).contains(n))
                .ok_or_else(|| ConfigError {
                    name,
                    value: value.clone(),
                    problem: "must be a whole number from 1 to 65536".into(),
                })?,
        };
        let http_max_connections = count(ENV_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_MAX_CONNECTIONS)?;
        let grpc_max_connections = count(ENV_GRPC_MAX_CONNECTIONS, DEFAULT_GRPC_MAX_CONNECTIONS)?;
        let grpc_max_streams_per_connection = count(
            ENV_GRPC_MAX_STREAMS_PER_CONNECTION,
            DEFAULT_GRPC_MAX_STREAMS_PER_CONNECTION as usize,
        )? as u32;
        let max_subscriptions = count(ENV_MAX_SUBSCRIPTIONS, DEFAULT_MAX_SUBSCRIPTIONS)?;
        let log_format = match raw(&None, ENV_LOG_FORMAT) {
            None => LogFormat::Text,
            Some((value, name)) => value.parse().map_err(|problem| ConfigError {
                name,
                value,
                problem,
            })?,
        };
        let path = |name: &'static str| raw(&None, name).map(|(v, _)| PathBuf::from(v.trim()));
        let tls = match (
            path(ENV_TLS_CERT),
            path(ENV_TLS_KEY),
            path(ENV_TLS_CLIENT_CA),
        ) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (cert, key, _) => {
                let (name, value) = match (cert, key) {
                    (Some(c), None) => (ENV_TLS_CERT, c),
                    (None, Some(k)) => (ENV_TLS_KEY, k),
                    _ => (ENV_TLS_CLIENT_CA, PathBuf::new()),
                };
                return Err(ConfigError {
                    name,
                    value: value.display().to_string(),
                    problem: format!("TLS needs both {ENV_TLS_CERT} and {ENV_TLS_KEY}"),
                });
            }
        };
        let outbound = OutboundConfig {
            allow: match raw(&None, ENV_OUTBOUND_ALLOW_NETWORKS) {
                None => AllowList::default(),
                Some((value, name)) => AllowList::parse(&value).map_err(|problem| ConfigError {
                    name,
                    value: value.clone(),
                    problem,
                })?,
            },
            timeout: millis(ENV_OUTBOUND_TIMEOUT_MS, DEFAULT_OUTBOUND_TIMEOUT)?,
            lease: millis(ENV_OUTBOUND_LEASE_MS, DEFAULT_OUTBOUND_LEASE)?,
            scan_every: millis(ENV_OUTBOUND_SCAN_MS, DEFAULT_OUTBOUND_SCAN)?,
            backoff_min: millis(ENV_OUTBOUND_BACKOFF_MIN_MS, DEFAULT_OUTBOUND_BACKOFF_MIN)?,
            backoff_max: secs(ENV_OUTBOUND_BACKOFF_MAX_SECS, DEFAULT_OUTBOUND_BACKOFF_MAX)?,
            retry_for: secs(ENV_OUTBOUND_RETRY_FOR_SECS, DEFAULT_OUTBOUND_RETRY_FOR)?,
            secret_overlap: secs(
                ENV_OUTBOUND_SECRET_OVERLAP_SECS,
                DEFAULT_OUTBOUND_SECRET_OVERLAP,
            )?,
        };
        // The lease is renewed every third of its length, and not during an attempt: an
        // attempt must end well within the rest, or a live holder would lose its lease.
        if outbound.timeout * 3 >= outbound.lease * 2 {
            return Err(ConfigError {
                name: ENV_OUTBOUND_TIMEOUT_MS,
                value: outbound.timeout.as_millis().to_string(),
                problem: format!(
                    "must be less than two thirds of {ENV_OUTBOUND_LEASE_MS} ({:?})",
                    outbound.lease
                ),
            });
        }
        // issue 13 (attribution)
        let attribution = AttributionConfig {
            unattributed: match raw(&None, ENV_UNATTRIBUTED_REPLIES) {
                None => crate::domain::UnattributedPolicy::default(),
                Some((value, name)) => crate::domain::UnattributedPolicy::parse(value.trim())
                    .ok_or_else(|| ConfigError {
                        name,
                        value,
                        problem: "must be all_teams or no_team".into(),
                    })?,
            },
            request_limits: match raw(&None, ENV_REQUEST_LIMITS) {
                None => crate::domain::attribution::DEFAULT_REQUEST_LIMITS.to_vec(),
                Some((value, name)) => {
                    parse_request_limits(&value).map_err(|problem| ConfigError {
                        name,
                        value,
                        problem,
                    })?
                }
            },
            request_retention: secs(ENV_REQUEST_RETENTION_SECS, DEFAULT_REQUEST_RETENTION)?,
        };
        let check_cache = crate::check_cache::CheckCacheConfig {
            enabled: match raw(&None, ENV_CHECK_CACHE) {
                None => true,
                Some((value, name)) => match value.trim() {
                    "on" | "true" | "1" => true,
                    "off" | "false" | "0" => false,
                    _ => {
                        return Err(ConfigError {
                            name,
                            value,
                            problem: "must be on or off".into(),
                        });
                    }
                },
            },
            ttl: secs(ENV_CHECK_CACHE_TTL_SECS, DEFAULT_CHECK_CACHE_TTL)?,
            max_staleness: match millis(
                ENV_CHECK_CACHE_MAX_STALENESS_MS,
                DEFAULT_CHECK_CACHE_MAX_STALENESS,
            )? {
                b if b > MAX_CHECK_CACHE_STALENESS => {
                    return Err(ConfigError {
                        name: ENV_CHECK_CACHE_MAX_STALENESS_MS,
                        value: b.as_millis().to_string(),
                        problem: format!(
                            "must be at most {} ms (the issue's bound is 100 ms)",
                            MAX_CHECK_CACHE_STALENESS.as_millis()
                        ),
                    });
                }
                b => b,
            },
            entries: count(ENV_CHECK_CACHE_ENTRIES, DEFAULT_CHECK_CACHE_ENTRIES)?,
        };
        Ok(Config {
            check_cache,
            outbound,
            attribution,
            http_addr: parsed(&flags.http_addr, ENV_HTTP_ADDR, DEFAULT_HTTP_ADDR)?,
            grpc_addr: parsed(&flags.grpc_addr, ENV_GRPC_ADDR, DEFAULT_GRPC_ADDR)?,
            redis_url,
            redis_cluster_nodes,
            redis_replica_acks,
            redis_layout,
            redis_hot_buckets,
            redis_prefix: raw(&None, ENV_REDIS_PREFIX)
                .map_or_else(|| DEFAULT_REDIS_PREFIX.to_owned(), |(v, _)| v),
            redis_timeout: millis(ENV_REDIS_TIMEOUT_MS, DEFAULT_REDIS_TIMEOUT)?,
            redis_health_interval: millis(
                ENV_REDIS_HEALTH_INTERVAL_MS,
                DEFAULT_REDIS_HEALTH_INTERVAL,
            )?,
            temporary_grant: secs(ENV_TEMPORARY_GRANT_SECS, DEFAULT_TEMPORARY_GRANT)?,
            max_clock_skew: secs(ENV_MAX_CLOCK_SKEW_SECS, DEFAULT_MAX_CLOCK_SKEW)?,
            event_retention: secs(ENV_EVENT_RETENTION_SECS, DEFAULT_EVENT_RETENTION)?,
            checkpoint_interval: secs(ENV_CHECKPOINT_SECS, DEFAULT_CHECKPOINT)?,
            expiry_sweep_interval: millis(ENV_EXPIRY_SWEEP_MS, DEFAULT_EXPIRY_SWEEP)?,
            shutdown_grace: secs(ENV_SHUTDOWN_GRACE_SECS, DEFAULT_SHUTDOWN_GRACE)?,
            log_format,
            http_header_timeout: millis(ENV_HTTP_HEADER_TIMEOUT_MS, DEFAULT_HTTP_HEADER_TIMEOUT)?,
            http_body_timeout: millis(ENV_HTTP_BODY_TIMEOUT_MS, DEFAULT_HTTP_BODY_TIMEOUT)?,
            http_max_connections,
            grpc_max_connections,
            grpc_max_streams_per_connection,
            max_subscriptions,
            stream_stall_timeout: millis(
                ENV_STREAM_STALL_TIMEOUT_MS,
                DEFAULT_STREAM_STALL_TIMEOUT,
            )?,
            webhook_tokens: raw(&None, ENV_WEBHOOK_TOKENS)
                .map(|(v, _)| Secret::parse_list(&v))
                .unwrap_or_default(),
            webhook_auth_header: raw(&None, ENV_WEBHOOK_AUTH_HEADER)
                .map(|(v, _)| v.trim().to_owned()),
            whatsapp_verify_token: raw(&None, ENV_WHATSAPP_VERIFY_TOKEN)
                .map(|(v, _)| Secret::new(v)),
            whatsapp_app_secret: raw(&None, ENV_WHATSAPP_APP_SECRET).map(|(v, _)| Secret::new(v)),
            insecure_no_auth: flags.insecure_no_auth,
            otlp_endpoint: raw(&None, ENV_OTLP_ENDPOINT).map(|(v, _)| v.trim().to_owned()),
            api_clients_file: path(ENV_API_CLIENTS_FILE),
            api_clients_reload_interval: secs(
                ENV_API_CLIENTS_RELOAD_SECS,
                DEFAULT_API_CLIENTS_RELOAD,
            )?,
            tls,
            tls_reload_interval: secs(ENV_TLS_RELOAD_SECS, DEFAULT_TLS_RELOAD)?,
            clock: Clock::System,
        })
    }
}

/// A positive number of `unit`-seconds (fractions allowed: `0.5`).
fn duration(
    raw: Option<(String, &'static str)>,
    default: Duration,
    unit: f64,
) -> Result<Duration, ConfigError> {
    let Some((value, name)) = raw else {
        return Ok(default);
    };
    let err = |problem: &str| ConfigError {
        name,
        value: value.clone(),
        problem: problem.to_owned(),
    };
    let n: f64 = value.trim().parse().map_err(|_| err("must be a number"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(err("must be greater than zero"));
    }
    Duration::try_from_secs_f64(n * unit).map_err(|_| err("is out of range"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_apply_with_an_empty_environment() {
        let c = Config::resolve(&Flags::default(), env(&[])).unwrap();
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
        assert_eq!(c.grpc_addr.to_string(), DEFAULT_GRPC_ADDR);
        assert!(c.redis_url.is_none());
        assert_eq!(c.temporary_grant, Duration::from_secs(604_800));
        assert_eq!(c.max_clock_skew, Duration::from_secs(120));
        assert_eq!(c.redis_timeout, Duration::from_millis(250));
        assert_eq!(c.redis_health_interval, Duration::from_secs(1));
        assert_eq!(c.redis_layout, crate::store::redis::Layout::Auto);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.outbound.retry_for, Duration::from_secs(259_200));
        assert_eq!(c.outbound.allow, AllowList::default());
        assert_eq!(
            c.check_cache,
            crate::check_cache::CheckCacheConfig {
                enabled: true,
                ttl: Duration::from_secs(1800),
                max_staleness: Duration::from_millis(100),
                entries: 200_000,
            }
        );
    }

    #[test]
    fn check_cache_settings_come_from_their_variables() {
        let c = Config::resolve(
            &Flags::default(),
            env(&[
                (ENV_CHECK_CACHE, "off"),
                (ENV_CHECK_CACHE_TTL_SECS, "60"),
                (ENV_CHECK_CACHE_MAX_STALENESS_MS, "50"),
                (ENV_CHECK_CACHE_ENTRIES, "1000"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.check_cache,
            crate::check_cache::CheckCacheConfig {
                enabled: false,
                ttl: Duration::from_secs(60),
                max_staleness: Duration::from_millis(50),
                entries: 1000,
            }
        );
        for (name, value) in [
            (ENV_CHECK_CACHE, "maybe"),
            (ENV_CHECK_CACHE_TTL_SECS, "0"),
            (ENV_CHECK_CACHE_MAX_STALENESS_MS, "0"),
            (ENV_CHECK_CACHE_MAX_STALENESS_MS, "10001"),
            (ENV_CHECK_CACHE_ENTRIES, "0"),
        ] {
            let err = Config::resolve(&Flags::default(), env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
    }

    #[test]
    fn environment_overrides_defaults_and_flags_override_environment() {
        let e = env(&[
            (ENV_HTTP_ADDR, "127.0.0.1:1000"),
            (ENV_GRPC_ADDR, "127.0.0.1:2000"),
            (ENV_REDIS_URL, "redis://:pw@localhost:6379"),
            (ENV_TEMPORARY_GRANT_SECS, "1.5"),
            (ENV_MAX_CLOCK_SKEW_SECS, "30"),
            (ENV_REDIS_TIMEOUT_MS, "100"),
            (ENV_REDIS_HEALTH_INTERVAL_MS, "400"),
            (ENV_REDIS_LAYOUT, "v1"),
            (ENV_LOG_FORMAT, "json"),
            (ENV_WEBHOOK_TOKENS, "old-token, new-token,"),
            (ENV_WHATSAPP_APP_SECRET, "app-secret"),
        ]);
        let flags = Flags {
            http_addr: Some("127.0.0.1:3000".into()),
            ..Flags::default()
        };
        let c = Config::resolve(&flags, e).unwrap();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:2000");
        assert_eq!(c.temporary_grant, Duration::from_millis(1500));
        assert_eq!(c.max_clock_skew, Duration::from_secs(30));
        assert_eq!(c.redis_timeout, Duration::from_millis(100));
        assert_eq!(c.redis_health_interval, Duration::from_millis(400));
        assert_eq!(c.redis_layout, crate::store::redis::Layout::V1);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.webhook_tokens.len(), 2);
        assert_eq!(c.webhook_tokens[1].expose(), "new-token");
        let printed = format!("{c:?}");
        for secret in ["pw", "old-token", "new-token", "app-secret"] {
            assert!(!printed.contains(secret), "secret leaked: {printed}");
        }
    }

    #[test]
    fn tls_and_api_clients_come_from_their_variables() {
        let c = Config::resolve(&Flags::default(), env(&[])).unwrap();
        assert_eq!((c.tls, c.api_clients_file), (None, None));
        let c = Config::resolve(
            &Flags::default(),
            env(&[
                (ENV_TLS_CERT, "/etc/callgate/cert.pem"),
                (ENV_TLS_KEY, "/etc/callgate/key.pem"),
                (ENV_TLS_CLIENT_CA, "/etc/callgate/ca.pem"),
                (ENV_TLS_RELOAD_SECS, "2"),
                (ENV_API_CLIENTS_FILE, "/etc/callgate/clients.toml"),
            ]),
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/callgate/cert.pem"));
        assert_eq!(tls.key, PathBuf::from("/etc/callgate/key.pem"));
        assert_eq!(tls.client_ca, Some(PathBuf::from("/etc/callgate/ca.pem")));
        assert_eq!(c.tls_reload_interval, Duration::from_secs(2));
        assert_eq!(
            c.api_clients_file,
            Some(PathBuf::from("/etc/callgate/clients.toml"))
        );
    }

    /// issue 13 (attribution)
    #[test]
    fn attribution_settings_come_from_their_variables() {
        let c = Config::resolve(&Flags::default(), env(&[])).unwrap();
        assert_eq!(c.attribution, AttributionConfig::default());
        let c = Config::resolve(
            &Flags::default(),
            env(&[
                (ENV_UNATTRIBUTED_REPLIES, "no_team"),
                (ENV_REQUEST_LIMITS, "1/90s, 3/2d"),
                (ENV_REQUEST_RETENTION_SECS, "60"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.attribution.unattributed,
            crate::domain::UnattributedPolicy::NoTeam
        );
        let limits: Vec<_> = c
            .attribution
            .request_limits
            .iter()
            .map(|l| (l.max, l.window.as_secs()))
            .collect();
        assert_eq!(limits, [(1, 90), (3, 2 * 86_400)]);
        assert_eq!(c.attribution.request_retention, Duration::from_secs(60));
        for bad in ["", "1", "0/1d", "1/1w", "1/d", "x/1d"] {
            assert!(parse_request_limits(bad).is_err(), "{bad:?}");
        }
        for (name, value) in [
            (ENV_UNATTRIBUTED_REPLIES, "some"),
            (ENV_REQUEST_LIMITS, "2 per week"),
        ] {
            assert_eq!(
                Config::resolve(&Flags::default(), env(&[(name, value)]))
                    .unwrap_err()
                    .name,
                name
            );
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            (ENV_HTTP_ADDR, "localhost"),
            (ENV_TEMPORARY_GRANT_SECS, "a week"),
            (ENV_TEMPORARY_GRANT_SECS, "0"),
            (ENV_TEMPORARY_GRANT_SECS, "-5"),
            (ENV_MAX_CLOCK_SKEW_SECS, "soon"),
            (ENV_REDIS_TIMEOUT_MS, "NaN"),
            (ENV_REDIS_HEALTH_INTERVAL_MS, "0"),
            (ENV_LOG_FORMAT, "xml"),
            (ENV_HTTP_MAX_CONNECTIONS, "0"),
            (ENV_HTTP_MAX_CONNECTIONS, "many"),
            (ENV_REDIS_REPLICA_ACKS, "-1"),
            (ENV_REDIS_REPLICA_ACKS, "one"),
            (ENV_REDIS_LAYOUT, "v3"),
            (ENV_REDIS_HOT_BUCKETS, "0"),
            (ENV_REDIS_HOT_BUCKETS, "100000"),
            (ENV_TLS_CERT, "cert.pem"),
            (ENV_TLS_KEY, "key.pem"),
            (ENV_TLS_CLIENT_CA, "ca.pem"),
            (ENV_TLS_RELOAD_SECS, "0"),
            (ENV_GRPC_MAX_CONNECTIONS, "0"),
            (ENV_GRPC_MAX_STREAMS_PER_CONNECTION, "-1"),
            (ENV_MAX_SUBSCRIPTIONS, "lots"),
            (ENV_STREAM_STALL_TIMEOUT_MS, "0"),
            (ENV_OUTBOUND_ALLOW_NETWORKS, "10.0.0.0/33"),
            (ENV_OUTBOUND_TIMEOUT_MS, "40000"),
            (ENV_OUTBOUND_LEASE_MS, "0"),
            (ENV_OUTBOUND_RETRY_FOR_SECS, "soon"),
        ];
        for (name, value) in cases {
            let err = Config::resolve(&Flags::default(), env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
    }

    #[test]
    fn cluster_nodes_and_replica_acks_are_read_and_exclusive_with_the_url() {
        let c = Config::resolve(
            &Flags::default(),
            env(&[
                (
                    ENV_REDIS_CLUSTER_NODES,
                    "redis://:pw@a:7000,redis://:pw@b:7001",
                ),
                (ENV_REDIS_REPLICA_ACKS, "1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.redis_cluster_nodes.as_ref().map(|s| s.expose()),
            Some("redis://:pw@a:7000,redis://:pw@b:7001")
        );
        assert_eq!(c.redis_replica_acks, 1);
        assert!(!format!("{c:?}").contains("pw"));
        assert_eq!(
            Config::resolve(&Flags::default(), env(&[]))
                .unwrap()
                .redis_replica_acks,
            0
        );
        let both = Config::resolve(
            &Flags::default(),
            env(&[
                (ENV_REDIS_URL, "redis://a"),
                (ENV_REDIS_CLUSTER_NODES, "redis://b"),
            ]),
        )
        .unwrap_err();
        assert_eq!(both.name, ENV_REDIS_CLUSTER_NODES);
    }
}
