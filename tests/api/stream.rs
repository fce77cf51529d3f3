//! StreamGrants: live delivery, filters, resume, checkpoints, expiries and slow subscribers.
//!
//! Tests of checkpoints and expiries run on paused time (`start_paused`): a checkpoint period
//! or a 7-day grant passes when every task is idle, not on the wall clock.

use std::sync::Arc;
use std::time::Duration;

use callgate::config::DEFAULT_TEMPORARY_GRANT;
use callgate::fanout::{Filter, Hub, HubConfig, Item, Start};
use callgate::pb::{self, EventKind};
use callgate::store::ConsentStore;
use callgate::store::memory::{MemoryConfig, MemoryStore};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Streaming};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(5);

fn request() -> pb::StreamGrantsRequest {
    pb::StreamGrantsRequest::default()
}

/// The next non-checkpoint event, within [`WAIT`].
async fn next_event(s: &mut Streaming<pb::ConsentEvent>) -> pb::ConsentEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = s.message().await.unwrap().expect("stream ended");
            if e.kind != EventKind::Checkpoint as i32 {
                return e;
            }
        }
    })
    .await
    .expect("no event within 5 s")
}

/// Reads until a checkpoint arrives; returns the events seen before it (none expected to be
/// missing: a checkpoint's cursor covers everything before it).
pub async fn events_until_checkpoint(
    s: &mut Streaming<pb::ConsentEvent>,
) -> (Vec<pb::ConsentEvent>, String) {
    tokio::time::timeout(WAIT, async {
        let mut events = Vec::new();
        loop {
            let e = s.message().await.unwrap().expect("stream ended");
            if e.kind == EventKind::Checkpoint as i32 {
                return (events, e.cursor);
            }
            events.push(e);
        }
    })
    .await
    .expect("no checkpoint within 5 s")
}

async fn post(app: &TestApp, customer: &str, id: &str, response: &str, permanent: Option<bool>) {
    let body = doubletick(BUSINESS, customer, id, app.clock.now(), response, permanent);
    assert_eq!(app.post_doubletick(body).await.status, 200);
}

