//! DoubleTick's "Call Permission Reply Received" webhook body → a domain [`Decision`].
//!
//! ```json
//! { "from": "+919876543210", "to": "+919000000000", "receivedAt": "2026-01-15T10:30:00.000Z",
//!   "messageId": "wamid.X", "pairedMessageId": "wamid.Y", "response": "accept",
//!   "responseSource": "user_initiated", "isPermanent": false,
//!   "expirationTimestamp": 1768470600, "dtCustomerId": "customer_x" }
//! ```
//! `from` is the customer, `to` the business number. `receivedAt` is when the customer pressed the
//! button, and orders decisions. `isPermanent` and `expirationTimestamp` only come with grants.

use super::payload::{Fields, PayloadError, Response, object};
use super::{IngestContext, body_sha256};
use crate::domain::{Decision, Evidence, Pair, Source, choice_for_reply, to_millis_precision};

/// Parses one DoubleTick webhook body.
pub fn parse(body: &[u8], ctx: &IngestContext) -> Result<Decision, PayloadError> {
    let map = object(body)?;
    let f = Fields::new(&map, "");
    let customer = f.phone("from")?;
    let business = f.phone("to")?;
    let decided_at = to_millis_precision(f.rfc3339("receivedAt")?);
    let message_id = f.str("messageId")?.to_owned();
    let paired_message_id = f.opt_str("pairedMessageId")?.unwrap_or_default().to_owned();
    let response = Response::parse("response", f.str("response")?)?;
    let response_source = f.opt_str("responseSource")?.unwrap_or_default().to_owned();
    let sender_customer_id = f.opt_str("dtCustomerId")?.unwrap_or_default().to_owned();
    // Validated whatever the response, so a malformed body is never half-read.
    let is_permanent = f.opt_bool("isPermanent")?;
    let explicit_expiry = f.opt_unix_seconds("expirationTimestamp")?;

    let choice = choice_for_reply(
        response == Response::Accept,
        is_permanent,
        explicit_expiry,
        decided_at,
        ctx.temporary_grant,
    );
    Ok(Decision {
        pair: Pair::new(business, customer),
        choice,
        decided_at,
        evidence: Evidence {
            source: Source::DoubleTick,
            message_id,
            paired_message_id,
            response_source,
            sender_customer_id,
            body_sha256: body_sha256(body),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::DateTime;

    use crate::domain::Choice;

    use super::*;

    fn ctx() -> IngestContext {
        IngestContext {
            temporary_grant: Duration::from_secs(7 * 24 * 3600),
        }
    }

    const PERMANENT: &str = include_str!("../../tests/fixtures/doubletick/accept-permanent.json");
    const TEMPORARY: &str = include_str!("../../tests/fixtures/doubletick/accept-temporary.json");
    const REJECT: &str = include_str!("../../tests/fixtures/doubletick/reject.json");

    #[test]
    fn samples_parse_to_the_right_choice() {
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let cases = [
            (PERMANENT, Choice::GrantPermanent),
            (
                TEMPORARY,
                Choice::GrantTemporary {
                    expires_at: t(1_768_470_600),
                },
            ),
            (REJECT, Choice::Deny),
        ];
        for (body, want) in cases {
            let d = parse(body.as_bytes(), &ctx()).unwrap();
            assert_eq!(d.choice, want);
            assert_eq!(d.pair.customer.to_string(), "+919876543210");
            assert_eq!(d.pair.business.to_string(), "+919000000000");
            assert_eq!(d.decided_at, t(1_768_473_000));
            assert_eq!(d.evidence.body_sha256.len(), 64);
        }
    }

    #[test]
    fn temporary_without_expiry_lasts_the_configured_window_from_the_event() {
        let body = r#"{"from":"919876543210","to":"+91 90000 00000","receivedAt":"2026-01-15T10:30:00Z",
            "messageId":"m1","response":"accepted","isPermanent":false}"#;
        let d = parse(body.as_bytes(), &ctx()).unwrap();
        let decided = DateTime::parse_from_rfc3339("2026-01-15T10:30:00Z").unwrap();
        assert_eq!(
            d.choice,
            Choice::GrantTemporary {
                expires_at: (decided + chrono::Duration::days(7)).into()
            }
        );
    }

    #[test]
    fn bad_bodies_name_the_problem() {
        let base = serde_json::json!({
            "from": "+919876543210", "to": "+919000000000",
            "receivedAt": "2026-01-15T10:30:00.000Z", "messageId": "m",
            "response": "accept", "isPermanent": true
        });
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[key] = value;
            v.to_string()
        };
        let without = |key: &str| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(key);
            v.to_string()
        };
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), None),
            ("[1,2]".into(), None),
            (without("from"), Some("from")),
            (without("to"), Some("to")),
            (without("receivedAt"), Some("receivedAt")),
            (without("messageId"), Some("messageId")),
            (without("response"), Some("response")),
            (with("from", "12ab".into()), Some("from")),
            (with("to", 919000000000u64.into()), Some("to")),
            (with("receivedAt", "yesterday".into()), Some("receivedAt")),
            (with("messageId", "  ".into()), Some("messageId")),
            (with("response", "maybe".into()), Some("response")),
            (with("isPermanent", "yes".into()), Some("isPermanent")),
            (
                with("expirationTimestamp", "soon".into()),
                Some("expirationTimestamp"),
            ),
            (
                with("expirationTimestamp", (-5).into()),
                Some("expirationTimestamp"),
            ),
        ];
        for (body, field) in cases {
            let err = parse(body.as_bytes(), &ctx()).unwrap_err();
            assert_eq!(err.field(), field, "body {body}: {err}");
        }
    }
}
