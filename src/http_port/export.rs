//! Issue 14: `GET /v1/export?business=…&from=…&to=…&format=ndjson|csv&by=event|received`.
//!
//! Every decision recorded for one business in a time range (`from` inclusive, `to`
//! exclusive, RFC 3339), as NDJSON or CSV rows ([`crate::export`]), streamed with chunked
//! transfer encoding one store page at a time: the body pulls the next page only when hyper
//! has sent the previous one, so memory stays one page whatever the range.
//!
//! Needs an API key with the `history` scope (`Authorization: Bearer <key>`,
//! [`ApiAuth::admit_scope`](crate::grpc_api::auth::ApiAuth::admit_scope)); a key limited to
//! some businesses may export only those. The first page is read before the answer's head, so
//! a store that is down is a 503; a store failure after the head aborts the response (the
//! chunked body never ends properly), so a cut export cannot pass for a whole one.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::json;

use super::HttpState;
use super::reply::{Body, BoxError, boxed, json_response};
use crate::domain::PhoneNumber;
use crate::export::{Format, Pager};
use crate::grpc_api::auth::{Refusal, Scope};
use crate::metrics::{RefusalReason, StoreOp};
use crate::store::{RecordsRange, StoreError, TimeField};

/// Why an export is refused; mapped to a status in [`ExportError::status`], nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{refusal}")]
    Refused {
        client: Option<Arc<str>>,
        refusal: Refusal,
    },
    #[error("{field}: {message}")]
    BadParameter {
        field: &'static str,
        message: String,
    },
    #[error("this API key may not export business {0}")]
    OtherBusiness(PhoneNumber),
    #[error("nothing exported, retry later: {0}")]
    Store(StoreError),
}

impl ExportError {
    /// The one place an export refusal becomes a status and an error code.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ExportError::Refused { refusal, .. } => match refusal {
                Refusal::MissingKey
                | Refusal::MalformedKey
                | Refusal::UnknownKey
                | Refusal::NotConfigured => (StatusCode::UNAUTHORIZED, "unauthorized"),
                Refusal::MissingScope { .. }
                | Refusal::UnlistedRpc
                | Refusal::OtherBusiness { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            },
            ExportError::BadParameter { .. } => (StatusCode::BAD_REQUEST, "invalid_parameter"),
            ExportError::OtherBusiness(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ExportError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
        }
    }

    /// The refusal as a JSON answer `{"error", "message", "field"?}`, logged.
    pub fn into_response(self, state: &HttpState) -> Response<Body> {
        let (status, code) = self.status();
        match &self {
            ExportError::Refused { client, refusal } => {
                let client = client
                    .as_deref()
                    .unwrap_or(crate::metrics::UNAUTHENTICATED_CLIENT);
                state.metrics.api_refusal(client, refusal.reason());
                tracing::info!(client, reason = %refusal, "export refused");
            }
            ExportError::OtherBusiness(_) => {
                tracing::info!(
                    reason = RefusalReason::OtherBusiness.label(),
                    "export refused"
                );
            }
            ExportError::Store(e) => {
                state.metrics.store_error(StoreOp::History);
                tracing::warn!(error = %e, "export not started: store unavailable");
            }
            ExportError::BadParameter { .. } => {
                tracing::info!(error = %self, "export refused");
            }
        }
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let ExportError::BadParameter { field, .. } = &self {
            body["field"] = (*field).into();
        }
        boxed(json_response(status, &body))
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> ExportError {
    ExportError::BadParameter {
        field,
        message: message.into(),
    }
}

/// What the query string asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ExportQuery {
    pub range: RecordsRange,
    pub format: Format,
}

fn parse_time(field: &'static str, value: &str) -> Result<DateTime<Utc>, ExportError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| bad(field, format!("{value:?} is not an RFC 3339 time ({e})")))
}

/// Parses the query string; every problem names its parameter.
pub(super) fn parse_query(query: &str) -> Result<ExportQuery, ExportError> {
    let mut business = None;
    let mut from = None;
    let mut to = None;
    let mut format = None;
    let mut by = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let (field, slot): (&'static str, &mut Option<String>) = match &*key {
            "business" => ("business", &mut business),
            "from" => ("from", &mut from),
            "to" => ("to", &mut to),
            "format" => ("format", &mut format),
            "by" => ("by", &mut by),
            other => {
                return Err(bad(
                    "query",
                    format!("unknown parameter {other:?}; expected business, from, to, format, by"),
                ));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(bad(field, "given twice"));
        }
    }
    let business = business.ok_or_else(|| bad("business", "required"))?;
    let business = PhoneNumber::parse(&business).map_err(|e| bad("business", e.to_string()))?;
    let from = parse_time("from", &from.ok_or_else(|| bad("from", "required"))?)?;
    let to = parse_time("to", &to.ok_or_else(|| bad("to", "required"))?)?;
    if to < from {
        return Err(bad("to", "is before from"));
    }
    let format = match format.as_deref() {
        None => Format::Ndjson,
        Some(f) => Format::parse(f).ok_or_else(|| bad("format", "must be ndjson or csv"))?,
    };
    let by = match by.as_deref() {
        None => TimeField::Received,
        Some(b) => TimeField::parse(b).ok_or_else(|| bad("by", "must be event or received"))?,
    };
    Ok(ExportQuery {
        range: RecordsRange {
            business,
            by,
            from,
            to,
        },
        format,
    })
}

