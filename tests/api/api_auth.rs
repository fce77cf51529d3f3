//! The gRPC API's front door: API keys, scopes and business scoping, over real sockets.

use std::io::Write as _;

use callgate::grpc_api::auth::key_digest;
use callgate::pb::{self, ConsentState, EventKind};
use chrono::Utc;
use tonic::Code;

use crate::helpers::*;
use crate::stream::events_until_checkpoint;

/// A second business; the scoped clients below may not see it.
const OTHER: &str = "+14155550100";
const DIALER_KEY: &str = "dialer-key-0001";
const DIALER_OLD_KEY: &str = "dialer-key-0000-retired";
const STREAMER_KEY: &str = "streamer-key-0002";

/// A clients file: a dialer that may only check (any business), and a service that may only
/// stream and read history for [`BUSINESS`]. `dialer_keys` are the dialer's accepted keys.
fn clients_file(dialer_keys: &[&str]) -> tempfile::NamedTempFile {
    let digests: Vec<String> = dialer_keys
        .iter()
        .map(|k| format!("\"{}\"", key_digest(k)))
        .collect();
    let text = format!(
        r#"
[[client]]
name = "dialer"
key_sha256 = [{}]
scopes = ["check"]

[[client]]
name = "streamer-one"
key_sha256 = ["{}"]
scopes = ["stream", "history", "check"]
businesses = ["{BUSINESS}"]

[[client]]
name = "test-all"
key_sha256 = ["{}"]
scopes = ["check", "stream", "history"]
"#,
        digests.join(", "),
        key_digest(STREAMER_KEY),
        key_digest(API_KEY),
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

async fn spawn_with_clients(file: &tempfile::NamedTempFile) -> TestApp {
    let mut config = test_config();
    config.api_clients_file = Some(file.path().to_owned());
    spawn_app_with(config, memory_store()).await
}

fn check_req(business: &str) -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        business_number: business.into(),
        customer_number: CUSTOMER.into(),
        ..Default::default()
    }
}

async fn grant(app: &TestApp, business: &str, customer: &str, id: &str) {
    let body = doubletick(business, customer, id, Utc::now(), "accept", Some(true));
    assert_eq!(app.post_doubletick(body).await.status, 200);
}

fn refusals(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("callgate_api_refusals_total{"))
        .collect()
}

#[tokio::test]
async fn missing_unknown_and_retired_keys_are_unauthenticated_and_scopes_are_enforced() {
    let file = clients_file(&[DIALER_KEY]);
    let app = spawn_with_clients(&file).await;
    grant(&app, BUSINESS, CUSTOMER, "g1").await;

    // Every way of not presenting a valid key: UNAUTHENTICATED, and no answer.
    for key in [
        None,
        Some("wrong-key"),
        Some(DIALER_OLD_KEY),
        Some(&key_digest(DIALER_KEY)[..]),
    ] {
        let err = app
            .grpc_as(key)
            .await
            .check_call_permission(check_req(BUSINESS))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{key:?}: {err:?}");
    }
    // A malformed header, sent by hand.
    let mut raw = pb::consent_authority_client::ConsentAuthorityClient::new(app.channel().await);
    let mut req = tonic::Request::new(check_req(BUSINESS));
    req.metadata_mut().insert(
        "authorization",
        format!("Basic {DIALER_KEY}").parse().unwrap(),
    );
    let err = raw.check_call_permission(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // The dialer checks, and may do nothing else.
    let mut dialer = app.grpc_as(Some(DIALER_KEY)).await;
    let answer = dialer
        .check_call_permission(check_req(BUSINESS))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed);
    let batch = dialer
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: vec![check_req(BUSINESS), check_req(OTHER)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 2);
    let err = dialer
        .stream_grants(pb::StreamGrantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("stream"), "{}", err.message());
    let err = dialer
        .get_consent_history(pb::GetConsentHistoryRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Health stays open without a key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel().await);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers without a key");

    let metrics = crate::metrics::scrape(&app).await;
    let got = refusals(&metrics);
    for want in [
        "callgate_api_refusals_total{client=\"unauthenticated\",reason=\"missing_key\"} 1",
        "callgate_api_refusals_total{client=\"unauthenticated\",reason=\"unknown_key\"} 3",
        "callgate_api_refusals_total{client=\"unauthenticated\",reason=\"malformed_key\"} 1",
        "callgate_api_refusals_total{client=\"dialer\",reason=\"missing_scope\"} 2",
    ] {
        assert!(got.contains(&want), "missing {want}: {got:#?}");
    }
    assert_eq!(got.len(), 4, "{got:#?}");
    assert!(!metrics.contains(DIALER_KEY) && !metrics.contains(&key_digest(DIALER_KEY)));
}

