//! `callgate-bench redis-memory-floor`: what Redis charges for the same consents in the most
//! compact layout we know of that keeps every piece of evidence: the memory floor the
//! `redis-memory` figure is compared with (as `floor` is for the check's speed).
//!
//! It writes the `redis-memory` tool's decision mix ([`Mix`], same seed, same shares) straight
//! into an empty Redis with plain commands, in a layout callgate's store does **not** use
//! (see BENCHMARKS.md, "Redis memory floor"):
//!
//! - **history segments**: every decision's history entry, packed (binary times, one flag
//!   byte, message ids as 6-bit packed text, known response sources as one byte, the body
//!   hash, the entry's chain hash; no previous hash, dedup id or fingerprint: each is derived
//!   from what is kept), written with `SETRANGE` into per-shard strings of a fixed
//!   [`SEGMENT`] size, created at full size so they never grow (no allocator slack);
//!   each entry points back to its pair's previous entry;
//! - **hot records** in hash buckets (`HSET`, listpack-encoded under Redis's default
//!   `hash-max-listpack-*`): field = the pair as two 7-byte numbers, value = what a check and
//!   the record script need (rank, times, the current decision's dedup id for tie-breaks, a
//!   pointer to its entry);
//! - **per-business indexes** by received and by event time, the **due index** and the
//!   **calling list**, as sorted sets with binary members.
//!
//! Variants, to tell which choices the bytes depend on (BENCHMARKS.md, "The floor at scale"):
//!
//! - `--indexes packed`: the per-business indexes as packed chunk strings instead of sorted
//!   sets ([`write_packed_indexes`]). A sorted set stays a listpack only up to 128 members;
//!   past that (a business with more than ~2,300 decisions over 18 shards) each member costs
//!   a skiplist node and a dict entry, and at 1,000,000 consents the three indexes cost more
//!   than the whole target;
//! - `--native-expiry`: a one-byte lease key per live temporary grant, with `PXAT`, so Redis
//!   still ends a grant on time (a hash field cannot expire in Redis 7.0);
//! - `--history stream`: one stream per shard instead of fixed segments.
//!
//! It is a measurement of bytes, not a store: no script, no event log (not counted in the
//! target), no concurrency control. Same safety rules as `redis-memory`: loopback only unless
//! `--allow-remote`, and the database must be empty.

use std::collections::HashMap;

use callgate::domain::{ChainLink, Choice, Decision, GENESIS, HistoryEntry, HistoryOutcome, Pair};
use callgate::store::redis::codec::packed::{
    HotRecord, POINTER_LEN, Pointer, encode_entry, pair_field, phone_bytes,
};
use callgate::store::redis::keys::{fnv1a, shard_of, shard_tags};
use chrono::Utc;
use clap::Args;
use serde_json::json;

use crate::redis_memory::Mix;
use crate::{BenchError, target};

#[derive(Debug, Args)]
pub struct RedisFloorArgs {
    /// The Redis to fill. Its database must be empty; loopback only unless --allow-remote.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Consents (decisions) to write.
    #[arg(long, default_value_t = 200_000)]
    pub consents: u64,
    /// Pairs per hot-record bucket the bucket count is sized for (a layout constant a real
    /// store would fix at deploy time). Redis keeps a hash listpack-encoded up to 128 fields.
    #[arg(long, default_value_t = 64)]
    pub pairs_per_bucket: u64,
    /// Seed of the decision mix (as `redis-memory --seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where packed history entries go: fixed-size `segments` (`SETRANGE`), or one `stream`
    /// per shard (`XADD`, an entry's pointer is its stream id's sequence).
    #[arg(long, value_enum, default_value_t = HistoryLayout::Segments)]
    pub history: HistoryLayout,
    /// Keep native expiry: every live temporary grant also gets a one-byte lease key with
    /// `PXAT` at its expiry (`t:<pair>`), which Redis deletes on time.
    #[arg(long)]
    pub native_expiry: bool,
    /// How the per-business indexes (by received time `br`, by event time `be`, the calling
    /// list `l`) are kept: Redis sorted sets with binary members, packed into fixed-size
    /// chunk strings (`bri`, `bei`, `li`; see [`write_packed_indexes`]), or not at all (to
    /// measure what they cost).
    #[arg(long, value_enum, default_value_t = IndexLayout::SortedSets)]
    pub indexes: IndexLayout,
}

