//! Issue 13, calling lists: the store's index of the pairs of a business that may be callable,
//! and the position a page of it is read from.
//!
//! Dialers consume lists, not single checks. Scanning every pair of every business to build a
//! list would cost the whole store per page, so each store keeps, per business, an index of the
//! customers whose current decision is a grant (kept in step with the current decision in the
//! same atomic step as [`record`](super::ConsentStore::record): a grant applied adds the
//! customer, a denial applied removes it; a lapsed temporary grant is removed by the expiry
//! sweep's claim). The index only says "possibly callable": a page reads each listed pair's
//! **current decision** and keeps only what its caller's predicate admits (a live grant at the
//! reader's clock, so a 7-day grant leaves the list at its instant even before the sweep ran),
//! so the answer is always the authoritative current decision, never the index's opinion.
//!
//! Order: shard by shard (the memory store has one), and within a shard by the customer's
//! digits in byte order (a Redis sorted set read `BYLEX`). A [`CallablePosition`] is "the
//! shard being read, and the last customer read in it": shards before it are done, shards
//! after it not started. Pages are stable under concurrent writes: a customer added behind the
//! position is simply not in this walk (the snapshot cursor's event stream carries it, see
//! `grpc_api`), one added ahead of it is read when the walk reaches it.

use crate::domain::{Decision, PhoneNumber};

/// Where the next page of a business's calling list starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallablePosition {
    /// The shard being walked (0 first).
    pub shard: usize,
    /// The last customer read in that shard; `None`: the shard's start.
    pub after: Option<PhoneNumber>,
}

impl CallablePosition {
    /// The start of the list.
    pub fn start() -> Self {
        CallablePosition::default()
    }
}

/// One page of a calling list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallablePage {
    /// The current decisions the predicate admitted, in list order.
    pub entries: Vec<Decision>,
    /// Where the next page starts; `None`: the list is done.
    pub next: Option<CallablePosition>,
}

/// What a caller keeps of the index's pairs (their current decision).
pub type Keep<'a> = &'a (dyn Fn(&Decision) -> bool + Send + Sync);

/// At most this many index entries are read (and their decisions checked) for one page,
/// whatever the predicate keeps, so a page with a narrow filter (one team's grants among a
/// million) still costs bounded work and memory: it may come back short, or empty, with a
/// position to continue from.
pub fn scan_budget(limit: usize) -> usize {
    limit.max(1).saturating_mul(8).max(1024)
}

/// Index entries read per round (one sorted-set range and one `MGET` on Redis).
pub fn chunk(limit: usize, kept: usize) -> usize {
    limit.saturating_sub(kept).clamp(64, 1000)
}
