//! The tamper-evident record (issue 14): each pair's history is a hash chain.
//!
//! Every history entry recorded since the chain was introduced carries its **position** in the
//! pair's history (0 is the first decision ever kept), the **hash of the entry before it**
//! (`prev`), and its **own hash**: SHA-256 over [`canonical`], an encoding of the position, `prev`
//! and every recorded field, in a fixed order, each field length-prefixed. So:
//!
//! - an edited entry no longer matches its own hash;
//! - a removed entry leaves a gap: the entry after it states a position one too high, and its
//!   `prev` is not the hash of the entry now before it;
//! - reordered entries state positions out of order, and their `prev` links break.
//!
//! A chain has no secret: whoever can write the store can recompute every hash after an edit.
//! What the chain gives is that such a rewrite must change every later hash, so a hash an
//! auditor kept (from an earlier export, say) no longer matches. Removing the *last* entries of
//! a history leaves a shorter, valid chain; the per-business index still names them, and the
//! export reports them as gone.
//!
//! Histories recorded before the chain existed hold entries without hashes: those are
//! **pre-chain**. The chain starts at the first hashed entry, whose `prev` is [`GENESIS`]
//! (zeros), whatever pre-chain entries come before it. A pre-chain entry *after* a hashed one is
//! a break (nothing writes one any more).
//!
//! # The canonical encoding (version 1), for auditors
//!
//! `hash = SHA-256(field_1 || field_2 || … || field_18)`, where every field is written as a
//! 4-byte big-endian length followed by that many bytes. Text is UTF-8; times are the number of
//! milliseconds since 1970-01-01T00:00:00Z written in ASCII decimal (with `-` if negative); an
//! absent time is the empty string; hashes are their 32 raw bytes. In order:
//!
//! | # | field | example |
//! |---|-------|---------|
//! | 1 | the tag `callgate.chain.v1` | |
//! | 2 | business number, E.164 | `+919000000000` |
//! | 3 | customer number, E.164 | `+919876543210` |
//! | 4 | position in the pair's history, decimal | `0` |
//! | 5 | previous entry's hash (32 bytes; zeros for the first hashed entry) | |
//! | 6 | outcome: `applied` or `stale` | |
//! | 7 | decision: `grant_permanent`, `grant_temporary` or `deny` | |
//! | 8 | event time (decided at), ms | `1767000000123` |
//! | 9 | expiry of a temporary grant, ms, else empty | |
//! | 10 | received time, ms | |
//! | 11 | source: `doubletick` or `whatsapp` | |
//! | 12 | message id | |
//! | 13 | paired message id | |
//! | 14 | response source | |
//! | 15 | sender customer id | |
//! | 16 | SHA-256 of the webhook body (32 bytes) | |
//! | 17 | stated event time, ms | |
//! | 18 | stated expiry, ms, else empty | |
//!
//! Attribution (team, campaign, labels, customer name) is not hashed: it is joined from a
//! registration and may be attached after the decision was recorded.

use sha2::{Digest, Sha256};

use super::decision::Choice;
use super::event::{HistoryEntry, HistoryOutcome};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The `prev` of the first hashed entry of a pair.
pub const GENESIS: Hash = [0; 32];

/// The first field of the canonical encoding: names the algorithm and its version.
pub const CHAIN_TAG: &str = "callgate.chain.v1";

/// An entry's place in its pair's chain, as recorded with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLink {
    /// Position in the pair's history (0 is the first entry ever kept).
    pub position: u64,
    /// Hash of the entry before it ([`GENESIS`] for the first hashed entry).
    pub prev: Hash,
    /// This entry's own hash: [`entry_hash`] of it.
    pub hash: Hash,
}

impl ChainLink {
    /// The link of `entry` recorded at `position` after an entry whose hash is `prev`.
    pub fn new(position: u64, prev: Hash, entry: &HistoryEntry) -> Self {
        ChainLink {
            position,
            prev,
            hash: entry_hash(position, &prev, entry),
        }
    }