/// How the floor keeps the per-business indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IndexLayout {
    /// Sorted sets with binary members (listpack up to 128 members, then a skiplist).
    SortedSets,
    /// Posting lists of entry pointers and sorted customer arrays in 1 KiB chunk strings.
    Packed,
    /// No per-business index.
    None,
}

/// A packed index chunk: 1 KiB less the string header and terminator.
pub const CHUNK: usize = 1024 - 16;

/// Customers per calling-list chunk, in bytes: whole 7-byte customers, three quarters of a
/// chunk (a B-tree's leaves average about that under inserts and deletes).
pub const CALLING_LIST_FILL: usize = CHUNK * 3 / 4 / 7 * 7;
const _: () = assert!(
    CALLING_LIST_FILL.is_multiple_of(7)
        && CALLING_LIST_FILL <= CHUNK * 3 / 4
        && CALLING_LIST_FILL + 7 > CHUNK * 3 / 4
);

/// Writes the packed indexes: every (shard, business) posting list of entry pointers in full
/// chunks (append-only: only the last chunk has room), and every calling list as sorted
/// 7-byte customers filled to three quarters of each chunk (what a B-tree's leaves average
/// under inserts and deletes).
fn write_packed_indexes(
    pipe: &mut redis::Pipeline,
    postings: &HashMap<String, Vec<u8>>,
    callable: &HashMap<String, std::collections::BTreeSet<[u8; 7]>>,
) {
    let mut write = |key: &str, bytes: &[u8], per_chunk: usize| {
        for (n, chunk) in bytes.chunks(per_chunk).enumerate() {
            let name = format!("{key}:{n}");
            pipe.cmd("SETRANGE")
                .arg(&name)
                .arg(CHUNK - 1)
                .arg(&[0u8][..])
                .ignore();
            pipe.cmd("SETRANGE").arg(&name).arg(0).arg(chunk).ignore();
        }
    };
    for (key, bytes) in postings {
        write(key, bytes, CHUNK);
    }
    for (key, customers) in callable {
        let bytes: Vec<u8> = customers.iter().flatten().copied().collect();
        write(key, &bytes, CALLING_LIST_FILL);
    }
}

/// Where the floor's history entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryLayout {
    /// Fixed-size per-shard strings written with `SETRANGE`.
    Segments,
    /// One stream per shard, one entry per decision.
    Stream,
}

/// Size of a history segment: 16 KiB less the string header and terminator, so each
/// segment's allocation is exactly one 16 KiB allocator class.
pub const SEGMENT: usize = 16 * 1024 - 16;

