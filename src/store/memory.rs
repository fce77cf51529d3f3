//! The embedded store: everything in process memory, the same semantics as Redis.
//!
//! Used when no Redis URL is configured, so callgate runs on a fresh machine with no set-up.
//! **Nothing survives a restart**, and replicas do not share it; `main` says so at startup.
//!
//! One lock guards all state, so a decision is recorded (dedup, arbitration, history, event) as
//! one step, just as the Redis store does it in one Lua script. Readers take the lock shared.
//! The event log is a single shard.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::records::{RecordedDecision, RecordsPage, RecordsPosition, RecordsRange, TimeField};
use super::webhooks::MemoryWebhooks;
use super::{
    CallablePage, CallablePosition, ConsentStore, Cursor, CursorError, DeliveryConflict,
    HistoryPage, Lease, LoggedEvent, Progress, RecordOutcome, Recorded, RegisterOutcome,
    RequestPolicy, StoreError, StreamId, WebhookRecord, callable, check_deliveries, records,
};
use crate::domain::attribution::{attribute, budget, fits, late_attribution};
use crate::domain::{
    Arbitration, Budget, ChainLink, Choice, ConsentEvent, ConsentRequest, Decision, EventKind,
    GENESIS, HistoryEntry, HistoryOutcome, LateAttribution, Pair, PhoneNumber, Redelivery,
    Subscription, arbitrate, redelivery,
};

/// Limits of the in-memory event log.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Events older than this are trimmed (a cursor before them is out of range).
    pub event_retention: Duration,
    /// Hard cap on logged events, so memory stays bounded whatever the rate.
    pub max_events: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            event_retention: crate::config::DEFAULT_EVENT_RETENTION,
            max_events: 1_000_000,
        }
    }
}

pub struct MemoryStore {
    config: MemoryConfig,
    state: RwLock<State>,
    /// The id of the newest event; readers waiting for events watch it.
    head: watch::Sender<StreamId>,
    /// Outbound webhook subscriptions (issue 17).
    webhooks: MemoryWebhooks,
}

/// Issue 14: one business's index in one order: index key → (pair, position).
type RecordsIndex = BTreeMap<Vec<u8>, (Pair, u64)>;

#[derive(Default)]
struct State {
    current: HashMap<Pair, Decision>,
    /// Each entry with its chain link (issue 14).
    history: HashMap<Pair, Vec<(HistoryEntry, ChainLink)>>,
    /// Issue 14: per business and time field, index key → (pair, position) (see
    /// [`records`](super::records)).
    records: HashMap<(PhoneNumber, TimeField), RecordsIndex>,
    /// Every delivery id recorded, with the fingerprint of what it said. Kept as long as the
    /// histories (forever, like the Redis store's `d:` hashes).
    dedup: HashMap<[u8; 16], [u8; 8]>,
    /// The event log (one shard), oldest first.
    log: VecDeque<LoggedEvent>,
    last_id: StreamId,
    /// Newest id trimmed from the log: cursors before it are out of range.
    max_deleted: StreamId,
    /// Current temporary grants by expiry instant (ms), for the expiry sweep.
    due: BTreeSet<(i64, Pair)>,
    /// issue 13: registered consent requests per pair, by request message id. Pruned past
    /// their retention when the pair registers again.
    requests: HashMap<Pair, HashMap<String, ConsentRequest>>,
    /// Issue 13: per business, the customers whose current decision is a grant (possibly
    /// lapsed, until the sweep claims it): the calling lists' index, in digit order.
    callable: HashMap<PhoneNumber, BTreeSet<PhoneNumber>>,
}