    /// Whether the entry's content, position and `prev` still give the hash recorded with it.
    pub fn matches(&self, entry: &HistoryEntry) -> bool {
        entry_hash(self.position, &self.prev, entry) == self.hash
    }
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn time_field(out: &mut Vec<u8>, ms: Option<i64>) {
    field(
        out,
        ms.map(|t| t.to_string()).unwrap_or_default().as_bytes(),
    );
}

/// The bytes the hash of `entry` is taken over (see the module docs).
pub fn canonical(position: u64, prev: &Hash, entry: &HistoryEntry) -> Vec<u8> {
    let d = &entry.decision;
    let e = &d.evidence;
    let mut out = Vec::with_capacity(256);
    field(&mut out, CHAIN_TAG.as_bytes());
    field(&mut out, d.pair.business.to_string().as_bytes());
    field(&mut out, d.pair.customer.to_string().as_bytes());
    field(&mut out, position.to_string().as_bytes());
    field(&mut out, prev);
    field(
        &mut out,
        match entry.outcome {
            HistoryOutcome::Applied => b"applied",
            HistoryOutcome::Stale => b"stale",
        },
    );
    field(&mut out, d.choice.name().as_bytes());
    time_field(&mut out, Some(d.decided_at.timestamp_millis()));
    time_field(
        &mut out,
        match d.choice {
            Choice::GrantTemporary { expires_at } => Some(expires_at.timestamp_millis()),
            _ => None,
        },
    );
    time_field(&mut out, Some(entry.received_at.timestamp_millis()));
    field(&mut out, e.source.as_str().as_bytes());
    field(&mut out, e.message_id.as_bytes());
    field(&mut out, e.paired_message_id.as_bytes());
    field(&mut out, e.response_source.as_bytes());
    field(&mut out, e.sender_customer_id.as_bytes());
    field(&mut out, &e.body_sha256);
    time_field(&mut out, Some(e.stated_at.timestamp_millis()));
    time_field(&mut out, e.stated_expires_at.map(|t| t.timestamp_millis()));
    out
}

/// SHA-256 of [`canonical`].
pub fn entry_hash(position: u64, prev: &Hash, entry: &HistoryEntry) -> Hash {
    Sha256::digest(canonical(position, prev, entry)).into()
}

/// What is wrong at one place of a pair's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The entry's content (or position, or `prev`) no longer gives its recorded hash: edited.
    Edited,
    /// The entry at this place states a later position: the entries in between were removed.
    Removed { stated: u64 },
    /// The entry at this place states an earlier position (or one already seen): entries were
    /// reordered or copied.
    OutOfOrder { stated: u64 },
    /// The entry's `prev` is not the hash of the entry before it.
    Unlinked,
    /// An entry without a hash after the chain started.
    UnhashedAfterChain,
    /// The store could not read the entry at all.
    Unreadable(String),
    /// An index names this position, but the pair's history has no entry there.
    Gone,
}

/// One break: which place of which chain, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// Where the entry was found (its index in the history as read, or the position the
    /// export row names).
    pub position: u64,
    pub kind: BreakKind,
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BreakKind::Edited => write!(f, "edited: the entry does not match its hash"),
            BreakKind::Removed { stated } => write!(
                f,
                "removed: the entry here was recorded at position {stated}; entries before it \
                 are missing (or were moved)"
            ),
            BreakKind::OutOfOrder { stated } => write!(
                f,
                "reordered: the entry here was recorded at position {stated}"
            ),
            BreakKind::Unlinked => write!(
                f,
                "unlinked: its previous hash is not the hash of the entry before it"
            ),
            BreakKind::UnhashedAfterChain => {
                write!(f, "an entry without a hash after the chain started")
            }
            BreakKind::Unreadable(why) => write!(f, "unreadable: {why}"),
            BreakKind::Gone => write!(f, "gone: the record has no entry at this position"),
        }
    }
}

