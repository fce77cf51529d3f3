//! One span per RPC: [`Traced`] wraps the `ConsentAuthority` service (outside
//! [`super::auth::Guard`], so refusals are inside it too) and opens an `rpc` span named by the
//! method, with the admitted client (recorded by the guard) and the outcome: the gRPC code of
//! the call, taken from the response headers (an error answered at once) or from the trailers
//! (a unary success, or a stream's end). The span lasts until the response body is done.
//!
//! Fields: `rpc`, `client`, `outcome`; never a request field (no phone number, no key).

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tracing::{Instrument, Span, field};

const GRPC_STATUS: &str = "grpc-status";

/// Wraps a gRPC service with a span per call.
#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Traced { inner }
    }
}

impl<S: NamedService> NamedService for Traced<S> {
    const NAME: &'static str = S::NAME;
}

/// The method name of a gRPC path (`/callgate.v1.ConsentAuthority/CheckCallPermission`).
fn rpc_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// The code in a `grpc-status` header or trailer, by name (`OK`, `UNAVAILABLE`, ...).
fn outcome(headers: &http::HeaderMap) -> Option<&'static str> {
    let code = tonic::Code::from_bytes(headers.get(GRPC_STATUS)?.as_bytes());
    Some(code_name(code))
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Records the outcome on the span and logs the end of the call (at debug: checks are hot).
fn finish(span: &Span, started: Instant, outcome: &'static str) {
    span.record("outcome", outcome);
    let _in = span.enter();
    tracing::debug!(
        outcome,
        elapsed_us = started.elapsed().as_micros() as u64,
        "rpc finished"
    );
}

impl<S> Service<http::Request<Body>> for Traced<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let span = tracing::info_span!(
            "rpc",
            rpc = rpc_name(req.uri().path()),
            client = field::Empty,
            outcome = field::Empty,
        );
        let started = Instant::now();
        let response = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let Ok(response) = response.await;
                let span = Span::current();
                if let Some(code) = outcome(response.headers()) {
                    finish(&span, started, code);
                    return Ok(response);
                }
                // The code comes in the trailers; a body that ends without them was cut short.
                let (parts, body) = response.into_parts();
                let mut done = false;
                let body = body.map_frame(move |frame| {
                    if let Some(trailers) = frame.trailers_ref()
                        && !done
                    {
                        done = true;
                        finish(&span, started, outcome(trailers).unwrap_or("UNKNOWN"));
                    }
                    frame
                });
                Ok(http::Response::from_parts(parts, Body::new(body)))
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_path_and_codes_from_grpc_status() {
        assert_eq!(
            rpc_name("/callgate.v1.ConsentAuthority/CheckCallPermission"),
            "CheckCallPermission"
        );
        let mut headers = http::HeaderMap::new();
        assert_eq!(outcome(&headers), None);
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("14"));
        assert_eq!(outcome(&headers), Some("UNAVAILABLE"));
        headers.insert(GRPC_STATUS, http::HeaderValue::from_static("0"));
        assert_eq!(outcome(&headers), Some("OK"));
    }
}
