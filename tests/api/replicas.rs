//! Real callgate processes on one real Redis: shared state, restarts, Redis outages, eviction
//! policy, and StreamGrants across replicas.

use std::time::Duration;

use callgate::pb::{self, ConsentState, EventKind};
use chrono::Utc;
use tonic::Code;

use crate::helpers::*;
use crate::process::CallgateProcess;
use crate::redis_harness::{RedisOptions, RedisServer};

/// Starts a replica on `redis` with quick sweeps and checkpoints, plus `extra` settings.
fn replica(redis: &RedisServer, extra: &[(&str, &str)]) -> (CallgateProcess, Endpoints) {
    let url = redis.url();
    let mut env = vec![
        ("CALLGATE_REDIS_URL", url.as_str()),
        ("CALLGATE_EXPIRY_SWEEP_MS", "50"),
        ("CALLGATE_CHECKPOINT_SECS", "0.3"),
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
    ];
    env.extend_from_slice(extra);
    let process = CallgateProcess::start(&env).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    (process, api)
}

async fn post(api: &Endpoints, customer: &str, id: &str, response: &str, permanent: Option<bool>) {
    let body = doubletick(BUSINESS, customer, id, Utc::now(), response, permanent);
    let answer = api.post_doubletick(body).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

/// Events (not checkpoints) received until `checkpoints` checkpoints have passed.
async fn collect(
    s: &mut tonic::Streaming<pb::ConsentEvent>,
    checkpoints: usize,
) -> Vec<pb::ConsentEvent> {
    let mut events = Vec::new();
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen < checkpoints {
            let e = s.message().await.unwrap().expect("stream ended");
            if e.kind == EventKind::Checkpoint as i32 {
                seen += 1;
            } else {
                events.push(e);
            }
        }
    })
    .await
    .expect("stream stalled");
    events
}

/// Events received up to and including the first `EXPIRED` (bounded), checkpoints skipped.
async fn until_expired(s: &mut tonic::Streaming<pb::ConsentEvent>) -> Vec<pb::ConsentEvent> {
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = s.message().await.unwrap().expect("stream ended");
            let expired = e.kind == EventKind::Expired as i32;
            if e.kind != EventKind::Checkpoint as i32 {
                events.push(e);
            }
            if expired {
                return;
            }
        }
    })
    .await
    .expect("no expiry within 10 s");
    events
}

fn summary(events: &[pb::ConsentEvent]) -> Vec<(String, i32)> {
    events
        .iter()
        .map(|e| (e.evidence.as_ref().unwrap().message_id.clone(), e.kind))
        .collect()
}

#[tokio::test]
async fn a_webhook_posted_to_one_replica_is_visible_to_a_check_on_the_other() {
    let redis = RedisServer::start();
    let (_a, api_a) = replica(&redis, &[]);
    let (_b, api_b) = replica(&redis, &[]);
    post(&api_a, CUSTOMER, "m1", "accept", Some(true)).await;
    let check = api_b.check(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::GrantedPermanent as i32);
    assert!(check.allowed);
    post(&api_b, CUSTOMER, "m2", "reject", None).await;
    assert_eq!(api_a.state(BUSINESS, CUSTOMER).await, ConsentState::Denied);
    assert_eq!(api_a.history(BUSINESS, CUSTOMER).await.len(), 2);
}

#[tokio::test]
async fn decisions_survive_a_callgate_restart() {
    let redis = RedisServer::start();
    let (a, api_a) = replica(&redis, &[]);
    post(&api_a, CUSTOMER, "m1", "accept", Some(true)).await;
    assert!(
        tokio::task::spawn_blocking(move || a.terminate())
            .await
            .unwrap()
    );
    let (_b, api_b) = replica(&redis, &[]);
    assert!(api_b.check(BUSINESS, CUSTOMER).await.allowed);
}

