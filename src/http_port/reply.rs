//! What a handler answers: a response, and for a webhook the outcome it counts as.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

use crate::metrics::WebhookOutcome;

/// Why a streamed body stopped before its end (the connection is then cut, so the client sees
/// an incomplete answer, never a short one that looks complete).
pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every answer of the port: a whole one ([`Full`]) or a streamed one (issue 13:
/// a calling list), boxed.
pub(super) type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A whole body as a [`Body`].
pub(super) fn full(response: Response<Full<Bytes>>) -> Response<Body> {
    response.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

/// A handler's successful answer. Refusals are [`WebhookError`](super::WebhookError)s instead.
pub(super) struct Reply {
    pub response: Response<Body>,
    /// What the request counts as in `callgate_webhooks_total`, decided by the handler that
    /// knows it (stored, ignored, verified); `None` for the probes, which are not counted.
    pub outcome: Option<WebhookOutcome>,
}

impl Reply {
    /// An answer of a probe (`/healthz`, `/readyz`, `/metrics`).
    pub fn probe(response: Response<Full<Bytes>>) -> Self {
        Reply {
            response: full(response),
            outcome: None,
        }
    }

    /// An answer of a route that is not a webhook (issue 13: the calling list), whole or
    /// streamed.
    pub fn api(response: Response<Body>) -> Self {
        Reply {
            response,
            outcome: None,
        }
    }

    /// An answer of a webhook route.
    pub fn webhook(outcome: WebhookOutcome, response: Response<Full<Bytes>>) -> Self {
        Reply {
            response: full(response),
            outcome: Some(outcome),
        }
    }
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
