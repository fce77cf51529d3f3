//! Who asked: consent requests, the attribution of a reply to the request it answers, and the
//! request budget.
//!
//! Consent on WhatsApp belongs to the (business number, customer) pair, never to a team: a
//! denial or an expiry ends a grant for every team. But the premium, retention and acquisition
//! teams each send their own permission requests and each need to know which answers are
//! *theirs*. The only link from a reply back to its request is the id of the template message
//! the customer answered (Meta's `context.id`, DoubleTick's `pairedMessageId`, kept as
//! [`Evidence::paired_message_id`](super::Evidence::paired_message_id)); neither reply names a
//! team or a template. So the team's CRM registers each request it sends
//! ([`ConsentRequest`]), and a reply whose paired message id matches a registration of the same
//! pair is [`Attribution`]-ed to it: team, campaign and labels ride along on the decision, its
//! history entry, its check answer and its events.
//!
//! Senders race: a reply can arrive before its registration. It is recorded unattributed and
//! gains the attribution when the registration lands (the stores do that atomically, see
//! [`LateAttribution`]); nothing is dropped.
//!
//! Meta allows a business a small number of permission requests per customer (1 per 24 h and 2
//! per 7 days, shared by every team on the number). [`budget`] is the rule that decides whether
//! one more request fits, and when the next one will; the stores apply it atomically with the
//! registration, so two teams racing cannot both spend the last request.
//!
//! Plain data and pure functions, like the rest of the domain.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::decision::{Choice, Decision, Pair};

/// Most labels on one registration.
pub const MAX_LABELS: usize = 16;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_BYTES: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Longest team or campaign name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest request message id, in bytes (the same bound as any message id callgate keeps).
pub const MAX_REQUEST_ID_BYTES: usize = 256;
/// Longest customer name, in bytes (Meta's profile name, or a CRM's).
pub const MAX_CUSTOMER_NAME_BYTES: usize = 256;

/// The request a reply answered, as its sender registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The id of the template message that asked for permission (the reply's paired id).
    pub request_message_id: String,
    pub team: String,
    pub campaign: String,
    /// Free labels, a small bounded map ([`MAX_LABELS`]).
    pub labels: BTreeMap<String, String>,
}

/// A registered consent request: a team says "we sent this permission request".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRequest {
    pub pair: Pair,
    pub request_message_id: String,
    pub team: String,
    pub campaign: String,
    pub labels: BTreeMap<String, String>,
    /// When the template message was sent; the request budget counts from it.
    pub sent_at: DateTime<Utc>,
    /// The customer's name as the CRM knows it, if given.
    pub customer_name: Option<String>,
}

/// Why a registration's field is refused. `field` is the proto/JSON field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct RequestFieldError {
    pub field: String,
    pub problem: String,
}

