//! Issue 14: a business's decisions in a time range, read in pages (exports, the console).
//!
//! Both stores keep a **per-business index** of history entries, in two orders: by the time
//! callgate received each decision ([`TimeField::Received`]) and by the decision's own event
//! time ([`TimeField::Event`]). An index entry names a pair and a position in that pair's
//! history; listing reads the index in order and the entries it names.
//!
//! The order is total and the same on every store: time (ms), then the customer's digits, then
//! the position in the pair's history; [`index_key`] spells it as bytes that sort in that order.
//! A page ends at an opaque [`RecordsPosition`] (the key of its last item), and the next page
//! starts strictly after it, so a caller holds one page at a time and may resume later: entries
//! recorded meanwhile appear if they sort after the position.
//!
//! Range edges: `from` is **inclusive**, `to` is **exclusive** (`from <= t < to`), in
//! milliseconds.
//!
//! Decisions recorded before the index existed (before issue 14) are not in it.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::domain::{ChainLink, HistoryEntry, Pair, PhoneNumber};

/// Which of a decision's times a range is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeField {
    /// When the customer decided (the event's own time, `decided_at`).
    Event,
    /// When callgate received and stored it.
    Received,
}

impl TimeField {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeField::Event => "event",
            TimeField::Received => "received",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "event" => Some(TimeField::Event),
            "received" => Some(TimeField::Received),
            _ => None,
        }
    }

    /// The time of `entry` this field orders by.
    pub fn of(self, entry: &HistoryEntry) -> DateTime<Utc> {
        match self {
            TimeField::Event => entry.decision.decided_at,
            TimeField::Received => entry.received_at,
        }
    }
}

/// Every decision of `business` whose `by` time `t` is `from <= t < to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsRange {
    pub business: PhoneNumber,
    pub by: TimeField,
    /// Inclusive.
    pub from: DateTime<Utc>,
    /// Exclusive.
    pub to: DateTime<Utc>,
}

/// One decision of a business, as its pair's history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedDecision {
    /// The pair (also `entry.decision.pair`).
    pub pair: Pair,
    /// Where the index says it is in the pair's history.
    pub position: u64,
    /// What the history holds there; `None` if the history has no entry at that position
    /// (an entry was removed from the store behind callgate's back: see `callgate audit`).
    pub entry: Option<HistoryEntry>,
    /// The entry's chain link; `None` for a pre-chain entry (or a missing one).
    pub link: Option<ChainLink>,
}

/// One page of [`ConsentStore::records_page`](super::ConsentStore::records_page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordsPage {
    /// In index order (see the module docs).
    pub items: Vec<RecordedDecision>,
    /// Where the next page starts (strictly after the last item); `None`: this was the last.
    pub next: Option<RecordsPosition>,
}

/// An opaque place in a business's index: the next page starts strictly after it.
///
/// Not secret: it spells a customer's number (encoded). Keep it out of URLs and logs.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordsPosition(Vec<u8>);

impl fmt::Debug for RecordsPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordsPosition(..)")
    }
}

/// Version prefix of a [`RecordsPosition`]'s text form.
const POSITION_PREFIX: &str = "r1.";

impl RecordsPosition {
    /// The position of the index key `key` (see [`index_key`]).
    pub fn after_key(key: Vec<u8>) -> Self {
        RecordsPosition(key)
    }

    /// The index key this position stands after.
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// The text form (`r1.` + hex), for tokens handed to clients.
    pub fn to_token(&self) -> String {
        format!("{POSITION_PREFIX}{}", hex::encode(&self.0))
    }

    /// Reads a token made by [`to_token`](Self::to_token).
    pub fn from_token(token: &str) -> Option<Self> {
        let key = hex::decode(token.strip_prefix(POSITION_PREFIX)?).ok()?;
        parse_index_key(&key)?;
        Some(RecordsPosition(key))
    }
}

/// Width of the position part of an index key (zero-padded decimal: sorts numerically).
const POSITION_DIGITS: usize = 10;

/// The sortable bytes of an index entry: 16 hex digits of the time in ms (sign bit flipped, so
/// negative times sort first), the customer's digits, `:`, the position in 10 decimal digits.
/// Byte order of these keys is the index order; the Redis store keeps them as members of a
/// lexicographic sorted set.
pub fn index_key(ms: i64, customer: &PhoneNumber, position: u64) -> Vec<u8> {
    format!(
        "{}{}:{:0width$}",
        time_prefix(ms),
        customer.digits(),
        position,
        width = POSITION_DIGITS
    )
    .into_bytes()
}

/// The first 16 bytes of every index key of time `ms`. All keys of time `ms` are >= it and
/// < `time_prefix(ms + 1)`.
pub fn time_prefix(ms: i64) -> String {
    format!("{:016x}", (ms as u64) ^ (1 << 63))
}

/// The customer and the position an index key names.
pub fn parse_index_key(key: &[u8]) -> Option<(PhoneNumber, u64)> {
    let text = std::str::from_utf8(key).ok()?;
    if text.len() < 16 + 1 + POSITION_DIGITS || !text.is_char_boundary(16) {
        return None;
    }
    u64::from_str_radix(&text[..16], 16).ok()?;
    let (customer, position) = text[16..].rsplit_once(':')?;
    if position.len() != POSITION_DIGITS {
        return None;
    }
    Some((
        PhoneNumber::from_digits(customer).ok()?,
        position.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_time_then_customer_then_position() {
        let c = |s: &str| PhoneNumber::parse(s).unwrap();
        let keys = [
            index_key(-5, &c("+919000000001"), 0),
            index_key(0, &c("+919000000001"), 3),
            index_key(1_767_000_000_000, &c("+919000000001"), 9),
            index_key(1_767_000_000_000, &c("+919000000001"), 10),
            index_key(1_767_000_000_000, &c("+919000000002"), 0),
            index_key(1_767_000_000_001, &c("+919000000000"), 0),
        ];
        let mut sorted = keys.to_vec();
        sorted.sort();
        assert_eq!(sorted, keys);
        for k in &keys {
            let (customer, position) = parse_index_key(k).unwrap();
            assert!(customer.digits().starts_with("91900000000"));
            assert!(position <= 10);
        }
        assert_eq!(parse_index_key(&keys[3]), Some((c("+919000000001"), 10)));
        let p = RecordsPosition::after_key(keys[2].clone());
        assert_eq!(RecordsPosition::from_token(&p.to_token()), Some(p));
        for bad in ["", "r1.", "r1.zz", "r2.00", "h1.5"] {
            assert_eq!(RecordsPosition::from_token(bad), None, "{bad}");
        }
        // Every key of one ms lies in [time_prefix(ms), time_prefix(ms + 1)).
        assert!(time_prefix(0).as_bytes() <= keys[1].as_slice());
        assert!(keys[1].as_slice() < time_prefix(1).as_bytes());
    }
}
