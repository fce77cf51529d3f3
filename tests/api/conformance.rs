//! The store conformance suite: one set of test functions, run against every store.
//!
//! Each `async fn` below takes a [`Backend`] and checks one promise of the
//! [`ConsentStore`] trait. The `conformance!` macro at the bottom runs each of them against the
//! [`MemoryStore`], against a [`RedisStore`] on a real `redis-server`, and against a
//! [`RedisStore`] on a real 3-master + 3-replica Redis Cluster, so the stores can never drift
//! apart unnoticed. The cluster run shares one cluster (starting one costs seconds): each test
//! function gets its own key prefix, so its own empty store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use callgate::domain::chain::ChainWalk;
use callgate::domain::{
    ChainLink, Choice, ConsentRequest, ConsentState, Decision, EventKind, EventKinds, Evidence,
    GENESIS, HistoryEntry, HistoryOutcome, Pair, PhoneNumber, SigningKey, Source, Subscription,
    SubscriptionState, evaluate, to_millis_precision,
};
use callgate::store::memory::{MemoryConfig, MemoryStore};
use callgate::store::redis::{Layout, RedisConfig, RedisStore};
use callgate::store::{
    CallablePosition, ConsentStore, Cursor, CursorError, Lease, LoggedEvent, Progress,
    RecordOutcome, RecordedDecision, RecordsPosition, RecordsRange, RegisterOutcome, RequestPolicy,
    StoreError, StreamId, TimeField, WebhookRecord, cursor_at,
};

use crate::cluster_harness::RedisCluster;
use crate::redis_harness::RedisServer;

/// A store implementation under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// The store under test (the same one every time).
    fn store(&self) -> Arc<dyn ConsentStore>;
    /// Another handle on the same data, as a second replica would hold.
    async fn replica(&self) -> Arc<dyn ConsentStore>;
    /// A new, empty store whose event log keeps only `retention`.
    async fn with_retention(&self, retention: Duration) -> Arc<dyn ConsentStore>;
}

pub struct MemoryBackend {
    store: Arc<MemoryStore>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        MemoryBackend {
            store: Arc::new(MemoryStore::new(MemoryConfig::default())),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn store(&self) -> Arc<dyn ConsentStore> {
        self.store.clone()
    }

    async fn replica(&self) -> Arc<dyn ConsentStore> {
        self.store.clone()
    }

    async fn with_retention(&self, retention: Duration) -> Arc<dyn ConsentStore> {
        Arc::new(MemoryStore::new(MemoryConfig {
            event_retention: retention,
            ..MemoryConfig::default()
        }))
    }
}

pub struct RedisBackend {
    server: RedisServer,
    store: Arc<RedisStore>,
}

static NEXT_PREFIX: AtomicUsize = AtomicUsize::new(0);

impl RedisBackend {
    pub async fn start() -> Self {
        Self::start_with(Layout::V1).await
    }

    /// A store writing `layout` (v2: `docs/redis-layout-v2.md`, being built).
    pub async fn start_with(layout: Layout) -> Self {
        let server = RedisServer::start();
        let mut config = RedisConfig::new(server.url());
        config.timeout = STORE_TIMEOUT;
        config.layout = layout;
        let store = Arc::new(
            RedisStore::connect(config)
                .await
                .expect("connect to the test redis-server"),
        );
        RedisBackend { server, store }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn store(&self) -> Arc<dyn ConsentStore> {
        self.store.clone()
    }

    async fn replica(&self) -> Arc<dyn ConsentStore> {
        Arc::new(
            RedisStore::connect(self.store.config().clone())
                .await
                .expect("connect a replica"),
        )
    }

    async fn with_retention(&self, retention: Duration) -> Arc<dyn ConsentStore> {
        let mut config = RedisConfig::new(self.server.url());
        config.timeout = STORE_TIMEOUT;
        config.prefix = format!("retention{}", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed));
        config.event_retention = retention;
        config.layout = self.store.config().layout;
        Arc::new(RedisStore::connect(config).await.expect("connect"))
    }
}

/// The suite checks what the stores do, not how fast: a store call on this 2-core machine,
/// beside a cluster and other tests, may take longer than the service's 250 ms default.
const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`RedisStore`] on a shared test cluster, under a key prefix of its own.
pub struct ClusterBackend {
    nodes: String,
    store: Arc<RedisStore>,
}

impl ClusterBackend {
    pub async fn start(cluster: &RedisCluster) -> Self {
        Self::start_with(cluster, Layout::V1).await
    }

    /// A store writing `layout`, on the shared cluster, under a prefix of its own.
    pub async fn start_with(cluster: &RedisCluster, layout: Layout) -> Self {
        let mut config = RedisConfig::cluster(cluster.nodes_env());
        config.timeout = STORE_TIMEOUT;
        config.layout = layout;
        config.prefix = format!("conf{}", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed));
        let store = Arc::new(
            RedisStore::connect(config)
                .await
                .expect("connect to the test cluster"),
        );
        ClusterBackend {
            nodes: cluster.nodes_env(),
            store,
        }
    }
}

#[async_trait]
impl Backend for ClusterBackend {
    fn store(&self) -> Arc<dyn ConsentStore> {
        self.store.clone()
    }

    async fn replica(&self) -> Arc<dyn ConsentStore> {
        Arc::new(
            RedisStore::connect(self.store.config().clone())
                .await
                .expect("connect a replica"),
        )
    }

    async fn with_retention(&self, retention: Duration) -> Arc<dyn ConsentStore> {
        let mut config = RedisConfig::cluster(self.nodes.clone());
        config.timeout = STORE_TIMEOUT;
        config.prefix = format!("retention{}", NEXT_PREFIX.fetch_add(1, Ordering::Relaxed));
        config.event_retention = retention;
        config.layout = self.store.config().layout;
        Arc::new(RedisStore::connect(config).await.expect("connect"))
    }
}

// ---- helpers ----------------------------------------------------------------------------

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).expect("valid test number")
}

fn pair(n: u32) -> Pair {
    Pair::new(phone("+919000000000"), phone(&format!("+91987{n:07}")))
}

fn now() -> DateTime<Utc> {
    to_millis_precision(Utc::now())
}

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn evidence(msg: &str) -> Evidence {
    Evidence {
        source: Source::DoubleTick,
        message_id: msg.to_owned(),
        paired_message_id: format!("paired-{msg}"),
        response_source: "user_initiated".to_owned(),
        sender_customer_id: "cust-42".to_owned(),
        body_sha256: [0xab; 32],
        stated_at: DateTime::UNIX_EPOCH,
        stated_expires_at: None,
    }
}

/// A decision whose sender stated exactly `decided_at` (and the choice's expiry).
fn decision(pair: &Pair, choice: Choice, decided_at: DateTime<Utc>, msg: &str) -> Decision {
    Decision {
        pair: pair.clone(),
        choice,
        decided_at,
        evidence: Evidence {
            stated_at: decided_at,
            stated_expires_at: choice.expires_at(),
            ..evidence(msg)
        },
        attribution: None,
        customer_name: None,
    }
}

fn temporary(expires_at: DateTime<Utc>) -> Choice {
    Choice::GrantTemporary { expires_at }
}

fn zero(store: &dyn ConsentStore) -> Cursor {
    Cursor::uniform(store.shards(), StreamId::ZERO)
}

/// Every event after `after`, reading until the log has no more (bounded).
async fn events_after(store: &dyn ConsentStore, after: &Cursor) -> Vec<LoggedEvent> {
    let mut cursor = after.clone();
    let mut all = Vec::new();
    for _ in 0..100 {
        let batch = store
            .read_events(&cursor, 3, Duration::ZERO)
            .await
            .expect("read_events");
        if batch.is_empty() {
            return all;
        }
        for e in &batch {
            assert!(cursor.is_before(e.shard, e.id), "event at or before cursor");
            cursor.advance(e.shard, e.id);
        }
        all.extend(batch);
    }
    panic!("event log did not run dry");
}

async fn all_events(store: &dyn ConsentStore) -> Vec<LoggedEvent> {
    events_after(store, &zero(store)).await
}

fn kinds(events: &[LoggedEvent]) -> Vec<(EventKind, Decision)> {
    events
        .iter()
        .map(|e| (e.event.kind, e.event.decision.clone()))
        .collect()
}

// ---- the promises -----------------------------------------------------------------------

pub async fn first_decision_applies(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    assert_eq!(store.current(&p).await.unwrap(), None);
    let d = decision(&p, Choice::GrantPermanent, now(), "m1");
    let received = now();
    assert_eq!(
        store
            .record(std::slice::from_ref(&d), received)
            .await
            .unwrap(),
        vec![RecordOutcome::Applied]
    );
    assert_eq!(store.current(&p).await.unwrap(), Some(d.clone()));
    assert_eq!(
        store.history(&p).await.unwrap(),
        vec![HistoryEntry {
            decision: d.clone(),
            outcome: HistoryOutcome::Applied,
            received_at: received,
        }]
    );
    assert_eq!(
        kinds(&all_events(&*store).await),
        vec![(EventKind::Granted, d)]
    );
}

