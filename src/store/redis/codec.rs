//! How decisions, history entries and events are spelled inside Redis.
//!
//! Only this file and the Lua scripts next to it know these formats.
//!
//! - A **decision** is compact JSON with one- or two-letter keys; empty evidence strings are
//!   left out. Phone numbers are digits only.
//! - A **consent value** (`c:` and `x:` keys) is `<decided ms>|<rank>|<expires ms or empty>|
//!   <dedup id>|<decision JSON>`. The header is what the Lua scripts need to arbitrate and to
//!   check a lapse without a JSON parser; Rust reads only the JSON part.
//! - A **history entry** is `a|<received ms>|<decision JSON>` (applied) or `s|…` (stale).
//! - An **event** is a stream entry with fields `k` (`g` granted, `d` denied, `e` expired) and
//!   `d` (the decision JSON).
//!
//! Anything that does not decode is [`StoreError::Corrupt`]: a store that cannot read a consent
//! must not answer as if there were none.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::rules::tie_rank;
use crate::domain::{
    Choice, ConsentEvent, Decision, EventKind, Evidence, HistoryEntry, HistoryOutcome, Pair,
    PhoneNumber, Source,
};
use crate::store::StoreError;

#[derive(Serialize, Deserialize)]
struct DecisionRepr {
    /// Business number (digits).
    b: String,
    /// Customer number (digits).
    c: String,
    /// Choice: `p` permanent grant, `t` temporary grant, `d` deny.
    k: String,
    /// Expiry of a temporary grant (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<i64>,
    /// Decided at (ms since the epoch).
    t: i64,
    /// Source: `dt` DoubleTick, `wa` WhatsApp.
    s: String,
    /// Message id.
    m: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pm: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    rs: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    sc: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    h: String,
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("time {ms} out of range")))
}

/// The decision as compact JSON.
pub fn encode_decision(d: &Decision) -> String {
    let (k, e) = match d.choice {
        Choice::GrantPermanent => ("p", None),
        Choice::GrantTemporary { expires_at } => ("t", Some(expires_at.timestamp_millis())),
        Choice::Deny => ("d", None),
    };
    let repr = DecisionRepr {
        b: d.pair.business.digits().to_owned(),
        c: d.pair.customer.digits().to_owned(),
        k: k.to_owned(),
        e,
        t: d.decided_at.timestamp_millis(),
        s: match d.evidence.source {
            Source::DoubleTick => "dt",
            Source::WhatsApp => "wa",
        }
        .to_owned(),
        m: d.evidence.message_id.clone(),
        pm: d.evidence.paired_message_id.clone(),
        rs: d.evidence.response_source.clone(),
        sc: d.evidence.sender_customer_id.clone(),
        h: d.evidence.body_sha256.clone(),
    };
    // Serialising plain strings and integers cannot fail.
    serde_json::to_string(&repr).unwrap_or_default()
}

pub fn decode_decision(bytes: &[u8]) -> Result<Decision, StoreError> {
    let r: DecisionRepr =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("decision: {e}")))?;
    let phone = |digits: &str| {
        PhoneNumber::from_digits(digits).map_err(|e| corrupt(format!("phone {digits:?}: {e}")))
    };
    let choice = match (r.k.as_str(), r.e) {
        ("p", None) => Choice::GrantPermanent,
        ("d", None) => Choice::Deny,
        ("t", Some(e)) => Choice::GrantTemporary {
            expires_at: millis(e)?,
        },
        (k, e) => return Err(corrupt(format!("choice {k:?} with expiry {e:?}"))),
    };
    let source = match r.s.as_str() {
        "dt" => Source::DoubleTick,
        "wa" => Source::WhatsApp,
        other => return Err(corrupt(format!("source {other:?}"))),
    };
    Ok(Decision {
        pair: Pair::new(phone(&r.b)?, phone(&r.c)?),
        choice,
        decided_at: millis(r.t)?,
        evidence: Evidence {
            source,
            message_id: r.m,
            paired_message_id: r.pm,
            response_source: r.rs,
            sender_customer_id: r.sc,
            body_sha256: r.h,
        },
    })
}

/// The value of a consent (`c:`) or lapse (`x:`) key. The header layout is parsed by `parse()` in
/// `record.lua` and `claim_expired.lua`.
pub fn encode_consent(d: &Decision) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        d.decided_at.timestamp_millis(),
        tie_rank(&d.choice),
        d.choice
            .expires_at()
            .map(|t| t.timestamp_millis().to_string())
            .unwrap_or_default(),
        d.dedup_id(),
        encode_decision(d)
    )
}

