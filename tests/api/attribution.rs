//! issue 13 (attribution) over real sockets: teams register the consent requests they send
//! (`POST /v1/consent-requests` and `RegisterConsentRequest`), customers answer (DoubleTick and
//! Meta formats, some before their registration), and each team's StreamGrants subscriber,
//! check answer and history carry the team, campaign, labels and customer name. The request
//! budget refuses a second request in 24 h and a third in 7 days, saying when the next one
//! fits. On the memory store and a real `redis-server`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tonic::Streaming;

use callgate::domain::UnattributedPolicy;
use callgate::pb;
use callgate::store::ConsentStore;
use callgate::store::redis::{RedisConfig, RedisStore};

use crate::helpers::{
    API_KEY, APP_SECRET, AUTH, BUSINESS, JSON, TestApp, memory_store, spawn_app_with, test_config,
};
use crate::redis_harness::RedisServer;

const CRM_KEY: &str = "test-crm-key-51ab";
const ASHA: &str = "+919876500001";
const BILAL: &str = "+919876500002";
const CHEN: &str = "+919876500003";

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn app(store: Arc<dyn ConsentStore>, policy: UnattributedPolicy) -> TestApp {
    let mut config = test_config();
    config.attribution.unattributed = policy;
    spawn_app_with(config, store).await
}

async fn redis_store(server: &RedisServer) -> Arc<dyn ConsentStore> {
    let mut config = RedisConfig::new(server.url());
    config.timeout = Duration::from_secs(2);
    Arc::new(RedisStore::connect(config).await.expect("connect"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `POST /v1/consent-requests` with `key`.
async fn register_http(app: &TestApp, key: &str, body: &Value) -> crate::helpers::Answer {
    let auth = bearer(key);
    app.request(
        "POST",
        "/v1/consent-requests",
        &[JSON, ("authorization", auth.as_str())],
        body.to_string(),
    )
    .await
}

fn registration(customer: &str, id: &str, team: &str, sent_at: DateTime<Utc>) -> Value {
    json!({
        "business_number": BUSINESS,
        "customer_number": customer,
        "request_message_id": id,
        "team": team,
        "campaign": format!("{team}-q1"),
        "labels": { "tier": "gold" },
        "sent_at": rfc3339(sent_at),
    })
}

/// A DoubleTick reply to the request `paired`.
fn doubletick_reply(
    customer: &str,
    id: &str,
    paired: &str,
    response: &str,
    at: DateTime<Utc>,
) -> String {
    json!({
        "from": customer, "to": BUSINESS, "receivedAt": rfc3339(at), "messageId": id,
        "pairedMessageId": paired, "response": response, "responseSource": "user_initiated",
        "isPermanent": true, "dtCustomerId": "customer_x",
    })
    .to_string()
}

/// A Meta Cloud API reply to the request `paired`, with the customer's profile name.
fn meta_reply(customer: &str, name: &str, id: &str, paired: &str, at: DateTime<Utc>) -> String {
    let digits = customer.trim_start_matches('+');
    json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": BUSINESS.trim_start_matches('+'),
                          "phone_number_id": "106540352242922" },
            "contacts": [{ "profile": { "name": name }, "wa_id": digits }],
            "messages": [{
                "context": { "from": BUSINESS.trim_start_matches('+'), "id": paired },
                "from": digits, "id": id, "timestamp": at.timestamp().to_string(),
                "type": "interactive",
                "interactive": { "type": "call_permission_reply", "call_permission_reply": {
                    "response": "accept", "is_permanent": true,
                    "response_source": "user_action" } } }] } }] }]
    })
    .to_string()
}

