//! The consent store: one trait, two implementations.
//!
//! - [`memory::MemoryStore`]: the embedded default. Everything in process memory; nothing
//!   survives a restart.
//! - [`redis::RedisStore`]: the production store. Several replicas can share one Redis.
//!
//! Both keep the same four things and give them the same meaning; the conformance suite in
//! `tests/` runs the same test functions against both:
//! - the **current decision** per pair (ordering by the domain's [`arbitrate`]);
//! - the **history** per pair (every decision, applied or stale, in arrival order, read in
//!   pages);
//! - a **de-duplication** memory per pair: each delivery's id ([`Decision::dedup_id`]: pair,
//!   sender, message id) with the [`Decision::fingerprint`] of what it said, kept at least
//!   [`DEDUP_RETENTION`] (both stores keep it as long as the history). Recording looks up one
//!   id; it never scans the history, so its cost does not grow with the history;
//! - an **event log** split into shards, read with a [`Cursor`], plus a due-time index that turns
//!   lapsed temporary grants into exactly one `Expired` event;
//! - (issue 17) the **outbound webhook subscriptions**, each with its delivery cursor and a lease
//!   with a fencing token ([`webhooks`]).
//!
//! [`arbitrate`]: crate::domain::arbitrate

pub mod callable;
pub mod cursor;
pub mod memory;
pub mod records;
pub mod redis;
pub mod webhooks;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    Budget, ChainLink, ConsentEvent, ConsentRequest, Decision, HistoryEntry, Pair, PhoneNumber,
    Redelivery, RequestLimit, Subscription, redelivery,
};

pub use callable::{CallablePage, CallablePosition};
pub use cursor::{Cursor, CursorError, StreamId};
pub use records::{RecordedDecision, RecordsPage, RecordsPosition, RecordsRange, TimeField};
pub use webhooks::{Lease, Progress, WebhookRecord};

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

/// What recording one decision did, with the log position of the event it published, if
/// any: issue 16's read-your-writes token is built from these positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub outcome: RecordOutcome,
    /// `(shard, id)` of the event this decision published: set for an applied decision (both
    /// stores log one for every applied decision; a store that cannot tell leaves it unset).
    pub logged: Option<(usize, StreamId)>,
}

/// A delivery whose message id was recorded before with another answer, time or expiry
/// ([`Redelivery::Conflict`]). The whole call is refused and nothing of it is stored. Carries
/// no phone number: it is logged and answered to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "message id {message_id:?} from {sender} was already recorded with another answer; \
     nothing was stored"
)]
pub struct DeliveryConflict {
    /// The sender (`doubletick`, `whatsapp`).
    pub sender: &'static str,
    pub message_id: String,
    /// The decision's position in the call.
    pub index: usize,
}

impl DeliveryConflict {
    pub fn of(decisions: &[Decision], index: usize) -> Self {
        let d = &decisions[index.min(decisions.len().saturating_sub(1))];
        DeliveryConflict {
            sender: d.evidence.source.as_str(),
            message_id: d.evidence.message_id.clone(),
            index,
        }
    }
}

/// Checks a whole call for conflicts before anything of it is written: each decision against
/// the fingerprint stored under its id (`seen[i]`, in the same order), and against the
/// decisions before it in the call. Both stores run it first, so a conflict stores nothing.
pub fn check_deliveries(
    decisions: &[Decision],
    seen: &[Option<[u8; 8]>],
) -> Result<(), DeliveryConflict> {
    let mut in_call: std::collections::HashMap<[u8; 16], [u8; 8]> =
        std::collections::HashMap::new();
    for (i, d) in decisions.iter().enumerate() {
        let id = d.dedup_digest();
        let fingerprint = d.fingerprint();
        let earlier = seen
            .get(i)
            .copied()
            .flatten()
            .or_else(|| in_call.get(&id).copied());
        if redelivery(earlier, fingerprint) == Redelivery::Conflict {
            return Err(DeliveryConflict::of(decisions, i));
        }
        in_call.entry(id).or_insert(fingerprint);
    }
    Ok(())
}

