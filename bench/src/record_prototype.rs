//! `callgate-bench redis-record-prototype`: what recording costs Redis in the packed layout
//! of `docs/redis-layout-v2.md`, measured before the store is changed ("Costs to measure
//! before step 2" there).
//!
//! It records the `redis-memory` tool's decision mix ([`Mix`], same seed, same evidence) into
//! an empty Redis through `record_prototype.lua`, a script that does per decision what the
//! v2 record script would: read the hot record, walk the pair's newest entries (chain tip and
//! dedup), arbitrate, append the packed entry to the shard's segment, update the hot record,
//! the lease (native expiry), the due index, the packed indexes (an append to the arrival
//! posting list, sorted inserts into the event-time and calling-list chunks) and log the
//! event as `record.lua` does. It reports Redis's CPU per script call (`INFO commandstats`),
//! the calls per second one pipelined connection gets, and bytes per consent without the
//! event log, to compare with `redis-memory` (the store's `record.lua`) on the same mix.
//!
//! A measuring prototype, not a store: Rust knows every chain tip (one writer), there is no
//! retry, no registration trailer, no chunk merge. Same safety rules as `redis-memory`:
//! loopback only unless `--allow-remote`, and the database must be empty.

use std::collections::HashMap;
use std::time::Instant;

use callgate::domain::{ChainLink, Choice, Decision, GENESIS, HistoryEntry, HistoryOutcome, Pair};
use callgate::store::redis::keys::{fnv1a, member, shard_of, shard_tags};
use chrono::Utc;
use clap::Args;
use serde_json::json;

use callgate::store::redis::codec::packed::{
    HotRecord, Pointer, decode_entry, encode_entry, entry_len, pair_field, phone_bytes,
};

use crate::BenchError;
use crate::redis_floor::{
    by_kind_json, connect_empty, keys_by_kind, print_by_kind, usage_by_kind, used_memory,
};
use crate::redis_memory::Mix;

/// The script: the store's shared helpers (`lib.lua`: the event id and trim rules), then the
/// prototype.
const SCRIPT: &str = concat!(
    include_str!("../../src/store/redis/lib.lua"),
    include_str!("../../src/store/redis/v2_lib.lua"),
    include_str!("record_prototype.lua")
);

