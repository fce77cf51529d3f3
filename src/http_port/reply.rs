//! What a handler answers: a response, and what the request counts as.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::metrics::{ApiOutcome, WebhookOutcome};

/// The body of every answer of the port: a whole one ([`Full`]), or a stream written as it is
/// produced (a check batch's results, issue 14's exports, with chunked transfer encoding). A
/// stream that fails ([`BoxError`]) aborts the response: its chunked body never ends properly,
/// so a cut answer cannot pass for a whole one.
pub(super) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What a request counts as, decided by the handler that knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    /// The probes: not counted.
    Not,
    /// `callgate_webhooks_total`.
    Webhook(WebhookOutcome),
    /// `callgate_http_api_requests_total`.
    Api(ApiOutcome),
}

impl Counted {
    /// The `outcome` field of the request's span.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Counted::Not => None,
            Counted::Webhook(o) => Some(o.label()),
            Counted::Api(o) => Some(o.label()),
        }
    }
}

/// A handler's successful answer. Refusals are [`WebhookError`](super::WebhookError)s (or,
/// on the JSON API, [`CheckApiError`](super::api_error::CheckApiError)s) instead.
pub(super) struct Reply {
    pub response: Response<Body>,
    pub counted: Counted,
}

impl Reply {
    /// An answer of a probe (`/healthz`, `/readyz`, `/metrics`).
    pub fn probe(response: Response<Full<Bytes>>) -> Self {
        Reply {
            response: boxed(response),
            counted: Counted::Not,
        }
    }

    /// An answer of a webhook route.
    pub fn webhook(outcome: WebhookOutcome, response: Response<Full<Bytes>>) -> Self {
        Reply {
            response: boxed(response),
            counted: Counted::Webhook(outcome),
        }
    }

    /// Issue 13: a calling list (`GET /v1/callable`), whole or streamed. Not counted in
    /// `callgate_http_api_requests_total` (its routes are the JSON checks'); its refusals are
    /// logged in the request's span and its store failures counted as `op="list"`.
    pub fn list(response: Response<Body>) -> Self {
        Reply {
            response,
            counted: Counted::Not,
        }
    }

    /// An answer of the JSON API (possibly streamed).
    pub fn api(outcome: ApiOutcome, response: Response<Body>) -> Self {
        Reply {
            response,
            counted: Counted::Api(outcome),
        }
    }
}

/// A whole answer as the port's [`Body`].
pub(super) fn boxed(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| {
        b.map_err(|never: std::convert::Infallible| match never {})
            .boxed_unsync()
    })
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    typed_response(status, "application/json", Bytes::from(body.to_string()))
}

/// An answer with `body` of the given content type.
pub(super) fn typed_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    res
}

/// Why a streamed body stops early: the response is then aborted, not ended.
pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
