//! Issue 9, points 1, 2 and 6, over real sockets against both stores: a sender's dates cannot
//! outrank a real decision, duplicates are recognised by the delivery (a redelivery with another
//! answer is a 409 that stores nothing), and evidence is bounded and read in pages.
//!
//! Each test runs against the in-memory store and against a real `redis-server`; lines marked
//! `new-api` use fields this issue added to the proto.

use std::sync::Arc;
use std::time::Duration;

use callgate::pb::{self, ConsentState};
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::store::{ConsentStore, Cursor, StreamId};
use chrono::{DateTime, Utc};

use crate::helpers::*;
use crate::redis_harness::RedisServer;

/// The store under test: in memory, or Redis (the server lives as long as this value).
enum Backend {
    Memory(Arc<dyn ConsentStore>),
    Redis(RedisServer, Arc<dyn ConsentStore>),
}

impl Backend {
    async fn start(redis: bool) -> Self {
        if redis {
            let server = RedisServer::start();
            let store = connect(&server).await;
            Backend::Redis(server, store)
        } else {
            Backend::Memory(memory_store())
        }
    }

    fn store(&self) -> Arc<dyn ConsentStore> {
        match self {
            Backend::Memory(s) | Backend::Redis(_, s) => s.clone(),
        }
    }

    /// Another replica's handle on the same data.
    async fn replica(&self) -> Arc<dyn ConsentStore> {
        match self {
            Backend::Memory(s) => s.clone(),
            Backend::Redis(server, _) => connect(server).await,
        }
    }
}

async fn connect(server: &RedisServer) -> Arc<dyn ConsentStore> {
    Arc::new(
        RedisStore::connect(RedisConfig::new(server.url()))
            .await
            .expect("connect to the test redis-server"),
    )
}

/// `X-Hub-Signature-256` of a body, as Meta signs it with the test app secret.
fn meta_signature(body: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_ms() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

async fn all_events(store: &dyn ConsentStore) -> usize {
    let zero = Cursor::uniform(store.shards(), StreamId::ZERO);
    store
        .read_events(&zero, 1000, Duration::ZERO)
        .await
        .unwrap()
        .len()
}

/// Runs one scenario against both stores.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::start(false).await).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Backend::start(true).await).await;
                }
            )*
        }
    };
}

both_stores!(
    issue9_1_future_dated_grant_cannot_outrank_a_later_denial,
    issue9_1_temporary_grant_stated_to_end_in_year_9999_ends_within_the_window,
    issue9_2_retry_on_a_replica_with_another_window_is_one_decision,
    issue9_2_same_message_id_with_another_answer_is_409_and_stores_nothing,
    issue9_6_oversized_or_control_character_fields_are_refused_naming_the_field,
    issue9_6_history_is_read_in_pages,
);

/// A grant dated ten minutes ahead arrives first; the customer's denial made now must win.
async fn issue9_1_future_dated_grant_cannot_outrank_a_later_denial(b: Backend) {
    let app = spawn_app_with(test_config(), b.store()).await;
    let ahead = now_ms() + chrono::Duration::minutes(10);
    let grant = doubletick(BUSINESS, CUSTOMER, "g", ahead, "accept", Some(true));
    let answer = app.post_doubletick(grant).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(
        app.state(BUSINESS, CUSTOMER).await,
        ConsentState::GrantedPermanent
    );

    let deny = doubletick(BUSINESS, CUSTOMER, "d", now_ms(), "reject", None);
    let answer = app.post_doubletick(deny).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.body["decisions"][0]["outcome"], "applied");
    let check = app.check(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::Denied as i32);
    assert!(!check.allowed);

    // The grant was ordered at its arrival; what the sender said is kept as evidence.
    let history = app.history(BUSINESS, CUSTOMER).await;
    assert_eq!(history.len(), 2);
    let g = &history[0];
    assert!(g.decided_at.unwrap().seconds < ahead.timestamp() - 300);
    let stated = g.evidence.as_ref().unwrap().stated_decided_at.unwrap(); // new-api
    assert_eq!(stated.seconds, ahead.timestamp()); // new-api
}

