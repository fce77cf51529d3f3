//! Webhooks in: DoubleTick samples, ordering, duplicates, expiry and every kind of bad input.

use std::time::Duration;

use callgate::pb::{ConsentState, HistoryOutcome};
use chrono::{DateTime, Utc};

use crate::helpers::*;

fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

#[tokio::test]
async fn each_doubletick_sample_gives_the_right_answer() {
    // The temporary sample ended in January 2026: it arrives already expired.
    let cases = [
        (
            "doubletick/accept-permanent.json",
            ConsentState::GrantedPermanent,
            true,
        ),
        (
            "doubletick/accept-temporary.json",
            ConsentState::Expired,
            false,
        ),
        ("doubletick/reject.json", ConsentState::Denied, false),
    ];
    for (file, state, allowed) in cases {
        let app = spawn_app().await;
        let answer = app.post_doubletick(fixture(file)).await;
        assert_eq!(answer.status, 200, "{file}: {:?}", answer.body);
        assert_eq!(answer.body["decisions"][0]["outcome"], "applied", "{file}");
        let check = app.check(BUSINESS, CUSTOMER).await;
        assert_eq!(check.state, state as i32, "{file}");
        assert_eq!(check.allowed, allowed, "{file}");
        assert_eq!(app.history(BUSINESS, CUSTOMER).await.len(), 1, "{file}");
        app.stop().await;
    }
}

#[tokio::test]
async fn temporary_sample_keeps_its_explicit_expiry_as_evidence() {
    let app = spawn_app().await;
    app.post_doubletick(fixture("doubletick/accept-temporary.json"))
        .await;
    let check = app.check_with_evidence(BUSINESS, CUSTOMER).await;
    assert_eq!(check.expires_at.unwrap().seconds, 1_768_470_600);
    let evidence = check.evidence.unwrap();
    assert_eq!(evidence.source, "doubletick");
    assert_eq!(evidence.message_id, "wa_message_id");
    assert_eq!(evidence.sender_customer_id, "customer_pvgpZUh3wg");
    assert_eq!(evidence.body_sha256.len(), 64);
}

#[tokio::test]
async fn unknown_pair_has_no_consent() {
    let app = spawn_app().await;
    let check = app.check(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::NoConsent as i32);
    assert!(!check.allowed);
    assert!(check.decided_at.is_none());
}

#[tokio::test]
async fn phone_spellings_are_one_customer_in_ingestion_and_checks() {
    let app = spawn_app().await;
    let body = doubletick(
        "+91 90000 00000",
        "0091 98765-43210",
        "m1",
        now_ms(),
        "accept",
        Some(true),
    );
    assert_eq!(app.post_doubletick(body).await.status, 200);
    for (business, customer) in [
        ("+919000000000", "+919876543210"),
        ("919000000000", "919876543210"),
        ("+91 90000 00000", "+91 98765 43210"),
    ] {
        let check = app.check(business, customer).await;
        assert!(check.allowed, "{business} {customer}");
        assert_eq!(check.customer_number, CUSTOMER);
        assert_eq!(check.business_number, BUSINESS);
    }
}

#[tokio::test]
async fn an_older_decision_arriving_late_never_overrides_a_newer_one() {
    let app = spawn_app().await;
    let t = now_ms();
    let newer_deny = doubletick(BUSINESS, CUSTOMER, "deny", t, "reject", None);
    let older_grant = doubletick(
        BUSINESS,
        CUSTOMER,
        "grant",
        t - chrono::Duration::seconds(30),
        "accept",
        Some(true),
    );
    assert_eq!(
        app.post_doubletick(newer_deny).await.body["decisions"][0]["outcome"],
        "applied"
    );
    let late = app.post_doubletick(older_grant).await;
    assert_eq!(late.status, 200);
    assert_eq!(late.body["decisions"][0]["outcome"], "stale");
    assert_eq!(app.state(BUSINESS, CUSTOMER).await, ConsentState::Denied);

    // Both are in the history, in arrival order, the late one marked stale.
    let history = app.history(BUSINESS, CUSTOMER).await;
    let seen: Vec<(String, i32)> = history
        .iter()
        .map(|h| (h.evidence.as_ref().unwrap().message_id.clone(), h.outcome))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("deny".to_owned(), HistoryOutcome::Applied as i32),
            ("grant".to_owned(), HistoryOutcome::Stale as i32),
        ]
    );
}

