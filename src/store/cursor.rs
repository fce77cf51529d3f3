//! Positions in the sharded event log, and the opaque string form subscribers hold.
//!
//! A cursor is one [`StreamId`] per shard: "everything up to here has been seen". Events of one
//! pair always go to the same shard, so a pair's events are always delivered in order.

use std::fmt;

/// An id in one shard's log: `ms-seq`, the same shape as a Redis stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        StreamId { ms, seq }
    }

    /// The greatest id strictly before every id logged at millisecond `ms`.
    pub fn just_before_ms(ms: u64) -> Self {
        match ms.checked_sub(1) {
            Some(prev) => StreamId {
                ms: prev,
                seq: u64::MAX,
            },
            None => StreamId::ZERO,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a cursor cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("cursor is not one callgate issued")]
    Malformed,
    #[error(
        "cursor is from an older callgate event-log layout and cannot be resumed; resync: read \
         current state with CheckCallPermission(s), then subscribe without resume_after or with \
         a recent `since`"
    )]
    Outdated,
    #[error("cursor has {got} positions but this store has {want} shards")]
    WrongShardCount { got: usize, want: usize },
    #[error(
        "cursor points before the retained event log (shard {shard}); resync: read current state \
         with CheckCallPermission(s), then subscribe without resume_after or with a recent `since`"
    )]
    OutOfRange { shard: usize },
    #[error(
        "cursor points past the end of the event log (shard {shard}): it was not issued by this \
         log; resync: read current state, then subscribe without resume_after"
    )]
    Ahead { shard: usize },
}

/// A position in every shard of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(Vec<StreamId>);

/// The version of the cursor's string form. It changes whenever the shard layout does (the
/// shard count, or which pair goes to which shard), so a cursor of an older layout is refused
/// as [`CursorError::Outdated`] instead of being read against the wrong shards.
/// `c1.`: 16 Redis shards with fixed tags. `c2.`: 18 shards whose tags are chosen by slot.
const PREFIX: &str = "c2.";
/// String forms of earlier layouts.
const OUTDATED_PREFIXES: [&str; 1] = ["c1."];
impl Cursor {
    pub fn uniform(shards: usize, id: StreamId) -> Self {
        Cursor(vec![id; shards])
    }

    pub fn from_ids(ids: Vec<StreamId>) -> Self {
        Cursor(ids)
    }

    pub fn ids(&self) -> &[StreamId] {
        &self.0
    }

    pub fn shards(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, shard: usize) -> StreamId {
        self.0.get(shard).copied().unwrap_or_default()
    }

    /// True if the event at (`shard`, `id`) comes after this cursor.
    pub fn is_before(&self, shard: usize, id: StreamId) -> bool {
        id > self.get(shard)
    }

    /// Moves the cursor past the event at (`shard`, `id`); never moves it back.
    pub fn advance(&mut self, shard: usize, id: StreamId) {
        if let Some(slot) = self.0.get_mut(shard)
            && id > *slot
        {
            *slot = id;
        }
    }

    /// The first shard where this cursor is past `other`, if any.
    pub fn first_ahead_of(&self, other: &Cursor) -> Option<usize> {
        (0..self.0.len()).find(|&shard| self.get(shard) > other.get(shard))
    }

    /// The first shard where this cursor is before `other`, if any (issue 17: a replay's
    /// start checked against the retained log).
    pub fn first_behind(&self, other: &Cursor) -> Option<usize> {
        (0..self.0.len()).find(|&shard| self.get(shard) < other.get(shard))
    }

    /// Moves every shard's position to at least `other`'s.
    pub fn advance_to(&mut self, other: &Cursor) {
        for (shard, id) in other.0.iter().enumerate() {
            self.advance(shard, *id);
        }
    }

    /// Parses the string form, checking it against the store's shard count.
    pub fn parse(s: &str, shards: usize) -> Result<Self, CursorError> {
        if OUTDATED_PREFIXES.iter().any(|p| s.starts_with(p)) {
            return Err(CursorError::Outdated);
        }
        let body = s.strip_prefix(PREFIX).ok_or(CursorError::Malformed)?;
        let ids = body
            .split('.')
            .map(|part| StreamId::parse(part).ok_or(CursorError::Malformed))
            .collect::<Result<Vec<_>, _>>()?;
        let cursor = Cursor(ids);
        cursor.expect_shards(shards)?;
        Ok(cursor)
    }

    /// Checks that the cursor has one position per shard of a store with `shards` shards.
    pub fn expect_shards(&self, shards: usize) -> Result<(), CursorError> {
        if self.0.len() == shards {
            Ok(())
        } else {
            Err(CursorError::WrongShardCount {
                got: self.0.len(),
                want: shards,
            })
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_its_string_form() {
        let c = Cursor::from_ids(vec![
            StreamId::new(5, 1),
            StreamId::ZERO,
            StreamId::new(7, 0),
        ]);
        assert_eq!(Cursor::parse(&c.to_string(), 3), Ok(c));
    }

    #[test]
    fn bad_cursor_strings_are_refused() {
        let cases = [
            ("", CursorError::Malformed),
            ("c2.", CursorError::Malformed),
            ("c2.1-x", CursorError::Malformed),
            ("c3.1-1", CursorError::Malformed),
            ("c1.1-1", CursorError::Outdated),
            ("c1.1-1.2-2", CursorError::Outdated),
            (
                "c2.1-1.2-2",
                CursorError::WrongShardCount { got: 2, want: 1 },
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Cursor::parse(input, 1), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn advance_never_moves_back() {
        let mut c = Cursor::uniform(2, StreamId::new(10, 0));
        c.advance(0, StreamId::new(9, 9));
        c.advance(1, StreamId::new(11, 0));
        assert_eq!(c.ids(), &[StreamId::new(10, 0), StreamId::new(11, 0)]);
        assert!(c.is_before(0, StreamId::new(10, 1)));
        assert!(!c.is_before(1, StreamId::new(11, 0)));
    }
}
