//! The JSON body of a delivery and the event's stable id. Only this file knows the body's
//! shape (documented in the README, "Outbound webhooks").
//!
//! The body follows the Standard Webhooks envelope: `{"type", "timestamp", "data"}`, where
//! `data` is the consent event.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::domain::{Choice, EventKind, EventTags};
use crate::store::LoggedEvent;

/// The event's id, the same for every attempt, every replica and every subscription:
/// derived from its position in the event log (`evt_<shard>_<ms>_<seq>`). It is the
/// `webhook-id` header, so receivers de-duplicate on it.
pub fn event_id(event: &LoggedEvent) -> String {
    format!("evt_{}_{}_{}", event.shard, event.id.ms, event.id.seq)
}

/// What the event is attributed to (issue 13), for the subscription filters. An unattributed
/// event has no team and no campaign, so a subscription filtered by team or campaign does not
/// receive it.
pub fn tags(event: &LoggedEvent) -> EventTags<'_> {
    let attribution = event.event.decision.attribution.as_ref();
    EventTags {
        team: attribution.map(|a| a.team.as_str()),
        campaign: attribution
            .map(|a| a.campaign.as_str())
            .filter(|c| !c.is_empty()),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The body of the delivery of `event`, sent at `now`.
pub fn body(event: &LoggedEvent, now: DateTime<Utc>) -> Vec<u8> {
    let d = &event.event.decision;
    let e = &d.evidence;
    let (kind, type_) = match event.event.kind {
        EventKind::Granted => ("granted", "consent.granted"),
        EventKind::Denied => ("denied", "consent.denied"),
        EventKind::Expired => ("expired", "consent.expired"),
    };
    serde_json::json!({
        "type": type_,
        "timestamp": time(now),
        "data": {
            "event_id": event_id(event),
            "kind": kind,
            "business": d.pair.business.to_string(),
            "customer": d.pair.customer.to_string(),
            "permanent": matches!(d.choice, Choice::GrantPermanent),
            "expires_at": d.choice.expires_at().map(time),
            "decided_at": time(d.decided_at),
            "evidence": {
                "source": e.source.as_str(),
                "message_id": e.message_id,
                "paired_message_id": e.paired_message_id,
                "response_source": e.response_source,
                "sender_customer_id": e.sender_customer_id,
                "body_sha256": hex::encode(e.body_sha256),
                "stated_decided_at": time(e.stated_at),
                "stated_expires_at": e.stated_expires_at.map(time),
            },
            "attribution": d.attribution.as_ref().map(|a| serde_json::json!({
                "team": a.team,
                "campaign": a.campaign,
                "labels": a.labels,
                "request_message_id": a.request_message_id,
            })),
            "customer_name": d.customer_name,
            "late_attribution": event.event.late_attribution,
        }
    })
    .to_string()
    .into_bytes()
}
