//! Issue 16: the replica-local check cache. Current decisions of the pairs this replica was
//! asked about, kept current by the event log the fan-out tailer already follows, so a check
//! usually costs no store round trip, without bending consent.
//!
//! ```text
//!   fan-out tailer ──read_events (sent at s)──► apply(events) ──► heard(s)
//!                                                   │ upsert cached pairs by log position
//!   Checker ──lookup──► fresh shard + live entry? ──► evaluate(entry, now)      (a hit)
//!            └─miss──► stamp ──► store.current ──► fill(stamp, decision)        (a miss)
//! ```
//!
//! **What an entry is.** `pair → (Option<Arc<Decision>>, position, deadline)`: the decision
//! (`None`: the pair never answered, cached too), the log position of the shard it reflects,
//! and a deadline `min(insert + TTL, the decision's expires_at)` fixed when it is inserted and
//! never moved by a hit (SpiceDB #3431: a hit that extends an entry keeps an expired grant
//! alive). A lookup at or after the deadline is a miss. An answer from the cache is still
//! `domain::evaluate` of the entry at the clock's now: the cache holds decisions, never
//! verdicts.
//!
//! **Per shard** of the event log (`ConsentStore::shards`, `ConsentStore::shard_of`): the
//! position the tailer has applied, a generation (bumped by a flush: an entry of an older
//! generation is never used), and `heard_at`, the app clock's time at which the tailer *sent*
//! the last store read that completed and whose events were applied. A read sent at `s` covers
//! everything committed before `s`, so everything committed before `heard_at` is in the cache
//! (or in no entry at all).
//!
//! The rules, and why they keep consent:
//! - **A cached answer is at most B old** (`CALLGATE_CHECK_CACHE_MAX_STALENESS_MS`): a shard
//!   answers from memory only while `now - heard_at < B`. The tailer refreshes `heard_at` when
//!   its reads return, and on a quiet log a probe beside it every `B/4` (a non-blocking read
//!   after the applied positions that finds nothing: [`position`](CheckCache::position),
//!   [`heard_if_still`](CheckCache::heard_if_still)); a stalled, failing or restarting tailer
//!   leaves events unread, so the probe finds them and marks nothing, so within B that shard's checks go to the store (which fails closed).
//! - **An entry never outlives its grant**: the deadline is at most the decision's own expiry,
//!   and every answer is evaluated at now anyway. An expiry writes nothing, so nothing else
//!   would end it.
//! - **A fill never overwrites a newer event**: before the store read of a miss the checker
//!   takes a [`Stamp`] (the shard's generation and applied position). After the read it inserts
//!   only if both are unchanged; the check under the shard's lock is the same lock under
//!   which the tailer applies an event and then moves the applied position, so either the fill
//!   lands first (and the event, newer than the stamp's position, then overwrites it) or the
//!   event was applied first (the position moved, and the fill is dropped: the read is
//!   answered but not cached). Events only update pairs already cached, by position and
//!   monotone (never back to a smaller position).
//! - **Eviction is safe**: when full, any entry may be dropped. The fill rule above does not
//!   depend on whether an entry was present, only on the shard's stamp, so an event that
//!   found no entry (evicted, or not yet filled) cannot be undone by a later fill: that fill's
//!   stamp predates the event and is refused.
//! - **A flush** (a tailer read error, a gap in the log, the tailer's (re)start) bumps the
//!   shard's generation, so no entry cached before it is used again, and forgets `heard_at`,
//!   so the shard goes to the store until the tailer reads again.
//! - **This replica's own writes** ([`CheckCache::wrote`]): after recording, the webhook
//!   handler leaves a *hole* at the pair, at its event's position: a miss until the tailer
//!   applies that event (which fills the hole with the event's decision), and never replaced
//!   by a fill stamped before it. A client checking on the replica that answered its webhook
//!   sees its write at once; on other replicas within B.
//! - **Read your writes** ([`Freshness`]): a check carrying a token is answered from memory
//!   only if the shard's applied position has reached the token's position for that shard (a
//!   time: if `heard_at` has reached it); otherwise it reads the store.
//!
//! The hot path (a lookup) reads two atomics of the shard, then takes one of [`SEGMENTS`]
//! short mutexes chosen by the pair's hash (never held across I/O or while waiting for
//! another lock), and allocates nothing but the `Arc` clone. Time comes from the [`Clock`].

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::clock::Clock;
use crate::domain::{Decision, Pair};
use crate::metrics::{CacheResult, Metrics};
use crate::store::{Cursor, CursorError, LoggedEvent, StreamId};

/// The map is split in this many independently locked segments (by the pair's hash).
pub const SEGMENTS: usize = 64;

