//! The consent rules. Every question "may we call?" is answered here, from plain values.
//!
//! - Which decision wins: the one the customer made last (by the event's own time, never by
//!   arrival). On a tie a denial wins over a grant, and a permanent grant over a temporary one;
//!   after that the decision id breaks the tie, so every replica and store agrees.
//! - When a temporary grant ends: at its explicit expiry, or `decided_at + window`, bounded
//!   (see below).
//! - What "allowed" means: the current decision is a grant and, if temporary, `now < expires_at`.
//! - Which deliveries are the same: one pair, sender and message id ([`redelivery`]).
//!
//! # Dates a sender cannot be trusted with
//!
//! A sender's clock may be skewed, its time zone mislabelled, or its token leaked. So:
//!
//! - **Event time** ([`ordering_time`]): a stated time more than `max_clock_skew` ahead of the
//!   arrival time is clamped to the arrival time for ordering. Nothing is refused for its date
//!   (a denial is never lost), and the stated time stays in the evidence. So no decision can
//!   outrank a decision made more than `max_clock_skew` after it arrived.
//! - **A temporary grant's end** ([`temporary_expiry`]): the sender's expiry is kept when it lies
//!   after the event time and at most `window + max_clock_skew` after it. Further out (year
//!   9999) it is clamped to `decided_at + window`; at or before the event time the grant never
//!   allowed anything and ends at `min(stated expiry, arrival)`. The stated expiry stays in the
//!   evidence.
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
        .then_with(|| a.dedup_digest().cmp(&b.dedup_digest()))
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