impl MemoryStore {
    pub fn new(config: MemoryConfig) -> Self {
        MemoryStore {
            config,
            state: RwLock::new(State::default()),
            head: watch::channel(StreamId::ZERO).0,
            webhooks: MemoryWebhooks::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave half a decision: every mutation below
        // is done after all fallible work. So a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn append(
        &mut self,
        event: ConsentEvent,
        now: DateTime<Utc>,
        config: &MemoryConfig,
    ) -> StreamId {
        let ms = now.timestamp_millis().max(0) as u64;
        let id = if ms > self.last_id.ms {
            StreamId::new(ms, 0)
        } else {
            StreamId::new(self.last_id.ms, self.last_id.seq + 1)
        };
        self.last_id = id;
        self.log.push_back(LoggedEvent {
            shard: 0,
            id,
            event,
        });
        let min_ms = ms.saturating_sub(config.event_retention.as_millis() as u64);
        while let Some(front) = self.log.front() {
            if front.id.ms < min_ms || self.log.len() > config.max_events {
                self.max_deleted = front.id;
                self.log.pop_front();
            } else {
                break;
            }
        }
        id
    }

    fn record_one(
        &mut self,
        decision: &Decision,
        received_at: DateTime<Utc>,
        config: &MemoryConfig,
    ) -> Result<Recorded, Redelivery> {
        let done = |outcome| Recorded {
            outcome,
            logged: None,
        };
        let id = decision.dedup_digest();
        let fingerprint = decision.fingerprint();
        match redelivery(self.dedup.get(&id).copied(), fingerprint) {
            Redelivery::New => {}
            Redelivery::Duplicate => return Ok(done(RecordOutcome::Duplicate)),
            conflict @ Redelivery::Conflict => return Err(conflict),
        }
        // issue 13: a reply to a registered request carries its attribution.
        let mut decision = decision.clone();
        if let Some(request) = self
            .requests
            .get(&decision.pair)
            .and_then(|r| r.get(&decision.evidence.paired_message_id))
        {
            attribute(&mut decision, request);
        }
        let decision = &decision;
        let pair = &decision.pair;
        let outcome = match arbitrate(self.current.get(pair), decision) {
            Arbitration::Duplicate => return Ok(done(RecordOutcome::Duplicate)),
            Arbitration::Stale => RecordOutcome::Stale,
            Arbitration::Apply => RecordOutcome::Applied,
        };
        self.dedup.insert(id, fingerprint);
        let entry = HistoryEntry {
            decision: decision.clone(),
            outcome: match outcome {
                RecordOutcome::Applied => HistoryOutcome::Applied,
                _ => HistoryOutcome::Stale,
            },
            received_at,
        };
        // issue 14: chain the entry to the one before it, and index it for its business.
        let history = self.history.entry(pair.clone()).or_default();
        let position = history.len() as u64;
        let prev = history.last().map_or(GENESIS, |(_, link)| link.hash);
        let link = ChainLink::new(position, prev, &entry);
        for by in [TimeField::Event, TimeField::Received] {
            let ms = by.of(&entry).timestamp_millis();
            self.records
                .entry((pair.business.clone(), by))
                .or_default()
                .insert(
                    records::index_key(ms, &pair.customer, position),
                    (pair.clone(), position),
                );
        }
        history.push((entry, link));
        if outcome == RecordOutcome::Applied {
            if let Some(Choice::GrantTemporary { expires_at }) =
                self.current.get(pair).map(|d| d.choice)
            {
                self.due
                    .remove(&(expires_at.timestamp_millis(), pair.clone()));
            }
            let event = ConsentEvent::for_applied(decision, received_at);
            // Issue 16: a grant already lapsed on arrival is announced `Expired` now, so it is
            // not due (and not listed) any more.
            let lapsed = event.as_ref().is_some_and(|e| e.kind == EventKind::Expired);
            if let Choice::GrantTemporary { expires_at } = decision.choice
                && !lapsed
            {
                self.due
                    .insert((expires_at.timestamp_millis(), pair.clone()));
            }
            self.current.insert(pair.clone(), decision.clone());
            // Issue 13: the calling lists' index follows the current decision.
            match decision.choice {
                Choice::Deny => self.unlist(pair),
                Choice::GrantTemporary { .. } if lapsed => self.unlist(pair),
                Choice::GrantPermanent | Choice::GrantTemporary { .. } => {
                    self.callable
                        .entry(pair.business.clone())
                        .or_default()
                        .insert(pair.customer.clone());
                }
            }
            if let Some(event) = event {
                let id = self.append(event, received_at, config);
                return Ok(Recorded {
                    outcome,
                    logged: Some((0, id)),
                });
            }
        }
        Ok(done(outcome))
    }

    /// Issue 13: takes `pair` off its business's calling-list index.
    fn unlist(&mut self, pair: &Pair) {
        if let Some(customers) = self.callable.get_mut(&pair.business) {
            customers.remove(&pair.customer);
            if customers.is_empty() {
                self.callable.remove(&pair.business);
            }
        }
    }
}

// ---- issue 13 (attribution) --------------------------------------------------------------
impl State {
    fn register(
        &mut self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
        config: &MemoryConfig,
    ) -> RegisterOutcome {
        let oldest = now - chrono::Duration::milliseconds(policy.retention_ms());
        let pair = &request.pair;
        let requests = self.requests.entry(pair.clone()).or_default();
        requests.retain(|_, r| r.sent_at >= oldest);
        if let Some(known) = requests.get(&request.request_message_id) {
            return if known.same_as(request) {
                RegisterOutcome::Duplicate
            } else {
                RegisterOutcome::Conflict
            };
        }
        let sent: Vec<DateTime<Utc>> = requests.values().map(|r| r.sent_at).collect();
        if !fits(&sent, request.sent_at, &policy.limits) {
            return RegisterOutcome::OverBudget(budget(&sent, now, &policy.limits));
        }
        requests.insert(request.request_message_id.clone(), request.clone());
        // Replies recorded before the registration (within its retention) gain it now.
        let mut attributed = 0;
        let mut announce = None;
        let current = self.current.get(pair).cloned();
        if let Some(entries) = self.history.get_mut(pair) {
            // Attribution is not hashed (domain::chain): the entry's link stays valid.
            for (entry, _) in entries.iter_mut().filter(|(e, _)| e.received_at >= oldest) {
                if !attribute(&mut entry.decision, request) {
                    continue;
                }
                attributed += 1;
                let is_current = current
                    .as_ref()
                    .is_some_and(|c| c.dedup_digest() == entry.decision.dedup_digest());
                if is_current {
                    self.current.insert(pair.clone(), entry.decision.clone());
                    if late_attribution(&entry.decision, true, now) == LateAttribution::Announce {
                        announce = Some(entry.decision.clone());
                    }
                }
            }
        }
        if let Some(decision) = announce {
            let kind = match decision.choice {
                Choice::Deny => EventKind::Denied,
                _ => EventKind::Granted,
            };
            let event = ConsentEvent {
                kind,
                decision,
                late_attribution: true,
            };
            self.append(event, now, config);
        }
        RegisterOutcome::Registered { attributed }
    }
}
// ---- end issue 13 ------------------------------------------------------------------------

#[async_trait]
impl ConsentStore for MemoryStore {
    async fn record_logged(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let (outcomes, head) = {
            let mut state = self.write();
            // The whole call is checked before anything is written: a conflict stores nothing.
            let seen: Vec<Option<[u8; 8]>> = decisions
                .iter()
                .map(|d| state.dedup.get(&d.dedup_digest()).copied())
                .collect();
            check_deliveries(decisions, &seen)?;
            let mut outcomes = Vec::with_capacity(decisions.len());
            for (i, d) in decisions.iter().enumerate() {
                // Cannot conflict after the check above, which ran under the same lock.
                let outcome = state
                    .record_one(d, received_at, &self.config)
                    .map_err(|_| DeliveryConflict::of(decisions, i))?;
                outcomes.push(outcome);
            }
            (outcomes, state.last_id)
        };
        self.head
            .send_if_modified(|h| std::mem::replace(h, head) != head);
        Ok(outcomes)
    }

    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError> {
        Ok(self.read().current.get(pair).cloned())
    }

    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError> {
        let state = self.read();
        Ok(pairs
            .iter()
            .map(|p| state.current.get(p).cloned())
            .collect())
    }