/// `heard_at` of a shard that has not heard from the store since its last flush.
const NEVER: i64 = i64::MIN;

/// Settings of the check cache (from `CALLGATE_CHECK_CACHE*`, see `crate::config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckCacheConfig {
    /// `CALLGATE_CHECK_CACHE`: on by default.
    pub enabled: bool,
    /// Longest life of an entry (a grant's own expiry ends it sooner).
    pub ttl: Duration,
    /// B: a shard answers from memory only while its tailer heard from the store this
    /// recently.
    pub max_staleness: Duration,
    /// Most entries kept (across all segments).
    pub entries: usize,
}

impl Default for CheckCacheConfig {
    fn default() -> Self {
        CheckCacheConfig {
            enabled: true,
            ttl: crate::config::DEFAULT_CHECK_CACHE_TTL,
            max_staleness: crate::config::DEFAULT_CHECK_CACHE_MAX_STALENESS,
            entries: crate::config::DEFAULT_CHECK_CACHE_ENTRIES,
        }
    }
}

impl CheckCacheConfig {
    /// How long one blocking read of the tailer may wait: a quarter of B, so a quiet log
    /// still refreshes `heard_at` well within B (the brief's bound is B/2; a quarter leaves
    /// room for the read's round trip).
    pub fn tail_wait(&self) -> Duration {
        (self.max_staleness / 4).max(Duration::from_millis(1))
    }
}

/// How fresh a check's answer must be (issue 16's `at_least_as_fresh`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Freshness {
    /// Within the staleness bound B (the default).
    #[default]
    Bounded,
    /// At least every event up to this cursor (a webhook's `consistency_token`, or any
    /// StreamGrants cursor).
    AtLeast(Cursor),
    /// At least every event committed before this time.
    Since(DateTime<Utc>),
}

