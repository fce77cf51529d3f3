//! The webhook handlers: authenticate the sender, read the body within its limits, parse it
//! into decisions (`ingest`), store them, and only then answer 200.
//!
//! - `POST /webhooks/doubletick`: DoubleTick's Call Permission Reply Received webhook,
//!   authenticated by a shared secret (Bearer, Basic password, or a configured header).
//! - `GET /webhooks/whatsapp`: Meta's subscription handshake (echoes `hub.challenge`).
//! - `POST /webhooks/whatsapp`: Meta Cloud API webhooks, authenticated by `X-Hub-Signature-256`
//!   over the raw body; its decisions go to the store in one `record` call, and the request is
//!   acknowledged only if every one of them was stored.
//!
//! Each handler decides what its request counts as ([`WebhookOutcome`]) and says so in its
//! [`Reply`]; refusals are [`WebhookError`]s.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::body;
use super::reply::{Reply, json_response, typed_response};
use super::{HttpLimits, HttpState, MAX_BODY, WebhookError};
use crate::config::{Config, ENV_WEBHOOK_TOKENS, ENV_WHATSAPP_APP_SECRET};
use crate::domain::Decision;
use crate::ingest::auth::{
    AuthConfigError, AuthError, META_SIGNATURE_HEADER, Secret, WebhookAuth, verify_meta_signature,
    verify_subscription,
};
use crate::ingest::{doubletick, whatsapp};
use crate::metrics::WebhookOutcome;
use crate::store::{Cursor, RecordOutcome, Recorded, StreamId};

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

/// Checks the content type and reads the body within the webhook size and time limits (also
/// `POST /v1/consent-requests`'s).
pub(super) async fn read_json_body(
    req: Request<Incoming>,
    limits: &HttpLimits,
) -> Result<Bytes, WebhookError> {
    Ok(body::read_json(req, MAX_BODY, limits.body_timeout).await?)
}

/// DoubleTick's webhook: shared secret, then parse, then store.
pub(super) async fn doubletick(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Reply, WebhookError> {
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
pub(super) async fn whatsapp(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Reply, WebhookError> {
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
        let res = json_response(
            StatusCode::OK,
            &json!({ "status": "ignored", "decisions": [] }),
        );
        return Ok(Reply::webhook(WebhookOutcome::Ignored, res));
    }
    store_decisions(state, decisions, received_at).await
}

/// Meta's subscription handshake: echo `hub.challenge` if the verify token matches.
pub(super) fn whatsapp_subscription(
    state: &HttpState,
    req: &Request<Incoming>,
) -> Result<Reply, WebhookError> {
    let Some(token) = &state.security.whatsapp_verify_token else {
        return Err(WebhookError::Forbidden(AuthError::VerifyTokenMismatch));
    };
    let challenge = verify_subscription(req.uri().query().unwrap_or(""), token)
        .map_err(WebhookError::Forbidden)?;
    let res = typed_response(StatusCode::OK, "text/plain", Bytes::from(challenge));
    Ok(Reply::webhook(WebhookOutcome::Verified, res))
}

/// Stores decisions that arrived at `received_at`, then (and only then) answers 200 with what
/// happened to each, and (issue 16) a `consistency_token`: the cursor holding, per log shard,
/// the position of this request's newest applied event (`0-0` elsewhere); when nothing was
/// applied, the log's head. A check carrying it as `at_least_as_fresh` reflects this request
/// on any replica.
async fn store_decisions(
    state: &HttpState,
    decisions: Vec<Decision>,
    received_at: DateTime<Utc>,
) -> Result<Reply, WebhookError> {
    let recorded = state.store.record_logged(&decisions, received_at).await?;
    // Issue 16: this replica's checks see these writes at once.
    state.checker.wrote(&decisions, &recorded);
    let token = consistency_token(state, &recorded).await;
    let results: Vec<_> = decisions
        .iter()
        .zip(&recorded)
        .map(|(d, recorded)| {
            let outcome = match recorded.outcome {
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
    let res = json_response(
        StatusCode::OK,
        &json!({ "status": "stored", "decisions": results, "consistency_token": token }),
    );
    Ok(Reply::webhook(WebhookOutcome::Stored, res))
}

/// Issue 16: the read-your-writes token of a stored request (see [`store_decisions`]).
async fn consistency_token(state: &HttpState, recorded: &[Recorded]) -> String {
    let mut token = Cursor::uniform(state.store.shards(), StreamId::ZERO);
    let mut logged = false;
    for (shard, id) in recorded.iter().filter_map(|r| r.logged) {
        token.advance(shard, id);
        logged = true;
    }
    if logged {
        return token.to_string();
    }
    // Nothing applied (duplicates, stale decisions): what the pair's state rests on is in
    // the log before its head. If even that read fails, the time now (after `record`
    // returned, so every write this request depends on was committed before it).
    match state.store.head().await {
        Ok(head) => head.to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "log head unreadable; consistency token is a time");
            state
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        }
    }
}
