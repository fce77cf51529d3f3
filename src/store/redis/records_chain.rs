//! Issue 14 on Redis: chaining history entries as they are recorded, and reading a business's
//! decisions through its records index.
//!
//! # Chaining: SHA-256 in Rust, the tip checked in the script (optimistic)
//!
//! Lua in Redis has no SHA-256, and the entry before a new one is only known for sure inside
//! `record.lua`. So recording is optimistic: Rust reads each pair's chain tip (`LLEN` and the
//! last entry, one pipelined round trip per call, per shard on a cluster), computes the new
//! entry's hash for both outcomes (applied, stale: the script decides which, and the hash
//! covers it), and passes the expected length and tip hash to the script. The script compares
//! them with the history, atomically with the write; if another replica appended meanwhile it
//! writes nothing and answers 4, and Rust reads the tip again and retries (at most
//! [`MAX_CHAIN_RETRIES`] rounds, then the call fails unacknowledged and the sender retries).
//!
//! A call's decisions are sent in rounds of **at most one decision per pair**: the hash of a
//! pair's second decision depends on the outcome of its first, which only the script knows.
//! A call of decisions for different pairs is one round: on a standalone Redis one
//! `MULTI`/`EXEC`, as before. A call with two decisions for one pair takes two rounds, each
//! atomic: if the second fails, the call fails (503), the sender retries, and the first is
//! recognised as a duplicate: acknowledged all or none, as on a cluster.
//!
//! The first round usually does not read: it chains each decision to the tip this replica
//! last wrote for the pair ([`TipMemo`]), or else guesses an empty history (most answers are a
//! customer's first), and the script's tip check refuses a wrong guess before writing
//! anything, answering with the tip it found; only the pairs it refused go on, chained to that
//! tip. While most recent pairs the memo did not know turned out to have a history (a wave of
//! returning customers), the first round reads their tips instead ([`FirstTip::Read`]): a
//! pipelined read costs less than a refused script call. A tip is also read for a pair's
//! second decision in one call. The cost: a first answer, or one for a pair this replica wrote
//! last, one round trip as before issue 14; any other answer for a pair with history, a read
//! or one refused script call more (the check path is untouched); and 70 bytes more per
//! history entry (position, previous and own hash).
//!
//! # The records index
//!
//! `record.lua` adds each new entry's [`index_key`](crate::store::records::index_key) to two
//! lex sorted sets of its shard (`br:<business>` by received time, `be:<business>` by event
//! time; see [`keys`](super::keys)), in the same script as the entry, so the index never
//! names an entry that was not written. A page reads `ZRANGE … BYLEX LIMIT 0 n+1` from every
//! shard (one slot each), merges them, keeps the first `n`, and reads those entries with one
//! `LINDEX` each (pipelined per shard).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use redis::Value;

use super::SHARDS;
use super::codec;
use super::error::corrupt_reply;
use super::keys;
use super::routing::Route;
use super::store::{RedisStore, all};
use crate::domain::{ChainLink, Decision, GENESIS, Hash, HistoryEntry, HistoryOutcome, Pair};
use crate::store::StoreError;
use crate::store::records::{self, RecordedDecision, RecordsPage, RecordsPosition, RecordsRange};

/// Rounds in which some pair's history moved before a record call gives up. Writers of one
/// pair that race each lose at most one round to each other, so this bounds how many may race
/// (a customer's own deliveries: a handful) with room to spare.
pub(super) const MAX_CHAIN_RETRIES: usize = 48;

/// A short random pause (up to `round` ms, at most 16 ms) before a writer that lost a race
/// for a pair's history tries again, so racing writers spread out instead of colliding again
/// in lockstep. Shared by the record rounds and the registrations (`requests.rs`).
pub(super) async fn contention_pause(round: usize) {
    use std::hash::BuildHasher;
    let cap = round.clamp(1, 16) as u64;
    let spread = std::collections::hash_map::RandomState::new().hash_one(round) % (cap * 1000);
    tokio::time::sleep(std::time::Duration::from_micros(spread)).await;
}

/// A pair's chain tip: its history's length and its last entry's hash ([`GENESIS`] when
/// empty or pre-chain).
pub(super) type Tip = (u64, Hash);

