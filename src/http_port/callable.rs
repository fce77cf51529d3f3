//! Issue 13: `GET /v1/callable`, a business's calling list over plain HTTP, for dialers that
//! load lead lists over REST (and cannot speak gRPC): the same list as gRPC `ListCallable`
//! ([`crate::calling_list`]), as JSON or CSV.
//!
//! Query parameters: `business_number` (required), `team`, `campaign`, `format` (`json`, the
//! default, or `csv`), `page_size`, `page_token`. Without `page_size` the whole list (from
//! `page_token`, if given) is **streamed**: the port reads it from the store one page of
//! [`DEFAULT_PAGE`](crate::calling_list::DEFAULT_PAGE) entries at a time, only when the
//! client has taken the previous one (HTTP/1.1 chunked transfer: the client's reading paces
//! the store reads), so memory stays bounded by a page whatever the list's length. With
//! `page_size` it answers that one page, with the token of the next.
//!
//! JSON: `{"business_number", "snapshot_cursor", "entries": [...], "next_page_token"}`, field
//! names as in the proto, states as the proto's enum names, times RFC 3339 (UTC), `expires_at`
//! absent for a permanent grant. CSV: a header line, then one line per entry (RFC 4180
//! quoting; `labels` as a JSON object); the snapshot cursor is in the
//! `callgate-snapshot-cursor` header and, for one page, the next token in
//! `callgate-next-page-token`.
//!
//! The API key is checked like the gRPC API's (`Authorization: Bearer <key>`, scope `check`,
//! business restrictions). A refusal is a JSON body `{"error", "message", "field"?}` with 400,
//! 401, 403 or 503, mapped in [`refusal`]. Once a streamed answer has begun (200 sent), a store
//! failure cuts the connection: the client sees an incomplete transfer (no final chunk, and in
//! JSON no closing bracket), never a list that looks complete.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::stream;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::HttpState;
use super::reply::{Body, BoxError, Reply, boxed, json_response};
use crate::calling_list::{CallingLists, ListError, ListPage, ListQuery};
use crate::domain::{ConsentState, Decision};
use crate::grpc_api::auth::Scope;
use crate::grpc_api::state_name;
use crate::metrics::{StoreOp, UNAUTHENTICATED_CLIENT};

/// Header carrying the snapshot cursor (also in the JSON body).
pub const SNAPSHOT_HEADER: &str = "callgate-snapshot-cursor";
/// Header carrying the next page's token of a one-page answer (also in the JSON body).
pub const NEXT_PAGE_HEADER: &str = "callgate-next-page-token";
/// The CSV header line.
const CSV_HEADER: &str =
    "customer_number,state,expires_at,decided_at,team,campaign,customer_name,labels\r\n";

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
}

/// A refused list request: the HTTP status, the error code, the message and the field at fault.
#[derive(Debug)]
struct Refused {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl Refused {
    fn invalid(field: &'static str, message: String) -> Self {
        Refused {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message,
            field: Some(field),
        }
    }

    fn into_response(self) -> Response<Body> {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, error = %self.message, "calling list not answered");
        } else {
            tracing::info!(status = self.status.as_u16(), code = self.code, error = %self.message, "request refused");
        }
        let mut body = json!({ "error": self.code, "message": self.message });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        boxed(json_response(self.status, &body))
    }
}

/// The one place a [`ListError`] becomes an HTTP status.
fn refusal(e: ListError) -> Refused {
    let message = e.to_string();
    match e {
        ListError::OtherBusiness(_) => Refused {
            status: StatusCode::FORBIDDEN,
            code: "permission_denied",
            message,
            field: Some("business_number"),
        },
        ListError::Business(_) => Refused::invalid("business_number", message),
        ListError::NegativePageSize(_) => Refused::invalid("page_size", message),
        ListError::PageToken(_) => Refused::invalid("page_token", message),
        ListError::Store(_) => Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "store_unavailable",
            message,
            field: None,
        },
    }
}

/// The request's parameters, each at most once.
#[derive(Default)]
struct Params {
    business_number: Option<String>,
    team: Option<String>,
    campaign: Option<String>,
    format: Option<String>,
    page_size: Option<String>,
    page_token: Option<String>,
}