    async fn history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let state = self.read();
        let all = state.history.get(pair).map_or(&[][..], Vec::as_slice);
        let end = start.saturating_add(limit.max(1)).min(all.len());
        let page = all.get(start..end).unwrap_or_default();
        Ok(HistoryPage {
            entries: page.iter().map(|(e, _)| e.clone()).collect(),
            links: page.iter().map(|(_, l)| Some(*l)).collect(),
            next: (end < all.len()).then_some(end),
        })
    }

    async fn records_page(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        use std::ops::Bound;
        let limit = limit.max(1);
        let state = self.read();
        let Some(index) = state.records.get(&(range.business.clone(), range.by)) else {
            return Ok(RecordsPage {
                items: Vec::new(),
                next: None,
            });
        };
        let from = records::time_prefix(range.from.timestamp_millis()).into_bytes();
        let to = records::time_prefix(range.to.timestamp_millis()).into_bytes();
        if from >= to {
            return Ok(RecordsPage {
                items: Vec::new(),
                next: None,
            });
        }
        let lower = match after {
            Some(p) if p.key() >= from.as_slice() => Bound::Excluded(p.key().to_vec()),
            _ => Bound::Included(from),
        };
        let mut items = Vec::new();
        let mut last_key = None;
        let mut more = false;
        for (key, (pair, position)) in index.range((lower, Bound::Excluded(to))) {
            if items.len() == limit {
                more = true;
                break;
            }
            let found = state
                .history
                .get(pair)
                .and_then(|h| h.get(*position as usize));
            items.push(RecordedDecision {
                pair: pair.clone(),
                position: *position,
                entry: found.map(|(e, _)| e.clone()),
                link: found.map(|(_, l)| *l),
            });
            last_key = Some(key.clone());
        }
        Ok(RecordsPage {
            items,
            next: more
                .then_some(last_key)
                .flatten()
                .map(RecordsPosition::after_key),
        })
    }

    fn shards(&self) -> usize {
        1
    }

    fn shard_of(&self, _pair: &Pair) -> usize {
        0
    }

