//! The webhook port facing the internet: authentication, Meta's own webhook, hostile input.

use std::time::Duration;

use callgate::config::Secret;
use callgate::pb::ConsentState;
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::helpers::*;

pub fn sign(body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_whatsapp(app: &TestApp, body: &str, signature: Option<&str>) -> Answer {
    let mut headers = vec![JSON];
    if let Some(s) = signature {
        headers.push(("x-hub-signature-256", s));
    }
    app.request("POST", "/webhooks/whatsapp", &headers, body.to_owned())
        .await
}

async fn nothing_stored(app: &TestApp, business: &str, customer: &str) {
    assert_eq!(app.state(business, customer).await, ConsentState::NoConsent);
    assert!(app.history(business, customer).await.is_empty());
}

fn body() -> String {
    doubletick(BUSINESS, CUSTOMER, "m1", Utc::now(), "accept", Some(true))
}

#[tokio::test]
async fn doubletick_requires_a_configured_secret_in_any_of_the_supported_places() {
    let mut config = test_config();
    config.webhook_tokens = vec![Secret::new("old-secret"), Secret::new(TOKEN)];
    config.webhook_auth_header = Some("X-Callgate-Token".into());
    let app = spawn_app_with(config, memory_store()).await;
    let basic = |user: &str, pw: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
        )
    };
    let refused: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("no credentials", vec![]),
        (
            "wrong bearer",
            vec![("authorization", "Bearer nope".into())],
        ),
        ("empty bearer", vec![("authorization", "Bearer ".into())]),
        (
            "bearer with a prefix of the secret",
            vec![("authorization", "Bearer test-token".into())],
        ),
        (
            "wrong basic password",
            vec![("authorization", basic(TOKEN, "nope"))],
        ),
        (
            "secret as basic user name",
            vec![("authorization", basic(TOKEN, ""))],
        ),
        (
            "wrong custom header",
            vec![("x-callgate-token", "nope".into())],
        ),
        (
            "secret in an unconfigured header",
            vec![("x-other", TOKEN.into())],
        ),
    ];
    for (name, headers) in refused {
        let mut all: Vec<(&str, &str)> = vec![JSON];
        all.extend(headers.iter().map(|(k, v)| (*k, v.as_str())));
        let answer = app
            .request("POST", "/webhooks/doubletick", &all, body())
            .await;
        assert_eq!(answer.status, 401, "{name}: {:?}", answer.body);
        assert_eq!(answer.body["error"], "unauthorized", "{name}");
        let text = answer.body.to_string();
        assert!(
            !text.contains(TOKEN) && !text.contains("old-secret"),
            "{name}: {text}"
        );
    }
    nothing_stored(&app, BUSINESS, CUSTOMER).await;

    let accepted: Vec<(&str, (&str, String))> = vec![
        ("bearer", ("authorization", format!("Bearer {TOKEN}"))),
        (
            "rotated-out secret still listed",
            ("authorization", "Bearer old-secret".into()),
        ),
        (
            "basic password",
            ("authorization", basic("doubletick", TOKEN)),
        ),
        ("custom header", ("x-callgate-token", TOKEN.into())),
    ];
    for (i, (name, (k, v))) in accepted.iter().enumerate() {
        let b = doubletick(
            BUSINESS,
            CUSTOMER,
            &format!("ok{i}"),
            Utc::now(),
            "accept",
            Some(true),
        );
        let answer = app
            .request("POST", "/webhooks/doubletick", &[JSON, (*k, v.as_str())], b)
            .await;
        assert_eq!(answer.status, 200, "{name}: {:?}", answer.body);
    }
    assert_eq!(app.history(BUSINESS, CUSTOMER).await.len(), accepted.len());
}

#[tokio::test]
async fn without_a_configured_secret_the_webhook_routes_store_nothing_unless_insecure() {
    let mut config = test_config();
    config.webhook_tokens = vec![];
    config.whatsapp_app_secret = None;
    let app = spawn_app_with(config.clone(), memory_store()).await;
    let answer = app
        .request("POST", "/webhooks/doubletick", &[JSON, AUTH], body())
        .await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (503, Some("not_configured"))
    );
    let wa = fixture("whatsapp/accept-temporary.json");
    let answer = post_whatsapp(&app, &wa, Some(&sign(&wa))).await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (503, Some("not_configured"))
    );
    nothing_stored(&app, BUSINESS, CUSTOMER).await;
    nothing_stored(&app, "+15550783881", "+16505551234").await;

    config.insecure_no_auth = true;
    let insecure = spawn_app_with(config, memory_store()).await;
    let answer = insecure
        .request("POST", "/webhooks/doubletick", &[JSON], body())
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

