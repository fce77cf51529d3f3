//! The HTTP port: webhooks in, health out.
//!
//! Routes:
//! - `POST /webhooks/doubletick`: DoubleTick's Call Permission Reply Received webhook,
//!   authenticated by a shared secret (Bearer, Basic password, or a configured header).
//! - `GET /webhooks/whatsapp`: Meta's subscription handshake (echoes `hub.challenge`).
//! - `POST /webhooks/whatsapp`: Meta Cloud API webhooks, authenticated by `X-Hub-Signature-256`
//!   over the raw body; every call permission reply in it is stored, or none is.
//! - `GET /healthz`: the process is alive. `GET /readyz`: the store answers (503 otherwise).
//! - `GET /metrics`: Prometheus text format.
//!
//! A webhook is answered 200 only after its decision is stored; a refused request stores
//! nothing. Every refusal is a JSON body `{"error": CODE, "message": ..., "field": ...}`; the
//! mapping from error to status lives in one `match` ([`WebhookError::status`]).
//!
//! Defences for a port facing the internet: the body is capped at [`MAX_BODY`] (checked against
//! `Content-Length` before reading, and while reading), headers and body must arrive within a
//! deadline, and the number of open connections is capped.
//!
//! The port speaks HTTP/1.1 only (webhook senders and probes all do). Every connection must make
//! progress from the moment it is accepted: the header deadline runs from accept for the first
//! request and from the end of the previous response for the next one, so a socket that never
//! sends a byte, or a kept-alive connection that goes quiet, is closed within
//! `header_timeout`. An HTTP/2 preface is refused like any malformed request: HTTP/2 would let
//! one connection carry many requests past the connection cap, outside these deadlines.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{Config, ENV_WEBHOOK_TOKENS, ENV_WHATSAPP_APP_SECRET};
use crate::domain::Decision;
use crate::fanout::Hub;
use crate::ingest::auth::{
    AuthConfigError, AuthError, META_SIGNATURE_HEADER, Secret, WebhookAuth, verify_meta_signature,
    verify_subscription,
};
use crate::ingest::{IngestContext, PayloadError, doubletick, whatsapp};
use crate::metrics::{Metrics, Route, StoreOp};
use crate::store::{ConsentStore, DeliveryConflict, RecordOutcome, StoreError};
use crate::tls::{MaybeTls, TlsPort};

/// Largest webhook body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// A readiness probe waits at most this long for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a webhook can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("not authenticated: {0}")]
    Unauthorized(AuthError),
    #[error("verification refused: {0}")]
    Forbidden(AuthError),
    #[error("{0}")]
    NotConfigured(&'static str),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("body is larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("body was not received in time")]
    BodyTimeout,
    #[error("could not read the body: {0}")]
    BodyRead(String),
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error(transparent)]
    Conflict(DeliveryConflict),
    #[error("decision not stored, retry later: {0}")]
    Store(StoreError),
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(c) => WebhookError::Conflict(c),
            other => WebhookError::Store(other),
        }
    }
}

impl WebhookError {
    /// The one place an error becomes an HTTP status and a stable error code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            WebhookError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            WebhookError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            WebhookError::NotConfigured(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_configured"),
            WebhookError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            WebhookError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            WebhookError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            WebhookError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            WebhookError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            WebhookError::BodyRead(_) => (StatusCode::BAD_REQUEST, "body_unreadable"),
            WebhookError::Payload(PayloadError::InvalidJson(_) | PayloadError::NotAnObject) => {
                (StatusCode::BAD_REQUEST, "invalid_json")
            }
            WebhookError::Payload(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
            WebhookError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            WebhookError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, code) = self.status();
        let field = match &self {
            WebhookError::Payload(p) => p.field().map(str::to_owned),
            _ => None,
        };
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), code, error = %self, "webhook not stored");
        } else if let WebhookError::Conflict(c) = &self {
            // Sender fields reach the log only after the edge refused control characters.
            tracing::warn!(
                status = status.as_u16(),
                code,
                sender = c.sender,
                message_id = %c.message_id,
                "message id redelivered with another answer; nothing stored"
            );
        } else {
            tracing::info!(status = status.as_u16(), code, error = %self, "request refused");
        }
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let Some(field) = field {
            body["field"] = field.into();
        }
        json_response(status, &body)
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    res
}

