//! StreamGrants fan-out: each replica reads the store's event log once and hands every event to
//! all of its subscribers.
//!
//! ```text
//!   store event log ──(one tailer task)──► broadcast ring (bounded) ──► Subscription ──► client
//!                  ◄──────────── catch-up reads at the subscriber's own cursor ───┘
//! ```
//!
//! - The **tailer** follows the log with blocking reads and publishes into a bounded broadcast
//!   ring, then advances the hub's head. It never waits for subscribers.
//! - A **[`Subscription`]** has a cursor: everything up to it was taken from the log (queued,
//!   delivered, or filtered out); what it reports to its consumer ([`Subscription::resume_cursor`]) is
//!   the cursor of the last item actually returned, never one covering queued items.
//!   It first replays from the store after its cursor, then follows the ring, skipping what it
//!   already has. If it falls behind by more than the ring holds (a slow client), it goes back to
//!   replaying from the store at its cursor: a slow subscriber costs store reads, never memory,
//!   and never blocks the others.
//! - A subscription starts at the head, after a cursor, or at an instant ([`Start`]). A cursor
//!   the store has trimmed past is refused as out of range, and one past the log's end as not
//!   issued by this log; an instant older than the retained log starts at its oldest event.
//! - An idle subscription gets a checkpoint carrying the latest cursor every `checkpoint` period.
//! - Issue 16: the tailer also feeds the replica's check cache ([`CheckCache`]): each read's
//!   events are applied before they are published, then every shard is marked heard at the
//!   time the read was sent; a failed read or a gap flushes the cache. With a cache, a blocking
//!   read waits at most a quarter of its staleness bound, and a probe beside the tailer
//!   (`probe_freshness`) marks a quiet log heard every quarter of it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::check_cache::CheckCache;
use crate::domain::{AttributionFilter, EventKind, PhoneNumber, UnattributedPolicy};
use crate::metrics::Metrics;
use crate::store::{ConsentStore, Cursor, CursorError, LoggedEvent, StoreError, cursor_at};

/// How many events the ring keeps for subscribers that are a little behind, by default.
pub const RING_CAPACITY: usize = 4096;
/// Events the tailer fetches per store read.
const READ_BATCH: usize = 512;
/// Events a subscription fetches per store read while replaying: its own copies, queued until
/// its consumer takes them, so this is its memory bound (the ring's events are shared).
const REPLAY_BATCH: usize = 32;
/// How long one blocking read of the tailer waits before it checks for shutdown.
const TAIL_WAIT: Duration = Duration::from_secs(1);
/// Pause after a failed store read before the tailer retries.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Tries to find where the retained log starts before `since` gives up (trims racing it).
const SINCE_ATTEMPTS: usize = 3;

/// Where a subscription starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// At the current head: events recorded from now on.
    Head,
    /// Strictly after a cursor this log issued. Refused if the log was trimmed past it
    /// ([`CursorError::OutOfRange`]) or if it is past the log's end ([`CursorError::Ahead`]).
    After(Cursor),
    /// At the first retained event logged at or after this instant; an instant older than the
    /// retained log starts at its oldest event.
    Since(DateTime<Utc>),
}

/// What the tailer puts in the ring.
#[derive(Debug, Clone)]
enum Published {
    Event(Arc<LoggedEvent>),
    /// The tailer lost its place in the log: live subscribers must re-read from the store.
    Gap,
}

/// The per-replica fan-out point. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    store: Arc<dyn ConsentStore>,
    ring: broadcast::Sender<Published>,
    /// Position just after the newest event the tailer has published.
    head: watch::Receiver<Option<Cursor>>,
    shutdown: CancellationToken,
    checkpoint: Duration,
    /// Counts the times a subscriber fell out of the ring and went back to reading the store.
    metrics: Arc<Metrics>,
}

/// Settings of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// An idle subscription gets a checkpoint this often.
    pub checkpoint: Duration,
    /// Events kept in the ring (the fan-out's whole memory, shared by all subscribers).
    pub ring_capacity: usize,
    /// Issue 16: the replica's check cache, fed by the tailer (`None`: no cache).
    pub cache: Option<Arc<CheckCache>>,
}