pub async fn newer_decision_wins_whatever_the_arrival_order(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    for (n, in_order) in [(1, true), (2, false)] {
        let p = pair(n);
        let grant = decision(&p, Choice::GrantPermanent, t, "grant");
        let deny = decision(&p, Choice::Deny, t + ms(1000), "deny");
        let (first, second) = if in_order {
            (&grant, &deny)
        } else {
            (&deny, &grant)
        };
        assert_eq!(
            store
                .record(std::slice::from_ref(first), now())
                .await
                .unwrap(),
            vec![RecordOutcome::Applied]
        );
        let want = if in_order {
            RecordOutcome::Applied
        } else {
            RecordOutcome::Stale
        };
        assert_eq!(
            store
                .record(std::slice::from_ref(second), now())
                .await
                .unwrap(),
            vec![want]
        );
        assert_eq!(
            store.current(&p).await.unwrap(),
            Some(deny),
            "in order: {in_order}"
        );
    }
}

pub async fn ties_go_to_denial_then_permanent_grant(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let cases = [
        (Choice::GrantPermanent, Choice::Deny, Choice::Deny),
        (Choice::Deny, Choice::GrantPermanent, Choice::Deny),
        (
            temporary(t + ms(60_000)),
            Choice::GrantPermanent,
            Choice::GrantPermanent,
        ),
        (
            Choice::GrantPermanent,
            temporary(t + ms(60_000)),
            Choice::GrantPermanent,
        ),
    ];
    for (n, (first, second, winner)) in cases.into_iter().enumerate() {
        let p = pair(n as u32);
        let a = decision(&p, first, t, "a");
        let c = decision(&p, second, t, "b");
        store.record(&[a, c], now()).await.unwrap();
        assert_eq!(
            store.current(&p).await.unwrap().map(|d| d.choice),
            Some(winner),
            "case {n}"
        );
    }
}

pub async fn duplicate_delivery_changes_nothing(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let d = decision(&p, Choice::Deny, now(), "m1");
    assert_eq!(
        store.record(std::slice::from_ref(&d), now()).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    // A retry with a different body (hash) is the same decision.
    let mut retry = d.clone();
    retry.evidence.body_sha256 = [0xcd; 32];
    assert_eq!(
        store.record(&[retry], now()).await.unwrap(),
        vec![RecordOutcome::Duplicate]
    );
    // Twice in one call: the second is a duplicate of the first.
    let q = pair(2);
    let e = decision(&q, Choice::GrantPermanent, now(), "m2");
    assert_eq!(
        store.record(&[e.clone(), e.clone()], now()).await.unwrap(),
        vec![RecordOutcome::Applied, RecordOutcome::Duplicate]
    );
    assert_eq!(store.current(&p).await.unwrap(), Some(d));
    assert_eq!(store.history(&p).await.unwrap().len(), 1);
    assert_eq!(store.history(&q).await.unwrap().len(), 1);
    assert_eq!(all_events(&*store).await.len(), 2);
}

pub async fn stale_decision_goes_to_history_only(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let newer = decision(&p, Choice::Deny, t, "newer");
    let older = decision(&p, Choice::GrantPermanent, t - ms(5_000), "older");
    store.record(std::slice::from_ref(&newer), t).await.unwrap();
    let later = t + ms(1);
    assert_eq!(
        store
            .record(std::slice::from_ref(&older), later)
            .await
            .unwrap(),
        vec![RecordOutcome::Stale]
    );
    assert_eq!(store.current(&p).await.unwrap(), Some(newer.clone()));
    let history = store.history(&p).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| (h.decision.clone(), h.outcome, h.received_at))
            .collect::<Vec<_>>(),
        vec![
            (newer.clone(), HistoryOutcome::Applied, t),
            (older, HistoryOutcome::Stale, later),
        ]
    );
    assert_eq!(
        kinds(&all_events(&*store).await),
        vec![(EventKind::Denied, newer)]
    );
}

