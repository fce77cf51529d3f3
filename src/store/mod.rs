//! The consent store: one trait, two implementations.
//!
//! - [`memory::MemoryStore`]: the embedded default. Everything in process memory; nothing
//!   survives a restart.
//! - [`redis::RedisStore`]: the production store. Several replicas can share one Redis.
//!
//! Both keep the same four things and give them the same meaning; the conformance suite in
//! `tests/` runs the same test functions against both:
//! - the **current decision** per pair (ordering by the domain's [`arbitrate`]);
//! - the **history** per pair (every decision, applied or stale);
//! - a **de-duplication** memory of decision ids (at least [`DEDUP_RETENTION`]);
//! - an **event log** split into shards, read with a [`Cursor`], plus a due-time index that turns
//!   lapsed temporary grants into exactly one `Expired` event.
//!
//! [`arbitrate`]: crate::domain::arbitrate

pub mod cursor;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{ConsentEvent, Decision, HistoryEntry, Pair};

pub use cursor::{Cursor, CursorError, StreamId};

/// Senders retry for days; a retried delivery must still be recognised as a duplicate.
pub const DEDUP_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

/// What recording a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    /// It became the current decision (and published its event, see
    /// [`ConsentEvent::for_applied`](crate::domain::ConsentEvent::for_applied)).
    Applied,
    /// A newer decision is current; it went to the history only.
    Stale,
    /// The same decision was recorded before; nothing changed.
    Duplicate,
}

/// An event read back from the log, with its place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub shard: usize,
    pub id: StreamId,
    pub event: ConsentEvent,
}

/// Failures of a store. None of them may ever be read as "allowed".
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("store returned data callgate cannot read: {0}")]
    Corrupt(String),
    #[error("store is misconfigured: {0}")]
    Misconfigured(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
}

/// The seam between callgate and its storage.
#[async_trait]
pub trait ConsentStore: Send + Sync + 'static {
    /// Records decisions atomically: all of them are stored, or (on error) none is acknowledged.
    /// For each: de-duplicate, arbitrate against the current decision, append to the history, and
    /// publish an event if applied. Returns one outcome per decision, in order.
    async fn record(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<RecordOutcome>, StoreError>;

    /// The pair's current decision, if any (possibly a lapsed temporary grant).
    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError>;

    /// [`current`](Self::current) for many pairs, answered in order.
    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError>;

    /// Every decision recorded for the pair, in arrival order.
    async fn history(&self, pair: &Pair) -> Result<Vec<HistoryEntry>, StoreError>;

    /// Number of event-log shards; every cursor of this store has this many positions.
    fn shards(&self) -> usize;

    /// Events strictly after `after`, at most `limit`, in log order: the shards merged by event id,
    /// which is the order events were logged (ties, within one clock tick, by shard). If there are none
    /// yet, waits up to `wait` for one. Fails with [`CursorError::OutOfRange`] if events after
    /// the cursor were already trimmed away.
    async fn read_events(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError>;

    /// The position just after the newest event.
    async fn head(&self) -> Result<Cursor, StoreError>;

    /// Where the retained log starts: per shard, the newest event trimmed away (zero if none).
    /// Every event after it is still readable.
    async fn retained_from(&self) -> Result<Cursor, StoreError>;

    /// Turns temporary grants that lapsed at or before `now`, and are still current, into one
    /// `Expired` event each. Safe to call from every replica at once: each lapse is claimed once.
    async fn claim_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError>;

    /// Readiness: `Ok` when the store can serve reads and writes.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A cursor pointing just before the first event logged at or after `since`.
///
/// Both stores give events ids whose first half is the millisecond they were logged at.
pub fn cursor_at(shards: usize, since: DateTime<Utc>) -> Cursor {
    let ms = since.timestamp_millis().max(0) as u64;
    Cursor::uniform(shards, StreamId::just_before_ms(ms))
}