impl RequestFieldError {
    fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        RequestFieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A text field: not blank (if `required`), at most `max` bytes, no control characters.
fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), RequestFieldError> {
    if required && value.trim().is_empty() {
        return Err(RequestFieldError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(RequestFieldError::new(
            field,
            format!("is {} bytes long; at most {max} are accepted", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(RequestFieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

impl ConsentRequest {
    /// Checks every bound of a registration (sizes, label count, no control characters) and
    /// that it was not sent more than `max_skew` after `now`. The error names the field.
    pub fn validate(
        &self,
        now: DateTime<Utc>,
        max_skew: Duration,
    ) -> Result<(), RequestFieldError> {
        text(
            "request_message_id",
            &self.request_message_id,
            MAX_REQUEST_ID_BYTES,
            true,
        )?;
        text("team", &self.team, MAX_NAME_BYTES, true)?;
        text("campaign", &self.campaign, MAX_NAME_BYTES, false)?;
        if self.labels.len() > MAX_LABELS {
            return Err(RequestFieldError::new(
                "labels",
                format!(
                    "has {} entries; at most {MAX_LABELS} are accepted",
                    self.labels.len()
                ),
            ));
        }
        for (k, v) in &self.labels {
            text("labels (key)", k, MAX_LABEL_KEY_BYTES, true)?;
            text(&format!("labels[{k}]"), v, MAX_LABEL_VALUE_BYTES, false)?;
        }
        if let Some(name) = &self.customer_name {
            text("customer_name", name, MAX_CUSTOMER_NAME_BYTES, false)?;
        }
        let skew = chrono::Duration::from_std(max_skew).unwrap_or(chrono::Duration::MAX);
        if self.sent_at
            > now
                .checked_add_signed(skew)
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        {
            return Err(RequestFieldError::new(
                "sent_at",
                "is in the future; a request is registered after it was sent",
            ));
        }
        Ok(())
    }

    /// The attribution a reply to this request carries.
    pub fn attribution(&self) -> Attribution {
        Attribution {
            request_message_id: self.request_message_id.clone(),
            team: self.team.clone(),
            campaign: self.campaign.clone(),
            labels: self.labels.clone(),
        }
    }

    /// True if `decision` is a reply to this request: same pair, its paired message id is
    /// this request's id.
    pub fn answered_by(&self, decision: &Decision) -> bool {
        decision.pair == self.pair
            && !decision.evidence.paired_message_id.is_empty()
            && decision.evidence.paired_message_id == self.request_message_id
    }

    /// Whether a registration under the same id says the same thing (a retry) or something
    /// else (a conflict: never overwritten, so a team cannot take another team's request).
    pub fn same_as(&self, other: &ConsentRequest) -> bool {
        self == other
    }
}

/// Attributes `decision` to `request` if it answers it and is not attributed yet. The
/// customer's name is filled from the registration if the reply carried none (Meta's profile
/// name comes first: it is what the customer calls themselves on WhatsApp). Returns whether
/// anything changed.
pub fn attribute(decision: &mut Decision, request: &ConsentRequest) -> bool {
    if decision.attribution.is_some() || !request.answered_by(decision) {
        return false;
    }
    decision.attribution = Some(request.attribution());
    if decision.customer_name.is_none() {
        decision.customer_name.clone_from(&request.customer_name);
    }
    true
}

/// What a registration landing after its reply does to that reply's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateAttribution {
    /// The reply is the pair's current decision and a live grant or a denial: its history
    /// entry and the current decision gain the attribution, and an event with
    /// `late_attribution` is published (kind `Granted` or `Denied`), so a team's subscriber
    /// adds the customer to (or removes them from) its calling list.
    Announce,
    /// The reply is stale (a newer decision is current) or a temporary grant that already
    /// lapsed: only the record gains the attribution. No event: announcing a grant nobody may
    /// use would put a customer on a calling list by mistake.
    RecordOnly,
}

/// Decides [`LateAttribution`] for a decision found in the pair's history, given whether it is
/// the pair's current decision, at `now`.
pub fn late_attribution(
    decision: &Decision,
    is_current: bool,
    now: DateTime<Utc>,
) -> LateAttribution {
    let live = match decision.choice {
        Choice::Deny | Choice::GrantPermanent => true,
        Choice::GrantTemporary { expires_at } => now < expires_at,
    };
    if is_current && live {
        LateAttribution::Announce
    } else {
        LateAttribution::RecordOnly
    }
}

/// Whether replies that match no registration count for team-filtered views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnattributedPolicy {
    /// An unattributed grant is usable by every team: a team filter lets it through. The
    /// default: consent is the pair's, and a business that does not register requests (or a
    /// reply whose registration never came) still has a customer who said yes.
    #[default]
    AllTeams,
    /// An unattributed grant belongs to no team: only unfiltered views show it.
    NoTeam,
}

impl UnattributedPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all_teams" => Some(UnattributedPolicy::AllTeams),
            "no_team" => Some(UnattributedPolicy::NoTeam),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            UnattributedPolicy::AllTeams => "all_teams",
            UnattributedPolicy::NoTeam => "no_team",
        }
    }
}

/// A team/campaign/label filter (StreamGrants' `teams`, `campaigns`, `labels`; ListCallable's
/// team and campaign). Every non-empty part must match: the team is one of `teams`, the
/// campaign one of `campaigns`, and every label of `labels` is present with that value. An
/// empty filter matches everything. An unattributed decision matches a non-empty filter only
/// under [`UnattributedPolicy::AllTeams`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttributionFilter {
    pub teams: Vec<String>,
    pub campaigns: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl AttributionFilter {
    pub fn is_empty(&self) -> bool {
        self.teams.is_empty() && self.campaigns.is_empty() && self.labels.is_empty()
    }

    pub fn matches(&self, attribution: Option<&Attribution>, policy: UnattributedPolicy) -> bool {
        if self.is_empty() {
            return true;
        }
        let Some(a) = attribution else {
            return policy == UnattributedPolicy::AllTeams;
        };
        (self.teams.is_empty() || self.teams.contains(&a.team))
            && (self.campaigns.is_empty() || self.campaigns.contains(&a.campaign))
            && self
                .labels
                .iter()
                .all(|(k, v)| a.labels.get(k).is_some_and(|have| have == v))
    }
}

/// One limit of the request budget: at most `max` requests in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimit {
    pub max: u32,
    pub window: Duration,
}

/// Meta's limits today: 1 request per 24 h and 2 per 7 days per (business, customer).
pub const DEFAULT_REQUEST_LIMITS: [RequestLimit; 2] = [
    RequestLimit {
        max: 1,
        window: Duration::from_secs(24 * 3600),
    },
    RequestLimit {
        max: 2,
        window: Duration::from_secs(7 * 24 * 3600),
    },
];

/// How much of one limit is used at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitUse {
    pub limit: RequestLimit,
    /// Registrations sent in the window that ends at the instant: `(at - window, at]`.
    pub used: u32,
}

