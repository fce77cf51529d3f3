//! Why the JSON API (`POST /v1/check`, `POST /v1/check-batch`) refuses a request, and the one
//! `match` that turns a refusal into an HTTP status, a stable error code and the canonical
//! (gRPC) status code ([`CheckApiError::status`]).
//!
//! Every refusal is a JSON body `{"error": CODE, "code": N, "message": ..., "field": ...}`:
//! `error` is the refusal's [`ApiOutcome`] label (so the answer and
//! `callgate_http_api_requests_total` agree), `code` the number a gRPC client would get for the
//! same problem, `field` the request field at fault when there is one.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::body::BodyError;
use super::check_json::BodyProblem;
use super::reply::json_response;
use crate::checks::CheckError;
use crate::grpc_api::auth::Refusal;
use crate::metrics::ApiOutcome;
use crate::store::StoreError;

/// Everything a JSON API request can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum CheckApiError {
    /// The API key is missing, unknown or lacks the `check` scope.
    #[error("{refusal}")]
    Refused {
        /// The client the key identified, if any (a configured name).
        client: Option<Arc<str>>,
        refusal: Refusal,
    },
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error(transparent)]
    Problem(#[from] BodyProblem),
    /// A single check that could not be answered.
    #[error(transparent)]
    Check(CheckError),
    /// A batch whose first store read failed: nothing was answered.
    #[error("nothing checked, retry later: {0}")]
    Store(StoreError),
    /// Too many batches in progress on this replica.
    #[error("{0} check batches are in progress on this replica (its limit); retry shortly")]
    Busy(usize),
}

impl From<CheckError> for CheckApiError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Store(e) => CheckApiError::Store(e),
            other => CheckApiError::Check(other),
        }
    }
}

impl CheckApiError {
    /// The one place an error becomes an HTTP status, an outcome (whose label is the error
    /// code of the answer) and the canonical status code.
    pub fn status(&self) -> (StatusCode, ApiOutcome, tonic::Code) {
        use tonic::Code;
        match self {
            CheckApiError::Refused { refusal, .. } => match refusal {
                Refusal::MissingKey
                | Refusal::MalformedKey
                | Refusal::UnknownKey
                | Refusal::NotConfigured => (
                    StatusCode::UNAUTHORIZED,
                    ApiOutcome::Unauthorized,
                    Code::Unauthenticated,
                ),
                Refusal::MissingScope { .. }
                | Refusal::UnlistedRpc
                | Refusal::OtherBusiness { .. } => (
                    StatusCode::FORBIDDEN,
                    ApiOutcome::Forbidden,
                    Code::PermissionDenied,
                ),
            },
            CheckApiError::Body(b) => match b {
                BodyError::UnsupportedMediaType => (
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ApiOutcome::UnsupportedMediaType,
                    Code::InvalidArgument,
                ),
                BodyError::TooLarge(_) => (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ApiOutcome::BodyTooLarge,
                    Code::ResourceExhausted,
                ),
                BodyError::Timeout => (
                    StatusCode::REQUEST_TIMEOUT,
                    ApiOutcome::BodyTimeout,
                    Code::DeadlineExceeded,
                ),
                BodyError::Read(_) => (
                    StatusCode::BAD_REQUEST,
                    ApiOutcome::BodyUnreadable,
                    Code::InvalidArgument,
                ),
            },
            CheckApiError::Problem(p) => match p {
                BodyProblem::Syntax(_) => (
                    StatusCode::BAD_REQUEST,
                    ApiOutcome::InvalidJson,
                    Code::InvalidArgument,
                ),
                BodyProblem::Field { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ApiOutcome::InvalidField,
                    Code::InvalidArgument,
                ),
                BodyProblem::TooMany => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ApiOutcome::TooManyChecks,
                    Code::InvalidArgument,
                ),
            },
            CheckApiError::Check(e) => match e {
                CheckError::Phone { .. } => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    ApiOutcome::InvalidField,
                    e.code(),
                ),
                CheckError::OtherBusiness { .. } => {
                    (StatusCode::FORBIDDEN, ApiOutcome::Forbidden, e.code())
                }
                CheckError::Store(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ApiOutcome::StoreUnavailable,
                    e.code(),
                ),
                // Issue 16: an unparseable `at_least_as_fresh`.
                CheckError::Token { .. } => {
                    (StatusCode::BAD_REQUEST, ApiOutcome::InvalidField, e.code())
                }
            },
            CheckApiError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ApiOutcome::StoreUnavailable,
                Code::Unavailable,
            ),
            CheckApiError::Busy(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                ApiOutcome::Busy,
                Code::ResourceExhausted,
            ),
        }
    }

    /// The request field at fault, if there is one.
    fn field(&self) -> Option<String> {
        match self {
            CheckApiError::Problem(BodyProblem::Field { field, .. }) if !field.is_empty() => {
                Some(field.clone())
            }
            CheckApiError::Problem(BodyProblem::TooMany) => Some("checks".into()),
            CheckApiError::Check(e) => e.field().map(str::to_owned),
            _ => None,
        }
    }

    /// The refusal's answer, logged in the request's span: a warning when the fault is ours
    /// (with the store's error), an info line otherwise (with the field at fault, never the
    /// message, which may quote a phone number).
    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let (status, outcome, code) = self.status();
        let error = outcome.label();
        let field = self.field();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error, reason = %self, "check not answered");
        } else {
            tracing::info!(
                status = status.as_u16(),
                error,
                field = field.as_deref().unwrap_or(""),
                "request refused"
            );
        }
        let mut body = json!({ "error": error, "code": code as i32, "message": self.to_string() });
        if let Some(field) = field {
            body["field"] = field.into();
        }
        let mut res = json_response(status, &body);
        if matches!(self, CheckApiError::Busy(_)) {
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        res
    }
}
