//! Domain values → protobuf messages (and protobuf timestamps → times): every mapping
//! between the two lives here; the handlers only assemble these pieces into responses.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::calling_list::ListPage;
use crate::consent_requests::Registered;
use crate::domain::{
    Budget, ChainLink, Choice, ConsentState, Decision, EventKind, Evidence, HistoryEntry,
    HistoryOutcome, Pair, Verdict,
};
use crate::pb;
use crate::store::{Cursor, LoggedEvent, RecordedDecision};

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn from_timestamp(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?)
}

fn evidence(e: &Evidence) -> pb::Evidence {
    pb::Evidence {
        message_id: e.message_id.clone(),
        paired_message_id: e.paired_message_id.clone(),
        source: e.source.as_str().to_owned(),
        response_source: e.response_source.clone(),
        sender_customer_id: e.sender_customer_id.clone(),
        body_sha256: hex::encode(e.body_sha256),
        stated_decided_at: Some(timestamp(e.stated_at)),
        stated_expires_at: e.stated_expires_at.map(timestamp),
    }
}

/// The proto name of a state (`CONSENT_STATE_GRANTED_PERMANENT`), as the HTTP port's JSON and
/// CSV spell it.
pub fn state_name(s: ConsentState) -> &'static str {
    state(s).as_str_name()
}

fn state(s: ConsentState) -> pb::ConsentState {
    match s {
        ConsentState::NoConsent => pb::ConsentState::NoConsent,
        ConsentState::GrantedPermanent => pb::ConsentState::GrantedPermanent,
        ConsentState::GrantedTemporary => pb::ConsentState::GrantedTemporary,
        ConsentState::Denied => pb::ConsentState::Denied,
        ConsentState::Expired => pb::ConsentState::Expired,
    }
}

/// The answer to a check. Takes the verdict by value: when this answer holds the only
/// reference to the decision (a store read that was not cached), the evidence strings move
/// into the response instead of being copied. Issue 16: the evidence only when asked for
/// (`include_evidence`); the hot path then encodes none of it.
pub fn check_response(
    pair: &Pair,
    verdict: Verdict<Arc<Decision>>,
    include_evidence: bool,
) -> pb::CheckCallPermissionResponse {
    let allowed = verdict.allowed();
    let state = state(verdict.state) as i32;
    let Some(d) = verdict.decision else {
        return pb::CheckCallPermissionResponse {
            allowed,
            state,
            business_number: pair.business.to_string(),
            customer_number: pair.customer.to_string(),
            ..Default::default()
        };
    };
    let a = attribution_fields(&d);
    pb::CheckCallPermissionResponse {
        allowed,
        state,
        expires_at: d.choice.expires_at().map(timestamp),
        decided_at: Some(timestamp(d.decided_at)),
        business_number: pair.business.to_string(),
        customer_number: pair.customer.to_string(),
        evidence: include_evidence.then(|| match Arc::try_unwrap(d) {
            Ok(d) => owned_evidence(d.evidence),
            Err(shared) => evidence(&shared.evidence),
        }),
        team: a.team,
        campaign: a.campaign,
        labels: a.labels,
        customer_name: a.customer_name,
    }
}

/// issue 13: a decision's attribution and customer name as the proto's plain fields (empty
/// when unattributed or unknown).
#[derive(Default)]
struct AttributionFields {
    team: String,
    campaign: String,
    labels: std::collections::HashMap<String, String>,
    customer_name: String,
}

fn attribution_fields(d: &Decision) -> AttributionFields {
    let mut out = AttributionFields {
        customer_name: d.customer_name.clone().unwrap_or_default(),
        ..Default::default()
    };
    if let Some(a) = &d.attribution {
        out.team.clone_from(&a.team);
        out.campaign.clone_from(&a.campaign);
        out.labels = a
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    out
}

fn owned_evidence(e: Evidence) -> pb::Evidence {
    pb::Evidence {
        message_id: e.message_id,
        paired_message_id: e.paired_message_id,
        source: e.source.as_str().to_owned(),
        response_source: e.response_source,
        sender_customer_id: e.sender_customer_id,
        body_sha256: hex::encode(e.body_sha256),
        stated_decided_at: Some(timestamp(e.stated_at)),
        stated_expires_at: e.stated_expires_at.map(timestamp),
    }
}

fn decision_kind(c: &Choice) -> pb::DecisionKind {
    match c {
        Choice::GrantPermanent => pb::DecisionKind::GrantPermanent,
        Choice::GrantTemporary { .. } => pb::DecisionKind::GrantTemporary,
        Choice::Deny => pb::DecisionKind::Deny,
    }
}

pub fn history_entry(h: &HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        kind: decision_kind(&h.decision.choice) as i32,
        outcome: match h.outcome {
            HistoryOutcome::Applied => pb::HistoryOutcome::Applied,
            HistoryOutcome::Stale => pb::HistoryOutcome::Stale,
        } as i32,
        decided_at: Some(timestamp(h.decision.decided_at)),
        expires_at: h.decision.choice.expires_at().map(timestamp),
        received_at: Some(timestamp(h.received_at)),
        evidence: Some(evidence(&h.decision.evidence)),
        ..attribution_of_entry(&h.decision)
    }
}