fn params(query: &str) -> Result<Params, Refused> {
    let mut p = Params::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match name.as_ref() {
            "business_number" => &mut p.business_number,
            "team" => &mut p.team,
            "campaign" => &mut p.campaign,
            "format" => &mut p.format,
            "page_size" => &mut p.page_size,
            "page_token" => &mut p.page_token,
            _ => {
                return Err(Refused::invalid(
                    "query",
                    "unknown parameter (known: business_number, team, campaign, format, \
                     page_size, page_token)"
                        .into(),
                ));
            }
        };
        if slot.replace(value.into_owned()).is_some() {
            return Err(Refused::invalid(
                "query",
                format!("parameter {name} given more than once"),
            ));
        }
    }
    Ok(p)
}

/// Answers `GET /v1/callable`.
pub(super) async fn list(state: &HttpState, req: &Request<Incoming>) -> Reply {
    Reply::list(match answer(state, req).await {
        Ok(response) => response,
        Err(refused) => refused.into_response(),
    })
}

async fn answer(state: &HttpState, req: &Request<Incoming>) -> Result<Response<Body>, Refused> {
    // The key first: nothing about the request is looked at for an unadmitted caller.
    let authorization: Vec<&[u8]> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let caller = state
        .auth
        .current()
        .admit_scope(Scope::Check, &authorization)
        .map_err(|(client, refusal)| {
            let name = client
                .as_deref()
                .unwrap_or(UNAUTHENTICATED_CLIENT)
                .to_owned();
            // Counted, and its gRPC code decided, in the one place that does it for the API.
            let status = refusal.status(&name, &state.metrics);
            let unauthenticated = status.code() == tonic::Code::Unauthenticated;
            Refused {
                status: if unauthenticated {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                },
                code: if unauthenticated {
                    "unauthenticated"
                } else {
                    "permission_denied"
                },
                message: status.message().to_owned(),
                field: None,
            }
        })?;
    let p = params(req.uri().query().unwrap_or(""))?;
    let format = match p.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(_) => {
            return Err(Refused::invalid(
                "format",
                "format: must be json or csv".into(),
            ));
        }
    };
    let page_size = match p.page_size.as_deref() {
        None => None,
        Some(n) => Some(n.parse::<i64>().map_err(|_| {
            Refused::invalid("page_size", format!("page_size: {n:?} is not a number"))
        })?),
    };
    let Some(business) = p.business_number.as_deref() else {
        return Err(Refused::invalid(
            "business_number",
            "business_number: required".into(),
        ));
    };
    let lists = state.lists.clone();
    let query = ListQuery::parse(
        business,
        p.team.as_deref().unwrap_or(""),
        p.campaign.as_deref().unwrap_or(""),
        page_size.unwrap_or(0),
        p.page_token.as_deref().unwrap_or(""),
        lists.shards(),
    )
    .map_err(refusal)?;
    if let Err(e) = CallingLists::admit(&caller, &query) {
        state
            .metrics
            .api_refusal(caller.name(), crate::metrics::RefusalReason::OtherBusiness);
        return Err(refusal(e));
    }
    // The first page before the answer begins: a store that is down is a 503, not a cut
    // transfer.
    let first = lists
        .page(&query, state.clock.now())
        .await
        .map_err(|e| store_failed(state, e))?;
    let one_page = page_size.is_some();
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            match format {
                Format::Json => "application/json",
                Format::Csv => "text/csv; charset=utf-8",
            },
        )
        .header(SNAPSHOT_HEADER, first.snapshot_cursor.to_string());
    if one_page && let Some(token) = first.next_page_token() {
        response = response.header(NEXT_PAGE_HEADER, token);
    }
    let opening = match format {
        Format::Json => format!(
            "{{\"business_number\":{},\"snapshot_cursor\":{},\"entries\":[",
            Value::from(first.business.to_string()),
            Value::from(first.snapshot_cursor.to_string())
        ),
        Format::Csv => CSV_HEADER.to_owned(),
    };
    let stream_state = Streaming {
        lists,
        query,
        clock: state.clock,
        metrics: state.metrics.clone(),
        format,
        one_page,
        first_entry: true,
        pending: Some(first),
        opening: Some(opening),
        done: false,
        span: tracing::Span::current(),
    };
    let body = stream::unfold(stream_state, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((chunk, s))
    });
    let body = StreamBody::new(body).boxed_unsync();
    // The builder's parts are all valid (static names, a cursor's ASCII form).
    response.body(body).map_err(|e| Refused {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "internal",
        message: e.to_string(),
        field: None,
    })
}

fn store_failed(state: &HttpState, e: ListError) -> Refused {
    if matches!(e, ListError::Store(_)) {
        state.metrics.store_error(StoreOp::List);
    }
    refusal(e)
}

