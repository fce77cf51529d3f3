//! Issue 17: outbound webhooks, end to end. A real HTTP receiver (hyper on 127.0.0.1, allowed
//! with `CALLGATE_OUTBOUND_ALLOW_NETWORKS`) records every delivery; the tests verify each
//! signature with their own Standard Webhooks verifier (itself checked against the
//! specification's published example), and drive the receiver down, back, to `410`, and across
//! a replica's death. Retries use a short configured backoff; the tests wait on conditions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use callgate::config::Config;
use callgate::outbound::destination::AllowList;
use callgate::pb;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tonic::Code;

use crate::helpers::{
    ApiClient, BUSINESS, TOKEN, TestApp, doubletick, memory_store, spawn_app_with, test_config,
};
use crate::process::CallgateProcess;
use crate::redis_harness::RedisServer;

/// How long a test waits for deliveries before failing.
const WAIT: Duration = Duration::from_secs(20);

// ---- the receiver ---------------------------------------------------------------------------

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    json: serde_json::Value,
}

impl Delivery {
    fn data(&self, field: &str) -> String {
        match &self.json["data"][field] {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn message_id(&self) -> String {
        self.json["data"]["evidence"]["message_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct Recorded {
    deliveries: Vec<Delivery>,
    /// The status every request is answered with.
    status: u16,
    /// How long each answer takes (a slow receiver).
    delay: Duration,
}

/// A real HTTP receiver on a loopback port.
struct Receiver {
    addr: SocketAddr,
    state: Arc<Mutex<Recorded>>,
    changed: Arc<Notify>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(Recorded {
                deliveries: Vec::new(),
                status: 200,
                delay: Duration::ZERO,
            })),
            changed: Arc::new(Notify::new()),
            server: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let state = self.state.clone();
        let changed = self.changed.clone();
        self.server = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                let changed = changed.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        let changed = changed.clone();
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (id, timestamp, signature) = (
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                            );
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let json = serde_json::from_slice(&body).unwrap_or_default();
                            let (status, delay) = {
                                let mut s = state.lock().unwrap();
                                s.deliveries.push(Delivery {
                                    id,
                                    timestamp,
                                    signature,
                                    body,
                                    json,
                                });
                                (s.status, s.delay)
                            };
                            tokio::time::sleep(delay).await;
                            changed.notify_waiters();
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/callgate", self.addr)
    }

    fn answer_after(&self, delay: Duration) {
        self.state.lock().unwrap().delay = delay;
    }

    fn answer_with(&self, status: u16) {
        self.state.lock().unwrap().status = status;
    }

    /// Closes the port: connections are refused until [`back`](Self::back).
    fn down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    async fn back(&mut self) {
        self.down();
        // The accept loop is aborted; bind again once its listener is dropped.
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        self.serve(listener);
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().deliveries.clone()
    }

    /// Waits until `done` holds for the deliveries so far; returns them.
    async fn wait_until(&self, what: &str, done: impl Fn(&[Delivery]) -> bool) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            let all = self.deliveries();
            if done(&all) {
                return all;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let all = self.deliveries();
                assert!(done(&all), "timed out waiting for {what}; got {all:#?}");
                return all;
            }
        }
    }

    /// Waits until deliveries with `n` distinct ids arrived.
    async fn wait_distinct(&self, n: usize) -> Vec<Delivery> {
        self.wait_until(&format!("{n} distinct events"), |all| distinct(all) >= n)
            .await
    }
}