/// Shared state of the HTTP port.
pub struct HttpState {
    pub limits: HttpLimits,
    pub security: WebhookSecurity,
    pub store: Arc<dyn ConsentStore>,
    pub ingest: IngestContext,
    pub metrics: Arc<Metrics>,
    pub hub: Hub,
    /// Where a webhook's arrival time is read.
    pub clock: Clock,
    /// TLS for this port; `None`: plain TCP.
    pub tls: Option<Arc<TlsPort>>,
}

/// How the webhook routes authenticate their senders.
pub struct WebhookSecurity {
    /// Secrets for `/webhooks/doubletick`; `None`: none configured.
    pub doubletick: Option<WebhookAuth>,
    /// Meta app secret for `X-Hub-Signature-256`.
    pub whatsapp_app_secret: Option<Secret>,
    /// Token for Meta's subscription handshake.
    pub whatsapp_verify_token: Option<Secret>,
    /// Accept unauthenticated webhooks (local demos only).
    pub insecure_no_auth: bool,
}

impl WebhookSecurity {
    /// Builds the settings from the config and logs which routes are open, and how.
    pub fn from_config(config: &Config) -> Result<Self, AuthConfigError> {
        let doubletick = if config.webhook_tokens.is_empty() {
            None
        } else {
            Some(WebhookAuth::new(
                config.webhook_tokens.iter().cloned(),
                config.webhook_auth_header.as_deref(),
            )?)
        };
        let security = WebhookSecurity {
            doubletick,
            whatsapp_app_secret: config.whatsapp_app_secret.clone(),
            whatsapp_verify_token: config.whatsapp_verify_token.clone(),
            insecure_no_auth: config.insecure_no_auth,
        };
        if security.insecure_no_auth {
            tracing::warn!(
                "--insecure-no-auth: webhooks are accepted WITHOUT authentication; anyone who can \
                 reach the HTTP port can write consent. Never use this in production"
            );
        }
        if security.doubletick.is_none() && !security.insecure_no_auth {
            tracing::error!(
                "/webhooks/doubletick is disabled (answers 503): set {ENV_WEBHOOK_TOKENS}, or \
                 pass --insecure-no-auth for a local demo"
            );
        }
        if security.whatsapp_app_secret.is_none() && !security.insecure_no_auth {
            tracing::warn!(
                "POST /webhooks/whatsapp is disabled (answers 503): set {ENV_WHATSAPP_APP_SECRET}"
            );
        }
        Ok(security)
    }
}

/// Slow-client and connection limits of the port.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Serves the HTTP port on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // HTTP/1.1 only: hyper's header deadline starts when it first polls for a request head,
    // which is at once for a new connection (no protocol sniffing that waits for bytes first)
    // and right after each response on a kept-alive one.
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // The TLS handshake (if any) happens here, off the accept loop; it counts against
            // the header deadline.
            let tls = state.tls.clone();
            let deadline = state.limits.header_timeout;
            let io = match MaybeTls::accept(stream, tls.as_deref(), deadline).await {
                Ok(io) => io,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "http connections still open after the grace period; closing"
        );
    }
}

async fn route(state: &HttpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_owned();
    let webhook = match path.as_str() {
        "/webhooks/doubletick" => Some(Route::DoubleTick),
        "/webhooks/whatsapp" => Some(Route::WhatsApp),
        p if p.starts_with("/webhooks/") => Some(Route::Other),
        _ => None,
    };
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (&Method::GET, "/readyz") => Ok(ready(state).await),
        (&Method::GET, "/metrics") => Ok(metrics(state)),
        (&Method::POST, "/webhooks/doubletick") => doubletick_webhook(state, req).await,
        (&Method::POST, "/webhooks/whatsapp") => whatsapp_webhook(state, req).await,
        (&Method::GET, "/webhooks/whatsapp") => whatsapp_subscription(state, &req),
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/webhooks/doubletick" | "/webhooks/whatsapp",
        ) => Err(WebhookError::MethodNotAllowed),
        _ => Err(WebhookError::NotFound(path)),
    };
    let outcome = match &result {
        Ok(res) => res.extensions().get::<Outcome>().map_or("stored", |o| o.0),
        Err(e) => {
            if matches!(e, WebhookError::Store(_)) {
                state.metrics.store_error(StoreOp::Record);
            }
            e.status().1
        }
    };
    if let Some(route) = webhook {
        state.metrics.webhook(route, outcome, started.elapsed());
    }
    result.unwrap_or_else(WebhookError::into_response)
}

fn metrics(state: &HttpState) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(
        state.metrics.render(state.hub.catch_ups()),
    )));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

