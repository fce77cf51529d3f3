//! `callgate-bench redis-memory`: how many bytes of Redis memory one stored consent costs.
//!
//! It records `--consents` decisions through [`ConsentStore::record`] of a real [`RedisStore`]
//! (so the figure is what production writes, scripts and all), reads Redis's `used_memory`
//! before and after, and divides. The split by key kind (`c`, `x`, `h`, `e`, `due`, …) is the
//! store's own [`RedisStore::memory_report`]: this tool sends no Redis command of its own.
//!
//! Safety: the target must be loopback unless `--allow-remote`, and its database must be empty
//! (`DBSIZE` 0): the tool refuses to write into a database that holds anything, so it can never
//! pollute real data. Run it against a throwaway server:
//! `redis-server --port 6390 --save '' --appendonly no`.
//!
//! The decisions are a deterministic mix (by `--seed`) shaped like the benchmark population:
//! 50% permanent grants, 20% temporary grants expiring in 7 days, 20% denials, and 10% a second,
//! later decision for a pair that already has one. Evidence is realistic in size: WhatsApp-style
//! message ids (`wamid.` + 29 characters), a paired message id, a response source, a sender id
//! and a 64-hex body hash.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
use callgate::store::redis::{KindUsage, Layout, RedisAddress, RedisConfig, RedisStore, SHARDS};
use callgate::store::{ConsentStore, RecordOutcome};
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::json;

use crate::population::{self, Rng, mix};
use crate::{BenchError, seconds, target};

#[derive(Debug, Args)]
pub struct RedisMemoryArgs {
    /// The Redis to fill. Its database must be empty; loopback only unless --allow-remote.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Consents (decisions) to record.
    #[arg(long, default_value_t = 1_000_000)]
    pub consents: u64,
    /// Decisions per `record` call.
    #[arg(long, default_value_t = 200)]
    pub batch_size: usize,
    /// `record` calls in flight.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Keys measured with MEMORY USAGE per key kind.
    #[arg(long, default_value_t = 1000)]
    pub sample: usize,
    /// Give up recording after this many seconds (the figure is then over what was recorded).
    #[arg(long, default_value_t = 1800.0)]
    pub duration: f64,
    /// Key prefix (as `CALLGATE_REDIS_PREFIX`).
    #[arg(long, default_value = RedisConfig::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Seed of the decision mix and of the sample.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The store's key layout: `v2` (the layout a new store is written in,
    /// docs/redis-layout-v2.md) or `v1` (a store written before v2).
    #[arg(long, default_value = "v2", value_parser = ["v1", "v2"])]
    pub layout: String,
    /// Layout v2's hot-record buckets per shard, a deployment's sizing (`RedisConfig::
    /// hot_buckets`). Default: about 64 pairs a bucket for --consents (as the prototype).
    #[arg(long)]
    pub hot_buckets: Option<u32>,
}

/// Share of consents (out of 100) that are a second decision for an existing pair.
const SECOND_DECISION_FROM: u64 = 90;
/// Deterministic printable characters (base64url alphabet) from a hash of `(seed, i, salt)`.
fn token(seed: u64, i: u64, salt: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = Rng::new(seed ^ salt, i);
    let mut out = String::with_capacity(len);
    let mut bits = 0u64;
    let mut left = 0;
    for _ in 0..len {
        if left < 6 {
            bits = rng.next_u64();
            left = 64;
        }
        out.push(ALPHABET[(bits & 63) as usize] as char);
        bits >>= 6;
        left -= 6;
    }
    out
}

fn digits(seed: u64, i: u64, salt: u64, len: usize) -> String {
    let mut rng = Rng::new(seed ^ salt, i);
    (0..len)
        .map(|_| char::from(b'0' + (rng.below(10) as u8)))
        .collect()
}

/// The decision mix: consent `i` of a run starting at `start`.
pub struct Mix {
    pub seed: u64,
    pub start: DateTime<Utc>,
}

impl Mix {
    fn roll(&self, i: u64) -> u64 {
        mix(self.seed ^ mix(i)) % 100
    }

