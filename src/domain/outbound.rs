//! Outbound webhook subscriptions (issue 17): which consent events an endpoint receives, with
//! which signing keys, and how long a failing delivery waits before it is tried again.
//!
//! Pure rules only. Where the subscriptions are kept (the store), how a delivery is made (the
//! `outbound` module: HTTP, signatures, the destination allowlist) and how they are managed (the
//! gRPC API, the CLI) live at the edges.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::event::{ConsentEvent, EventKind};
use super::phone::PhoneNumber;

/// Whether a subscription is being delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Delivered by one replica at a time.
    Active,
    /// Its endpoint kept failing past the retry window, or it fell behind the retained event
    /// log: not delivered; its cursor is kept for an operator to resume (enable) or replay.
    Failing,
    /// Turned off by an operator, or by the endpoint answering `410 Gone`.
    Disabled,
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Active => "active",
            SubscriptionState::Failing => "failing",
            SubscriptionState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SubscriptionState::Active),
            "failing" => Some(SubscriptionState::Failing),
            "disabled" => Some(SubscriptionState::Disabled),
            _ => None,
        }
    }
}

/// The event kinds a subscription receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventKinds {
    pub grant: bool,
    pub deny: bool,
    pub expiry: bool,
}

impl EventKinds {
    pub const ALL: EventKinds = EventKinds {
        grant: true,
        deny: true,
        expiry: true,
    };

    pub fn contains(self, kind: EventKind) -> bool {
        match kind {
            EventKind::Granted => self.grant,
            EventKind::Denied => self.deny,
            EventKind::Expired => self.expiry,
        }
    }

    /// `grant,deny,expiry` (any non-empty subset, any order).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut kinds = EventKinds {
            grant: false,
            deny: false,
            expiry: false,
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "grant" => kinds.grant = true,
                "deny" => kinds.deny = true,
                "expiry" => kinds.expiry = true,
                other => {
                    return Err(format!(
                        "unknown event kind {other:?} (expected grant, deny or expiry)"
                    ));
                }
            }
        }
        if !(kinds.grant || kinds.deny || kinds.expiry) {
            return Err("name at least one event kind (grant, deny, expiry)".into());
        }
        Ok(kinds)
    }
}

impl fmt::Display for EventKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = [
            (self.grant, "grant"),
            (self.deny, "deny"),
            (self.expiry, "expiry"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// One signing key of a subscription (the raw bytes behind its `whsec_` form).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub key: Vec<u8>,
    /// Set on the old key when a new one replaces it: it still signs until then (the overlap
    /// window), so receivers can switch keys without missing a delivery.
    pub retire_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key", &"[redacted]")
            .field("retire_at", &self.retire_at)
            .finish()
    }
}

/// An endpoint that receives consent events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    /// The newest key first. Every key not yet retired signs each delivery.
    pub keys: Vec<SigningKey>,
    pub kinds: EventKinds,
    /// Empty: every business.
    pub businesses: Vec<PhoneNumber>,
    /// Empty: any team. Otherwise only events attributed to one of these teams.
    pub teams: Vec<String>,
    /// Empty: any campaign. Otherwise only events attributed to one of these campaigns.
    pub campaigns: Vec<String>,
    pub state: SubscriptionState,
    /// Why the subscription is failing or disabled (empty when active).
    pub reason: String,
    pub created_at: DateTime<Utc>,
}

/// What an event is attributed to, as far as a subscription's filters care.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventTags<'a> {
    pub team: Option<&'a str>,
    pub campaign: Option<&'a str>,
}

impl Subscription {
    /// Whether this subscription receives `event` (whatever its state).
    pub fn wants(&self, event: &ConsentEvent, tags: EventTags<'_>) -> bool {
        let tagged = |wanted: &[String], tag: Option<&str>| {
            wanted.is_empty() || tag.is_some_and(|t| wanted.iter().any(|w| w == t))
        };
        self.kinds.contains(event.kind)
            && (self.businesses.is_empty()
                || self.businesses.contains(&event.decision.pair.business))
            && tagged(&self.teams, tags.team)
            && tagged(&self.campaigns, tags.campaign)
    }

    /// The keys that sign a delivery made at `now`: every key not retired by then.
    pub fn signing_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &[u8]> {
        self.keys
            .iter()
            .filter(move |k| k.retire_at.is_none_or(|at| at > now))
            .map(|k| k.key.as_slice())
    }

    /// Makes `key` the newest key; the keys still signing keep signing for `overlap` more (or
    /// less, if they were already due to retire sooner); keys already retired are dropped.
    pub fn rotate(&mut self, key: Vec<u8>, now: DateTime<Utc>, overlap: Duration) {
        let until = now + chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX);
        self.keys.retain(|k| k.retire_at.is_none_or(|at| at > now));
        for k in &mut self.keys {
            k.retire_at = Some(k.retire_at.map_or(until, |at| at.min(until)));
        }
        self.keys.insert(
            0,
            SigningKey {
                key,
                retire_at: None,
            },
        );
    }
}