fn ids(events: &[pb::ConsentEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.evidence.as_ref().unwrap().message_id.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_receives_a_grant_posted_after_it_subscribed() {
    let app = spawn_app().await;
    let mut s = app.stream(request()).await;
    post(&app, CUSTOMER, "g1", "accept", Some(true)).await;
    let e = next_event(&mut s).await;
    assert_eq!(e.kind, EventKind::Granted as i32);
    assert_eq!(
        (e.business_number.as_str(), e.customer_number.as_str()),
        (BUSINESS, CUSTOMER)
    );
    assert!(e.permanent);
    assert!(e.decided_at.is_some());
    assert!(!e.cursor.is_empty());
}

#[tokio::test(start_paused = true)]
async fn filters_select_businesses_and_kinds() {
    let app = spawn_app().await;
    let other_business = "+14155550100";
    let mut grants_only = app.stream(request()).await;
    let mut with_denials = app
        .stream(pb::StreamGrantsRequest {
            include_denials: true,
            ..request()
        })
        .await;
    let mut other_only = app
        .stream(pb::StreamGrantsRequest {
            business_numbers: vec!["1 415 555 0100".into()],
            include_denials: true,
            ..request()
        })
        .await;

    post(&app, "+919800000001", "deny-1", "reject", None).await;
    post(&app, "+919800000002", "grant-2", "accept", Some(true)).await;
    let other = doubletick(
        other_business,
        "+919800000003",
        "other-3",
        app.clock.now(),
        "accept",
        Some(false),
    );
    assert_eq!(app.post_doubletick(other).await.status, 200);

    // Each stream's events up to its next checkpoint are all it will ever get for these posts.
    let (g, _) = events_until_checkpoint(&mut grants_only).await;
    let (d, _) = events_until_checkpoint(&mut with_denials).await;
    let (o, _) = events_until_checkpoint(&mut other_only).await;
    assert_eq!(ids(&g), vec!["grant-2", "other-3"]);
    assert_eq!(ids(&d), vec!["deny-1", "grant-2", "other-3"]);
    assert_eq!(ids(&o), vec!["other-3"]);
    assert_eq!(d[0].kind, EventKind::Denied as i32);
}

#[tokio::test]
async fn invalid_stream_requests_are_refused() {
    let app = spawn_app().await;
    let cases = [
        pb::StreamGrantsRequest {
            business_numbers: vec!["nope".into()],
            ..request()
        },
        pb::StreamGrantsRequest {
            resume_after: "garbage".into(),
            ..request()
        },
        pb::StreamGrantsRequest {
            resume_after: "c2.1-0.2-0".into(),
            ..request()
        },
    ];
    for req in cases {
        let err = app
            .grpc()
            .await
            .stream_grants(req.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{req:?}");
    }
}

#[tokio::test]
async fn a_cursor_of_the_old_layout_is_refused_with_a_resync_hint() {
    let app = spawn_app().await;
    let old = format!("c1.{}", vec!["1-0"; 16].join("."));
    let err = app
        .grpc()
        .await
        .stream_grants(pb::StreamGrantsRequest {
            resume_after: old,
            ..request()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("resync"), "{}", err.message());
    assert!(err.message().contains("older"), "{}", err.message());
}

#[tokio::test(start_paused = true)]
async fn reconnecting_with_the_last_cursor_delivers_exactly_the_missed_events() {
    let app = spawn_app().await;
    let mut s = app.stream(request()).await;
    post(&app, "+919800000001", "e1", "accept", Some(true)).await;
    let first = next_event(&mut s).await;
    drop(s); // disconnect mid-stream

    for (i, c) in ["+919800000002", "+919800000003", "+919800000004"]
        .iter()
        .enumerate()
    {
        post(&app, c, &format!("e{}", i + 2), "accept", Some(true)).await;
    }
    let mut resumed = app
        .stream(pb::StreamGrantsRequest {
            resume_after: first.cursor.clone(),
            ..request()
        })
        .await;
    let (events, _) = events_until_checkpoint(&mut resumed).await;
    assert_eq!(ids(&events), vec!["e2", "e3", "e4"]);
}

#[tokio::test(start_paused = true)]
async fn since_replays_the_retained_events_from_a_point_in_time() {
    let app = spawn_app().await;
    post(&app, "+919800000001", "before", "accept", Some(true)).await;
    tokio::time::advance(Duration::from_millis(20)).await;
    let since = app.clock.now();
    tokio::time::advance(Duration::from_millis(20)).await;
    post(&app, "+919800000002", "after-1", "accept", Some(true)).await;
    post(&app, "+919800000003", "after-2", "accept", Some(true)).await;
    let mut s = app
        .stream(pb::StreamGrantsRequest {
            since: Some(callgate::grpc_api::timestamp(since)),
            ..request()
        })
        .await;
    let (events, _) = events_until_checkpoint(&mut s).await;
    assert_eq!(ids(&events), vec!["after-1", "after-2"]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_gets_checkpoints_whose_cursor_advances_past_filtered_events() {
    let app = spawn_app().await;
    let mut s = app.stream(request()).await;
    let (none, first) = events_until_checkpoint(&mut s).await;
    assert!(none.is_empty());
    // A denial is filtered out of this stream, but the checkpoint cursor moves past it.
    post(&app, CUSTOMER, "d", "reject", None).await;
    let (none, second) = events_until_checkpoint(&mut s).await;
    assert!(none.is_empty());
    assert_ne!(first, second);
    // Resuming from the second checkpoint replays nothing.
    post(&app, "+919800000009", "g", "accept", Some(true)).await;
    let mut resumed = app
        .stream(pb::StreamGrantsRequest {
            resume_after: second,
            ..request()
        })
        .await;
    assert_eq!(ids(&[next_event(&mut resumed).await]), vec!["g"]);
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_out_of_range() {
    let store: Arc<dyn ConsentStore> = Arc::new(MemoryStore::new(MemoryConfig {
        max_events: 3,
        ..MemoryConfig::default()
    }));
    let app = spawn_app_with(test_config(), store).await;
    let mut s = app.stream(request()).await;
    post(&app, "+919800000001", "e1", "accept", Some(true)).await;
    let first = next_event(&mut s).await;
    for i in 2..=6 {
        post(
            &app,
            &format!("+91980000000{i}"),
            &format!("e{i}"),
            "accept",
            Some(true),
        )
        .await;
    }
    let err = app
        .grpc()
        .await
        .stream_grants(pb::StreamGrantsRequest {
            resume_after: first.cursor,
            ..request()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("resync"), "{}", err.message());
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_temporary_grant_emits_one_expiry_and_a_superseded_one_none() {
    let app = spawn_app().await;
    let mut s = app
        .stream(pb::StreamGrantsRequest {
            include_expiries: true,
            include_denials: true,
            ..request()
        })
        .await;
    post(&app, "+919800000001", "lapses", "accept", Some(false)).await;
    post(&app, "+919800000002", "replaced", "accept", Some(false)).await;
    post(&app, "+919800000002", "deny", "reject", None).await;
    // Past the 7-day expiry on paused time (the sweep runs at the next tick), then collect up
    // to a checkpoint.
    tokio::time::advance(DEFAULT_TEMPORARY_GRANT + Duration::from_secs(60)).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        let (mut batch, _) = events_until_checkpoint(&mut s).await;
        events.append(&mut batch);
    }
    let kinds: Vec<(String, i32)> = events
        .iter()
        .map(|e| (e.evidence.as_ref().unwrap().message_id.clone(), e.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("lapses".into(), EventKind::Granted as i32),
            ("replaced".into(), EventKind::Granted as i32),
            ("deny".into(), EventKind::Denied as i32),
            ("lapses".into(), EventKind::Expired as i32),
        ]
    );
}

#[tokio::test]
async fn a_subscriber_that_never_reads_does_not_hold_back_a_fast_one() {
    const EVENTS: usize = 6000; // more than the ring, the stream buffer and the HTTP/2 window
    let app = spawn_app().await;
    let slow = app.stream(request()).await; // never read until the end
    let mut fast = app.stream(request()).await;
    let t = Utc::now();
    let decisions: Vec<_> = (0..EVENTS).map(|i| grant(i, t)).collect();
    for chunk in decisions.chunks(500) {
        app.store.record(chunk, t).await.unwrap();
    }
    for i in 0..EVENTS {
        let e = next_event(&mut fast).await;
        assert_eq!(e.evidence.unwrap().message_id, format!("m{i}"));
    }
    // The slow one still gets every event, in order, exactly once (from the store).
    let mut slow = slow;
    for i in 0..EVENTS {
        let e = next_event(&mut slow).await;
        assert_eq!(e.evidence.unwrap().message_id, format!("m{i}"));
    }
}

fn grant(i: usize, t: chrono::DateTime<Utc>) -> callgate::domain::Decision {
    use callgate::domain::*;
    Decision {
        pair: Pair::new(
            PhoneNumber::parse(BUSINESS).unwrap(),
            PhoneNumber::parse(&format!("+9197{i:08}")).unwrap(),
        ),
        choice: Choice::GrantPermanent,
        decided_at: to_millis_precision(t),
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: format!("m{i}"),
            paired_message_id: String::new(),
            response_source: String::new(),
            sender_customer_id: String::new(),
            body_sha256: [0; 32],
            stated_at: to_millis_precision(t),
            stated_expires_at: None,
        },
        attribution: None,
        customer_name: None,
    }
}

/// The fan-out's memory is its ring: a subscriber that is not polled while many events pass
/// is dropped from the ring (bounded) and later catches up from the store, missing nothing.
#[tokio::test]
async fn a_slow_subscriber_falls_back_to_the_store_instead_of_buffering() {
    const RING: usize = 16;
    const EVENTS: usize = 500;
    let store: Arc<dyn ConsentStore> = Arc::new(MemoryStore::new(MemoryConfig::default()));
    let stop = CancellationToken::new();
    let (hub, _tailer) = Hub::start(
        store.clone(),
        HubConfig {
            checkpoint: Duration::from_secs(60),
            ring_capacity: RING,
            cache: None,
        },
        Arc::default(),
        stop.clone(),
    );
    let mut slow = hub.subscribe(Start::Head, Filter::default()).await.unwrap();
    let mut fast = hub.subscribe(Start::Head, Filter::default()).await.unwrap();
    let t = Utc::now();
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < EVENTS {
            if let Item::Event(e, _) = fast.next().await.unwrap() {
                seen.push(e.event.decision.evidence.message_id.clone());
            }
        }
        seen
    });
    // The slow subscriber takes the first event live, then stops reading during the flood.
    store.record(&[grant(0, t)], t).await.unwrap();
    let mut seen = Vec::new();
    match tokio::time::timeout(WAIT, slow.next())
        .await
        .unwrap()
        .unwrap()
    {
        Item::Event(e, _) => seen.push(e.event.decision.evidence.message_id.clone()),
        Item::Checkpoint(_) => panic!("expected the first event"),
    }
    // Nothing more yet: the subscriber is now following the ring live.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), slow.next())
            .await
            .is_err()
    );
    for i in 1..EVENTS {
        store.record(&[grant(i, t)], t).await.unwrap();
        tokio::task::yield_now().await;
    }
    let want: Vec<String> = (0..EVENTS).map(|i| format!("m{i}")).collect();
    assert_eq!(
        tokio::time::timeout(WAIT, fast_reader)
            .await
            .unwrap()
            .unwrap(),
        want
    );

    while seen.len() < EVENTS {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .unwrap()
            .unwrap()
        {
            Item::Event(e, _) => seen.push(e.event.decision.evidence.message_id.clone()),
            Item::Checkpoint(_) => {}
        }
    }
    assert_eq!(seen, want);
    assert!(
        hub.catch_ups() >= 1,
        "the slow subscriber should have left the ring: {}",
        hub.catch_ups()
    );
    stop.cancel();
}