/// The streamed body's state: one chunk per page.
struct Streaming {
    lists: CallingLists,
    /// The list, at the page to read next.
    query: ListQuery,
    clock: crate::clock::Clock,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    format: Format,
    /// Answer only the first page (the client gave `page_size`).
    one_page: bool,
    /// No entry written yet (JSON: no comma before it).
    first_entry: bool,
    /// A page read but not yet written.
    pending: Option<ListPage>,
    /// The body's opening, written with the first chunk.
    opening: Option<String>,
    done: bool,
    /// The request's `http` span: the pages read after the handler returned belong to it.
    span: tracing::Span,
}

impl Streaming {
    /// The next chunk of the body, `None` when it is complete, an error to cut it short.
    async fn next_chunk(&mut self) -> Option<Result<Frame<Bytes>, BoxError>> {
        if self.done {
            return None;
        }
        let page = match self.pending.take() {
            Some(page) => page,
            None => match self
                .lists
                .page(&self.query, self.clock.now())
                .instrument(self.span.clone())
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    self.done = true;
                    if matches!(e, ListError::Store(_)) {
                        self.metrics.store_error(StoreOp::List);
                    }
                    self.span.in_scope(
                        || tracing::warn!(error = %e, "calling list cut short: connection closed"),
                    );
                    return Some(Err(Box::new(e)));
                }
            },
        };
        let mut out = self.opening.take().unwrap_or_default();
        for (d, state) in &page.entries {
            match self.format {
                Format::Json => {
                    if !self.first_entry {
                        out.push(',');
                    }
                    out.push_str(&json_entry(d, *state).to_string());
                }
                Format::Csv => csv_line(&mut out, d, *state),
            }
            self.first_entry = false;
        }
        let more = !self.one_page && page.advance(&mut self.query);
        if !more {
            self.done = true;
            if self.format == Format::Json {
                let token = if self.one_page {
                    page.next_page_token().unwrap_or_default()
                } else {
                    String::new()
                };
                out.push_str("],\"next_page_token\":");
                out.push_str(&Value::from(token).to_string());
                out.push('}');
            }
        }
        Some(Ok(Frame::data(Bytes::from(out))))
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One entry as JSON, field names as in the proto's `CallableEntry`.
fn json_entry(d: &Decision, state: ConsentState) -> Value {
    let mut entry = Map::new();
    entry.insert("customer_number".into(), d.pair.customer.to_string().into());
    entry.insert("state".into(), state_name(state).into());
    if let Some(expires) = d.choice.expires_at() {
        entry.insert("expires_at".into(), rfc3339(expires).into());
    }
    entry.insert("decided_at".into(), rfc3339(d.decided_at).into());
    let (team, campaign, labels, name) = attribution(d);
    entry.insert("team".into(), team.into());
    entry.insert("campaign".into(), campaign.into());
    entry.insert("labels".into(), Value::Object(labels));
    entry.insert("customer_name".into(), name.into());
    Value::Object(entry)
}

/// The attribution fields of an entry: team, campaign, labels, customer name (empty when
/// unattributed or unknown).
fn attribution(d: &Decision) -> (String, String, Map<String, Value>, String) {
    let name = d.customer_name.clone().unwrap_or_default();
    match &d.attribution {
        Some(a) => (
            a.team.clone(),
            a.campaign.clone(),
            a.labels
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect(),
            name,
        ),
        None => (String::new(), String::new(), Map::new(), name),
    }
}

/// Appends one CSV line (RFC 4180) for an entry.
fn csv_line(out: &mut String, d: &Decision, state: ConsentState) {
    let (team, campaign, labels, name) = attribution(d);
    let fields = [
        d.pair.customer.to_string(),
        state_name(state).to_owned(),
        d.choice.expires_at().map(rfc3339).unwrap_or_default(),
        rfc3339(d.decided_at),
        team,
        campaign,
        name,
        if labels.is_empty() {
            String::new()
        } else {
            Value::Object(labels).to_string()
        },
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// One CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let mut out = String::new();
        for f in ["plain", "a,b", "say \"hi\"", "two\nlines", ""] {
            csv_field(&mut out, f);
            out.push('|');
        }
        assert_eq!(out, "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\nlines\"||");
    }

    #[test]
    fn parameters_are_known_and_given_once() {
        let p = params("business_number=%2B919000000000&format=csv&team=a%20b").unwrap();
        assert_eq!(p.business_number.as_deref(), Some("+919000000000"));
        assert_eq!(p.team.as_deref(), Some("a b"));
        assert!(params("business_number=1&business_number=2").is_err());
        let err = params("bussiness_number=1").err().unwrap();
        assert_eq!(err.field, Some("query"));
    }
}