fn meta_signature(body: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post_meta(app: &TestApp, body: &str) {
    let signature = meta_signature(body);
    let answer = app
        .request(
            "POST",
            "/webhooks/whatsapp",
            &[JSON, ("x-hub-signature-256", signature.as_str())],
            body.to_owned(),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn post_doubletick(app: &TestApp, body: String) {
    let answer = app
        .request("POST", "/webhooks/doubletick", &[JSON, AUTH], body)
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn team_stream(app: &TestApp, team: &str) -> Streaming<pb::ConsentEvent> {
    app.stream(pb::StreamGrantsRequest {
        business_numbers: vec![BUSINESS.into()],
        include_denials: true,
        teams: vec![team.into()],
        ..Default::default()
    })
    .await
}

/// Events of a stream up to and including the first denial (checkpoints skipped), bounded.
async fn until_denial(s: &mut Streaming<pb::ConsentEvent>) -> Vec<pb::ConsentEvent> {
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("an event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if e.kind == pb::EventKind::Checkpoint as i32 {
            continue;
        }
        let denial = e.kind == pb::EventKind::Denied as i32;
        out.push(e);
        if denial {
            return out;
        }
        assert!(out.len() < 20, "too many events: {out:?}");
    }
}

/// The seed's story: three teams, three customers, replies in both formats (one before its
/// registration), each team's subscriber gets exactly its grants with the customer's name,
/// and a denial reaches every team.
async fn teams_story(store: Arc<dyn ConsentStore>) {
    let app = app(store, UnattributedPolicy::NoTeam).await;
    let mut premium = team_stream(&app, "premium").await;
    let mut retention = team_stream(&app, "retention").await;
    let mut acquisition = team_stream(&app, "acquisition").await;
    let now = app.clock.now();

    // Premium registers over HTTP (with the name its CRM knows); Asha answers on DoubleTick.
    let mut asha = registration(ASHA, "wamid.req-asha", "premium", now);
    asha["customer_name"] = json!("Asha Rao");
    let answer = register_http(&app, API_KEY, &asha).await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    assert_eq!(answer.body["registered"], true);
    assert_eq!(answer.body["budget"]["allowed"], false);
    post_doubletick(
        &app,
        doubletick_reply(ASHA, "dt-1", "wamid.req-asha", "accept", now),
    )
    .await;

    // Bilal answers on WhatsApp BEFORE retention's CRM registers the request (over gRPC).
    post_meta(
        &app,
        &meta_reply(BILAL, "Bilal Khan", "wamid.r-bilal", "wamid.req-bilal", now),
    )
    .await;
    let registered = app
        .grpc()
        .await
        .register_consent_request(pb::RegisterConsentRequestRequest {
            business_number: BUSINESS.into(),
            customer_number: BILAL.into(),
            request_message_id: "wamid.req-bilal".into(),
            team: "retention".into(),
            campaign: "retention-q1".into(),
            labels: HashMap::from([("tier".into(), "silver".into())]),
            sent_at: Some(callgate::grpc_api::timestamp(
                now - chrono::Duration::seconds(30),
            )),
            customer_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(registered.registered);
    assert_eq!(registered.attributed_replies, 1);

    // Acquisition: the CRM's own key (register scope only) over HTTP; Chen answers on Meta.
    let answer = register_http(
        &app,
        CRM_KEY,
        &registration(CHEN, "wamid.req-chen", "acquisition", now),
    )
    .await;
    assert_eq!(answer.status, 201, "{:?}", answer.body);
    post_meta(
        &app,
        &meta_reply(CHEN, "Chen Wei", "wamid.r-chen", "wamid.req-chen", now),
    )
    .await;

    // Asha says no, to a later request nobody registered: every team hears it.
    let later = now + chrono::Duration::seconds(5);
    post_doubletick(
        &app,
        doubletick_reply(ASHA, "dt-2", "wamid.other", "reject", later),
    )
    .await;

    let grants = |events: &[pb::ConsentEvent]| -> Vec<(String, String, String, bool)> {
        events
            .iter()
            .filter(|e| e.kind == pb::EventKind::Granted as i32)
            .map(|e| {
                (
                    e.customer_number.clone(),
                    e.team.clone(),
                    e.customer_name.clone(),
                    e.late_attribution,
                )
            })
            .collect()
    };
    let p = until_denial(&mut premium).await;
    assert_eq!(
        grants(&p),
        vec![(ASHA.into(), "premium".into(), "Asha Rao".into(), false)]
    );
    assert_eq!(p[0].campaign, "premium-q1");
    assert_eq!(p[0].labels.get("tier").map(String::as_str), Some("gold"));
    let r = until_denial(&mut retention).await;
    assert_eq!(
        grants(&r),
        vec![(BILAL.into(), "retention".into(), "Bilal Khan".into(), true)]
    );
    assert_eq!(r[0].labels.get("tier").map(String::as_str), Some("silver"));
    let a = until_denial(&mut acquisition).await;
    assert_eq!(
        grants(&a),
        vec![(CHEN.into(), "acquisition".into(), "Chen Wei".into(), false)]
    );
    for events in [&p, &r, &a] {
        let denial = events.last().unwrap();
        assert_eq!(denial.customer_number, ASHA);
        assert_eq!(denial.team, "", "the denial answered no registered request");
    }

    // The check answer and the history carry the attribution.
    let check = app.check(BUSINESS, BILAL).await;
    assert!(check.allowed);
    assert_eq!(
        (
            check.team.as_str(),
            check.campaign.as_str(),
            check.customer_name.as_str()
        ),
        ("retention", "retention-q1", "Bilal Khan")
    );
    let history = app.history(BUSINESS, ASHA).await;
    assert_eq!(history.len(), 2);
    assert_eq!(
        (history[0].team.as_str(), history[0].customer_name.as_str()),
        ("premium", "Asha Rao")
    );
    assert_eq!(history[1].team, "");
    assert!(!app.check(BUSINESS, ASHA).await.allowed);
    app.stop().await;
}

#[tokio::test]
async fn issue13_teams_stories_on_the_memory_store() {
    teams_story(memory_store()).await;
}

#[tokio::test]
async fn issue13_teams_stories_on_redis() {
    let server = RedisServer::start();
    teams_story(redis_store(&server).await).await;
}

/// Under the default policy (`all_teams`) an unattributed grant reaches a team's stream;
/// labels and campaigns filter attributed grants.
#[tokio::test]
async fn issue13_unattributed_grants_reach_every_team_by_default_and_filters_combine() {
    let app = app(memory_store(), UnattributedPolicy::AllTeams).await;
    let mut gold_premium = app
        .stream(pb::StreamGrantsRequest {
            include_denials: true,
            teams: vec!["premium".into()],
            labels: HashMap::from([("tier".into(), "gold".into())]),
            ..Default::default()
        })
        .await;
    let now = app.clock.now();
    // Premium, but silver: filtered out.
    let mut silver = registration(ASHA, "req-silver", "premium", now);
    silver["labels"] = json!({ "tier": "silver" });
    assert_eq!(register_http(&app, API_KEY, &silver).await.status, 201);
    post_doubletick(
        &app,
        doubletick_reply(ASHA, "m1", "req-silver", "accept", now),
    )
    .await;
    // Unattributed: passes under all_teams.
    post_doubletick(
        &app,
        doubletick_reply(BILAL, "m2", "nobody-registered", "accept", now),
    )
    .await;
    // Premium gold: passes.
    assert_eq!(
        register_http(
            &app,
            API_KEY,
            &registration(CHEN, "req-gold", "premium", now)
        )
        .await
        .status,
        201
    );
    post_doubletick(
        &app,
        doubletick_reply(CHEN, "m3", "req-gold", "accept", now),
    )
    .await;
    post_doubletick(
        &app,
        doubletick_reply(
            CHEN,
            "m4",
            "x",
            "reject",
            now + chrono::Duration::seconds(1),
        ),
    )
    .await;
    let events = until_denial(&mut gold_premium).await;
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.customer_number.as_str(), e.team.as_str()))
        .collect();
    assert_eq!(got, vec![(BILAL, ""), (CHEN, "premium"), (CHEN, "")]);
    app.stop().await;
}

/// A second request in 24 h and a third in 7 days are refused with the time the next one
/// fits: over HTTP (429 + `next_allowed_at`) and gRPC (RESOURCE_EXHAUSTED with the answer in
/// the details and a trailer); CanRequestConsent says the same.
async fn budget_story(store: Arc<dyn ConsentStore>) {
    let app = app(store, UnattributedPolicy::AllTeams).await;
    let now = app.clock.now();
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    let hour = chrono::Duration::hours(1);
    let day = chrono::Duration::days(1);

    // Second in 24 h.
    let first = now - hour;
    let ok = register_http(&app, API_KEY, &registration(ASHA, "r1", "premium", first)).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
    let refused = register_http(&app, API_KEY, &registration(ASHA, "r2", "retention", now)).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.body["error"], "request_budget_exhausted");
    let next: DateTime<Utc> = refused.body["next_allowed_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ms(next), ms(first + day));
    let mut api = app.grpc().await;
    let budget = api
        .can_request_consent(pb::CanRequestConsentRequest {
            business_number: BUSINESS.into(),
            customer_number: ASHA.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!budget.allowed);
    assert_eq!(
        budget.next_allowed_at.unwrap().seconds,
        (first + day).timestamp()
    );
    assert_eq!(
        budget
            .limits
            .iter()
            .map(|l| (l.max, l.used))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)]
    );

    // Third in 7 days, over gRPC.
    let register = |id: &str, team: &str, sent: DateTime<Utc>| pb::RegisterConsentRequestRequest {
        business_number: BUSINESS.into(),
        customer_number: BILAL.into(),
        request_message_id: id.into(),
        team: team.into(),
        sent_at: Some(callgate::grpc_api::timestamp(sent)),
        ..Default::default()
    };
    let a = now - day * 3;
    api.register_consent_request(register("a", "premium", a))
        .await
        .unwrap();
    api.register_consent_request(register("b", "retention", now - day - hour))
        .await
        .unwrap();
    let status = api
        .register_consent_request(register("c", "acquisition", now))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let details: pb::CanRequestConsentResponse =
        prost::Message::decode(status.details()).expect("details are the budget");
    assert!(!details.allowed);
    assert_eq!(
        details.next_allowed_at.unwrap().seconds,
        (a + day * 7).timestamp()
    );
    let trailer: DateTime<Utc> = status
        .metadata()
        .get("callgate-next-allowed-at")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ms(trailer), ms(a + day * 7));
    // Nothing of the refused request was stored: a reply to it is unattributed.
    post_doubletick(&app, doubletick_reply(BILAL, "m", "c", "accept", now)).await;
    assert_eq!(app.check(BUSINESS, BILAL).await.team, "");
    app.stop().await;
}

#[tokio::test]
async fn issue13_budget_refusals_on_the_memory_store() {
    budget_story(memory_store()).await;
}

#[tokio::test]
async fn issue13_budget_refusals_on_redis() {
    let server = RedisServer::start();
    budget_story(redis_store(&server).await).await;
}

#[tokio::test]
async fn issue13_bad_registrations_are_refused_naming_the_field_and_store_nothing() {
    let app = app(memory_store(), UnattributedPolicy::AllTeams).await;
    let now = app.clock.now();
    let good = registration(ASHA, "req", "premium", now);
    let with = |key: &str, value: Value| {
        let mut v = good.clone();
        v[key] = value;
        v
    };
    let without = |key: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(key);
        v
    };
    let labels: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (without("team"), "team"),
        (with("team", json!("")), "team"),
        (without("sent_at"), "sent_at"),
        (with("sent_at", json!("yesterday")), "sent_at"),
        (
            with("sent_at", json!(rfc3339(now + chrono::Duration::hours(1)))),
            "sent_at",
        ),
        (with("customer_number", json!("12")), "customer_number"),
        (with("labels", Value::Object(labels)), "labels"),
        (with("labels", json!({ "tier": 5 })), "labels[tier]"),
        (with("campaign", json!("c".repeat(129))), "campaign"),
        (
            with("request_message_id", json!("a\nb")),
            "request_message_id",
        ),
        (with("colour", json!("red")), "colour"),
    ];
    for (body, field) in cases {
        let answer = register_http(&app, API_KEY, &body).await;
        assert_eq!(answer.status, 422, "{field}: {:?}", answer.body);
        assert_eq!(answer.body["field"], field, "{:?}", answer.body);
    }
    // Keys: none, unknown, and a CRM key for another business.
    let no_key = app
        .request("POST", "/v1/consent-requests", &[JSON], good.to_string())
        .await;
    assert_eq!(no_key.status, 401);
    assert_eq!(register_http(&app, "wrong-key", &good).await.status, 401);
    let other = with("business_number", json!("+919111111111"));
    assert_eq!(register_http(&app, CRM_KEY, &other).await.status, 403);
    // None of those stored anything: the budget is untouched, so this one fits.
    assert_eq!(register_http(&app, CRM_KEY, &good).await.status, 201);
    // A retry is a 200; the same id with another team a 409.
    assert_eq!(register_http(&app, CRM_KEY, &good).await.status, 200);
    let stolen = with("team", json!("retention"));
    let conflict = register_http(&app, CRM_KEY, &stolen).await;
    assert_eq!(conflict.status, 409, "{:?}", conflict.body);
    assert_eq!(conflict.body["field"], "request_message_id");
    // The CRM key reads no consent.
    let status = app
        .grpc_as(Some(CRM_KEY))
        .await
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: BUSINESS.into(),
            customer_number: ASHA.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    app.stop().await;
}

