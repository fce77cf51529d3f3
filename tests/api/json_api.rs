//! issue 13: the HTTP port's JSON checks (`POST /v1/check`, `POST /v1/check-batch`) over real
//! sockets, on the memory store and a real `redis-server`: each answer is compared with the
//! gRPC answer for the same pair, errors name their field, and a 50,000-check batch is
//! answered in order, in place, streamed in chunks.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callgate::grpc_api::{auth::key_digest, from_timestamp};
use callgate::json_checks::{CHUNK, MAX_BATCH_BODY, MAX_BATCH_CHECKS, MAX_BATCHES_IN_FLIGHT};
use callgate::pb::{self, check_result};
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::store::{ConsentStore, StoreError};
use chrono::{SecondsFormat, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::intercepted_store::{Hooks, Intercepted, Read};
use crate::redis_harness::RedisServer;

const API_AUTH: (&str, &str) = ("authorization", "Bearer test-api-key-7c1e");
/// A refusal is answered before its body is read, and the server then closes the connection:
/// requests here use a connection each, so the client never reuses one being closed.
const CLOSE: (&str, &str) = ("connection", "close");
/// A business the scoped client below may not see.
const OTHER: &str = "+14155550100";
const SCOPED_KEY: &str = "json-scoped-key-01";
const STREAM_ONLY_KEY: &str = "json-stream-only-02";

/// The test client with every scope, one limited to [`BUSINESS`], and one without `check`.
fn clients_file() -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[[client]]
name = "test-all"
key_sha256 = ["{}"]
scopes = ["check", "stream", "history"]

[[client]]
name = "dialer-one"
key_sha256 = ["{}"]
scopes = ["check"]
businesses = ["{BUSINESS}"]

[[client]]
name = "streamer"
key_sha256 = ["{}"]
scopes = ["stream"]
"#,
        key_digest(API_KEY),
        key_digest(SCOPED_KEY),
        key_digest(STREAM_ONLY_KEY),
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

async fn spawn(store: Arc<dyn ConsentStore>, clients: &tempfile::NamedTempFile) -> TestApp {
    let mut config = test_config();
    config.api_clients_file = Some(clients.path().to_owned());
    spawn_app_with(config, store).await
}

/// These tests compare answers, not latency: a loaded 2-core run must not turn a slow read of
/// a 1,000-pair chunk into an UNAVAILABLE (the conformance suite does the same).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

async fn redis_store(server: &RedisServer) -> Arc<dyn ConsentStore> {
    let mut config = RedisConfig::new(server.url());
    config.timeout = STORE_TIMEOUT;
    Arc::new(RedisStore::connect(config).await.unwrap())
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn post_json(app: &TestApp, path: &str, key: Option<&str>, body: impl Into<Bytes>) -> Answer {
    let auth = key.map(bearer);
    let mut headers = vec![JSON, CLOSE];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    app.request("POST", path, &headers, body).await
}

fn check_body(business: &str, customer: &str) -> String {
    json!({"business_number": business, "customer_number": customer}).to_string()
}

/// Issue 16: a check that asks for the evidence.
fn check_body_with_evidence(business: &str, customer: &str) -> String {
    json!({"business_number": business, "customer_number": customer, "include_evidence": true})
        .to_string()
}

/// The proto JSON form of a gRPC answer, built here independently of the service's renderer.
fn expected_json(r: &pb::CheckCallPermissionResponse) -> Value {
    let ts = |t: &Option<prost_types::Timestamp>| -> Value {
        t.as_ref()
            .map(|t| {
                from_timestamp(t)
                    .unwrap()
                    .to_rfc3339_opts(SecondsFormat::AutoSi, true)
                    .into()
            })
            .unwrap_or(Value::Null)
    };
    let evidence = r.evidence.as_ref().map_or(Value::Null, |e| {
        json!({
            "message_id": e.message_id,
            "paired_message_id": e.paired_message_id,
            "source": e.source,
            "response_source": e.response_source,
            "sender_customer_id": e.sender_customer_id,
            "body_sha256": e.body_sha256,
            "stated_decided_at": ts(&e.stated_decided_at),
            "stated_expires_at": ts(&e.stated_expires_at),
        })
    });
    json!({
        "allowed": r.allowed,
        "state": pb::ConsentState::try_from(r.state).unwrap().as_str_name(),
        "expires_at": ts(&r.expires_at),
        "decided_at": ts(&r.decided_at),
        "evidence": evidence,
        "business_number": r.business_number,
        "customer_number": r.customer_number,
        "team": r.team,
        "campaign": r.campaign,
        "labels": r.labels,
        "customer_name": r.customer_name,
    })
}

/// One customer in each state: (customer, state name).
async fn one_of_each_state(app: &TestApp) -> Vec<(&'static str, &'static str)> {
    let now = Utc::now();
    let eight_days_ago = now - chrono::Duration::days(8);
    let bodies = [
        doubletick(BUSINESS, "+919800000001", "p", now, "accept", Some(true)),
        doubletick(BUSINESS, "+919800000002", "t", now, "accept", Some(false)),
        doubletick(BUSINESS, "+919800000003", "d", now, "reject", None),
        doubletick(
            BUSINESS,
            "+919800000004",
            "e",
            eight_days_ago,
            "accept",
            Some(false),
        ),
    ];
    for body in bodies {
        let answer = app.post_doubletick(body).await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
    }
    vec![
        ("+919800000001", "CONSENT_STATE_GRANTED_PERMANENT"),
        ("+919800000002", "CONSENT_STATE_GRANTED_TEMPORARY"),
        ("+919800000003", "CONSENT_STATE_DENIED"),
        ("+919800000004", "CONSENT_STATE_EXPIRED"),
        ("+919800000005", "CONSENT_STATE_NO_CONSENT"),
    ]
}

async fn each_state_answers_as_grpc_does(store: Arc<dyn ConsentStore>) {
    let clients = clients_file();
    let app = spawn(store, &clients).await;
    for (customer, state) in one_of_each_state(&app).await {
        // Issue 16: no evidence unless asked for.
        let bare = post_json(
            &app,
            "/v1/check",
            Some(API_KEY),
            check_body(BUSINESS, customer),
        )
        .await;
        assert_eq!(bare.status, 200, "{customer}: {:?}", bare.body);
        assert_eq!(bare.body["evidence"], Value::Null, "{customer}");
        assert_eq!(
            bare.body,
            expected_json(&app.check(BUSINESS, customer).await)
        );
        let answer = post_json(
            &app,
            "/v1/check",
            Some(API_KEY),
            check_body_with_evidence(BUSINESS, customer),
        )
        .await;
        assert_eq!(answer.status, 200, "{customer}: {:?}", answer.body);
        assert_eq!(answer.body["state"], state, "{customer}");
        let allowed = state.starts_with("CONSENT_STATE_GRANTED");
        assert_eq!(answer.body["allowed"], allowed, "{customer}");
        assert_eq!(answer.body["customer_number"], customer);
        if state != "CONSENT_STATE_NO_CONSENT" {
            assert_eq!(
                answer.body["evidence"]["source"], "doubletick",
                "{customer}"
            );
        }
        let grpc = app.check_with_evidence(BUSINESS, customer).await;
        assert_eq!(answer.body, expected_json(&grpc), "{customer}");
    }
    // Meta's envelope names the customer: the answer carries the name, as the gRPC one does.
    let meta = fixture("whatsapp/accept-temporary.json");
    let signature = crate::security::sign(&meta);
    let stored = app
        .request(
            "POST",
            "/webhooks/whatsapp",
            &[JSON, ("x-hub-signature-256", signature.as_str())],
            meta,
        )
        .await;
    assert_eq!(stored.status, 200, "{:?}", stored.body);
    let named = post_json(
        &app,
        "/v1/check",
        Some(API_KEY),
        check_body("+15550783881", "+16505551234"),
    )
    .await;
    assert_eq!(
        named.body["customer_name"], "Sheena Nelson",
        "{:?}",
        named.body
    );
    assert_eq!(named.body["team"], "", "unattributed");
    let grpc = app.check("+15550783881", "+16505551234").await;
    assert_eq!(named.body, expected_json(&grpc));
    // Another spelling of the same pair is the same pair.
    let spelled = post_json(
        &app,
        "/v1/check",
        Some(API_KEY),
        check_body("0091 90000-00000", "(+91) 98000 00001"),
    )
    .await;
    assert_eq!(spelled.body["state"], "CONSENT_STATE_GRANTED_PERMANENT");
    assert_eq!(spelled.body["customer_number"], "+919800000001");
    app.stop().await;
}

#[tokio::test]
async fn issue13_json_check_answers_each_state_as_grpc_does_on_memory() {
    each_state_answers_as_grpc_does(memory_store()).await;
}

#[tokio::test]
async fn issue13_json_check_answers_each_state_as_grpc_does_on_redis() {
    let server = RedisServer::start();
    each_state_answers_as_grpc_does(redis_store(&server).await).await;
}

#[tokio::test]
async fn issue13_json_check_errors_are_clear_and_name_the_field() {
    let clients = clients_file();
    let app = spawn(memory_store(), &clients).await;
    let ok = check_body(BUSINESS, CUSTOMER);
    // (path, key, content type json?, body, status, error, field)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        bool,
        String,
        u16,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "/v1/check",
            None,
            true,
            ok.clone(),
            401,
            "unauthorized",
            None,
        ),
        (
            "/v1/check",
            Some("no-such-key"),
            true,
            ok.clone(),
            401,
            "unauthorized",
            None,
        ),
        (
            "/v1/check",
            Some(STREAM_ONLY_KEY),
            true,
            ok.clone(),
            403,
            "forbidden",
            None,
        ),
        (
            "/v1/check-batch",
            None,
            true,
            r#"{"checks":[]}"#.into(),
            401,
            "unauthorized",
            None,
        ),
        (
            "/v1/check-batch",
            Some(STREAM_ONLY_KEY),
            true,
            r#"{"checks":[]}"#.into(),
            403,
            "forbidden",
            None,
        ),
        (
            "/v1/check",
            Some(SCOPED_KEY),
            true,
            check_body(OTHER, CUSTOMER),
            403,
            "forbidden",
            Some("business_number"),
        ),
        (
            "/v1/check",
            Some(API_KEY),
            false,
            ok.clone(),
            415,
            "unsupported_media_type",
            None,
        ),
        (
            "/v1/check",
            Some(API_KEY),
            true,
            r#"{"business_number": "+919000000000",, }"#.into(),
            400,
            "invalid_json",
            None,
        ),
        (
            "/v1/check",
            Some(API_KEY),
            true,
            r#"{"business_number": "+919000000000"}"#.into(),
            422,
            "invalid_field",
            Some("customer_number"),
        ),
        (
            "/v1/check",
            Some(API_KEY),
            true,
            r#"{"business_number": 919000000000, "customer_number": "+919876543210"}"#.into(),
            422,
            "invalid_field",
            Some("business_number"),
        ),
        (
            "/v1/check",
            Some(API_KEY),
            true,
            check_body(BUSINESS, "0987654321"),
            422,
            "invalid_field",
            Some("customer_number"),
        ),
        (
            "/v1/check-batch",
            Some(API_KEY),
            true,
            r#"{"checks": [{"business_number": "+919000000000", "customer": "x"}]}"#.into(),
            422,
            "invalid_field",
            Some("checks[0].customer"),
        ),
        (
            "/v1/check-batch",
            Some(API_KEY),
            true,
            r#"{"checks": [}"#.into(),
            400,
            "invalid_json",
            None,
        ),
    ];
    for (path, key, json, body, status, error, field) in cases {
        let auth = key.map(bearer);
        let mut headers = vec![CLOSE];
        if json {
            headers.push(JSON);
        }
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let answer = app.request("POST", path, &headers, body.clone()).await;
        let what = format!("{path} {key:?} {body}: {:?}", answer.body);
        assert_eq!(answer.status, status, "{what}");
        assert_eq!(answer.body["error"], error, "{what}");
        assert!(answer.body["code"].as_i64().unwrap() > 0, "{what}");
        assert!(
            !answer.body["message"].as_str().unwrap().is_empty(),
            "{what}"
        );
        match field {
            Some(f) => assert_eq!(answer.body["field"], f, "{what}"),
            None => assert!(answer.body.get("field").is_none(), "{what}"),
        }
        if error == "invalid_json" {
            let message = answer.body["message"].as_str().unwrap();
            assert!(message.contains("line 1 column"), "{what}");
        }
    }

    // A batch: another business's pair and a bad number are errors in place.
    let batch = json!({"checks": [
        {"business_number": BUSINESS, "customer_number": CUSTOMER},
        {"business_number": OTHER, "customer_number": CUSTOMER},
        {"business_number": BUSINESS, "customer_number": "12"},
    ]});
    let answer = post_json(&app, "/v1/check-batch", Some(SCOPED_KEY), batch.to_string()).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let results = answer.body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["answer"]["state"], "CONSENT_STATE_NO_CONSENT");
    assert_eq!(
        results[1]["error"]["code"],
        tonic::Code::PermissionDenied as i32
    );
    assert_eq!(
        results[2]["error"]["code"],
        tonic::Code::InvalidArgument as i32
    );
    assert!(
        results[2]["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("customer_number: "),
        "{results:?}"
    );

    // Limits: one check too many, and a body over the cap (refused from its Content-Length).
    let one = check_body(BUSINESS, CUSTOMER);
    let too_many = format!(
        r#"{{"checks":[{}]}}"#,
        vec![one.as_str(); MAX_BATCH_CHECKS + 1].join(",")
    );
    let answer = post_json(&app, "/v1/check-batch", Some(API_KEY), too_many).await;
    assert_eq!(answer.status, 422, "{:?}", answer.body);
    assert_eq!(answer.body["error"], "too_many_checks");
    assert_eq!(answer.body["field"], "checks");
    let (status, body) = declare_body_of(&app, "/v1/check-batch", MAX_BATCH_BODY + 1).await;
    assert_eq!(status, 413, "{body:?}");
    assert_eq!(body["error"], "body_too_large");

    let metrics = String::from_utf8(app.get_raw("/metrics").await.body.to_vec()).unwrap();
    for needle in [
        "callgate_http_api_requests_total{route=\"check\",outcome=\"unauthorized\"} 2",
        "callgate_http_api_requests_total{route=\"check\",outcome=\"invalid_field\"} 3",
        "callgate_http_api_requests_total{route=\"check_batch\",outcome=\"answered\"} 1",
        "callgate_http_api_requests_total{route=\"check_batch\",outcome=\"too_many_checks\"} 1",
        "callgate_api_refusals_total{client=\"dialer-one\",reason=\"other_business\"} 2",
        "callgate_api_refusals_total{client=\"streamer\",reason=\"missing_scope\"} 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
    app.stop().await;
}

/// Sends a request head declaring a JSON body of `length` bytes, and none of the body: the
/// answer must come from the head alone.
async fn declare_body_of(app: &TestApp, path: &str, length: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(app.http).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\n{}: {}\r\ncontent-type: application/json\r\n\
         content-length: {length}\r\n\r\n",
        API_AUTH.0, API_AUTH.1
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let text = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let want: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= want || n == 0 {
                    return text;
                }
            }
            assert!(n > 0, "connection closed before an answer: {text}");
        }
    })
    .await
    .expect("no answer to the request head");
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A streamed answer: status, content type, how many body frames it came in, the body.
struct Streamed {
    status: u16,
    chunked: bool,
    frames: usize,
    body: Value,
}

