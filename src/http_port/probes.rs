//! The operators' routes: `/healthz` (the process is alive), `/readyz` (the store answers) and
//! `/metrics` (Prometheus text).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::HttpState;
use super::reply::{json_response, typed_response};
use crate::metrics::{Metrics, StoreOp};

/// A readiness probe waits at most this long for the store.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn healthz() -> Response<Full<Bytes>> {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

pub(super) async fn ready(state: &HttpState) -> Response<Full<Bytes>> {
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

pub(super) fn metrics(metrics: &Metrics) -> Response<Full<Bytes>> {
    typed_response(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        Bytes::from(metrics.render()),
    )
}
