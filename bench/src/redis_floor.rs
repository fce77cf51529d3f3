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

/// The base64url alphabet: message ids of this alphabet are packed 6 bits a character.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Response sources spelled as one byte.
const KNOWN_TEXT: [&str; 3] = ["user_initiated", "business_initiated", ""];

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_time(out: &mut Vec<u8>, ms: i64) {
    out.extend_from_slice(&ms.to_be_bytes()[2..]);
}

/// A text field, as compactly as it round-trips: a known constant (one byte), base64url
/// text with or without a `wamid.` prefix (a tag, a length and 6 bits a character), or raw
/// (a tag, a length, the bytes).
pub fn put_text(out: &mut Vec<u8>, s: &str) {
    if let Some(known) = KNOWN_TEXT.iter().position(|k| *k == s) {
        out.push(0x80 | known as u8);
        return;
    }
    let (tag, body) = match s.strip_prefix("wamid.") {
        Some(rest) => (1u8, rest),
        None => (2u8, s),
    };
    let sixes: Option<Vec<u8>> = body
        .bytes()
        .map(|b| ALPHABET.iter().position(|a| *a == b).map(|p| p as u8))
        .collect();
    match sixes {
        Some(sixes) if !body.is_empty() => {
            out.push(tag);
            put_varint(out, body.len() as u64);
            let mut acc = 0u32;
            let mut bits = 0;
            for six in sixes {
                acc = (acc << 6) | u32::from(six);
                bits += 6;
                while bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                }
            }
            if bits > 0 {
                out.push((acc << (8 - bits)) as u8);
            }
        }
        _ => {
            out.push(0);
            put_varint(out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// The inverse of [`put_text`], for the round-trip test: the text and the bytes it took.
pub fn get_text(bytes: &[u8]) -> Option<(String, usize)> {
    let (&tag, rest) = bytes.split_first()?;
    if tag & 0x80 != 0 {
        return Some((KNOWN_TEXT.get(usize::from(tag & 0x7f))?.to_string(), 1));
    }
    let (len, used) = get_varint(rest)?;
    let len = usize::try_from(len).ok()?;
    let rest = &rest[used..];
    if tag == 0 {
        let text = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
        return Some((text, 1 + used + len));
    }
    let packed = len.checked_mul(6)?.div_ceil(8);
    let mut text = String::from(if tag == 1 { "wamid." } else { "" });
    let (mut acc, mut bits) = (0u32, 0);
    let mut chars = 0;
    for b in rest.get(..packed)? {
        acc = (acc << 8) | u32::from(*b);
        bits += 8;
        while bits >= 6 && chars < len {
            bits -= 6;
            text.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
            chars += 1;
        }
        acc &= (1 << bits) - 1;
    }
    (chars == len).then_some((text, 1 + used + packed))
}

fn get_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Where an entry is: its segment's number in its shard, and its offset.
#[derive(Debug, Clone, Copy)]
struct Pointer {
    segment: u64,
    offset: u16,
}

fn put_pointer(out: &mut Vec<u8>, p: Pointer) {
    put_varint(out, p.segment);
    out.extend_from_slice(&p.offset.to_be_bytes());
}

fn rank(choice: &Choice) -> u8 {
    match choice {
        Choice::GrantTemporary { .. } => 0,
        Choice::GrantPermanent => 1,
        Choice::Deny => 2,
    }
}

/// One history entry, packed: every field of the decision, its evidence, its outcome, its
/// arrival time and its chain hash, and a pointer to the pair's previous entry.
pub fn pack_entry(entry: &HistoryEntry, hash: &[u8; 32], previous: Option<(u64, u16)>) -> Vec<u8> {
    let d = &entry.decision;
    let e = &d.evidence;
    let mut out = Vec::with_capacity(160);
    let stated_differs = e.stated_at != d.decided_at;
    let stated_expiry_differs = e.stated_expires_at != d.choice.expires_at();
    let flags = rank(&d.choice)
        | (u8::from(entry.outcome == HistoryOutcome::Stale) << 2)
        | (u8::from(matches!(e.source, callgate::domain::Source::DoubleTick)) << 3)
        | (u8::from(stated_differs) << 4)
        | (u8::from(stated_expiry_differs) << 5)
        | (u8::from(previous.is_some()) << 6)
        | (u8::from(d.attribution.is_some() || d.customer_name.is_some()) << 7);
    out.push(flags);
    put_time(&mut out, d.decided_at.timestamp_millis());
    if let Some(expires) = d.choice.expires_at() {
        put_time(&mut out, expires.timestamp_millis());
    }
    let lag = entry.received_at.timestamp_millis() - d.decided_at.timestamp_millis();
    put_varint(&mut out, ((lag << 1) ^ (lag >> 63)) as u64);
    if stated_differs {
        put_time(&mut out, e.stated_at.timestamp_millis());
    }
    if stated_expiry_differs {
        put_time(
            &mut out,
            e.stated_expires_at.map_or(0, |t| t.timestamp_millis()),
        );
    }
    put_text(&mut out, &e.message_id);
    put_text(&mut out, &e.paired_message_id);
    put_text(&mut out, &e.response_source);
    put_text(&mut out, &e.sender_customer_id);
    out.extend_from_slice(&e.body_sha256);
    out.extend_from_slice(hash);
    if let Some((segment, offset)) = previous {
        put_pointer(&mut out, Pointer { segment, offset });
    }
    out
}

/// A phone number's digits as 7 big-endian bytes of the number (E.164: at most 15 digits,
/// no leading zero).
pub(crate) fn phone_bytes(digits: &str) -> [u8; 7] {
    let n: u64 = digits.parse().unwrap_or(0);
    let b = n.to_be_bytes();
    [b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

pub(crate) fn pair_bytes(pair: &Pair) -> Vec<u8> {
    [
        phone_bytes(pair.business.digits()),
        phone_bytes(pair.customer.digits()),
    ]
    .concat()
}

/// The hot record: what a check and the record script read: rank, decided and expiry times,
/// the current decision's dedup id (the tie-break), and pointers to its entry and (if
/// another) to the pair's newest entry (the chain tip and the start of the dedup walk).
fn pack_hot(d: &Decision, current: Pointer, newest: Pointer) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    let same = current.segment == newest.segment && current.offset == newest.offset;
    out.push(rank(&d.choice) | (u8::from(!same) << 2));
    put_time(&mut out, d.decided_at.timestamp_millis());
    if let Some(expires) = d.choice.expires_at() {
        put_time(&mut out, expires.timestamp_millis());
    }
    out.extend_from_slice(&d.dedup_digest());
    put_pointer(&mut out, current);
    if !same {
        put_pointer(&mut out, newest);
    }
    out
}

/// An index member: a time (8 bytes, sign flipped, so members sort by time), the customer
/// and the entry's pointer.
fn index_member(ms: i64, customer: &[u8; 7], at: Pointer) -> Vec<u8> {
    let mut out = ((ms as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    out.extend_from_slice(customer);
    put_pointer(&mut out, at);
    out
}

/// Per shard: the open segment and its write offset.
#[derive(Default)]
struct Segments {
    number: u64,
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
    let (host, port) = host_port(&a.redis_url)?;
    target::resolve(&format!("{host}:{port}"), allow_remote).await?;
    let fail = |what: &'static str| {
        move |e: redis::RedisError| BenchError::Invalid(format!("{what}: {e}"))
    };
    let client = redis::Client::open(a.redis_url.as_str()).map_err(fail("--redis-url"))?;
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
        let packed = pack_entry(
            &entry,
            &link.hash,
            previous.map(|p| (p.newest.segment, p.newest.offset)),
        );
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
                segment: seg.used as u64,
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

        let customer = phone_bytes(d.pair.customer.digits());
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
                put_pointer(list, at);
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
                .arg(index_member(ms, &customer, at))
                .ignore();
        }
        let (current, current_at) = match (applied, previous) {
            (false, Some(p)) => (p.current.clone(), p.current_at),
            _ => (d.clone(), at),
        };
        let hot = pack_hot(&current, current_at, at);
        hot_bytes += hot.len() as u64;
        hot_count += u64::from(previous.is_none());
        let field = pair_bytes(&d.pair);
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
                "by_kind": by_kind
                    .iter()
                    .map(|(k, (n, b))| (k.clone(), json!({"keys": n, "bytes": b, "bytes_per_consent": *b as f64 / a.consents as f64})))
                    .collect::<serde_json::Map<_, _>>(),
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
        println!("by key kind (MEMORY USAGE of every key):");
        let mut counted = 0;
        for (kind, (keys, bytes)) in &by_kind {
            counted += bytes;
            println!(
                "  {kind:<4} {keys:>7} keys {bytes:>11} B {:>7.1} B/consent",
                *bytes as f64 / a.consents as f64
            );
        }
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

    #[test]
    fn packed_text_round_trips_and_is_smaller_for_message_ids() {
        for s in [
            "wamid.9OprpBGHpe0z8SWAscW9iytRf_DKE",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDY5QjQ4OUVBRjY2NwA=",
            "dtc_nrGs7ZKrQ330LDRkx-",
            "US.50998927459015447772",
            "user_initiated",
            "",
            "wamid.",
            "ünïcode, commas | pipes",
        ] {
            let mut out = Vec::new();
            put_text(&mut out, s);
            out.extend_from_slice(b"tail");
            let (back, used) = get_text(&out).unwrap();
            assert_eq!(back, s);
            assert_eq!(&out[used..], b"tail");
        }
        let mut out = Vec::new();
        put_text(&mut out, "wamid.9OprpBGHpe0z8SWAscW9iytRf_DKE");
        // 29 characters of 6 bits: 22 bytes, a tag and a length.
        assert_eq!(out.len(), 24);
    }

    #[test]
    fn an_entry_holds_every_field_it_is_charged_for() {
        let mix = Mix {
            seed: 1,
            start: chrono::DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
        };
        let d = mix.decision(3);
        let entry = HistoryEntry {
            decision: d.clone(),
            outcome: HistoryOutcome::Applied,
            received_at: d.decided_at,
        };
        let packed = pack_entry(&entry, &[7; 32], None);
        let e = &d.evidence;
        let mut fields = Vec::new();
        for s in [
            &e.message_id,
            &e.paired_message_id,
            &e.response_source,
            &e.sender_customer_id,
        ] {
            put_text(&mut fields, s);
        }
        // flags, decided at, (expiry), arrival lag, the four texts, two hashes.
        let expiry = if d.choice.expires_at().is_some() {
            6
        } else {
            0
        };
        assert_eq!(packed.len(), 1 + 6 + expiry + 1 + fields.len() + 64);
        assert!(packed.windows(32).any(|w| w == e.body_sha256));
        assert!(packed.ends_with(&[7; 32]));
    }
}