impl Freshness {
    /// Parses a token: a cursor of this log, or an RFC 3339 time. The error says what is
    /// wrong, without the field's name (the caller adds it).
    pub fn parse(token: &str, shards: usize) -> Result<Freshness, String> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(Freshness::Bounded);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(token) {
            return Ok(Freshness::Since(t.with_timezone(&Utc)));
        }
        match Cursor::parse(token, shards) {
            Ok(c) => Ok(Freshness::AtLeast(c)),
            Err(CursorError::Malformed) => Err(
                "not a consistency token: give the `consistency_token` of a webhook's 200, a \
                 StreamGrants cursor, or an RFC 3339 time"
                    .into(),
            ),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Where a shard stood before a miss's store read (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    shard: usize,
    generation: u64,
    applied: StreamId,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The pair's current decision (`None`: it never answered), fresh enough.
    Hit(Option<Arc<Decision>>),
    /// Read the store, for this reason (never `Hit`).
    Read(CacheResult),
}

/// One cached pair.
#[derive(Debug)]
struct Entry {
    decision: Option<Arc<Decision>>,
    /// A write of this replica is pending at `position`: the entry is unusable (a miss) until
    /// the tailer applies that event, and no fill stamped before it may replace it (see
    /// [`CheckCache::wrote`]).
    hole: bool,
    /// The shard's log position this entry reflects.
    position: StreamId,
    /// Insert time + TTL: the horizon an event's update may shorten, never extend.
    ttl_end: DateTime<Utc>,
    /// `min(ttl_end, the decision's expiry)`: a lookup at or after it is a miss.
    deadline: DateTime<Utc>,
    /// The shard's generation when it was inserted.
    generation: u64,
}

fn deadline(decision: Option<&Decision>, ttl_end: DateTime<Utc>) -> DateTime<Utc> {
    match decision.and_then(|d| d.choice.expires_at()) {
        Some(expires_at) => expires_at.min(ttl_end),
        None => ttl_end,
    }
}

/// A log shard's state. Writers (the tailer, fills) take `state`; lookups read the atomics.
struct Shard {
    state: Mutex<ShardState>,
    /// Mirror of `state.generation`.
    generation: AtomicU64,
    /// Mirror of `state.heard_at`, in µs since the epoch ([`NEVER`]: not heard).
    heard_at_us: AtomicI64,
}

struct ShardState {
    generation: u64,
    /// The newest event of this shard applied to the cache.
    applied: StreamId,
    heard_at: Option<DateTime<Utc>>,
}

/// The replica's check cache. Shared (`Arc`) by both front ends' `Checker` and the tailer.
pub struct CheckCache {
    clock: Clock,
    tail_wait: Duration,
    ttl: TimeDelta,
    bound_us: i64,
    segment_capacity: usize,
    hasher: std::collections::hash_map::RandomState,
    segments: Box<[Mutex<HashMap<Pair, Entry>>]>,
    shards: Box<[Shard]>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CheckCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckCache")
            .field("shards", &self.shards.len())
            .field("ttl", &self.ttl)
            .field("bound_us", &self.bound_us)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

impl CheckCache {
    /// An empty cache for a store of `shards` log shards. No shard is fresh until the tailer
    /// [`start`](Self::start)s and then [`heard`](Self::heard) from the store.
    pub fn new(
        config: &CheckCacheConfig,
        shards: usize,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        CheckCache {
            clock,
            tail_wait: config.tail_wait(),
            ttl: TimeDelta::from_std(config.ttl).unwrap_or(TimeDelta::MAX),
            bound_us: i64::try_from(config.max_staleness.as_micros()).unwrap_or(i64::MAX),
            segment_capacity: config.entries.div_ceil(SEGMENTS).max(1),
            hasher: Default::default(),
            segments: (0..SEGMENTS).map(|_| Mutex::new(HashMap::new())).collect(),
            shards: (0..shards.max(1))
                .map(|_| Shard {
                    state: Mutex::new(ShardState {
                        generation: 0,
                        applied: StreamId::ZERO,
                        heard_at: None,
                    }),
                    generation: AtomicU64::new(0),
                    heard_at_us: AtomicI64::new(NEVER),
                })
                .collect(),
            metrics,
        }
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The app clock's now (the tailer stamps its reads with it).
    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The longest a blocking read of the tailer may wait ([`CheckCacheConfig::tail_wait`]).
    pub fn tail_wait(&self) -> Duration {
        self.tail_wait
    }

    fn segment(&self, pair: &Pair) -> &Mutex<HashMap<Pair, Entry>> {
        &self.segments[(self.hasher.hash_one(pair) % SEGMENTS as u64) as usize]
    }

    fn shard(&self, shard: usize) -> &Shard {
        &self.shards[shard.min(self.shards.len() - 1)]
    }

    /// The pair's cached decision if its shard is fresh enough for `need` and its entry is
    /// usable at the clock's now; else why the store must be read. Counted in
    /// `callgate_check_cache_total`.
    pub fn lookup(&self, pair: &Pair, shard: usize, need: &Freshness) -> Lookup {
        let found = self.find(pair, shard, need);
        self.metrics.check_cache(match &found {
            Lookup::Hit(_) => CacheResult::Hit,
            Lookup::Read(r) => *r,
        });
        found
    }

    fn find(&self, pair: &Pair, shard_no: usize, need: &Freshness) -> Lookup {
        let now = micros(self.clock.now());
        let shard = self.shard(shard_no);
        let heard = shard.heard_at_us.load(Ordering::Acquire);
        if heard == NEVER || now.saturating_sub(heard) >= self.bound_us {
            return Lookup::Read(CacheResult::StaleShard);
        }
        match need {
            Freshness::Bounded => {}
            Freshness::Since(t) => {
                if heard < micros(*t) {
                    return Lookup::Read(CacheResult::Token);
                }
            }
            Freshness::AtLeast(c) => {
                if lock(&shard.state).applied < c.get(shard_no) {
                    return Lookup::Read(CacheResult::Token);
                }
            }
        }
        let generation = shard.generation.load(Ordering::Acquire);
        let segment = lock(self.segment(pair));
        match segment.get(pair) {
            Some(e) if e.generation == generation && !e.hole && now < micros(e.deadline) => {
                Lookup::Hit(e.decision.clone())
            }
            _ => Lookup::Read(CacheResult::Miss),
        }
    }

    /// Where `shard` stands now: take it before a miss's store read.
    pub fn stamp(&self, shard: usize) -> Stamp {
        let state = lock(&self.shard(shard).state);
        Stamp {
            shard,
            generation: state.generation,
            applied: state.applied,
        }
    }

    /// Caches what a store read begun after `stamp` returned for `pair`, unless the shard
    /// applied an event or was flushed since the stamp (then the read is answered but not
    /// cached). True if it was cached.
    pub fn fill(&self, pair: &Pair, stamp: Stamp, decision: Option<Arc<Decision>>) -> bool {
        let now = self.clock.now();
        let ttl_end = now
            .checked_add_signed(self.ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let deadline = deadline(decision.as_deref(), ttl_end);
        if deadline <= now {
            return false; // an expired grant: nothing to save
        }
        let state = lock(&self.shard(stamp.shard).state);
        if state.generation != stamp.generation || state.applied != stamp.applied {
            return false;
        }
        let mut segment = lock(self.segment(pair));
        if let Some(e) = segment.get(pair)
            && e.generation == state.generation
            && e.position > stamp.applied
        {
            return false; // cannot happen (positions never pass `applied`): keep the newer
        }
        if segment.len() >= self.segment_capacity && !segment.contains_key(pair) {
            // Full: drop any entry (see the module docs for why that is safe).
            if let Some(victim) = segment.keys().next().cloned() {
                segment.remove(&victim);
            }
        }
        segment.insert(
            pair.clone(),
            Entry {
                decision,
                hole: false,
                position: stamp.applied,
                ttl_end,
                deadline,
                generation: state.generation,
            },
        );
        true
    }

    /// The tailer's (re)start at `head`: every shard is flushed and starts at `head`.
    pub fn start(&self, head: &Cursor) {
        for (i, shard) in self.shards.iter().enumerate() {
            let mut state = lock(&shard.state);
            Self::flush_locked(shard, &mut state);
            state.applied = head.get(i);
        }
        self.metrics.check_cache_flushed();
        self.report_heard();
    }

    /// Forgets every shard's entries and `heard_at` (a tailer read error or a gap in the log):
    /// until the tailer reads again, every check goes to the store.
    pub fn flush(&self) {
        for shard in self.shards.iter() {
            Self::flush_locked(shard, &mut lock(&shard.state));
        }
        self.metrics.check_cache_flushed();
        self.report_heard();
    }

    fn flush_locked(shard: &Shard, state: &mut ShardState) {
        state.generation += 1;
        state.heard_at = None;
        shard.generation.store(state.generation, Ordering::Release);
        shard.heard_at_us.store(NEVER, Ordering::Release);
    }

    /// Applies events read from the log, in log order: each updates its pair's entry if the
    /// pair is cached (never back to an older position), then moves its shard's applied
    /// position, both under the shard's lock (the fill rule depends on it).
    pub fn apply(&self, events: &[LoggedEvent]) {
        for e in events {
            let shard = self.shard(e.shard);
            let mut state = lock(&shard.state);
            if e.id <= state.applied {
                continue;
            }
            let pair = &e.event.decision.pair;
            {
                let mut segment = lock(self.segment(pair));
                if let Some(entry) = segment.get_mut(pair)
                    && entry.generation == state.generation
                    && (e.id > entry.position || (entry.hole && e.id == entry.position))
                {
                    let decision = Arc::new(e.event.decision.clone());
                    entry.deadline = deadline(Some(&decision), entry.ttl_end);
                    entry.decision = Some(decision);
                    entry.position = e.id;
                    entry.hole = false;
                }
            }
            state.applied = e.id;
        }
    }

    /// This replica recorded a decision for `pair` that changed its current decision:
    /// `logged` is the `(shard, id)` of the event it published, `None` if it published none
    /// (a temporary grant already lapsed on arrival). Until the tailer applies that event the
    /// pair is answered from the store, and no fill stamped before the write may bring the
    /// old decision back: a client that checks on this replica after the webhook's 200 sees
    /// its write, without a token. Without an event the pair is never answered from memory
    /// on this replica until a flush or its TTL (no event would ever update it).
    pub fn wrote(&self, pair: &Pair, shard: usize, logged: Option<StreamId>) {
        let now = self.clock.now();
        let ttl_end = now
            .checked_add_signed(self.ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let state = lock(&self.shard(shard).state);
        let position = logged.unwrap_or(StreamId::new(u64::MAX, u64::MAX));
        if position <= state.applied {
            return; // the tailer applied it already (updating the entry, if any)
        }
        let mut segment = lock(self.segment(pair));
        if segment.len() >= self.segment_capacity
            && !segment.contains_key(pair)
            && let Some(victim) = segment.keys().next().cloned()
        {
            segment.remove(&victim);
        }
        segment.insert(
            pair.clone(),
            Entry {
                decision: None,
                hole: true,
                position,
                ttl_end,
                deadline: ttl_end,
                generation: state.generation,
            },
        );
    }

    /// The tailer's read sent at `sent_at` completed and its events were applied: every
    /// shard has heard from the store at `sent_at`.
    pub fn heard(&self, sent_at: DateTime<Utc>) {
        for shard in self.shards.iter() {
            let mut state = lock(&shard.state);
            if state.heard_at.is_none_or(|h| h < sent_at) {
                state.heard_at = Some(sent_at);
                shard.heard_at_us.store(micros(sent_at), Ordering::Release);
            }
        }
        self.report_heard();
    }

    /// Where the cache stands, for a freshness probe ([`heard_if_still`](Self::heard_if_still)):
    /// every shard's applied position, and its generation.
    pub fn position(&self) -> (Cursor, Vec<u64>) {
        let (ids, generations) = self
            .shards
            .iter()
            .map(|shard| {
                let state = lock(&shard.state);
                (state.applied, state.generation)
            })
            .unzip();
        (Cursor::from_ids(ids), generations)
    }

    /// A probe sent at `sent_at` found nothing in the log after [`position`](Self::position)'s
    /// cursor: everything committed before `sent_at` is applied, so each shard not flushed
    /// since (its generation still `generations[i]`) has heard from the store at `sent_at`.
    /// (The tailer's blocking read alone cannot keep a quiet log fresh: an idle Redis ends a
    /// `BLOCK` only at its next cron tick, up to 100 ms late at the default `hz`.)
    pub fn heard_if_still(&self, sent_at: DateTime<Utc>, generations: &[u64]) {
        for (shard, &generation) in self.shards.iter().zip(generations) {
            let mut state = lock(&shard.state);
            if state.generation == generation && state.heard_at.is_none_or(|h| h < sent_at) {
                state.heard_at = Some(sent_at);
                shard.heard_at_us.store(micros(sent_at), Ordering::Release);
            }
        }
        self.report_heard();
    }

    fn report_heard(&self) {
        let oldest = self
            .shards
            .iter()
            .map(|s| s.heard_at_us.load(Ordering::Acquire))
            .min()
            .unwrap_or(NEVER);
        self.metrics
            .check_cache_heard(if oldest == NEVER { 0 } else { oldest / 1000 });
    }

    /// Entries held (all segments), for tests and tools.
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Choice, ConsentEvent, ConsentState, EventKind, Evidence, PhoneNumber, Source, evaluate,
    };

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_767_000_000_000 + ms).unwrap()
    }