/// How long to wait before the `attempt`-th retry (0 = the first) of a failed delivery:
/// `min` doubled per attempt, at most `max`, then scaled by a jitter in [½, 1] (`jitter` in
/// [0, 1)), so receivers coming back are not hit by every sender at once.
pub fn backoff(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let base = min
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Choice, Decision, Evidence, Pair, Source};

    fn phone(s: &str) -> PhoneNumber {
        PhoneNumber::parse(s).unwrap()
    }

    fn event(kind: EventKind, business: &str) -> ConsentEvent {
        ConsentEvent {
            kind,
            decision: Decision {
                pair: Pair::new(phone(business), phone("+919876543210")),
                choice: Choice::GrantPermanent,
                decided_at: DateTime::UNIX_EPOCH,
                evidence: Evidence {
                    source: Source::DoubleTick,
                    message_id: "m".into(),
                    paired_message_id: String::new(),
                    response_source: String::new(),
                    sender_customer_id: String::new(),
                    body_sha256: [0; 32],
                    stated_at: DateTime::UNIX_EPOCH,
                    stated_expires_at: None,
                },
                attribution: None,
                customer_name: None,
            },
            late_attribution: false,
        }
    }

    fn subscription() -> Subscription {
        Subscription {
            id: "wh_1".into(),
            url: "https://crm.example/hook".into(),
            keys: vec![SigningKey {
                key: vec![1; 24],
                retire_at: None,
            }],
            kinds: EventKinds::ALL,
            businesses: Vec::new(),
            teams: Vec::new(),
            campaigns: Vec::new(),
            state: SubscriptionState::Active,
            reason: String::new(),
            created_at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn kinds_parse_and_print() {
        let cases = [
            ("grant", Ok("grant")),
            ("deny, grant", Ok("grant,deny")),
            ("grant,deny,expiry", Ok("grant,deny,expiry")),
            ("", Err(())),
            ("grant,revoke", Err(())),
        ];
        for (input, want) in cases {
            let got = EventKinds::parse(input)
                .map(|k| k.to_string())
                .map_err(drop);
            assert_eq!(got, want.map(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn filters_hold() {
        let b1 = "+919000000001";
        let b2 = "+919000000002";
        let all = subscription();
        let grants_of_b1 = Subscription {
            kinds: EventKinds::parse("grant").unwrap(),
            businesses: vec![phone(b1)],
            ..subscription()
        };
        let team_a = Subscription {
            teams: vec!["a".into()],
            ..subscription()
        };
        let none = EventTags::default();
        let a = EventTags {
            team: Some("a"),
            campaign: Some("c"),
        };
        let b = EventTags {
            team: Some("b"),
            campaign: None,
        };
        let cases = [
            (&all, EventKind::Denied, b2, none, true),
            (&grants_of_b1, EventKind::Granted, b1, none, true),
            (&grants_of_b1, EventKind::Denied, b1, none, false),
            (&grants_of_b1, EventKind::Granted, b2, none, false),
            (&team_a, EventKind::Granted, b1, a, true),
            (&team_a, EventKind::Granted, b1, b, false),
            (&team_a, EventKind::Granted, b1, none, false),
        ];
        for (i, (sub, kind, business, tags, want)) in cases.into_iter().enumerate() {
            assert_eq!(sub.wants(&event(kind, business), tags), want, "case {i}");
        }
    }

    #[test]
    fn rotation_keeps_the_old_key_signing_for_the_overlap_only() {
        let t0 = DateTime::UNIX_EPOCH;
        let hour = Duration::from_secs(3600);
        let mut sub = subscription();
        sub.rotate(vec![2; 24], t0, hour);
        let at = |mins: i64| {
            sub.signing_keys(t0 + chrono::Duration::minutes(mins))
                .map(|k| k[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(at(0), vec![2, 1]);
        assert_eq!(at(59), vec![2, 1]);
        assert_eq!(at(60), vec![2]);
        // A second rotation after the overlap drops the retired key.
        sub.rotate(vec![3; 24], t0 + chrono::Duration::minutes(61), hour);
        assert_eq!(sub.keys.len(), 2);
        assert_eq!(sub.keys[0].key[0], 3);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_between_half_and_full() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let cases = [
            (0, 0.999_999, 1.0),
            (0, 0.0, 0.5),
            (3, 0.999_999, 8.0),
            (10, 0.999_999, 60.0),
            (40, 0.0, 30.0),
        ];
        for (attempt, jitter, want) in cases {
            let got = backoff(attempt, min, max, jitter).as_secs_f64();
            assert!((got - want).abs() < 0.001, "{attempt} {jitter}: {got}");
        }
    }
}