#[tokio::test]
async fn on_a_tie_the_denial_wins_in_either_arrival_order() {
    for deny_first in [true, false] {
        let app = spawn_app().await;
        let t = now_ms();
        let deny = doubletick(BUSINESS, CUSTOMER, "d", t, "rejected", None);
        let grant = doubletick(BUSINESS, CUSTOMER, "g", t, "accepted", Some(true));
        let (first, second) = if deny_first {
            (deny, grant)
        } else {
            (grant, deny)
        };
        app.post_doubletick(first).await;
        app.post_doubletick(second).await;
        assert_eq!(
            app.state(BUSINESS, CUSTOMER).await,
            ConsentState::Denied,
            "deny_first={deny_first}"
        );
    }
}

#[tokio::test]
async fn a_duplicate_delivery_changes_nothing_and_is_answered_200_again() {
    let app = spawn_app().await;
    let body = doubletick(BUSINESS, CUSTOMER, "m1", now_ms(), "accept", Some(true));
    let first = app.post_doubletick(body.clone()).await;
    let again = app.post_doubletick(body).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(first.body["decisions"][0]["outcome"], "applied");
    assert_eq!(again.body["decisions"][0]["outcome"], "duplicate");
    assert_eq!(app.history(BUSINESS, CUSTOMER).await.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_temporary_grant_stops_being_allowed_at_its_expiry() {
    // The default 7-day grant, on paused time: the service's clock moves only when the test
    // advances tokio's.
    let app = spawn_app().await;
    let decided = DateTime::from_timestamp_millis(app.clock.now().timestamp_millis()).unwrap();
    let body = doubletick(BUSINESS, CUSTOMER, "t1", decided, "accept", Some(false));
    assert_eq!(app.post_doubletick(body).await.status, 200);

    let check = app.check(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::GrantedTemporary as i32);
    assert!(check.allowed);
    let expires = check.expires_at.unwrap();
    let want = decided + chrono::Duration::days(7);
    assert_eq!(
        (expires.seconds, expires.nanos),
        (want.timestamp(), want.timestamp_subsec_nanos() as i32)
    );

    // A minute before the expiry instant: still allowed. (The margin covers the few
    // milliseconds paused time may auto-advance while the runtime waits on a socket.)
    let to_go = (want - app.clock.now()).to_std().unwrap();
    tokio::time::advance(to_go - Duration::from_secs(60)).await;
    assert!(app.check(BUSINESS, CUSTOMER).await.allowed, "ended early");
    assert!(app.clock.now() < want);
    // Past it: no longer.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(app.clock.now() >= want);
    let check = app.check(BUSINESS, CUSTOMER).await;
    assert!(!check.allowed, "allowed after expiry");
    assert_eq!(check.state, ConsentState::Expired as i32);
    assert_eq!(check.expires_at.unwrap().seconds, want.timestamp());
}

#[tokio::test]
async fn a_grant_already_expired_on_arrival_is_recorded_and_allows_nothing() {
    let app = spawn_app().await;
    let old = now_ms() - chrono::Duration::days(8);
    let body = doubletick(BUSINESS, CUSTOMER, "old", old, "accept", Some(false));
    assert_eq!(app.post_doubletick(body).await.status, 200);
    let check = app.check(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::Expired as i32);
    assert!(!check.allowed);
    assert_eq!(app.history(BUSINESS, CUSTOMER).await.len(), 1);
}

/// (name, path, headers, body, status, error code, field named)
type BadCase<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn every_kind_of_bad_input_is_refused_with_a_clear_error_and_nothing_is_stored() {
    let app = spawn_app().await;
    let good = doubletick(BUSINESS, CUSTOMER, "m", now_ms(), "accept", Some(true));
    let without = |key: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        v[key] = value;
        v.to_string()
    };
    let json = JSON;
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let cases: Vec<BadCase> = vec![
        (
            "invalid json",
            "/webhooks/doubletick",
            vec![json, AUTH],
            "{not json".into(),
            400,
            "invalid_json",
            None,
        ),
        (
            "not an object",
            "/webhooks/doubletick",
            vec![json, AUTH],
            "[]".into(),
            400,
            "invalid_json",
            None,
        ),
        (
            "missing from",
            "/webhooks/doubletick",
            vec![json, AUTH],
            without("from"),
            422,
            "invalid_field",
            Some("from"),
        ),
        (
            "missing to",
            "/webhooks/doubletick",
            vec![json, AUTH],
            without("to"),
            422,
            "invalid_field",
            Some("to"),
        ),
        (
            "missing receivedAt",
            "/webhooks/doubletick",
            vec![json, AUTH],
            without("receivedAt"),
            422,
            "invalid_field",
            Some("receivedAt"),
        ),
        (
            "missing messageId",
            "/webhooks/doubletick",
            vec![json, AUTH],
            without("messageId"),
            422,
            "invalid_field",
            Some("messageId"),
        ),
        (
            "missing response",
            "/webhooks/doubletick",
            vec![json, AUTH],
            without("response"),
            422,
            "invalid_field",
            Some("response"),
        ),
        (
            "bad phone",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("from", "12-ab".into()),
            422,
            "invalid_field",
            Some("from"),
        ),
        (
            "short phone",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("to", "12345".into()),
            422,
            "invalid_field",
            Some("to"),
        ),
        (
            "bad time",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("receivedAt", "noon".into()),
            422,
            "invalid_field",
            Some("receivedAt"),
        ),
        (
            "bad response",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("response", "maybe".into()),
            422,
            "invalid_field",
            Some("response"),
        ),
        (
            "bad isPermanent",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("isPermanent", "yes".into()),
            422,
            "invalid_field",
            Some("isPermanent"),
        ),
        (
            "bad expiry",
            "/webhooks/doubletick",
            vec![json, AUTH],
            with("expirationTimestamp", "soon".into()),
            422,
            "invalid_field",
            Some("expirationTimestamp"),
        ),
        (
            "wrong content type",
            "/webhooks/doubletick",
            vec![("content-type", "text/plain"), AUTH],
            good.clone(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "no content type",
            "/webhooks/doubletick",
            vec![AUTH],
            good.clone(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "too large",
            "/webhooks/doubletick",
            vec![json, AUTH],
            huge,
            413,
            "body_too_large",
            None,
        ),
        (
            "unknown route",
            "/webhooks/other",
            vec![json, AUTH],
            good.clone(),
            404,
            "not_found",
            None,
        ),
    ];
    for (name, path, headers, body, status, code, field) in cases {
        let answer = app.request("POST", path, &headers, body).await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.body);
        assert_eq!(answer.body["error"], code, "{name}");
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        assert_eq!(answer.body["field"].as_str(), field, "{name}");
    }
    let wrong_method = app.request("GET", "/webhooks/doubletick", &[], "").await;
    assert_eq!(wrong_method.status, 405);

    // Nothing was stored by any of them.
    assert_eq!(app.state(BUSINESS, CUSTOMER).await, ConsentState::NoConsent);
    assert!(app.history(BUSINESS, CUSTOMER).await.is_empty());
    // And the good body still works afterwards.
    assert_eq!(app.post_doubletick(good).await.status, 200);
    assert_eq!(
        app.state(BUSINESS, CUSTOMER).await,
        ConsentState::GrantedPermanent
    );
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.request("GET", "/healthz", &[], "").await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = app.request("GET", "/readyz", &[], "").await;
    assert_eq!(
        (ready.status, ready.body["status"].as_str()),
        (200, Some("ready"))
    );
}
