//! The routing table, and the one place a request is traced, counted and answered.
//!
//! | method | path                   | handler                              |
//! |--------|------------------------|--------------------------------------|
//! | GET    | `/healthz`             | [`probes::healthz`]                  |
//! | GET    | `/readyz`              | [`probes::ready`]                    |
//! | GET    | `/metrics`             | [`probes::metrics`]                  |
//! | POST   | `/webhooks/doubletick` | [`webhooks::doubletick`]             |
//! | POST   | `/webhooks/whatsapp`   | [`webhooks::whatsapp`]               |
//! | GET    | `/webhooks/whatsapp`   | [`webhooks::whatsapp_subscription`]  |
//! | POST   | `/v1/check`            | [`check_api::check`]                 |
//! | POST   | `/v1/check-batch`      | [`check_api::check_batch`]           |
//! | GET    | `/v1/export`           | [`export::export`] (issue 14)        |
//! | POST   | `/v1/consent-requests` | [`consent_requests::register`] (issue 13) |
//! | GET    | `/v1/callable`         | [`callable::list`] (issue 13)        |
//! | any    | `/console...`          | [`console::handle`] (its own table)  |
//!
//! Another method on one of these paths is 405, any other path 404. Every request runs in one
//! `http` span whose fields are the route (the path of the table, never the raw path), the
//! method, and on completion the status and outcome; the handlers' log lines (a refusal, a
//! recorded decision, a batch's store failure while it streams) belong to it. Webhook requests
//! are counted in `callgate_webhooks_total` and JSON API requests in
//! `callgate_http_api_requests_total`, here and nowhere else.

use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::Instrument;
use tracing::field::Empty;

use super::api_error::CheckApiError;
use super::reply::{Body, Counted, Reply, boxed};
use super::{
    HttpState, WebhookError, callable, check_api, consent_requests, console, export, probes,
    webhooks,
};
use crate::metrics::{ApiRoute, Route, StoreOp};

/// The endpoints of the table above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    DoubleTick,
    WhatsApp,
    WhatsAppSubscription,
    Check,
    CheckBatch,
    /// issue 14
    Export,
    /// issue 13
    ConsentRequests,
    Console(console::Page),
    /// Issue 13: a calling list.
    Callable,
}

/// The paths the port serves: the `route` of a request's span (`other` for anything else).
const PATHS: [&str; 10] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/webhooks/doubletick",
    "/webhooks/whatsapp",
    "/v1/check",
    "/v1/check-batch",
    "/v1/export",
    "/v1/consent-requests",
    "/v1/callable",
];

/// The table: which endpoint answers `method` on `path`.
fn resolve(method: &Method, path: &str) -> Result<Endpoint, WebhookError> {
    match console::resolve(method, path) {
        Some(Ok(page)) => return Ok(Endpoint::Console(page)),
        Some(Err(())) => return Err(WebhookError::MethodNotAllowed),
        None => {}
    }
    match (method, path) {
        (&Method::GET, "/healthz") => Ok(Endpoint::Healthz),
        (&Method::GET, "/readyz") => Ok(Endpoint::Readyz),
        (&Method::GET, "/metrics") => Ok(Endpoint::Metrics),
        (&Method::POST, "/webhooks/doubletick") => Ok(Endpoint::DoubleTick),
        (&Method::POST, "/webhooks/whatsapp") => Ok(Endpoint::WhatsApp),
        (&Method::GET, "/webhooks/whatsapp") => Ok(Endpoint::WhatsAppSubscription),
        (&Method::POST, "/v1/check") => Ok(Endpoint::Check),
        (&Method::POST, "/v1/check-batch") => Ok(Endpoint::CheckBatch),
        (&Method::GET, "/v1/export") => Ok(Endpoint::Export),
        (&Method::POST, "/v1/consent-requests") => Ok(Endpoint::ConsentRequests),
        (&Method::GET, "/v1/callable") => Ok(Endpoint::Callable),
        (_, p) if PATHS.contains(&p) => Err(WebhookError::MethodNotAllowed),
        (_, p) => Err(WebhookError::NotFound(p.to_owned())),
    }
}

/// The webhook metric's route of a path; `None`: not a webhook path, not counted.
fn webhook_route(path: &str) -> Option<Route> {
    match path {
        "/webhooks/doubletick" => Some(Route::DoubleTick),
        "/webhooks/whatsapp" => Some(Route::WhatsApp),
        p if p.starts_with("/webhooks/") => Some(Route::Other),
        _ => None,
    }
}

/// The JSON API metric's route of an endpoint; `None`: not a JSON API endpoint.
fn api_route(endpoint: Endpoint) -> Option<ApiRoute> {
    match endpoint {
        Endpoint::Check => Some(ApiRoute::Check),
        Endpoint::CheckBatch => Some(ApiRoute::CheckBatch),
        _ => None,
    }
}

/// A JSON API answer: the handler's reply, or its refusal's.
fn json_api(result: Result<Reply, CheckApiError>) -> Reply {
    result.unwrap_or_else(|e| {
        let outcome = e.status().1;
        Reply::api(outcome, boxed(e.into_response()))
    })
}

/// The `method` span field: a standard method's name, else `other` (an extension method is
/// whatever token the client sent).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Answers one request inside its `http` span.
pub(super) async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let route = PATHS
        .iter()
        .chain(console::PATHS.iter())
        .find(|p| **p == path)
        .copied()
        .unwrap_or("other");
    let span = tracing::info_span!(
        "http",
        route,
        method = method_name(req.method()),
        status = Empty,
        outcome = Empty,
    );
    answer(state, req).instrument(span).await
}