/// A temporary grant stated to last until year 9999 ends within the configured window.
async fn issue9_1_temporary_grant_stated_to_end_in_year_9999_ends_within_the_window(b: Backend) {
    let app = spawn_app_with(test_config(), b.store()).await;
    let t = now_ms();
    let mut body: serde_json::Value = serde_json::from_str(&doubletick(
        BUSINESS,
        CUSTOMER,
        "m",
        t,
        "accept",
        Some(false),
    ))
    .unwrap();
    body["expirationTimestamp"] = 253_402_300_799i64.into();
    let answer = app.post_doubletick(body.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let check = app.check_with_evidence(BUSINESS, CUSTOMER).await;
    assert_eq!(check.state, ConsentState::GrantedTemporary as i32);
    let week = 7 * 24 * 3600;
    assert_eq!(check.expires_at.unwrap().seconds, t.timestamp() + week);
    let evidence = check.evidence.unwrap();
    assert_eq!(evidence.stated_expires_at.unwrap().seconds, 253_402_300_799); // new-api
}

/// The same "Allow for 7 Days" (no expirationTimestamp) delivered to two replicas with
/// different CALLGATE_TEMPORARY_GRANT_SECS is one decision with one GRANTED event.
async fn issue9_2_retry_on_a_replica_with_another_window_is_one_decision(b: Backend) {
    let a = spawn_app_with(test_config(), b.store()).await;
    let mut other = test_config();
    other.temporary_grant = Duration::from_secs(24 * 3600);
    let b2 = spawn_app_with(other, b.replica().await).await;
    let body = doubletick(BUSINESS, CUSTOMER, "wamid.retry", now_ms(), "accept", None);
    let first = a.post_doubletick(body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(first.body["decisions"][0]["outcome"], "applied");
    let retry = b2.post_doubletick(body).await;
    assert_eq!(retry.status, 200, "{:?}", retry.body);
    assert_eq!(retry.body["decisions"][0]["outcome"], "duplicate");
    assert_eq!(a.history(BUSINESS, CUSTOMER).await.len(), 1);
    assert_eq!(all_events(&*b.store()).await, 1, "one GRANTED event");
}

/// The same message id with another answer: 409, a JSON error, nothing stored, counted.
async fn issue9_2_same_message_id_with_another_answer_is_409_and_stores_nothing(b: Backend) {
    let app = spawn_app_with(test_config(), b.store()).await;
    let t = now_ms();
    let grant = doubletick(BUSINESS, CUSTOMER, "wamid.same", t, "accept", Some(true));
    assert_eq!(app.post_doubletick(grant.clone()).await.status, 200);
    let deny = doubletick(BUSINESS, CUSTOMER, "wamid.same", t, "reject", None);
    let answer = app.post_doubletick(deny).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(answer.body["error"], "conflict");
    let message = answer.body["message"].as_str().unwrap();
    assert!(message.contains("wamid.same"), "{message}");
    assert!(
        !message.contains("9876543210"),
        "no phone number: {message}"
    );
    assert_eq!(
        app.state(BUSINESS, CUSTOMER).await,
        ConsentState::GrantedPermanent
    );
    assert_eq!(app.history(BUSINESS, CUSTOMER).await.len(), 1);
    // The original is still a plain duplicate.
    let again = app.post_doubletick(grant).await;
    assert_eq!(again.body["decisions"][0]["outcome"], "duplicate");

    // Meta: a batch whose second reply conflicts stores nothing, not even its new first reply.
    let wa_reply = |id: &str, response: &str| {
        serde_json::json!({
            "from": "16505551234", "id": id, "timestamp": t.timestamp().to_string(),
            "type": "interactive",
            "interactive": { "type": "call_permission_reply",
                "call_permission_reply": { "response": response, "is_permanent": true } }
        })
    };
    let envelope = |messages: Vec<serde_json::Value>| {
        serde_json::json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1",
            "changes": [{ "field": "messages", "value": {
                "metadata": { "display_phone_number": "15550783881" },
                "messages": messages } }] }] })
        .to_string()
    };
    let post = |body: String| {
        let signature = meta_signature(&body);
        let app = &app;
        async move {
            app.request(
                "POST",
                "/webhooks/whatsapp",
                &[JSON, ("x-hub-signature-256", signature.as_str())],
                body,
            )
            .await
        }
    };
    let first = post(envelope(vec![wa_reply("wamid.w1", "accept")])).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let batch = envelope(vec![
        wa_reply("wamid.w2", "reject"),
        wa_reply("wamid.w1", "reject"),
    ]);
    let answer = post(batch).await;
    assert_eq!(answer.status, 409, "{:?}", answer.body);
    assert_eq!(
        app.state("+15550783881", "+16505551234").await,
        ConsentState::GrantedPermanent
    );
    assert_eq!(app.history("+15550783881", "+16505551234").await.len(), 1);

    let metrics = String::from_utf8(app.get_raw("/metrics").await.body.to_vec()).unwrap();
    for route in ["doubletick", "whatsapp"] {
        let line = format!("callgate_webhooks_total{{route=\"{route}\",outcome=\"conflict\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}

/// Over-long evidence strings and control characters are refused with 422 naming the field.
async fn issue9_6_oversized_or_control_character_fields_are_refused_naming_the_field(b: Backend) {
    let app = spawn_app_with(test_config(), b.store()).await;
    let base = || -> serde_json::Value {
        serde_json::from_str(&doubletick(
            BUSINESS,
            CUSTOMER,
            "m",
            now_ms(),
            "accept",
            Some(true),
        ))
        .unwrap()
    };
    let cases = [
        ("messageId", "x".repeat(60 * 1024)),
        ("messageId", "x".repeat(257)),
        (
            "messageId",
            "m1\n{\"level\":\"INFO\",\"msg\":\"forged\"}".to_owned(),
        ),
        ("pairedMessageId", "p\r\n".to_owned()),
        ("dtCustomerId", "c".repeat(257)),
        ("responseSource", "r".repeat(65)),
    ];
    for (field, value) in cases {
        let mut body = base();
        body[field] = value.into();
        let answer = app.post_doubletick(body.to_string()).await;
        assert_eq!(answer.status, 422, "{field}: {:?}", answer.body);
        assert_eq!(answer.body["field"], field);
    }
    assert!(app.history(BUSINESS, CUSTOMER).await.is_empty());
    // 256 bytes is the documented limit, and accepted.
    let mut body = base();
    body["messageId"] = "x".repeat(256).into();
    assert_eq!(app.post_doubletick(body.to_string()).await.status, 200);

    // Meta's message id, with its full path.
    let mut wa: serde_json::Value =
        serde_json::from_str(&fixture("whatsapp/accept-temporary.json")).unwrap();
    wa["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = "wamid.x\nforged".into();
    let wa = wa.to_string();
    let signature = meta_signature(&wa);
    let answer = app
        .request(
            "POST",
            "/webhooks/whatsapp",
            &[JSON, ("x-hub-signature-256", signature.as_str())],
            wa,
        )
        .await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    assert_eq!(
        answer.body["field"],
        "entry[0].changes[0].value.messages[0].id"
    );
}

/// GetConsentHistory pages: default and maximum page size, tokens, arrival order.
async fn issue9_6_history_is_read_in_pages(b: Backend) {
    let app = spawn_app_with(test_config(), b.store()).await;
    let t = now_ms();
    let n = 250;
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let decisions: Vec<_> = chunk
            .iter()
            .map(|&i| decision(i, t + chrono::Duration::milliseconds(i as i64)))
            .collect();
        app.store.record(&decisions, now_ms()).await.unwrap();
    }
    let client = app.grpc().await;
    let page = |size: i32, token: String| {
        let req = pb::GetConsentHistoryRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            page_size: size,   // new-api
            page_token: token, // new-api
        };
        let mut client = client.clone();
        async move { client.get_consent_history(req).await }
    };
    // The default page is 100 entries.
    let first = page(0, String::new()).await.unwrap().into_inner();
    assert_eq!(first.entries.len(), 100);
    assert!(!first.next_page_token.is_empty()); // new-api
    // Pages of 100 walk the whole history once, in arrival order.
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let p = page(100, token).await.unwrap().into_inner();
        seen.extend(
            p.entries
                .into_iter()
                .map(|e| e.evidence.unwrap().message_id),
        );
        token = p.next_page_token; // new-api
        if token.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    // Above the maximum is the maximum (here: everything, and no next page).
    let all = page(5000, String::new()).await.unwrap().into_inner();
    assert_eq!(all.entries.len(), n);
    assert!(all.next_page_token.is_empty());
    // Bad requests are refused.
    for (size, token) in [
        (-1, String::new()),
        (10, "bogus".to_owned()),
        (10, "h1.18446744073709551615".to_owned()),
    ] {
        let err = page(size, token).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
}

fn decision(i: usize, t: DateTime<Utc>) -> callgate::domain::Decision {
    use callgate::domain::*;
    let choice = if i.is_multiple_of(2) {
        Choice::GrantPermanent
    } else {
        Choice::Deny
    };
    Decision {
        pair: Pair::new(
            PhoneNumber::parse(BUSINESS).unwrap(),
            PhoneNumber::parse(CUSTOMER).unwrap(),
        ),
        choice,
        decided_at: t,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: format!("m{i}"),
            paired_message_id: "p".repeat(256),
            response_source: "user_initiated".into(),
            sender_customer_id: "c".repeat(256),
            body_sha256: [0xab; 32],
            stated_at: t,
            stated_expires_at: None,
        },
        attribution: None,
        customer_name: None,
    }
}

/// Issue 9.2: a conflict is logged once, with the sender and message id and no phone number.
#[tokio::test]
async fn issue9_2_a_conflict_is_logged_without_phone_numbers() {
    let process =
        crate::process::CallgateProcess::start(&[("CALLGATE_WEBHOOK_TOKENS", TOKEN)]).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    let t = now_ms();
    let grant = doubletick(BUSINESS, CUSTOMER, "wamid.logged", t, "accept", Some(true));
    assert_eq!(api.post_doubletick(grant).await.status, 200);
    let deny = doubletick(BUSINESS, CUSTOMER, "wamid.logged", t, "reject", None);
    assert_eq!(api.post_doubletick(deny).await.status, 409);
    // The log arrives through a pipe: wait for the line (bounded), not a fixed time.
    let mut lines = Vec::new();
    for _ in 0..250 {
        lines = process
            .log_text()
            .lines()
            .filter(|l| l.contains("another answer"))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 1, "{}", process.log_text());
    let line = &lines[0];
    assert!(
        line.contains("wamid.logged") && line.contains("409"),
        "{line}"
    );
    for digits in ["9876543210", "9000000000"] {
        assert!(!line.contains(digits), "phone number in {line}");
    }
}
