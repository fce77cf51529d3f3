//! Command-line client subcommands: `callgate check` and `callgate watch`.
//!
//! Small gRPC clients for demos and operations; they print one line per answer or event.

use chrono::{DateTime, Utc};
use tonic::transport::Channel;

use crate::grpc_api::from_timestamp;
use crate::pb::{self, consent_authority_client::ConsentAuthorityClient};

/// Failures of a client subcommand.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
}

async fn connect(addr: &str) -> Result<ConsentAuthorityClient<Channel>, ClientError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    ConsentAuthorityClient::connect(url)
        .await
        .map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(from_timestamp)
        .map_or_else(|| "-".to_owned(), |t: DateTime<Utc>| t.to_rfc3339())
}

fn state_name(state: i32) -> &'static str {
    pb::ConsentState::try_from(state)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// `callgate check BUSINESS CUSTOMER`: prints the answer; returns whether the call is allowed.
pub async fn check(addr: &str, business: &str, customer: &str) -> Result<bool, ClientError> {
    let mut client = connect(addr).await?;
    let answer = client
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: business.to_owned(),
            customer_number: customer.to_owned(),
        })
        .await?
        .into_inner();
    println!(
        "allowed={} state={} business={} customer={} decided_at={} expires_at={} message_id={}",
        answer.allowed,
        state_name(answer.state),
        answer.business_number,
        answer.customer_number,
        time(&answer.decided_at),
        time(&answer.expires_at),
        answer
            .evidence
            .as_ref()
            .map_or("-", |e| e.message_id.as_str()),
    );
    Ok(answer.allowed)
}

/// `callgate watch`: prints StreamGrants events until interrupted or the server ends the stream.
pub async fn watch(addr: &str, request: pb::StreamGrantsRequest) -> Result<(), ClientError> {
    let mut client = connect(addr).await?;
    let mut stream = client.stream_grants(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let kind = pb::EventKind::try_from(event.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        if event.kind == pb::EventKind::Checkpoint as i32 {
            println!("{kind} cursor={}", event.cursor);
            continue;
        }
        println!(
            "{kind} business={} customer={} permanent={} decided_at={} expires_at={} cursor={}",
            event.business_number,
            event.customer_number,
            event.permanent,
            time(&event.decided_at),
            time(&event.expires_at),
            event.cursor,
        );
    }
    Ok(())
}
