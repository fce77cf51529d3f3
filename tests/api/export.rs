//! Issue 14: exports (`GET /v1/export`, gRPC `ExportDecisions`, `callgate export`) and the
//! tamper-evident record (`callgate audit verify`, the real binary, against a real Redis
//! tampered with directly).

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use callgate::domain::{
    Attribution, Choice, Decision, Evidence, HistoryEntry, HistoryOutcome, Pair, PhoneNumber,
    Source, to_millis_precision,
};
use callgate::export::{CSV_COLUMNS, ExportRow};
use callgate::pb;
use callgate::store::redis::RedisStore;
use callgate::store::redis::codec;
use callgate::store::redis::keys::Keys;
use callgate::store::{ConsentStore, RecordsPosition, RecordsRange, TimeField};

use crate::helpers::{API_KEY, memory_store, spawn_app_with, test_config};
use crate::process::CallgateProcess;
use crate::redis_harness::RedisServer;

const BUSINESS: &str = "+919000000000";

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse(s).unwrap()
}

fn pair(n: u32) -> Pair {
    Pair::new(phone(BUSINESS), phone(&format!("+91987{n:07}")))
}

fn ms(n: i64) -> Duration {
    Duration::milliseconds(n)
}

fn decision(p: &Pair, choice: Choice, at: DateTime<Utc>, msg: &str) -> Decision {
    Decision {
        pair: p.clone(),
        choice,
        decided_at: at,
        evidence: Evidence {
            source: Source::WhatsApp,
            message_id: msg.to_owned(),
            paired_message_id: format!("ctx,\"{msg}\""),
            response_source: "user_action".to_owned(),
            sender_customer_id: "line1\nline2".to_owned(),
            body_sha256: [0x5a; 32],
            stated_at: at,
            stated_expires_at: choice.expires_at(),
        },
        // Issue 13: customer 2's decisions carry an attribution and a customer name (exported,
        // not hashed).
        attribution: (p.customer.digits().ends_with('2')).then(|| Attribution {
            request_message_id: format!("ctx,\"{msg}\""),
            team: "collections".into(),
            campaign: "nov-2026".into(),
            labels: [("region".to_owned(), "south, \"2\"".to_owned())].into(),
        }),
        customer_name: (p.customer.digits().ends_with('2')).then(|| "Asha \"A\", Rao".to_owned()),
    }
}

/// Records a fixed set of decisions (3 customers, applied and stale, a temporary grant, one
/// for another business) at times from `t`; returns the business's range over all of them.
async fn record_sample(store: &dyn ConsentStore, t: DateTime<Utc>) {
    let plan: [(u32, Choice, i64, i64); 7] = [
        (1, Choice::GrantPermanent, 0, 0),
        (2, Choice::Deny, 5, 10),
        (1, Choice::Deny, -50, 20),
        (
            3,
            Choice::GrantTemporary {
                expires_at: t + ms(7 * 86_400_000),
            },
            30,
            30,
        ),
        (2, Choice::GrantPermanent, 40, 40),
        (1, Choice::GrantPermanent, 60, 50),
        (3, Choice::Deny, 70, 60),
    ];
    for (i, (c, choice, event, received)) in plan.into_iter().enumerate() {
        let d = decision(&pair(c), choice, t + ms(event), &format!("wamid.{i}"));
        store.record(&[d], t + ms(received)).await.unwrap();
    }
    let other = Pair::new(phone("+919111111111"), phone("+919870000001"));
    let d = decision(&other, Choice::Deny, t + ms(10), "wamid.other");
    store.record(&[d], t + ms(10)).await.unwrap();
}