    fn pair(&self, i: u64) -> Pair {
        let phone = |s: String| PhoneNumber::parse(&s).expect("population numbers are valid");
        Pair::new(
            phone(population::business(i)),
            phone(population::customer(i)),
        )
    }

    /// The pair consent `i` is about, and its roll (`0..90`: the kind).
    fn pair_index(&self, i: u64) -> (u64, u64) {
        let roll = self.roll(i);
        if roll >= SECOND_DECISION_FROM && i > 0 {
            // An earlier consent that was a first decision (at most a few steps back).
            let mut j = mix(self.seed ^ i.rotate_left(17)) % i;
            while j > 0 && self.roll(j) >= SECOND_DECISION_FROM {
                j -= 1;
            }
            // The kind of the second decision follows the same 50/20/20 shares.
            (j, mix(i ^ 0x5eed) % SECOND_DECISION_FROM)
        } else {
            (i, roll % SECOND_DECISION_FROM)
        }
    }

    /// Consent `i`: a first decision for pair `i`, or (10%) a later one for an earlier pair.
    pub fn decision(&self, i: u64) -> Decision {
        let (pair_index, roll) = self.pair_index(i);
        // Decisions are spaced 10 ms apart in index order, so a second decision is later than
        // the first one for its pair.
        let decided_at =
            self.start - chrono::Duration::days(1) + chrono::Duration::milliseconds(i as i64 * 10);
        let choice = match roll {
            0..50 => Choice::GrantPermanent,
            50..70 => Choice::GrantTemporary {
                // A 7-day grant lapses 7 days after it was decided (distinct instants, as in
                // life; one shared instant would make one run of equal due keys).
                expires_at: decided_at + chrono::Duration::days(7),
            },
            _ => Choice::Deny,
        };
        let source = if mix(i ^ 0xd7).is_multiple_of(4) {
            Source::DoubleTick
        } else {
            Source::WhatsApp
        };
        let sender = match source {
            Source::WhatsApp => format!("US.{}", digits(self.seed, i, 3, 20)),
            Source::DoubleTick => format!("dtc_{}", token(self.seed, i, 3, 16)),
        };
        Decision {
            pair: self.pair(pair_index),
            choice,
            decided_at,
            evidence: Evidence {
                source,
                message_id: format!("wamid.{}", token(self.seed, i, 1, 29)),
                paired_message_id: format!("wamid.{}", token(self.seed, i, 2, 29)),
                response_source: "user_initiated".to_owned(),
                sender_customer_id: sender,
                body_sha256: std::array::from_fn(|b| {
                    let word = Rng::new(self.seed ^ 4, i * 4 + b as u64 / 8).next_u64();
                    word.to_be_bytes()[b % 8]
                }),
                stated_at: decided_at,
                stated_expires_at: choice.expires_at(),
            },
            attribution: None,
            customer_name: None,
        }
    }
}

fn store_error(what: &str) -> impl Fn(callgate::store::StoreError) -> BenchError + '_ {
    move |e| BenchError::Invalid(format!("{what}: {e}"))
}

/// Connects the store, refusing a non-loopback target (unless allowed, checked before
/// connecting) and a database that holds any key.
async fn guarded_store(config: RedisConfig, allow_remote: bool) -> Result<RedisStore, BenchError> {
    match config.address().map_err(store_error("--redis-url"))? {
        RedisAddress::Tcp { host, port } => {
            // Brackets for IPv6 literals, so `host:port` resolves.
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host
            };
            target::resolve(&format!("{host}:{port}"), allow_remote).await?;
        }
        RedisAddress::Unix(_) => {}
    }
    let redacted = config.redacted_url();
    // Connecting a store marks an empty database's layout (one key).
    let own_keys = 1;
    let store = RedisStore::connect(config)
        .await
        .map_err(store_error("cannot connect the store"))?;
    let size = store
        .memory_usage()
        .await
        .map_err(store_error("INFO memory / DBSIZE"))?
        .keys;
    if size != own_keys {
        return Err(BenchError::Invalid(format!(
            "refusing to run: the database at {redacted} holds {size} keys (DBSIZE must be 0; use \
             a throwaway server, e.g. `redis-server --port 6390 --save '' --appendonly no`)"
        )));
    }
    Ok(store)
}