/// How the first round of a record call chains a decision: to a tip guessed without a read,
/// or to one read first. Whatever it guessed, the script checks the tip and refuses a wrong
/// one before writing anything, answering with the real tip, which the next round chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FirstTip {
    /// The tip this replica last wrote, or was told, for the pair ([`TipMemo`]).
    Memo(Tip),
    /// An empty history: a customer's first answer. Right: one round trip. Wrong: one refused
    /// script call more.
    Empty,
    /// Read first (one pipelined `LLEN`/`LINDEX`, cheaper than a refused script call): chosen
    /// while most recent pairs the memo did not know already had a history.
    Read,
}

impl FirstTip {
    /// The tip it chains to, `None` when it is read.
    pub(super) fn tip(self) -> Option<Tip> {
        match self {
            FirstTip::Memo(tip) => Some(tip),
            FirstTip::Empty => Some((0, GENESIS)),
            FirstTip::Read => None,
        }
    }
}

/// The chain tips this replica last wrote, or was told by a refused script call, by pair, and
/// how often a pair it did not know had an empty history: the first round's choice
/// ([`FirstTip`]). Only hints: a wrong one (another replica wrote since, an entry from a
/// registration, an evicted or colliding slot) is refused by the script before anything is
/// written. Bounded: two generations of at most [`TIP_MEMO_GENERATION`] pairs each (about
/// 4 MB at most); the older one is dropped when the younger fills.
#[derive(Debug, Default)]
pub(super) struct TipMemo {
    generations: std::sync::Mutex<[HashMap<u64, Tip>; 2]>,
    /// Of the recent pairs the memo did not know (halved every [`FIRST_ANSWER_WINDOW`]), how
    /// many there were, and how many had an empty history.
    unknown: AtomicU64,
    empty: AtomicU64,
}

/// Pairs per generation of the [`TipMemo`].
pub(super) const TIP_MEMO_GENERATION: usize = 32 * 1024;

/// The window of the first-answer share: both counts are halved when it is reached.
const FIRST_ANSWER_WINDOW: u64 = 1024;

impl TipMemo {
    fn slot(pair: &Pair) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut h = std::hash::DefaultHasher::new();
        pair.hash(&mut h);
        h.finish()
    }

    /// The pair's last known tip.
    pub(super) fn known(&self, pair: &Pair) -> Option<Tip> {
        let slot = Self::slot(pair);
        let generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        generations.iter().find_map(|g| g.get(&slot).copied())
    }

    /// How the first round chains the pair's decision: the known tip; else an empty history
    /// while at least half the recent unknown pairs had one (a customer's first answer is the
    /// common case, and where it is, a guess saves the read); else a read.
    pub(super) fn first_tip(&self, pair: &Pair) -> FirstTip {
        if let Some(tip) = self.known(pair) {
            return FirstTip::Memo(tip);
        }
        let unknown = self.unknown.load(Ordering::Relaxed);
        if self.empty.load(Ordering::Relaxed) * 2 >= unknown {
            FirstTip::Empty
        } else {
            FirstTip::Read
        }
    }

    /// Counts a pair the memo did not know: whether its history was empty.
    pub(super) fn observe_unknown(&self, was_empty: bool) {
        let unknown = self.unknown.fetch_add(1, Ordering::Relaxed) + 1;
        let empty = if was_empty {
            self.empty.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.empty.load(Ordering::Relaxed)
        };
        if unknown >= FIRST_ANSWER_WINDOW {
            // Racing writers may lose an increment here: the share is a hint.
            self.unknown.store(unknown / 2, Ordering::Relaxed);
            self.empty.store(empty.min(unknown) / 2, Ordering::Relaxed);
        }
    }

    /// Remembers the pair's tip (after a write, or as a refusal reported it).
    pub(super) fn learn(&self, pair: &Pair, tip: Tip) {
        let slot = Self::slot(pair);
        let mut generations = self.generations.lock().unwrap_or_else(|e| e.into_inner());
        let [young, old] = &mut *generations;
        old.remove(&slot);
        young.insert(slot, tip);
        if young.len() >= TIP_MEMO_GENERATION {
            *old = std::mem::take(young);
        }
    }
}

/// What recording one decision in a round did.
pub(super) enum Recorded {
    Done(crate::store::Recorded),
    /// The pair's history was not at the tip the entry was chained to: nothing written. The
    /// script answers with the tip it found, which the next try chains to.
    Moved(Tip),
}

/// The chain arguments of one decision's `record.lua` call.
#[derive(Clone)]
pub(super) struct ChainPlan {
    /// The history length expected (the new entry's position).
    pub position: u64,
    /// The tip hash expected.
    pub prev: Hash,
    /// The entry's chain part if applied, and if stale.
    pub applied: Vec<u8>,
    pub stale: Vec<u8>,
    /// The entry's own hash if applied, and if stale: the pair's next tip.
    pub applied_hash: Hash,
    pub stale_hash: Hash,
    /// Its members in the records index by received and by event time.
    pub received_member: Vec<u8>,
    pub event_member: Vec<u8>,
}