/// One page of a pair's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Entries in arrival order.
    pub entries: Vec<HistoryEntry>,
    /// Issue 14: the chain link of each entry (same length and order as `entries`); `None`
    /// for a pre-chain entry (see [`crate::domain::chain`]).
    pub links: Vec<Option<ChainLink>>,
    /// Position of the entry after this page, if there is one.
    pub next: Option<usize>,
}

/// An event read back from the log, with its place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub shard: usize,
    pub id: StreamId,
    pub event: ConsentEvent,
}

/// Failures of a store. None of them may ever be read as "allowed".
#[derive(Debug, Clone, thiserror::Error)]
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
    #[error(transparent)]
    Conflict(#[from] DeliveryConflict),
}

// ---- issue 13 (attribution): consent requests -------------------------------------------

/// How registrations are kept and budgeted (from [`AttributionConfig`]).
///
/// [`AttributionConfig`]: crate::config::AttributionConfig
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// The request budget per pair.
    pub limits: Vec<RequestLimit>,
    /// Registrations are kept at least this long after their `sent_at` (never less than the
    /// longest budget window: see [`retention`](crate::domain::attribution::retention)); a
    /// reply waits as long for a registration that lands after it.
    pub retention: Duration,
}

impl RequestPolicy {
    pub fn new(limits: Vec<RequestLimit>, retention: Duration) -> Self {
        let retention = crate::domain::attribution::retention(&limits, retention);
        RequestPolicy { limits, retention }
    }

    pub fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What registering a consent request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// Stored. `attributed` replies recorded before it were attributed to it now.
    Registered { attributed: usize },
    /// The same registration was stored before (a retry): nothing changed.
    Duplicate,
    /// Refused: it does not fit the request budget. Nothing was stored. The budget is the one
    /// at the time of the call.
    OverBudget(Budget),
    /// Refused: this request message id is registered for the pair with other fields (never
    /// overwritten: one team cannot take another's request). Nothing was stored.
    Conflict,
}

// ---- end issue 13 ------------------------------------------------------------------------