fn attribution_of_entry(d: &Decision) -> pb::HistoryEntry {
    let a = attribution_fields(d);
    pb::HistoryEntry {
        team: a.team,
        campaign: a.campaign,
        labels: a.labels,
        customer_name: a.customer_name,
        ..Default::default()
    }
}

/// Issue 14: a history entry with its place in the pair's chain (`link` `None`: pre-chain, at
/// `position`).
pub fn chained_history_entry(
    h: &HistoryEntry,
    link: Option<&ChainLink>,
    position: u64,
) -> pb::HistoryEntry {
    let mut entry = history_entry(h);
    entry.position = link.map_or(position, |l| l.position);
    if let Some(link) = link {
        entry.prev_hash = hex::encode(link.prev);
        entry.entry_hash = hex::encode(link.hash);
    }
    entry
}

/// Issue 14: one message of `ExportDecisions`.
pub fn exported_decision(r: &RecordedDecision) -> pb::ExportedDecision {
    let record = match (&r.entry, &r.link) {
        (None, _) => crate::export::RECORD_GONE,
        (Some(_), None) => crate::export::RECORD_PRE_CHAIN,
        (Some(_), Some(_)) => crate::export::RECORD_CHAINED,
    };
    pb::ExportedDecision {
        business_number: r.pair.business.to_string(),
        customer_number: r.pair.customer.to_string(),
        entry: r
            .entry
            .as_ref()
            .map(|e| chained_history_entry(e, r.link.as_ref(), r.position)),
        position: r.position,
        record: record.to_owned(),
    }
}

pub fn event(e: &LoggedEvent, cursor: &Cursor) -> pb::ConsentEvent {
    let d: &Decision = &e.event.decision;
    pb::ConsentEvent {
        cursor: cursor.to_string(),
        kind: match e.event.kind {
            EventKind::Granted => pb::EventKind::Granted,
            EventKind::Denied => pb::EventKind::Denied,
            EventKind::Expired => pb::EventKind::Expired,
        } as i32,
        business_number: d.pair.business.to_string(),
        customer_number: d.pair.customer.to_string(),
        permanent: matches!(d.choice, Choice::GrantPermanent),
        expires_at: d.choice.expires_at().map(timestamp),
        decided_at: Some(timestamp(d.decided_at)),
        evidence: Some(evidence(&d.evidence)),
        late_attribution: e.event.late_attribution,
        ..attribution_of_event(d)
    }
}

fn attribution_of_event(d: &Decision) -> pb::ConsentEvent {
    let a = attribution_fields(d);
    pb::ConsentEvent {
        team: a.team,
        campaign: a.campaign,
        labels: a.labels,
        customer_name: a.customer_name,
        ..Default::default()
    }
}

pub fn checkpoint(cursor: &Cursor) -> pb::ConsentEvent {
    pb::ConsentEvent {
        cursor: cursor.to_string(),
        kind: pb::EventKind::Checkpoint as i32,
        ..Default::default()
    }
}

// ---- issue 13 (attribution) ----

/// The request budget as the proto's answer (the pair's numbers when given).
pub fn budget(pair: Option<&Pair>, b: &Budget) -> pb::CanRequestConsentResponse {
    pb::CanRequestConsentResponse {
        allowed: b.allowed,
        next_allowed_at: Some(timestamp(b.next_allowed_at)),
        limits: b
            .uses
            .iter()
            .map(|u| pb::RequestLimitUse {
                max: u.limit.max,
                window_seconds: u.limit.window.as_secs(),
                used: u.used,
            })
            .collect(),
        business_number: pair.map(|p| p.business.to_string()).unwrap_or_default(),
        customer_number: pair.map(|p| p.customer.to_string()).unwrap_or_default(),
    }
}

pub fn registered(pair: &Pair, r: &Registered) -> pb::RegisterConsentRequestResponse {
    pb::RegisterConsentRequestResponse {
        business_number: pair.business.to_string(),
        customer_number: pair.customer.to_string(),
        registered: r.new,
        attributed_replies: u32::try_from(r.attributed).unwrap_or(u32::MAX),
        budget: Some(budget(Some(pair), &r.budget)),
    }
}

/// Issue 13: one entry of a calling list (a live grant and its state).
pub fn callable_entry(d: &Decision, s: ConsentState) -> pb::CallableEntry {
    pb::CallableEntry {
        customer_number: d.pair.customer.to_string(),
        state: state(s) as i32,
        expires_at: d.choice.expires_at().map(timestamp),
        decided_at: Some(timestamp(d.decided_at)),
        team: d
            .attribution
            .as_ref()
            .map(|a| a.team.clone())
            .unwrap_or_default(),
        campaign: d
            .attribution
            .as_ref()
            .map(|a| a.campaign.clone())
            .unwrap_or_default(),
        labels: d
            .attribution
            .as_ref()
            .map(|a| a.labels.clone().into_iter().collect())
            .unwrap_or_default(),
        customer_name: d.customer_name.clone().unwrap_or_default(),
    }
}

/// Issue 13: a page of a calling list.
pub fn callable_page(page: &ListPage) -> pb::ListCallableResponse {
    pb::ListCallableResponse {
        business_number: page.business.to_string(),
        entries: page
            .entries
            .iter()
            .map(|(d, s)| callable_entry(d, *s))
            .collect(),
        next_page_token: page.next_page_token().unwrap_or_default(),
        snapshot_cursor: page.snapshot_cursor.to_string(),
    }
}
