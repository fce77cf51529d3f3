//! Things that happened to a pair's consent: events for subscribers, entries for the history.

use chrono::{DateTime, Utc};

use super::decision::{Choice, Decision};

/// What a [`ConsentEvent`] announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Granted,
    Denied,
    /// A temporary grant reached its expiry while still current.
    Expired,
}

/// A change to a pair's consent, as published to StreamGrants subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentEvent {
    pub kind: EventKind,
    /// The decision the event is about (for `Expired`, the grant that lapsed).
    pub decision: Decision,
    /// True on the event published when a registration attributed a decision recorded before
    /// it (issue 13, see [`LateAttribution`](super::attribution::LateAttribution)): the
    /// consent did not change, its attribution did.
    pub late_attribution: bool,
}

impl ConsentEvent {
    /// The event a newly applied decision publishes (always one; an `Option` for the
    /// stores' sake).
    ///
    /// A temporary grant that had already lapsed when it arrived publishes no `Granted` (nobody
    /// should add that customer to a calling list) but its `Expired`, at once (issue 16: the
    /// pair's current decision changed, and every replica's check cache learns of changes from
    /// the log only). The stores then keep it out of the due index, so the sweep does not
    /// announce it a second time.
    pub fn for_applied(decision: &Decision, received_at: DateTime<Utc>) -> Option<Self> {
        let kind = match decision.choice {
            Choice::Deny => EventKind::Denied,
            Choice::GrantTemporary { expires_at } if expires_at <= received_at => {
                EventKind::Expired
            }
            Choice::GrantPermanent | Choice::GrantTemporary { .. } => EventKind::Granted,
        };
        Some(ConsentEvent {
            kind,
            decision: decision.clone(),
            late_attribution: false,
        })
    }
}

/// What happened to a decision when it was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryOutcome {
    /// It became the current decision.
    Applied,
    /// A newer decision was already current; kept as evidence only.
    Stale,
}

/// One line of a pair's history: every decision ever received, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub decision: Decision,
    pub outcome: HistoryOutcome,
    pub received_at: DateTime<Utc>,
}