#[tokio::test]
async fn with_redis_down_nothing_is_allowed_and_everything_recovers_without_a_restart() {
    let mut redis = RedisServer::start_with(RedisOptions::aof());
    // The store path fails closed; the check cache (tested in `check_cache`) is off.
    let (_p, api) = replica(
        &redis,
        &[
            ("CALLGATE_REDIS_TIMEOUT_MS", "200"),
            ("CALLGATE_CHECK_CACHE", "off"),
        ],
    );
    post(&api, CUSTOMER, "m1", "accept", Some(true)).await;
    assert!(api.check(BUSINESS, CUSTOMER).await.allowed);

    redis.stop(); // SIGKILL
    let err = api
        .grpc()
        .await
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .expect_err("a check answered while Redis was down");
    assert_eq!(err.code(), Code::Unavailable);
    let batch = api
        .grpc()
        .await
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: vec![pb::CheckCallPermissionRequest {
                business_number: BUSINESS.into(),
                customer_number: CUSTOMER.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    assert_eq!(batch.expect_err("batch answered").code(), Code::Unavailable);
    let body = doubletick(
        BUSINESS,
        "+919800000001",
        "m2",
        Utc::now(),
        "accept",
        Some(true),
    );
    let webhook = api.post_doubletick(body.clone()).await;
    assert_eq!(webhook.status, 503, "{:?}", webhook.body);
    assert_eq!(webhook.body["error"], "store_unavailable");
    let ready = api.request("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503);
    assert_eq!(api.request("GET", "/healthz", &[], "").await.status, 200);

    redis.restart();
    eventually("checks work again", Duration::from_secs(10), || async {
        let answer = api
            .grpc()
            .await
            .check_call_permission(pb::CheckCallPermissionRequest {
                business_number: BUSINESS.into(),
                customer_number: CUSTOMER.into(),
                ..Default::default()
            })
            .await;
        answer.is_ok_and(|a| a.into_inner().allowed)
    })
    .await;
    eventually("webhooks work again", Duration::from_secs(10), || async {
        api.post_doubletick(body.clone()).await.status == 200
    })
    .await;
    assert!(api.check(BUSINESS, "+919800000001").await.allowed);
    assert_eq!(api.request("GET", "/readyz", &[], "").await.status, 200);
}

#[tokio::test]
async fn a_redis_that_may_evict_is_refused_at_startup_naming_the_setting() {
    let redis = RedisServer::start_with(RedisOptions::maxmemory_policy("allkeys-lru"));
    let url = redis.url();
    let err = match CallgateProcess::start(&[("CALLGATE_REDIS_URL", url.as_str())]) {
        Ok(_) => panic!("callgate started on an evicting Redis"),
        Err(log) => log,
    };
    assert!(err.contains("maxmemory-policy"), "{err}");
    assert!(err.contains("allkeys-lru"), "{err}");
}

#[tokio::test]
async fn readiness_turns_not_ready_if_eviction_is_enabled_while_running() {
    let redis = RedisServer::start();
    let (process, api) = replica(&redis, &[]);
    assert_eq!(api.request("GET", "/readyz", &[], "").await.status, 200);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ready = api.request("GET", "/readyz", &[], "").await;
    assert_eq!(ready.status, 503);
    assert!(
        ready.body["reason"]
            .as_str()
            .unwrap()
            .contains("maxmemory-policy"),
        "{:?}",
        ready.body
    );
    let log = process
        .log_when(Duration::from_secs(5), |log| {
            log.contains("maxmemory-policy")
        })
        .await;
    assert!(log.contains("maxmemory-policy"), "{log}");
}

#[tokio::test]
async fn a_stream_killed_on_one_replica_resumes_on_the_other_without_a_gap() {
    let redis = RedisServer::start();
    let (_a, api_a) = replica(&redis, &[]);
    let (_b, api_b) = replica(&redis, &[]);
    let mut on_b = api_b.stream(pb::StreamGrantsRequest::default()).await;
    post(&api_a, "+919800000001", "e1", "accept", Some(true)).await;
    post(&api_a, "+919800000002", "e2", "accept", Some(true)).await;
    let got = collect(&mut on_b, 1).await;
    assert_eq!(
        summary(&got)
            .iter()
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["e1", "e2"]
    );
    let cursor = got.last().unwrap().cursor.clone();
    drop(on_b);

    for i in 3..=6 {
        post(
            &api_a,
            &format!("+91980000000{i}"),
            &format!("e{i}"),
            "accept",
            Some(true),
        )
        .await;
    }
    let mut on_a = api_a
        .stream(pb::StreamGrantsRequest {
            resume_after: cursor,
            ..Default::default()
        })
        .await;
    let resumed = collect(&mut on_a, 1).await;
    assert_eq!(
        summary(&resumed)
            .iter()
            .map(|s| s.0.as_str())
            .collect::<Vec<_>>(),
        ["e3", "e4", "e5", "e6"]
    );
}

#[tokio::test]
async fn two_replicas_announce_a_lapsed_grant_exactly_once_and_a_superseded_one_never() {
    let redis = RedisServer::start();
    let short = [("CALLGATE_TEMPORARY_GRANT_SECS", "0.6")];
    let (_a, api_a) = replica(&redis, &short);
    let (_b, api_b) = replica(&redis, &short);
    let all = pb::StreamGrantsRequest {
        include_denials: true,
        include_expiries: true,
        ..Default::default()
    };
    let mut on_a = api_a.stream(all.clone()).await;
    let mut on_b = api_b.stream(all).await;

    post(&api_a, "+919800000001", "lapses", "accept", Some(false)).await;
    post(&api_b, "+919800000002", "replaced", "accept", Some(false)).await;
    post(&api_a, "+919800000002", "deny", "reject", None).await;
    // Redis's native expiry cannot be paused: wait (bounded) for the expiry itself below,
    // then for three more checkpoints (many sweeps of both replicas) in which a second
    // announcement would show.

    let want = vec![
        ("lapses".to_owned(), EventKind::Granted as i32),
        ("replaced".to_owned(), EventKind::Granted as i32),
        ("deny".to_owned(), EventKind::Denied as i32),
        ("lapses".to_owned(), EventKind::Expired as i32),
    ];
    for (name, stream) in [("A", &mut on_a), ("B", &mut on_b)] {
        let mut events = until_expired(stream).await;
        events.extend(collect(stream, 3).await);
        let got = summary(&events);
        assert_eq!(got.len(), want.len(), "replica {name}: {got:?}");
        for w in &want {
            assert_eq!(
                got.iter().filter(|g| *g == w).count(),
                1,
                "replica {name}: {got:?}"
            );
        }
        // Pairs live in different shards, so only each pair's own order is guaranteed.
        let at = |w: &(String, i32)| got.iter().position(|g| g == w).unwrap();
        assert!(
            at(&want[0]) < at(&want[3]),
            "replica {name}: expiry before grant: {got:?}"
        );
        assert!(
            at(&want[1]) < at(&want[2]),
            "replica {name}: denial before grant: {got:?}"
        );
    }
}