/// Walks one pair's history in order and finds every break.
///
/// Feed it every entry of the history, in the order the store holds them
/// ([`ChainWalk::entry`]), then read [`ChainWalk::breaks`]. Pre-chain entries (no link) before
/// the first hashed entry are counted, not reported.
#[derive(Debug, Default)]
pub struct ChainWalk {
    next_index: u64,
    /// The position the next entry should state: one after the last stated one.
    expected: u64,
    /// Hash of the previous entry if it was hashed.
    prev: Option<Hash>,
    started: bool,
    pub pre_chain: u64,
    pub hashed: u64,
    pub breaks: Vec<ChainBreak>,
}

impl ChainWalk {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next entry of the history as read (index = number of entries fed before it).
    pub fn entry(&mut self, entry: &HistoryEntry, link: Option<&ChainLink>) {
        let index = self.next_index;
        self.next_index += 1;
        let Some(link) = link else {
            if self.started {
                self.push(index, BreakKind::UnhashedAfterChain);
            } else {
                self.pre_chain += 1;
            }
            self.prev = None;
            return;
        };
        self.hashed += 1;
        if !link.matches(entry) {
            self.push(index, BreakKind::Edited);
        }
        let expected = if self.started { self.expected } else { index };
        if link.position > expected {
            self.push(
                index,
                BreakKind::Removed {
                    stated: link.position,
                },
            );
        } else if link.position < expected {
            self.push(
                index,
                BreakKind::OutOfOrder {
                    stated: link.position,
                },
            );
        }
        let expected_prev = self.prev.unwrap_or(GENESIS);
        if link.prev != expected_prev {
            self.push(index, BreakKind::Unlinked);
        }
        self.started = true;
        self.expected = link.position + 1;
        self.prev = Some(link.hash);
    }

    /// An entry the store could not read.
    pub fn unreadable(&mut self, why: String) {
        let index = self.next_index;
        self.next_index += 1;
        self.push(index, BreakKind::Unreadable(why));
        self.prev = None;
        self.expected = index + 1;
        self.started = true;
    }

    fn push(&mut self, position: u64, kind: BreakKind) {
        self.breaks.push(ChainBreak { position, kind });
    }

    /// Entries fed so far.
    pub fn len(&self) -> u64 {
        self.next_index
    }