pub async fn temporary_grant_reads_as_expired_after_its_expiry(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let expires = t + ms(500);
    let d = decision(&p, temporary(expires), t, "temp");
    store.record(std::slice::from_ref(&d), t).await.unwrap();
    let current = store.current(&p).await.unwrap();
    assert_eq!(current, Some(d.clone()));
    assert_eq!(
        evaluate(current, now()).state,
        ConsentState::GrantedTemporary
    );
    tokio::time::sleep(
        (expires + ms(150) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
    .await;
    let current = store.current(&p).await.unwrap();
    assert_eq!(current, Some(d.clone()), "a lapsed grant is still current");
    assert_eq!(evaluate(current, now()).state, ConsentState::Expired);
    assert_eq!(
        store.current_many(std::slice::from_ref(&p)).await.unwrap(),
        vec![Some(d)]
    );
}

pub async fn grant_expired_on_arrival_publishes_only_expired(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let d = decision(&p, temporary(t - ms(1_000)), t - ms(2_000), "late");
    assert_eq!(
        store.record(std::slice::from_ref(&d), t).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    // Issue 16: its EXPIRED is logged at once (every replica's check cache learns of the
    // change from the log), so the sweep has nothing left to claim.
    assert_eq!(
        kinds(&all_events(&*store).await),
        vec![(EventKind::Expired, d.clone())],
        "no GRANTED event"
    );
    assert_eq!(store.current(&p).await.unwrap(), Some(d.clone()));
    assert_eq!(
        evaluate(store.current(&p).await.unwrap(), t).state,
        ConsentState::Expired
    );
    assert_eq!(store.claim_expired(now()).await.unwrap(), 0);
    assert_eq!(
        kinds(&all_events(&*store).await),
        vec![(EventKind::Expired, d)]
    );
}

pub async fn each_lapse_is_claimed_exactly_once(b: &dyn Backend) {
    let store = b.store();
    let other = b.replica().await;
    let t = now();
    let expires = t + ms(200);
    let grants: Vec<Decision> = (0..6)
        .map(|n| decision(&pair(n), temporary(expires), t, "temp"))
        .collect();
    store.record(&grants, t).await.unwrap();
    // Not yet due: nothing to claim.
    assert_eq!(store.claim_expired(t).await.unwrap(), 0);
    tokio::time::sleep((expires + ms(50) - Utc::now()).to_std().unwrap_or_default()).await;
    let at = now();
    let (a, c) = tokio::join!(store.claim_expired(at), other.claim_expired(at));
    assert_eq!(a.unwrap() + c.unwrap(), grants.len());
    assert_eq!(store.claim_expired(now()).await.unwrap(), 0);
    assert_eq!(other.claim_expired(now()).await.unwrap(), 0);
    let mut expired: Vec<Decision> = all_events(&*store)
        .await
        .into_iter()
        .filter(|e| e.event.kind == EventKind::Expired)
        .map(|e| e.event.decision)
        .collect();
    expired.sort_by(|x, y| x.pair.cmp(&y.pair));
    assert_eq!(expired, grants);
}

pub async fn superseded_grant_does_not_expire(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let expires = t + ms(200);
    // Superseded by a denial.
    let p = pair(1);
    let grant = decision(&p, temporary(expires), t, "temp");
    let deny = decision(&p, Choice::Deny, t + ms(1), "deny");
    // Superseded by a longer temporary grant.
    let q = pair(2);
    let short = decision(&q, temporary(expires), t, "short");
    let long = decision(&q, temporary(t + ms(600_000)), t + ms(1), "long");
    store
        .record(
            &[grant.clone(), deny.clone(), short.clone(), long.clone()],
            t,
        )
        .await
        .unwrap();
    tokio::time::sleep((expires + ms(50) - Utc::now()).to_std().unwrap_or_default()).await;
    assert_eq!(store.claim_expired(now()).await.unwrap(), 0);
    assert_eq!(store.current(&p).await.unwrap(), Some(deny.clone()));
    let events = all_events(&*store).await;
    assert!(
        events.iter().all(|e| e.event.kind != EventKind::Expired),
        "{events:?}"
    );
    assert_eq!(events.len(), 4);
}

pub async fn current_many_answers_in_order(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let d1 = decision(&pair(1), Choice::GrantPermanent, t, "a");
    let d3 = decision(&pair(3), Choice::Deny, t, "b");
    store.record(&[d1.clone(), d3.clone()], t).await.unwrap();
    let asked = [pair(3), pair(2), pair(1), pair(3)];
    assert_eq!(
        store.current_many(&asked).await.unwrap(),
        vec![Some(d3.clone()), None, Some(d1), Some(d3)]
    );
    assert_eq!(store.current_many(&[]).await.unwrap(), vec![]);
}

pub async fn current_each_answers_every_pair_in_order(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    // Enough pairs to touch every shard of every store.
    let granted: Vec<Decision> = (0..60)
        .map(|n| decision(&pair(n), Choice::GrantPermanent, t, "g"))
        .collect();
    store.record(&granted, t).await.unwrap();
    let asked: Vec<Pair> = (0..120).rev().map(pair).collect();
    let got = store.current_each(&asked).await;
    assert_eq!(got.len(), asked.len());
    for (p, answer) in asked.iter().zip(got) {
        let want = granted.iter().find(|d| d.pair == *p).cloned();
        assert_eq!(answer.unwrap(), want, "{p:?}");
    }
    assert!(store.current_each(&[]).await.is_empty());
}

pub async fn history_keeps_arrival_order_and_all_evidence(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let odd = Evidence {
        source: Source::WhatsApp,
        message_id: "wamid.HBg|x\"y\\z|€".to_owned(),
        paired_message_id: "ctx|1".to_owned(),
        response_source: "automatic".to_owned(),
        sender_customer_id: "ñ-7".to_owned(),
        body_sha256: [0x0f; 32],
        stated_at: t + ms(3_600_000),
        stated_expires_at: None,
    };
    let empty = Evidence {
        source: Source::DoubleTick,
        message_id: "bare".to_owned(),
        paired_message_id: String::new(),
        response_source: String::new(),
        sender_customer_id: String::new(),
        body_sha256: [0; 32],
        stated_at: t,
        // Year 9999: what a sender said is kept, however unlikely.
        stated_expires_at: DateTime::from_timestamp_millis(253_402_300_799_000),
    };
    let renamed = |e: &Evidence, id: &str| Evidence {
        message_id: format!("{}{id}", e.message_id),
        ..e.clone()
    };
    let decisions = [
        (Choice::Deny, t + ms(30), odd.clone()),
        (temporary(t + ms(86_400_000)), t + ms(10), empty.clone()),
        (Choice::GrantPermanent, t + ms(40), renamed(&odd, "-2")),
        (Choice::Deny, t + ms(20), renamed(&empty, "-2")),
    ];
    let mut want = Vec::new();
    for (i, (choice, decided_at, evidence)) in decisions.into_iter().enumerate() {
        let d = Decision {
            pair: p.clone(),
            choice,
            decided_at,
            evidence,
            attribution: None,
            customer_name: None,
        };
        let received = t + ms(i as i64 * 7);
        let outcome = store
            .record(std::slice::from_ref(&d), received)
            .await
            .unwrap()[0];
        want.push(HistoryEntry {
            decision: d,
            outcome: match outcome {
                RecordOutcome::Applied => HistoryOutcome::Applied,
                RecordOutcome::Stale => HistoryOutcome::Stale,
                RecordOutcome::Duplicate => panic!("not a duplicate"),
            },
            received_at: received,
        });
    }
    let outcomes: Vec<_> = want.iter().map(|h| h.outcome).collect();
    assert_eq!(
        outcomes,
        [
            HistoryOutcome::Applied,
            HistoryOutcome::Stale,
            HistoryOutcome::Applied,
            HistoryOutcome::Stale
        ]
    );
    assert_eq!(store.history(&p).await.unwrap(), want);
    assert_eq!(store.history(&pair(2)).await.unwrap(), vec![]);
}

pub async fn read_events_after_a_cursor_returns_exactly_the_later_ones(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let mut recorded = Vec::new();
    for n in 0..5u32 {
        let d = decision(&pair(n), Choice::GrantPermanent, t, "m");
        store.record(std::slice::from_ref(&d), now()).await.unwrap();
        recorded.push(d);
        // Distinct milliseconds, so log order across shards is arrival order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let events = all_events(&*store).await;
    let decisions: Vec<Decision> = events.iter().map(|e| e.event.decision.clone()).collect();
    assert_eq!(decisions, recorded);
    let mut cursor = zero(&*store);
    for e in &events[..2] {
        cursor.advance(e.shard, e.id);
    }
    assert_eq!(events_after(&*store, &cursor).await, events[2..].to_vec());
    // `limit` is honoured.
    assert_eq!(
        store
            .read_events(&zero(&*store), 2, Duration::ZERO)
            .await
            .unwrap(),
        events[..2].to_vec()
    );
    // A cursor with the wrong shape is refused.
    let wrong = Cursor::uniform(store.shards() + 1, StreamId::ZERO);
    assert!(matches!(
        store.read_events(&wrong, 10, Duration::ZERO).await,
        Err(StoreError::Cursor(CursorError::WrongShardCount { .. }))
    ));
}

pub async fn head_is_past_every_event(b: &dyn Backend) {
    let store = b.store();
    assert_eq!(store.head().await.unwrap(), zero(&*store));
    let t = now();
    let ds: Vec<Decision> = (0..4)
        .map(|n| decision(&pair(n), Choice::Deny, t, "m"))
        .collect();
    store.record(&ds, t).await.unwrap();
    let head = store.head().await.unwrap();
    assert_eq!(head.shards(), store.shards());
    assert!(
        store
            .read_events(&head, 100, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let mut past = zero(&*store);
    for e in all_events(&*store).await {
        past.advance(e.shard, e.id);
    }
    assert_eq!(head, past);
}

pub async fn waiting_read_wakes_up_on_a_new_event(b: &dyn Backend) {
    let store = b.store();
    let head = store.head().await.unwrap();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let events = store
                .read_events(&head, 10, Duration::from_secs(10))
                .await
                .unwrap();
            (events, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let d = decision(&pair(1), Choice::GrantPermanent, now(), "m");
    store.record(std::slice::from_ref(&d), now()).await.unwrap();
    let (events, waited) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the waiting read must wake up")
        .unwrap();
    assert_eq!(kinds(&events), vec![(EventKind::Granted, d)]);
    assert!(waited >= Duration::from_millis(100), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // And an empty wait ends after its time.
    let head = store.head().await.unwrap();
    let started = tokio::time::Instant::now();
    let none = store
        .read_events(&head, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(90));
}

pub async fn events_of_a_pair_stay_in_order(b: &dyn Backend) {
    let store = b.store();
    let p = pair(7);
    let t = now();
    let mut want = Vec::new();
    for i in 0..12 {
        let (choice, kind) = if i % 2 == 0 {
            (Choice::GrantPermanent, EventKind::Granted)
        } else {
            (Choice::Deny, EventKind::Denied)
        };
        let d = decision(&p, choice, t + ms(i), &format!("m{i}"));
        store.record(std::slice::from_ref(&d), now()).await.unwrap();
        want.push((kind, d));
    }
    let events = all_events(&*store).await;
    assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(kinds(&events), want);
}

pub async fn cursor_before_trimmed_events_is_out_of_range(b: &dyn Backend) {
    let store = b.with_retention(Duration::from_millis(300)).await;
    let p = pair(1);
    let first = decision(&p, Choice::GrantPermanent, now(), "first");
    store.record(&[first], now()).await.unwrap();
    let after_first = store.head().await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = decision(&p, Choice::Deny, now(), "second");
    store
        .record(std::slice::from_ref(&second), now())
        .await
        .unwrap();
    let err = store
        .read_events(&zero(&*store), 10, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Cursor(CursorError::OutOfRange { .. })),
        "{err:?}"
    );
    // Also when asked to wait: the error is immediate.
    assert!(matches!(
        store
            .read_events(&zero(&*store), 10, Duration::from_secs(5))
            .await,
        Err(StoreError::Cursor(CursorError::OutOfRange { .. }))
    ));
    // A cursor past the trimmed event is still fine.
    assert_eq!(
        kinds(&events_after(&*store, &after_first).await),
        vec![(EventKind::Denied, second)]
    );
}

pub async fn cursor_at_starts_at_the_first_event_since(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let before = decision(&pair(1), Choice::Deny, t, "before");
    store.record(&[before], now()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let since = Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let after: Vec<Decision> = (2..5)
        .map(|n| decision(&pair(n), Choice::GrantPermanent, t, "after"))
        .collect();
    for d in &after {
        store.record(std::slice::from_ref(d), now()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let events = events_after(&*store, &cursor_at(store.shards(), since)).await;
    let got: Vec<Decision> = events.into_iter().map(|e| e.event.decision).collect();
    assert_eq!(got, after);
}

pub async fn several_decisions_in_one_call_are_all_recorded(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let a1 = decision(&pair(1), Choice::GrantPermanent, t, "a1");
    let b1 = decision(&pair(2), temporary(t + ms(60_000)), t, "b1");
    let a2 = decision(&pair(1), Choice::Deny, t + ms(5), "a2");
    assert_eq!(
        store
            .record(&[a1.clone(), b1.clone(), a2.clone()], t)
            .await
            .unwrap(),
        vec![RecordOutcome::Applied; 3]
    );
    assert_eq!(
        store.current_many(&[pair(1), pair(2)]).await.unwrap(),
        vec![Some(a2.clone()), Some(b1.clone())]
    );
    assert_eq!(store.history(&pair(1)).await.unwrap().len(), 2);
    let mut got = kinds(&all_events(&*store).await);
    got.sort_by_key(|(_, d)| (d.pair.clone(), d.decided_at));
    assert_eq!(
        got,
        vec![
            (EventKind::Granted, a1),
            (EventKind::Denied, a2),
            (EventKind::Granted, b1)
        ]
    );
    assert_eq!(store.record(&[], t).await.unwrap(), vec![]);
}

/// Issue 9.2: the de-duplication identity is the delivery (pair, sender, message id), never a
/// derived field: the same delivery with another derived expiry or ordering time is a duplicate.
pub async fn a_redelivery_with_other_derived_fields_is_a_duplicate(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let d = decision(&p, temporary(t + ms(7 * 86_400_000)), t, "m1");
    let mut elsewhere = d.clone();
    // Another replica's window and a clamped time; what the sender said is unchanged.
    elsewhere.choice = temporary(t + ms(86_400_000));
    elsewhere.decided_at = t + ms(5);
    assert_eq!(
        store.record(std::slice::from_ref(&d), t).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    assert_eq!(
        store.record(&[elsewhere], t + ms(10)).await.unwrap(),
        vec![RecordOutcome::Duplicate]
    );
    assert_eq!(store.history(&p).await.unwrap().len(), 1);
    assert_eq!(store.current(&p).await.unwrap(), Some(d));
    assert_eq!(all_events(&*store).await.len(), 1);
}

/// Issue 9.2: the same message id with another answer is a conflict; the whole call stores
/// nothing, also when the conflict is with an earlier decision of the same call.
pub async fn a_redelivery_with_another_answer_is_a_conflict_and_stores_nothing(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let grant = decision(&p, Choice::GrantPermanent, t, "m1");
    store.record(std::slice::from_ref(&grant), t).await.unwrap();
    let head = store.head().await.unwrap();
    let mut other_time = grant.clone();
    other_time.evidence.stated_at = t + ms(1);
    for conflicting in [
        decision(&p, Choice::Deny, t, "m1"),
        decision(&p, temporary(t + ms(60_000)), t, "m1"),
        other_time,
    ] {
        let err = store
            .record(std::slice::from_ref(&conflicting), now())
            .await
            .unwrap_err();
        match err {
            StoreError::Conflict(c) => {
                assert_eq!((c.message_id.as_str(), c.index), ("m1", 0));
            }
            other => panic!("{other:?}"),
        }
        // In a call with new decisions (of this and another pair): none of them is stored.
        let fresh = decision(&pair(2), Choice::GrantPermanent, t, "new");
        let err = store
            .record(&[fresh.clone(), conflicting.clone()], now())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(c) if c.index == 1),
            "{err:?}"
        );
        assert_eq!(store.current(&pair(2)).await.unwrap(), None);
    }
    // Within one call: the second delivery of "x" says something else.
    let q = pair(3);
    let err = store
        .record(
            &[
                decision(&q, Choice::GrantPermanent, t, "x"),
                decision(&q, Choice::Deny, t, "x"),
            ],
            now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.current(&q).await.unwrap(), None);
    assert_eq!(store.current(&p).await.unwrap(), Some(grant.clone()));
    assert_eq!(store.history(&p).await.unwrap().len(), 1);
    assert!(events_after(&*store, &head).await.is_empty());
    // The original delivery is still a plain duplicate.
    assert_eq!(
        store.record(&[grant], now()).await.unwrap(),
        vec![RecordOutcome::Duplicate]
    );
}

/// Issue 9.6: history pages in arrival order, each entry exactly once.
pub async fn history_pages_cover_the_history_once_in_arrival_order(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let t = now();
    let all: Vec<Decision> = (0..23)
        .map(|i| decision(&p, Choice::Deny, t - ms(i), &format!("m{i}")))
        .collect();
    store.record(&all, t).await.unwrap();
    for size in [1, 5, 23, 100] {
        let mut got = Vec::new();
        let mut start = 0;
        for _ in 0..30 {
            let page = store.history_page(&p, start, size).await.unwrap();
            assert!(page.entries.len() <= size);
            got.extend(page.entries.into_iter().map(|e| e.decision));
            match page.next {
                Some(next) => start = next,
                None => break,
            }
        }
        assert_eq!(got, all, "page size {size}");
    }
    let past = store.history_page(&p, 1000, 10).await.unwrap();
    assert!(past.entries.is_empty() && past.next.is_none());
    let none = store.history_page(&pair(9), 0, 10).await.unwrap();
    assert!(none.entries.is_empty() && none.next.is_none());
}

pub async fn issue9_5_events_of_different_pairs_come_back_in_recorded_order(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    // One after the other, as fast as they come: many share a millisecond, on different shards.
    let mut recorded = Vec::new();
    for n in 0..40u32 {
        let d = decision(&pair(n), Choice::GrantPermanent, t, "m");
        store.record(std::slice::from_ref(&d), now()).await.unwrap();
        recorded.push(d);
    }
    // Read back in small pages (a resume at every step): still the recorded order.
    let customer = |d: &Decision| d.pair.customer.to_string();
    let got: Vec<String> = all_events(&*store)
        .await
        .iter()
        .map(|e| customer(&e.event.decision))
        .collect();
    assert_eq!(got, recorded.iter().map(customer).collect::<Vec<_>>());
}

pub async fn issue9_5_the_retained_log_starts_after_the_newest_trimmed_event(b: &dyn Backend) {
    let store = b.with_retention(Duration::from_millis(300)).await;
    assert_eq!(store.retained_from().await.unwrap(), zero(&*store));
    let p = pair(1);
    let first = decision(&p, Choice::GrantPermanent, now(), "first");
    store.record(&[first], now()).await.unwrap();
    // Retention is the subject here: let the first event age out of it.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let second = decision(&p, Choice::Deny, now(), "second");
    store
        .record(std::slice::from_ref(&second), now())
        .await
        .unwrap();
    let start = store.retained_from().await.unwrap();
    assert_ne!(start, zero(&*store));
    assert_eq!(
        kinds(&events_after(&*store, &start).await),
        vec![(EventKind::Denied, second)]
    );
}

// ---- issue 14: the records index and the hash chain --------------------------------------

/// Every item of `range`, paging `size` at a time (bounded).
async fn all_records(
    store: &dyn ConsentStore,
    range: &RecordsRange,
    size: usize,
) -> Vec<RecordedDecision> {
    let mut out = Vec::new();
    let mut after: Option<RecordsPosition> = None;
    for _ in 0..1000 {
        let page = store
            .records_page(range, after.as_ref(), size)
            .await
            .expect("records_page");
        assert!(page.items.len() <= size.max(1));
        out.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
    panic!("records pages did not end");
}

/// Every entry of a pair's history with its link, through pages.
async fn linked_history(
    store: &dyn ConsentStore,
    p: &Pair,
) -> Vec<(HistoryEntry, Option<ChainLink>)> {
    let mut out = Vec::new();
    let mut start = 0;
    for _ in 0..1000 {
        let page = store.history_page(p, start, 3).await.unwrap();
        assert_eq!(page.entries.len(), page.links.len());
        out.extend(page.entries.into_iter().zip(page.links));
        match page.next {
            Some(next) => start = next,
            None => return out,
        }
    }
    panic!("history pages did not end");
}

fn business_range(by: TimeField, from: DateTime<Utc>, to: DateTime<Utc>) -> RecordsRange {
    RecordsRange {
        business: phone("+919000000000"),
        by,
        from,
        to,
    }
}

/// Issue 14: a business's decisions, listed by received or by event time, in the documented
/// order (time, customer, position), `from` inclusive, `to` exclusive, resumable in pages of
/// any size, with exactly what each pair's history holds.
pub async fn issue14_records_list_a_business_in_order_within_the_range(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let other_business = Pair::new(phone("+919111111111"), phone("+919870000001"));
    // (customer, event time offset, received offset): several customers, ties in both times.
    let plan: [(u32, i64, i64); 9] = [
        (1, 50, 0),
        (2, 10, 0),
        (1, 40, 10),
        (3, 40, 10),
        (2, 30, 20),
        (1, 5, 30),
        (4, 60, 30),
        (3, 60, 40),
        (2, 0, 50),
    ];
    for (i, (c, event, received)) in plan.iter().enumerate() {
        let d = decision(&pair(*c), Choice::Deny, t + ms(*event), &format!("r{i}"));
        store.record(&[d], t + ms(*received)).await.unwrap();
    }
    let stray = decision(&other_business, Choice::Deny, t + ms(20), "other");
    store.record(&[stray], t + ms(20)).await.unwrap();

    // The expected listing, from the histories themselves.
    let mut every = Vec::new();
    for c in 1..=4 {
        for (position, (entry, link)) in linked_history(&*store, &pair(c))
            .await
            .into_iter()
            .enumerate()
        {
            every.push(RecordedDecision {
                pair: pair(c),
                position: position as u64,
                entry: Some(entry),
                link,
            });
        }
    }
    assert_eq!(every.len(), plan.len());
    for by in [TimeField::Received, TimeField::Event] {
        let key = |r: &RecordedDecision| {
            let e = r.entry.as_ref().unwrap();
            (by.of(e), r.pair.customer.digits().to_owned(), r.position)
        };
        let mut want = every.clone();
        want.sort_by_key(key);
        for (from, to) in [
            (0, 100),
            (10, 40),
            (30, 31),
            (40, 40),
            (50, 10),
            (-100, 0),
            (0, 1),
        ] {
            let range = business_range(by, t + ms(from), t + ms(to));
            let expect: Vec<_> = want
                .iter()
                .filter(|r| {
                    let at = by.of(r.entry.as_ref().unwrap());
                    t + ms(from) <= at && at < t + ms(to)
                })
                .cloned()
                .collect();
            for size in [1, 2, 5, 100] {
                let got = all_records(&*store, &range, size).await;
                assert_eq!(got, expect, "{by:?} [{from}, {to}) in pages of {size}");
            }
        }
    }
    // Every item carries its chain link.
    assert!(every.iter().all(|r| r.link.is_some()));
    // Another business sees only its own.
    let range = RecordsRange {
        business: phone("+919111111111"),
        by: TimeField::Received,
        from: t,
        to: t + ms(100),
    };
    let got = all_records(&*store, &range, 10).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pair, other_business);
}

/// Issue 14: each entry is chained to the one before it (applied, stale, several decisions
/// for one pair in one call); duplicates add nothing.
pub async fn issue14_every_entry_is_chained_to_the_one_before(b: &dyn Backend) {
    let store = b.store();
    let p = pair(1);
    let q = pair(2);
    let t = now();
    let first = decision(&p, Choice::GrantPermanent, t, "c1");
    let stale = decision(&p, Choice::Deny, t - ms(100), "c2");
    store.record(std::slice::from_ref(&first), t).await.unwrap();
    store
        .record(std::slice::from_ref(&stale), t + ms(1))
        .await
        .unwrap();
    store
        .record(std::slice::from_ref(&first), t + ms(2))
        .await
        .unwrap();
    // One call: two decisions for p, one for q.
    let call = [
        decision(&p, Choice::Deny, t + ms(10), "c3"),
        decision(&q, Choice::GrantPermanent, t + ms(10), "c4"),
        decision(&p, temporary(t + ms(86_400_000)), t + ms(20), "c5"),
    ];
    assert_eq!(
        store.record(&call, t + ms(3)).await.unwrap(),
        vec![RecordOutcome::Applied; 3]
    );
    let history = linked_history(&*store, &p).await;
    assert_eq!(history.len(), 4);
    let mut prev = GENESIS;
    let mut walk = ChainWalk::new();
    for (i, (entry, link)) in history.iter().enumerate() {
        let link = link.expect("chained");
        assert_eq!(link.position, i as u64);
        assert_eq!(link.prev, prev);
        assert_eq!(
            link.hash,
            callgate::domain::chain::entry_hash(i as u64, &prev, entry)
        );
        prev = link.hash;
        walk.entry(entry, Some(&link));
    }
    assert!(walk.breaks.is_empty(), "{:?}", walk.breaks);
    assert_eq!(history[1].0.outcome, HistoryOutcome::Stale);
    let q_history = linked_history(&*store, &q).await;
    assert_eq!(q_history.len(), 1);
    assert_eq!(q_history[0].1.unwrap().prev, GENESIS);
}

/// Issue 14: two replicas recording for one pair at once keep one unbroken chain (on Redis the
/// script refuses a stale tip and the store retries).
pub async fn issue14_concurrent_replicas_keep_one_chain(b: &dyn Backend) {
    let store = b.store();
    let replica = b.replica().await;
    let p = pair(7);
    let t = now();
    let mut tasks = Vec::new();
    for (r, s) in [store.clone(), replica].into_iter().enumerate() {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let d = decision(&p, Choice::Deny, t + ms(i), &format!("x{r}-{i}"));
                s.record(&[d], t + ms(i)).await.expect("record");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let history = linked_history(&*store, &p).await;
    assert_eq!(history.len(), 30);
    let mut walk = ChainWalk::new();
    for (entry, link) in &history {
        walk.entry(entry, link.as_ref());
    }
    assert!(walk.breaks.is_empty(), "{:?}", walk.breaks);
    assert_eq!(walk.hashed, 30);
    let range = business_range(TimeField::Received, t, t + ms(100));
    let listed = all_records(&*store, &range, 7).await;
    assert_eq!(listed.len(), 30);
    let mut positions: Vec<u64> = listed.iter().map(|r| r.position).collect();
    positions.sort_unstable();
    assert_eq!(positions, (0..30).collect::<Vec<_>>());
}

// ---- issue 13 (attribution): consent requests ------------------------------------------

pub(crate) fn policy() -> RequestPolicy {
    RequestPolicy::new(
        callgate::domain::attribution::DEFAULT_REQUEST_LIMITS.to_vec(),
        Duration::from_secs(30 * 86_400),
    )
}

pub(crate) fn request(pair: &Pair, id: &str, team: &str, sent_at: DateTime<Utc>) -> ConsentRequest {
    ConsentRequest {
        pair: pair.clone(),
        request_message_id: id.to_owned(),
        team: team.to_owned(),
        campaign: format!("{team}-q1"),
        labels: [("tier".to_owned(), "gold".to_owned())].into(),
        sent_at,
        customer_name: Some("Asha Rao".to_owned()),
    }
}

/// A reply answering `request_id`.
fn reply(pair: &Pair, choice: Choice, at: DateTime<Utc>, msg: &str, request_id: &str) -> Decision {
    let mut d = decision(pair, choice, at, msg);
    d.evidence.paired_message_id = request_id.to_owned();
    d
}

fn attributed(mut d: Decision, r: &ConsentRequest) -> Decision {
    d.attribution = Some(r.attribution());
    if d.customer_name.is_none() {
        d.customer_name.clone_from(&r.customer_name);
    }
    d
}

pub async fn issue13_a_reply_to_a_registered_request_is_attributed(b: &dyn Backend) {
    let store = b.store();
    let (p, t) = (pair(1), now());
    let r = request(&p, "req-1", "premium", t - ms(60_000));
    assert_eq!(
        store.register_request(&r, t, &policy()).await.unwrap(),
        RegisterOutcome::Registered { attributed: 0 }
    );
    // The reply carries its own (Meta profile) name: it comes first.
    let mut d = reply(&p, Choice::GrantPermanent, t, "m1", "req-1");
    d.customer_name = Some("Sheena Nelson".into());
    store.record(std::slice::from_ref(&d), t).await.unwrap();
    let want = attributed(d, &r);
    assert_eq!(want.customer_name.as_deref(), Some("Sheena Nelson"));
    assert_eq!(store.current(&p).await.unwrap(), Some(want.clone()));
    assert_eq!(store.history(&p).await.unwrap()[0].decision, want);
    assert_eq!(
        kinds(&all_events(&*store).await),
        vec![(EventKind::Granted, want)]
    );
    // A reply to another request (or none) of the same pair is not attributed.
    let other = reply(&p, Choice::Deny, t + ms(1), "m2", "req-unknown");
    store.record(std::slice::from_ref(&other), t).await.unwrap();
    assert_eq!(store.current(&p).await.unwrap(), Some(other));
    // The same request id for another pair attributes nothing there.
    let q = pair(2);
    let d = reply(&q, Choice::GrantPermanent, t, "m3", "req-1");
    store.record(std::slice::from_ref(&d), t).await.unwrap();
    assert_eq!(store.current(&q).await.unwrap(), Some(d));
}

pub async fn issue13_a_reply_before_its_registration_is_attributed_when_it_lands(b: &dyn Backend) {
    let store = b.store();
    let (p, t) = (pair(1), now());
    let d = reply(&p, Choice::GrantPermanent, t, "m1", "req-late");
    store.record(std::slice::from_ref(&d), t).await.unwrap();
    assert_eq!(store.current(&p).await.unwrap(), Some(d.clone()));
    let head = store.head().await.unwrap();
    let r = request(&p, "req-late", "retention", t - ms(1000));
    assert_eq!(
        store.register_request(&r, t, &policy()).await.unwrap(),
        RegisterOutcome::Registered { attributed: 1 }
    );
    let want = attributed(d, &r);
    assert_eq!(store.current(&p).await.unwrap(), Some(want.clone()));
    assert_eq!(store.history(&p).await.unwrap()[0].decision, want);
    let late = events_after(&*store, &head).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].event.kind, EventKind::Granted);
    assert!(late[0].event.late_attribution);
    assert_eq!(late[0].event.decision, want);
    // Registering again (a retry) changes nothing and publishes nothing.
    assert_eq!(
        store.register_request(&r, t, &policy()).await.unwrap(),
        RegisterOutcome::Duplicate
    );
    let mut after = head.clone();
    after.advance(late[0].shard, late[0].id);
    assert!(events_after(&*store, &after).await.is_empty());

    // A stale reply (a newer denial is current) gains the attribution in the history only.
    let q = pair(2);
    let old = reply(&q, Choice::GrantPermanent, t, "g", "req-a");
    let deny = reply(&q, Choice::Deny, t + ms(10), "d", "req-b");
    store.record(&[old.clone(), deny.clone()], t).await.unwrap();
    let head = store.head().await.unwrap();
    let ra = request(&q, "req-a", "premium", t - ms(2 * 86_400_000));
    assert_eq!(
        store.register_request(&ra, t, &policy()).await.unwrap(),
        RegisterOutcome::Registered { attributed: 1 }
    );
    let history = store.history(&q).await.unwrap();
    assert_eq!(history[0].decision, attributed(old, &ra));
    assert_eq!(history[1].decision, deny);
    assert_eq!(store.current(&q).await.unwrap(), Some(deny));
    assert!(events_after(&*store, &head).await.is_empty());

    // A lapsed temporary grant: attributed, not announced.
    let x = pair(3);
    let lapsed = reply(&x, temporary(t - ms(5)), t - ms(100), "tmp", "req-t");
    store
        .record(std::slice::from_ref(&lapsed), t)
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    let rt = request(&x, "req-t", "acquisition", t - ms(3 * 86_400_000));
    assert_eq!(
        store.register_request(&rt, t, &policy()).await.unwrap(),
        RegisterOutcome::Registered { attributed: 1 }
    );
    assert_eq!(
        store.current(&x).await.unwrap(),
        Some(attributed(lapsed, &rt))
    );
    assert!(events_after(&*store, &head).await.is_empty());
}

pub async fn issue13_the_budget_refuses_a_second_in_24_h_and_a_third_in_7_days(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let day = 86_400_000;
    let policy = policy();
    // A second within 24 h: refused until 24 h after the first.
    let p = pair(1);
    let first = request(&p, "r1", "premium", t - ms(3_600_000));
    assert!(matches!(
        store.register_request(&first, t, &policy).await.unwrap(),
        RegisterOutcome::Registered { .. }
    ));
    let second = request(&p, "r2", "retention", t);
    match store.register_request(&second, t, &policy).await.unwrap() {
        RegisterOutcome::OverBudget(budget) => {
            assert!(!budget.allowed);
            assert_eq!(budget.next_allowed_at, first.sent_at + ms(day));
            assert_eq!(budget.uses[0].used, 1);
        }
        other => panic!("{other:?}"),
    }
    let budget = store.request_budget(&p, t, &policy).await.unwrap();
    assert_eq!(
        (budget.allowed, budget.next_allowed_at),
        (false, first.sent_at + ms(day))
    );
    // A registration sent earlier but registered later still counts (senders race).
    let earlier = request(&p, "r0", "acquisition", t - ms(2 * 3_600_000));
    assert!(matches!(
        store.register_request(&earlier, t, &policy).await.unwrap(),
        RegisterOutcome::OverBudget(_)
    ));

    // A third within 7 days: refused until 7 days after the first.
    let q = pair(2);
    let a = request(&q, "a", "premium", t - ms(3 * day));
    let b2 = request(&q, "b", "retention", t - ms(day + 1));
    for r in [&a, &b2] {
        assert!(matches!(
            store.register_request(r, t, &policy).await.unwrap(),
            RegisterOutcome::Registered { .. }
        ));
    }
    let c = request(&q, "c", "acquisition", t);
    match store.register_request(&c, t, &policy).await.unwrap() {
        RegisterOutcome::OverBudget(budget) => {
            assert_eq!(budget.next_allowed_at, a.sent_at + ms(7 * day));
            assert_eq!((budget.uses[0].used, budget.uses[1].used), (0, 2));
        }
        other => panic!("{other:?}"),
    }
    // The same id with other fields is a conflict; nothing changes.
    let mut stolen = a.clone();
    stolen.team = "acquisition".into();
    assert_eq!(
        store.register_request(&stolen, t, &policy).await.unwrap(),
        RegisterOutcome::Conflict
    );
    let d = reply(&q, Choice::GrantPermanent, t, "m", "a");
    store.record(std::slice::from_ref(&d), t).await.unwrap();
    assert_eq!(store.current(&q).await.unwrap(), Some(attributed(d, &a)));
    // A fresh pair may send one now.
    let fresh = store.request_budget(&pair(3), t, &policy).await.unwrap();
    assert_eq!((fresh.allowed, fresh.next_allowed_at), (true, t));
}

pub async fn issue13_racing_registrations_cannot_both_take_the_last_request(b: &dyn Backend) {
    let store = b.store();
    let (p, t) = (pair(1), now());
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let store = store.clone();
            let r = request(&p, &format!("race-{i}"), &format!("team{i}"), t);
            tokio::spawn(async move { store.register_request(&r, t, &policy()).await })
        })
        .collect();
    let mut registered = 0;
    for task in tasks {
        match task.await.unwrap().unwrap() {
            RegisterOutcome::Registered { .. } => registered += 1,
            RegisterOutcome::OverBudget(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(registered, 1);
}

pub async fn issue13_no_reply_is_missed_when_replies_race_the_registration(b: &dyn Backend) {
    let store = b.store();
    let (p, t) = (pair(1), now());
    // Replies to one request (say several deliveries of different answers) recorded while
    // the registration lands: each is attributed either when recorded or by the registration.
    let replies: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            let d = reply(&p, Choice::Deny, t + ms(i), &format!("m{i}"), "req-race");
            tokio::spawn(async move { store.record(std::slice::from_ref(&d), t).await })
        })
        .collect();
    let r = request(&p, "req-race", "premium", t - ms(1000));
    let registered = store.register_request(&r, t, &policy()).await.unwrap();
    assert!(
        matches!(registered, RegisterOutcome::Registered { .. }),
        "{registered:?}"
    );
    for task in replies {
        task.await.unwrap().unwrap();
    }
    let history = store.history(&p).await.unwrap();
    assert_eq!(history.len(), 12);
    for entry in &history {
        assert_eq!(
            entry.decision.attribution,
            Some(r.attribution()),
            "{:?}",
            entry.decision.evidence.message_id
        );
    }
}

// ---- issue 17: outbound webhook subscriptions ---------------------------------------------

fn webhook(id: &str) -> Subscription {
    Subscription {
        id: id.to_owned(),
        url: "https://crm.example/hooks/callgate?x=1".to_owned(),
        keys: vec![SigningKey {
            key: vec![7; 32],
            retire_at: None,
        }],
        kinds: EventKinds::parse("grant,expiry").unwrap(),
        businesses: vec![phone("+919000000000")],
        teams: vec!["north".to_owned()],
        campaigns: vec!["diwali".to_owned(), "x,y|z".to_owned()],
        state: SubscriptionState::Active,
        reason: String::new(),
        created_at: now(),
    }
}

pub async fn issue17_webhook_records_round_trip_and_changes_are_versioned(b: &dyn Backend) {
    let store = b.store();
    let id = "wh_00000000000000a1";
    assert_eq!(store.webhook_get(id).await.unwrap(), None);
    let sub = webhook(id);
    let cursor = Cursor::uniform(store.shards(), StreamId::new(5, 1));
    store.webhook_create(&sub, &cursor).await.unwrap();
    store
        .webhook_create(&webhook("wh_00000000000000a0"), &cursor)
        .await
        .unwrap();
    let record = store.webhook_get(id).await.unwrap().unwrap();
    assert_eq!(record.subscription, sub);
    assert_eq!((record.cursor.clone(), record.version), (cursor.clone(), 0));
    let ids: Vec<String> = store
        .webhook_list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.subscription.id)
        .collect();
    assert_eq!(ids, ["wh_00000000000000a0", id]);
    // Another replica sees the same record.
    assert_eq!(
        b.replica().await.webhook_get(id).await.unwrap(),
        Some(record.clone())
    );

    // A versioned change: applied once, refused from a stale read.
    let mut changed = record.clone();
    changed.subscription.state = SubscriptionState::Disabled;
    changed.subscription.reason = "disabled by an operator".into();
    changed
        .subscription
        .rotate(vec![9; 32], now(), Duration::from_secs(60));
    changed.cursor = Cursor::uniform(store.shards(), StreamId::new(9, 0));
    assert!(store.webhook_replace(&changed).await.unwrap());
    assert!(
        !store.webhook_replace(&changed).await.unwrap(),
        "stale version accepted"
    );
    let stored = store.webhook_get(id).await.unwrap().unwrap();
    assert_eq!(stored.subscription, changed.subscription);
    assert_eq!((stored.cursor, stored.version), (changed.cursor, 1));
    let missing = WebhookRecord {
        subscription: webhook("wh_00000000000000ff"),
        ..record
    };
    assert!(!store.webhook_replace(&missing).await.unwrap());
    assert_eq!(store.webhook_get("x}:{y").await.unwrap(), None);
}

pub async fn issue17_webhook_lease_is_exclusive_and_fenced(b: &dyn Backend) {
    let (store, other) = (b.store(), b.replica().await);
    let id = "wh_00000000000000b2";
    let ttl = Duration::from_millis(300);
    assert_eq!(
        store.webhook_lease(id, "a", ttl, now()).await.unwrap(),
        Lease::Gone
    );
    let zero = zero(&*store);
    store.webhook_create(&webhook(id), &zero).await.unwrap();
    let Lease::Held(t1) = store.webhook_lease(id, "a", ttl, now()).await.unwrap() else {
        panic!("no lease");
    };
    assert_eq!(
        other.webhook_lease(id, "b", ttl, now()).await.unwrap(),
        Lease::Busy
    );
    // Renewing keeps the token.
    assert_eq!(
        store.webhook_lease(id, "a", ttl, now()).await.unwrap(),
        Lease::Held(t1)
    );
    let moved = Cursor::uniform(store.shards(), StreamId::new(3, 0));
    let progress = Progress {
        cursor: moved.clone(),
        state: None,
    };
    assert!(store.webhook_progress(id, t1, &progress).await.unwrap());
    assert_eq!(store.webhook_get(id).await.unwrap().unwrap().cursor, moved);

    // A holder that stops renewing loses the lease once it lapses; the next holder's token is
    // larger, and the old token can no longer move the cursor (a paused ex-holder).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let t2 = loop {
        match other
            .webhook_lease(id, "b", ttl, now() + ms(400))
            .await
            .unwrap()
        {
            Lease::Held(t) => break t,
            Lease::Busy if std::time::Instant::now() < deadline => {
                // The lease's own length is the subject here (Redis measures it).
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("lease never lapsed: {other:?}"),
        }
    };
    assert!(t2 > t1, "{t2} <= {t1}");
    // Renewed for long (same token), so it cannot lapse during the rest on a slow machine.
    let long = Duration::from_secs(60);
    assert_eq!(
        other.webhook_lease(id, "b", long, now()).await.unwrap(),
        Lease::Held(t2)
    );
    let stale = Progress {
        cursor: Cursor::uniform(store.shards(), StreamId::new(99, 0)),
        state: Some((SubscriptionState::Failing, "stale".into())),
    };
    assert!(!store.webhook_progress(id, t1, &stale).await.unwrap());
    let record = store.webhook_get(id).await.unwrap().unwrap();
    assert_eq!(
        (record.cursor, record.subscription.state, record.version),
        (moved.clone(), SubscriptionState::Active, t2)
    );
    assert_eq!(
        store.webhook_lease(id, "a", ttl, now()).await.unwrap(),
        Lease::Busy
    );

    // The holder's own progress, with a state change.
    let failing = Progress {
        cursor: moved.clone(),
        state: Some((SubscriptionState::Failing, "answered 500 for 3 days".into())),
    };
    assert!(other.webhook_progress(id, t2, &failing).await.unwrap());
    let record = store.webhook_get(id).await.unwrap().unwrap();
    assert_eq!(record.subscription.state, SubscriptionState::Failing);
    assert_eq!(record.subscription.reason, "answered 500 for 3 days");

    // An operator's change ends the lease: the holder's token is stale, its renewal gets a
    // new token, and release lets another holder in at once.
    assert!(store.webhook_replace(&record).await.unwrap());
    assert!(!other.webhook_progress(id, t2, &progress).await.unwrap());
    let Lease::Held(t3) = other.webhook_lease(id, "b", long, now()).await.unwrap() else {
        panic!("no lease after a change");
    };
    assert!(t3 > t2 + 1, "{t3}");
    other.webhook_release(id, "b", t2).await.unwrap();
    assert_eq!(
        store.webhook_lease(id, "a", ttl, now()).await.unwrap(),
        Lease::Busy
    );
    other.webhook_release(id, "b", t3).await.unwrap();
    assert!(matches!(
        store.webhook_lease(id, "a", ttl, now()).await.unwrap(),
        Lease::Held(t) if t > t3
    ));
}

// ---- issue 13: calling lists ------------------------------------------------------------

/// Every entry of `business`'s calling list that `keep` admits, read in pages of `limit`
/// (bounded number of pages), with the size of each page.
async fn list_all(
    store: &dyn ConsentStore,
    business: &PhoneNumber,
    limit: usize,
    keep: &(dyn Fn(&Decision) -> bool + Send + Sync),
) -> (Vec<Decision>, Vec<usize>) {
    let mut pos = CallablePosition::start();
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    for _ in 0..1000 {
        let page = store
            .callable_page(business, &pos, limit, keep)
            .await
            .expect("callable_page");
        assert!(page.entries.len() <= limit, "page larger than asked");
        sizes.push(page.entries.len());
        all.extend(page.entries);
        match page.next {
            Some(next) => {
                assert_ne!(next, pos, "a page must move the position");
                pos = next;
            }
            None => return (all, sizes),
        }
    }
    panic!("calling list did not end");
}

fn live_at(at: DateTime<Utc>) -> impl Fn(&Decision) -> bool + Send + Sync {
    move |d: &Decision| evaluate(Some(d.clone()), at).allowed()
}

fn sorted_customers(decisions: &[Decision]) -> Vec<String> {
    let mut c: Vec<String> = decisions
        .iter()
        .map(|d| d.pair.customer.to_string())
        .collect();
    c.sort();
    c
}

pub async fn issue13_calling_list_holds_exactly_the_live_grants(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let business = phone("+919000000000");
    let mut decisions = Vec::new();
    // 0..4: permanent grants; 4: a live 7-day grant; 5: denied; 6: granted then denied;
    // 7: denied then granted; 8: a grant that lapsed already (the sweep has not run).
    for n in 0..4 {
        decisions.push(decision(
            &pair(n),
            Choice::GrantPermanent,
            t - ms(100),
            &format!("p{n}"),
        ));
    }
    let live_temp = decision(&pair(4), temporary(t + ms(600_000)), t - ms(100), "t4");
    decisions.push(live_temp.clone());
    decisions.push(decision(&pair(5), Choice::Deny, t - ms(100), "d5"));
    decisions.push(decision(
        &pair(6),
        Choice::GrantPermanent,
        t - ms(300),
        "g6",
    ));
    decisions.push(decision(&pair(6), Choice::Deny, t - ms(200), "d6"));
    decisions.push(decision(&pair(7), Choice::Deny, t - ms(300), "d7"));
    decisions.push(decision(
        &pair(7),
        Choice::GrantPermanent,
        t - ms(200),
        "g7",
    ));
    decisions.push(decision(&pair(8), temporary(t - ms(50)), t - ms(900), "t8"));
    // Another business's grant is never on this business's list.
    let other = Pair::new(phone("+919111111111"), phone("+919876500001"));
    decisions.push(decision(&other, Choice::GrantPermanent, t - ms(100), "o1"));
    for d in &decisions {
        store.record(std::slice::from_ref(d), t).await.unwrap();
    }
    let (listed, _) = list_all(&*store, &business, 3, &live_at(t)).await;
    let want: Vec<String> = [0, 1, 2, 3, 4, 7]
        .iter()
        .map(|n| pair(*n).customer.to_string())
        .collect();
    assert_eq!(sorted_customers(&listed), want);
    // Each entry is the authoritative current decision, evidence and all.
    let temp = listed.iter().find(|d| d.pair == pair(4)).unwrap();
    assert_eq!(temp, &live_temp);
    for d in &listed {
        assert_eq!(store.current(&d.pair).await.unwrap().as_ref(), Some(d));
    }
    // A grant already lapsed on arrival is announced EXPIRED at once (issue 16) and never
    // indexed: nothing is left for the sweep.
    let (everything, _) = list_all(&*store, &business, 100, &|_| true).await;
    assert!(!everything.iter().any(|d| d.pair == pair(8)));
    assert_eq!(sorted_customers(&everything), want);
    assert_eq!(store.claim_expired(t).await.unwrap(), 0);
    // A grant that lapses after it arrived stays in the index until the sweep claims it (a
    // reader's clock filters it out meanwhile); after the claim it is gone from the index too.
    let lapsing = decision(&pair(9), temporary(t + ms(50)), t - ms(900), "t9");
    store
        .record(std::slice::from_ref(&lapsing), t)
        .await
        .unwrap();
    let (everything, _) = list_all(&*store, &business, 100, &|_| true).await;
    assert!(everything.iter().any(|d| d.pair == pair(9)));
    let (live, _) = list_all(&*store, &business, 100, &live_at(t + ms(50))).await;
    assert!(!live.iter().any(|d| d.pair == pair(9)));
    assert!(store.claim_expired(t + ms(50)).await.unwrap() >= 1);
    let (everything, _) = list_all(&*store, &business, 100, &|_| true).await;
    assert!(!everything.iter().any(|d| d.pair == pair(9)));
    assert_eq!(sorted_customers(&everything), want);
    // A 7-day grant leaves the list at its instant, whatever the sweep did.
    let (at_expiry, _) = list_all(&*store, &business, 100, &live_at(t + ms(600_000))).await;
    assert!(!at_expiry.iter().any(|d| d.pair == pair(4)));
    assert_eq!(at_expiry.len(), want.len() - 1);
    // A business with no grant has an empty list.
    let (none, sizes) = list_all(&*store, &phone("+919222222222"), 10, &live_at(t)).await;
    assert!(none.is_empty(), "{sizes:?}");
}

pub async fn issue13_calling_list_pages_cover_each_pair_once(b: &dyn Backend) {
    let store = b.store();
    let t = now();
    let business = phone("+919000000000");
    let batch: Vec<Decision> = (0..120)
        .map(|n| {
            decision(
                &pair(n),
                Choice::GrantPermanent,
                t - ms(10),
                &format!("g{n}"),
            )
        })
        .collect();
    store.record(&batch, t).await.unwrap();
    let want = sorted_customers(&batch);
    for limit in [1, 7, 1000] {
        let (listed, _) = list_all(&*store, &business, limit, &live_at(t)).await;
        let got: Vec<String> = listed.iter().map(|d| d.pair.customer.to_string()).collect();
        let mut dedup = got.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(
            dedup.len(),
            got.len(),
            "a pair listed twice (limit {limit})"
        );
        assert_eq!(dedup, want, "limit {limit}");
    }
    // A narrow predicate: short pages, still every admitted pair once, none other.
    let odd = |d: &Decision| {
        d.pair
            .customer
            .digits()
            .ends_with(['1', '3', '5', '7', '9'])
    };
    let (listed, _) = list_all(&*store, &business, 10, &odd).await;
    let want_odd: Vec<String> = want
        .iter()
        .filter(|c| c.ends_with(['1', '3', '5', '7', '9']))
        .cloned()
        .collect();
    assert_eq!(sorted_customers(&listed), want_odd);
    // A page that stops mid-way is resumed from its position, not from the start.
    let first = store
        .callable_page(&business, &CallablePosition::start(), 50, &live_at(t))
        .await
        .unwrap();
    assert_eq!(first.entries.len(), 50);
    let second = store
        .callable_page(&business, first.next.as_ref().unwrap(), 50, &live_at(t))
        .await
        .unwrap();
    assert!(second.entries.iter().all(|d| !first.entries.contains(d)));
    // Denying a listed pair takes it off the list.
    let denied = decision(&pair(3), Choice::Deny, t, "deny3");
    store.record(&[denied], t).await.unwrap();
    let (listed, _) = list_all(&*store, &business, 1000, &live_at(t)).await;
    assert_eq!(listed.len(), 119);
    assert!(!listed.iter().any(|d| d.pair == pair(3)));
}

/// Runs every listed test function against both stores.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::MemoryBackend::new()).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::RedisBackend::start().await).await;
                }
            )*
        }
        mod cluster {
            /// Every promise, one after the other, on one cluster.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_promise_holds_on_a_redis_cluster() {
                let cluster = tokio::task::spawn_blocking(super::RedisCluster::start)
                    .await
                    .unwrap();
                $(
                    eprintln!("cluster conformance: {}", stringify!($name));
                    super::$name(&super::ClusterBackend::start(&cluster).await).await;
                )*
                // Layout v2 (docs/redis-layout-v2.md) on the same cluster: every key one
                // script touches is in one slot there too.
                $(
                    eprintln!("cluster conformance, layout v2: {}", stringify!($name));
                    super::$name(
                        &super::ClusterBackend::start_with(
                            &cluster,
                            callgate::store::redis::Layout::V2,
                        )
                        .await,
                    )
                    .await;
                )*
                tokio::task::spawn_blocking(move || drop(cluster)).await.unwrap();
            }
        }
    };
}

