//! What a customer decided, and the evidence that they did.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::attribution::Attribution;
use super::phone::PhoneNumber;

/// A (business, customer) pair: the unit consent is given for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    pub business: PhoneNumber,
    pub customer: PhoneNumber,
}

impl Pair {
    pub fn new(business: PhoneNumber, customer: PhoneNumber) -> Self {
        Pair { business, customer }
    }
}

/// The button the customer pressed, as callgate understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// "Always Allow".
    GrantPermanent,
    /// "Allow for 7 Days": allowed until `expires_at` (exclusive).
    GrantTemporary { expires_at: DateTime<Utc> },
    /// "Don't Allow", or the platform revoking permission.
    Deny,
}

impl Choice {
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Choice::GrantTemporary { expires_at } => Some(*expires_at),
            _ => None,
        }
    }

    /// Short stable name, used in logs and digests.
    pub fn name(&self) -> &'static str {
        match self {
            Choice::GrantPermanent => "grant_permanent",
            Choice::GrantTemporary { .. } => "grant_temporary",
            Choice::Deny => "deny",
        }
    }
}

/// Which ingestion route a decision came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    DoubleTick,
    WhatsApp,
}

impl Source {
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::DoubleTick => "doubletick",
            Source::WhatsApp => "whatsapp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "doubletick" => Some(Source::DoubleTick),
            "whatsapp" => Some(Source::WhatsApp),
            _ => None,
        }
    }
}

/// What the compliance team needs to show where a decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub source: Source,
    pub message_id: String,
    pub paired_message_id: String,
    pub response_source: String,
    pub sender_customer_id: String,
    /// SHA-256 of the raw request body (rendered as hex only at the wire edges).
    pub body_sha256: [u8; 32],
    /// The event time exactly as the sender stated it. [`Decision::decided_at`] equals it unless
    /// the rules clamped a time too far in the future (see [`rules`](super::rules)).
    pub stated_at: DateTime<Utc>,
    /// The expiry the sender stated for a temporary grant, if any, before the rules bounded it.
    pub stated_expires_at: Option<DateTime<Utc>>,
}

/// One customer decision, normalised and validated. Times have millisecond precision, the
/// precision every store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub pair: Pair,
    pub choice: Choice,
    /// When the customer pressed the button (the event's own time, not when it reached us).
    pub decided_at: DateTime<Utc>,
    pub evidence: Evidence,
    /// The registered request this reply answered (issue 13), if one matched its paired
    /// message id. Not part of what the sender said: it never enters the dedup id or the
    /// fingerprint, and it may be added after the decision was recorded (a registration that
    /// landed late).
    pub attribution: Option<Attribution>,
    /// The customer's name when known: Meta's `contacts[].profile.name`, else the matching
    /// registration's.
    pub customer_name: Option<String>,
}

impl Decision {
    /// Identity of the *delivery* for de-duplication: the pair, the sender and the sender's
    /// message id, all as the sender delivered them. Nothing callgate derives (a temporary
    /// grant's default expiry, a clamped time) and no configuration goes into it, so a retry
    /// landing on a replica with other settings is still recognised. Hex of [`dedup_digest`].
    ///
    /// [`dedup_digest`]: Self::dedup_digest
    pub fn dedup_id(&self) -> String {
        hex::encode(self.dedup_digest())
    }

    /// The raw 16 bytes behind [`dedup_id`](Self::dedup_id).
    pub fn dedup_digest(&self) -> [u8; 16] {
        let mut h = Sha256::new();
        for part in [
            self.pair.business.digits(),
            self.pair.customer.digits(),
            self.evidence.source.as_str(),
            self.evidence.message_id.as_str(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }

    /// What the sender *said* in this delivery: the answer (deny, permanent or temporary
    /// grant), the stated event time and the stated expiry. Two deliveries with one
    /// [`dedup_id`](Self::dedup_id) and different fingerprints are a conflict (see
    /// [`rules::redelivery`](super::rules::redelivery)). Only stated values go in: never the
    /// clamped time or a derived expiry. (The body hash is left out: a retried body may differ
    /// in whitespace.)
    pub fn fingerprint(&self) -> [u8; 8] {
        let mut h = Sha256::new();
        h.update(self.choice.name().as_bytes());
        h.update([0u8]);
        h.update(self.evidence.stated_at.timestamp_millis().to_be_bytes());
        h.update(
            self.evidence
                .stated_expires_at
                .map_or(i64::MIN, |t| t.timestamp_millis())
                .to_be_bytes(),
        );
        let digest = h.finalize();
        let mut f = [0u8; 8];
        f.copy_from_slice(&digest[..8]);
        f
    }
}

/// Truncates a time to the millisecond precision callgate stores.
pub fn to_millis_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}