    fn pair(n: u32) -> Pair {
        Pair::new(
            PhoneNumber::parse("+919000000000").unwrap(),
            PhoneNumber::parse(&format!("+9198765{n:05}")).unwrap(),
        )
    }

    fn decision(p: &Pair, choice: Choice, at: i64) -> Decision {
        Decision {
            pair: p.clone(),
            choice,
            decided_at: t(at),
            evidence: Evidence {
                source: Source::DoubleTick,
                message_id: format!("m{at}"),
                paired_message_id: String::new(),
                response_source: "user_initiated".into(),
                sender_customer_id: String::new(),
                body_sha256: [0; 32],
                stated_at: t(at),
                stated_expires_at: None,
            },
            attribution: None,
            customer_name: None,
        }
    }

    fn event(id: u64, d: Decision) -> LoggedEvent {
        LoggedEvent {
            shard: 0,
            id: StreamId::new(id, 0),
            event: ConsentEvent {
                kind: match d.choice {
                    Choice::Deny => EventKind::Denied,
                    _ => EventKind::Granted,
                },
                decision: d,
                late_attribution: false,
            },
        }
    }

    fn cache(clock: Clock) -> CheckCache {
        let cache = CheckCache::new(
            &CheckCacheConfig::default(),
            1,
            clock,
            Arc::new(Metrics::default()),
        );
        cache.start(&Cursor::uniform(1, StreamId::ZERO));
        cache
    }

