//! The benchmark population: pair `i` of a population of `n` is a deterministic function of `i`,
//! so `preload` and `check` agree on which pairs exist and what each one's answer must be,
//! without sharing any state but the population size.
//!
//! - business: `+9190000000NN`, `NN = i % 100` (100 businesses);
//! - customer: `+9198` followed by `i` in 8 digits (up to 100,000,000 pairs);
//! - kind: a hash of `i` picks one of 50% permanent grant, 20% temporary grant, 20% denial,
//!   10% never answered ([`Kind::Unknown`]: not posted, so `NO_CONSENT`).
//!
//! Ingest and propagation traffic uses customers outside the population (`+9197…`, `+9196…`),
//! so it never changes an answer `check` verifies.

use callgate::pb::ConsentState;

/// Number of distinct business numbers in the population.
pub const BUSINESSES: u64 = 100;
/// Largest population the 8-digit customer numbering can hold.
pub const MAX_POPULATION: u64 = 100_000_000;
/// Default population size.
pub const DEFAULT_POPULATION: u64 = 100_000;
/// The business the propagation scenario posts for and subscribes to (outside the population).
pub const PROPAGATION_BUSINESS: &str = "+919100000000";
/// The business the staleness scenario posts and checks for (outside the population).
pub const STALENESS_BUSINESS: &str = "+919100000001";

/// What the customer of a pair answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Permanent,
    Temporary,
    Denied,
    Unknown,
}

impl Kind {
    /// The state `CheckCallPermission` must answer for a pair of this kind after `preload`.
    pub fn expected_state(self) -> ConsentState {
        match self {
            Kind::Permanent => ConsentState::GrantedPermanent,
            Kind::Temporary => ConsentState::GrantedTemporary,
            Kind::Denied => ConsentState::Denied,
            Kind::Unknown => ConsentState::NoConsent,
        }
    }
}