conformance!(
    first_decision_applies,
    newer_decision_wins_whatever_the_arrival_order,
    ties_go_to_denial_then_permanent_grant,
    duplicate_delivery_changes_nothing,
    stale_decision_goes_to_history_only,
    temporary_grant_reads_as_expired_after_its_expiry,
    grant_expired_on_arrival_publishes_only_expired,
    each_lapse_is_claimed_exactly_once,
    superseded_grant_does_not_expire,
    current_many_answers_in_order,
    current_each_answers_every_pair_in_order,
    history_keeps_arrival_order_and_all_evidence,
    read_events_after_a_cursor_returns_exactly_the_later_ones,
    head_is_past_every_event,
    waiting_read_wakes_up_on_a_new_event,
    events_of_a_pair_stay_in_order,
    cursor_before_trimmed_events_is_out_of_range,
    cursor_at_starts_at_the_first_event_since,
    several_decisions_in_one_call_are_all_recorded,
    a_redelivery_with_other_derived_fields_is_a_duplicate,
    a_redelivery_with_another_answer_is_a_conflict_and_stores_nothing,
    history_pages_cover_the_history_once_in_arrival_order,
    issue9_5_events_of_different_pairs_come_back_in_recorded_order,
    issue9_5_the_retained_log_starts_after_the_newest_trimmed_event,
    issue14_records_list_a_business_in_order_within_the_range,
    issue14_every_entry_is_chained_to_the_one_before,
    issue14_concurrent_replicas_keep_one_chain,
    issue13_a_reply_to_a_registered_request_is_attributed,
    issue13_a_reply_before_its_registration_is_attributed_when_it_lands,
    issue13_the_budget_refuses_a_second_in_24_h_and_a_third_in_7_days,
    issue13_racing_registrations_cannot_both_take_the_last_request,
    issue13_no_reply_is_missed_when_replies_race_the_registration,
    issue17_webhook_records_round_trip_and_changes_are_versioned,
    issue17_webhook_lease_is_exclusive_and_fenced,
    issue13_calling_list_holds_exactly_the_live_grants,
    issue13_calling_list_pages_cover_each_pair_once,
);

