//! Issue 16: the replica-local check cache. Its rules hold against the real service: a fill
//! that read before a denial never brings the ALLOW back, a stalled tailer sends checks to the
//! store within the staleness bound B, a tailer read error flushes, a grant ends on time
//! however many hits came before, two replicas on one Redis see a denial within B (and at once
//! with the webhook's `consistency_token`), and evidence is sent only when asked for.
//!
//! "Another replica's write" is a decision recorded straight into the shared store: this
//! replica learns of it only through the event log, as it would of a write made elsewhere.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
use callgate::pb;
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::store::{ConsentStore, StoreError};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::watch;

use crate::helpers::*;
use crate::intercepted_store::{Hooks, Intercepted, Read};
use crate::process::CallgateProcess;
use crate::redis_harness::RedisServer;

/// The default staleness bound B.
const B: Duration = Duration::from_millis(100);

// ---- hooks that hold, stall or fail the reads the cache depends on -------------------------

/// Switches for [`Intercepted`]: replies held, the log's reads stalled or failed.
struct Gates {
    /// While true, `current`/`current_many` *replies* (the read already done) are held.
    hold_replies: watch::Sender<bool>,
    /// Replies held so far.
    held: AtomicUsize,
    /// While true, `read_events` waits before reading (a stalled tailer).
    stall_events: watch::Sender<bool>,
    /// While true, `read_events` fails.
    fail_events: AtomicBool,
    /// `read_events` calls that failed, and that completed.
    failed_reads: AtomicUsize,
    event_reads: AtomicUsize,
}

type Gated = Intercepted<Gates>;

fn gated(inner: Arc<dyn ConsentStore>) -> Arc<Gated> {
    Intercepted::new(
        inner,
        Gates {
            hold_replies: watch::channel(false).0,
            held: AtomicUsize::new(0),
            stall_events: watch::channel(false).0,
            fail_events: AtomicBool::new(false),
            failed_reads: AtomicUsize::new(0),
            event_reads: AtomicUsize::new(0),
        },
    )
}

async fn released(gate: &watch::Sender<bool>) {
    let mut open = gate.subscribe();
    let _ = open.wait_for(|closed| !*closed).await;
}

#[async_trait]
impl Hooks for Gates {
    async fn before(&self, read: Read) -> Result<(), StoreError> {
        if read == Read::Events {
            released(&self.stall_events).await;
            if self.fail_events.load(Ordering::SeqCst) {
                self.failed_reads.fetch_add(1, Ordering::SeqCst);
                return Err(StoreError::Unavailable(
                    "injected: event log unreachable".into(),
                ));
            }
        }
        Ok(())
    }

    async fn after(&self, read: Read) {
        match read {
            Read::Events => {
                self.event_reads.fetch_add(1, Ordering::SeqCst);
            }
            Read::Current | Read::CurrentMany if *self.hold_replies.borrow() => {
                self.held.fetch_add(1, Ordering::SeqCst);
                released(&self.hold_replies).await;
            }
            _ => {}
        }
    }
}

// ---- helpers ------------------------------------------------------------------------------

fn pair(customer: &str) -> Pair {
    Pair::new(
        PhoneNumber::parse(BUSINESS).unwrap(),
        PhoneNumber::parse(customer).unwrap(),
    )
}

/// A decision as another replica would record it.
fn decision(customer: &str, choice: Choice, decided_at: DateTime<Utc>, msg: &str) -> Decision {
    Decision {
        pair: pair(customer),
        choice,
        decided_at,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: msg.to_owned(),
            paired_message_id: String::new(),
            response_source: "user_initiated".to_owned(),
            sender_customer_id: String::new(),
            body_sha256: [0xcc; 32],
            stated_at: decided_at,
            stated_expires_at: choice.expires_at(),
        },
        attribution: None,
        customer_name: None,
    }
}

/// Millisecond precision, as the stores keep times.
fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

/// `callgate_check_cache_total{result=...}` from `/metrics`.
async fn cache_count(api: &Endpoints, result: &str) -> u64 {
    let body = api.get_raw("/metrics").await.body;
    let text = String::from_utf8_lossy(&body);
    let prefix = format!("callgate_check_cache_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
}

/// A single check's `allowed`, asking for `token` freshness.
async fn allowed_at(api: &Endpoints, customer: &str, token: &str) -> bool {
    api.grpc()
        .await
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: customer.into(),
            at_least_as_fresh: token.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .allowed
}

async fn redis_store(server: &RedisServer) -> Arc<dyn ConsentStore> {
    let mut config = RedisConfig::new(server.url());
    config.timeout = Duration::from_secs(5);
    Arc::new(RedisStore::connect(config).await.unwrap())
}

/// Waits until the app's tailer has published (and so applied) a denial of `customer`.
async fn denial_applied(stream: &mut tonic::Streaming<pb::ConsentEvent>, customer: &str) {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("no event within 10 s")
            .unwrap()
            .unwrap();
        if e.kind == pb::EventKind::Denied as i32 && e.customer_number == customer {
            return;
        }
    }
}

