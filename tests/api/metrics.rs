//! `GET /metrics`: Prometheus text with the counts of what happened, and no phone numbers.

use chrono::Utc;

use crate::helpers::*;

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