/// splitmix64: a cheap, well-mixed bijection on `u64`, used both to pick kinds and as the
/// workers' random number generator.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A tiny deterministic random number generator (splitmix64), one per worker.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (a worker number) of run `seed`: distinct streams for distinct
    /// workers, the same streams for the same seed.
    pub fn new(seed: u64, stream: u64) -> Self {
        Rng(mix(seed ^ mix(stream)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A pair index in `0..n` (the modulo bias is negligible for populations far below 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Business number of pair `i`.
pub fn business(i: u64) -> String {
    format!("+9190000000{:02}", i % BUSINESSES)
}

/// Customer number of pair `i` of the population.
pub fn customer(i: u64) -> String {
    format!("+9198{:08}", i % MAX_POPULATION)
}

/// Customer number of the `n`th ingest webhook (outside the population).
pub fn ingest_customer(n: u64) -> String {
    format!("+9197{:08}", n % MAX_POPULATION)
}

/// Customer number of the `n`th propagation webhook (outside the population).
pub fn propagation_customer(n: u64) -> String {
    format!("+9196{:08}", n % MAX_POPULATION)
}

/// Customer number of the `n`th staleness probe (outside the population).
pub fn staleness_customer(n: u64) -> String {
    format!("+9195{:08}", n % MAX_POPULATION)
}

/// Kind of pair `i`: 50% permanent, 20% temporary, 20% denied, 10% unknown.
pub fn kind(i: u64) -> Kind {
    match mix(i) % 100 {
        0..50 => Kind::Permanent,
        50..70 => Kind::Temporary,
        70..90 => Kind::Denied,
        _ => Kind::Unknown,
    }
}

/// A DoubleTick webhook body for one decision.
///
/// Grants are temporary unless `kind` is [`Kind::Permanent`]; temporary grants carry an explicit
/// expiry 6 days after `now`, inside the default 7-day window, so they stay `GRANTED_TEMPORARY`
/// for the whole benchmark (callgate bounds a stated expiry by its configured window, so the
/// target must run with the default window or longer). `kind` must not be [`Kind::Unknown`].
pub fn webhook_body(
    business: &str,
    customer: &str,
    message_id: &str,
    kind: Kind,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut v = serde_json::json!({
        "from": customer,
        "to": business,
        "receivedAt": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "messageId": message_id,
        "pairedMessageId": format!("tpl-{message_id}"),
        "response": if kind == Kind::Denied { "reject" } else { "accept" },
        "responseSource": "user_initiated",
        "dtCustomerId": "callgate-bench",
    });
    match kind {
        Kind::Permanent => v["isPermanent"] = true.into(),
        Kind::Temporary => {
            v["isPermanent"] = false.into();
            v["expirationTimestamp"] = (now.timestamp() + 6 * 24 * 3600).into();
        }
        Kind::Denied | Kind::Unknown => {}
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use callgate::domain::PhoneNumber;
    use callgate::ingest::{IngestContext, doubletick};
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn numbers_are_valid_normalised_and_distinct() {
        let mut seen = HashSet::new();
        for i in (0..10_000).chain([MAX_POPULATION - 1]) {
            let (b, c) = (business(i), customer(i));
            assert_eq!(PhoneNumber::parse(&b).unwrap().to_string(), b);
            assert_eq!(PhoneNumber::parse(&c).unwrap().to_string(), c);
            assert!(seen.insert(c), "customer of {i} repeats");
        }
        assert_eq!(business(0), "+919000000000");
        assert_eq!(business(123), "+919000000023");
        assert_eq!(customer(123), "+919800000123");
        assert_eq!(ingest_customer(7), "+919700000007");
        assert_eq!(propagation_customer(7), "+919600000007");
        assert!(PhoneNumber::parse(PROPAGATION_BUSINESS).is_ok());
    }

    #[test]
    fn populations_never_overlap() {
        let population: HashSet<_> = (0..1000).map(customer).collect();
        assert!(
            (0..1000)
                .map(ingest_customer)
                .all(|c| !population.contains(&c))
        );
        assert!(
            (0..1000)
                .map(propagation_customer)
                .all(|c| !population.contains(&c))
        );
        assert!(
            (0..BUSINESSES)
                .map(business)
                .all(|b| b != PROPAGATION_BUSINESS)
        );
    }

    #[test]
    fn kinds_are_deterministic_and_follow_the_mix() {
        let n = 100_000;
        let mut counts = [0u32; 4];
        for i in 0..n {
            assert_eq!(kind(i), kind(i));
            counts[kind(i) as usize] += 1;
        }
        let share = |c: u32| f64::from(c) / n as f64;
        for (got, want) in counts.iter().zip([0.5, 0.2, 0.2, 0.1]) {
            assert!((share(*got) - want).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn the_generator_is_seeded_and_spreads_over_the_population() {
        let draw = |seed, stream| {
            let mut r = Rng::new(seed, stream);
            (0..1000).map(|_| r.below(100)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, 0), draw(1, 0));
        assert_ne!(draw(1, 0), draw(1, 1));
        assert_ne!(draw(1, 0), draw(2, 0));
        let mut hits = [0u32; 100];
        for v in draw(7, 3).into_iter().chain(draw(7, 4)) {
            hits[v as usize] += 1;
        }
        assert!(hits.iter().all(|&h| (5..=50).contains(&h)), "{hits:?}");
    }

    #[test]
    fn bodies_parse_to_the_intended_decision() {
        use callgate::domain::Choice;
        let ctx = IngestContext {
            dates: callgate::domain::DateRules {
                temporary_window: Duration::from_secs(7 * 24 * 3600),
                max_clock_skew: Duration::from_secs(120),
            },
        };
        let now = chrono::Utc::now();
        for k in [Kind::Permanent, Kind::Temporary, Kind::Denied] {
            let body = webhook_body(&business(5), &customer(5), "m-5", k, now);
            let d = doubletick::parse(body.as_bytes(), &ctx, now).unwrap();
            assert_eq!(d.pair.business.to_string(), business(5));
            assert_eq!(d.pair.customer.to_string(), customer(5));
            assert_eq!(d.evidence.message_id, "m-5");
            match (k, d.choice) {
                (Kind::Permanent, Choice::GrantPermanent) | (Kind::Denied, Choice::Deny) => {}
                (Kind::Temporary, Choice::GrantTemporary { expires_at }) => {
                    assert!(expires_at > now + chrono::Duration::days(5));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
