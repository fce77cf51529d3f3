//! What the Redis behind a store is and what the store's data costs there: where a URL points
//! (so a tool can refuse a remote server before connecting), Redis's memory, and the store's
//! keys counted by kind with a measured sample of each kind's size.
//!
//! Read-only: nothing here writes a key. `callgate-bench redis-memory` (BENCHMARKS.md) fills an
//! empty Redis through [`RedisStore::record`](crate::store::ConsentStore::record) and divides
//! these figures by the consents it recorded; the service itself never calls this module.
//!
//! The split by kind walks the keyspace once (`SCAN … MATCH` of this prefix's shards) and
//! measures a uniform sample of each kind with `MEMORY USAGE … SAMPLES 0` (every element, not
//! an estimate) and `OBJECT ENCODING`. The sample is the keys with the smallest hashes of
//! `(seed, key)`: uniform, deterministic for one seed, and kept in bounded memory however many
//! keys there are. `SCAN` may return a key twice if Redis resizes its table during the walk, so
//! a count can be high by the few keys it repeated.

use std::collections::{BTreeMap, BinaryHeap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use redis::{ConnectionAddr, IntoConnectionInfo, Value};

use super::error::corrupt_reply;
use super::reply::{bytes_of, pairs_of};
use super::routing::Route;
use super::{RedisConfig, RedisStore};
use crate::store::StoreError;

/// Keys asked for per `SCAN` call.
const SCAN_COUNT: usize = 1000;
/// Keys measured per pipeline (two commands each).
const MEASURE_PIPELINE: usize = 500;

/// Where a Redis URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisAddress {
    /// A host name or IP literal (an IPv6 literal without brackets) and a port, with or
    /// without TLS.
    Tcp { host: String, port: u16 },
    /// A Unix socket on this machine.
    Unix(PathBuf),
}

impl RedisConfig {
    /// Where [`url`](Self::url) points, read without connecting.
    pub fn address(&self) -> Result<RedisAddress, StoreError> {
        let bad = |reason: String| {
            StoreError::Misconfigured(format!(
                "cannot use Redis URL {}: {reason}",
                self.redacted_url()
            ))
        };
        let info = self
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| bad(e.to_string()))?;
        match info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                Ok(RedisAddress::Tcp {
                    host: host.clone(),
                    port: *port,
                })
            }
            ConnectionAddr::Unix(path) => Ok(RedisAddress::Unix(path.clone())),
            _ => Err(bad("unsupported address kind".into())),
        }
    }
}

/// Redis's memory and key count at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUsage {
    /// `used_memory` of `INFO memory`: every byte Redis's allocator holds, data and overhead.
    pub used_memory: u64,
    /// `DBSIZE`: keys in the database, this store's and any other's.
    pub keys: u64,
}

/// The store's keys of one kind, and what a sample of them costs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindUsage {
    /// Keys of this kind found by the walk.
    pub keys: u64,
    /// Sampled keys that were measured (a key deleted or expired meanwhile is not).
    pub sampled: u64,
    /// Sum of `MEMORY USAGE … SAMPLES 0` over the measured keys, in bytes.
    pub sampled_bytes: u64,
    /// `OBJECT ENCODING` of the sampled keys (`embstr`, `listpack`, `stream`, … or `gone`),
    /// with how many had it.
    pub encodings: BTreeMap<String, u64>,
}

impl KindUsage {
    /// Mean bytes of one key of this kind, over the sample (0 if nothing was measured).
    pub fn mean_bytes(&self) -> f64 {
        if self.sampled == 0 {
            0.0
        } else {
            self.sampled_bytes as f64 / self.sampled as f64
        }
    }

    /// The sample's mean scaled to every key of this kind.
    pub fn estimated_bytes(&self) -> f64 {
        self.mean_bytes() * self.keys as f64
    }
}

/// What the store's data costs in Redis memory, by key kind.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// Redis's memory and key count when the walk began.
    pub usage: MemoryUsage,
    /// `redis_version` of `INFO server`.
    pub redis_version: String,
    /// `list-max-listpack-size` and `hash-max-listpack-value`: the settings that decide how the
    /// histories and the due indexes are encoded, so how many bytes they take.
    pub list_max_listpack_size: String,
    pub hash_max_listpack_value: String,
    /// This store's keys by kind: `c`, `x`, `h`, `d`, `e`, `due`, `trimmed` (see [`super::keys`]).
    pub kinds: BTreeMap<String, KindUsage>,
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// A sample of fixed size: the keys with the smallest hashes seen so far.
struct Sample {
    seed: u64,
    size: usize,
    /// Max-heap on the hash, so the largest kept hash is the one to drop.
    /// Key names are bytes: layout v2's lease and dedup keys carry packed phone numbers.
    kept: BinaryHeap<(u64, Vec<u8>)>,
}

impl Sample {
    fn offer(&mut self, key: &[u8]) {
        if self.size == 0 {
            return;
        }
        let mut h = DefaultHasher::new();
        (self.seed, key).hash(&mut h);
        let hash = h.finish();
        if self.kept.len() < self.size {
            self.kept.push((hash, key.to_vec()));
        } else if self.kept.peek().is_some_and(|(top, _)| hash < *top) {
            self.kept.pop();
            self.kept.push((hash, key.to_vec()));
        }
    }
}

