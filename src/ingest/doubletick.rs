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

use chrono::{DateTime, Utc};

use super::payload::{Fields, MAX_ID_BYTES, MAX_LABEL_BYTES, PayloadError, Response, object};
use super::{IngestContext, body_sha256};
use crate::domain::{Decision, Evidence, Pair, Source, decide, to_millis_precision};

/// Parses one DoubleTick webhook body that arrived at `received_at`.
pub fn parse(
    body: &[u8],
    ctx: &IngestContext,
    received_at: DateTime<Utc>,
) -> Result<Decision, PayloadError> {
    let map = object(body)?;
    let f = Fields::new(&map, "");
    let customer = f.phone("from")?;
    let business = f.phone("to")?;
    let stated_at = to_millis_precision(f.rfc3339("receivedAt")?);
    let message_id = f.text("messageId", MAX_ID_BYTES)?.to_owned();
    let paired_message_id = f
        .opt_text("pairedMessageId", MAX_ID_BYTES)?
        .unwrap_or_default()
        .to_owned();
    let response = Response::parse("response", f.str("response")?)?;
    let response_source = f
        .opt_text("responseSource", MAX_LABEL_BYTES)?
        .unwrap_or_default()
        .to_owned();
    let sender_customer_id = f
        .opt_text("dtCustomerId", MAX_ID_BYTES)?
        .unwrap_or_default()
        .to_owned();
    // Validated whatever the response, so a malformed body is never half-read.
    let is_permanent = f.opt_bool("isPermanent")?;
    let stated_expiry = f.opt_unix_seconds("expirationTimestamp")?;

    let (decided_at, choice) = decide(
        response == Response::Accept,
        is_permanent,
        stated_at,
        stated_expiry,
        received_at,
        &ctx.dates,
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
            stated_at,
            stated_expires_at: stated_expiry,
        },
        attribution: None,
        customer_name: None,
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
            dates: crate::domain::DateRules {
                temporary_window: Duration::from_secs(7 * 24 * 3600),
                max_clock_skew: Duration::from_secs(120),
            },
        }
    }

    /// Shortly after the samples' `receivedAt`.
    fn arrival() -> chrono::DateTime<chrono::Utc> {
        DateTime::from_timestamp(1_768_473_005, 0).unwrap()
    }

    fn parse(body: &[u8], ctx: &IngestContext) -> Result<Decision, PayloadError> {
        super::parse(body, ctx, arrival())
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
            assert_eq!(d.evidence.body_sha256, body_sha256(body.as_bytes()));
            assert_eq!(d.evidence.stated_at, t(1_768_473_000));
        }
    }

    #[test]
    fn limits_and_control_characters_are_refused_naming_the_field() {
        let base = serde_json::json!({
            "from": "+919876543210", "to": "+919000000000",
            "receivedAt": "2026-01-15T10:30:00.000Z", "messageId": "m",
            "response": "accept", "isPermanent": true
        });
        let with = |key: &str, value: String| {
            let mut v = base.clone();
            v[key] = value.into();
            v.to_string()
        };
        let cases = [
            (with("messageId", "x".repeat(257)), "messageId"),
            (with("messageId", "m\n{\"forged\":1}".into()), "messageId"),
            (with("messageId", "m\r".into()), "messageId"),
            (with("pairedMessageId", "p".repeat(257)), "pairedMessageId"),
            (
                with("pairedMessageId", "p\u{1b}[31m".into()),
                "pairedMessageId",
            ),
            (with("dtCustomerId", "c".repeat(257)), "dtCustomerId"),
            (with("responseSource", "r".repeat(65)), "responseSource"),
            (with("responseSource", "user\tx".into()), "responseSource"),
        ];
        for (body, field) in cases {
            let err = parse(body.as_bytes(), &ctx()).unwrap_err();
            assert_eq!(err.field(), Some(field), "{err}");
        }
        let longest = with("messageId", "é".repeat(128));
        assert!(
            parse(longest.as_bytes(), &ctx()).is_ok(),
            "256 bytes are fine"
        );
    }

    #[test]
    fn a_future_date_is_ordered_at_arrival_and_kept_as_evidence() {
        let body = r#"{"from":"919876543210","to":"919000000000","receivedAt":"9999-12-31T23:59:59Z",
            "messageId":"m1","response":"reject"}"#;
        let d = parse(body.as_bytes(), &ctx()).unwrap();
        assert_eq!(d.choice, Choice::Deny);
        assert_eq!(d.decided_at, arrival());
        assert_eq!(
            d.evidence.stated_at,
            DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z").unwrap()
        );
    }

    #[test]
    fn temporary_without_expiry_lasts_the_configured_window_from_the_event() {
        let body = r#"{"from":"919876543210","to":"+91 90000 00000","receivedAt":"2026-01-15T10:30:00Z",
            "messageId":"m1","response":"accepted","isPermanent":false}"#;
        let decided = DateTime::parse_from_rfc3339("2026-01-15T10:30:00Z").unwrap();
        let d = super::parse(body.as_bytes(), &ctx(), decided.into()).unwrap();
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
