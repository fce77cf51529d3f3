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
    use std::sync::{Arc, Mutex};

    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

    use super::*;

    /// Collects every `rpc`, `client` and `outcome` value recorded on a span.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .lock()
                .unwrap()
                .push((field.name().to_owned(), value.to_owned()));
        }
        fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: LayerContext<'_, S>,
        ) {
            attrs.record(&mut self.clone());
        }
        fn on_record(
            &self,
            _: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: LayerContext<'_, S>,
        ) {
            values.record(&mut self.clone());
        }
    }

    /// Answers every call with `response()`, recording a client name as the guard does.
    #[derive(Clone)]
    struct Answer(fn() -> http::Response<Body>);

    impl Service<http::Request<Body>> for Answer {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<http::Response<Body>, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            Span::current().record("client", "dialer");
            std::future::ready(Ok((self.0)()))
        }
    }

    async fn traced_call(answer: fn() -> http::Response<Body>) -> Vec<(String, String)> {
        let fields = Fields::default();
        let subscriber = tracing_subscriber::registry().with(fields.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        let request = http::Request::builder()
            .uri("/callgate.v1.ConsentAuthority/CheckCallPermission")
            .body(Body::empty())
            .unwrap();
        let Ok(response) = Traced::new(Answer(answer)).call(request).await;
        response.into_body().collect().await.unwrap();
        fields.0.lock().unwrap().clone()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn a_span_names_the_rpc_client_and_outcome_from_headers_or_trailers() {
        // An error answered at once: the code is in the headers.
        let refused = traced_call(|| tonic::Status::unavailable("store down").into_http()).await;
        assert_eq!(
            refused,
            pairs(&[
                ("rpc", "CheckCallPermission"),
                ("client", "dialer"),
                ("outcome", "UNAVAILABLE")
            ])
        );
        // A success: the code comes in the trailers, after the body.
        let answered = traced_call(|| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert(GRPC_STATUS, http::HeaderValue::from_static("0"));
            let frames = tokio_stream::iter([Ok::<_, tonic::Status>(Frame::trailers(trailers))]);
            http::Response::new(Body::new(StreamBody::new(frames)))
        })
        .await;
        assert_eq!(
            answered,
            pairs(&[
                ("rpc", "CheckCallPermission"),
                ("client", "dialer"),
                ("outcome", "OK")
            ])
        );
    }

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
