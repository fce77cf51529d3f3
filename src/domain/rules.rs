//! The consent rules. Every question "may we call?" is answered here, from plain values.
//!
//! - Which decision wins: the one the customer made last (by the event's own time, never by
//!   arrival). On a tie a denial wins over a grant, and a permanent grant over a temporary one;
//!   after that the decision id breaks the tie, so every replica and store agrees.
//! - When a temporary grant ends: at its explicit expiry, or `decided_at + window`.
//! - What "allowed" means: the current decision is a grant and, if temporary, `now < expires_at`.
//!
//! The Redis store must apply the same order inside its atomic script; `record.lua` in
//! `store/redis/` is the one twin of [`precedence`], and the store conformance suite runs the
//! same cases against both.

use std::cmp::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::decision::{Choice, Decision, to_millis_precision};

/// How a newly arrived decision relates to the pair's current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arbitration {
    /// The new decision becomes current.
    Apply,
    /// An older (or losing) decision: kept in the history only.
    Stale,
    /// Exactly the current decision again: nothing changes.
    Duplicate,
}

/// Rank used to break ties between decisions made at the same instant: higher wins.
pub fn tie_rank(choice: &Choice) -> u8 {
    match choice {
        Choice::GrantTemporary { .. } => 0,
        Choice::GrantPermanent => 1,
        Choice::Deny => 2,
    }
}

/// Total order of decisions for one pair: `Greater` means `a` wins over `b`.
pub fn precedence(a: &Decision, b: &Decision) -> Ordering {
    a.decided_at
        .timestamp_millis()
        .cmp(&b.decided_at.timestamp_millis())
        .then_with(|| tie_rank(&a.choice).cmp(&tie_rank(&b.choice)))
        .then_with(|| a.dedup_id().cmp(&b.dedup_id()))
}

/// Decides what a new decision does to the current one.
pub fn arbitrate(current: Option<&Decision>, incoming: &Decision) -> Arbitration {
    match current {
        None => Arbitration::Apply,
        Some(cur) => match precedence(incoming, cur) {
            Ordering::Greater => Arbitration::Apply,
            Ordering::Less => Arbitration::Stale,
            Ordering::Equal => Arbitration::Duplicate,
        },
    }
}

/// When a temporary grant ends: the sender's explicit expiry if given, else `decided_at + window`.
pub fn temporary_expiry(
    decided_at: DateTime<Utc>,
    explicit: Option<DateTime<Utc>>,
    window: Duration,
) -> DateTime<Utc> {
    explicit.unwrap_or_else(|| {
        let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        decided_at
            .checked_add_signed(window)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    })
}

/// What a sender's reply means: "reject" denies; "accept" is a permanent grant only when the
/// sender says so explicitly (`is_permanent: true`), otherwise the narrower temporary grant,
/// ending at the sender's expiry or `decided_at + window`. Times keep millisecond precision.
pub fn choice_for_reply(
    accepted: bool,
    is_permanent: Option<bool>,
    explicit_expiry: Option<DateTime<Utc>>,
    decided_at: DateTime<Utc>,
    window: Duration,
) -> Choice {
    match (accepted, is_permanent) {
        (false, _) => Choice::Deny,
        (true, Some(true)) => Choice::GrantPermanent,
        (true, _) => Choice::GrantTemporary {
            expires_at: to_millis_precision(temporary_expiry(decided_at, explicit_expiry, window)),
        },
    }
}

/// The state of consent for a pair at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsentState {
    NoConsent,
    GrantedPermanent,
    GrantedTemporary,
    Denied,
    Expired,
}

/// The answer to "may we call now?", with the decision it rests on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: ConsentState,
    pub decision: Option<Decision>,
}

impl Verdict {
    /// The only thing a dialer needs. True for live grants, false for everything else.
    pub fn allowed(&self) -> bool {
        matches!(
            self.state,
            ConsentState::GrantedPermanent | ConsentState::GrantedTemporary
        )
    }
}

