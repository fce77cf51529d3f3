//! Issue 13, calling lists over real sockets: gRPC `ListCallable` (pages, tokens, scoping),
//! list + resume (snapshot cursor then StreamGrants with no gap and no double), the HTTP form
//! `GET /v1/callable` (JSON, CSV, one page, refusals), and a 7-day grant leaving the list at
//! its instant. The store-level promises (all three backends) are in `conformance.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use callgate::grpc_api::auth::key_digest;
use callgate::pb::{self, ConsentState, EventKind};
use callgate::store::ConsentStore;
use callgate::store::redis::{RedisConfig, RedisStore};
use tonic::Code;

use crate::helpers::*;
use crate::intercepted_store::{Hooks, Intercepted, Read};
use crate::redis_harness::RedisServer;

const WAIT: Duration = Duration::from_secs(10);
/// A business no scoped client below may see.
const OTHER: &str = "+14155550100";

fn customer(n: usize) -> String {
    format!("+91987{n:07}")
}

/// Posts a DoubleTick answer of `customer` to [`BUSINESS`] ("accept" or "reject"; `permanent`
/// for accepts).
async fn answer(app: &TestApp, customer: &str, id: &str, response: &str, permanent: bool) {
    let body = doubletick(
        BUSINESS,
        customer,
        id,
        app.clock.now(),
        response,
        (response == "accept").then_some(permanent),
    );
    let a = app.post_doubletick(body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

fn list_req(business: &str, page_size: i32, token: &str) -> pb::ListCallableRequest {
    pb::ListCallableRequest {
        business_number: business.into(),
        page_size,
        page_token: token.into(),
        ..Default::default()
    }
}

/// Every page of [`BUSINESS`]'s list: the entries, the pages' snapshot cursor (checked equal
/// on every page) and the number of pages.
async fn list_all(app: &TestApp, page_size: i32) -> (Vec<pb::CallableEntry>, String, usize) {
    let mut client = app.grpc().await;
    let mut token = String::new();
    let mut entries = Vec::new();
    let mut snapshot = None;
    for pages in 1..=1000 {
        let page = client
            .list_callable(list_req(BUSINESS, page_size, &token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.business_number, BUSINESS);
        let asked = if page_size == 0 {
            callgate::calling_list::DEFAULT_PAGE
        } else {
            page_size as usize
        };
        assert!(page.entries.len() <= asked);
        let s = snapshot.get_or_insert_with(|| page.snapshot_cursor.clone());
        assert_eq!(s, &page.snapshot_cursor, "every page carries one snapshot");
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return (entries, snapshot.unwrap(), pages);
        }
        token = page.next_page_token;
    }
    panic!("the list did not end");
}

fn numbers(entries: &[pb::CallableEntry]) -> BTreeSet<String> {
    let list: Vec<String> = entries.iter().map(|e| e.customer_number.clone()).collect();
    let set: BTreeSet<String> = list.iter().cloned().collect();
    assert_eq!(set.len(), list.len(), "a customer listed twice");
    set
}

#[tokio::test]
async fn issue13_list_callable_lists_exactly_the_callable_pairs_in_stable_pages() {
    let app = spawn_app().await;
    let mut want = BTreeSet::new();
    for n in 0..13 {
        answer(&app, &customer(n), &format!("g{n}"), "accept", true).await;
        want.insert(customer(n));
    }
    for n in 13..16 {
        answer(&app, &customer(n), &format!("t{n}"), "accept", false).await;
        want.insert(customer(n));
    }
    // Denied, and granted then denied: never listed.
    answer(&app, &customer(16), "d16", "reject", false).await;
    answer(&app, &customer(17), "g17", "accept", true).await;
    answer(&app, &customer(17), "d17", "reject", false).await;

    let (entries, _, pages) = list_all(&app, 4).await;
    assert_eq!(numbers(&entries), want);
    assert!(pages >= 4, "{pages} pages of at most 4 for 16 entries");
    for e in &entries {
        let temporary = e.customer_number >= customer(13);
        let want_state = if temporary {
            ConsentState::GrantedTemporary
        } else {
            ConsentState::GrantedPermanent
        };
        assert_eq!(e.state, want_state as i32, "{}", e.customer_number);
        assert_eq!(e.expires_at.is_some(), temporary, "{}", e.customer_number);
        assert!(e.decided_at.is_some());
    }
    // The default page holds them all.
    let (entries, _, pages) = list_all(&app, 0).await;
    assert_eq!((numbers(&entries), pages), (want, 1));

    // Refusals name the field.
    let mut client = app.grpc().await;
    for (req, field) in [
        (list_req(BUSINESS, 4, "garbage"), "page_token"),
        (list_req(BUSINESS, -1, ""), "page_size"),
        (list_req("not a number", 4, ""), "business_number"),
    ] {
        let err = client.list_callable(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    // A token is bound to its list: another business's (or team's) token is refused.
    let first = client
        .list_callable(list_req(BUSINESS, 2, ""))
        .await
        .unwrap()
        .into_inner();
    let err = client
        .list_callable(list_req(OTHER, 2, &first.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("another business"),
        "{}",
        err.message()
    );
    let mut team = list_req(BUSINESS, 2, &first.next_page_token);
    team.team = "premium".into();
    assert_eq!(
        client.list_callable(team).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

/// A clients file: `scoped` may check [`BUSINESS`] only; `streamer` has no `check` scope.
fn clients_file() -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[[client]]
name = "scoped"
key_sha256 = ["{}"]
scopes = ["check"]
businesses = ["{BUSINESS}"]

[[client]]
name = "streamer"
key_sha256 = ["{}"]
scopes = ["stream"]

[[client]]
name = "test-all"
key_sha256 = ["{}"]
scopes = ["check", "stream", "history"]
"#,
        key_digest("scoped-key-1"),
        key_digest("streamer-key-2"),
        key_digest(API_KEY),
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[tokio::test]
async fn issue13_a_scoped_key_lists_only_its_businesses_over_grpc_and_http() {
    let file = clients_file();
    let mut config = test_config();
    config.api_clients_file = Some(file.path().to_owned());
    let app = spawn_app_with(config, memory_store()).await;
    answer(&app, &customer(1), "g1", "accept", true).await;

    let mut scoped = app.grpc_as(Some("scoped-key-1")).await;
    let page = scoped
        .list_callable(list_req(BUSINESS, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(numbers(&page.entries), BTreeSet::from([customer(1)]));
    let err = scoped
        .list_callable(list_req(OTHER, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut streamer = app.grpc_as(Some("streamer-key-2")).await;
    let err = streamer
        .list_callable(list_req(BUSINESS, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut nobody = app.grpc_as(None).await;
    let err = nobody
        .list_callable(list_req(BUSINESS, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let path = |b: &str| format!("/v1/callable?business_number={}", b.replace('+', "%2B"));
    let bearer = |k: &str| format!("Bearer {k}");
    for (key, business, status, code) in [
        (Some("scoped-key-1"), BUSINESS, 200, None),
        (Some("scoped-key-1"), OTHER, 403, Some("permission_denied")),
        (
            Some("streamer-key-2"),
            BUSINESS,
            403,
            Some("permission_denied"),
        ),
        (Some("wrong-key"), BUSINESS, 401, Some("unauthenticated")),
        (None, BUSINESS, 401, Some("unauthenticated")),
    ] {
        let auth = key.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let a = app.request("GET", &path(business), &headers, "").await;
        assert_eq!(a.status, status, "{key:?} {business}: {:?}", a.body);
        if let Some(code) = code {
            assert_eq!(a.body["error"], code, "{:?}", a.body);
            assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
        } else {
            assert_eq!(a.body["entries"][0]["customer_number"], customer(1));
        }
    }
}

/// The client's view after loading the list and applying the stream's events in order.
fn apply(view: &mut BTreeSet<String>, events: &[pb::ConsentEvent]) {
    for e in events {
        match EventKind::try_from(e.kind).unwrap() {
            EventKind::Granted => view.insert(e.customer_number.clone()),
            EventKind::Denied | EventKind::Expired => view.remove(&e.customer_number),
            _ => false,
        };
    }
}

/// Loads the list page by page while changes land between the pages, then follows StreamGrants
/// from the snapshot cursor: each change made while (or after) the client paged is delivered
/// exactly once, nothing from before the snapshot is, and list + events equal a fresh list.
async fn list_then_resume(store: Arc<dyn ConsentStore>) {
    let app = spawn_app_with(test_config(), store).await;
    for n in 0..30 {
        answer(&app, &customer(n), &format!("g{n}"), "accept", true).await;
    }
    let mut client = app.grpc().await;
    let mut view = BTreeSet::new();
    let mut token = String::new();
    let mut snapshot = None;
    // Changes made while paging, one batch after each page, by message id.
    let mut changes: Vec<String> = Vec::new();
    for page_no in 0.. {
        let page = client
            .list_callable(list_req(BUSINESS, 7, &token))
            .await
            .unwrap()
            .into_inner();
        let s = snapshot.get_or_insert_with(|| page.snapshot_cursor.clone());
        assert_eq!(s, &page.snapshot_cursor);
        for e in &page.entries {
            assert!(view.insert(e.customer_number.clone()), "listed twice");
        }
        // Between pages: a new grant, a denial of a customer listed or still to come, a
        // temporary grant.
        if page_no < 4 {
            let id = format!("new{page_no}");
            answer(&app, &customer(100 + page_no), &id, "accept", true).await;
            changes.push(id);
            let id = format!("deny{page_no}");
            answer(&app, &customer(page_no * 7 + 3), &id, "reject", false).await;
            changes.push(id);
            let id = format!("temp{page_no}");
            answer(&app, &customer(200 + page_no), &id, "accept", false).await;
            changes.push(id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // And one after the last page.
    answer(&app, &customer(3), "late-grant", "accept", true).await;
    changes.push("late-grant".into());

    let mut stream = app
        .stream(pb::StreamGrantsRequest {
            resume_after: snapshot.unwrap(),
            include_denials: true,
            include_expiries: true,
            ..Default::default()
        })
        .await;
    // A marker after every change: what arrives before it is all the stream will deliver of
    // them.
    answer(&app, &customer(999), "marker", "accept", true).await;
    let events = tokio::time::timeout(WAIT, async {
        let mut events = Vec::new();
        loop {
            let e = stream.message().await.unwrap().expect("stream ended");
            if e.kind == EventKind::Checkpoint as i32 {
                continue;
            }
            let id = e.evidence.as_ref().unwrap().message_id.clone();
            if id == "marker" {
                return events;
            }
            events.push(e);
        }
    })
    .await
    .expect("the marker did not arrive");
    let delivered: Vec<String> = events
        .iter()
        .map(|e| e.evidence.as_ref().unwrap().message_id.clone())
        .collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for id in &delivered {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    for id in &changes {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} in {delivered:?}");
    }
    assert_eq!(delivered.len(), changes.len(), "{delivered:?}");
    apply(&mut view, &events);
    view.remove(&customer(999));
    let (fresh, _, _) = list_all(&app, 0).await;
    let mut fresh = numbers(&fresh);
    fresh.remove(&customer(999));
    assert_eq!(view, fresh);
}

#[tokio::test]
async fn issue13_changes_made_while_paging_are_delivered_exactly_once_by_the_resumed_stream_memory()
{
    list_then_resume(memory_store()).await;
}

#[tokio::test]
async fn issue13_changes_made_while_paging_are_delivered_exactly_once_by_the_resumed_stream_redis()
{
    let server = RedisServer::start();
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap();
    list_then_resume(Arc::new(store)).await;
}

fn http_path(query: &str) -> String {
    format!(
        "/v1/callable?business_number={}{query}",
        BUSINESS.replace('+', "%2B")
    )
}

#[tokio::test]
async fn issue13_http_list_streams_json_and_csv_and_pages_on_request() {
    let app = spawn_app().await;
    let mut want = BTreeSet::new();
    // More than one internal page (500), so the streamed answer spans several store reads.
    for n in 0..1200 {
        want.insert(customer(n));
    }
    // Recorded straight into the store (the webhook path is tested above): 1,200 posts would
    // only slow the test.
    let now = app.clock.now();
    let decisions: Vec<callgate::domain::Decision> = want
        .iter()
        .enumerate()
        .map(|(i, c)| grant_decision(c, i, now))
        .collect();
    app.store.record(&decisions, now).await.unwrap();
    answer(&app, &customer(5000), "d", "reject", false).await;

    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str())];
    // JSON, the whole list.
    let raw = app.request_raw("GET", &http_path(""), &headers, "").await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(body["business_number"], BUSINESS);
    assert_eq!(body["next_page_token"], "");
    assert!(body["snapshot_cursor"].as_str().unwrap().starts_with("c2."));
    let entries = body["entries"].as_array().unwrap();
    let got: BTreeSet<String> = entries
        .iter()
        .map(|e| e["customer_number"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!((got.len(), &got), (entries.len(), &want));
    assert_eq!(entries[0]["state"], "CONSENT_STATE_GRANTED_PERMANENT");
    assert!(entries[0].get("expires_at").is_none());
    assert!(entries[0]["decided_at"].as_str().unwrap().ends_with('Z'));

    // CSV, the whole list: a header, then one line per entry.
    let raw = app
        .request_raw("GET", &http_path("&format=csv"), &headers, "")
        .await;
    assert_eq!(raw.status, 200);
    assert_eq!(raw.content_type, "text/csv; charset=utf-8");
    let text = String::from_utf8(raw.body.to_vec()).unwrap();
    let mut lines = text.split_terminator("\r\n");
    assert_eq!(
        lines.next(),
        Some("customer_number,state,expires_at,decided_at,team,campaign,customer_name,labels")
    );
    let got: BTreeSet<String> = lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            assert_eq!(fields.len(), 8, "{l}");
            assert_eq!(fields[1], "CONSENT_STATE_GRANTED_PERMANENT");
            fields[0].to_owned()
        })
        .collect();
    assert_eq!(got, want);

    // One page at a time: the token in the body (JSON) and in a header (CSV).
    let mut token = String::new();
    let mut got = BTreeSet::new();
    let mut snapshot = None;
    for _ in 0..100 {
        let q = format!("&page_size=400&page_token={token}");
        let a = app.request("GET", &http_path(&q), &headers, "").await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        let s = snapshot.get_or_insert_with(|| a.body["snapshot_cursor"].clone());
        assert_eq!(s, &a.body["snapshot_cursor"]);
        let page = a.body["entries"].as_array().unwrap();
        assert!(page.len() <= 400);
        for e in page {
            assert!(got.insert(e["customer_number"].as_str().unwrap().to_owned()));
        }
        token = a.body["next_page_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(got, want);

    // Refusals name the field.
    for (query, field) in [
        ("&format=xml", "format"),
        ("&page_size=-1", "page_size"),
        ("&page_size=many", "page_size"),
        ("&page_token=nope", "page_token"),
        ("&colour=red", "query"),
    ] {
        let a = app.request("GET", &http_path(query), &headers, "").await;
        assert_eq!(a.status, 400, "{query}: {:?}", a.body);
        assert_eq!(a.body["field"], field, "{query}: {:?}", a.body);
    }
    let a = app.request("GET", "/v1/callable", &headers, "").await;
    assert_eq!(
        (a.status, &a.body["field"]),
        (400, &"business_number".into())
    );
}

fn grant_decision(
    customer: &str,
    i: usize,
    at: chrono::DateTime<chrono::Utc>,
) -> callgate::domain::Decision {
    use callgate::domain::{Choice, Decision, Evidence, Pair, PhoneNumber, Source};
    Decision {
        pair: Pair::new(
            PhoneNumber::parse(BUSINESS).unwrap(),
            PhoneNumber::parse(customer).unwrap(),
        ),
        choice: Choice::GrantPermanent,
        decided_at: at,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id: format!("bulk-{i}"),
            paired_message_id: String::new(),
            response_source: "user_initiated".into(),
            sender_customer_id: String::new(),
            body_sha256: [0; 32],
            stated_at: at,
            stated_expires_at: None,
        },
        attribution: None,
        customer_name: None,
    }
}

#[tokio::test(start_paused = true)]
async fn issue13_a_temporary_grant_leaves_the_list_at_its_instant_without_the_sweep() {
    let mut config = test_config();
    // A short window, and no sweep in the test's time span: the read-time filter alone must
    // take the grant off the list at its instant.
    config.temporary_grant = Duration::from_secs(600);
    config.expiry_sweep_interval = Duration::from_secs(24 * 3600);
    let app = spawn_app_with(config, memory_store()).await;
    answer(&app, &customer(1), "temp", "accept", false).await;
    answer(&app, &customer(2), "perm", "accept", true).await;
    let (entries, _, _) = list_all(&app, 0).await;
    let temp = entries
        .iter()
        .find(|e| e.customer_number == customer(1))
        .unwrap();
    let expires = callgate::grpc_api::from_timestamp(temp.expires_at.as_ref().unwrap()).unwrap();
    let left = expires - app.clock.now();
    assert!(left <= chrono::Duration::seconds(600) && left > chrono::Duration::seconds(590));
    tokio::time::advance((left - chrono::Duration::milliseconds(1)).to_std().unwrap()).await;
    let (entries, _, _) = list_all(&app, 0).await;
    assert_eq!(
        numbers(&entries),
        BTreeSet::from([customer(1), customer(2)])
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(app.clock.now(), expires);
    let (entries, _, _) = list_all(&app, 0).await;
    assert_eq!(numbers(&entries), BTreeSet::from([customer(2)]));
}

/// Calling-list reads fail from the `fail_from`-th one on: a store that goes down while a list
/// is being streamed.
struct FailingLists {
    reads: std::sync::atomic::AtomicUsize,
    fail_from: usize,
}

#[async_trait::async_trait]
impl Hooks for FailingLists {
    async fn before(&self, read: Read) -> Result<(), callgate::store::StoreError> {
        if read != Read::CallablePage {
            return Ok(());
        }
        let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if n >= self.fail_from {
            return Err(callgate::store::StoreError::Unavailable(
                "test: the store went away".into(),
            ));
        }
        Ok(())
    }
}

#[tokio::test]
async fn issue13_a_store_failure_is_a_503_before_the_answer_and_a_cut_transfer_after_it() {
    let store = Intercepted::new(
        memory_store(),
        FailingLists {
            reads: Default::default(),
            fail_from: 1,
        },
    );
    let app = spawn_app_with(test_config(), store.clone()).await;
    let now = app.clock.now();
    let decisions: Vec<_> = (0..1200)
        .map(|i| grant_decision(&customer(i), i, now))
        .collect();
    app.store.record(&decisions, now).await.unwrap();
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str())];

    // The first page (of 500) is read before the answer begins; the second read fails: the
    // transfer is cut (hyper may not even have flushed the head by then), so the client
    // cannot mistake a part of the list for all of it.
    let req = http::Request::get(format!("http://{}{}", app.http, http_path("&format=csv")))
        .header("authorization", auth.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let complete = match client.request(req).await {
        Ok(res) => {
            assert_eq!(res.status(), 200);
            http_body_util::BodyExt::collect(res.into_body())
                .await
                .is_ok()
        }
        Err(_) => false,
    };
    assert!(!complete, "a cut-short list must not read as complete");
    assert!(store.hooks.reads.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    // Down from the first read: a 503 with a JSON error, and nothing listed.
    store
        .hooks
        .reads
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let a = app.request("GET", &http_path(""), &headers, "").await;
    assert_eq!(
        (a.status, &a.body["error"]),
        (503, &"store_unavailable".into())
    );
    let err = app
        .grpc()
        .await
        .list_callable(list_req(BUSINESS, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}