fn denials() -> pb::StreamGrantsRequest {
    pb::StreamGrantsRequest {
        include_denials: true,
        ..Default::default()
    }
}

// ---- tests --------------------------------------------------------------------------------

/// Hits answer without the store; the replica that answered a denial's webhook answers DENIED
/// at once (its own writes leave a hole until the tailer brings the event); evidence only when
/// asked for.
#[tokio::test]
async fn check_cache_hits_see_this_replicas_own_writes_at_once() {
    let app = spawn_app().await;
    let grant = doubletick(BUSINESS, CUSTOMER, "g1", Utc::now(), "accept", Some(true));
    assert_eq!(app.post_doubletick(grant).await.status, 200);
    assert!(app.check(BUSINESS, CUSTOMER).await.allowed);
    let hits = cache_count(&app, "hit").await;
    for _ in 0..20 {
        let answer = app.check(BUSINESS, CUSTOMER).await;
        assert!(answer.allowed);
        assert!(answer.evidence.is_none(), "evidence sent unasked");
    }
    assert!(
        cache_count(&app, "hit").await >= hits + 10,
        "checks of a warm pair were not answered from the cache"
    );
    let with = app.check_with_evidence(BUSINESS, CUSTOMER).await;
    assert_eq!(with.evidence.unwrap().message_id, "g1");

    let deny = doubletick(BUSINESS, CUSTOMER, "d1", Utc::now(), "reject", None);
    let answer = app.post_doubletick(deny).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body["consistency_token"]
            .as_str()
            .is_some_and(|t| t.starts_with("c2.")),
        "{:?}",
        answer.body
    );
    // No token, no wait: this replica recorded it.
    assert!(!app.check(BUSINESS, CUSTOMER).await.allowed);
    for _ in 0..20 {
        assert!(!app.check(BUSINESS, CUSTOMER).await.allowed);
    }
    app.stop().await;
}

/// An unparseable token is INVALID_ARGUMENT (HTTP 400) naming the field, never ignored.
#[tokio::test]
async fn check_cache_a_bad_token_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let err = app
        .grpc()
        .await
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            at_least_as_fresh: "last tuesday".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at_least_as_fresh"), "{err:?}");
    let err = app
        .grpc()
        .await
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: vec![pb::CheckCallPermissionRequest {
                business_number: BUSINESS.into(),
                customer_number: CUSTOMER.into(),
                ..Default::default()
            }],
            at_least_as_fresh: "c2.1-1.2-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("at_least_as_fresh"), "{err:?}");
    for (path, body) in [
        (
            "/v1/check",
            serde_json::json!({"business_number": BUSINESS, "customer_number": CUSTOMER,
                "at_least_as_fresh": "soon"}),
        ),
        (
            "/v1/check-batch",
            serde_json::json!({"checks": [], "at_least_as_fresh": "soon"}),
        ),
    ] {
        let answer = app
            .request(
                "POST",
                path,
                &[JSON, ("authorization", "Bearer test-api-key-7c1e")],
                body.to_string(),
            )
            .await;
        assert_eq!(answer.status, 400, "{path}: {:?}", answer.body);
        assert!(
            answer.body.to_string().contains("at_least_as_fresh"),
            "{path}: {:?}",
            answer.body
        );
    }
    app.stop().await;
}