/// The limits [`decide`] applies to a sender's dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRules {
    /// Length of a temporary grant when the sender gives no expiry, and its bound otherwise.
    pub temporary_window: Duration,
    /// How far ahead of arrival a stated event time may be before it is clamped to arrival.
    pub max_clock_skew: Duration,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(chrono_duration(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The time a decision is ordered by: the stated time, unless it lies more than `max_skew`
/// after `received_at`; then `received_at`.
pub fn ordering_time(
    stated: DateTime<Utc>,
    received_at: DateTime<Utc>,
    max_skew: Duration,
) -> DateTime<Utc> {
    if stated > plus(received_at, max_skew) {
        received_at
    } else {
        stated
    }
}

/// When a temporary grant decided at `decided_at` ends:
/// - no stated expiry: `decided_at + window`;
/// - stated after `decided_at + window + max_skew`: clamped to `decided_at + window`;
/// - stated at or before `decided_at`: the grant never allowed anything; it ends at the
///   stated expiry or on arrival, whichever is earlier;
/// - otherwise the stated expiry.
pub fn temporary_expiry(
    decided_at: DateTime<Utc>,
    stated: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    rules: &DateRules,
) -> DateTime<Utc> {
    let normal = plus(decided_at, rules.temporary_window);
    match stated {
        None => normal,
        Some(s) if s > plus(normal, rules.max_clock_skew) => normal,
        Some(s) if s <= decided_at => s.min(received_at),
        Some(s) => s,
    }
}

/// What a sender's reply means, given when it arrived: the time it is ordered by and the
/// choice. "reject" denies; "accept" is a permanent grant only when the sender says so
/// explicitly (`is_permanent: true`), otherwise the narrower temporary grant. Times keep
/// millisecond precision.
pub fn decide(
    accepted: bool,
    is_permanent: Option<bool>,
    stated_at: DateTime<Utc>,
    stated_expiry: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    rules: &DateRules,
) -> (DateTime<Utc>, Choice) {
    let decided_at =
        to_millis_precision(ordering_time(stated_at, received_at, rules.max_clock_skew));
    let choice = match (accepted, is_permanent) {
        (false, _) => Choice::Deny,
        (true, Some(true)) => Choice::GrantPermanent,
        (true, _) => Choice::GrantTemporary {
            expires_at: to_millis_precision(temporary_expiry(
                decided_at,
                stated_expiry,
                received_at,
                rules,
            )),
        },
    };
    (decided_at, choice)
}

/// How a delivery relates to what was recorded before under its [`Decision::dedup_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Never seen: record it.
    New,
    /// The same delivery again: change nothing, answer as before.
    Duplicate,
    /// The same message id with another answer, time or expiry: refuse it, store nothing.
    Conflict,
}

/// Compares a delivery's [`Decision::fingerprint`] with the one recorded under its id, if any.
/// The Redis twin is the de-duplication step of `record.lua`.
pub fn redelivery(seen: Option<[u8; 8]>, incoming: [u8; 8]) -> Redelivery {
    match seen {
        None => Redelivery::New,
        Some(f) if f == incoming => Redelivery::Duplicate,
        Some(_) => Redelivery::Conflict,
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

/// The answer to "may we call now?", with the decision it rests on: owned (`Decision`, the
/// default) or shared (`Arc<Decision>`, as the replica's check cache holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<D = Decision> {
    pub state: ConsentState,
    pub decision: Option<D>,
}

impl<D> Verdict<D> {
    /// The only thing a dialer needs. True for live grants, false for everything else.
    pub fn allowed(&self) -> bool {
        matches!(
            self.state,
            ConsentState::GrantedPermanent | ConsentState::GrantedTemporary
        )
    }
}

/// The state a current decision's `choice` puts a pair in at `now`.
pub fn state_at(choice: &Choice, now: DateTime<Utc>) -> ConsentState {
    match *choice {
        Choice::Deny => ConsentState::Denied,
        Choice::GrantPermanent => ConsentState::GrantedPermanent,
        Choice::GrantTemporary { expires_at } if now < expires_at => ConsentState::GrantedTemporary,
        Choice::GrantTemporary { .. } => ConsentState::Expired,
    }
}

/// Evaluates the pair's current decision at `now` (owned, or shared behind an `Arc`).
pub fn evaluate<D: std::borrow::Borrow<Decision>>(
    current: Option<D>,
    now: DateTime<Utc>,
) -> Verdict<D> {
    let state = current.as_ref().map_or(ConsentState::NoConsent, |d| {
        state_at(&d.borrow().choice, now)
    });
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
                body_sha256: [0; 32],
                stated_at: at(decided),
                stated_expires_at: None,
            },
            attribution: None,
            customer_name: None,
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

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);
    const SKEW: Duration = Duration::from_secs(120);

    fn rules() -> DateRules {
        DateRules {
            temporary_window: WEEK,
            max_clock_skew: SKEW,
        }
    }

    #[test]
    fn ordering_time_table() {
        // (name, stated, received, want)
        let cases = [
            ("in the past: kept", -60, 0, -60),
            ("now: kept", 0, 0, 0),
            ("ahead within the skew: kept", 120, 0, 120),
            ("just past the skew: clamped to arrival", 121, 0, 0),
            ("ten minutes ahead: clamped to arrival", 600, 0, 0),
            (
                "a century ahead: clamped to arrival",
                100 * 365 * 86_400,
                0,
                0,
            ),
        ];
        for (name, stated, received, want) in cases {
            assert_eq!(
                ordering_time(at(stated), at(received), SKEW),
                at(want),
                "{name}"
            );
        }
        assert_eq!(
            ordering_time(DateTime::<Utc>::MAX_UTC, at(0), Duration::MAX),
            DateTime::<Utc>::MAX_UTC,
            "an unbounded skew saturates instead of overflowing"
        );
    }

    #[test]
    fn a_future_dated_grant_cannot_outrank_a_later_denial() {
        // A grant stated ten minutes ahead arrives at 0; the customer denies at 1.
        let (g_at, g) = decide(true, Some(true), at(600), None, at(0), &rules());
        let (d_at, d) = decide(false, None, at(1), None, at(2), &rules());
        let grant = decision(g, 0, "grant");
        let grant = Decision {
            decided_at: g_at,
            ..grant
        };
        let deny = Decision {
            decided_at: d_at,
            ..decision(d, 0, "deny")
        };
        assert_eq!(arbitrate(Some(&grant), &deny), Arbitration::Apply);
        assert_eq!(arbitrate(Some(&deny), &grant), Arbitration::Stale);
    }

    #[test]
    fn temporary_expiry_table() {
        let day = 86_400;
        let cases: Vec<(&str, Option<i64>, i64, Duration, i64)> = vec![
            // (name, stated expiry, received, window, want)
            (
                "default window counts from the event",
                None,
                5,
                WEEK,
                7 * day,
            ),
            (
                "short configured window",
                None,
                5,
                Duration::from_secs(2),
                2,
            ),
            ("stated expiry inside the window", Some(60), 5, WEEK, 60),
            (
                "stated expiry within window + skew: kept",
                Some(7 * day + 120),
                5,
                WEEK,
                7 * day + 120,
            ),
            (
                "stated expiry past window + skew: clamped to the window",
                Some(7 * day + 121),
                5,
                WEEK,
                7 * day,
            ),
            (
                "sixteen days: clamped to the window",
                Some(16 * day),
                5,
                WEEK,
                7 * day,
            ),
            (
                "year 9999: clamped to the window",
                Some(253_402_300_000 - 1_767_000_000),
                5,
                WEEK,
                7 * day,
            ),
            (
                "before the event: ends at the stated expiry (already past)",
                Some(-2400),
                5,
                WEEK,
                -2400,
            ),
            ("at the event: ends at once", Some(0), 5, WEEK, 0),
            (
                "before an event dated ahead of arrival: ends on arrival",
                Some(0),
                -30,
                WEEK,
                -30,
            ),
        ];
        for (name, stated, received, window, want) in cases {
            let rules = DateRules {
                temporary_window: window,
                max_clock_skew: SKEW,
            };
            assert_eq!(
                temporary_expiry(at(0), stated.map(at), at(received), &rules),
                at(want),
                "{name}"
            );
        }
        let unbounded = DateRules {
            temporary_window: Duration::MAX,
            max_clock_skew: SKEW,
        };
        assert_eq!(
            temporary_expiry(at(0), None, at(0), &unbounded),
            DateTime::<Utc>::MAX_UTC,
            "overflowing window saturates"
        );
    }

    #[test]
    fn decide_table() {
        let temp = |t| Choice::GrantTemporary { expires_at: at(t) };
        // (name, accepted, is_permanent, stated at, stated expiry, want time, want choice)
        let cases = [
            ("reject", false, None, 0, None, 0, Choice::Deny),
            (
                "reject ignores is_permanent",
                false,
                Some(true),
                0,
                None,
                0,
                Choice::Deny,
            ),
            (
                "a future-dated denial is kept, ordered at arrival",
                false,
                None,
                3600,
                None,
                10,
                Choice::Deny,
            ),
            (
                "accept, permanent",
                true,
                Some(true),
                0,
                None,
                0,
                Choice::GrantPermanent,
            ),
            (
                "accept, not permanent",
                true,
                Some(false),
                0,
                None,
                0,
                temp(7 * 86_400),
            ),
            (
                "accept, permanence unsaid: narrower grant",
                true,
                None,
                0,
                None,
                0,
                temp(7 * 86_400),
            ),
            (
                "accept with explicit expiry",
                true,
                Some(false),
                0,
                Some(60),
                0,
                temp(60),
            ),
            (
                "future-dated temporary grant: window from arrival",
                true,
                None,
                3600,
                None,
                10,
                temp(10 + 7 * 86_400),
            ),
        ];
        for (name, accepted, permanent, stated, expiry, want_at, want) in cases {
            assert_eq!(
                decide(
                    accepted,
                    permanent,
                    at(stated),
                    expiry.map(at),
                    at(10),
                    &rules()
                ),
                (at(want_at), want),
                "{name}"
            );
        }
    }

    #[test]
    fn redelivery_table() {
        let cases = [
            ("never seen", None, [1; 8], Redelivery::New),
            ("same answer", Some([1; 8]), [1; 8], Redelivery::Duplicate),
            ("another answer", Some([2; 8]), [1; 8], Redelivery::Conflict),
        ];
        for (name, seen, incoming, want) in cases {
            assert_eq!(redelivery(seen, incoming), want, "{name}");
        }
    }

    #[test]
    fn dedup_id_depends_on_the_delivery_only_and_fingerprint_on_what_was_said() {
        let a = temp(0, 100, "m");
        let mut b = a.clone();
        // A replica with another window derives another expiry: the same delivery.
        b.choice = Choice::GrantTemporary {
            expires_at: at(200),
        };
        b.decided_at = at(5);
        b.evidence.body_sha256 = [0xff; 32];
        assert_eq!(a.dedup_id(), b.dedup_id());
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut other_answer = a.clone();
        other_answer.choice = Choice::Deny;
        assert_eq!(a.dedup_id(), other_answer.dedup_id());
        assert_ne!(a.fingerprint(), other_answer.fingerprint());
        let mut other_time = a.clone();
        other_time.evidence.stated_at = at(1);
        assert_ne!(a.fingerprint(), other_time.fingerprint());
        let mut other_expiry = a.clone();
        other_expiry.evidence.stated_expires_at = Some(at(50));
        assert_ne!(a.fingerprint(), other_expiry.fingerprint());
        let mut other_message = a.clone();
        other_message.evidence.message_id = "n".into();
        assert_ne!(a.dedup_id(), other_message.dedup_id());
    }
}