/// Evaluates the pair's current decision at `now`.
pub fn evaluate(current: Option<Decision>, now: DateTime<Utc>) -> Verdict {
    let state = match current.as_ref().map(|d| d.choice) {
        None => ConsentState::NoConsent,
        Some(Choice::Deny) => ConsentState::Denied,
        Some(Choice::GrantPermanent) => ConsentState::GrantedPermanent,
        Some(Choice::GrantTemporary { expires_at }) if now < expires_at => {
            ConsentState::GrantedTemporary
        }
        Some(Choice::GrantTemporary { .. }) => ConsentState::Expired,
    };
    Verdict {
        state,
        decision: current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::decision::{Evidence, Pair, Source};
    use crate::domain::phone::PhoneNumber;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_000_000 + secs, 0).unwrap()
    }

    fn decision(choice: Choice, decided: i64, msg: &str) -> Decision {
        Decision {
            pair: Pair::new(
                PhoneNumber::parse("+919000000000").unwrap(),
                PhoneNumber::parse("+919876543210").unwrap(),
            ),
            choice,
            decided_at: at(decided),
            evidence: Evidence {
                source: Source::DoubleTick,
                message_id: msg.into(),
                paired_message_id: String::new(),
                response_source: "user_initiated".into(),
                sender_customer_id: String::new(),
                body_sha256: String::new(),
            },
        }
    }

    fn temp(decided: i64, expires: i64, msg: &str) -> Decision {
        decision(
            Choice::GrantTemporary {
                expires_at: at(expires),
            },
            decided,
            msg,
        )
    }

    #[test]
    fn arbitration_table() {
        let perm = |t, m| decision(Choice::GrantPermanent, t, m);
        let deny = |t, m| decision(Choice::Deny, t, m);
        let cases: Vec<(&str, Option<Decision>, Decision, Arbitration)> = vec![
            (
                "first decision applies",
                None,
                perm(0, "a"),
                Arbitration::Apply,
            ),
            (
                "newer grant replaces denial",
                Some(deny(0, "a")),
                perm(1, "b"),
                Arbitration::Apply,
            ),
            (
                "newer denial replaces grant",
                Some(perm(0, "a")),
                deny(1, "b"),
                Arbitration::Apply,
            ),
            (
                "older denial arriving late is stale",
                Some(perm(5, "a")),
                deny(1, "b"),
                Arbitration::Stale,
            ),
            (
                "older grant arriving late is stale",
                Some(deny(5, "a")),
                perm(1, "b"),
                Arbitration::Stale,
            ),
            (
                "tie: denial beats grant",
                Some(perm(3, "a")),
                deny(3, "b"),
                Arbitration::Apply,
            ),
            (
                "tie: grant loses to denial",
                Some(deny(3, "a")),
                perm(3, "b"),
                Arbitration::Stale,
            ),
            (
                "tie: permanent beats temporary",
                Some(temp(3, 9, "a")),
                perm(3, "b"),
                Arbitration::Apply,
            ),
            (
                "tie: temporary loses to permanent",
                Some(perm(3, "a")),
                temp(3, 9, "b"),
                Arbitration::Stale,
            ),
            (
                "same decision again is a duplicate",
                Some(deny(3, "a")),
                deny(3, "a"),
                Arbitration::Duplicate,
            ),
        ];
        for (name, current, incoming, want) in cases {
            assert_eq!(arbitrate(current.as_ref(), &incoming), want, "{name}");
        }
    }

    #[test]
    fn tie_between_equal_ranks_is_decided_the_same_way_in_both_arrival_orders() {
        let a = decision(Choice::Deny, 3, "a");
        let b = decision(Choice::Deny, 3, "b");
        let ab = arbitrate(Some(&a), &b);
        let ba = arbitrate(Some(&b), &a);
        assert_ne!(ab, Arbitration::Duplicate);
        assert_ne!(ab, ba, "exactly one of the two must win");
    }

    #[test]
    fn evaluation_table() {
        let cases: Vec<(&str, Option<Decision>, i64, ConsentState, bool)> = vec![
            ("nothing recorded", None, 0, ConsentState::NoConsent, false),
            (
                "permanent grant",
                Some(decision(Choice::GrantPermanent, 0, "a")),
                10_000_000,
                ConsentState::GrantedPermanent,
                true,
            ),
            (
                "denial",
                Some(decision(Choice::Deny, 0, "a")),
                1,
                ConsentState::Denied,
                false,
            ),
            (
                "temporary inside window",
                Some(temp(0, 100, "a")),
                99,
                ConsentState::GrantedTemporary,
                true,
            ),
            (
                "temporary at its expiry instant",
                Some(temp(0, 100, "a")),
                100,
                ConsentState::Expired,
                false,
            ),
            (
                "temporary after expiry",
                Some(temp(0, 100, "a")),
                101,
                ConsentState::Expired,
                false,
            ),
            (
                "temporary that arrived already expired",
                Some(temp(0, -5, "a")),
                0,
                ConsentState::Expired,
                false,
            ),
        ];
        for (name, current, now, state, allowed) in cases {
            let v = evaluate(current, at(now));
            assert_eq!(v.state, state, "{name}");
            assert_eq!(v.allowed(), allowed, "{name}");
        }
    }

    #[test]
    fn reply_choice_table() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let temp = |t| Choice::GrantTemporary { expires_at: t };
        let cases = [
            ("reject", false, None, None, Choice::Deny),
            (
                "reject ignores is_permanent",
                false,
                Some(true),
                None,
                Choice::Deny,
            ),
            (
                "accept, permanent",
                true,
                Some(true),
                None,
                Choice::GrantPermanent,
            ),
            (
                "accept, not permanent",
                true,
                Some(false),
                None,
                temp(at(7 * 24 * 3600)),
            ),
            (
                "accept, permanence unsaid: narrower grant",
                true,
                None,
                None,
                temp(at(7 * 24 * 3600)),
            ),
            (
                "accept with explicit expiry",
                true,
                Some(false),
                Some(at(60)),
                temp(at(60)),
            ),
        ];
        for (name, accepted, permanent, explicit, want) in cases {
            assert_eq!(
                choice_for_reply(accepted, permanent, explicit, at(0), week),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn temporary_expiry_table() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let cases = [
            (
                "default window counts from the event",
                None,
                week,
                at(7 * 24 * 3600),
            ),
            ("explicit expiry wins", Some(at(60)), week, at(60)),
            (
                "short configured window",
                None,
                Duration::from_secs(2),
                at(2),
            ),
            (
                "overflowing window saturates",
                None,
                Duration::MAX,
                DateTime::<Utc>::MAX_UTC,
            ),
        ];
        for (name, explicit, window, want) in cases {
            assert_eq!(temporary_expiry(at(0), explicit, window), want, "{name}");
        }
    }
}