    fn state(l: &Lookup, now: DateTime<Utc>) -> Option<ConsentState> {
        match l {
            Lookup::Hit(d) => Some(evaluate(d.clone(), now).state),
            Lookup::Read(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_is_used_only_while_heard_within_the_bound() {
        let clock = Clock::tokio_at(t(0));
        let c = cache(clock);
        let p = pair(1);
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::StaleShard)
        );
        let s = c.stamp(0);
        assert!(c.fill(&p, s, None));
        // Heard at t(0): fresh until t(100) exclusive.
        c.heard(clock.now());
        assert_eq!(c.lookup(&p, 0, &Freshness::Bounded), Lookup::Hit(None));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(c.lookup(&p, 0, &Freshness::Bounded), Lookup::Hit(None));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::StaleShard)
        );
        // A flush: nothing cached before it is used again, even once heard again.
        c.heard(clock.now());
        c.flush();
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::StaleShard)
        );
        c.heard(clock.now());
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::Miss)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_marks_heard_only_the_shards_not_flushed_since_it_looked() {
        let clock = Clock::tokio_at(t(0));
        let c = cache(clock);
        let p = pair(4);
        assert!(c.fill(&p, c.stamp(0), None));
        // The probe looked (applied position, generation), then found nothing newer.
        let (applied, generations) = c.position();
        assert_eq!(applied, Cursor::uniform(1, StreamId::ZERO));
        c.heard_if_still(clock.now(), &generations);
        assert_eq!(c.lookup(&p, 0, &Freshness::Bounded), Lookup::Hit(None));
        // Events applied later move the position the next probe looks from.
        c.apply(&[event(7, decision(&pair(5), Choice::Deny, 7))]);
        assert_eq!(c.position().0, Cursor::uniform(1, StreamId::new(7, 0)));
        // A flush between looking and marking: the shard stays unheard.
        tokio::time::advance(Duration::from_millis(100)).await;
        let (_, generations) = c.position();
        c.flush();
        c.heard_if_still(clock.now(), &generations);
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::StaleShard)
        );
        // A probe never moves `heard_at` back.
        c.heard(clock.now());
        let (_, generations) = c.position();
        c.heard_if_still(clock.now() - TimeDelta::milliseconds(99), &generations);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::Miss)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_ends_on_time_however_many_hits_came_before() {
        // Grant ending at T = t(10 s), TTL 30 min.
        let clock = Clock::tokio_at(t(0));
        let c = cache(clock);
        let p = pair(2);
        let grant = decision(
            &p,
            Choice::GrantTemporary {
                expires_at: t(10_000),
            },
            0,
        );
        let s = c.stamp(0);
        assert!(c.fill(&p, s, Some(Arc::new(grant))));
        let mut hits = 0;
        while clock.now() < t(10_000 - 1) {
            c.heard(clock.now());
            let l = c.lookup(&p, 0, &Freshness::Bounded);
            assert_eq!(state(&l, clock.now()), Some(ConsentState::GrantedTemporary));
            hits += 1;
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(hits > 9_000);
        c.heard(clock.now());
        assert_eq!(clock.now(), t(9_999));
        let l = c.lookup(&p, 0, &Freshness::Bounded);
        assert_eq!(state(&l, clock.now()), Some(ConsentState::GrantedTemporary));
        tokio::time::advance(Duration::from_millis(1)).await;
        c.heard(clock.now());
        // At T: the entry's deadline has come; the store is asked.
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::Miss)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fill_stamped_before_an_event_is_dropped() {
        let clock = Clock::tokio_at(t(0));
        let c = cache(clock);
        let p = pair(3);
        let s = c.stamp(0);
        // The read returns the old grant, but a denial was applied meanwhile (no entry yet).
        c.apply(&[event(5, decision(&p, Choice::Deny, 5))]);
        assert!(!c.fill(
            &p,
            s,
            Some(Arc::new(decision(&p, Choice::GrantPermanent, 1)))
        ));
        c.heard(clock.now());
        assert_eq!(
            c.lookup(&p, 0, &Freshness::Bounded),
            Lookup::Read(CacheResult::Miss)
        );
        // A fill stamped after it is kept, and a later event overwrites it.
        let s = c.stamp(0);
        assert!(c.fill(&p, s, Some(Arc::new(decision(&p, Choice::Deny, 5)))));
        c.apply(&[event(6, decision(&p, Choice::GrantPermanent, 6))]);
        let l = c.lookup(&p, 0, &Freshness::Bounded);
        assert_eq!(state(&l, clock.now()), Some(ConsentState::GrantedPermanent));
        // An event already applied (an older position) changes nothing.
        c.apply(&[event(4, decision(&p, Choice::Deny, 4))]);
        let l = c.lookup(&p, 0, &Freshness::Bounded);
        assert_eq!(state(&l, clock.now()), Some(ConsentState::GrantedPermanent));
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_need_the_shard_to_have_applied_them() {
        let clock = Clock::tokio_at(t(0));
        let c = cache(clock);
        let p = pair(4);
        let s = c.stamp(0);
        assert!(c.fill(&p, s, None));
        c.heard(clock.now());
        let token = Cursor::uniform(1, StreamId::new(7, 0));
        let need = Freshness::AtLeast(token.clone());
        assert_eq!(c.lookup(&p, 0, &need), Lookup::Read(CacheResult::Token));
        c.apply(&[event(7, decision(&p, Choice::Deny, 7))]);
        assert!(matches!(c.lookup(&p, 0, &need), Lookup::Hit(Some(_))));
        let later = Freshness::Since(clock.now() + TimeDelta::milliseconds(1));
        assert_eq!(c.lookup(&p, 0, &later), Lookup::Read(CacheResult::Token));
        assert!(matches!(
            c.lookup(&p, 0, &Freshness::Since(clock.now())),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn tokens_parse_as_cursors_or_times() {
        let c = Cursor::from_ids(vec![StreamId::new(5, 1), StreamId::ZERO]);
        assert_eq!(
            Freshness::parse(&c.to_string(), 2),
            Ok(Freshness::AtLeast(c))
        );
        assert_eq!(
            Freshness::parse("2026-11-25T10:00:00.5+05:30", 2),
            Ok(Freshness::Since("2026-11-25T04:30:00.5Z".parse().unwrap()))
        );
        assert_eq!(Freshness::parse("", 2), Ok(Freshness::Bounded));
        assert!(
            Freshness::parse("yesterday", 2)
                .unwrap_err()
                .contains("consistency_token")
        );
        assert!(
            Freshness::parse("c2.1-1", 2)
                .unwrap_err()
                .contains("shards")
        );
    }

    #[test]
    fn eviction_keeps_the_bound() {
        let config = CheckCacheConfig {
            entries: SEGMENTS * 2,
            ..Default::default()
        };
        let c = CheckCache::new(&config, 1, Clock::System, Arc::new(Metrics::default()));
        for n in 0..1000 {
            let s = c.stamp(0);
            c.fill(&pair(n), s, None);
        }
        assert!(c.len() <= SEGMENTS * 2, "{}", c.len());
    }

    // ---- property: random interleavings against a model store ---------------------------

    /// One step of a random schedule.
    #[derive(Debug, Clone)]
    enum Step {
        /// Another replica records a decision for pair `p`: deny, permanent grant, or a
        /// temporary grant ending `ms` from now.
        Write {
            p: usize,
            kind: u8,
            ms: u16,
        },
        /// The same, recorded by this replica (the cache is told: [`CheckCache::wrote`]).
        LocalWrite {
            p: usize,
            kind: u8,
            ms: u16,
        },
        /// The sweep logs `Expired` for a lapsed temporary grant of `p` (no state change).
        Expire {
            p: usize,
        },
        /// The tailer sends a read (it covers the log as it is now).
        TailerSend,
        /// The read in flight completes: its events are applied, the shards heard.
        TailerComplete,
        /// The tailer's read fails: flush.
        TailerError,
        /// The tailer fell behind the retained log: the unread events are skipped, and it
        /// restarts at the head (the cache flushed and started there).
        TailerGap,
        /// A check misses and starts its fill: stamp, then the store read (now, or when it
        /// finishes if `late`).
        StartFill {
            p: usize,
            late: bool,
        },
        /// The `i`-th pending fill (mod their number) finishes.
        FinishFill {
            i: usize,
        },
        Advance {
            ms: u16,
        },
        Check {
            p: usize,
        },
    }

    /// Pairs in a schedule: few, so steps meet on the same pair often.
    const PAIRS: usize = 2;

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..PAIRS, 0..3u8, 1..400u16).prop_map(|(p, kind, ms)| Step::Write { p, kind, ms }),
            (0..PAIRS, 0..3u8, 1..400u16).prop_map(|(p, kind, ms)| Step::Write { p, kind, ms }),
            (0..PAIRS, 0..3u8, 1..400u16).prop_map(|(p, kind, ms)| Step::LocalWrite {
                p,
                kind,
                ms
            }),
            (0..PAIRS).prop_map(|p| Step::Expire { p }),
            Just(Step::TailerSend),
            Just(Step::TailerSend),
            Just(Step::TailerComplete),
            Just(Step::TailerComplete),
            Just(Step::TailerError),
            Just(Step::TailerGap),
            (0..PAIRS, any::<bool>()).prop_map(|(p, late)| Step::StartFill { p, late }),
            (0..PAIRS, any::<bool>()).prop_map(|(p, late)| Step::StartFill { p, late }),
            (0..8usize).prop_map(|i| Step::FinishFill { i }),
            (0..8usize).prop_map(|i| Step::FinishFill { i }),
            (0..250u16).prop_map(|ms| Step::Advance { ms }),
            (0..PAIRS).prop_map(|p| Step::Check { p }),
            (0..PAIRS).prop_map(|p| Step::Check { p }),
            (0..PAIRS).prop_map(|p| Step::Check { p }),
        ]
    }

    /// The model store: per pair, every version of its current decision with the instant it
    /// was committed; the log of events.
    struct Model {
        versions: Vec<Vec<(DateTime<Utc>, Option<Decision>)>>,
        log: Vec<LoggedEvent>,
        next_id: u64,
        decided: i64,
    }

    impl Model {
        fn current(&self, p: usize) -> Option<Decision> {
            self.versions[p].last().and_then(|(_, d)| d.clone())
        }

        /// Whether `d` was the pair's current decision at some instant of `[from, to]`.
        fn held_within(
            &self,
            p: usize,
            d: Option<&Decision>,
            from: DateTime<Utc>,
            to: DateTime<Utc>,
        ) -> bool {
            let v = &self.versions[p];
            v.iter().enumerate().any(|(k, (since, version))| {
                let until = v.get(k + 1).map(|(t, _)| *t);
                version.as_ref() == d && *since <= to && until.is_none_or(|u| u > from)
            })
        }
    }

    fn shard_of(p: usize) -> usize {
        p % 2
    }

    fn run(steps: Vec<Step>) -> Result<(), proptest::test_runner::TestCaseError> {
        use proptest::prop_assert;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async move {
            let clock = Clock::tokio_at(t(0));
            let config = CheckCacheConfig::default();
            let bound = TimeDelta::from_std(config.max_staleness).unwrap();
            let cache = CheckCache::new(&config, 2, clock, Arc::new(Metrics::default()));
            let pairs: Vec<Pair> = (0..PAIRS).map(|n| pair(10 + n as u32)).collect();
            let mut model = Model {
                versions: vec![vec![(t(-1_000_000), None)]; PAIRS],
                log: Vec::new(),
                next_id: 1,
                decided: 0,
            };
            // The tailer: its cursor (events applied), the read in flight (log length and
            // send time).
            let mut applied = 0usize;
            let mut in_flight: Option<(usize, DateTime<Utc>)> = None;
            cache.start(&Cursor::uniform(2, StreamId::ZERO));
            let mut fills: Vec<(usize, Stamp, Option<Option<Decision>>)> = Vec::new();
            for step in steps {
                let now = clock.now();
                match step {
                    Step::Write { p, kind, ms } | Step::LocalWrite { p, kind, ms } => {
                        model.decided += 1;
                        let choice = match kind {
                            0 => Choice::Deny,
                            1 => Choice::GrantPermanent,
                            _ => Choice::GrantTemporary {
                                expires_at: now + TimeDelta::milliseconds(ms.into()),
                            },
                        };
                        let mut d = decision(&pairs[p], choice, model.decided);
                        d.evidence.message_id = format!("w{}", model.decided);
                        let id = StreamId::new(model.next_id, 0);
                        model.next_id += 1;
                        model.versions[p].push((now, Some(d.clone())));
                        let mut e = event(0, d);
                        e.shard = shard_of(p);
                        e.id = id;
                        model.log.push(e);
                        if matches!(step, Step::LocalWrite { .. }) {
                            cache.wrote(&pairs[p], shard_of(p), Some(id));
                        }
                    }
                    Step::Expire { p } => {
                        if let Some(d) = model.current(p)
                            && matches!(d.choice, Choice::GrantTemporary { expires_at } if expires_at <= now)
                        {
                            let mut e = event(0, d);
                            e.event.kind = EventKind::Expired;
                            e.shard = shard_of(p);
                            e.id = StreamId::new(model.next_id, 0);
                            model.next_id += 1;
                            model.log.push(e);
                        }
                    }
                    Step::TailerSend => {
                        if in_flight.is_none() {
                            in_flight = Some((model.log.len(), now));
                        }
                    }
                    Step::TailerComplete => {
                        if let Some((upto, sent)) = in_flight.take() {
                            cache.apply(&model.log[applied..upto]);
                            applied = upto;
                            cache.heard(sent);
                        }
                    }
                    Step::TailerError => {
                        in_flight = None;
                        cache.flush();
                    }
                    Step::TailerGap => {
                        in_flight = None;
                        applied = model.log.len();
                        let mut head = Cursor::uniform(2, StreamId::ZERO);
                        for e in &model.log {
                            head.advance(e.shard, e.id);
                        }
                        cache.flush();
                        cache.start(&head);
                    }
                    Step::StartFill { p, late } => {
                        let stamp = cache.stamp(shard_of(p));
                        let read = (!late).then(|| model.current(p));
                        fills.push((p, stamp, read));
                    }
                    Step::FinishFill { i } => {
                        if !fills.is_empty() {
                            let (p, stamp, read) = fills.remove(i % fills.len());
                            let d = read.unwrap_or_else(|| model.current(p));
                            cache.fill(&pairs[p], stamp, d.map(Arc::new));
                        }
                    }
                    Step::Advance { ms } => {
                        tokio::time::advance(Duration::from_millis(ms.into())).await;
                    }
                    Step::Check { p } => {
                        if let Lookup::Hit(d) =
                            cache.lookup(&pairs[p], shard_of(p), &Freshness::Bounded)
                        {
                            let verdict = evaluate(d.clone(), now);
                            if verdict.allowed() {
                                let d = d.as_deref().unwrap();
                                prop_assert!(
                                    d.choice.expires_at().is_none_or(|e| e > now),
                                    "ALLOW of a lapsed grant"
                                );
                            }
                            prop_assert!(
                                model.held_within(p, d.as_deref(), now - bound, now),
                                "answer {:?} was not the store's state within [now - B, now]",
                                d.as_ref().map(|d| &d.evidence.message_id)
                            );
                        }
                    }
                }
            }
            Ok(())
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1024))]
        #[test]
        fn every_cached_answer_is_the_stores_state_within_the_bound(
            steps in proptest::collection::vec(step(), 1..160)
        ) {
            run(steps)?;
        }
    }
}
