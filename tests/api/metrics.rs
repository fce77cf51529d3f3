//! `GET /metrics`: Prometheus text with the counts of what happened, and no phone numbers.

use std::sync::Arc;
use std::time::Duration;

use callgate::metrics::WebhookOutcome;
use callgate::store::redis::{RedisConfig, RedisStore};
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::redis_harness::RedisServer;

pub async fn scrape(app: &Endpoints) -> String {
    let res = app.get_raw("/metrics").await;
    assert_eq!(res.status, 200);
    assert!(res.content_type.starts_with("text/plain"));
    String::from_utf8(res.body.to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no series {series}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_checks_webhooks_and_streams_without_phone_numbers() {
    let app = spawn_app().await;
    let body = doubletick(BUSINESS, CUSTOMER, "m1", Utc::now(), "accept", Some(true));
    assert_eq!(app.post_doubletick(body).await.status, 200);
    assert_eq!(app.post_doubletick("{bad").await.status, 400);
    app.check(BUSINESS, CUSTOMER).await;
    app.check(BUSINESS, "+919800000077").await;
    let _ = app
        .grpc()
        .await
        .check_call_permission(callgate::pb::CheckCallPermissionRequest {
            business_number: "bad".into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await;
    let _stream = app
        .grpc()
        .await
        .stream_grants(callgate::pb::StreamGrantsRequest::default())
        .await
        .unwrap();

    let text = scrape(&app).await;
    assert_eq!(
        value(&text, "callgate_checks_total{answer=\"granted_permanent\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "callgate_checks_total{answer=\"no_consent\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "callgate_checks_total{answer=\"invalid_argument\"}"),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "callgate_check_duration_seconds_count{rpc=\"single\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "callgate_webhooks_total{route=\"doubletick\",outcome=\"stored\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "callgate_webhooks_total{route=\"doubletick\",outcome=\"invalid_json\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "callgate_webhook_duration_seconds_count{route=\"doubletick\"}"
        ),
        2.0
    );
    assert_eq!(value(&text, "callgate_open_streams"), 1.0);
    assert_eq!(
        value(&text, "callgate_store_errors_total{op=\"check\"}"),
        0.0
    );
    assert!(text.contains("callgate_build_info{version=\""));
    for number in ["919000000000", "919876543210", "919800000077"] {
        assert!(
            !text.contains(number),
            "a phone number leaked into /metrics"
        );
    }
}

/// The count of one `callgate_webhooks_total` series (0 while it is not shown).
fn webhooks(text: &str, route: &str, outcome: &str) -> f64 {
    let series = format!("callgate_webhooks_total{{route=\"{route}\",outcome=\"{outcome}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str())?.strip_prefix(' '))
        .map_or(0.0, |n| n.parse().unwrap())
}

/// Sends `raw` (a request with a hostile body) on its own connection and reads whatever the
/// port answers, until it closes the connection or `limit` passes.
async fn send_raw(app: &Endpoints, raw: &[u8], limit: Duration) {
    let mut conn = TcpStream::connect(app.http).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(limit, conn.read_to_end(&mut answer)).await;
}

/// Every outcome `callgate_webhooks_total` declares is produced by some request: each is sent
/// and the series of its label goes up by one. The `match` is exhaustive, so an outcome
/// added to the metric without a request that produces it does not compile.
#[tokio::test]
async fn every_declared_webhook_outcome_is_produced_by_a_request() {
    let mut redis = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(redis.url()))
        .await
        .unwrap();
    let mut config = test_config();
    config.http_body_timeout = Duration::from_millis(300);
    let app = spawn_app_with(config, Arc::new(store)).await;
    let mut unconfigured = test_config();
    unconfigured.webhook_tokens.clear();
    let unconfigured = spawn_app_with(unconfigured, memory_store()).await;

    let t = Utc::now();
    let conflict = doubletick(BUSINESS, CUSTOMER, "m-conflict", t, "accept", Some(true));
    assert_eq!(app.post_doubletick(conflict).await.status, 200);
    let doubletick_head = |extra: &str| {
        format!(
            "POST /webhooks/doubletick HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Authorization: Bearer {TOKEN}\r\n{extra}\r\n"
        )
    };
    for outcome in WebhookOutcome::ALL {
        let (target, route, want_status): (&Endpoints, &str, Option<u16>) = match outcome {
            WebhookOutcome::Stored => (&app, "doubletick", Some(200)),
            WebhookOutcome::Ignored | WebhookOutcome::Verified => (&app, "whatsapp", Some(200)),
            WebhookOutcome::NotConfigured => (&unconfigured, "doubletick", Some(503)),
            WebhookOutcome::Unauthorized => (&app, "doubletick", Some(401)),
            WebhookOutcome::Forbidden => (&app, "whatsapp", Some(403)),
            WebhookOutcome::NotFound => (&app, "other", Some(404)),
            WebhookOutcome::MethodNotAllowed => (&app, "doubletick", Some(405)),
            WebhookOutcome::UnsupportedMediaType => (&app, "doubletick", Some(415)),
            WebhookOutcome::BodyTooLarge => (&app, "doubletick", Some(413)),
            WebhookOutcome::InvalidJson => (&app, "doubletick", Some(400)),
            WebhookOutcome::InvalidField => (&app, "doubletick", Some(422)),
            WebhookOutcome::Conflict => (&app, "doubletick", Some(409)),
            WebhookOutcome::StoreUnavailable => (&app, "doubletick", Some(503)),
            // Raw sockets: the answer is read but not parsed.
            WebhookOutcome::BodyTimeout | WebhookOutcome::BodyUnreadable => {
                (&app, "doubletick", None)
            }
        };
        let before = webhooks(&scrape(target).await, route, outcome.label());
        let status = match outcome {
            WebhookOutcome::Stored => {
                let body = doubletick(BUSINESS, CUSTOMER, "m-stored", t, "accept", None);
                Some(target.post_doubletick(body).await.status)
            }
            WebhookOutcome::Ignored => {
                let body = r#"{"object":"whatsapp_business_account","entry":[]}"#;
                let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
                mac.update(body.as_bytes());
                let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
                let headers = [JSON, ("x-hub-signature-256", signature.as_str())];
                let answer = target
                    .request("POST", "/webhooks/whatsapp", &headers, body)
                    .await;
                assert_eq!(answer.body["status"], "ignored");
                Some(answer.status)
            }
            WebhookOutcome::Verified | WebhookOutcome::Forbidden => {
                let token = match outcome {
                    WebhookOutcome::Verified => VERIFY_TOKEN,
                    _ => "wrong",
                };
                let path = format!(
                    "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=7"
                );
                Some(target.get_raw(&path).await.status)
            }
            WebhookOutcome::NotConfigured | WebhookOutcome::Unauthorized => {
                let body = doubletick(BUSINESS, CUSTOMER, "m-refused", t, "accept", None);
                let answer = target
                    .request("POST", "/webhooks/doubletick", &[JSON], body)
                    .await;
                Some(answer.status)
            }
            WebhookOutcome::NotFound => {
                let answer = target
                    .request("POST", "/webhooks/nowhere", &[JSON, AUTH], "{}")
                    .await;
                Some(answer.status)
            }
            WebhookOutcome::MethodNotAllowed => {
                Some(target.get_raw("/webhooks/doubletick").await.status)
            }
            WebhookOutcome::UnsupportedMediaType => {
                let answer = target
                    .request("POST", "/webhooks/doubletick", &[AUTH], "{}")
                    .await;
                Some(answer.status)
            }
            WebhookOutcome::BodyTooLarge => {
                let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
                let answer = target
                    .request("POST", "/webhooks/doubletick", &[JSON, AUTH], huge)
                    .await;
                Some(answer.status)
            }
            WebhookOutcome::BodyTimeout => {
                // Half a body, then silence past the 300 ms body deadline.
                let mut raw = doubletick_head("Content-Length: 500\r\n");
                raw.push_str("{\"from\":");
                send_raw(target, raw.as_bytes(), Duration::from_secs(3)).await;
                None
            }
            WebhookOutcome::BodyUnreadable => {
                // A chunked body whose chunk size is not hexadecimal.
                let mut raw = doubletick_head("Transfer-Encoding: chunked\r\n");
                raw.push_str("zz\r\n{}\r\n0\r\n\r\n");
                send_raw(target, raw.as_bytes(), Duration::from_secs(3)).await;
                None
            }
            WebhookOutcome::InvalidJson => Some(target.post_doubletick("{bad").await.status),
            WebhookOutcome::InvalidField => {
                Some(target.post_doubletick("{\"from\":\"x\"}").await.status)
            }
            WebhookOutcome::Conflict => {
                let body = doubletick(BUSINESS, CUSTOMER, "m-conflict", t, "reject", None);
                Some(target.post_doubletick(body).await.status)
            }
            WebhookOutcome::StoreUnavailable => {
                redis.stop();
                let body = doubletick(BUSINESS, CUSTOMER, "m-unstored", t, "reject", None);
                Some(target.post_doubletick(body).await.status)
            }
        };
        assert_eq!(status, want_status, "{outcome:?}");
        // Counted before the answer is written; a raw socket may see its connection end first.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let after = loop {
            let after = webhooks(&scrape(target).await, route, outcome.label());
            if after > before || tokio::time::Instant::now() >= deadline {
                break after;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(after, before + 1.0, "{outcome:?}");
    }
}
