//! Issue 10: a phone number never reaches an error message or a log line, even when the store
//! holds a value callgate cannot read (Redis key names carry the pair's digits).

use std::time::Duration;

use chrono::Utc;
use tonic::Code;

use crate::helpers::*;
use crate::process::CallgateProcess;
use crate::redis_harness::RedisServer;

/// Overwrites every stored value of `kind` (`c`: the current decision, ...) with bytes no codec
/// reads, through Redis directly. Returns how many keys it damaged.
async fn corrupt_every(redis: &RedisServer, kind: &str) -> usize {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*:{kind}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in &keys {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("\u{1}garbage")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys.len()
}

#[tokio::test]
async fn a_corrupt_stored_value_reaches_no_error_and_no_log_with_the_pairs_numbers() {
    let redis = RedisServer::start();
    let url = redis.url();
    let process = CallgateProcess::start(&[
        ("CALLGATE_REDIS_URL", url.as_str()),
        // corrupt_every damages layout v1's keys.
        ("CALLGATE_REDIS_LAYOUT", "v1"),
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
        ("CALLGATE_EXPIRY_SWEEP_MS", "50"),
        // The damaged value must be read: no answer from issue 16's check cache.
        ("CALLGATE_CHECK_CACHE", "off"),
    ])
    .unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    let grant = doubletick(BUSINESS, CUSTOMER, "r1", Utc::now(), "accept", Some(true));
    assert_eq!(api.post_doubletick(grant).await.status, 200);
    assert!(api.check(BUSINESS, CUSTOMER).await.allowed);
    assert!(
        corrupt_every(&redis, "c").await >= 1,
        "no current-decision key found"
    );

    // The check fails closed, and its status names no number.
    let err = api
        .grpc()
        .await
        .check_call_permission(callgate::pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // A new decision for the pair meets the damaged value inside the recording script.
    let deny = doubletick(BUSINESS, CUSTOMER, "r2", Utc::now(), "reject", None);
    let refused = api.post_doubletick(deny).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);

    let digits = |n: &str| n.trim_start_matches('+').to_owned();
    let (business, customer) = (digits(BUSINESS), digits(CUSTOMER));
    // Both failures are logged (store errors are warnings with their reason).
    let log = process
        .log_when(Duration::from_secs(5), |log| {
            log.matches("cannot read").count() >= 2
        })
        .await;
    assert!(log.matches("cannot read").count() >= 2, "{log}");
    for (what, text) in [
        ("gRPC status", err.message().to_owned()),
        ("webhook answer", refused.body.to_string()),
        ("log", log),
    ] {
        // The national part is enough to identify someone: look for it, not just the E.164 form.
        for number in [&business[..], &customer[..], &business[2..], &customer[2..]] {
            assert!(!text.contains(number), "{what} holds {number}:\n{text}");
        }
    }
}