/// The decisions (indices, in call order) of the next round: the first not yet recorded
/// decision of each pair.
pub(super) fn next_round<T>(decisions: &[Decision], done: &[Option<T>]) -> Vec<usize> {
    let mut pairs = HashSet::new();
    let mut blocked = HashSet::new();
    let mut round = Vec::new();
    for (i, d) in decisions.iter().enumerate() {
        if done[i].is_some() {
            continue;
        }
        if blocked.contains(&d.pair) || !pairs.insert(d.pair.clone()) {
            blocked.insert(d.pair.clone());
            continue;
        }
        round.push(i);
    }
    round
}

/// Groups `indices` by the shard of their pair: (shard, positions into `indices`).
fn by_shard_of(decisions: &[Decision], indices: &[usize]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
    for (at, &i) in indices.iter().enumerate() {
        groups[keys::shard_of(&decisions[i].pair)].push(at);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .collect()
}

impl RedisStore {
    /// The chain arguments of each decision of a round, chained to its tip in `known` (one per
    /// decision: a guess, or the tip a refused script call answered with), or, where that is
    /// `None`, to the tip read from the store just before (one pipelined round trip).
    pub(super) async fn chain_plans(
        &self,
        decisions: &[Decision],
        round: &[usize],
        received_at: DateTime<Utc>,
        known: &[Option<Tip>],
    ) -> Result<Vec<ChainPlan>, StoreError> {
        let unknown: Vec<usize> = round
            .iter()
            .zip(known)
            .filter(|(_, tip)| tip.is_none())
            .map(|(&i, _)| i)
            .collect();
        let mut read = if unknown.is_empty() {
            Vec::new()
        } else {
            self.read_tips(decisions, &unknown).await?
        }
        .into_iter();
        let tips = known
            .iter()
            .map(|tip| match tip {
                Some(tip) => Some(*tip),
                None => read.next(),
            })
            .collect::<Option<Vec<Tip>>>()
            .ok_or_else(|| corrupt_reply("LLEN/LINDEX chain tip"))?;
        Ok(round
            .iter()
            .zip(tips)
            .map(|(&i, (position, prev))| {
                let d = &decisions[i];
                let link_for = |outcome| {
                    let entry = HistoryEntry {
                        decision: d.clone(),
                        outcome,
                        received_at,
                    };
                    ChainLink::new(position, prev, &entry)
                };
                let (applied, stale) = (
                    link_for(HistoryOutcome::Applied),
                    link_for(HistoryOutcome::Stale),
                );
                ChainPlan {
                    position,
                    prev,
                    applied: codec::encode_link(&applied),
                    stale: codec::encode_link(&stale),
                    applied_hash: applied.hash,
                    stale_hash: stale.hash,
                    received_member: records::index_key(
                        received_at.timestamp_millis(),
                        &d.pair.customer,
                        position,
                    ),
                    event_member: records::index_key(
                        d.decided_at.timestamp_millis(),
                        &d.pair.customer,
                        position,
                    ),
                }
            })
            .collect())
    }

    /// Reads the chain tip (history length, last hash) of each decision's pair: one pipelined
    /// round trip (per shard on a cluster).
    async fn read_tips(
        &self,
        decisions: &[Decision],
        round: &[usize],
    ) -> Result<Vec<Tip>, StoreError> {
        if self.v2() {
            let pairs: Vec<Pair> = round.iter().map(|&i| decisions[i].pair.clone()).collect();
            return self.v2_read_tips(&pairs).await;
        }
        let tip_pipe = |ats: &[usize]| {
            let mut pipe = redis::pipe();
            for &at in ats {
                let history = self.keys.pair(&decisions[round[at]].pair).history;
                pipe.cmd("LLEN").arg(&history);
                pipe.cmd("LINDEX").arg(&history).arg(-1);
            }
            pipe
        };
        let mut tips: Vec<Tip> = vec![(0, GENESIS); round.len()];
        let groups: Vec<(Route, Vec<usize>)> = if self.is_cluster() {
            by_shard_of(decisions, round)
                .into_iter()
                .map(|(shard, ats)| (Route::Shard(shard), ats))
                .collect()
        } else {
            vec![(Route::Keyless, (0..round.len()).collect())]
        };
        let replies = all(&groups, |(route, ats)| {
            let pipe = tip_pipe(ats);
            async move { self.read_pipe::<Vec<Value>>(*route, &pipe).await }
        })
        .await;
        for ((_, ats), reply) in groups.iter().zip(replies) {
            let reply = reply?;
            if reply.len() != 2 * ats.len() {
                return Err(corrupt_reply("LLEN/LINDEX chain tip"));
            }
            for (&at, pair) in ats.iter().zip(reply.chunks(2)) {
                let len: u64 =
                    redis::from_redis_value(pair[0].clone()).map_err(|_| corrupt_reply("LLEN"))?;
                let last: Option<Vec<u8>> = redis::from_redis_value(pair[1].clone())
                    .map_err(|_| corrupt_reply("LINDEX"))?;
                let tip = last
                    .as_deref()
                    .and_then(codec::stored_hash)
                    .unwrap_or(GENESIS);
                tips[at] = (len, tip);
            }
        }
        Ok(tips)
    }

    /// Records one round (at most one decision per pair): on a standalone Redis in one
    /// pipeline (`MULTI`/`EXEC` when several), on a cluster one pipeline per shard, at once.
    pub(super) async fn record_round(
        &self,
        decisions: &[Decision],
        round: &[usize],
        plans: &[ChainPlan],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        if !self.is_cluster() {
            return self
                .record_group(decisions, round, plans, received_at, round.len() > 1)
                .await;
        }
        let groups = by_shard_of(decisions, round);
        let results = all(&groups, |(_, ats)| {
            let indices: Vec<usize> = ats.iter().map(|&at| round[at]).collect();
            let group_plans: Vec<ChainPlan> = ats.iter().map(|&at| plans[at].clone()).collect();
            async move {
                self.record_group(decisions, &indices, &group_plans, received_at, false)
                    .await
            }
        })
        .await;
        let mut out: Vec<Option<Recorded>> = (0..round.len()).map(|_| None).collect();
        for ((_, ats), result) in groups.iter().zip(results) {
            for (&at, r) in ats.iter().zip(result?) {
                out[at] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.ok_or_else(|| corrupt_reply("record")))
            .collect()
    }

    /// [`ConsentStore::records_page`](crate::store::ConsentStore::records_page) on Redis.
    pub(super) async fn records_page_impl(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        let limit = limit.max(1);
        let from = records::time_prefix(range.from.timestamp_millis()).into_bytes();
        let to = records::time_prefix(range.to.timestamp_millis()).into_bytes();
        if from >= to {
            return Ok(RecordsPage {
                items: Vec::new(),
                next: None,
            });
        }
        let min = match after {
            Some(p) if p.key() >= from.as_slice() => [b"(".as_slice(), p.key()].concat(),
            _ => [b"[".as_slice(), &from].concat(),
        };
        let max = [b"(".as_slice(), &to].concat();
        let zrange = |shard: usize| {
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(self.keys.records(shard, &range.business, range.by))
                .arg(&min)
                .arg(&max)
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit + 1);
            cmd
        };
        let per_shard: Vec<Vec<Vec<u8>>> = if self.is_cluster() {
            all(0..SHARDS, |shard| {
                let cmd = zrange(shard);
                async move {
                    self.read_cmd::<Vec<Vec<u8>>>(Route::Shard(shard), &cmd)
                        .await
                }
            })
            .await
            .into_iter()
            .collect::<Result<_, _>>()?
        } else {
            let mut pipe = redis::pipe();
            for shard in 0..SHARDS {
                pipe.add_command(zrange(shard));
            }
            self.read_pipe(Route::Keyless, &pipe).await?
        };
        if per_shard.len() != SHARDS {
            return Err(corrupt_reply("ZRANGE records"));
        }
        let mut merged: Vec<(Vec<u8>, usize)> = per_shard
            .into_iter()
            .enumerate()
            .flat_map(|(shard, keys)| keys.into_iter().map(move |k| (k, shard)))
            .collect();
        merged.sort();
        let more = merged.len() > limit;
        merged.truncate(limit);
        let (named, positions): (Vec<Pair>, Vec<u64>) = merged
            .iter()
            .map(|(key, _)| {
                records::parse_index_key(key)
                    .map(|(customer, position)| {
                        (Pair::new(range.business.clone(), customer), position)
                    })
                    .ok_or_else(|| StoreError::Corrupt("records index member".into()))
            })
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        // Read the entries the page names: one LINDEX each, pipelined per shard.
        let lindex = |at: usize| {
            let mut cmd = redis::cmd("LINDEX");
            cmd.arg(self.keys.pair(&named[at]).history)
                .arg(positions[at]);
            cmd
        };
        let mut raw: Vec<Option<Vec<u8>>> = vec![None; merged.len()];
        let groups: Vec<(Route, Vec<usize>)> = if self.is_cluster() {
            let mut by: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
            for (at, (_, shard)) in merged.iter().enumerate() {
                by[*shard].push(at);
            }
            by.into_iter()
                .enumerate()
                .filter(|(_, g)| !g.is_empty())
                .map(|(s, g)| (Route::Shard(s), g))
                .collect()
        } else if merged.is_empty() {
            Vec::new()
        } else {
            vec![(Route::Keyless, (0..merged.len()).collect())]
        };
        let replies = all(&groups, |(route, ats)| {
            let mut pipe = redis::pipe();
            for &at in ats {
                pipe.add_command(lindex(at));
            }
            async move { self.read_pipe::<Vec<Option<Vec<u8>>>>(*route, &pipe).await }
        })
        .await;
        for ((_, ats), reply) in groups.iter().zip(replies) {
            let reply = reply?;
            if reply.len() != ats.len() {
                return Err(corrupt_reply("LINDEX records"));
            }
            for (&at, value) in ats.iter().zip(reply) {
                raw[at] = value;
            }
        }
        let mut items = Vec::with_capacity(merged.len());
        for ((pair, position), value) in named.into_iter().zip(positions).zip(raw) {
            let (entry, link) = match value {
                Some(bytes) => {
                    let (entry, link) = codec::decode_history_linked(&pair, &bytes)?;
                    (Some(entry), link)
                }
                None => (None, None),
            };
            items.push(RecordedDecision {
                pair,
                position,
                entry,
                link,
            });
        }
        Ok(RecordsPage {
            next: more
                .then(|| {
                    merged
                        .last()
                        .map(|(k, _)| RecordsPosition::after_key(k.clone()))
                })
                .flatten(),
            items,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PhoneNumber;

    fn pair(n: usize) -> Pair {
        Pair::new(
            PhoneNumber::parse("+919000000001").unwrap(),
            PhoneNumber::parse(&format!("+9198{n:08}")).unwrap(),
        )
    }

    #[test]
    fn the_tip_memo_knows_what_it_learned_last_and_stays_bounded() {
        let memo = TipMemo::default();
        assert_eq!(memo.known(&pair(1)), None);
        memo.learn(&pair(1), (1, [1; 32]));
        memo.learn(&pair(1), (2, [2; 32]));
        assert_eq!(memo.first_tip(&pair(1)), FirstTip::Memo((2, [2; 32])));
        // Fill the young generation: pair 1 moves to the old one and is still known...
        for n in 2..=TIP_MEMO_GENERATION {
            memo.learn(&pair(n), (1, [3; 32]));
        }
        assert_eq!(memo.known(&pair(1)), Some((2, [2; 32])));
        // ...until the next generation fills too: then it is forgotten, and the memo never
        // holds more than two generations.
        for n in 0..TIP_MEMO_GENERATION {
            memo.learn(&pair(TIP_MEMO_GENERATION + 1 + n), (1, [4; 32]));
        }
        assert_eq!(memo.known(&pair(1)), None);
        let generations = memo.generations.lock().unwrap();
        assert!(generations.iter().all(|g| g.len() <= TIP_MEMO_GENERATION));
    }

    #[test]
    fn an_unknown_pair_is_guessed_empty_while_most_unknown_pairs_were_first_answers() {
        let memo = TipMemo::default();
        let stranger = pair(7);
        assert_eq!(memo.first_tip(&stranger), FirstTip::Empty);
        assert_eq!(FirstTip::Empty.tip(), Some((0, GENESIS)));
        // Returning customers the memo did not know: read first.
        for _ in 0..10 {
            memo.observe_unknown(false);
        }
        assert_eq!(memo.first_tip(&stranger), FirstTip::Read);
        assert_eq!(FirstTip::Read.tip(), None);
        // First answers again: back to guessing, within a window.
        for _ in 0..FIRST_ANSWER_WINDOW {
            memo.observe_unknown(true);
        }
        assert_eq!(memo.first_tip(&stranger), FirstTip::Empty);
        // The counts stay bounded by the window.
        assert!(memo.unknown.load(Ordering::Relaxed) < FIRST_ANSWER_WINDOW);
        assert!(memo.empty.load(Ordering::Relaxed) <= memo.unknown.load(Ordering::Relaxed));
    }
}