impl RedisStore {
    /// Redis's `used_memory` and `DBSIZE`, in one round trip.
    pub async fn memory_usage(&self) -> Result<MemoryUsage, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("memory").cmd("DBSIZE");
        let (info, keys): (String, u64) = self.read_pipe(Route::Keyless, &pipe).await?;
        let used_memory = info_field(&info, "used_memory")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt_reply("INFO memory (no used_memory)"))?;
        Ok(MemoryUsage { used_memory, keys })
    }

    /// Counts this store's keys by kind and measures up to `sample` keys of each kind (chosen
    /// by `seed`), with Redis's memory, version and encoding settings. One `SCAN` walk of the
    /// keyspace: on a large database it takes seconds and is meant for a benchmark or an
    /// operator, never for a request path.
    pub async fn memory_report(
        &self,
        sample: usize,
        seed: u64,
    ) -> Result<MemoryReport, StoreError> {
        let usage = self.memory_usage().await?;
        let mut server = redis::cmd("INFO");
        server.arg("server");
        let info: String = self.read_cmd(Route::Keyless, &server).await?;
        let redis_version = info_field(&info, "redis_version")
            .ok_or_else(|| corrupt_reply("INFO server (no redis_version)"))?
            .to_owned();
        let list_max_listpack_size = self.config_get("list-max-listpack-size").await?;
        let hash_max_listpack_value = self.config_get("hash-max-listpack-value").await?;

        let mut kinds: BTreeMap<String, (KindUsage, Sample)> = BTreeMap::new();
        let pattern = self.keys.scan_pattern();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found): (u64, Vec<Vec<u8>>) = self.read_cmd(Route::Keyless, &scan).await?;
            for key in &found {
                let Some(kind) = self.keys.kind_of(key) else {
                    continue;
                };
                let (stats, kept) = kinds.entry(kind.to_owned()).or_insert_with(|| {
                    let kept = Sample {
                        seed,
                        size: sample,
                        kept: BinaryHeap::new(),
                    };
                    (KindUsage::default(), kept)
                });
                stats.keys += 1;
                kept.offer(key);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }

        let mut measured = BTreeMap::new();
        for (kind, (mut stats, kept)) in kinds {
            let keys: Vec<Vec<u8>> = kept.kept.into_iter().map(|(_, key)| key).collect();
            for chunk in keys.chunks(MEASURE_PIPELINE) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    pipe.cmd("MEMORY")
                        .arg("USAGE")
                        .arg(key)
                        .arg("SAMPLES")
                        .arg(0);
                    pipe.cmd("OBJECT").arg("ENCODING").arg(key);
                }
                let replies: Vec<(Option<u64>, Option<String>)> =
                    self.read_pipe(Route::Keyless, &pipe).await?;
                for (bytes, encoding) in replies {
                    if let Some(bytes) = bytes {
                        stats.sampled += 1;
                        stats.sampled_bytes += bytes;
                    }
                    *stats
                        .encodings
                        .entry(encoding.unwrap_or_else(|| "gone".into()))
                        .or_default() += 1;
                }
            }
            measured.insert(kind, stats);
        }
        Ok(MemoryReport {
            usage,
            redis_version,
            list_max_listpack_size,
            hash_max_listpack_value,
            kinds: measured,
        })
    }

    /// One setting's value from `CONFIG GET` (which [`connect`](RedisStore::connect) already
    /// requires to work).
    async fn config_get(&self, name: &str) -> Result<String, StoreError> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let reply: Value = self.read_cmd(Route::Keyless, &cmd).await?;
        pairs_of(&reply)
            .and_then(|pairs| {
                pairs
                    .into_iter()
                    .find(|(k, _)| bytes_of(k) == Some(name.as_bytes()))
                    .and_then(|(_, v)| bytes_of(v))
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
            .ok_or_else(|| corrupt_reply("CONFIG GET"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info =
            "# Memory\r\nused_memory:1043\r\nused_memory_human:1.02K\r\nused_memory_rss:9\r\n";
        assert_eq!(info_field(info, "used_memory"), Some("1043"));
        assert_eq!(info_field(info, "used_memory_rss"), Some("9"));
        assert_eq!(info_field(info, "used_mem"), None);
    }

    #[test]
    fn a_sample_is_bounded_deterministic_and_seeded() {
        let pick = |seed, size| {
            let mut s = Sample {
                seed,
                size,
                kept: BinaryHeap::new(),
            };
            for i in 0..1000 {
                s.offer(format!("k{i}").as_bytes());
            }
            let mut keys: Vec<Vec<u8>> = s.kept.into_iter().map(|(_, k)| k).collect();
            keys.sort();
            keys
        };
        assert_eq!(pick(1, 10).len(), 10);
        assert_eq!(pick(1, 10), pick(1, 10));
        assert_ne!(pick(1, 10), pick(2, 10));
        assert_eq!(pick(1, 5000).len(), 1000);
        assert!(pick(1, 0).is_empty());
    }

    #[test]
    fn addresses_are_read_from_the_url_without_connecting() {
        for (url, want) in [
            (
                "redis://127.0.0.1:6390",
                RedisAddress::Tcp {
                    host: "127.0.0.1".into(),
                    port: 6390,
                },
            ),
            (
                "redis://:pw@localhost/2",
                RedisAddress::Tcp {
                    host: "localhost".into(),
                    port: 6379,
                },
            ),
            (
                "redis+unix:///tmp/redis.sock",
                RedisAddress::Unix("/tmp/redis.sock".into()),
            ),
        ] {
            assert_eq!(RedisConfig::new(url).address().unwrap(), want, "{url}");
        }
        let err = RedisConfig::new("http://:hunter2@example.com")
            .address()
            .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
