//! Command-line client subcommands: `callgate check` and `callgate watch`.
//!
//! Small gRPC clients for demos and operations; they print one line per answer or event. They
//! send an API key (`--token` or `CALLGATE_TOKEN`) and speak TLS when given the CA
//! (`--tls-ca`).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::grpc_api::from_timestamp;
use crate::pb::{self, consent_authority_client::ConsentAuthorityClient};

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

/// Failures of a client subcommand.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("cannot read --tls-ca {path}: {source}")]
    TlsCa {
        path: String,
        source: std::io::Error,
    },
    #[error("--token must be printable ASCII without spaces")]
    BadToken,
    #[error("{:?}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
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

async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
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
    let failed = |source| ClientError::Connect {
        addr: addr.to_owned(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(url).map_err(failed)?;
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

/// `callgate keygen`: prints a new API key and the digest the clients file lists.
pub fn keygen() -> Result<String, getrandom::Error> {
    let key = crate::grpc_api::auth::generate_key()?;
    let digest = crate::grpc_api::auth::key_digest(&key);
    Ok(format!(
        "key = \"{key}\"          # give this to the client (shown only once)\n\
         key_sha256 = \"{digest}\"  # put this in the client's key_sha256 list\n"
    ))
}