/// Redis layout v2 (`docs/redis-layout-v2.md`) is being built: these are the promises it
/// keeps so far, on a real `redis-server`. Every test of the suite joins this list once the
/// operations it needs are built for v2: all of them now.
macro_rules! conformance_v2 {
    ($($name:ident),* $(,)?) => {
        mod redis_layout_v2 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(
                        &super::RedisBackend::start_with(callgate::store::redis::Layout::V2).await,
                    )
                    .await;
                }
            )*
        }
    };
}

conformance_v2!(
    first_decision_applies,
    newer_decision_wins_whatever_the_arrival_order,
    ties_go_to_denial_then_permanent_grant,
    duplicate_delivery_changes_nothing,
    stale_decision_goes_to_history_only,
    temporary_grant_reads_as_expired_after_its_expiry,
    grant_expired_on_arrival_publishes_only_expired,
    each_lapse_is_claimed_exactly_once,
    superseded_grant_does_not_expire,
    current_many_answers_in_order,
    current_each_answers_every_pair_in_order,
    history_keeps_arrival_order_and_all_evidence,
    read_events_after_a_cursor_returns_exactly_the_later_ones,
    head_is_past_every_event,
    waiting_read_wakes_up_on_a_new_event,
    events_of_a_pair_stay_in_order,
    cursor_before_trimmed_events_is_out_of_range,
    cursor_at_starts_at_the_first_event_since,
    several_decisions_in_one_call_are_all_recorded,
    a_redelivery_with_other_derived_fields_is_a_duplicate,
    a_redelivery_with_another_answer_is_a_conflict_and_stores_nothing,
    history_pages_cover_the_history_once_in_arrival_order,
    issue9_5_events_of_different_pairs_come_back_in_recorded_order,
    issue9_5_the_retained_log_starts_after_the_newest_trimmed_event,
    issue14_every_entry_is_chained_to_the_one_before,
    issue17_webhook_records_round_trip_and_changes_are_versioned,
    issue17_webhook_lease_is_exclusive_and_fenced,
    issue13_calling_list_holds_exactly_the_live_grants,
    issue13_calling_list_pages_cover_each_pair_once,
    issue14_records_list_a_business_in_order_within_the_range,
    issue14_concurrent_replicas_keep_one_chain,
    issue13_a_reply_to_a_registered_request_is_attributed,
    issue13_a_reply_before_its_registration_is_attributed_when_it_lands,
    issue13_the_budget_refuses_a_second_in_24_h_and_a_third_in_7_days,
    issue13_racing_registrations_cannot_both_take_the_last_request,
    issue13_no_reply_is_missed_when_replies_race_the_registration,
);