    async fn read_events(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        after.expect_shards(1)?;
        let mut head = self.head.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let state = self.read();
                let from = after.get(0);
                if from < state.max_deleted {
                    return Err(CursorError::OutOfRange { shard: 0 }.into());
                }
                // The log is ordered by id: skip to the first event after the cursor.
                let start = state.log.partition_point(|e| e.id <= from);
                let events: Vec<_> = state.log.range(start..).take(limit).cloned().collect();
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            match tokio::time::timeout_at(deadline, head.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out (or the store is being dropped): no events.
                _ => return Ok(Vec::new()),
            }
        }
    }

    async fn head(&self) -> Result<Cursor, StoreError> {
        Ok(Cursor::uniform(1, self.read().last_id))
    }

    async fn retained_from(&self) -> Result<Cursor, StoreError> {
        Ok(Cursor::uniform(1, self.read().max_deleted))
    }

    async fn claim_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now_ms = now.timestamp_millis();
        let (claimed, head) = {
            let mut state = self.write();
            let mut claimed = 0;
            while let Some((at, _)) = state.due.first() {
                if *at > now_ms {
                    break;
                }
                let Some((_, pair)) = state.due.pop_first() else {
                    break;
                };
                // Only a grant that is still current lapses; the index is kept in step with
                // `current`, so this holds, but check rather than announce a wrong expiry.
                if let Some(d) = state.current.get(&pair).cloned()
                    && matches!(d.choice, Choice::GrantTemporary { .. })
                {
                    state.unlist(&pair);
                    let event = ConsentEvent {
                        kind: EventKind::Expired,
                        decision: d,
                        late_attribution: false,
                    };
                    state.append(event, now, &self.config);
                    claimed += 1;
                }
            }
            (claimed, state.last_id)
        };
        self.head
            .send_if_modified(|h| std::mem::replace(h, head) != head);
        Ok(claimed)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    // ---- issue 13 (attribution) ----

    async fn register_request(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<RegisterOutcome, StoreError> {
        let (outcome, head) = {
            let mut state = self.write();
            let outcome = state.register(request, now, policy, &self.config);
            (outcome, state.last_id)
        };
        self.head
            .send_if_modified(|h| std::mem::replace(h, head) != head);
        Ok(outcome)
    }

    async fn request_budget(
        &self,
        pair: &Pair,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Budget, StoreError> {
        let state = self.read();
        let sent: Vec<DateTime<Utc>> = state
            .requests
            .get(pair)
            .map(|r| r.values().map(|r| r.sent_at).collect())
            .unwrap_or_default();
        Ok(budget(&sent, now, &policy.limits))
    }

    // ---- issue 17: outbound webhook subscriptions ----

    async fn webhook_create(
        &self,
        subscription: &Subscription,
        cursor: &Cursor,
    ) -> Result<(), StoreError> {
        self.webhooks.create(subscription, cursor);
        Ok(())
    }

    async fn webhook_list(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        Ok(self.webhooks.list())
    }

    async fn webhook_get(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        Ok(self.webhooks.get(id))
    }

    async fn webhook_replace(&self, record: &WebhookRecord) -> Result<bool, StoreError> {
        Ok(self.webhooks.replace(record).unwrap_or(false))
    }

    async fn webhook_lease(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, StoreError> {
        Ok(self.webhooks.lease(id, holder, ttl, now))
    }

    async fn webhook_progress(
        &self,
        id: &str,
        token: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        Ok(self.webhooks.progress(id, token, progress))
    }

    async fn webhook_release(&self, id: &str, holder: &str, token: u64) -> Result<(), StoreError> {
        self.webhooks.release(id, holder, token);
        Ok(())
    }

    // ---- issue 13 (calling lists) ----

    async fn callable_page(
        &self,
        business: &PhoneNumber,
        from: &CallablePosition,
        limit: usize,
        keep: callable::Keep<'_>,
    ) -> Result<CallablePage, StoreError> {
        let limit = limit.max(1);
        // One shard: a position past it is the end.
        if from.shard > 0 {
            return Ok(CallablePage {
                entries: Vec::new(),
                next: None,
            });
        }
        let state = self.read();
        let Some(customers) = state.callable.get(business) else {
            return Ok(CallablePage {
                entries: Vec::new(),
                next: None,
            });
        };
        let lower = from
            .after
            .as_ref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut entries = Vec::new();
        let mut last = None;
        for customer in customers
            .range((lower, Bound::Unbounded))
            .take(callable::scan_budget(limit))
        {
            let pair = Pair::new(business.clone(), customer.clone());
            if let Some(d) = state.current.get(&pair)
                && keep(d)
            {
                entries.push(d.clone());
            }
            last = Some(customer);
            if entries.len() == limit {
                break;
            }
        }
        // More to read if something follows the last customer read.
        let next = last
            .filter(|l| {
                customers
                    .range((Bound::Excluded(*l), Bound::Unbounded))
                    .next()
                    .is_some()
            })
            .map(|l| CallablePosition {
                shard: 0,
                after: Some(l.clone()),
            });
        Ok(CallablePage { entries, next })
    }
}