#[tokio::test]
async fn meta_subscription_handshake_echoes_the_challenge_only_for_the_right_token() {
    let app = spawn_app().await;
    let ok = format!(
        "/webhooks/whatsapp?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444"
    );
    let res = app.get_raw(&ok).await;
    assert_eq!(res.status, 200);
    assert_eq!(&res.body[..], b"1158201444");

    for query in [
        "hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1".to_owned(),
        format!("hub.mode=unsubscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1"),
        format!("hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}"),
        String::new(),
    ] {
        let answer = app
            .request("GET", &format!("/webhooks/whatsapp?{query}"), &[], "")
            .await;
        assert_eq!(answer.status, 403, "{query}");
        assert_eq!(answer.body["error"], "forbidden");
    }
}

#[tokio::test]
async fn meta_webhooks_need_a_valid_signature_of_the_raw_body() {
    let app = spawn_app().await;
    let wa = fixture("whatsapp/accept-temporary.json");
    let good = sign(&wa);
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    let reformatted = wa.replace("\n", "\r\n"); // same JSON, other bytes: the signature is of bytes
    let cases = [
        ("missing", wa.clone(), None),
        ("malformed", wa.clone(), Some("md5=abc".to_owned())),
        ("one bit off", wa.clone(), Some(flipped)),
        ("signature of other bytes", reformatted, Some(good.clone())),
    ];
    for (name, body, signature) in cases {
        let answer = post_whatsapp(&app, &body, signature.as_deref()).await;
        assert_eq!(answer.status, 401, "{name}: {:?}", answer.body);
    }
    nothing_stored(&app, "+15550783881", "+16505551234").await;

    let answer = post_whatsapp(&app, &wa, Some(&good)).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let check = app
        .check_with_evidence("+15550783881", "+16505551234")
        .await;
    // The sample's grant ended on 2026-01-16: it arrives already expired.
    assert_eq!(check.state, ConsentState::Expired as i32);
    let evidence = check.evidence.unwrap();
    assert_eq!(evidence.source, "whatsapp");
    assert_eq!(evidence.message_id, "wamid.sH0kFlaCGg0xcvZbgmg90lHrg2dL");
    assert_eq!(evidence.paired_message_id, "wamid.gBGGFlaCmZ9plHrf2Mh-o");
    assert_eq!(evidence.response_source, "user_action");
    assert_eq!(
        evidence.body_sha256,
        hex::encode(Sha256::digest(wa.as_bytes()))
    );
    // The sample states an end 16 days after the reply: bounded to the 7-day window, and the
    // stated end kept as evidence.
    assert_eq!(
        check.expires_at.unwrap().seconds,
        1_767_168_000 + 7 * 24 * 3600
    );
    assert_eq!(evidence.stated_expires_at.unwrap().seconds, 1_768_550_400);
    assert_eq!(evidence.stated_decided_at.unwrap().seconds, 1_767_168_000);
}

fn reply(id: &str, from: &str, response: &str, permanent: bool, source: &str) -> serde_json::Value {
    serde_json::json!({
        "context": { "from": "15550783881", "id": "wamid.template" },
        "from": from, "id": id, "timestamp": Utc::now().timestamp().to_string(),
        "type": "interactive",
        "interactive": { "type": "call_permission_reply", "call_permission_reply": {
            "response": response, "is_permanent": permanent, "response_source": source } }
    })
}

fn envelope(messages: Vec<serde_json::Value>, statuses: bool) -> String {
    let mut value = serde_json::json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550783881", "phone_number_id": "106540352242922" },
        "messages": messages,
    });
    if statuses {
        value["statuses"] = serde_json::json!([{ "id": "wamid.s", "status": "delivered",
            "timestamp": "1767168000", "recipient_id": "16505551234" }]);
    }
    serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "1", "changes": [{ "value": value, "field": "messages" }] }]
    })
    .to_string()
}

#[tokio::test]
async fn a_meta_batch_stores_each_permission_reply_and_ignores_everything_else() {
    let app = spawn_app().await;
    let text_message = serde_json::json!({
        "from": "16505550000", "id": "wamid.text", "timestamp": "1767168000",
        "type": "text", "text": { "body": "hello" }
    });
    let batch = envelope(
        vec![
            text_message,
            reply("wamid.r1", "16505551234", "accept", true, "user_action"),
        ],
        true,
    );
    let answer = post_whatsapp(&app, &batch, Some(&sign(&batch))).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["decisions"].as_array().unwrap().len(), 1);
    assert!(app.check("+15550783881", "+16505551234").await.allowed);
    nothing_stored(&app, "+15550783881", "+16505550000").await;

    // Only a delivery status: acknowledged, nothing to store.
    let statuses = envelope(vec![], true);
    let answer = post_whatsapp(&app, &statuses, Some(&sign(&statuses))).await;
    assert_eq!(
        (answer.status, answer.body["status"].as_str()),
        (200, Some("ignored"))
    );

    // Meta revoking permission after unanswered calls is a denial like any other.
    let revoke = envelope(
        vec![reply(
            "wamid.r2",
            "16505551234",
            "reject",
            false,
            "automatic",
        )],
        false,
    );
    assert_eq!(
        post_whatsapp(&app, &revoke, Some(&sign(&revoke)))
            .await
            .status,
        200
    );
    let check = app
        .check_with_evidence("+15550783881", "+16505551234")
        .await;
    assert_eq!(check.state, ConsentState::Denied as i32);
    assert_eq!(check.evidence.unwrap().response_source, "automatic");
}