impl Hub {
    /// Starts the tailer task; it stops when `shutdown` is cancelled (await its handle to know
    /// it has). Catch-ups are counted in `metrics`.
    pub fn start(
        store: Arc<dyn ConsentStore>,
        config: HubConfig,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Hub, JoinHandle<()>) {
        let (ring, _) = broadcast::channel(config.ring_capacity.max(1));
        let (head_tx, head) = watch::channel(None);
        let tailer = tail(
            store.clone(),
            ring.clone(),
            head_tx,
            config.cache.clone(),
            shutdown.clone(),
        );
        let probe = probe_freshness(store.clone(), config.cache.clone(), shutdown.clone());
        let tailer = tokio::spawn(
            async move {
                tokio::join!(tailer, probe);
            }
            .instrument(tracing::info_span!("fanout_tailer")),
        );
        let hub = Hub {
            store,
            ring,
            head,
            shutdown,
            checkpoint: config.checkpoint,
            metrics,
        };
        (hub, tailer)
    }

    pub fn shards(&self) -> usize {
        self.store.shards()
    }

    /// Opens a subscription at `start`.
    ///
    /// The subscription is registered before this returns, so every event recorded after the
    /// call returns is delivered. A start the log cannot serve fails the call itself, not the
    /// first message.
    pub async fn subscribe(
        &self,
        start: Start,
        filter: Filter,
    ) -> Result<Subscription, StoreError> {
        let ring = self.ring.subscribe();
        let cursor = match start {
            Start::Head => self.store.head().await?,
            Start::After(c) => {
                let head = self.store.head().await?;
                if let Some(shard) = c.first_ahead_of(&head) {
                    return Err(CursorError::Ahead { shard }.into());
                }
                // Out of range if the log was trimmed past it.
                self.store.read_events(&c, 1, Duration::ZERO).await?;
                c
            }
            Start::Since(since) => self.since(since).await?,
        };
        Ok(Subscription {
            hub: self.clone(),
            ring,
            delivered: cursor.clone(),
            cursor,
            filter,
            pending: VecDeque::new(),
            replaying: true,
            next_checkpoint: Instant::now() + self.checkpoint,
        })
    }

    /// A cursor just before the first retained event logged at or after `since`: older
    /// instants start at the oldest retained event instead of failing.
    async fn since(&self, since: DateTime<Utc>) -> Result<Cursor, StoreError> {
        let mut cursor = cursor_at(self.shards(), since);
        let mut last = None;
        // A trim may land between reading where the log starts and checking it: try again.
        for _ in 0..SINCE_ATTEMPTS {
            cursor.advance_to(&self.store.retained_from().await?);
            match self.store.read_events(&cursor, 1, Duration::ZERO).await {
                Ok(_) => return Ok(cursor),
                Err(e @ StoreError::Cursor(CursorError::OutOfRange { .. })) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| CursorError::OutOfRange { shard: 0 }.into()))
    }

    /// Number of live subscriptions on this replica.
    pub fn subscribers(&self) -> usize {
        self.ring.receiver_count()
    }

    /// How many times a subscriber fell behind the ring and caught up from the store (as
    /// counted in the hub's metrics).
    pub fn catch_ups(&self) -> u64 {
        self.metrics.stream_catch_ups()
    }
}

/// Issue 16: keeps the check cache's shards fresh on a quiet log. Every quarter of the
/// staleness bound it asks the store, without waiting, for one event after the cache's applied
/// positions; none means everything committed before the probe was sent is applied, so the
/// shards are marked heard at that time ([`CheckCache::heard_if_still`]). The tailer's
/// blocking read does the same when it returns, but an idle Redis ends a `BLOCK` only at its
/// next cron tick (up to 100 ms late at the default `hz`), which alone would let shards go
/// stale between events. A probe that finds events, or fails, marks nothing: the tailer
/// applies them (or flushes).
async fn probe_freshness(
    store: Arc<dyn ConsentStore>,
    cache: Option<Arc<CheckCache>>,
    shutdown: CancellationToken,
) {
    let Some(cache) = cache else { return };
    let mut tick = tokio::time::interval(cache.tail_wait());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let sent_at = cache.now();
        let (applied, generations) = cache.position();
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = store.read_events(&applied, 1, Duration::ZERO) => r,
        };
        if let Ok(events) = read
            && events.is_empty()
        {
            cache.heard_if_still(sent_at, &generations);
        }
    }
}