    pub fn is_empty(&self) -> bool {
        self.next_index == 0
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;
    use crate::domain::{Decision, Evidence, Pair, PhoneNumber, Source};

    fn entry(n: i64) -> HistoryEntry {
        let t = DateTime::from_timestamp_millis(1_767_000_000_000 + n).unwrap();
        HistoryEntry {
            decision: Decision {
                pair: Pair::new(
                    PhoneNumber::parse("+919000000000").unwrap(),
                    PhoneNumber::parse("+919876543210").unwrap(),
                ),
                choice: Choice::Deny,
                decided_at: t,
                evidence: Evidence {
                    source: Source::WhatsApp,
                    message_id: format!("m{n}"),
                    paired_message_id: String::new(),
                    response_source: "user_action".into(),
                    sender_customer_id: String::new(),
                    body_sha256: [7; 32],
                    stated_at: t,
                    stated_expires_at: None,
                },
                attribution: None,
                customer_name: None,
            },
            outcome: HistoryOutcome::Applied,
            received_at: t,
        }
    }

    fn chain(n: u64) -> Vec<(HistoryEntry, ChainLink)> {
        let mut prev = GENESIS;
        (0..n)
            .map(|i| {
                let e = entry(i as i64);
                let link = ChainLink::new(i, prev, &e);
                prev = link.hash;
                (e, link)
            })
            .collect()
    }

    fn walk(entries: &[(HistoryEntry, Option<ChainLink>)]) -> ChainWalk {
        let mut w = ChainWalk::new();
        for (e, l) in entries {
            w.entry(e, l.as_ref());
        }
        w
    }

    #[test]
    fn the_encoding_is_the_documented_one() {
        let e = entry(0);
        let bytes = canonical(3, &GENESIS, &e);
        // Tag, then business, customer, position, each length-prefixed.
        assert_eq!(&bytes[..4], &17u32.to_be_bytes());
        assert_eq!(&bytes[4..21], b"callgate.chain.v1");
        assert_eq!(&bytes[21..25], &13u32.to_be_bytes());
        assert_eq!(&bytes[25..38], b"+919000000000");
        assert_eq!(&bytes[38..42], &13u32.to_be_bytes());
        assert_eq!(&bytes[55..60], &[0, 0, 0, 1, b'3']);
        assert_eq!(&bytes[60..64], &32u32.to_be_bytes());
        assert_eq!(
            entry_hash(3, &GENESIS, &e),
            <Hash>::from(Sha256::digest(&bytes))
        );
        // Every field counts.
        let mut other = e.clone();
        other.received_at += chrono::Duration::milliseconds(1);
        assert_ne!(entry_hash(3, &GENESIS, &e), entry_hash(3, &GENESIS, &other));
        assert_ne!(entry_hash(3, &GENESIS, &e), entry_hash(4, &GENESIS, &e));
        assert_ne!(entry_hash(3, &GENESIS, &e), entry_hash(3, &[1; 32], &e));
    }

    #[test]
    fn an_intact_chain_has_no_break() {
        let c = chain(5);
        let w = walk(
            &c.iter()
                .map(|(e, l)| (e.clone(), Some(*l)))
                .collect::<Vec<_>>(),
        );
        assert!(w.breaks.is_empty(), "{:?}", w.breaks);
        assert_eq!((w.hashed, w.pre_chain), (5, 0));
    }

    #[test]
    fn edits_removals_and_reorders_are_found_where_they_are() {
        let c: Vec<_> = chain(5).into_iter().map(|(e, l)| (e, Some(l))).collect();
        let mut edited = c.clone();
        edited[2].0.decision.evidence.response_source = "forged".into();
        let w = walk(&edited);
        assert_eq!(
            w.breaks,
            vec![ChainBreak {
                position: 2,
                kind: BreakKind::Edited
            }]
        );

        let mut removed = c.clone();
        removed.remove(1);
        let w = walk(&removed);
        assert_eq!(
            w.breaks,
            vec![
                ChainBreak {
                    position: 1,
                    kind: BreakKind::Removed { stated: 2 }
                },
                ChainBreak {
                    position: 1,
                    kind: BreakKind::Unlinked
                },
            ]
        );

        let mut swapped = c.clone();
        swapped.swap(1, 2);
        let w = walk(&swapped);
        assert_eq!(w.breaks[0].position, 1);
        assert_eq!(w.breaks[0].kind, BreakKind::Removed { stated: 2 });
        assert!(
            w.breaks
                .iter()
                .any(|b| b.position == 2 && b.kind == BreakKind::OutOfOrder { stated: 1 })
        );
    }

    #[test]
    fn pre_chain_entries_come_first_and_are_not_breaks() {
        let mut entries: Vec<(HistoryEntry, Option<ChainLink>)> =
            vec![(entry(100), None), (entry(101), None)];
        let first = ChainLink::new(2, GENESIS, &entry(0));
        entries.push((entry(0), Some(first)));
        let second = ChainLink::new(3, first.hash, &entry(1));
        entries.push((entry(1), Some(second)));
        let w = walk(&entries);
        assert!(w.breaks.is_empty(), "{:?}", w.breaks);
        assert_eq!((w.pre_chain, w.hashed), (2, 2));
        // An unhashed entry after the chain started is a break.
        entries.push((entry(5), None));
        let w = walk(&entries);
        assert_eq!(
            w.breaks,
            vec![ChainBreak {
                position: 4,
                kind: BreakKind::UnhashedAfterChain
            }]
        );
    }
}