/// An index member: a time (8 bytes, sign flipped, so members sort by time), the customer
/// and the entry's pointer.
fn index_member(ms: i64, customer: &[u8; 7], at: [u8; POINTER_LEN]) -> Vec<u8> {
    let mut out = ((ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    out.extend_from_slice(customer);
    out.extend_from_slice(&at);
    out
}

/// Per shard: the open segment and its write offset.
#[derive(Default)]
struct Segments {
    number: u32,
    used: usize,
    opened: bool,
}

struct PairState {
    current: Decision,
    current_at: Pointer,
    newest: Pointer,
    hash: [u8; 32],
    position: u64,
}

pub async fn run(a: RedisFloorArgs, allow_remote: bool, json_out: bool) -> Result<u64, BenchError> {
    if a.consents == 0 || a.pairs_per_bucket == 0 {
        return Err(BenchError::Invalid(
            "--consents and --pairs-per-bucket must be at least 1".into(),
        ));
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let mut conn = connect_empty(&a.redis_url, allow_remote).await?;
    let fail = |what: &'static str| {
        move |e: redis::RedisError| BenchError::Invalid(format!("{what}: {e}"))
    };
    let before = used_memory(&mut conn).await?;

    let tags = shard_tags("callgate");
    let shards = tags.len();
    // Buckets per shard, sized for the pairs this run writes (90% of consents are a pair's
    // first decision).
    let buckets = (a.consents * 9 / 10 / a.pairs_per_bucket / shards as u64).max(1);
    let mix = Mix {
        seed: a.seed,
        start: callgate::domain::to_millis_precision(Utc::now()),
    };
    let mut segments: Vec<Segments> = (0..shards).map(|_| Segments::default()).collect();
    let mut pairs: HashMap<Pair, PairState> = HashMap::new();
    let (mut entry_bytes, mut hot_bytes, mut hot_count) = (0u64, 0u64, 0u64);
    let mut postings: HashMap<String, Vec<u8>> = HashMap::new();
    let mut callable: HashMap<String, std::collections::BTreeSet<[u8; 7]>> = HashMap::new();
    let mut pipe = redis::pipe();
    let mut queued = 0;
    for i in 0..a.consents {
        let d = mix.decision(i);
        let received_at = d.decided_at + chrono::Duration::milliseconds(120);
        let shard = shard_of(&d.pair);
        let tag = &tags[shard];
        let previous = pairs.get(&d.pair);
        let applied = previous.is_none_or(|p| {
            callgate::domain::rules::precedence(&d, &p.current) == std::cmp::Ordering::Greater
        });
        let outcome = if applied {
            HistoryOutcome::Applied
        } else {
            HistoryOutcome::Stale
        };
        let entry = HistoryEntry {
            decision: d.clone(),
            outcome,
            received_at,
        };
        let (position, prev) = previous.map_or((0, GENESIS), |p| (p.position + 1, p.hash));
        let link = ChainLink::new(position, prev, &entry);
        let packed = encode_entry(&entry, &link.hash, previous.map(|p| p.newest))
            .map_err(|e| BenchError::Invalid(format!("packing an entry: {e}")))?;
        entry_bytes += packed.len() as u64;
        let seg = &mut segments[shard];
        if a.history == HistoryLayout::Stream {
            // The pointer is the entry's stream sequence (ids `1-<n>`).
            seg.used += 1;
            pipe.cmd("XADD")
                .arg(format!("{{{tag}}}:g"))
                .arg(format!("1-{}", seg.used))
                .arg("e")
                .arg(&packed)
                .ignore();
        } else if !seg.opened || seg.used + packed.len() > SEGMENT {
            if seg.opened {
                seg.number += 1;
            }
            seg.opened = true;
            seg.used = 0;
            // Created at full size: it never grows.
            pipe.cmd("SETRANGE")
                .arg(format!("{{{tag}}}:g:{}", seg.number))
                .arg(SEGMENT - 1)
                .arg(&[0u8][..])
                .ignore();
        }
        let at = Pointer {
            segment: seg.number,
            offset: seg.used as u16,
        };
        let at = if a.history == HistoryLayout::Stream {
            Pointer {
                segment: seg.used as u32,
                offset: 0,
            }
        } else {
            pipe.cmd("SETRANGE")
                .arg(format!("{{{tag}}}:g:{}", seg.number))
                .arg(seg.used)
                .arg(&packed)
                .ignore();
            seg.used += packed.len();
            at
        };

        let customer = phone_bytes(&d.pair.customer);
        let at_bytes = at
            .encode()
            .map_err(|e| BenchError::Invalid(format!("packing a pointer: {e}")))?;
        let business = d.pair.business.digits();
        let indexes = [
            ("br", received_at.timestamp_millis()),
            ("be", d.decided_at.timestamp_millis()),
        ];
        if a.indexes == IndexLayout::Packed {
            for (kind, _) in indexes {
                let list = postings
                    .entry(format!("{{{tag}}}:{kind}i:{business}"))
                    .or_default();
                list.extend_from_slice(&at_bytes);
            }
        }
        for (kind, ms) in indexes
            .iter()
            .filter(|_| a.indexes == IndexLayout::SortedSets)
        {
            let (kind, ms) = (*kind, *ms);
            pipe.cmd("ZADD")
                .arg(format!("{{{tag}}}:{kind}:{business}"))
                .arg(0)
                .arg(index_member(ms, &customer, at_bytes))
                .ignore();
        }
        let (current, current_at) = match (applied, previous) {
            (false, Some(p)) => (p.current.clone(), p.current_at),
            _ => (d.clone(), at),
        };
        let hot = HotRecord {
            choice: current.choice,
            decided_at: current.decided_at,
            dedup_id: current.dedup_digest(),
            current: current_at,
            newest: at,
            count: position + 1,
        }
        .encode()
        .map_err(|e| BenchError::Invalid(format!("packing a hot record: {e}")))?;
        hot_bytes += hot.len() as u64;
        hot_count += u64::from(previous.is_none());
        let field = pair_field(&d.pair);
        let bucket = u64::from(fnv1a(&field)) / shards as u64 % buckets;
        pipe.cmd("HSET")
            .arg(format!("{{{tag}}}:p:{bucket}"))
            .arg(&field)
            .arg(&hot)
            .ignore();
        if applied {
            let due = format!("{{{tag}}}:due");
            let list = format!("{{{tag}}}:l:{business}");
            match current.choice {
                Choice::GrantTemporary { expires_at } => {
                    if a.native_expiry {
                        pipe.cmd("SET")
                            .arg([format!("{{{tag}}}:t:").as_bytes(), &field].concat())
                            .arg(&b"1"[..])
                            .arg("PXAT")
                            .arg(expires_at.timestamp_millis())
                            .ignore();
                    }
                    pipe.cmd("ZADD")
                        .arg(&due)
                        .arg(expires_at.timestamp_millis())
                        .arg(&field)
                        .ignore();
                }
                _ => {
                    pipe.cmd("ZREM").arg(&due).arg(&field).ignore();
                    if a.native_expiry {
                        pipe.cmd("DEL")
                            .arg([format!("{{{tag}}}:t:").as_bytes(), &field].concat())
                            .ignore();
                    }
                }
            }
            let granted = current.choice != Choice::Deny;
            match a.indexes {
                IndexLayout::Packed => {
                    let set = callable
                        .entry(format!("{{{tag}}}:li:{business}"))
                        .or_default();
                    if granted {
                        set.insert(customer);
                    } else {
                        set.remove(&customer);
                    }
                }
                IndexLayout::SortedSets if granted => {
                    pipe.cmd("ZADD")
                        .arg(&list)
                        .arg(0)
                        .arg(&customer[..])
                        .ignore();
                }
                IndexLayout::SortedSets => {
                    pipe.cmd("ZREM").arg(&list).arg(&customer[..]).ignore();
                }
                IndexLayout::None => {}
            }
        }
        pairs.insert(
            d.pair.clone(),
            PairState {
                current,
                current_at,
                newest: at,
                hash: link.hash,
                position,
            },
        );
        queued += 1;
        if queued == 500 {
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(fail("write"))?;
            pipe = redis::pipe();
            queued = 0;
        }
    }
    write_packed_indexes(&mut pipe, &postings, &callable);
    if queued > 0 || !postings.is_empty() || !callable.is_empty() {
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(fail("write"))?;
    }
    let after = used_memory(&mut conn).await?;
    let keys: u64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .map_err(fail("DBSIZE"))?;
    let by_kind = usage_by_kind(&mut conn).await?;
    let delta = after.saturating_sub(before);
    let per_consent = delta as f64 / a.consents as f64;
    let mean_entry = entry_bytes as f64 / a.consents as f64;
    let mean_hot = hot_bytes as f64 / a.consents as f64;
    if json_out {
        println!(
            "{}",
            json!({
                "scenario": "redis-memory-floor",
                "command": command_line,
                "consents": a.consents,
                "pairs": hot_count,
                "buckets_per_shard": buckets,
                "keys": keys,
                "used_memory_before": before,
                "used_memory_after": after,
                "delta_bytes": delta,
                "bytes_per_consent": per_consent,
                "mean_entry_bytes": mean_entry,
                "mean_hot_record_bytes": mean_hot,
                "by_kind": by_kind_json(&by_kind, a.consents),
            })
        );
    } else {
        println!("command:   {command_line}");
        println!(
            "wrote:     {} consents for {hot_count} pairs; {keys} keys ({buckets} hot-record \
             buckets per shard, segments of {SEGMENT} B)",
            a.consents
        );
        println!("packed:    history entry {mean_entry:.1} B, hot record {mean_hot:.1} B (means)");
        println!("used_memory before {before} B, after {after} B, delta {delta} B");
        println!("bytes per consent (no event log): {per_consent:.1}");
        let counted = print_by_kind(&by_kind, a.consents);
        println!(
            "  other                  {:>11} B {:>7.1} B/consent (main dict, allocator)",
            delta.saturating_sub(counted),
            delta.saturating_sub(counted) as f64 / a.consents as f64
        );
    }
    Ok(0)
}

/// Every key of the database by kind (the name after the shard's tag, up to the next `:`).
pub(crate) async fn keys_by_kind(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<std::collections::BTreeMap<String, Vec<Vec<u8>>>, BenchError> {
    let mut by_kind: std::collections::BTreeMap<String, Vec<Vec<u8>>> = Default::default();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(|e| BenchError::Invalid(format!("SCAN: {e}")))?;
        for key in batch {
            let name = String::from_utf8_lossy(&key);
            let kind = name
                .split_once("}:")
                .map_or("?", |(_, rest)| rest.split(':').next().unwrap_or(rest))
                .to_owned();
            by_kind.entry(kind).or_default().push(key);
        }
        cursor = next;
        if cursor == 0 {
            return Ok(by_kind);
        }
    }
}

/// Every key's `MEMORY USAGE`, summed by kind ([`keys_by_kind`]): kind → (keys, bytes).
pub(crate) async fn usage_by_kind(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<std::collections::BTreeMap<String, (u64, u64)>, BenchError> {
    let mut usage = std::collections::BTreeMap::new();
    for (kind, keys) in keys_by_kind(conn).await? {
        let mut bytes = 0;
        for batch in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for key in batch {
                pipe.cmd("MEMORY")
                    .arg("USAGE")
                    .arg(key)
                    .arg("SAMPLES")
                    .arg(0);
            }
            let sizes: Vec<u64> = pipe
                .query_async(conn)
                .await
                .map_err(|e| BenchError::Invalid(format!("MEMORY USAGE: {e}")))?;
            bytes += sizes.iter().sum::<u64>();
        }
        usage.insert(kind, (keys.len() as u64, bytes));
    }
    Ok(usage)
}

/// A connection to the Redis at `url`, which must be on loopback (unless `allow_remote`) and
/// empty: the layout tools write into a throwaway database only.
pub(crate) async fn connect_empty(
    url: &str,
    allow_remote: bool,
) -> Result<redis::aio::MultiplexedConnection, BenchError> {
    let (host, port) = host_port(url)?;
    target::resolve(&format!("{host}:{port}"), allow_remote).await?;
    let fail = |what: &'static str| {
        move |e: redis::RedisError| BenchError::Invalid(format!("{what}: {e}"))
    };
    let client = redis::Client::open(url).map_err(fail("--redis-url"))?;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(fail("cannot connect"))?;
    let size: u64 = redis::cmd("DBSIZE")
        .query_async(&mut conn)
        .await
        .map_err(fail("DBSIZE"))?;
    if size != 0 {
        return Err(BenchError::Invalid(format!(
            "refusing to run: the database holds {size} keys (DBSIZE must be 0; use a \
             throwaway server, e.g. `redis-server --port 6395 --save '' --appendonly no`)"
        )));
    }
    Ok(conn)
}

/// [`usage_by_kind`] as JSON: kind → keys, bytes, bytes per consent.
pub(crate) fn by_kind_json(
    by_kind: &std::collections::BTreeMap<String, (u64, u64)>,
    consents: u64,
) -> serde_json::Value {
    by_kind
        .iter()
        .map(|(k, (n, b))| {
            let per = *b as f64 / consents as f64;
            (
                k.clone(),
                json!({"keys": n, "bytes": b, "bytes_per_consent": per}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Prints [`usage_by_kind`], a line a kind; returns the bytes counted.
pub(crate) fn print_by_kind(
    by_kind: &std::collections::BTreeMap<String, (u64, u64)>,
    consents: u64,
) -> u64 {
    println!("by key kind (MEMORY USAGE of every key):");
    let mut counted = 0;
    for (kind, (keys, bytes)) in by_kind {
        counted += bytes;
        println!(
            "  {kind:<7} {keys:>7} keys {bytes:>11} B {:>7.1} B/consent",
            *bytes as f64 / consents as f64
        );
    }
    counted
}

/// `used_memory` of `INFO memory`.
pub(crate) async fn used_memory(
    conn: &mut redis::aio::MultiplexedConnection,
) -> Result<u64, BenchError> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(conn)
        .await
        .map_err(|e| BenchError::Invalid(format!("INFO: {e}")))?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| BenchError::Invalid("INFO memory has no used_memory".into()))
}

/// `host` and `port` of a `redis://` URL (the floor needs no other form).
pub(crate) fn host_port(url: &str) -> Result<(String, u16), BenchError> {
    let bad = || BenchError::Invalid(format!("--redis-url {url:?}: expected redis://HOST:PORT"));
    let rest = url.strip_prefix("redis://").ok_or_else(bad)?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_indexes_fill_their_chunks_as_charged() {
        let mut pipe = redis::pipe();
        let postings = HashMap::from([("{t}:bri:1".to_owned(), vec![9u8; CHUNK + 5])]);
        let customers: std::collections::BTreeSet<[u8; 7]> = (0..200u8).map(|i| [i; 7]).collect();
        let callable = HashMap::from([("{t}:li:1".to_owned(), customers)]);
        write_packed_indexes(&mut pipe, &postings, &callable);
        // Each chunk is created at full size, then filled from offset 0.
        let mut filled: HashMap<String, usize> = HashMap::new();
        let args: Vec<Vec<Vec<u8>>> = pipe
            .cmd_iter()
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => b.to_vec(),
                        _ => Vec::new(),
                    })
                    .collect()
            })
            .collect();
        for cmd in args.chunks(2) {
            assert_eq!(cmd[0][2], (CHUNK - 1).to_string().into_bytes());
            assert_eq!(cmd[1][2], b"0");
            filled.insert(
                String::from_utf8(cmd[1][1].clone()).unwrap(),
                cmd[1][3].len(),
            );
        }
        // A posting list fills whole chunks; only the last has room.
        assert_eq!(filled["{t}:bri:1:0"], CHUNK);
        assert_eq!(filled["{t}:bri:1:1"], 5);
        // A calling list holds whole customers, three quarters of a chunk each.
        let total: usize = (0..3)
            .filter_map(|n| filled.get(&format!("{{t}}:li:1:{n}")))
            .sum();
        assert_eq!(total, 200 * 7);
        assert_eq!(filled["{t}:li:1:0"], CALLING_LIST_FILL);
        assert_eq!(filled.len(), 2 + (200 * 7usize).div_ceil(CALLING_LIST_FILL));
    }
}
