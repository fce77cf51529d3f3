//! Command-line client subcommands: `callgate check`, `callgate watch` and
//! `callgate healthcheck`.
//!
//! Small clients for demos and operations; they print one line per answer or event. Their
//! errors display as one line (the binary prints it and exits 1), never as a backtrace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::transport::{Channel, Endpoint};

use crate::grpc_api::from_timestamp;
use crate::pb::{self, consent_authority_client::ConsentAuthorityClient};

/// How long a client subcommand waits for a connection (and `healthcheck` for its answer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Failures of a client subcommand. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `reason` is the innermost cause ("Connection refused (os error 111)").
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("{url} answered {status}")]
    Unhealthy { url: String, status: u16 },
    #[error("{url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
}

/// The innermost cause of an error: what the user can act on, without the layers above it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn connect(addr: &str) -> Result<ConsentAuthorityClient<Channel>, ClientError> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let failed = |e: tonic::transport::Error| ClientError::Connect {
        addr: addr.to_owned(),
        reason: root_cause(&e),
    };
    let channel = Endpoint::from_shared(url)
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(failed)?;
    Ok(ConsentAuthorityClient::new(channel))
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

/// Where `callgate healthcheck` looks when no `--addr` is given: the HTTP port this process
/// would listen on (`CALLGATE_HTTP_ADDR`, else the default), with a wildcard address
/// (`0.0.0.0`, `::`) replaced by loopback, since a probe runs beside the service.
pub fn healthcheck_addr(http_addr_env: Option<&str>) -> String {
    let configured = http_addr_env
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or(crate::config::DEFAULT_HTTP_ADDR);
    match configured.parse::<SocketAddr>() {
        Ok(mut addr) if addr.ip().is_unspecified() => {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
            addr.to_string()
        }
        _ => configured.to_owned(),
    }
}

/// `callgate healthcheck`: `GET http://ADDR/PATH`; Ok if it answers 2xx within [`CONNECT_TIMEOUT`].
/// The container image's HEALTHCHECK, which has no curl.
pub async fn healthcheck(addr: &str, path: &str) -> Result<u16, ClientError> {
    let url = format!("http://{addr}{path}");
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| ClientError::Connect {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let answer = tokio::time::timeout(CONNECT_TIMEOUT, client.get(uri)).await;
    let response = match answer {
        Err(_) => {
            return Err(ClientError::Timeout {
                url,
                timeout: CONNECT_TIMEOUT,
            });
        }
        Ok(Err(e)) => {
            return Err(ClientError::Connect {
                addr: addr.to_owned(),
                reason: root_cause(&e),
            });
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status().as_u16();
    if response.status().is_success() {
        Ok(status)
    } else {
        Err(ClientError::Unhealthy { url, status })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthcheck_probes_loopback_on_the_configured_port() {
        let cases = [
            (None, "127.0.0.1:8080"),
            (Some(""), "127.0.0.1:8080"),
            (Some("0.0.0.0:9000"), "127.0.0.1:9000"),
            (Some("[::]:9000"), "[::1]:9000"),
            (Some("10.1.2.3:8081"), "10.1.2.3:8081"),
            (Some("callgate:8080"), "callgate:8080"),
        ];
        for (env, want) in cases {
            assert_eq!(healthcheck_addr(env), want, "{env:?}");
        }
    }

    #[test]
    fn root_cause_is_the_innermost_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(root_cause(&Outer(io)), "refused");
    }
}
