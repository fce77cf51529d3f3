//! Why the port refuses a request, and the one `match` that turns a refusal into an HTTP status
//! and a stable error code ([`WebhookError::status`]).
//!
//! Every refusal is a JSON body `{"error": CODE, "message": ..., "field": ...}`. The code is the
//! refusal's [`WebhookOutcome`] label, so the answer and `callgate_webhooks_total` agree.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::MAX_BODY;
use super::body::BodyError;
use super::reply::json_response;
use crate::ingest::PayloadError;
use crate::ingest::auth::AuthError;
use crate::metrics::WebhookOutcome;
use crate::store::{DeliveryConflict, StoreError};

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

impl From<BodyError> for WebhookError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::UnsupportedMediaType => WebhookError::UnsupportedMediaType,
            BodyError::TooLarge(_) => WebhookError::TooLarge,
            BodyError::Timeout => WebhookError::BodyTimeout,
            BodyError::Read(e) => WebhookError::BodyRead(e),
        }
    }
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
    /// The one place an error becomes an HTTP status and an outcome (whose label is the stable
    /// error code of the answer).
    pub fn status(&self) -> (StatusCode, WebhookOutcome) {
        match self {
            WebhookError::Unauthorized(_) => {
                (StatusCode::UNAUTHORIZED, WebhookOutcome::Unauthorized)
            }
            WebhookError::Forbidden(_) => (StatusCode::FORBIDDEN, WebhookOutcome::Forbidden),
            WebhookError::NotConfigured(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                WebhookOutcome::NotConfigured,
            ),
            WebhookError::NotFound(_) => (StatusCode::NOT_FOUND, WebhookOutcome::NotFound),
            WebhookError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                WebhookOutcome::MethodNotAllowed,
            ),
            WebhookError::UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                WebhookOutcome::UnsupportedMediaType,
            ),
            WebhookError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, WebhookOutcome::BodyTooLarge),
            WebhookError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, WebhookOutcome::BodyTimeout),
            WebhookError::BodyRead(_) => (StatusCode::BAD_REQUEST, WebhookOutcome::BodyUnreadable),
            WebhookError::Payload(PayloadError::InvalidJson(_) | PayloadError::NotAnObject) => {
                (StatusCode::BAD_REQUEST, WebhookOutcome::InvalidJson)
            }
            WebhookError::Payload(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                WebhookOutcome::InvalidField,
            ),
            WebhookError::Conflict(_) => (StatusCode::CONFLICT, WebhookOutcome::Conflict),
            WebhookError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                WebhookOutcome::StoreUnavailable,
            ),
        }
    }

    /// The refusal's answer, logged in the request's span: a warning when the fault is ours
    /// (or a sender contradicting itself), an info line otherwise.
    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, outcome) = self.status();
        let code = outcome.label();
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