/// Fill race, on a real Redis: a check's store read returns the grant, its reply is held, a
/// denial is applied through the log meanwhile, then the reply is released. The late fill
/// must not be cached: every later check is DENIED.
#[tokio::test]
async fn check_cache_a_late_fill_never_brings_an_allow_back() {
    let redis = RedisServer::start();
    let inner = redis_store(&redis).await;
    let customer = "+919876500001";
    let t = ms(Utc::now());
    inner
        .record(
            &[decision(customer, Choice::GrantPermanent, t, "g")],
            Utc::now(),
        )
        .await
        .unwrap();
    let store = gated(inner.clone());
    let app = spawn_app_with(test_config(), store.clone()).await;
    let mut stream = app.stream(denials()).await;

    // A check misses, reads the grant, and its reply is held.
    store.hooks.hold_replies.send_replace(true);
    let endpoints = Endpoints::new(app.http, app.grpc);
    let held = tokio::spawn(async move { endpoints.check(BUSINESS, customer).await });
    eventually(
        "the check's read was not held",
        Duration::from_secs(10),
        || std::future::ready(store.hooks.held.load(Ordering::SeqCst) >= 1),
    )
    .await;
    // Another replica records a denial; this one's tailer applies it.
    record_denial(&inner, customer, t).await;
    denial_applied(&mut stream, customer).await;
    // The held reply (read before the denial) is answered, but must not be cached.
    store.hooks.hold_replies.send_replace(false);
    assert!(held.await.unwrap().allowed, "the held read saw the grant");
    let hits = cache_count(&app, "hit").await;
    for _ in 0..50 {
        assert!(
            !app.check(BUSINESS, customer).await.allowed,
            "an ALLOW came back after the denial"
        );
    }
    assert!(
        cache_count(&app, "hit").await > hits,
        "the denial was never cached"
    );
    app.stop().await;
}

/// Checks `customer` (who must be allowed) until an answer came from the cache (a hit).
async fn allowed_from_memory(app: &TestApp, customer: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let hits = cache_count(app, "hit").await;
        assert!(app.check(BUSINESS, customer).await.allowed);
        if cache_count(app, "hit").await > hits {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never a hit");
    }
}

/// A replica on a gated memory store holding a permanent grant for one customer (decided at
/// `t`), warmed until it answers that customer from memory.
struct Warm {
    inner: Arc<dyn ConsentStore>,
    store: Arc<Gated>,
    app: TestApp,
    t: DateTime<Utc>,
}

async fn warm_gated_replica(customer: &str) -> Warm {
    let inner = memory_store();
    let t = ms(Utc::now());
    inner
        .record(
            &[decision(customer, Choice::GrantPermanent, t, "g")],
            Utc::now(),
        )
        .await
        .unwrap();
    let store = gated(inner.clone());
    let app = spawn_app_with(test_config(), store.clone()).await;
    allowed_from_memory(&app, customer).await;
    Warm {
        inner,
        store,
        app,
        t,
    }
}

/// Another replica's write: a denial for `customer` one second after `t`, straight into the
/// store (behind any gate).
async fn record_denial(inner: &Arc<dyn ConsentStore>, customer: &str, t: DateTime<Utc>) {
    inner
        .record(
            &[decision(
                customer,
                Choice::Deny,
                t + TimeDelta::seconds(1),
                "d",
            )],
            Utc::now(),
        )
        .await
        .unwrap();
}