/// Splits off `n` `|`-separated header fields and returns the rest.
fn after_fields(bytes: &[u8], n: usize) -> Option<&[u8]> {
    let mut rest = bytes;
    for _ in 0..n {
        let at = rest.iter().position(|b| *b == b'|')?;
        rest = &rest[at + 1..];
    }
    Some(rest)
}

pub fn decode_consent(bytes: &[u8]) -> Result<Decision, StoreError> {
    let json = after_fields(bytes, 4).ok_or_else(|| corrupt("consent value without header"))?;
    decode_decision(json)
}

pub fn decode_history(bytes: &[u8]) -> Result<HistoryEntry, StoreError> {
    let outcome = match bytes.first() {
        Some(b'a') => HistoryOutcome::Applied,
        Some(b's') => HistoryOutcome::Stale,
        _ => return Err(corrupt("history entry with unknown outcome")),
    };
    let received =
        after_fields(bytes, 1).ok_or_else(|| corrupt("history entry without received time"))?;
    let at = received
        .iter()
        .position(|b| *b == b'|')
        .ok_or_else(|| corrupt("history entry without decision"))?;
    let ms = std::str::from_utf8(&received[..at])
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| corrupt("history entry with unreadable received time"))?;
    Ok(HistoryEntry {
        decision: decode_decision(&received[at + 1..])?,
        outcome,
        received_at: millis(ms)?,
    })
}

/// The stream field `k` for an event kind.
pub fn event_kind_code(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Granted => "g",
        EventKind::Denied => "d",
        EventKind::Expired => "e",
    }
}

/// Rebuilds an event from its stream fields `k` and `d`.
pub fn decode_event(kind: &[u8], decision: &[u8]) -> Result<ConsentEvent, StoreError> {
    let kind = match kind {
        b"g" => EventKind::Granted,
        b"d" => EventKind::Denied,
        b"e" => EventKind::Expired,
        other => {
            return Err(corrupt(format!(
                "event kind {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    Ok(ConsentEvent {
        kind,
        decision: decode_decision(decision)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(choice: Choice, evidence_empty: bool) -> Decision {
        let s = |v: &str| {
            if evidence_empty {
                String::new()
            } else {
                v.to_owned()
            }
        };
        Decision {
            pair: Pair::new(
                PhoneNumber::parse("+919000000000").unwrap(),
                PhoneNumber::parse("+919876543210").unwrap(),
            ),
            choice,
            decided_at: DateTime::from_timestamp_millis(1_767_000_000_123).unwrap(),
            evidence: Evidence {
                source: Source::WhatsApp,
                message_id: "wamid.X|Y\"z".into(),
                paired_message_id: s("p1"),
                response_source: s("user_initiated"),
                sender_customer_id: s("cust-1"),
                body_sha256: s(&"ab".repeat(32)),
            },
        }
    }

    #[test]
    fn consent_values_round_trip_for_every_choice() {
        let exp = DateTime::from_timestamp_millis(1_767_600_000_456).unwrap();
        for choice in [
            Choice::GrantPermanent,
            Choice::Deny,
            Choice::GrantTemporary { expires_at: exp },
        ] {
            for empty in [false, true] {
                let d = decision(choice, empty);
                assert_eq!(decode_consent(encode_consent(&d).as_bytes()).unwrap(), d);
            }
        }
    }

    #[test]
    fn history_entries_round_trip() {
        let d = decision(Choice::Deny, false);
        let raw = format!("s|1767000000999|{}", encode_decision(&d));
        let e = decode_history(raw.as_bytes()).unwrap();
        assert_eq!(e.outcome, HistoryOutcome::Stale);
        assert_eq!(e.received_at.timestamp_millis(), 1_767_000_000_999);
        assert_eq!(e.decision, d);
    }

    #[test]
    fn unreadable_values_are_corrupt_not_defaults() {
        let bad: &[&[u8]] = &[
            b"",
            b"1|2|3",
            b"1|2||id|{}",
            b"1|2||id|{\"b\":\"1\",\"c\":\"2\",\"k\":\"p\",\"t\":1,\"s\":\"dt\",\"m\":\"\"}",
            b"1|2||id|{\"b\":\"919000000000\",\"c\":\"919876543210\",\"k\":\"t\",\"t\":1,\"s\":\"dt\",\"m\":\"\"}",
        ];
        for raw in bad {
            assert!(
                matches!(decode_consent(raw), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(
            decode_history(b"x|1|{}"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_event(b"z", b"{}"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