/// Follows the log into the ring (and, issue 16, into the check cache: each read's events are
/// applied, then every shard is marked heard at the time the read was *sent*; any failure or
/// gap flushes the cache, which then answers nothing until a read succeeds again).
async fn tail(
    store: Arc<dyn ConsentStore>,
    ring: broadcast::Sender<Published>,
    head: watch::Sender<Option<Cursor>>,
    cache: Option<Arc<CheckCache>>,
    shutdown: CancellationToken,
) {
    // With a cache, a quiet log must still refresh `heard_at` well within its bound.
    let wait = cache
        .as_ref()
        .map_or(TAIL_WAIT, |c| c.tail_wait().min(TAIL_WAIT));
    let mut cursor = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = store.head() => match r {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "event tailer cannot read the log head; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    };
    if let Some(cache) = &cache {
        cache.start(&cursor);
    }
    head.send_replace(Some(cursor.clone()));
    loop {
        let sent_at = cache.as_ref().map(|c| c.now());
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = store.read_events(&cursor, READ_BATCH, wait) => r,
        };
        match read {
            Ok(events) => {
                // A full batch may not hold everything committed before the read was sent
                // (the rest comes with the next read): only a read that returned less than it
                // may have covers the log up to its send time.
                let complete = events.len() < READ_BATCH;
                if let Some(cache) = &cache {
                    cache.apply(&events);
                    if complete && let Some(sent_at) = sent_at {
                        cache.heard(sent_at);
                    }
                }
                if events.is_empty() {
                    continue;
                }
                for e in events {
                    cursor.advance(e.shard, e.id);
                    // No receivers is fine: nobody is subscribed.
                    let _ = ring.send(Published::Event(Arc::new(e)));
                }
                // Published after the events: a subscriber that sees this head has them queued.
                head.send_replace(Some(cursor.clone()));
            }
            Err(StoreError::Cursor(CursorError::OutOfRange { shard })) => {
                tracing::error!(
                    shard,
                    "event tailer fell behind the retained log; skipping ahead"
                );
                if let Some(cache) = &cache {
                    cache.flush();
                }
                let _ = ring.send(Published::Gap);
                if let Ok(c) = store.head().await {
                    cursor = c;
                    if let Some(cache) = &cache {
                        cache.start(&cursor);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "event tailer read failed; retrying");
                if let Some(cache) = &cache {
                    cache.flush();
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Which events a subscriber wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Empty: every business.
    pub businesses: HashSet<PhoneNumber>,
    pub include_denials: bool,
    pub include_expiries: bool,
    /// issue 13: teams, campaigns, labels (empty: all). Applies to grants only: consent is
    /// the pair's, so a denial or an expiry reaches every team's subscriber (a team removes a
    /// customer it may not have listed, harmlessly, rather than keep one who said no).
    pub attribution: AttributionFilter,
    /// issue 13: whether an unattributed grant passes a non-empty attribution filter.
    pub unattributed: UnattributedPolicy,
}

impl Filter {
    pub fn matches(&self, e: &LoggedEvent) -> bool {
        let kind_ok = match e.event.kind {
            EventKind::Granted => self
                .attribution
                .matches(e.event.decision.attribution.as_ref(), self.unattributed),
            EventKind::Denied => self.include_denials,
            EventKind::Expired => self.include_expiries,
        };
        kind_ok
            && (self.businesses.is_empty()
                || self.businesses.contains(&e.event.decision.pair.business))
    }
}

/// One thing delivered to a subscriber.
#[derive(Debug, Clone)]
pub enum Item {
    /// An event, and the cursor to resume after it.
    Event(Arc<LoggedEvent>, Cursor),
    /// Nothing new that matches: the latest cursor.
    Checkpoint(Cursor),
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server is shutting down; resume from your last cursor")]
    ShuttingDown,
}

/// One subscriber's position and filter. Pull items with [`Subscription::next`].
pub struct Subscription {
    hub: Hub,
    ring: broadcast::Receiver<Published>,
    /// Everything up to here was taken from the log: queued in `pending` or already returned.
    cursor: Cursor,
    /// The cursor of the last item [`next`](Self::next) returned (the start before any): what
    /// a consumer that has handed on every item it got may resume from.
    delivered: Cursor,
    filter: Filter,
    pending: VecDeque<Item>,
    /// Reading from the store (at start, and after falling behind the ring).
    replaying: bool,
    next_checkpoint: Instant,
}

impl Subscription {
    /// Where a consumer that has passed on every item returned so far resumes: never past an
    /// event still queued inside the subscription.
    pub fn resume_cursor(&self) -> &Cursor {
        &self.delivered
    }

    /// Completes when the server starts shutting down.
    pub async fn stopping(&self) {
        self.hub.shutdown.cancelled().await
    }

    /// The next event or checkpoint. Errors end the subscription.
    pub async fn next(&mut self) -> Result<Item, SubscriptionError> {
        loop {
            if self.hub.shutdown.is_cancelled() {
                return Err(SubscriptionError::ShuttingDown);
            }
            if let Some(item) = self.pending.pop_front() {
                self.next_checkpoint = Instant::now() + self.hub.checkpoint;
                let (Item::Event(_, c) | Item::Checkpoint(c)) = &item;
                self.delivered = c.clone();
                return Ok(item);
            }
            if self.replaying {
                self.replay_batch().await?;
                continue;
            }
            let received = tokio::select! {
                _ = self.hub.shutdown.cancelled() => return Err(SubscriptionError::ShuttingDown),
                r = tokio::time::timeout_at(self.next_checkpoint, self.ring.recv()) => r,
            };
            match received {
                Ok(Ok(published)) => self.take(published),
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    tracing::debug!(
                        missed,
                        "subscriber fell behind the ring; replaying from store"
                    );
                    self.hub.metrics.stream_caught_up();
                    self.replaying = true;
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(SubscriptionError::ShuttingDown);
                }
                Err(_idle) => self.checkpoint(),
            }
        }
    }

    /// Reads one batch from the store after the cursor; leaves replay mode when caught up.
    async fn replay_batch(&mut self) -> Result<(), SubscriptionError> {
        let events = tokio::select! {
            _ = self.hub.shutdown.cancelled() => return Err(SubscriptionError::ShuttingDown),
            r = self.hub.store.read_events(&self.cursor, REPLAY_BATCH, Duration::ZERO) => r?,
        };
        if events.is_empty() {
            self.replaying = false;
        }
        for e in events {
            self.take(Published::Event(Arc::new(e)));
        }
        Ok(())
    }

    fn take(&mut self, published: Published) {
        match published {
            Published::Gap => self.replaying = true,
            Published::Event(e) => {
                if !self.cursor.is_before(e.shard, e.id) {
                    return; // already delivered (replay and ring overlap)
                }
                self.cursor.advance(e.shard, e.id);
                if self.filter.matches(&e) {
                    self.pending.push_back(Item::Event(e, self.cursor.clone()));
                }
            }
        }
    }

    /// Idle: announce the latest position. The head is read *before* draining the ring, and
    /// the tailer publishes events before it moves the head, so every event up to that head is
    /// already in the ring and is taken (or skipped) here; nothing is jumped over.
    fn checkpoint(&mut self) {
        let head = self.hub.head.borrow().clone();
        loop {
            match self.ring.try_recv() {
                Ok(published) => self.take(published),
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.hub.metrics.stream_caught_up();
                    self.replaying = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !self.replaying
            && let Some(head) = head
        {
            self.cursor.advance_to(&head);
        }
        self.pending
            .push_back(Item::Checkpoint(self.cursor.clone()));
    }
}