/// The budget's answer for one more request at an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub allowed: bool,
    /// The earliest instant at or after the asked one when a request fits (equal to it when
    /// `allowed`).
    pub next_allowed_at: DateTime<Utc>,
    pub uses: Vec<LimitUse>,
}

fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Whether one more request sent at `at` fits with the requests sent at `sent` (any order):
/// for every limit, no window of its length that holds `at` would hold more than `max`
/// requests. Windows slide: a request sent at `e` shares a window with `at` when
/// `|at - e| < window`, whichever came first, so a request registered late (senders race)
/// is still counted against one sent just before it. The twin of `budget_fits` in
/// `store/redis/requests.lua`.
pub fn fits(sent: &[DateTime<Utc>], at: DateTime<Utc>, limits: &[RequestLimit]) -> bool {
    limits.iter().all(|limit| {
        let w = chrono_of(limit.window);
        let mut near: Vec<DateTime<Utc>> = sent
            .iter()
            .copied()
            .filter(|e| (*e - at).abs() < w)
            .collect();
        near.sort_unstable();
        // The fullest window holding `at` starts at `at` or at a request before it.
        let starts = near.iter().copied().filter(|e| *e <= at).chain([at]);
        starts.into_iter().all(|s| {
            let end = s.checked_add_signed(w).unwrap_or(DateTime::<Utc>::MAX_UTC);
            let inside = near.iter().filter(|e| **e >= s && **e < end).count();
            (inside as u64) < u64::from(limit.max)
        })
    })
}

/// The budget at `at`: whether a request fits now, when the next one will, and how much of
/// each limit is used. The next instant is `at` or the end of some request's window (only
/// there does a request stop counting), so the candidates are tried in order.
pub fn budget(sent: &[DateTime<Utc>], at: DateTime<Utc>, limits: &[RequestLimit]) -> Budget {
    let uses = limits
        .iter()
        .map(|limit| {
            let w = chrono_of(limit.window);
            let used = sent.iter().filter(|e| **e <= at && at - **e < w).count();
            LimitUse {
                limit: *limit,
                used: u32::try_from(used).unwrap_or(u32::MAX),
            }
        })
        .collect();
    let mut candidates: Vec<DateTime<Utc>> = limits
        .iter()
        .flat_map(|l| {
            let w = chrono_of(l.window);
            sent.iter()
                .filter_map(move |e| e.checked_add_signed(w))
                .filter(|t| *t > at)
        })
        .collect();
    candidates.sort_unstable();
    let next = std::iter::once(at)
        .chain(candidates)
        .find(|t| fits(sent, *t, limits))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    Budget {
        allowed: next == at,
        next_allowed_at: next,
        uses,
    }
}

