//! issue 13 (attribution): `POST /v1/consent-requests`, RegisterConsentRequest for CRMs and
//! automation tools that speak JSON, not gRPC. Authenticated like the gRPC API (the same
//! clients file; `Authorization: Bearer <key>` with the `register` scope, kept to the
//! client's businesses). Field names are the proto's:
//!
//! ```json
//! { "business_number": "+919000000000", "customer_number": "+919876543210",
//!   "request_message_id": "wamid.HBgM…", "team": "retention", "campaign": "winback-q1",
//!   "labels": { "tier": "gold" }, "sent_at": "2026-01-15T10:00:00Z",
//!   "customer_name": "Asha Rao" }
//! ```
//!
//! Answers (JSON, one `match` in [`refusal`]): 201 stored (200 for a retry of the same
//! registration), with `attributed_replies` and the budget after it; 422 a field that is
//! missing or out of bounds (`field` names it); 429 beyond the request budget, with
//! `next_allowed_at` (and `Retry-After`); 409 the id registered before with other fields;
//! 401 / 403 the API key; 503 the store (nothing stored). Nothing is acknowledged unless
//! stored.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::HttpState;
use super::reply::{Reply, json_response};
use super::webhooks::read_json_body;
use crate::consent_requests::{RegisterError, Registered};
use crate::domain::{Budget, ConsentRequest, Pair, PhoneNumber, to_millis_precision};
use crate::grpc_api::auth::{Refusal, Scope};
use crate::metrics::StoreOp;

/// Why a registration over HTTP was refused.
enum Refused {
    Auth(Refusal),
    Field { field: String, problem: String },
    Register(RegisterError),
}

fn field(field: &str, problem: impl Into<String>) -> Refused {
    Refused::Field {
        field: field.to_owned(),
        problem: problem.into(),
    }
}

/// The budget as JSON (the proto's CanRequestConsentResponse field names).
pub(super) fn budget_json(b: &Budget) -> Value {
    json!({
        "allowed": b.allowed,
        "next_allowed_at": b.next_allowed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "limits": b.uses.iter().map(|u| json!({
            "max": u.limit.max,
            "window_seconds": u.limit.window.as_secs(),
            "used": u.used,
        })).collect::<Vec<_>>(),
    })
}

/// The one place a refusal becomes a status and a JSON body.
fn refusal(r: Refused, now: DateTime<Utc>) -> Response<Full<Bytes>> {
    let (status, body) = match &r {
        Refused::Auth(a) => {
            let status = match a {
                Refusal::MissingKey
                | Refusal::MalformedKey
                | Refusal::UnknownKey
                | Refusal::NotConfigured => StatusCode::UNAUTHORIZED,
                _ => StatusCode::FORBIDDEN,
            };
            (
                status,
                json!({ "error": "unauthorized", "message": a.to_string() }),
            )
        }
        Refused::Field { field, problem } => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": "invalid_field", "field": field,
                    "message": format!("{field}: {problem}") }),
        ),
        Refused::Register(e) => match e {
            RegisterError::Field(f) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({ "error": "invalid_field", "field": f.field, "message": e.to_string() }),
            ),
            RegisterError::OverBudget(b) => {
                let mut body = budget_json(b);
                body["error"] = json!("request_budget_exhausted");
                body["message"] = json!(e.to_string());
                (StatusCode::TOO_MANY_REQUESTS, body)
            }
            RegisterError::Conflict => (
                StatusCode::CONFLICT,
                json!({ "error": "conflict", "field": "request_message_id",
                        "message": e.to_string() }),
            ),
            RegisterError::Store(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "store_unavailable",
                        "message": format!("{e}; nothing was stored, retry later") }),
            ),
        },
    };
    if status.is_server_error() {
        tracing::warn!(status = status.as_u16(), "consent request not stored");
    } else {
        tracing::info!(status = status.as_u16(), "consent request refused");
    }
    let mut response = json_response(status, &body);
    if let Refused::Register(RegisterError::OverBudget(b)) = &r {
        let wait = (b.next_allowed_at - now).num_seconds().max(1);
        if let Ok(v) = wait.to_string().parse() {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    response
}

fn text<'a>(map: &'a Map<String, Value>, key: &str, required: bool) -> Result<&'a str, Refused> {
    match map.get(key) {
        None | Some(Value::Null) if required => Err(field(key, "is required")),
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(field(key, "must be a string")),
    }
}

fn phone(map: &Map<String, Value>, key: &str) -> Result<PhoneNumber, Refused> {
    PhoneNumber::parse(text(map, key, true)?).map_err(|e| field(key, e.to_string()))
}

/// The JSON body as a registration (bounds are checked by `ConsentRequest::validate`).
fn parse(body: &[u8]) -> Result<ConsentRequest, Refused> {
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(field("body", "must be a JSON object")),
        Err(e) => return Err(field("body", format!("is not valid JSON: {e}"))),
    };
    const KNOWN: [&str; 8] = [
        "business_number",
        "customer_number",
        "request_message_id",
        "team",
        "campaign",
        "labels",
        "sent_at",
        "customer_name",
    ];
    if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(field(unknown, "is not a field of a consent request"));
    }
    let pair = Pair::new(
        phone(&map, "business_number")?,
        phone(&map, "customer_number")?,
    );
    let labels = match map.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(labels)) => labels
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(field(&format!("labels[{k}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(field("labels", "must be an object of strings")),
    };
    let sent_at = DateTime::parse_from_rfc3339(text(&map, "sent_at", true)?)
        .map_err(|e| field("sent_at", format!("must be an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    let customer_name = text(&map, "customer_name", false)?;
    Ok(ConsentRequest {
        pair,
        request_message_id: text(&map, "request_message_id", true)?.to_owned(),
        team: text(&map, "team", true)?.to_owned(),
        campaign: text(&map, "campaign", false)?.to_owned(),
        labels,
        sent_at: to_millis_precision(sent_at),
        customer_name: (!customer_name.is_empty()).then(|| customer_name.to_owned()),
    })
}

fn registered_json(pair: &Pair, r: &Registered) -> Value {
    json!({
        "business_number": pair.business.to_string(),
        "customer_number": pair.customer.to_string(),
        "registered": r.new,
        "attributed_replies": r.attributed,
        "budget": budget_json(&r.budget),
    })
}

/// `POST /v1/consent-requests`.
pub(super) async fn register(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Reply, super::WebhookError> {
    let authorization: Vec<&[u8]> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let caller = match state
        .auth
        .current()
        .admit_scope(Scope::Register, &authorization)
    {
        Ok(caller) => caller,
        Err((_, r)) => return Ok(Reply::probe(refusal(Refused::Auth(r), state.clock.now()))),
    };
    drop(authorization);
    let body = read_json_body(req, &state.limits).await?;
    let request = match parse(&body) {
        Ok(r) => r,
        Err(r) => return Ok(Reply::probe(refusal(r, state.clock.now()))),
    };
    if !caller.may_see(&request.pair.business) {
        let refused = Refused::Auth(Refusal::OtherBusiness {
            client: caller.name().into(),
            business: request.pair.business.to_string(),
        });
        return Ok(Reply::probe(refusal(refused, state.clock.now())));
    }
    match state.requests.register(&request).await {
        Ok(r) => {
            let status = if r.new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(Reply::probe(json_response(
                status,
                &registered_json(&request.pair, &r),
            )))
        }
        Err(e) => {
            if matches!(e, RegisterError::Store(_)) {
                state.metrics.store_error(StoreOp::Record);
            }
            Ok(Reply::probe(refusal(
                Refused::Register(e),
                state.clock.now(),
            )))
        }
    }
}