async fn ready(state: &HttpState) -> Response<Full<Bytes>> {
    let answer = tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await;
    match answer {
        Ok(Ok(())) => json_response(StatusCode::OK, &json!({"status": "ready"})),
        Ok(Err(e)) => {
            state.metrics.store_error(StoreOp::Ping);
            tracing::warn!(error = %e, "not ready");
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not_ready", "reason": e.to_string()}),
            )
        }
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready", "reason": "store did not answer in time"}),
        ),
    }
}

/// Checks the content type and reads the body within the size and time limits.
async fn read_json_body(
    req: Request<Incoming>,
    limits: &HttpLimits,
) -> Result<Bytes, WebhookError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(WebhookError::TooLarge);
    }
    if !is_json {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(limits.body_timeout, body.collect()).await {
        Err(_) => Err(WebhookError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(WebhookError::TooLarge),
        Ok(Err(e)) => Err(WebhookError::BodyRead(e.to_string())),
    }
}

async fn doubletick_webhook(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, WebhookError> {
    let security = &state.security;
    match &security.doubletick {
        Some(auth) => auth
            .verify(req.headers())
            .map_err(WebhookError::Unauthorized)?,
        None if security.insecure_no_auth => {}
        None => {
            return Err(WebhookError::NotConfigured(
                "webhook authentication is not configured on this server",
            ));
        }
    }
    let body = read_json_body(req, &state.limits).await?;
    let received_at = state.clock.now();
    let decision = doubletick::parse(&body, &state.ingest, received_at)?;
    store_decisions(state, vec![decision], received_at).await
}

/// Meta's webhook: signature over the raw bytes first, then parse, then store all or nothing.
async fn whatsapp_webhook(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, WebhookError> {
    let signature = req
        .headers()
        .get(META_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let security = &state.security;
    if security.whatsapp_app_secret.is_none() && !security.insecure_no_auth {
        return Err(WebhookError::NotConfigured(
            "the WhatsApp app secret is not configured on this server",
        ));
    }
    let body = read_json_body(req, &state.limits).await?;
    if let Some(secret) = &security.whatsapp_app_secret {
        verify_meta_signature(secret, &body, signature.as_deref())
            .map_err(WebhookError::Unauthorized)?;
    }
    let received_at = state.clock.now();
    let decisions = whatsapp::parse(&body, &state.ingest, received_at)?;
    if decisions.is_empty() {
        let mut res = json_response(
            StatusCode::OK,
            &json!({ "status": "ignored", "decisions": [] }),
        );
        res.extensions_mut().insert(Outcome("ignored"));
        return Ok(res);
    }
    store_decisions(state, decisions, received_at).await
}

/// Meta's subscription handshake: echo `hub.challenge` if the verify token matches.
fn whatsapp_subscription(
    state: &HttpState,
    req: &Request<Incoming>,
) -> Result<Response<Full<Bytes>>, WebhookError> {
    let Some(token) = &state.security.whatsapp_verify_token else {
        return Err(WebhookError::Forbidden(AuthError::VerifyTokenMismatch));
    };
    let challenge = verify_subscription(req.uri().query().unwrap_or(""), token)
        .map_err(WebhookError::Forbidden)?;
    let mut res = Response::new(Full::new(Bytes::from(challenge)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    res.extensions_mut().insert(Outcome("verified"));
    Ok(res)
}

/// The metrics outcome of a successful request, when it is not "stored".
#[derive(Clone, Copy)]
struct Outcome(&'static str);

/// Stores decisions that arrived at `received_at`, then (and only then) answers 200 with what
/// happened to each.
async fn store_decisions(
    state: &HttpState,
    decisions: Vec<Decision>,
    received_at: DateTime<Utc>,
) -> Result<Response<Full<Bytes>>, WebhookError> {
    let outcomes = state.store.record(&decisions, received_at).await?;
    let results: Vec<_> = decisions
        .iter()
        .zip(&outcomes)
        .map(|(d, outcome)| {
            let outcome = match outcome {
                RecordOutcome::Applied => "applied",
                RecordOutcome::Stale => "stale",
                RecordOutcome::Duplicate => "duplicate",
            };
            tracing::info!(
                source = d.evidence.source.as_str(),
                choice = d.choice.name(),
                message_id = %d.evidence.message_id,
                outcome,
                "decision recorded"
            );
            json!({
                "outcome": outcome,
                "business_number": d.pair.business.to_string(),
                "customer_number": d.pair.customer.to_string(),
                "choice": d.choice.name(),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "status": "stored", "decisions": results }),
    ))
}