/// Requests are kept at least this long after they were sent: long enough to count in every
/// budget window, and to attribute a reply to them. WhatsApp lets a customer answer a
/// permission request for as long as the template message is in the chat, so no retention
/// covers every late reply; a reply to an older request is recorded unattributed (consent is
/// still the pair's). See `CALLGATE_REQUEST_RETENTION_SECS`.
pub fn retention(limits: &[RequestLimit], configured: Duration) -> Duration {
    limits
        .iter()
        .map(|l| l.window)
        .chain([configured])
        .max()
        .unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Evidence, PhoneNumber, Source};

    const H: i64 = 3600;
    const D: i64 = 24 * H;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_000_000 + secs, 0).unwrap()
    }

    fn pair() -> Pair {
        Pair::new(
            PhoneNumber::parse("+919000000000").unwrap(),
            PhoneNumber::parse("+919876543210").unwrap(),
        )
    }

    fn request(id: &str, team: &str) -> ConsentRequest {
        ConsentRequest {
            pair: pair(),
            request_message_id: id.into(),
            team: team.into(),
            campaign: "winback".into(),
            labels: BTreeMap::from([("tier".into(), "gold".into())]),
            sent_at: at(0),
            customer_name: Some("Asha".into()),
        }
    }

    fn reply(paired: &str, name: Option<&str>) -> Decision {
        Decision {
            pair: pair(),
            choice: Choice::GrantPermanent,
            decided_at: at(10),
            evidence: Evidence {
                source: Source::WhatsApp,
                message_id: "m".into(),
                paired_message_id: paired.into(),
                response_source: String::new(),
                sender_customer_id: String::new(),
                body_sha256: [0; 32],
                stated_at: at(10),
                stated_expires_at: None,
            },
            attribution: None,
            customer_name: name.map(Into::into),
        }
    }

    #[test]
    fn budget_table() {
        let limits = DEFAULT_REQUEST_LIMITS;
        // (name, sent, at, allowed, next)
        let cases: Vec<(&str, Vec<i64>, i64, bool, i64)> = vec![
            ("nothing sent", vec![], 0, true, 0),
            ("a second within 24 h", vec![0], 3 * H, false, D),
            ("a second after 24 h", vec![0], D, true, D),
            ("just before 24 h", vec![0], D - 1, false, D),
            ("a third within 7 days", vec![0, 2 * D], 3 * D, false, 7 * D),
            ("a third after 7 days", vec![0, 2 * D], 7 * D, true, 7 * D),
            (
                "a request sent later but registered first still counts",
                vec![H],
                0,
                false,
                D + H,
            ),
            (
                "old requests do not count",
                vec![-30 * D, -20 * D],
                0,
                true,
                0,
            ),
        ];
        for (name, sent, now, allowed, next) in cases {
            let sent: Vec<_> = sent.into_iter().map(at).collect();
            let b = budget(&sent, at(now), &limits);
            assert_eq!(b.allowed, allowed, "{name}");
            assert_eq!(b.next_allowed_at, at(next), "{name}");
            assert_eq!(fits(&sent, at(now), &limits), allowed, "{name}");
        }
    }

    #[test]
    fn budget_counts_the_trailing_windows() {
        let sent = [at(0), at(2 * D)];
        let b = budget(&sent, at(2 * D + H), &DEFAULT_REQUEST_LIMITS);
        assert_eq!(b.uses[0].used, 1);
        assert_eq!(b.uses[1].used, 2);
    }

    #[test]
    fn a_higher_limit_lets_several_through() {
        let limits = [RequestLimit {
            max: 3,
            window: Duration::from_secs(D as u64),
        }];
        let sent = [at(0), at(H)];
        assert!(fits(&sent, at(2 * H), &limits));
        let sent = [at(0), at(H), at(2 * H)];
        let b = budget(&sent, at(3 * H), &limits);
        assert!(!b.allowed);
        assert_eq!(b.next_allowed_at, at(D));
    }

    #[test]
    fn attribution_needs_the_same_pair_and_paired_id() {
        let r = request("wamid.req", "premium");
        let mut d = reply("wamid.req", None);
        assert!(attribute(&mut d, &r));
        assert_eq!(d.attribution.as_ref().unwrap().team, "premium");
        assert_eq!(d.customer_name.as_deref(), Some("Asha"));
        // Already attributed: not again.
        assert!(!attribute(&mut d, &request("wamid.req", "retention")));
        let mut meta = reply("wamid.req", Some("Sheena"));
        assert!(attribute(&mut meta, &r));
        assert_eq!(meta.customer_name.as_deref(), Some("Sheena"));
        assert!(!attribute(&mut reply("wamid.other", None), &r));
        assert!(!attribute(&mut reply("", None), &request("", "x")));
    }

    #[test]
    fn filter_table() {
        let a = request("r", "premium").attribution();
        let f = |teams: &[&str], campaigns: &[&str], labels: &[(&str, &str)]| AttributionFilter {
            teams: teams.iter().map(|s| s.to_string()).collect(),
            campaigns: campaigns.iter().map(|s| s.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        use UnattributedPolicy::*;
        let cases = [
            ("empty", f(&[], &[], &[]), Some(&a), NoTeam, true),
            ("empty, unattributed", f(&[], &[], &[]), None, NoTeam, true),
            ("team", f(&["premium"], &[], &[]), Some(&a), NoTeam, true),
            (
                "other team",
                f(&["retention"], &[], &[]),
                Some(&a),
                AllTeams,
                false,
            ),
            (
                "one of teams",
                f(&["retention", "premium"], &[], &[]),
                Some(&a),
                NoTeam,
                true,
            ),
            (
                "team and campaign",
                f(&["premium"], &["winback"], &[]),
                Some(&a),
                NoTeam,
                true,
            ),
            (
                "team, wrong campaign",
                f(&["premium"], &["x"], &[]),
                Some(&a),
                NoTeam,
                false,
            ),
            (
                "label",
                f(&[], &[], &[("tier", "gold")]),
                Some(&a),
                NoTeam,
                true,
            ),
            (
                "label value differs",
                f(&[], &[], &[("tier", "silver")]),
                Some(&a),
                NoTeam,
                false,
            ),
            (
                "label absent",
                f(&[], &[], &[("region", "n")]),
                Some(&a),
                NoTeam,
                false,
            ),
            (
                "unattributed, all teams",
                f(&["premium"], &[], &[]),
                None,
                AllTeams,
                true,
            ),
            (
                "unattributed, no team",
                f(&["premium"], &[], &[]),
                None,
                NoTeam,
                false,
            ),
        ];
        for (name, filter, attribution, policy, want) in cases {
            assert_eq!(filter.matches(attribution, policy), want, "{name}");
        }
    }

    #[test]
    fn late_attribution_table() {
        let mut temp = reply("r", None);
        temp.choice = Choice::GrantTemporary {
            expires_at: at(100),
        };
        let deny = Decision {
            choice: Choice::Deny,
            ..reply("r", None)
        };
        use LateAttribution::*;
        let cases = [
            (
                "current permanent grant",
                reply("r", None),
                true,
                0,
                Announce,
            ),
            ("current denial", deny.clone(), true, 0, Announce),
            (
                "current live temporary grant",
                temp.clone(),
                true,
                99,
                Announce,
            ),
            (
                "current lapsed temporary grant",
                temp.clone(),
                true,
                100,
                RecordOnly,
            ),
            ("stale grant", reply("r", None), false, 0, RecordOnly),
            ("stale denial", deny, false, 0, RecordOnly),
        ];
        for (name, d, current, now, want) in cases {
            assert_eq!(late_attribution(&d, current, at(now)), want, "{name}");
        }
    }

    #[test]
    fn registrations_are_bounded_and_errors_name_the_field() {
        let skew = Duration::from_secs(120);
        assert_eq!(request("r", "t").validate(at(0), skew), Ok(()));
        let bad = |f: &dyn Fn(&mut ConsentRequest)| {
            let mut r = request("r", "t");
            f(&mut r);
            r.validate(at(0), skew).unwrap_err().field
        };
        assert_eq!(bad(&|r| r.team = " ".into()), "team");
        assert_eq!(
            bad(&|r| r.request_message_id = String::new()),
            "request_message_id"
        );
        assert_eq!(bad(&|r| r.campaign = "c".repeat(129)), "campaign");
        assert_eq!(
            bad(&|r| r.labels = (0..17).map(|i| (i.to_string(), String::new())).collect()),
            "labels"
        );
        assert_eq!(
            bad(&|r| {
                r.labels.insert("k".into(), "v".repeat(257));
            }),
            "labels[k]"
        );
        assert_eq!(
            bad(&|r| r.customer_name = Some("a\nb".into())),
            "customer_name"
        );
        assert_eq!(bad(&|r| r.sent_at = at(121)), "sent_at");
        assert_eq!(request("r", "t").validate(at(0), skew).map(|_| ()), Ok(()));
    }
}