/// Answers `GET /v1/export`.
pub(super) async fn export(
    state: &HttpState,
    req: &Request<Incoming>,
) -> Result<Response<Body>, ExportError> {
    let authorization: Vec<&[u8]> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let caller = state
        .auth
        .current()
        .admit_scope(Scope::History, &authorization)
        .map_err(|(client, refusal)| ExportError::Refused { client, refusal })?;
    let query = parse_query(req.uri().query().unwrap_or(""))?;
    if !caller.may_see(&query.range.business) {
        state
            .metrics
            .api_refusal(caller.name(), RefusalReason::OtherBusiness);
        return Err(ExportError::OtherBusiness(query.range.business));
    }
    stream(state, query.range, query.format, caller.name()).await
}

/// The export of `range` in `format` for an admitted `client` (business scoping already
/// checked): `GET /v1/export` and the console's `POST /console/export` both answer with it.
pub(super) async fn stream(
    state: &HttpState,
    range: RecordsRange,
    format: Format,
    client: &str,
) -> Result<Response<Body>, ExportError> {
    let mut pager = Pager::new(state.store.clone(), range);
    let first = pager
        .next_page()
        .await
        .map_err(ExportError::Store)?
        .unwrap_or_default();
    tracing::info!(client, "export started");
    let mut head = format.head();
    for r in &first {
        format.write_row(&mut head, &crate::export::ExportRow::from_recorded(r));
    }
    let metrics = state.metrics.clone();
    let rest = futures_util::stream::unfold(Some(pager), move |pager| {
        let metrics = metrics.clone();
        async move {
            let mut pager = pager?;
            match pager.next_page().await {
                Ok(Some(items)) => {
                    let mut chunk = Vec::with_capacity(items.len() * 512);
                    for r in &items {
                        format.write_row(&mut chunk, &crate::export::ExportRow::from_recorded(r));
                    }
                    Some((Ok(Bytes::from(chunk)), Some(pager)))
                }
                Ok(None) => None,
                Err(e) => {
                    metrics.store_error(StoreOp::History);
                    tracing::warn!(error = %e, "export aborted: store failed after the head");
                    let e: BoxError = Box::new(e);
                    Some((Err(e), None))
                }
            }
        }
    });
    let frames = futures_util::StreamExt::map(
        futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok::<_, BoxError>(Bytes::from(head))]),
            rest,
        ),
        |chunk| chunk.map(Frame::data),
    );
    let mut res = Response::new(StreamBody::new(frames).boxed_unsync());
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    let disposition = format!(
        "attachment; filename=\"callgate-export.{}\"",
        format.extension()
    );
    if let Ok(v) = header::HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(query: &str) -> &'static str {
        match parse_query(query) {
            Err(ExportError::BadParameter { field, .. }) => field,
            other => panic!("{query}: {other:?}"),
        }
    }

    #[test]
    fn the_query_is_parsed_and_every_problem_names_its_parameter() {
        let ok = parse_query(
            "business=%2B919000000000&from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00%2B05:30\
             &format=csv&by=event",
        )
        .unwrap();
        assert_eq!(ok.format, Format::Csv);
        assert_eq!(ok.range.by, TimeField::Event);
        assert_eq!(ok.range.business.digits(), "919000000000");
        assert_eq!(ok.range.to.to_rfc3339(), "2026-11-30T18:30:00+00:00");
        let defaults =
            parse_query("business=919000000000&from=2026-11-01T00:00:00Z&to=2026-11-01T00:00:00Z")
                .unwrap();
        assert_eq!(
            (defaults.format, defaults.range.by),
            (Format::Ndjson, TimeField::Received)
        );
        let base = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z";
        assert_eq!(field_of(base), "business");
        assert_eq!(field_of(&format!("business=12&{base}")), "business");
        assert_eq!(
            field_of("business=919000000000&to=2026-12-01T00:00:00Z"),
            "from"
        );
        assert_eq!(
            field_of("business=919000000000&from=yesterday&to=2026-12-01T00:00:00Z"),
            "from"
        );
        assert_eq!(
            field_of("business=919000000000&from=2026-12-01T00:00:00Z&to=2026-11-01T00:00:00Z"),
            "to"
        );
        assert_eq!(
            field_of(&format!("business=919000000000&{base}&format=xml")),
            "format"
        );
        assert_eq!(
            field_of(&format!("business=919000000000&{base}&by=x")),
            "by"
        );
        assert_eq!(
            field_of(&format!(
                "business=919000000000&{base}&business=919000000001"
            )),
            "business"
        );
        assert_eq!(
            field_of(&format!("business=919000000000&{base}&q=1")),
            "query"
        );
    }
}