/// The budget frees up as time passes (the app's clock follows tokio's, paused here): a second
/// request fits 24 h after the first, a third 7 days after the first.
#[tokio::test(start_paused = true)]
async fn issue13_the_budget_frees_up_as_the_paused_clock_advances() {
    let app = app(memory_store(), UnattributedPolicy::AllTeams).await;
    let t0 = app.clock.now();
    // A fresh connection for every call: idle connections may be closed while time jumps.
    let register = |id: &'static str, sent: DateTime<Utc>| {
        let app = &app;
        async move {
            app.grpc()
                .await
                .register_consent_request(pb::RegisterConsentRequestRequest {
                    business_number: BUSINESS.into(),
                    customer_number: ASHA.into(),
                    request_message_id: id.into(),
                    team: "premium".into(),
                    sent_at: Some(callgate::grpc_api::timestamp(sent)),
                    ..Default::default()
                })
                .await
        }
    };
    let next_allowed = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let budget: pb::CanRequestConsentResponse =
            prost::Message::decode(status.details()).unwrap();
        budget.next_allowed_at.unwrap().seconds
    };
    let day = chrono::Duration::days(1);
    register("r1", t0).await.unwrap();
    let refused = register("r2", app.clock.now()).await.unwrap_err();
    assert_eq!(next_allowed(refused), (t0 + day).timestamp());

    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let budget = app
        .grpc()
        .await
        .can_request_consent(pb::CanRequestConsentRequest {
            business_number: BUSINESS.into(),
            customer_number: ASHA.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(budget.allowed, "{budget:?}");
    register("r2", app.clock.now()).await.unwrap();
    let refused = register("r3", app.clock.now()).await.unwrap_err();
    assert_eq!(next_allowed(refused), (t0 + day * 7).timestamp());

    tokio::time::advance(Duration::from_secs(6 * 24 * 3600)).await;
    register("r3", app.clock.now()).await.unwrap();
    app.stop().await;
}