/// `encoding:count,…` of a kind's sample.
fn encodings(s: &KindUsage) -> String {
    s.encodings
        .iter()
        .map(|(e, n)| format!("{e}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs the measurement and prints it. Returns the number of failed `record` calls (0: a
/// failure stops the run with an error instead).
pub async fn run(
    a: RedisMemoryArgs,
    allow_remote: bool,
    json_out: bool,
) -> Result<u64, BenchError> {
    if a.consents == 0 || a.batch_size == 0 || a.concurrency == 0 {
        return Err(BenchError::Invalid(
            "--consents, --batch-size and --concurrency must be at least 1".into(),
        ));
    }
    let budget = seconds("--duration", a.duration)?;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let mut config = RedisConfig::new(a.redis_url.clone());
    config.prefix = a.prefix.clone();
    config.timeout = Duration::from_secs(10);
    config.layout = if a.layout == "v2" {
        Layout::V2
    } else {
        Layout::V1
    };
    config.hot_buckets = a
        .hot_buckets
        .unwrap_or_else(|| crate::record_prototype::hot_buckets(a.consents, SHARDS as u64) as u32);
    let hot_buckets = config.hot_buckets;
    let redacted_url = config.redacted_url();
    let store = Arc::new(guarded_store(config, allow_remote).await?);
    // After connecting: the store's scripts are loaded and count as "before".
    let before = store
        .memory_usage()
        .await
        .map_err(store_error("INFO memory"))?
        .used_memory;

    let started = Instant::now();
    let deadline = started + budget;
    let mix = Arc::new(Mix {
        seed: a.seed,
        start: callgate::domain::to_millis_precision(Utc::now()),
    });
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..a.concurrency {
        let (store, mix, next) = (store.clone(), mix.clone(), next.clone());
        let (n, size) = (a.consents, a.batch_size as u64);
        tasks.spawn(async move {
            let mut tally = [0u64; 3];
            loop {
                if Instant::now() >= deadline {
                    break;
                }
                let from = next.fetch_add(size, Ordering::Relaxed);
                if from >= n {
                    break;
                }
                let batch: Vec<Decision> = (from..(from + size).min(n))
                    .map(|i| mix.decision(i))
                    .collect();
                let outcomes = store.record(&batch, Utc::now()).await?;
                for o in outcomes {
                    tally[match o {
                        RecordOutcome::Applied => 0,
                        RecordOutcome::Stale => 1,
                        RecordOutcome::Duplicate => 2,
                    }] += 1;
                }
            }
            Ok::<_, callgate::store::StoreError>(tally)
        });
    }
    let mut tally = [0u64; 3];
    while let Some(joined) = tasks.join_next().await {
        let t = joined
            .map_err(|e| BenchError::Invalid(format!("worker failed: {e}")))?
            .map_err(|e| BenchError::Invalid(format!("record failed: {e}")))?;
        for (sum, v) in tally.iter_mut().zip(t) {
            *sum += v;
        }
    }
    let recorded: u64 = tally.iter().sum();
    let elapsed = started.elapsed();
    if recorded == 0 {
        return Err(BenchError::Invalid("no consent was recorded".into()));
    }

    let report = store
        .memory_report(a.sample, a.seed)
        .await
        .map_err(store_error("memory report"))?;
    let after = report.usage.used_memory;
    let kinds = &report.kinds;
    let keys: u64 = kinds.values().map(|k| k.keys).sum();
    let delta = after.saturating_sub(before);
    let per_consent = delta as f64 / recorded as f64;
    let streams = kinds.get("e").map_or(0.0, KindUsage::estimated_bytes);
    let attributed: f64 = kinds.values().map(KindUsage::estimated_bytes).sum();
    let version = &report.redis_version;
    let list_size = &report.list_max_listpack_size;
    let hash_value = &report.hash_max_listpack_value;

    if json_out {
        let by_kind: serde_json::Map<String, serde_json::Value> = kinds
            .iter()
            .map(|(kind, s)| {
                (
                    kind.clone(),
                    json!({
                        "keys": s.keys,
                        "sampled": s.sampled,
                        "mean_bytes": s.mean_bytes(),
                        "encodings": encodings(s),
                        "estimated_bytes": s.estimated_bytes(),
                        "bytes_per_consent": s.estimated_bytes() / recorded as f64,
                    }),
                )
            })
            .collect();
        println!(
            "{}",
            json!({
                "scenario": "redis-memory",
                "command": command_line,
                "redis_version": version,
                "list_max_listpack_size": list_size,
                "hash_max_listpack_value": hash_value,
                "prefix": a.prefix,
                "layout": a.layout,
                "hot_buckets": hot_buckets,
                "consents": recorded,
                "requested": a.consents,
                "applied": tally[0],
                "stale": tally[1],
                "duplicate": tally[2],
                "seconds": elapsed.as_secs_f64(),
                "keys": keys,
                "used_memory_before": before,
                "used_memory_after": after,
                "delta_bytes": delta,
                "bytes_per_consent": per_consent,
                "bytes_per_consent_without_events": (delta as f64 - streams) / recorded as f64,
                "by_kind": by_kind,
            })
        );
        return Ok(0);
    }

    println!("command:   {command_line}");
    println!(
        "redis:     {version} at {} (prefix {:?}, layout {} with {hot_buckets} hot-record \
         buckets a shard; list-max-listpack-size {list_size}, hash-max-listpack-value \
         {hash_value})",
        redacted_url, a.prefix, a.layout
    );
    let cut_short = if recorded < a.consents {
        format!(" (of {} asked: stopped by --duration)", a.consents)
    } else {
        String::new()
    };
    println!(
        "recorded:  {recorded} consents{cut_short} in {:.1} s: {} applied, {} stale, {} \
         duplicate; {keys} keys",
        elapsed.as_secs_f64(),
        tally[0],
        tally[1],
        tally[2]
    );
    println!("used_memory before {before} B, after {after} B, delta {delta} B");
    println!(
        "bytes per consent: {per_consent:.1} (without the event log: {:.1})",
        (delta as f64 - streams) / recorded as f64
    );
    println!(
        "by key kind (MEMORY USAGE SAMPLES 0 over a random sample of up to {} keys per kind):",
        a.sample
    );
    println!(
        "  {:<8} {:>9} {:>8} {:>9} {:>14} {:>10}  encodings",
        "kind", "keys", "sampled", "mean B", "est. total B", "B/consent"
    );
    for (kind, s) in kinds {
        println!(
            "  {:<8} {:>9} {:>8} {:>9.1} {:>14.0} {:>10.1}  {}",
            kind,
            s.keys,
            s.sampled,
            s.mean_bytes(),
            s.estimated_bytes(),
            s.estimated_bytes() / recorded as f64,
            encodings(s)
        );
    }
    println!(
        "  {:<8} {:>9} {:>8} {:>9} {:>14.0} {:>10.1}  (main dict tables, expires dict, allocator)",
        "other",
        "",
        "",
        "",
        delta as f64 - attributed,
        (delta as f64 - attributed) / recorded as f64
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_deterministic_realistic_and_has_the_shares() {
        let m = Mix {
            seed: 1,
            start: DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
        };
        let n = 20_000;
        let (mut perm, mut temp, mut deny, mut second) = (0, 0, 0, 0);
        for i in 0..n {
            let d = m.decision(i);
            assert_eq!(d, m.decision(i));
            assert_eq!(d.evidence.message_id.len(), 35);
            let (first, _) = m.pair_index(i);
            if first != i {
                second += 1;
                assert_eq!(m.decision(first).pair, d.pair);
                assert!(m.decision(first).decided_at < d.decided_at);
                continue;
            }
            match d.choice {
                Choice::GrantPermanent => perm += 1,
                Choice::GrantTemporary { expires_at } => {
                    assert!(expires_at > m.start);
                    temp += 1
                }
                Choice::Deny => deny += 1,
            }
        }
        let share = |c: u64| c as f64 / n as f64;
        for (got, want) in [(perm, 0.5), (temp, 0.2), (deny, 0.2), (second, 0.1)] {
            assert!(
                (share(got) - want).abs() < 0.02,
                "{perm} {temp} {deny} {second}"
            );
        }
    }
}
