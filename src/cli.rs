//! Command-line client subcommands: `callgate check`, `callgate watch`,
//! `callgate healthcheck`, `callgate webhooks â¦` (issue 17, in `cli/webhooks.rs`); issue 14's
//! `callgate export` and `callgate audit verify` live in [`records`].
//!
//! Small gRPC clients for demos and operations; they print one line per answer or event. They
//! send an API key (`--token` or `CALLGATE_TOKEN`) and speak TLS when given the CA
//! (`--tls-ca`). Their errors display as one line (the binary prints it and exits 1), never as
//! a backtrace.

pub mod webhooks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use chrono::{DateTime, Utc};
use http_body_util::Empty;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub mod records;

use crate::grpc_api::from_timestamp;
use crate::pb::{self, consent_authority_client::ConsentAuthorityClient};

/// How long a client subcommand waits for a connection (and `healthcheck` for its answer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable `--token` falls back to.
pub const ENV_TOKEN: &str = "CALLGATE_TOKEN";

/// How a client subcommand reaches the API.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// gRPC address of callgate (`host:port`, or a URL)
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// API key, sent as `authorization: Bearer <key>`
    #[arg(long, env = ENV_TOKEN, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate: connect over TLS
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
}

/// Failures of a client subcommand. Each displays as one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `reason` is the innermost cause ("Connection refused (os error 111)").
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("cannot read --tls-ca {path}: {source}")]
    TlsCa {
        path: String,
        source: std::io::Error,
    },
    #[error("--token must be printable ASCII without spaces")]
    BadToken,
    #[error("{:?}: {}", .0.code(), .0.message())]
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

/// Adds the API key to every call.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        token
            .map(|t| {
                if t.is_empty() || t.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(ClientError::BadToken);
                }
                let mut v: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| ClientError::BadToken)?;
                v.set_sensitive(true);
                Ok(v)
            })
            .transpose()
            .map(BearerToken)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = ConsentAuthorityClient<InterceptedService<Channel, BearerToken>>;

pub(crate) async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let addr = &args.addr;
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("{scheme}://{addr}")
    };
    let failed = |e: tonic::transport::Error| ClientError::Connect {
        addr: addr.to_owned(),
        reason: root_cause(&e),
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).map_err(|source| ClientError::TlsCa {
            path: ca.display().to_string(),
            source,
        })?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(failed)?;
    }
    let channel = endpoint.connect().await.map_err(failed)?;
    let token = BearerToken::new(args.token.as_deref())?;
    Ok(ConsentAuthorityClient::with_interceptor(channel, token))
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
pub async fn check(
    conn: &ConnectArgs,
    business: &str,
    customer: &str,
) -> Result<bool, ClientError> {
    let mut client = connect(conn).await?;
    let answer = client
        .check_call_permission(pb::CheckCallPermissionRequest {
            business_number: business.to_owned(),
            customer_number: customer.to_owned(),
            // It prints the deciding message id.
            include_evidence: true,
            at_least_as_fresh: String::new(),
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
pub async fn watch(
    conn: &ConnectArgs,
    request: pb::StreamGrantsRequest,
) -> Result<(), ClientError> {
    let mut client = connect(conn).await?;
    let mut stream = client.stream_grants(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        let kind = pb::EventKind::try_from(event.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("UNKNOWN");
        if event.kind == pb::EventKind::Checkpoint as i32 {
            println!("{kind} cursor={}", event.cursor);
            continue;
        }
        // issue 13: who asked and the customer's name, when known.
        let mut attribution = String::new();
        if !event.team.is_empty() {
            attribution.push_str(&format!(" team={:?}", event.team));
        }
        if !event.customer_name.is_empty() {
            attribution.push_str(&format!(" customer_name={:?}", event.customer_name));
        }
        if event.late_attribution {
            attribution.push_str(" late_attribution=true");
        }
        println!(
            "{kind} business={} customer={} permanent={} decided_at={} expires_at={}{attribution} cursor={}",
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

/// `callgate keygen`: prints a new API key and the digest the clients file lists.
pub fn keygen() -> Result<String, getrandom::Error> {
    let key = crate::grpc_api::auth::generate_key()?;
    let digest = crate::grpc_api::auth::key_digest(&key);
    Ok(format!(
        "key = \"{key}\"          # give this to the client (shown only once)\n\
         key_sha256 = \"{digest}\"  # put this in the client's key_sha256 list\n"
    ))
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
    let client = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
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
