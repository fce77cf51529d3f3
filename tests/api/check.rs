//! gRPC answers: single and batch checks, history, argument errors.

use callgate::pb::{self, ConsentState, check_result};
use chrono::Utc;
use tonic::Code;

use crate::helpers::*;

fn req(business: &str, customer: &str) -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        business_number: business.into(),
        customer_number: customer.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_invalid_number_is_an_error_not_a_new_customer() {
    let app = spawn_app().await;
    for (business, customer) in [("abc", CUSTOMER), (BUSINESS, ""), (BUSINESS, "0987654321")] {
        let err = app
            .grpc()
            .await
            .check_call_permission(req(business, customer))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{business} {customer}");
    }
}

#[tokio::test]
async fn batch_answers_in_order_with_per_item_errors() {
    let app = spawn_app().await;
    let now = Utc::now();
    let granted = "+919800000001";
    let denied = "+919800000002";
    let unknown = "+919800000003";
    app.post_doubletick(doubletick(
        BUSINESS,
        granted,
        "g",
        now,
        "accept",
        Some(true),
    ))
    .await;
    app.post_doubletick(doubletick(BUSINESS, denied, "d", now, "reject", None))
        .await;

    let checks = vec![
        req(BUSINESS, denied),
        req(BUSINESS, "not a number"),
        req(BUSINESS, granted),
        req(BUSINESS, unknown),
        req("+91 90000 00000", "919800000001"),
    ];
    let results = app
        .grpc()
        .await
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            check_result::Result::Answer(a) => format!(
                "{} {} {}",
                a.customer_number,
                ConsentState::try_from(a.state).unwrap().as_str_name(),
                a.allowed
            ),
            check_result::Result::Error(e) => format!("error {}", e.code),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            format!("{denied} CONSENT_STATE_DENIED false"),
            format!("error {}", Code::InvalidArgument as i32),
            format!("{granted} CONSENT_STATE_GRANTED_PERMANENT true"),
            format!("{unknown} CONSENT_STATE_NO_CONSENT false"),
            format!("{granted} CONSENT_STATE_GRANTED_PERMANENT true"),
        ]
    );
}

#[tokio::test]
async fn a_batch_over_the_limit_is_refused_whole() {
    let app = spawn_app().await;
    let checks = vec![req(BUSINESS, CUSTOMER); callgate::grpc_api::MAX_BATCH + 1];
    let err = app
        .grpc()
        .await
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let full = vec![req(BUSINESS, CUSTOMER); callgate::grpc_api::MAX_BATCH];
    let ok = app
        .grpc()
        .await
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: full,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), callgate::grpc_api::MAX_BATCH);
}

#[tokio::test]
async fn history_lists_every_decision_with_its_evidence() {
    let app = spawn_app().await;
    let t = Utc::now();
    let bodies = [
        doubletick(
            BUSINESS,
            CUSTOMER,
            "first",
            t - chrono::Duration::minutes(3),
            "accept",
            Some(false),
        ),
        doubletick(
            BUSINESS,
            CUSTOMER,
            "second",
            t - chrono::Duration::minutes(2),
            "reject",
            None,
        ),
        doubletick(
            BUSINESS,
            CUSTOMER,
            "late",
            t - chrono::Duration::minutes(5),
            "accept",
            Some(true),
        ),
        doubletick(
            BUSINESS,
            CUSTOMER,
            "third",
            t - chrono::Duration::minutes(1),
            "accept",
            Some(true),
        ),
    ];
    for b in &bodies {
        assert_eq!(app.post_doubletick(b.clone()).await.status, 200);
    }
    let history = app.history("919000000000", "+91 98765 43210").await;
    let rows: Vec<(String, i32, i32)> = history
        .iter()
        .map(|h| {
            let e = h.evidence.as_ref().unwrap();
            assert_eq!(e.paired_message_id, format!("paired-{}", e.message_id));
            assert_eq!(e.response_source, "user_initiated");
            assert_eq!(e.body_sha256.len(), 64);
            assert!(h.received_at.is_some());
            (e.message_id.clone(), h.kind, h.outcome)
        })
        .collect();
    use pb::{DecisionKind as K, HistoryOutcome as O};
    assert_eq!(
        rows,
        vec![
            ("first".into(), K::GrantTemporary as i32, O::Applied as i32),
            ("second".into(), K::Deny as i32, O::Applied as i32),
            ("late".into(), K::GrantPermanent as i32, O::Stale as i32),
            ("third".into(), K::GrantPermanent as i32, O::Applied as i32),
        ]
    );
    assert_eq!(
        app.state(BUSINESS, CUSTOMER).await,
        ConsentState::GrantedPermanent
    );
}

// Paused time: the polling below passes no wall-clock time.
#[tokio::test(start_paused = true)]
async fn grpc_health_reports_serving() {
    let app = spawn_app().await;
    let channel = app.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    // The store is checked once a second; wait (bounded) for the first report.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "callgate.v1.ConsentAuthority".into(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.as_ref().ok()
            == Some(&(tonic_health::pb::health_check_response::ServingStatus::Serving as i32))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never SERVING: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn grpc_reflection_lists_the_consent_authority() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let app = spawn_app().await;
    let channel = app.channel().await;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "callgate.v1.ConsentAuthority"),
        "{names:?}"
    );
}