async fn post_streamed(app: &TestApp, path: &str, body: String) -> Streamed {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::post(format!("http://{}{path}", app.http))
        .header(JSON.0, JSON.1)
        .header(API_AUTH.0, API_AUTH.1)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let chunked = res
        .headers()
        .get(http::header::TRANSFER_ENCODING)
        .is_some_and(|v| v == "chunked")
        && res.headers().get(http::header::CONTENT_LENGTH).is_none();
    let mut body = res.into_body();
    let (mut frames, mut bytes) = (0, Vec::new());
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            frames += 1;
            bytes.extend_from_slice(&data);
        }
    }
    Streamed {
        status,
        chunked,
        frames,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A pair's customer number for the batch below.
fn customer(i: usize) -> String {
    format!("+9197{i:08}")
}

/// Where the batch below carries an invalid number, and which one.
fn invalid_at(i: usize) -> Option<&'static str> {
    match i {
        0 => Some("not a number"),
        49_999 => Some(""),
        i if i % 997 == 3 => Some("0091 0"),
        _ => None,
    }
}

async fn a_full_batch_answers_in_order_and_in_place(store: Arc<dyn ConsentStore>) {
    let clients = clients_file();
    let app = spawn(store, &clients).await;
    // Decisions for some customers spread over the batch (the rest have none).
    let now = Utc::now();
    for (n, i) in [1usize, 2, 999, 1001, 1002, 25_000, 49_998]
        .into_iter()
        .enumerate()
    {
        let (response, permanent) = match n % 3 {
            0 => ("accept", Some(true)),
            1 => ("reject", None),
            _ => ("accept", Some(false)),
        };
        let body = doubletick(
            BUSINESS,
            &customer(i),
            &format!("m{i}"),
            now,
            response,
            permanent,
        );
        assert_eq!(app.post_doubletick(body).await.status, 200);
    }
    let numbers: Vec<String> = (0..MAX_BATCH_CHECKS)
        .map(|i| invalid_at(i).map_or_else(|| customer(i), str::to_owned))
        .collect();
    let checks: Vec<Value> = numbers
        .iter()
        .map(|c| json!({"business_number": BUSINESS, "customer_number": c}))
        .collect();
    let body = json!({ "checks": checks }).to_string();
    assert!(body.len() <= MAX_BATCH_BODY);
    let answer = post_streamed(&app, "/v1/check-batch", body).await;
    assert_eq!(answer.status, 200);
    assert!(answer.chunked, "the batch answer is not streamed");
    assert!(
        answer.frames >= MAX_BATCH_CHECKS / CHUNK,
        "{} frames for {} chunks",
        answer.frames,
        MAX_BATCH_CHECKS / CHUNK
    );
    let results = answer.body["results"].as_array().expect("results");
    assert_eq!(results.len(), MAX_BATCH_CHECKS);

    // The same pairs through gRPC, in its batches.
    let mut grpc = app.grpc().await;
    let mut compared = 0;
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for (start, part) in numbers.chunks(callgate::grpc_api::MAX_BATCH).enumerate() {
        let start = start * callgate::grpc_api::MAX_BATCH;
        let checks = part
            .iter()
            .map(|c| pb::CheckCallPermissionRequest {
                business_number: BUSINESS.into(),
                customer_number: c.clone(),
                ..Default::default()
            })
            .collect();
        let grpc_results = grpc
            .check_call_permissions(pb::CheckCallPermissionsRequest {
                checks,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        for (k, g) in grpc_results.iter().enumerate() {
            let i = start + k;
            let json = &results[i];
            match g.result.as_ref().unwrap() {
                check_result::Result::Answer(a) => {
                    assert!(invalid_at(i).is_none(), "{i} answered");
                    assert_eq!(json["answer"], expected_json(a), "{i}");
                    assert_eq!(json["answer"]["customer_number"], customer(i).as_str());
                    *states
                        .entry(json["answer"]["state"].to_string())
                        .or_default() += 1;
                }
                check_result::Result::Error(e) => {
                    assert!(invalid_at(i).is_some(), "{i}: {}", e.message);
                    assert_eq!(json["error"]["code"], e.code, "{i}");
                    assert_eq!(json["error"]["message"], e.message.as_str(), "{i}");
                    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
                }
            }
            compared += 1;
        }
    }
    assert_eq!(compared, MAX_BATCH_CHECKS);
    let invalid = (0..MAX_BATCH_CHECKS)
        .filter(|i| invalid_at(*i).is_some())
        .count();
    assert_eq!(
        states,
        [
            ("\"CONSENT_STATE_DENIED\"".to_owned(), 2),
            ("\"CONSENT_STATE_GRANTED_PERMANENT\"".to_owned(), 3),
            ("\"CONSENT_STATE_GRANTED_TEMPORARY\"".to_owned(), 2),
            (
                "\"CONSENT_STATE_NO_CONSENT\"".to_owned(),
                MAX_BATCH_CHECKS - invalid - 7
            ),
        ]
        .into_iter()
        .collect()
    );
    app.stop().await;
}

#[tokio::test]
async fn issue13_a_50000_check_batch_is_answered_in_order_and_in_place_on_memory() {
    a_full_batch_answers_in_order_and_in_place(memory_store()).await;
}

#[tokio::test]
async fn issue13_a_50000_check_batch_is_answered_in_order_and_in_place_on_redis() {
    let server = RedisServer::start();
    a_full_batch_answers_in_order_and_in_place(redis_store(&server).await).await;
}

/// Batch reads fail from the `ok_reads + 1`-th on (and single reads once any batch read
/// failed): a store that goes down in the middle of a batch, at a known place.
struct FailingReads {
    ok_reads: usize,
    reads: AtomicUsize,
}

#[async_trait]
impl Hooks for FailingReads {
    async fn before(&self, read: Read) -> Result<(), StoreError> {
        match read {
            Read::CurrentMany => self.reads.fetch_add(1, Ordering::SeqCst),
            Read::Current => 0,
            _ => return Ok(()),
        };
        if self.reads.load(Ordering::SeqCst) > self.ok_reads {
            return Err(StoreError::Unavailable(
                "injected: connection refused".into(),
            ));
        }
        Ok(())
    }
}

fn failing_after(ok_reads: usize) -> Arc<Intercepted<FailingReads>> {
    Intercepted::new(
        memory_store(),
        FailingReads {
            ok_reads,
            reads: AtomicUsize::new(0),
        },
    )
}

fn granted_batch(n: usize) -> String {
    let one = check_body(BUSINESS, CUSTOMER);
    format!(r#"{{"checks":[{}]}}"#, vec![one.as_str(); n].join(","))
}

#[tokio::test]
async fn issue13_a_store_failure_after_the_stream_started_turns_every_remaining_check_into_an_error()
 {
    let store = failing_after(1);
    let clients = clients_file();
    // The store path is under test: issue 16's check cache would answer the repeated pair
    // from memory.
    let mut config = test_config();
    config.api_clients_file = Some(clients.path().to_owned());
    config.check_cache.enabled = false;
    let app = spawn_app_with(config, store.clone()).await;
    let grant = doubletick(BUSINESS, CUSTOMER, "g", Utc::now(), "accept", Some(true));
    assert_eq!(app.post_doubletick(grant).await.status, 200);

    let n = CHUNK * 3 + CHUNK / 2;
    let answer = post_streamed(&app, "/v1/check-batch", granted_batch(n)).await;
    assert_eq!(answer.status, 200);
    let results = answer.body["results"]
        .as_array()
        .expect("a complete answer");
    assert_eq!(results.len(), n);
    for (i, r) in results.iter().enumerate() {
        if i < CHUNK {
            assert_eq!(r["answer"]["allowed"], true, "{i}: {r}");
        } else {
            assert!(
                r.get("answer").is_none(),
                "{i} answered after the store failed"
            );
            assert_eq!(r["error"]["code"], tonic::Code::Unavailable as i32, "{i}");
        }
    }
    // The store was not asked again once it had failed.
    assert_eq!(store.hooks.reads.load(Ordering::SeqCst), 2);
    let metrics = String::from_utf8(app.get_raw("/metrics").await.body.to_vec()).unwrap();
    let unavailable = format!(
        "callgate_checks_total{{answer=\"unavailable\"}} {}",
        n - CHUNK
    );
    assert!(metrics.contains(&unavailable), "missing {unavailable}");
    app.stop().await;
}

#[tokio::test]
async fn issue13_a_store_that_is_down_gets_503_and_never_an_answer() {
    let store = failing_after(0);
    let clients = clients_file();
    let app = spawn(store, &clients).await;
    let batch = post_json(&app, "/v1/check-batch", Some(API_KEY), granted_batch(3)).await;
    assert_eq!(batch.status, 503, "{:?}", batch.body);
    assert_eq!(batch.body["error"], "store_unavailable");
    assert_eq!(batch.body["code"], tonic::Code::Unavailable as i32);
    let single = post_json(
        &app,
        "/v1/check",
        Some(API_KEY),
        check_body(BUSINESS, CUSTOMER),
    )
    .await;
    assert_eq!(single.status, 503, "{:?}", single.body);
    assert_eq!(single.body["error"], "store_unavailable");
    assert!(single.body.get("allowed").is_none());
    app.stop().await;
}

#[tokio::test]
async fn issue13_readers_that_stall_hold_at_most_the_batch_limit_and_later_batches_get_429() {
    use tokio::io::AsyncWriteExt;
    let clients = clients_file();
    let app = spawn(memory_store(), &clients).await;
    let grant = doubletick(BUSINESS, CUSTOMER, "g", Utc::now(), "accept", Some(true));
    assert_eq!(app.post_doubletick(grant).await.status, 200);
    // Answers of ~250 bytes each (no evidence): far more than a socket's buffers hold.
    let body = granted_batch(MAX_BATCH_CHECKS);
    let head = format!(
        "POST /v1/check-batch HTTP/1.1\r\nhost: test\r\n{}: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        API_AUTH.0,
        API_AUTH.1,
        body.len()
    );
    // Readers that send their batch and then never read the answer.
    let mut stalled = Vec::new();
    for _ in 0..MAX_BATCHES_IN_FLIGHT {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A fixed, small receive buffer: no autotuning lets the kernel swallow the answer.
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let mut tcp = socket.connect(app.http).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(body.as_bytes()).await.unwrap();
        stalled.push(tcp);
    }
    // Once they hold every place, another batch is refused with 429 (a single check is not).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = post_json(&app, "/v1/check-batch", Some(API_KEY), granted_batch(2)).await;
        if answer.status == 429 {
            assert_eq!(answer.body["error"], "busy");
            break;
        }
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled readers never held every batch place"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let single = post_json(
        &app,
        "/v1/check",
        Some(API_KEY),
        check_body(BUSINESS, CUSTOMER),
    )
    .await;
    assert_eq!(single.body["allowed"], true);
    // The readers leave: their places come back.
    drop(stalled);
    loop {
        let answer = post_json(&app, "/v1/check-batch", Some(API_KEY), granted_batch(2)).await;
        if answer.status == 200 {
            assert_eq!(answer.body["results"].as_array().unwrap().len(), 2);
            break;
        }
        assert_eq!(answer.status, 429, "{:?}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the places of the readers that left never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.stop().await;
}