// Paused time: the polling below passes no wall-clock time.
#[tokio::test(start_paused = true)]
async fn a_rotated_key_works_until_it_is_removed_from_the_file_without_a_restart() {
    // Both keys listed: both work.
    let file = clients_file(&[DIALER_OLD_KEY, DIALER_KEY]);
    let mut config = test_config();
    config.api_clients_file = Some(file.path().to_owned());
    config.api_clients_reload_interval = std::time::Duration::from_millis(100);
    let app = spawn_app_with(config, memory_store()).await;
    let check = |key: &'static str| {
        let app = &app;
        async move {
            app.grpc_as(Some(key))
                .await
                .check_call_permission(check_req(BUSINESS))
                .await
        }
    };
    for key in [DIALER_OLD_KEY, DIALER_KEY] {
        let state = check(key).await.unwrap().into_inner().state;
        assert_eq!(state, ConsentState::NoConsent as i32);
    }
    // The old key rotated out of the file (replaced by rename, as an operator would).
    let new_only = clients_file(&[DIALER_KEY]);
    new_only.persist(file.path()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match check(DIALER_OLD_KEY).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "old key still accepted after 10 s: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    check(DIALER_KEY).await.unwrap();
}

#[tokio::test]
async fn a_client_limited_to_one_business_sees_nothing_of_another() {
    let file = clients_file(&[DIALER_KEY]);
    let app = spawn_with_clients(&file).await;
    let mut streamer = app.grpc_as(Some(STREAMER_KEY)).await;
    // Subscribed before anything happens, with no filter and with everything included.
    let mut unfiltered = streamer
        .stream_grants(pb::StreamGrantsRequest {
            include_denials: true,
            include_expiries: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    grant(&app, OTHER, CUSTOMER, "other-1").await;
    grant(&app, BUSINESS, CUSTOMER, "mine-1").await;
    let deny = doubletick(
        OTHER,
        "+919800000009",
        "other-2",
        Utc::now(),
        "reject",
        None,
    );
    assert_eq!(app.post_doubletick(deny).await.status, 200);
    grant(&app, BUSINESS, "+919800000008", "mine-2").await;

    // Single check: refused for the other business, answered for its own.
    let err = streamer
        .check_call_permission(check_req(OTHER))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let mine = streamer
        .check_call_permission(check_req(BUSINESS))
        .await
        .unwrap()
        .into_inner();
    assert!(mine.allowed);

    // Batch: the other business's item gets its own error and no answer; the rest are answered.
    let batch = streamer
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: vec![check_req(BUSINESS), check_req(OTHER), check_req("12ab")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    use pb::check_result::Result as R;
    match batch.results[0].result.as_ref().unwrap() {
        R::Answer(a) => assert!(a.allowed),
        other => panic!("{other:?}"),
    }
    match batch.results[1].result.as_ref().unwrap() {
        R::Error(e) => assert_eq!(e.code, Code::PermissionDenied as i32),
        other => panic!("another business's pair was answered: {other:?}"),
    }
    match batch.results[2].result.as_ref().unwrap() {
        R::Error(e) => assert_eq!(e.code, Code::InvalidArgument as i32),
        other => panic!("{other:?}"),
    }

    // History of the other business: refused.
    let err = streamer
        .get_consent_history(pb::GetConsentHistoryRequest {
            business_number: OTHER.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let history = streamer
        .get_consent_history(pb::GetConsentHistoryRequest {
            business_number: BUSINESS.into(),
            customer_number: CUSTOMER.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(history.entries.len(), 1);

    // Asking to stream the other business (alone or with its own): refused.
    for filter in [vec![OTHER], vec![BUSINESS, OTHER]] {
        let err = streamer
            .stream_grants(pb::StreamGrantsRequest {
                business_numbers: filter.iter().map(|b| b.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{filter:?}");
    }

    // The unfiltered live stream and an unfiltered replay from the start carry only its own
    // business's events (everything up to a checkpoint is everything there is).
    let mut replay = streamer
        .stream_grants(pb::StreamGrantsRequest {
            include_denials: true,
            include_expiries: true,
            since: Some(prost_types::Timestamp::default()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for stream in [&mut unfiltered, &mut replay] {
        let (events, _) = events_until_checkpoint(stream).await;
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                (
                    e.business_number.as_str(),
                    e.evidence.as_ref().unwrap().message_id.as_str(),
                )
            })
            .collect();
        assert_eq!(seen, vec![(BUSINESS, "mine-1"), (BUSINESS, "mine-2")]);
        assert!(events.iter().all(|e| e.kind == EventKind::Granted as i32));
    }
    // The same replay for a client with every business does carry the other business: the
    // scoping, not an empty store, kept it out.
    let mut all = app
        .stream(pb::StreamGrantsRequest {
            include_denials: true,
            since: Some(prost_types::Timestamp::default()),
            ..Default::default()
        })
        .await;
    let (events, _) = events_until_checkpoint(&mut all).await;
    assert_eq!(events.len(), 4);

    let metrics = crate::metrics::scrape(&app).await;
    let want = "callgate_api_refusals_total{client=\"streamer-one\",reason=\"other_business\"} 5";
    assert!(refusals(&metrics).contains(&want), "{metrics}");
}

#[tokio::test]
async fn with_no_client_configured_every_call_is_refused_unless_auth_is_off() {
    let mut config = test_config();
    config.api_clients_file = None;
    let app = spawn_app_with(config.clone(), memory_store()).await;
    let err = app
        .grpc()
        .await
        .check_call_permission(check_req(BUSINESS))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("CALLGATE_API_CLIENTS_FILE"),
        "{}",
        err.message()
    );
    app.stop().await;

    config.insecure_no_auth = true;
    let app = spawn_app_with(config, memory_store()).await;
    let answer = app
        .grpc_as(None)
        .await
        .check_call_permission(check_req(BUSINESS))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().state, ConsentState::NoConsent as i32);
}

#[tokio::test]
async fn a_run_with_keys_logs_refusals_but_never_a_key_or_a_digest() {
    let file = clients_file(&[DIALER_OLD_KEY, DIALER_KEY]);
    let path = file.path().to_str().unwrap().to_owned();
    let process = crate::process::CallgateProcess::start(&[
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
        ("CALLGATE_API_CLIENTS_FILE", path.as_str()),
    ])
    .unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    api.grpc_as(Some(DIALER_KEY))
        .await
        .check_call_permission(check_req(BUSINESS))
        .await
        .unwrap();
    let presented = "presented-but-unknown-key-77";
    for key in [Some(presented), None] {
        let err = api
            .grpc_as(key)
            .await
            .check_call_permission(check_req(BUSINESS))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = api
        .grpc_as(Some(DIALER_KEY))
        .await
        .stream_grants(pb::StreamGrantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = api
        .grpc_as(Some(STREAMER_KEY))
        .await
        .check_call_permission(check_req(OTHER))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let log = process
        .log_when(std::time::Duration::from_secs(10), |log| {
            log.matches("api call refused").count() >= 4
        })
        .await;
    for reason in [
        "unknown_key",
        "missing_key",
        "missing_scope",
        "other_business",
    ] {
        assert!(log.contains(reason), "{reason} not logged:\n{log}");
    }
    assert!(
        log.contains("gRPC API: clients authenticated by key"),
        "{log}"
    );
    for key in [DIALER_OLD_KEY, DIALER_KEY, STREAMER_KEY, API_KEY, presented] {
        assert!(!log.contains(key), "a key reached the log:\n{log}");
        let digest = key_digest(key);
        assert!(!log.contains(&digest), "a digest reached the log:\n{log}");
        assert!(
            !log.contains(&digest[..16]),
            "part of a digest reached the log:\n{log}"
        );
    }
    assert!(
        !log.contains("4155550100"),
        "a phone number reached the log:\n{log}"
    );
}

/// Runs the `callgate` binary with `args` (and `env`); returns its exit code and output.
fn callgate(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_callgate"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn the_readme_demo_key_and_keygen_work_from_the_command_line() {
    let demo = format!("{}/demo/api-clients.toml", env!("CARGO_MANIFEST_DIR"));
    let process = crate::process::CallgateProcess::start(&[
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
        ("CALLGATE_API_CLIENTS_FILE", demo.as_str()),
    ])
    .unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    grant_over(&api).await;
    let addr = process.grpc.to_string();
    let check = ["check", "--addr", addr.as_str(), BUSINESS, CUSTOMER];

    // The README's demo command: allowed (exit 0), by flag or by environment variable.
    let with_flag: Vec<&str> = check
        .iter()
        .copied()
        .chain(["--token", "demo-key"])
        .collect();
    let (code, out) = callgate(&with_flag, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("allowed=true"), "{out}");
    let (code, out) = callgate(&check, &[("CALLGATE_TOKEN", "demo-key")]);
    assert_eq!(code, 0, "{out}");
    // No key, or a wrong one: an error naming the refusal, not an answer.
    let (code, out) = callgate(&check, &[]);
    assert!(code != 0 && code != 3, "{code}: {out}");
    assert!(
        out.contains("Unauthenticated") || out.contains("UNAUTHENTICATED"),
        "{out}"
    );
    let (code, out) = callgate(&check, &[("CALLGATE_TOKEN", "not-the-demo-key")]);
    assert!(code != 0 && code != 3, "{code}: {out}");

    // keygen: a fresh key whose printed digest is its SHA-256, and the server accepts it once
    // the digest is listed.
    let (code, out) = callgate(&["keygen"], &[]);
    assert_eq!(code, 0, "{out}");
    let field = |name: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    let (key, digest) = (field("key"), field("key_sha256"));
    assert_eq!(digest, key_digest(&key));
    let (_, again) = callgate(&["keygen"], &[]);
    assert!(!again.contains(&key), "keygen repeated a key");
}

async fn grant_over(api: &Endpoints) {
    let body = doubletick(
        BUSINESS,
        CUSTOMER,
        "demo-1",
        Utc::now(),
        "accept",
        Some(true),
    );
    assert_eq!(api.post_doubletick(body).await.status, 200);
}