#[tokio::test]
async fn a_meta_batch_with_one_bad_reply_stores_none_of_them() {
    let app = spawn_app().await;
    let batch = envelope(
        vec![
            reply("wamid.ok", "16505551234", "accept", true, "user_action"),
            reply("wamid.bad", "16505559999", "perhaps", true, "user_action"),
        ],
        false,
    );
    let answer = post_whatsapp(&app, &batch, Some(&sign(&batch))).await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    let field = answer.body["field"].as_str().unwrap();
    assert!(
        field.ends_with("messages[1].interactive.call_permission_reply.response"),
        "{field}"
    );
    nothing_stored(&app, "+15550783881", "+16505551234").await;
    nothing_stored(&app, "+15550783881", "+16505559999").await;
}

#[tokio::test]
async fn hostile_meta_bodies_are_refused_with_the_right_status_and_store_nothing() {
    let app = spawn_app().await;
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(70 * 1024));
    let bad_phone = envelope(
        vec![reply("wamid.p", "12ab", "accept", true, "user_action")],
        false,
    );
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, u16);
    let cases: Vec<Case> = vec![
        (
            "too large",
            huge.clone(),
            vec![("content-type", "application/json".into())],
            413,
        ),
        (
            "wrong content type",
            "{}".into(),
            vec![("content-type", "text/plain".into())],
            415,
        ),
        (
            "invalid json",
            "{nope".into(),
            vec![("content-type", "application/json".into())],
            400,
        ),
        (
            "bad phone",
            bad_phone.clone(),
            vec![("content-type", "application/json".into())],
            422,
        ),
    ];
    for (name, body, mut headers, status) in cases {
        headers.push(("x-hub-signature-256", sign(&body)));
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = app.request("POST", "/webhooks/whatsapp", &h, body).await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.body);
    }
    nothing_stored(&app, "+15550783881", "+16505551234").await;
    let metrics = crate::metrics::scrape(&app).await;
    for outcome in [
        "body_too_large",
        "unsupported_media_type",
        "invalid_json",
        "invalid_field",
    ] {
        let series =
            format!("callgate_webhooks_total{{route=\"whatsapp\",outcome=\"{outcome}\"}} 1");
        assert!(metrics.contains(&series), "missing {series}");
    }
}

#[tokio::test]
async fn every_refusal_is_logged_once_with_its_reason_and_never_the_secret_or_body() {
    let process =
        crate::process::CallgateProcess::start(&[("CALLGATE_WEBHOOK_TOKENS", TOKEN)]).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    let secret_looking = "Bearer presented-secret-value-9";
    let wrong = api
        .request(
            "POST",
            "/webhooks/doubletick",
            &[JSON, ("authorization", secret_looking)],
            body(),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let marker = "UNIQUE-BODY-MARKER-5521";
    let bad = format!("{{\"from\":\"{marker}\"}}");
    assert_eq!(
        api.request("POST", "/webhooks/doubletick", &[JSON, AUTH], bad)
            .await
            .status,
        422
    );
    let log = process
        .log_when(Duration::from_secs(5), |log| {
            log.matches("request refused").count() >= 2
        })
        .await;
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(
        refusals[0].contains("401") && refusals[0].contains("not valid"),
        "{}",
        refusals[0]
    );
    assert!(
        refusals[1].contains("422") && refusals[1].contains("from"),
        "{}",
        refusals[1]
    );
    for leak in [TOKEN, "presented-secret-value-9", marker, "9876543210"] {
        assert!(!log.contains(leak), "{leak} reached the log:\n{log}");
    }
}

/// Each request runs in one `http` span naming its route and method (never a phone number),
/// and the port's log lines about it carry that span.
#[tokio::test]
async fn log_lines_about_a_request_carry_its_http_span_and_no_phone_number() {
    let process =
        crate::process::CallgateProcess::start(&[("CALLGATE_WEBHOOK_TOKENS", TOKEN)]).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    let good = doubletick(
        BUSINESS,
        CUSTOMER,
        "m-span",
        Utc::now(),
        "accept",
        Some(true),
    );
    let refused = api
        .request("POST", "/webhooks/doubletick", &[JSON], good.clone())
        .await;
    assert_eq!(refused.status, 401);
    assert_eq!(api.post_doubletick(good).await.status, 200);
    let log = process
        .log_when(Duration::from_secs(5), |log| {
            log.contains("request refused") && log.contains("decision recorded")
        })
        .await;
    for message in ["request refused", "decision recorded"] {
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"));
        let span = &line["span"];
        assert_eq!(span["name"], "http", "{line}");
        assert_eq!(span["route"], "/webhooks/doubletick", "{line}");
        assert_eq!(span["method"], "POST", "{line}");
    }
    for number in ["9876543210", "9000000000"] {
        assert!(!log.contains(number), "{number} reached the log:\n{log}");
    }
}