#[derive(Debug, Args)]
pub struct RecordPrototypeArgs {
    /// The Redis to fill. Its database must be empty; loopback only unless --allow-remote.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Consents (decisions) to record.
    #[arg(long, default_value_t = 200_000)]
    pub consents: u64,
    /// Script calls per pipeline (in flight on the one connection).
    #[arg(long, default_value_t = 32)]
    pub pipeline: usize,
    /// Seed of the decision mix (as `redis-memory --seed`).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

fn rank(choice: &Choice) -> u8 {
    match choice {
        Choice::GrantTemporary { .. } => 0,
        Choice::GrantPermanent => 1,
        Choice::Deny => 2,
    }
}

/// What Rust knows of a pair: its current decision (and when it arrived) and chain tip.
struct PairState {
    current: Decision,
    current_received: chrono::DateTime<Utc>,
    tip: [u8; 32],
    position: u64,
}

/// The script's answers, counted.
#[derive(Default, Debug)]
struct Outcomes {
    applied: u64,
    stale: u64,
    duplicate: u64,
    tip_moved: u64,
}

pub async fn run(
    a: RecordPrototypeArgs,
    allow_remote: bool,
    json_out: bool,
) -> Result<u64, BenchError> {
    if a.consents == 0 || a.pipeline == 0 {
        return Err(BenchError::Invalid(
            "--consents and --pipeline must be at least 1".into(),
        ));
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let mut conn = connect_empty(&a.redis_url, allow_remote).await?;
    let fail = |what: &'static str| {
        move |e: redis::RedisError| BenchError::Invalid(format!("{what}: {e}"))
    };
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(&mut conn)
        .await
        .map_err(fail("SCRIPT LOAD"))?;
    let before = used_memory(&mut conn).await?;
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(&mut conn)
        .await
        .map_err(fail("CONFIG RESETSTAT"))?;

    let tags = shard_tags("callgate");
    let shards = tags.len() as u64;
    let buckets = hot_buckets(a.consents, shards);
    let mix = Mix {
        seed: a.seed,
        start: callgate::domain::to_millis_precision(Utc::now()),
    };
    let retention_ms = 7 * 86_400_000u64;
    let mut pairs: HashMap<Pair, PairState> = HashMap::new();
    let mut outcomes = Outcomes::default();
    let started = Instant::now();
    let mut i = 0;
    while i < a.consents {
        let mut pipe = redis::pipe();
        let end = (i + a.pipeline as u64).min(a.consents);
        for n in i..end {
            let d = mix.decision(n);
            let received_at = d.decided_at + chrono::Duration::milliseconds(120);
            let previous = pairs.get(&d.pair);
            let applied = previous.is_none_or(|p| {
                callgate::domain::rules::precedence(&d, &p.current) == std::cmp::Ordering::Greater
            });
            let (position, tip) = previous.map_or((0, GENESIS), |p| (p.position + 1, p.tip));
            let entry = |outcome| HistoryEntry {
                decision: d.clone(),
                outcome,
                received_at,
            };
            let as_applied = ChainLink::new(position, tip, &entry(HistoryOutcome::Applied));
            let as_stale = ChainLink::new(position, tip, &entry(HistoryOutcome::Stale));
            // The codec's entry as applied, without a back pointer: the script puts in the
            // pointer to the pair's newest entry (only Redis knows where it is), and the
            // stale flag and hash if the decision is stale.
            let packed = encode_entry(&entry(HistoryOutcome::Applied), &as_applied.hash, None)
                .map_err(|e| BenchError::Invalid(format!("packing an entry: {e}")))?;
            let field = pair_field(&d.pair);
            let shard = shard_of(&d.pair);
            let bucket = u64::from(fnv1a(&field)) / shards % buckets;
            let body: String = format!(
                "{}:{}",
                member(&d.pair),
                packed
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
            .chars()
            .take(250)
            .collect();
            pipe.cmd("EVALSHA")
                .arg(&sha)
                .arg(0)
                .arg(format!("{{{}}}:", tags[shard]))
                .arg(format!("p:{bucket}"))
                .arg(&field)
                .arg(d.pair.business.digits())
                .arg(&phone_bytes(&d.pair.customer)[..])
                .arg(rank(&d.choice))
                .arg(d.decided_at.timestamp_millis())
                .arg(d.choice.expires_at().map_or(0, |e| e.timestamp_millis()))
                .arg(&d.dedup_digest()[..])
                .arg(&tip[..])
                .arg(&as_applied.hash[..])
                .arg(&as_stale.hash[..])
                .arg(&packed)
                .arg(body)
                .arg(retention_ms);
            let state = PairState {
                current: if applied {
                    d.clone()
                } else {
                    previous.map_or_else(|| d.clone(), |p| p.current.clone())
                },
                current_received: match previous {
                    Some(p) if !applied => p.current_received,
                    _ => received_at,
                },
                tip: if applied {
                    as_applied.hash
                } else {
                    as_stale.hash
                },
                position,
            };
            pairs.insert(d.pair.clone(), state);
        }
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(fail("record_prototype.lua"))?;
        for reply in replies {
            match reply {
                redis::Value::Int(0) => outcomes.applied += 1,
                redis::Value::Int(1) => outcomes.stale += 1,
                redis::Value::Int(2) => outcomes.duplicate += 1,
                _ => outcomes.tip_moved += 1,
            }
        }
        i = end;
    }
    let elapsed = started.elapsed();
    let after = used_memory(&mut conn).await?;
    let problems = verify(&mut conn, &pairs, a.consents, &tags).await?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .map_err(fail("INFO commandstats"))?;
    let script = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or("");
    let stat = |name: &str| {
        script
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (calls, usec_per_call) = (stat("calls"), stat("usec_per_call"));
    let by_kind = usage_by_kind(&mut conn).await?;
    // The event log's bytes, exactly: used_memory before and after deleting it
    // (`MEMORY USAGE` of a stream is an estimate).
    let mut log_keys = redis::pipe();
    for tag in &tags {
        log_keys.cmd("DEL").arg(format!("{{{tag}}}:e")).ignore();
        log_keys
            .cmd("DEL")
            .arg(format!("{{{tag}}}:trimmed"))
            .ignore();
    }
    log_keys
        .query_async::<()>(&mut conn)
        .await
        .map_err(fail("DEL"))?;
    let without_log = used_memory(&mut conn).await?;
    let log = after.saturating_sub(without_log);
    let delta = after.saturating_sub(before);
    let per_consent = without_log.saturating_sub(before) as f64 / a.consents as f64;
    let per_second = a.consents as f64 / elapsed.as_secs_f64();
    if json_out {
        println!(
            "{}",
            json!({
                "scenario": "redis-record-prototype",
                "command": command_line,
                "consents": a.consents,
                "pipeline": a.pipeline,
                "applied": outcomes.applied,
                "stale": outcomes.stale,
                "duplicate": outcomes.duplicate,
                "tip_moved": outcomes.tip_moved,
                "seconds": elapsed.as_secs_f64(),
                "calls_per_second": per_second,
                "script_calls": calls,
                "redis_usec_per_call": usec_per_call,
                "bytes_per_consent_without_event_log": per_consent,
                "by_kind": by_kind_json(&by_kind, a.consents),
            })
        );
    } else {
        println!("command:   {command_line}");
        println!(
            "recorded:  {} consents in {:.1} s ({per_second:.0} calls/s, {} in a pipeline): \
             {} applied, {} stale, {} duplicate, {} tip moved",
            a.consents,
            elapsed.as_secs_f64(),
            a.pipeline,
            outcomes.applied,
            outcomes.stale,
            outcomes.duplicate,
            outcomes.tip_moved
        );
        println!(
            "redis CPU: {usec_per_call:.2} µs per script call ({calls} calls, INFO commandstats)"
        );
        println!(
            "bytes per consent without the event log: {per_consent:.1} (used_memory delta \
             {delta} B, of which the event log {log} B: used_memory fell by that when it was \
             deleted)"
        );
        print_by_kind(&by_kind, a.consents);
    }
    for problem in &problems {
        eprintln!("layout check failed: {problem}");
    }
    Ok(outcomes.duplicate + outcomes.tip_moved + problems.len() as u64)
}

/// Hot-record buckets per shard for `consents` (90% of them a pair's first decision), about
/// 64 pairs a bucket.
pub(crate) fn hot_buckets(consents: u64, shards: u64) -> u64 {
    (consents * 9 / 10 / 64 / shards).max(1)
}

/// Checks that the script did the work it is charged for: one hot record per pair, one
/// lease per live temporary grant expiring with it, every consent in the event-time index,
/// each calling list exactly the pairs whose current decision is a grant, and every sorted
/// chunk in order.
async fn verify(
    conn: &mut redis::aio::MultiplexedConnection,
    pairs: &HashMap<Pair, PairState>,
    consents: u64,
    tags: &[String],
) -> Result<Vec<String>, BenchError> {
    let fail = |what: &'static str| {
        move |e: redis::RedisError| BenchError::Invalid(format!("{what}: {e}"))
    };
    let keys = keys_by_kind(conn).await?;
    let mut problems = Vec::new();
    let kind = |k: &str| keys.get(k).map_or(&[][..], |v| &v[..]);
    let mut hot = 0u64;
    for key in kind("p") {
        hot += redis::cmd("HLEN")
            .arg(key)
            .query_async::<u64>(conn)
            .await
            .map_err(fail("HLEN"))?;
    }
    if hot != pairs.len() as u64 {
        problems.push(format!("{hot} hot records for {} pairs", pairs.len()));
    }
    // Every hot record and the entry it points at decode with the codec (src/store/redis/
    // codec/packed.rs) as the pair's current decision, with its evidence and arrival time.
    let shards = tags.len() as u64;
    let buckets = hot_buckets(consents, shards);
    let all: Vec<(&Pair, &PairState)> = pairs.iter().collect();
    let mut unreadable = 0;
    for batch in all.chunks(1000) {
        let mut pipe = redis::pipe();
        for (pair, _) in batch {
            let field = pair_field(pair);
            let bucket = u64::from(fnv1a(&field)) / shards % buckets;
            pipe.cmd("HGET")
                .arg(format!("{{{}}}:p:{bucket}", tags[shard_of(pair)]))
                .arg(&field[..]);
        }
        let records: Vec<Vec<u8>> = pipe.query_async(conn).await.map_err(fail("HGET"))?;
        let mut pipe = redis::pipe();
        let mut read = Vec::new();
        for ((pair, state), bytes) in batch.iter().zip(records) {
            let Ok(record) = HotRecord::decode(&bytes) else {
                unreadable += 1;
                continue;
            };
            if record.choice != state.current.choice
                || record.decided_at != state.current.decided_at
                || record.dedup_id != state.current.dedup_digest()
                || record.count != state.position + 1
            {
                unreadable += 1;
                continue;
            }
            let Pointer { segment, offset } = record.current;
            pipe.cmd("GETRANGE")
                .arg(format!("{{{}}}:g:{segment}", tags[shard_of(pair)]))
                .arg(offset)
                .arg(usize::from(offset) + 2);
            read.push((pair, state, segment, offset));
        }
        let heads: Vec<Vec<u8>> = pipe.query_async(conn).await.map_err(fail("GETRANGE"))?;
        let mut pipe = redis::pipe();
        for ((pair, _, segment, offset), head) in read.iter().zip(&heads) {
            let len = entry_len(head).unwrap_or(3);
            pipe.cmd("GETRANGE")
                .arg(format!("{{{}}}:g:{segment}", tags[shard_of(pair)]))
                .arg(*offset)
                .arg(usize::from(*offset) + len - 1);
        }
        let entries: Vec<Vec<u8>> = pipe.query_async(conn).await.map_err(fail("GETRANGE"))?;
        for ((pair, state, _, _), bytes) in read.iter().zip(entries) {
            let good = decode_entry(pair, &bytes).is_ok_and(|(e, _)| {
                e.entry.decision == state.current
                    && e.entry.received_at == state.current_received
                    && e.entry.outcome == HistoryOutcome::Applied
            });
            unreadable += usize::from(!good);
        }
    }
    if unreadable > 0 {
        problems.push(format!(
            "{unreadable} pairs whose hot record or current entry is not the codec's reading of \
             their current decision"
        ));
    }
    let temporary = pairs
        .values()
        .filter(|p| matches!(p.current.choice, Choice::GrantTemporary { .. }))
        .count();
    if kind("t").len() != temporary {
        problems.push(format!(
            "{} leases for {temporary} temporary grants",
            kind("t").len()
        ));
    }
    // Each lease expires with its grant (PEXPIRETIME, Redis 7.0).
    let leases: Vec<(Vec<u8>, i64)> = pairs
        .iter()
        .filter_map(|(pair, p)| {
            let expires = p.current.choice.expires_at()?.timestamp_millis();
            let prefix = format!("{{{}}}:t:", tags[shard_of(pair)]);
            Some(([prefix.as_bytes(), &pair_field(pair)[..]].concat(), expires))
        })
        .collect();
    let mut wrong = 0;
    for batch in leases.chunks(1000) {
        let mut pipe = redis::pipe();
        for (key, _) in batch {
            pipe.cmd("PEXPIRETIME").arg(key);
        }
        let at: Vec<i64> = pipe.query_async(conn).await.map_err(fail("PEXPIRETIME"))?;
        wrong += batch
            .iter()
            .zip(at)
            .filter(|((_, expires), at)| at != expires)
            .count();
    }
    if wrong > 0 {
        problems.push(format!("{wrong} leases do not expire with their grant"));
    }
    let granted = pairs
        .values()
        .filter(|p| p.current.choice != Choice::Deny)
        .count() as u64;
    // Each shard's last event-time chunk is padded; its meta field `e<business>` holds its
    // id and length.
    let mut padded: HashMap<Vec<u8>, usize> = HashMap::new();
    for meta in kind("m") {
        let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(meta)
            .query_async(conn)
            .await
            .map_err(fail("HGETALL"))?;
        let prefix = &meta[..meta.len() - 1];
        for (field, value) in fields {
            if let (Some(business), 11) = (field.strip_prefix(b"e"), value.len()) {
                let id = u32::from_be_bytes([0, value[0], value[1], value[2]]);
                let used = usize::from(u16::from_be_bytes([value[3], value[4]]));
                let key = [prefix, b"bei:", business, format!(":{id}").as_bytes()].concat();
                padded.insert(key, used);
            }
        }
    }
    for (name, width, key_width, expected) in [("bei", 11, 6, consents), ("li", 7, 7, granted)] {
        let mut records = 0u64;
        for key in kind(name) {
            let mut chunk: Vec<u8> = redis::cmd("GET")
                .arg(key)
                .query_async(conn)
                .await
                .map_err(fail("GET"))?;
            if let Some(used) = padded.get(key) {
                chunk.truncate(*used);
            }
            records += (chunk.len() / width) as u64;
            let sorted = chunk
                .chunks(width)
                .collect::<Vec<_>>()
                .windows(2)
                .all(|w| w[0][..key_width] <= w[1][..key_width]);
            if !chunk.len().is_multiple_of(width) || !sorted {
                problems.push(format!("a {name} chunk is not a sorted array"));
            }
        }
        if records != expected {
            problems.push(format!("{records} {name} records, expected {expected}"));
        }
    }
    Ok(problems)
}