/// The seam between callgate and its storage.
#[async_trait]
pub trait ConsentStore: Send + Sync + 'static {
    /// Records decisions atomically: all of them are stored, or (on error) none is acknowledged.
    /// For each: de-duplicate, arbitrate against the current decision, append to the history, and
    /// publish an event if applied. Returns one outcome per decision, in order, with the log
    /// position of each applied decision's event (issue 16: the webhook's `consistency_token`;
    /// `None` where no event was logged). A delivery that conflicts with a recorded one (same
    /// id, another fingerprint) fails the whole call with [`StoreError::Conflict`] and nothing
    /// is stored.
    async fn record_logged(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// [`record_logged`](Self::record_logged) without the log positions.
    async fn record(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<RecordOutcome>, StoreError> {
        let recorded = self.record_logged(decisions, received_at).await?;
        Ok(recorded.into_iter().map(|r| r.outcome).collect())
    }

    /// The pair's current decision, if any (possibly a lapsed temporary grant).
    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError>;

    /// [`current`](Self::current) for many pairs, answered in order.
    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError>;

    /// [`current_many`](Self::current_many) with one result per pair: where the store is
    /// split over servers (Redis Cluster), one failing server fails only the pairs it holds,
    /// and the others are answered. By default, all answered or all failed alike.
    async fn current_each(&self, pairs: &[Pair]) -> Vec<Result<Option<Decision>, StoreError>> {
        each_alike(pairs.len(), self.current_many(pairs).await)
    }

    /// At most `limit` (at least one) of the pair's history entries, in arrival order, from
    /// position `start` (0 is the first decision ever recorded).
    async fn history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError>;

    /// Every decision recorded for the pair, in arrival order (all pages: for tests and tools;
    /// the API pages).
    async fn history(&self, pair: &Pair) -> Result<Vec<HistoryEntry>, StoreError> {
        let mut all = Vec::new();
        let mut start = 0;
        loop {
            let page = self.history_page(pair, start, 1000).await?;
            all.extend(page.entries);
            match page.next {
                Some(next) if next > start => start = next,
                _ => return Ok(all),
            }
        }
    }

    // ---- issue 14: a business's decisions, for exports and the console ----------------

    /// At most `limit` (at least one) decisions of `range.business` whose `range.by` time is
    /// in `[range.from, range.to)`, in the index order of [`records`] (time, customer,
    /// position), strictly after `after` (from the start if `None`). Reads one page from the
    /// store; a caller that pages through holds one page at a time.
    async fn records_page(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError>;

    /// Number of event-log shards; every cursor of this store has this many positions.
    fn shards(&self) -> usize;

    /// The event-log shard a pair's events go to (`0..shards()`); issue 16's check cache
    /// keeps its freshness per shard.
    fn shard_of(&self, pair: &Pair) -> usize;

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

    // ---- issue 13 (attribution): consent requests ----
    //
    // A registration is kept with its pair (same shard) for `policy.retention` after its
    // `sent_at`. `record` attributes a reply whose paired message id matches a registration of
    // the pair; a reply recorded first is attributed when its registration lands (within the
    // retention): its history entry (and the current decision, if it is the one) gain the
    // attribution, and if it is current and a live grant or a denial an event with
    // `late_attribution` is logged (`domain::attribution::late_attribution`).

    /// Registers `request` (already validated) if it fits the budget with the pair's other
    /// registrations (`domain::attribution::fits` at its `sent_at`): check and insert in one
    /// atomic step, so two registrations racing cannot both take the last request. `now` is
    /// the app's clock (purging registrations past their retention).
    async fn register_request(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<RegisterOutcome, StoreError>;

    /// The pair's request budget at `now` (`domain::attribution::budget`).
    async fn request_budget(
        &self,
        pair: &Pair,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Budget, StoreError>;
    // ---- issue 17: outbound webhook subscriptions (see [`webhooks`]) ----------------------

    /// Stores a new subscription (version 0, no lease) whose delivery starts after `cursor`.
    async fn webhook_create(
        &self,
        subscription: &Subscription,
        cursor: &Cursor,
    ) -> Result<(), StoreError>;

    /// Every subscription, ordered by id.
    async fn webhook_list(&self) -> Result<Vec<WebhookRecord>, StoreError>;

    /// One subscription, if it exists.
    async fn webhook_get(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError>;

    /// An operator's change: writes `record` (settings, state, cursor) if the stored version is
    /// still `record.version`, then raises the version and ends any lease (the delivering
    /// replica must take it anew and re-read the record). `Ok(false)`: the version moved
    /// (read again and retry), or the subscription is gone.
    async fn webhook_replace(&self, record: &WebhookRecord) -> Result<bool, StoreError>;

    /// Takes or renews the delivery lease of subscription `id` for `holder`, for `ttl` from
    /// `now` (the Redis store measures the lease with Redis's own clock instead).
    async fn webhook_lease(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, StoreError>;

    /// A delivery's progress, written only if `token` is still the subscription's version
    /// (fencing): `Ok(false)` means the lease was lost and nothing was written.
    async fn webhook_progress(
        &self,
        id: &str,
        token: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up (if `holder` still holds it with `token`), so another replica may
    /// take over at once.
    async fn webhook_release(&self, id: &str, holder: &str, token: u64) -> Result<(), StoreError>;
    // ---- issue 13: calling lists (see `callable`) ----

    /// One page of `business`'s calling list from `from`: the current decisions of the pairs
    /// in the business's index of possibly-callable pairs that `keep` admits, at most `limit`
    /// (at least one) of them, in list order. Reads at most
    /// [`callable::scan_budget`]`(limit)` index entries, so a page may hold fewer than
    /// `limit` (even none) and still have a `next`. Memory and work are bounded by `limit`,
    /// whatever the size of the business.
    async fn callable_page(
        &self,
        business: &PhoneNumber,
        from: &CallablePosition,
        limit: usize,
        keep: callable::Keep<'_>,
    ) -> Result<CallablePage, StoreError>;
}

/// A cursor pointing just before the first event logged at or after `since`.
///
/// Both stores give events ids whose first half is the millisecond they were logged at.
pub fn cursor_at(shards: usize, since: DateTime<Utc>) -> Cursor {
    let ms = since.timestamp_millis().max(0) as u64;
    Cursor::uniform(shards, StreamId::just_before_ms(ms))
}

/// One result per item from an answer for all of them: each answer, or the same error for all
/// `n` items.
pub(crate) fn each_alike<T>(
    n: usize,
    all: Result<Vec<T>, StoreError>,
) -> Vec<Result<T, StoreError>> {
    match all {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}