/// Stalled tailer: with the log's reads stalled, a denial recorded meanwhile is answered
/// DENIED by every check sent B or more after the stall began.
#[tokio::test]
async fn check_cache_a_stalled_tailer_fails_over_to_the_store_within_the_bound() {
    let customer = "+919876500002";
    let Warm {
        inner,
        store,
        app,
        t,
    } = warm_gated_replica(customer).await;
    // Stall the tailer's reads (the one in flight, at most a quarter of B, completes), then
    // record a denial (another replica's write).
    let reads = store.hooks.event_reads.load(Ordering::SeqCst);
    store.hooks.stall_events.send_replace(true);
    eventually(
        "the read in flight never ended",
        Duration::from_secs(10),
        || std::future::ready(store.hooks.event_reads.load(Ordering::SeqCst) > reads),
    )
    .await;
    let stalled_at = app.clock.now();
    record_denial(&inner, customer, t).await;
    let stale = cache_count(&app, "stale_shard").await;
    let bound = TimeDelta::from_std(B).unwrap();
    let mut allowed_within_bound = 0;
    let mut denied_after_bound = 0;
    while denied_after_bound < 20 {
        let sent = app.clock.now();
        let allowed = app.check(BUSINESS, customer).await.allowed;
        if sent - stalled_at >= bound {
            assert!(
                !allowed,
                "ALLOW {:?} after the tailer stalled",
                (sent - stalled_at).to_std().unwrap()
            );
            denied_after_bound += 1;
        } else if allowed {
            allowed_within_bound += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cache_count(&app, "stale_shard").await > stale);
    println!("stalled tailer: {allowed_within_bound} stale ALLOWs within B, then store reads");
    store.hooks.stall_events.send_replace(false);
    app.stop().await;
}

/// A late delivery: a temporary grant newer than the cached permanent grant but already lapsed
/// when it arrived (recorded by another replica) reaches this replica's cache through the log
/// like any change: every check sent B or more after it was recorded answers EXPIRED.
#[tokio::test]
async fn check_cache_a_grant_lapsed_on_arrival_reaches_every_cache_within_the_bound() {
    let inner = memory_store();
    let customer = "+919876500005";
    let t = ms(Utc::now());
    inner
        .record(
            &[decision(
                customer,
                Choice::GrantPermanent,
                t - TimeDelta::seconds(10),
                "g",
            )],
            Utc::now(),
        )
        .await
        .unwrap();
    let app = spawn_app_with(test_config(), inner.clone()).await;
    allowed_from_memory(&app, customer).await;
    let lapsed = decision(
        customer,
        Choice::GrantTemporary {
            expires_at: t - TimeDelta::seconds(1),
        },
        t - TimeDelta::seconds(2),
        "late",
    );
    inner.record(&[lapsed], Utc::now()).await.unwrap();
    let recorded = app.clock.now();
    let bound = TimeDelta::from_std(B).unwrap();
    loop {
        let sent = app.clock.now();
        let answer = app.check(BUSINESS, customer).await;
        if sent - recorded >= bound {
            assert!(
                !answer.allowed,
                "ALLOW {:?} after the lapsed grant",
                sent - recorded
            );
            assert_eq!(answer.state, pb::ConsentState::Expired as i32);
            break;
        }
    }
    app.stop().await;
}

/// A tailer read error flushes: no answer comes from entries cached before it (the denial
/// below reaches the store but not the log reader, and is answered at once).
#[tokio::test]
async fn check_cache_a_tailer_read_error_flushes_the_cache() {
    let customer = "+919876500003";
    let Warm {
        inner,
        store,
        app,
        t,
    } = warm_gated_replica(customer).await;
    store.hooks.fail_events.store(true, Ordering::SeqCst);
    eventually("the tailer never failed", Duration::from_secs(10), || {
        std::future::ready(store.hooks.failed_reads.load(Ordering::SeqCst) >= 1)
    })
    .await;
    record_denial(&inner, customer, t).await;
    assert!(
        !app.check(BUSINESS, customer).await.allowed,
        "answered from an entry cached before the tailer's error"
    );
    // Recovered: fresh again, and answering from memory.
    store.hooks.fail_events.store(false, Ordering::SeqCst);
    let reads = store.hooks.event_reads.load(Ordering::SeqCst);
    eventually(
        "the tailer never recovered",
        Duration::from_secs(10),
        || std::future::ready(store.hooks.event_reads.load(Ordering::SeqCst) > reads + 1),
    )
    .await;
    for _ in 0..10 {
        assert!(!app.check(BUSINESS, customer).await.allowed);
    }
    app.stop().await;
}

/// Paused clock, through the service's own check path (the `Checker` the front ends share,
/// its cache fed by the fan-out tailer; no sockets, so paused time moves only when the test
/// says): a grant ending at T, TTL 30 min, many hits before, is allowed at T − 1 ms and not
/// at T.
#[tokio::test(start_paused = true)]
async fn check_cache_a_cached_grant_ends_at_its_expiry() {
    use callgate::check_cache::{CheckCache, CheckCacheConfig, Freshness};
    use callgate::checks::{Checker, Query};
    use callgate::clock::Clock;
    use callgate::fanout::{Hub, HubConfig};
    use callgate::grpc_api::auth::Caller;
    use callgate::metrics::{CacheResult, Metrics};

    // Whole milliseconds, as the stores keep times, so sleeps land exactly on T - 1 ms and T.
    let clock = Clock::tokio_at(ms(Utc::now()));
    let store = memory_store();
    let metrics = Arc::new(Metrics::default());
    let config = CheckCacheConfig::default();
    assert_eq!(config.ttl, Duration::from_secs(1800));
    let cache = Arc::new(CheckCache::new(
        &config,
        store.shards(),
        clock,
        metrics.clone(),
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let (_hub, tailer) = Hub::start(
        store.clone(),
        HubConfig {
            checkpoint: Duration::from_secs(60),
            ring_capacity: 64,
            cache: Some(cache.clone()),
        },
        metrics.clone(),
        stop.clone(),
    );
    let checker = Checker::new(store.clone(), clock, metrics.clone()).with_cache(Some(cache));
    let now = ms(clock.now());
    let end = now + TimeDelta::seconds(60);
    let customer = "+919876500004";
    store
        .record(
            &[decision(
                customer,
                Choice::GrantTemporary { expires_at: end },
                now,
                "g",
            )],
            now,
        )
        .await
        .unwrap();
    let caller = Caller::unrestricted();
    let query = Query {
        business_number: BUSINESS,
        customer_number: customer,
    };
    let allowed = || async {
        checker
            .check(&caller, query, &Freshness::Bounded)
            .await
            .unwrap()
            .verdict
            .allowed()
    };
    // Checks every 10 ms (the tailer's timers fire in between) until 1 s before T.
    while clock.now() < end - TimeDelta::seconds(1) {
        assert!(allowed().await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hits = metrics.check_cache_count(CacheResult::Hit);
    assert!(hits > 5_000, "{hits} hits");
    let until = |t: DateTime<Utc>| tokio::time::sleep((t - clock.now()).to_std().unwrap());
    until(end - TimeDelta::milliseconds(1)).await;
    assert_eq!(clock.now(), end - TimeDelta::milliseconds(1));
    assert!(allowed().await, "not allowed at T - 1 ms");
    assert_eq!(
        metrics.check_cache_count(CacheResult::Hit),
        hits + 1,
        "not a hit"
    );
    until(end).await;
    assert_eq!(clock.now(), end);
    let at_end = checker
        .check(&caller, query, &Freshness::Bounded)
        .await
        .unwrap();
    assert!(!at_end.verdict.allowed(), "allowed at T");
    assert_eq!(
        at_end.verdict.state,
        callgate::domain::ConsentState::Expired
    );
    stop.cancel();
    tailer.await.unwrap();
}

/// Two replicas (real processes) on one Redis: after a denial's 200 from A, every check sent
/// to B at or after (200 + B) answers DENIED; a check on B carrying the 200's
/// `consistency_token` answers DENIED at once.
#[tokio::test]
async fn check_cache_two_replicas_see_a_denial_within_the_bound() {
    let redis = RedisServer::start();
    let url = redis.url();
    let env = [
        ("CALLGATE_REDIS_URL", url.as_str()),
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
    ];
    let a = CallgateProcess::start(&env).unwrap();
    let b = CallgateProcess::start(&env).unwrap();
    let (api_a, api_b) = (
        Endpoints::new(a.http, a.grpc),
        Endpoints::new(b.http, b.grpc),
    );
    let bound = TimeDelta::from_std(B).unwrap();
    let mut delays = Vec::new();
    for round in 0..5 {
        let customer = format!("+9198765100{round:02}");
        let grant = doubletick(
            BUSINESS,
            &customer,
            &format!("g{round}"),
            Utc::now(),
            "accept",
            Some(true),
        );
        assert_eq!(api_a.post_doubletick(grant).await.status, 200);
        // Warm B's cache with the ALLOW (B sees the grant within B too).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let hits = cache_count(&api_b, "hit").await;
            let allowed = api_b.check(BUSINESS, &customer).await.allowed;
            if allowed && cache_count(&api_b, "hit").await > hits {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "B never cached the grant"
            );
        }
        let deny = doubletick(
            BUSINESS,
            &customer,
            &format!("d{round}"),
            Utc::now(),
            "reject",
            None,
        );
        let answer = api_a.post_doubletick(deny).await;
        let acked = Utc::now();
        assert_eq!(answer.status, 200);
        let mut first_denied = None;
        loop {
            let sent = Utc::now();
            let allowed = api_b.check(BUSINESS, &customer).await.allowed;
            if sent - acked >= bound {
                assert!(
                    !allowed,
                    "B allowed {:?} after the denial's 200",
                    sent - acked
                );
            }
            if !allowed && first_denied.is_none() {
                first_denied = Some(sent - acked);
            }
            if sent - acked >= bound * 2 {
                break;
            }
        }
        delays.push(first_denied.unwrap().to_std().unwrap_or_default());

        // Read your writes: another pair, checked on B with the 200's token.
        let other = format!("+9198765200{round:02}");
        let grant = doubletick(
            BUSINESS,
            &other,
            &format!("h{round}"),
            Utc::now(),
            "accept",
            Some(true),
        );
        assert_eq!(api_a.post_doubletick(grant).await.status, 200);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !api_b.check(BUSINESS, &other).await.allowed {
            assert!(
                tokio::time::Instant::now() < deadline,
                "B never saw the grant"
            );
        }
        let deny = doubletick(
            BUSINESS,
            &other,
            &format!("e{round}"),
            Utc::now(),
            "reject",
            None,
        );
        let answer = api_a.post_doubletick(deny).await;
        let token = answer.body["consistency_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            !allowed_at(&api_b, &other, &token).await,
            "B allowed with the denial's token"
        );
    }
    println!(
        "denial 200 on A -> first DENIED sent to B: {:?} (max {:?}; bound {B:?})",
        delays,
        delays.iter().max().unwrap()
    );
    assert!(a.terminate());
    assert!(b.terminate());
}