/// The rows an export of `range` must hold, from the store's own listing.
async fn expected_rows(store: &dyn ConsentStore, range: &RecordsRange) -> Vec<ExportRow> {
    let mut rows = Vec::new();
    let mut after: Option<RecordsPosition> = None;
    loop {
        let page = store.records_page(range, after.as_ref(), 2).await.unwrap();
        rows.extend(page.items.iter().map(ExportRow::from_recorded));
        match page.next {
            Some(n) => after = Some(n),
            None => return rows,
        }
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn export_path(from: DateTime<Utc>, to: DateTime<Utc>, format: &str, by: &str) -> String {
    let q: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("business", BUSINESS)
        .append_pair("from", &rfc3339(from))
        .append_pair("to", &rfc3339(to))
        .append_pair("format", format)
        .append_pair("by", by)
        .finish();
    format!("/v1/export?{q}")
}

fn parse_ndjson(body: &[u8]) -> Vec<ExportRow> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON row"))
        .collect()
}

/// CSV read back with the `csv` crate, each record turned back into a row.
fn parse_csv(body: &[u8]) -> Vec<ExportRow> {
    let mut reader = csv::Reader::from_reader(body);
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(headers, CSV_COLUMNS);
    reader
        .records()
        .map(|r| {
            let r = r.expect("a valid CSV record");
            assert_eq!(r.len(), CSV_COLUMNS.len());
            let f: BTreeMap<&str, &str> = CSV_COLUMNS.iter().copied().zip(r.iter()).collect();
            ExportRow {
                business: f["business"].into(),
                customer: f["customer"].into(),
                position: f["position"].parse().unwrap(),
                record: f["record"].into(),
                decision: f["decision"].into(),
                outcome: f["outcome"].into(),
                event_time: f["event_time"].into(),
                received_time: f["received_time"].into(),
                expires_at: f["expires_at"].into(),
                team: f["team"].into(),
                campaign: f["campaign"].into(),
                labels: if f["labels"].is_empty() {
                    BTreeMap::new()
                } else {
                    serde_json::from_str(f["labels"]).unwrap()
                },
                customer_name: f["customer_name"].into(),
                source: f["source"].into(),
                message_id: f["message_id"].into(),
                paired_message_id: f["paired_message_id"].into(),
                response_source: f["response_source"].into(),
                sender_customer_id: f["sender_customer_id"].into(),
                body_sha256: f["body_sha256"].into(),
                stated_event_time: f["stated_event_time"].into(),
                stated_expires_at: f["stated_expires_at"].into(),
                prev_hash: f["prev_hash"].into(),
                entry_hash: f["entry_hash"].into(),
            }
        })
        .collect()
}

#[tokio::test]
async fn issue14_http_and_grpc_exports_hold_exactly_the_histories_in_both_formats() {
    let store = memory_store();
    let app = spawn_app_with(test_config(), store.clone()).await;
    let t = to_millis_precision(Utc::now());
    record_sample(&*store, t).await;
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str())];

    // The whole range, by received time: every decision of the business, in order.
    let all = RecordsRange {
        business: phone(BUSINESS),
        by: TimeField::Received,
        from: t,
        to: t + ms(61),
    };
    let want = expected_rows(&*store, &all).await;
    assert_eq!(want.len(), 7);
    // The rows are the histories: each pair's entries, in its history order, all fields.
    for c in 1..=3 {
        let history = store.history(&pair(c)).await.unwrap();
        let rows: Vec<&ExportRow> = want
            .iter()
            .filter(|r| r.customer == pair(c).customer.to_string())
            .collect();
        assert_eq!(rows.len(), history.len());
        for (i, (row, entry)) in rows.iter().zip(&history).enumerate() {
            assert_eq!(row.position, i as u64);
            let (back, link) = row.entry().unwrap().unwrap();
            assert_eq!(&back, entry);
            assert!(link.unwrap().matches(entry));
        }
    }
    assert!(want.iter().any(|r| r.outcome == "stale"));
    assert!(
        want.iter()
            .any(|r| r.team == "collections" && r.labels["region"] == "south, \"2\"")
    );
    assert!(want.iter().any(|r| !r.expires_at.is_empty()));
    let received: Vec<&str> = want.iter().map(|r| r.received_time.as_str()).collect();
    let mut sorted = received.clone();
    sorted.sort();
    assert_eq!(received, sorted, "ordered by received time");

    for (format, parse) in [
        ("ndjson", parse_ndjson as fn(&[u8]) -> Vec<ExportRow>),
        ("csv", parse_csv),
    ] {
        let answer = app
            .request_raw(
                "GET",
                &export_path(t, t + ms(61), format, "received"),
                &headers,
                "",
            )
            .await;
        assert_eq!(answer.status, 200, "{format}");
        assert!(
            answer
                .content_type
                .contains(format.trim_start_matches("nd")),
            "{format}"
        );
        assert_eq!(parse(&answer.body), want, "{format}");
    }

    // Range edges: from inclusive, to exclusive, by received and by event time.
    for (by, field, from, to) in [
        (TimeField::Received, "received", 10, 40),
        (TimeField::Received, "received", 20, 21),
        (TimeField::Received, "received", 20, 20),
        (TimeField::Event, "event", -50, 40),
        (TimeField::Event, "event", 0, 70),
    ] {
        let range = RecordsRange {
            business: phone(BUSINESS),
            by,
            from: t + ms(from),
            to: t + ms(to),
        };
        let want = expected_rows(&*store, &range).await;
        let times: Vec<DateTime<Utc>> = want
            .iter()
            .map(|r| {
                let s = if field == "event" {
                    &r.event_time
                } else {
                    &r.received_time
                };
                DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
            })
            .collect();
        assert!(
            times
                .iter()
                .all(|at| t + ms(from) <= *at && *at < t + ms(to))
        );
        let answer = app
            .request_raw(
                "GET",
                &export_path(t + ms(from), t + ms(to), "ndjson", field),
                &headers,
                "",
            )
            .await;
        assert_eq!(parse_ndjson(&answer.body), want, "{field} [{from}, {to})");
    }
    // The edges themselves: a decision received exactly at `from` is in, one exactly at `to`
    // is out.
    let edge = parse_ndjson(
        &app.request_raw(
            "GET",
            &export_path(t + ms(10), t + ms(20), "ndjson", "received"),
            &headers,
            "",
        )
        .await
        .body,
    );
    assert_eq!(edge.len(), 1);
    assert_eq!(edge[0].received_time, rfc3339(t + ms(10)));

    // gRPC ExportDecisions: the same rows.
    let mut client = app.grpc().await;
    let mut stream = client
        .export_decisions(pb::ExportDecisionsRequest {
            business_number: BUSINESS.into(),
            from: Some(callgate::grpc_api::timestamp(t)),
            to: Some(callgate::grpc_api::timestamp(t + ms(61))),
            by: pb::ExportTimeField::Received as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let mut grpc_rows = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        grpc_rows.push(ExportRow::from_pb(&m));
    }
    let want = expected_rows(&*store, &all).await;
    assert_eq!(grpc_rows, want);
    // GetConsentHistory carries the chain fields.
    let history = app.history(BUSINESS, &pair(1).customer.to_string()).await;
    assert_eq!(history.len(), 3);
    for (i, h) in history.iter().enumerate() {
        assert_eq!(h.position, i as u64);
        assert_eq!(h.entry_hash.len(), 64);
        if i > 0 {
            assert_eq!(h.prev_hash, history[i - 1].entry_hash);
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn issue14_exports_need_the_history_scope_and_stay_within_the_keys_businesses() {
    let dir = tempfile::tempdir().unwrap();
    let clients = dir.path().join("clients.toml");
    let digest = |k: &str| callgate::grpc_api::auth::key_digest(k);
    std::fs::write(
        &clients,
        format!(
            "[[client]]\nname = \"checker\"\nkey_sha256 = [\"{}\"]\nscopes = [\"check\"]\n\
             [[client]]\nname = \"other-business\"\nkey_sha256 = [\"{}\"]\nscopes = [\"history\"]\n\
             businesses = [\"+919111111111\"]\n\
             [[client]]\nname = \"auditor\"\nkey_sha256 = [\"{}\"]\nscopes = [\"history\"]\n\
             businesses = [\"{BUSINESS}\"]\n",
            digest("checker-key-1"),
            digest("other-key-2"),
            digest("auditor-key-3")
        ),
    )
    .unwrap();
    let mut config = test_config();
    config.api_clients_file = Some(clients);
    let store = memory_store();
    let app = spawn_app_with(config, store.clone()).await;
    let t = to_millis_precision(Utc::now());
    record_sample(&*store, t).await;
    let path = export_path(t, t + ms(100), "ndjson", "received");
    let answer = |key: Option<&'static str>, path: String| {
        let app = &app;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            app.request("GET", &path, &headers, "").await
        }
    };
    for (key, status, code) in [
        (None, 401, "unauthorized"),
        (Some("wrong-key"), 401, "unauthorized"),
        (Some("checker-key-1"), 403, "forbidden"),
        (Some("other-key-2"), 403, "forbidden"),
    ] {
        let a = answer(key, path.clone()).await;
        assert_eq!(a.status, status, "{key:?}: {:?}", a.body);
        assert_eq!(a.body["error"], code, "{key:?}");
    }
    let ok = app
        .request_raw(
            "GET",
            &path,
            &[("authorization", "Bearer auditor-key-3")],
            "",
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(parse_ndjson(&ok.body).len(), 7);
    // The other business's key sees its own business only.
    let mine =
        export_path(t, t + ms(100), "csv", "event").replace("%2B919000000000", "%2B919111111111");
    let theirs = app
        .request_raw("GET", &mine, &[("authorization", "Bearer other-key-2")], "")
        .await;
    assert_eq!(theirs.status, 200);
    assert_eq!(parse_csv(&theirs.body).len(), 1);
    // Bad input names the field.
    for (query, field) in [
        (
            "business=%2B919000000000&from=yesterday&to=2026-01-01T00:00:00Z",
            "from",
        ),
        ("business=%2B919000000000&from=2026-01-01T00:00:00Z", "to"),
        (
            "business=%2B919000000000&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z&format=xls",
            "format",
        ),
    ] {
        let a = answer(Some("auditor-key-3"), format!("/v1/export?{query}")).await;
        assert_eq!(a.status, 400, "{query}");
        assert_eq!(a.body["field"], field, "{query}");
    }
    // gRPC: the same refusals.
    let mut other = app.grpc_as(Some("other-key-2")).await;
    let refused = other
        .export_decisions(pb::ExportDecisionsRequest {
            business_number: BUSINESS.into(),
            from: Some(callgate::grpc_api::timestamp(t)),
            to: Some(callgate::grpc_api::timestamp(t + ms(100))),
            by: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    app.stop().await;
}

// ---- the real binary against a real Redis --------------------------------------------------

fn callgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_callgate"))
        .args(args)
        .output()
        .expect("run callgate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// One raw entry of a pair's history in Redis.
async fn raw_entry(conn: &mut redis::aio::MultiplexedConnection, key: &str, i: i64) -> Vec<u8> {
    redis::cmd("LINDEX")
        .arg(key)
        .arg(i)
        .query_async(conn)
        .await
        .unwrap()
}

async fn lset(conn: &mut redis::aio::MultiplexedConnection, key: &str, i: i64, v: &[u8]) {
    let _: () = redis::cmd("LSET")
        .arg(key)
        .arg(i)
        .arg(v)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_audit_verify_reports_edits_removals_and_reorders_made_in_redis() {
    let server = RedisServer::start();
    let store: Arc<dyn ConsentStore> =
        Arc::new(RedisStore::connect(server.v1_config()).await.unwrap());
    let t = to_millis_precision(Utc::now());
    // Four customers with three decisions each; customer 4 also has a pre-chain entry first
    // (as recorded before issue 14: no hash).
    let keys = Keys::new("callgate");
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old = decision(&pair(4), Choice::Deny, t - ms(1000), "wamid.old");
    let _: () = redis::cmd("RPUSH")
        .arg(keys.pair(&pair(4)).history)
        .arg(codec::encode_history(
            &old,
            HistoryOutcome::Applied,
            t - ms(1000),
        ))
        .query_async(&mut conn)
        .await
        .unwrap();
    for c in 1..=4 {
        for i in 0..3 {
            let d = decision(&pair(c), Choice::Deny, t + ms(i), &format!("wamid.{c}.{i}"));
            store
                .record(&[d], t + ms(10 * i64::from(c) + i))
                .await
                .unwrap();
        }
    }
    let service = CallgateProcess::start(&[
        ("CALLGATE_REDIS_URL", &server.url()),
        ("CALLGATE_REDIS_LAYOUT", "v1"),
    ])
    .unwrap();
    let addr = service.grpc.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.ndjson");
    let file_s = file.to_str().unwrap();
    let conn_args = ["--addr", &addr, "--token", API_KEY];
    let (from, to) = (rfc3339(t - ms(5000)), rfc3339(t + ms(1000)));

    // An intact record: export, verify the file, verify the store.
    let out = callgate(
        &[
            &[
                "export",
                "--business",
                BUSINESS,
                "--from",
                &from,
                "--to",
                &to,
                "--out",
                file_s,
            ][..],
            &conn_args,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.path().join("export.ndjson.partial").exists());
    let rows = parse_ndjson(&std::fs::read(&file).unwrap());
    assert_eq!(rows.len(), 12, "the pre-chain entry was never indexed");
    let out = callgate(&["audit", "verify", "--file", file_s]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("OK: 4 pairs, 12 entries (0 pre-chain), 0 broken chains"),
        "{}",
        text(&out)
    );
    let verify_store =
        || callgate(&[&["audit", "verify", "--business", BUSINESS][..], &conn_args].concat());
    let out = verify_store();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("OK: 4 pairs, 13 entries (1 pre-chain), 0 broken chains"),
        "{}",
        text(&out)
    );

    // An edited export file: the row's own hash no longer matches.
    let mut edited_rows = rows.clone();
    edited_rows[4].response_source = "forged".into();
    let edited_file = dir.path().join("edited.ndjson");
    std::fs::write(
        &edited_file,
        edited_rows
            .iter()
            .map(|r| serde_json::to_string(r).unwrap() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let out = callgate(&["audit", "verify", "--file", edited_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "BROKEN business={BUSINESS} customer={} position={}: edited",
            edited_rows[4].customer, edited_rows[4].position
        )),
        "{}",
        text(&out)
    );

    // Tamper with Redis directly: edit customer 1's entry 1, remove customer 2's entry 1, swap
    // customer 3's entries 0 and 1.
    let h1 = keys.pair(&pair(1)).history;
    let raw = raw_entry(&mut conn, &h1, 1).await;
    let (mut entry, link) = codec::decode_history_linked(&pair(1), &raw).unwrap();
    entry.received_at += ms(1);
    let forged = codec::encode_history_linked(
        &entry.decision,
        entry.outcome,
        entry.received_at,
        &link.unwrap(),
    );
    lset(&mut conn, &h1, 1, &forged).await;
    let h2 = keys.pair(&pair(2)).history;
    lset(&mut conn, &h2, 1, b"doomed").await;
    let _: () = redis::cmd("LREM")
        .arg(&h2)
        .arg(1)
        .arg("doomed")
        .query_async(&mut conn)
        .await
        .unwrap();
    let h3 = keys.pair(&pair(3)).history;
    let (e0, e1) = (
        raw_entry(&mut conn, &h3, 0).await,
        raw_entry(&mut conn, &h3, 1).await,
    );
    lset(&mut conn, &h3, 0, &e1).await;
    lset(&mut conn, &h3, 1, &e0).await;

    let out = verify_store();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    let c = |n: u32| pair(n).customer.to_string();
    for line in [
        format!(
            "BROKEN business={BUSINESS} customer={} position=1: edited",
            c(1)
        ),
        format!(
            "BROKEN business={BUSINESS} customer={} position=1: removed: the entry here was recorded at position 2",
            c(2)
        ),
        format!(
            "BROKEN business={BUSINESS} customer={} position=0: removed: the entry here was recorded at position 1",
            c(3)
        ),
        format!(
            "BROKEN business={BUSINESS} customer={} position=1: reordered: the entry here was recorded at position 0",
            c(3)
        ),
        // The index still names customer 2's third entry, which is gone.
        format!(
            "BROKEN business={BUSINESS} customer={} position=2: gone",
            c(2)
        ),
    ] {
        assert!(report.contains(&line), "missing {line:?} in:\n{report}");
    }
    assert!(!report.contains(&format!("customer={}", c(4))), "{report}");
    assert!(report.contains("BROKEN: 4 pairs"), "{report}");
    assert!(report.contains("3 broken chains"), "{report}");
    assert!(service.terminate());
}

/// A v2 entry: its shard's key prefix and its 5-byte pointer (segment 3 B, offset 2 B).
type V2Entry = (String, [u8; 5]);

/// The newest entry of `pair` on a v2 store: the pointer its hot record holds.
async fn v2_newest_entry(
    conn: &mut redis::aio::MultiplexedConnection,
    pair: &Pair,
    buckets: u32,
) -> V2Entry {
    use callgate::store::redis::codec::packed::{HotRecord, pair_field};
    use callgate::store::redis::keys::{hot_bucket, shard_of};

    let prefix = Keys::new("callgate").shard_prefix(shard_of(pair));
    let field = pair_field(pair);
    let hot: Vec<u8> = redis::cmd("HGET")
        .arg(format!("{prefix}p:{}", hot_bucket(&field, buckets)))
        .arg(&field[..])
        .query_async(conn)
        .await
        .unwrap();
    let newest = HotRecord::decode(&hot).unwrap().newest;
    let mut ptr = [0u8; 5];
    ptr[..3].copy_from_slice(&newest.segment.to_be_bytes()[1..]);
    ptr[3..].copy_from_slice(&newest.offset.to_be_bytes());
    (prefix, ptr)
}

/// The segment key of a v2 entry, and the offset of its byte `at` in it.
fn v2_segment_at((prefix, ptr): &V2Entry, at: usize) -> (String, usize) {
    let segment = u32::from_be_bytes([0, ptr[0], ptr[1], ptr[2]]);
    let offset = usize::from(u16::from_be_bytes([ptr[3], ptr[4]]));
    (format!("{prefix}g:{segment}"), offset + at)
}

/// The entry a v2 entry's back pointer (bytes 39..44) names.
async fn v2_back_pointer(conn: &mut redis::aio::MultiplexedConnection, entry: &V2Entry) -> V2Entry {
    let (segment, at) = v2_segment_at(entry, 39);
    let back: Vec<u8> = redis::cmd("GETRANGE")
        .arg(segment)
        .arg(at)
        .arg(at + 4)
        .query_async(conn)
        .await
        .unwrap();
    (
        entry.0.clone(),
        back.try_into().expect("a 5-byte back pointer"),
    )
}

/// The same tamper evidence on layout v2, the layout of every new store: an entry edited in
/// its history segment (its decided time moved by 1 ms: it still decodes) is reported as
/// edited at its position while the other pair verifies; then an entry cut out of a chain (the
/// next entry's back pointer edited to skip it) is reported gone, and its successor broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue14_audit_verify_reports_entries_edited_and_cut_out_in_v2_segments() {
    let server = RedisServer::start();
    let store = RedisStore::connect(callgate::store::redis::RedisConfig::new(server.url()))
        .await
        .unwrap();
    assert_eq!(store.config().layout, callgate::store::redis::Layout::V2);
    let t = to_millis_precision(Utc::now());
    for c in 1..=2 {
        for i in 0..3 {
            let d = decision(&pair(c), Choice::Deny, t + ms(i), &format!("wamid.{c}.{i}"));
            store.record(&[d], t + ms(i)).await.unwrap();
        }
    }
    let service = CallgateProcess::start(&[("CALLGATE_REDIS_URL", &server.url())]).unwrap();
    let addr = service.grpc.to_string();
    let verify_store = || {
        callgate(&[
            "audit",
            "verify",
            "--business",
            BUSINESS,
            "--addr",
            &addr,
            "--token",
            API_KEY,
        ])
    };
    let out = verify_store();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("OK: 2 pairs, 6 entries (0 pre-chain), 0 broken chains"),
        "{}",
        text(&out)
    );

    // Customer 1's entry 1: the hot record names entry 2, whose back pointer names entry 1.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let buckets = store.config().hot_buckets;
    let p = pair(1);
    let newest = v2_newest_entry(&mut conn, &p, buckets).await;
    let entry1 = v2_back_pointer(&mut conn, &newest).await;
    // Entry 1 has a back pointer: its decided time (6 bytes) starts at byte 51.
    let (segment, at) = v2_segment_at(&entry1, 51 + 5);
    let byte: Vec<u8> = redis::cmd("GETRANGE")
        .arg(&segment)
        .arg(at)
        .arg(at)
        .query_async(&mut conn)
        .await
        .unwrap();
    let forged = if byte[0] == 255 { 254 } else { byte[0] + 1 };
    let _: () = redis::cmd("SETRANGE")
        .arg(&segment)
        .arg(at)
        .arg(&[forged][..])
        .query_async(&mut conn)
        .await
        .unwrap();

    let out = verify_store();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    let line = format!(
        "BROKEN business={BUSINESS} customer={} position=1: edited",
        p.customer
    );
    assert!(report.contains(&line), "missing {line:?} in:\n{report}");
    assert!(
        !report.contains(&format!("customer={}", pair(2).customer)),
        "{report}"
    );
    assert!(report.contains("1 broken chain"), "{report}");

    // Customer 2's entry 1 cut out of the chain: entry 2's back pointer set to entry 1's.
    let p2 = pair(2);
    let newest2 = v2_newest_entry(&mut conn, &p2, buckets).await;
    let entry1 = v2_back_pointer(&mut conn, &newest2).await;
    let entry0 = v2_back_pointer(&mut conn, &entry1).await;
    let (segment, at) = v2_segment_at(&newest2, 39);
    let _: () = redis::cmd("SETRANGE")
        .arg(&segment)
        .arg(at)
        .arg(&entry0.1[..])
        .query_async(&mut conn)
        .await
        .unwrap();
    // The cut entry is reported gone where its own back chain puts it; its successor, now at
    // position 1, does not match its hash there. (A v2 entry does not carry its position, so
    // the audit cannot tell "recorded at position 2" as v1's does: it says edited.)
    let out = verify_store();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(2), "{report}");
    let c2 = p2.customer.to_string();
    for line in [
        format!(
            "BROKEN business={BUSINESS} customer={} position=1: edited",
            p.customer
        ),
        format!("BROKEN business={BUSINESS} customer={c2} position=1: gone"),
        format!("BROKEN business={BUSINESS} customer={c2} position=1: edited"),
    ] {
        assert!(report.contains(&line), "missing {line:?} in:\n{report}");
    }
    assert!(report.contains("2 broken chains"), "{report}");
    assert!(service.terminate());
}

/// Decisions recorded after pre-chain entries chain from zeros; the history is otherwise
/// untouched, and `HistoryEntry` equality still holds for every entry.
#[tokio::test]
async fn issue14_pre_chain_entries_are_kept_and_the_chain_starts_after_them() {
    let server = RedisServer::start();
    let store = RedisStore::connect(server.v1_config()).await.unwrap();
    let t = to_millis_precision(Utc::now());
    let p = pair(9);
    let keys = Keys::new("callgate");
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old: Vec<Decision> = (0..2)
        .map(|i| decision(&p, Choice::Deny, t - ms(100 - i), &format!("old{i}")))
        .collect();
    for d in &old {
        let _: () = redis::cmd("RPUSH")
            .arg(keys.pair(&p).history)
            .arg(codec::encode_history(
                d,
                HistoryOutcome::Applied,
                d.decided_at,
            ))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let new = decision(&p, Choice::GrantPermanent, t, "new");
    store.record(std::slice::from_ref(&new), t).await.unwrap();
    let page = store.history_page(&p, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.links[..2], [None, None]);
    let link = page.links[2].unwrap();
    assert_eq!((link.position, link.prev), (2, callgate::domain::GENESIS));
    assert_eq!(
        page.entries[2],
        HistoryEntry {
            decision: new,
            outcome: HistoryOutcome::Applied,
            received_at: t
        }
    );
    let mut walk = callgate::domain::chain::ChainWalk::new();
    for (e, l) in page.entries.iter().zip(&page.links) {
        walk.entry(e, l.as_ref());
    }
    assert!(walk.breaks.is_empty());
    assert_eq!((walk.pre_chain, walk.hashed), (2, 1));
}