async fn answer(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let endpoint = resolve(req.method(), &path);
    if let Ok(Endpoint::Console(page)) = endpoint {
        // issue 14: the console's pages (HTML, and its streamed export), not counted.
        let response = console::handle(state, page, req).await;
        tracing::Span::current().record("status", response.status().as_u16());
        return response;
    }
    if let Ok(Endpoint::Export) = endpoint {
        // issue 14: a streamed answer, not counted as a webhook.
        let response = match export::export(state, &req).await {
            Ok(response) => response,
            Err(e) => e.into_response(state),
        };
        tracing::Span::current().record("status", response.status().as_u16());
        return response;
    }
    let api = endpoint.as_ref().ok().copied().and_then(api_route);
    let result = match endpoint {
        Ok(Endpoint::Healthz) => Ok(Reply::probe(probes::healthz())),
        Ok(Endpoint::Readyz) => Ok(Reply::probe(probes::ready(state).await)),
        Ok(Endpoint::Metrics) => Ok(Reply::probe(probes::metrics(&state.metrics))),
        Ok(Endpoint::DoubleTick) => webhooks::doubletick(state, req).await,
        Ok(Endpoint::WhatsApp) => webhooks::whatsapp(state, req).await,
        Ok(Endpoint::WhatsAppSubscription) => webhooks::whatsapp_subscription(state, &req),
        Ok(Endpoint::Check) => Ok(json_api(check_api::check(state, req).await)),
        Ok(Endpoint::CheckBatch) => Ok(json_api(check_api::check_batch(state, req).await)),
        Ok(Endpoint::Export) => Err(WebhookError::MethodNotAllowed),
        Ok(Endpoint::ConsentRequests) => consent_requests::register(state, req).await,
        Ok(Endpoint::Console(_)) => Err(WebhookError::MethodNotAllowed),
        Ok(Endpoint::Callable) => Ok(callable::list(state, &req).await),
        Err(e) => Err(e),
    };
    let (response, counted) = match result {
        Ok(reply) => (reply.response, reply.counted),
        Err(e) => {
            if matches!(e, WebhookError::Store(_)) {
                state.metrics.store_error(StoreOp::Record);
            }
            let outcome = e.status().1;
            (boxed(e.into_response()), Counted::Webhook(outcome))
        }
    };
    match counted {
        Counted::Webhook(outcome) => {
            if let Some(route) = webhook_route(&path) {
                state.metrics.webhook(route, outcome, started.elapsed());
            }
        }
        Counted::Api(outcome) => {
            if let Some(route) = api {
                state.metrics.api_request(route, outcome, started.elapsed());
            }
        }
        Counted::Not => {}
    }
    let span = tracing::Span::current();
    span.record("status", response.status().as_u16());
    if let Some(outcome) = counted.label() {
        span.record("outcome", outcome);
    }
    tracing::debug!(elapsed = ?started.elapsed(), "answered");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_routes_methods_and_paths() {
        use Endpoint::*;
        let cases: [(Method, &str, Result<Endpoint, &str>); 18] = [
            (Method::GET, "/healthz", Ok(Healthz)),
            (Method::GET, "/readyz", Ok(Readyz)),
            (Method::GET, "/metrics", Ok(Metrics)),
            (Method::POST, "/webhooks/doubletick", Ok(DoubleTick)),
            (Method::POST, "/webhooks/whatsapp", Ok(WhatsApp)),
            (Method::GET, "/webhooks/whatsapp", Ok(WhatsAppSubscription)),
            (Method::POST, "/v1/check", Ok(Check)),
            (Method::POST, "/v1/check-batch", Ok(CheckBatch)),
            (Method::GET, "/v1/check", Err("method_not_allowed")),
            (
                Method::GET,
                "/webhooks/doubletick",
                Err("method_not_allowed"),
            ),
            (Method::POST, "/metrics", Err("method_not_allowed")),
            (Method::POST, "/webhooks/other", Err("not_found")),
            (Method::GET, "/", Err("not_found")),
            (Method::GET, "/healthz/", Err("not_found")),
            (Method::GET, "/v1/export", Ok(Export)),
            (Method::POST, "/v1/export", Err("method_not_allowed")),
            (Method::GET, "/v1/callable", Ok(Callable)),
            (Method::POST, "/v1/callable", Err("method_not_allowed")),
        ];
        for (method, path, want) in cases {
            let got = resolve(&method, path).map_err(|e| e.status().1.label());
            assert_eq!(got, want, "{method} {path}");
        }
    }

    #[test]
    fn only_webhook_paths_are_counted() {
        let cases = [
            ("/webhooks/doubletick", Some(Route::DoubleTick)),
            ("/webhooks/whatsapp", Some(Route::WhatsApp)),
            ("/webhooks/x", Some(Route::Other)),
            ("/healthz", None),
            ("/webhooks", None),
        ];
        for (path, want) in cases {
            assert_eq!(webhook_route(path), want, "{path}");
        }
    }

    #[test]
    fn span_methods_are_standard_names_or_other() {
        let custom = Method::from_bytes(b"919876543210").unwrap();
        assert_eq!(method_name(&Method::POST), "POST");
        assert_eq!(method_name(&Method::PATCH), "PATCH");
        assert_eq!(method_name(&custom), "other");
    }
}