fn distinct(all: &[Delivery]) -> usize {
    all.iter()
        .map(|d| d.id.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

// ---- the Standard Webhooks verifier (the test's own) ----------------------------------------

/// Verifies a `webhook-signature` header as the Standard Webhooks specification says: any of
/// its space-separated `v1,<base64>` entries equals the HMAC-SHA256, keyed with the
/// base64-decoded secret, of `<id>.<timestamp>.<body>`.
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Ok(key) = b64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = b64.encode(mac.finalize().into_bytes());
    header
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .any(|(version, sig)| version == "v1" && sig == expected)
}

fn verified(secret: &str, d: &Delivery) -> bool {
    verify(secret, &d.id, &d.timestamp, &d.body, &d.signature)
}

#[test]
fn issue17_the_verifier_accepts_the_standard_webhooks_example_and_nothing_else() {
    // The specification's published example.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (id, ts, body) = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    );
    let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert!(verify(secret, id, ts, body, sig));
    assert!(verify(
        secret,
        id,
        ts,
        body,
        &format!("v1,bm90IHRoaXM= {sig}")
    ));
    assert!(!verify(secret, id, ts, br#"{"test": 2432232315}"#, sig));
    assert!(!verify(secret, "msg_other", ts, body, sig));
    assert!(!verify(secret, id, "1614265331", body, sig));
    assert!(!verify("whsec_c2VjcmV0", id, ts, body, sig));
    // callgate's signer gives the same answer for the same example.
    let key = callgate::outbound::signature::parse_secret(secret).unwrap();
    assert_eq!(
        callgate::outbound::signature::sign([key.as_slice()], id, 1_614_265_330, body),
        sig
    );
}

// ---- helpers --------------------------------------------------------------------------------

/// A test service that may deliver to loopback, retrying quickly.
fn config(allow_loopback: bool) -> Config {
    let mut c = test_config();
    if allow_loopback {
        c.outbound.allow = AllowList::parse("127.0.0.0/8").unwrap();
    }
    c.outbound.scan_every = Duration::from_millis(50);
    c.outbound.lease = Duration::from_secs(3);
    c.outbound.timeout = Duration::from_secs(1);
    c.outbound.backoff_min = Duration::from_millis(20);
    c.outbound.backoff_max = Duration::from_millis(100);
    c
}

async fn add(
    client: &mut ApiClient,
    url: &str,
    kinds: &[&str],
    businesses: &[&str],
) -> Result<(String, String), tonic::Status> {
    let answer = client
        .create_webhook_subscription(pb::CreateWebhookSubscriptionRequest {
            url: url.to_owned(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            business_numbers: businesses.iter().map(|b| b.to_string()).collect(),
            teams: Vec::new(),
            campaigns: Vec::new(),
        })
        .await?
        .into_inner();
    Ok((answer.subscription.unwrap().id, answer.secret))
}

async fn post(
    app: &TestApp,
    business: &str,
    customer: &str,
    id: &str,
    response: &str,
    permanent: Option<bool>,
) {
    let body = doubletick(business, customer, id, app.clock.now(), response, permanent);
    assert_eq!(app.post_doubletick(body).await.status, 200, "{id}");
}

async fn subscription(client: &mut ApiClient, id: &str) -> pb::WebhookSubscription {
    client
        .list_webhook_subscriptions(pb::ListWebhookSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .subscriptions
        .into_iter()
        .find(|s| s.id == id)
        .unwrap()
}

/// Waits until subscription `id` is in `state`.
async fn wait_state(client: &mut ApiClient, id: &str, state: &str) -> pb::WebhookSubscription {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = subscription(client, id).await;
        if s.state == state {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscription never became {state}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Message ids in delivery order, first delivery of each webhook-id only.
fn first_deliveries(all: &[Delivery]) -> Vec<Delivery> {
    let mut seen = std::collections::HashSet::new();
    all.iter()
        .filter(|d| seen.insert(d.id.clone()))
        .cloned()
        .collect()
}

// ---- the tests ------------------------------------------------------------------------------

#[tokio::test]
async fn issue17_grants_denials_and_expiries_arrive_signed_and_filters_hold() {
    let mut c = config(true);
    // Temporary grants last one second here, so an expiry comes within the test.
    c.temporary_grant = Duration::from_secs(1);
    let app = spawn_app_with(c, memory_store()).await;
    let (all_rx, grants_rx) = (Receiver::start().await, Receiver::start().await);
    let mut client = app.grpc().await;
    let (all_id, all_secret) = add(&mut client, &all_rx.url(), &[], &[]).await.unwrap();
    let other_business = "+919111111111";
    let (_, grants_secret) = add(&mut client, &grants_rx.url(), &["grant"], &[BUSINESS])
        .await
        .unwrap();

    post(
        &app,
        BUSINESS,
        "+919800000001",
        "perm",
        "accept",
        Some(true),
    )
    .await;
    post(&app, BUSINESS, "+919800000002", "deny", "reject", None).await;
    post(
        &app,
        other_business,
        "+919800000003",
        "other",
        "accept",
        Some(true),
    )
    .await;
    post(
        &app,
        BUSINESS,
        "+919800000004",
        "temp",
        "accept",
        Some(false),
    )
    .await;

    // All: perm, deny, other, temp, and temp's expiry.
    let all = all_rx.wait_distinct(5).await;
    let got: Vec<(String, String)> = first_deliveries(&all)
        .iter()
        .map(|d| (d.message_id(), d.data("kind")))
        .collect();
    assert_eq!(
        got,
        [
            ("perm", "granted"),
            ("deny", "denied"),
            ("other", "granted"),
            ("temp", "granted"),
            ("temp", "expired"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    for d in &all {
        assert!(verified(&all_secret, d), "bad signature: {d:?}");
        assert!(
            !verified(&grants_secret, d),
            "signed with another subscription's secret"
        );
        assert!(d.id.starts_with("evt_"), "{}", d.id);
        let ts: i64 = d.timestamp.parse().unwrap();
        assert!((ts - app.clock.now().timestamp()).abs() < 60, "{ts}");
    }
    let perm = &first_deliveries(&all)[0];
    assert_eq!(perm.json["type"], "consent.granted");
    assert_eq!(perm.data("business"), BUSINESS);
    assert_eq!(perm.data("customer"), "+919800000001");
    assert_eq!(perm.json["data"]["permanent"], true);
    assert_eq!(perm.json["data"]["evidence"]["source"], "doubletick");
    assert!(perm.json["data"]["decided_at"].is_string());
    let temp = &first_deliveries(&all)[3];
    assert_eq!(temp.json["data"]["permanent"], false);
    assert!(temp.json["data"]["expires_at"].is_string());

    // Grants of BUSINESS only: perm and temp, nothing else.
    let grants = grants_rx
        .wait_until("two grants", |all| distinct(all) >= 2)
        .await;
    let ids: Vec<String> = first_deliveries(&grants)
        .iter()
        .map(Delivery::message_id)
        .collect();
    assert_eq!(ids, ["perm", "temp"]);
    assert!(grants.iter().all(|d| verified(&grants_secret, d)));
    // Nothing else came after all of `all`'s events were delivered.
    assert_eq!(distinct(&grants_rx.deliveries()), 2);

    // The metrics name each subscription.
    let metrics = String::from_utf8(app.get_raw("/metrics").await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!(
            "callgate_outbound_delivered_total{{subscription=\"{all_id}\"}} 5"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "callgate_outbound_lag_seconds{{subscription=\"{all_id}\"}}"
    )));
}

#[tokio::test]
async fn issue17_a_rotated_secret_and_the_old_one_both_verify_during_the_overlap() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let rx = Receiver::start().await;
    let mut client = app.grpc().await;
    let (id, old) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    let new = client
        .rotate_webhook_secret(pb::WebhookSubscriptionId { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert_ne!(old, new);
    assert!(new.starts_with("whsec_"));
    assert_eq!(subscription(&mut client, &id).await.signing_secrets, 2);
    post(
        &app,
        BUSINESS,
        "+919800000001",
        "after-rotation",
        "accept",
        Some(true),
    )
    .await;
    let d = rx.wait_distinct(1).await.remove(0);
    assert_eq!(d.signature.split(' ').count(), 2, "{}", d.signature);
    assert!(verified(&old, &d) && verified(&new, &d));
}

#[tokio::test]
async fn issue17_receiver_down_then_back_every_event_arrives_in_order_per_customer() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let mut rx = Receiver::start().await;
    let mut client = app.grpc().await;
    let (_, secret) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    rx.down();
    // Three customers, alternating grants and denials, each decided later than the one before.
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..12 {
        let customer = format!("+91980000000{}", i % 3);
        let id = format!("m{i:02}");
        let response = if i % 2 == 0 { "accept" } else { "reject" };
        let permanent = (i % 2 == 0).then_some(true);
        post(&app, BUSINESS, &customer, &id, response, permanent).await;
        expected.entry(customer).or_default().push(id);
    }
    // Receiver down: attempts fail (connection refused) and are retried.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8(app.get_raw("/metrics").await.body.to_vec())
        .unwrap()
        .lines()
        .any(|l| l.starts_with("callgate_outbound_retries_total") && !l.ends_with(" 0"))
    {
        assert!(tokio::time::Instant::now() < deadline, "no retry counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Back, answering 503 for a while (a sick receiver), then healthy.
    rx.answer_with(503);
    rx.back().await;
    rx.wait_until("a 503 answered", |all| !all.is_empty()).await;
    rx.answer_with(200);
    let all = rx.wait_distinct(12).await;

    // Every event, in order per customer (first deliveries), and duplicates only as repeats
    // of the same webhook-id with the same event.
    let mut by_customer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in first_deliveries(&all) {
        by_customer
            .entry(d.data("customer"))
            .or_default()
            .push(d.message_id());
    }
    assert_eq!(by_customer, expected);
    let mut by_id: HashMap<String, String> = HashMap::new();
    for d in &all {
        assert!(verified(&secret, d));
        let event = d.json["data"].to_string();
        let first = by_id.entry(d.id.clone()).or_insert_with(|| event.clone());
        assert_eq!(*first, event, "webhook-id {} carried another event", d.id);
    }
    // Strictly in log order: each event's first delivery comes after every earlier event's.
    let positions: Vec<Vec<u64>> = first_deliveries(&all)
        .iter()
        .map(|d| {
            d.id.trim_start_matches("evt_")
                .split('_')
                .map(|n| n.parse().unwrap())
                .collect()
        })
        .collect();
    let mut sorted = positions.clone();
    sorted.sort_by_key(|p| (p[1], p[2], p[0]));
    assert_eq!(positions, sorted);
}

#[tokio::test]
async fn issue17_a_private_address_is_refused_unless_its_network_is_allowed() {
    let refusing = spawn_app_with(config(false), memory_store()).await;
    let mut client = refusing.grpc().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data",
        "http://[::1]:9/",
        "http://[::ffff:192.168.0.1]/",
    ] {
        let err = add(&mut client, url, &[], &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}: {err:?}");
        assert!(
            err.message().contains("refused"),
            "{url}: {}",
            err.message()
        );
    }
    for (url, field) in [("ftp://x/", "url"), ("https://crm.example/", "kinds")] {
        let kinds: &[&str] = if field == "kinds" { &["refund"] } else { &[] };
        let err = add(&mut client, url, kinds, &[]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let listed = client
        .list_webhook_subscriptions(pb::ListWebhookSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.subscriptions.is_empty(),
        "a refused subscription was stored"
    );

    let allowing = spawn_app_with(config(true), memory_store()).await;
    let mut client = allowing.grpc().await;
    add(&mut client, "http://127.0.0.1:9/hook", &[], &[])
        .await
        .unwrap();
    let err = add(&mut client, "http://10.0.0.5/hook", &[], &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn issue17_410_gone_disables_the_subscription() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let rx = Receiver::start().await;
    rx.answer_with(410);
    let mut client = app.grpc().await;
    let (id, _) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    post(
        &app,
        BUSINESS,
        "+919800000001",
        "gone-1",
        "accept",
        Some(true),
    )
    .await;
    let s = wait_state(&mut client, &id, "disabled").await;
    assert!(s.reason.contains("410"), "{}", s.reason);
    // Disabled: later events are not attempted.
    post(
        &app,
        BUSINESS,
        "+919800000002",
        "gone-2",
        "accept",
        Some(true),
    )
    .await;
    rx.answer_with(200);
    let before = rx.deliveries().len();
    // A new subscription to the same receiver gets the next event: the scanner ran since.
    let (_, _) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    post(
        &app,
        BUSINESS,
        "+919800000003",
        "gone-3",
        "accept",
        Some(true),
    )
    .await;
    let all = rx
        .wait_until("the new subscription's event", |all| {
            all.iter().any(|d| d.message_id() == "gone-3")
        })
        .await;
    assert!(
        all[before..].iter().all(|d| d.message_id() == "gone-3"),
        "{all:#?}"
    );
    assert_eq!(all.iter().filter(|d| d.message_id() == "gone-1").count(), 1);
}

#[tokio::test]
async fn issue17_a_receiver_failing_past_the_retry_window_marks_failing_then_enable_resumes() {
    let mut c = config(true);
    c.outbound.retry_for = Duration::from_millis(300);
    let app = spawn_app_with(c, memory_store()).await;
    let rx = Receiver::start().await;
    rx.answer_with(500);
    let mut client = app.grpc().await;
    let (id, _) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    post(
        &app,
        BUSINESS,
        "+919800000001",
        "kept",
        "accept",
        Some(true),
    )
    .await;
    let s = wait_state(&mut client, &id, "failing").await;
    assert!(s.reason.contains("answered 500"), "{}", s.reason);
    let metrics = String::from_utf8(app.get_raw("/metrics").await.body.to_vec()).unwrap();
    assert!(metrics.contains(&format!(
        "callgate_outbound_failing{{subscription=\"{id}\"}} 1"
    )));
    // Fixed: the operator enables it; the kept event (and a later one) arrive.
    rx.answer_with(200);
    post(
        &app,
        BUSINESS,
        "+919800000002",
        "later",
        "accept",
        Some(true),
    )
    .await;
    client
        .enable_webhook_subscription(pb::WebhookSubscriptionId { id: id.clone() })
        .await
        .unwrap();
    let all = rx
        .wait_until("both events with a 200", |all| {
            all.iter().rev().take(1).any(|d| d.message_id() == "later")
        })
        .await;
    let ids: Vec<String> = first_deliveries(&all)
        .iter()
        .map(Delivery::message_id)
        .collect();
    assert_eq!(ids, ["kept", "later"]);
    assert_eq!(wait_state(&mut client, &id, "active").await.reason, "");
}

#[tokio::test]
async fn issue17_replay_from_a_time_redelivers_exactly_the_events_after_it() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let rx = Receiver::start().await;
    let mut client = app.grpc().await;
    let (id, _) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();
    post(
        &app,
        BUSINESS,
        "+919800000001",
        "before",
        "accept",
        Some(true),
    )
    .await;
    let first = rx.wait_distinct(1).await.remove(0);
    // The event's id carries the millisecond it was logged at: replay from the next one.
    let logged_ms: i64 = first.id.split('_').nth(2).unwrap().parse().unwrap();
    let since = chrono::DateTime::from_timestamp_millis(logged_ms + 1).unwrap();
    while app.clock.now() <= since {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    post(&app, BUSINESS, "+919800000002", "after-1", "reject", None).await;
    post(
        &app,
        BUSINESS,
        "+919800000003",
        "after-2",
        "accept",
        Some(true),
    )
    .await;
    rx.wait_distinct(3).await;
    let delivered = rx.deliveries().len();

    client
        .replay_webhook_subscription(pb::ReplayWebhookSubscriptionRequest {
            id: id.clone(),
            since: Some(callgate::grpc_api::timestamp(since)),
        })
        .await
        .unwrap();
    let all = rx
        .wait_until("the replay", |all| all.len() >= delivered + 2)
        .await;
    let replayed: Vec<String> = all[delivered..].iter().map(Delivery::message_id).collect();
    assert_eq!(replayed, ["after-1", "after-2"]);
    // Same ids as the first time: receivers de-duplicate replays like retries.
    let first_time: Vec<&str> = all[1..3].iter().map(|d| d.id.as_str()).collect();
    let again: Vec<&str> = all[delivered..].iter().map(|d| d.id.as_str()).collect();
    assert_eq!(first_time, again);

    // A replay needs its time.
    let err = client
        .replay_webhook_subscription(pb::ReplayWebhookSubscriptionRequest { id, since: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("since"), "{}", err.message());
}

#[tokio::test]
async fn issue17_cli_adds_lists_and_disables_over_grpc() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let rx = Receiver::start().await;
    let addr = app.grpc.to_string();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"));
        cmd.arg("webhooks")
            .args(args)
            .args(["--addr", &addr, "--token", crate::helpers::API_KEY]);
        cmd
    };
    let url = rx.url();
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&[
            "add",
            "--url",
            &url,
            "--kinds",
            "grant,deny",
            "--business",
            BUSINESS,
        ]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (id, secret) = line
        .trim()
        .strip_prefix("id=")
        .and_then(|r| r.split_once(" secret="))
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    assert!(secret.starts_with("whsec_"));
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&["list"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.starts_with(&format!(
            "id={id} state=active url={url} kinds=grant,deny businesses={BUSINESS}"
        )),
        "{listed}"
    );
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&["disable", "--id", id]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("state=disabled")
    );
    let out = tokio::task::spawn_blocking({
        let mut cmd = run(&["disable", "--id", "wh_0000000000000000"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

/// Two callgate processes on one Redis: the one delivering is killed mid-stream; the other
/// takes the lease over once it lapses and delivers the rest; no event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue17_two_processes_on_one_redis_the_survivor_takes_over_and_loses_nothing() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let env = [
        ("CALLGATE_REDIS_URL", url.as_str()),
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
        ("CALLGATE_OUTBOUND_ALLOW_NETWORKS", "127.0.0.0/8"),
        ("CALLGATE_OUTBOUND_LEASE_MS", "1500"),
        ("CALLGATE_OUTBOUND_SCAN_MS", "100"),
        ("CALLGATE_OUTBOUND_TIMEOUT_MS", "500"),
        ("CALLGATE_OUTBOUND_BACKOFF_MIN_MS", "20"),
        ("CALLGATE_OUTBOUND_BACKOFF_MAX_SECS", "0.1"),
        ("CALLGATE_REDIS_TIMEOUT_MS", "2000"),
    ];
    let a = CallgateProcess::start(&env).unwrap();
    let b = CallgateProcess::start(&env).unwrap();
    let rx = Receiver::start().await;
    // A slow receiver, so the holder is still delivering when it dies.
    rx.answer_after(Duration::from_millis(50));
    let a_app = crate::helpers::Endpoints::new(a.http, a.grpc);
    let b_app = crate::helpers::Endpoints::new(b.http, b.grpc);
    let mut client = a_app.grpc().await;
    let (id, secret) = add(&mut client, &rx.url(), &[], &[]).await.unwrap();

    let post_to = |ep: &crate::helpers::Endpoints, i: usize| {
        let body = doubletick(
            BUSINESS,
            &format!("+9198000000{:02}", i % 5),
            &format!("k{i:03}"),
            chrono::Utc::now(),
            if i.is_multiple_of(3) {
                "reject"
            } else {
                "accept"
            },
            (!i.is_multiple_of(3)).then_some(true),
        );
        let ep = crate::helpers::Endpoints::new(ep.http, ep.grpc);
        async move { assert_eq!(ep.post_doubletick(body).await.status, 200) }
    };
    for i in 0..10 {
        post_to(&a_app, i).await;
    }
    rx.wait_distinct(3).await;
    // Who delivers? The holder logged "delivering" for the subscription.
    let delivering = |p: &CallgateProcess| {
        p.log_text()
            .lines()
            .any(|l| l.contains("delivering") && l.contains(&id))
    };
    let (holder, survivor, survivor_ep) = if delivering(&a) {
        (a, b, b_app)
    } else {
        assert!(delivering(&b), "neither process says it delivers");
        (b, a, a_app)
    };
    // Kill it mid-stream (SIGKILL: no release of the lease), and keep recording.
    drop(holder);
    let at_kill = distinct(&rx.deliveries());
    assert!(
        at_kill < 10,
        "not mid-stream: {at_kill} of 10 already delivered"
    );
    for i in 10..20 {
        post_to(&survivor_ep, i).await;
    }
    let started = tokio::time::Instant::now();
    let all = rx.wait_distinct(20).await;
    // The lease (1.5 s) lapses, the survivor's next try (a third of it) takes over.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let got: std::collections::BTreeSet<String> = all.iter().map(Delivery::message_id).collect();
    let want: std::collections::BTreeSet<String> = (0..20).map(|i| format!("k{i:03}")).collect();
    assert_eq!(got, want);
    assert!(all.iter().all(|d| verified(&secret, d)));
    // In order per customer.
    let mut by_customer: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in first_deliveries(&all) {
        by_customer
            .entry(d.data("customer"))
            .or_default()
            .push(d.message_id());
    }
    for ids in by_customer.values() {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(*ids, sorted);
    }
    assert!(delivering(&survivor), "the survivor never took over");
    drop(survivor);
    tokio::task::spawn_blocking(move || drop(redis))
        .await
        .unwrap();
}

/// Team and campaign filters hold on attributed events (issue 13's attribution), and the body
/// carries the attribution and the customer's name.
#[tokio::test]
async fn issue17_team_and_campaign_filters_hold_and_the_body_carries_the_attribution() {
    use callgate::domain::{
        Attribution, Choice, Decision, Evidence, Pair, PhoneNumber, Source, to_millis_precision,
    };
    let app = spawn_app_with(config(true), memory_store()).await;
    let (north_rx, diwali_rx) = (Receiver::start().await, Receiver::start().await);
    let mut client = app.grpc().await;
    let create = |url: String, teams: Vec<String>, campaigns: Vec<String>| {
        pb::CreateWebhookSubscriptionRequest {
            url,
            kinds: Vec::new(),
            business_numbers: Vec::new(),
            teams,
            campaigns,
        }
    };
    client
        .create_webhook_subscription(create(north_rx.url(), vec!["north".into()], vec![]))
        .await
        .unwrap();
    client
        .create_webhook_subscription(create(diwali_rx.url(), vec![], vec!["diwali".into()]))
        .await
        .unwrap();
    let t = to_millis_precision(app.clock.now());
    let decision = |i: u32, tags: Option<(&str, &str)>| Decision {
        pair: Pair::new(
            PhoneNumber::parse(BUSINESS).unwrap(),
            PhoneNumber::parse(&format!("+9198000000{i:02}")).unwrap(),
        ),
        choice: Choice::GrantPermanent,
        decided_at: t,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: format!("a{i}"),
            paired_message_id: format!("req{i}"),
            response_source: String::new(),
            sender_customer_id: String::new(),
            body_sha256: [0; 32],
            stated_at: t,
            stated_expires_at: None,
        },
        attribution: tags.map(|(team, campaign)| Attribution {
            request_message_id: format!("req{i}"),
            team: team.into(),
            campaign: campaign.into(),
            labels: [("tier".to_owned(), "gold".to_owned())].into(),
        }),
        customer_name: Some(format!("Customer {i}")),
    };
    let decisions = [
        decision(1, Some(("north", "diwali"))),
        decision(2, Some(("south", "diwali"))),
        decision(3, Some(("north", "holi"))),
        decision(4, None),
    ];
    app.store.record(&decisions, t).await.unwrap();
    // A last event every subscription receives: once it is in, nothing else is coming.
    let marker = |i| decision(i, Some(("north", "diwali")));
    app.store.record(&[marker(5)], t).await.unwrap();

    let north = north_rx
        .wait_until("north's events", |all| {
            all.iter().any(|d| d.message_id() == "a5")
        })
        .await;
    let ids: Vec<String> = first_deliveries(&north)
        .iter()
        .map(Delivery::message_id)
        .collect();
    assert_eq!(ids, ["a1", "a3", "a5"]);
    let diwali = diwali_rx
        .wait_until("diwali's events", |all| {
            all.iter().any(|d| d.message_id() == "a5")
        })
        .await;
    let ids: Vec<String> = first_deliveries(&diwali)
        .iter()
        .map(Delivery::message_id)
        .collect();
    assert_eq!(ids, ["a1", "a2", "a5"]);
    let first = &north[0].json["data"];
    assert_eq!(first["attribution"]["team"], "north");
    assert_eq!(first["attribution"]["campaign"], "diwali");
    assert_eq!(first["attribution"]["labels"]["tier"], "gold");
    assert_eq!(first["attribution"]["request_message_id"], "req1");
    assert_eq!(first["customer_name"], "Customer 1");
}

/// A receiver that never answers holds back only its own subscription: another subscription
/// gets every event meanwhile, and checks are answered.
#[tokio::test]
async fn issue17_a_hanging_receiver_never_delays_another_subscription() {
    let app = spawn_app_with(config(true), memory_store()).await;
    let (hanging, healthy) = (Receiver::start().await, Receiver::start().await);
    // Longer than the attempt timeout (1 s): every attempt times out.
    hanging.answer_after(Duration::from_secs(30));
    let mut client = app.grpc().await;
    add(&mut client, &hanging.url(), &[], &[]).await.unwrap();
    add(&mut client, &healthy.url(), &[], &[]).await.unwrap();
    for i in 0..5 {
        let customer = format!("+91980000001{i}");
        post(
            &app,
            BUSINESS,
            &customer,
            &format!("h{i}"),
            "accept",
            Some(true),
        )
        .await;
    }
    let started = tokio::time::Instant::now();
    let got = healthy.wait_distinct(5).await;
    assert_eq!(
        first_deliveries(&got)
            .iter()
            .map(Delivery::message_id)
            .collect::<Vec<_>>(),
        ["h0", "h1", "h2", "h3", "h4"]
    );
    // The hanging receiver got the first event only (it is still being retried).
    assert!(
        hanging.deliveries().iter().all(|d| d.message_id() == "h0"),
        "{:?}",
        hanging.deliveries()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(app.check(BUSINESS, "+919800000010").await.allowed);
}
