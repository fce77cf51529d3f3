//! Every Redis key name callgate uses, and the shard a pair belongs to.
//!
//! Keys are grouped by shard, and every key of one shard carries the same hash tag
//! (`{<prefix>:sNN}`), so on Redis Cluster a whole shard lives in one slot and a script may touch
//! any key of its shard. A pair's shard is a stable hash of the pair, so all keys one decision
//! touches (consent, lapse record, history, event stream, due index) are in one slot, and
//! different pairs spread over [`SHARDS`] slots (and so over cluster nodes). A check's
//! `MGET c: x:` is one slot for the same reason, and so is a batch check's `MGET` of every
//! `c:`/`x:` key of one shard.
//!
//! ```text
//! {callgate:s07}:c:<business>:<customer>   the whole current decision (STRING; PEXPIREAT at a
//!                                          temporary grant's expiry)
//! {callgate:s07}:x:<business>:<customer>   lapse record: the current temporary grant, no TTL
//!                                          (STRING; absent unless the current decision is one)
//! {callgate:s07}:h:<business>:<customer>   history (LIST, arrival order, read in pages)
//! {callgate:s07}:d:<business>:<customer>   de-duplication memory: delivery id → fingerprint
//!                                          (HASH; one field per decision ever kept)
//! {callgate:s07}:e                         the shard's event log (STREAM)
//! {callgate:s07}:due                       temporary grants by expiry ms (ZSET, member = pair)
//! {callgate:s07}:trimmed                   newest event id trimmed from `e` (STRING)
//! ```
//!
//! Changing [`SHARDS`] or [`shard_of`] moves every pair to another key: it is a data migration,
//! and it changes the shape of every cursor subscribers hold.

use crate::domain::Pair;

/// Number of shards. Fixed: cursors carry one position per shard.
pub const SHARDS: usize = 16;

/// 32-bit FNV-1a. Stable across builds and platforms (unlike `std`'s hasher), which is what a
/// key layout needs.
pub fn fnv1a(bytes: &[u8]) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u32::from(*b)).wrapping_mul(PRIME))
}

/// The member that names a pair inside its shard: `<business>:<customer>` (digits only).
pub fn member(pair: &Pair) -> String {
    format!("{}:{}", pair.business.digits(), pair.customer.digits())
}

/// The shard a pair's keys and events live in.
pub fn shard_of(pair: &Pair) -> usize {
    (fnv1a(member(pair).as_bytes()) as usize) % SHARDS
}

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys one decision for one pair touches.
#[derive(Debug, Clone)]
pub struct PairKeys {
    pub shard: usize,
    pub member: String,
    pub consent: String,
    pub lapse: String,
    pub history: String,
    pub dedup: String,
    pub stream: String,
    pub due: String,
    pub trimmed: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// `{prefix:sNN}:`: the start of every key of a shard; the braces are the hash tag.
    pub fn shard_prefix(&self, shard: usize) -> String {
        format!("{{{}:s{:02}}}:", self.prefix, shard)
    }

    pub fn stream(&self, shard: usize) -> String {
        format!("{}e", self.shard_prefix(shard))
    }

    pub fn due(&self, shard: usize) -> String {
        format!("{}due", self.shard_prefix(shard))
    }

    /// Newest event id trimmed from the shard's stream. Redis 7.0 keeps no such record for
    /// trimming (`max-deleted-entry-id` only follows `XDEL`), so the scripts keep it.
    pub fn trimmed(&self, shard: usize) -> String {
        format!("{}trimmed", self.shard_prefix(shard))
    }

    /// The shard of `pair` and the two keys a check reads: consent (`c:`) and lapse (`x:`).
    /// Cheaper than [`pair`](Self::pair) on the read path: two key names, not six.
    /// Built with plain pushes: this runs for every pair of every check.
    pub fn current(&self, pair: &Pair) -> (usize, String, String) {
        let shard = shard_of(pair);
        let key = |kind: &str| {
            let (b, c) = (pair.business.digits(), pair.customer.digits());
            let mut k = String::with_capacity(self.prefix.len() + b.len() + c.len() + 12);
            k.push('{');
            k.push_str(&self.prefix);
            k.push_str(":s");
            k.push(char::from(b'0' + (shard / 10 % 10) as u8));
            k.push(char::from(b'0' + (shard % 10) as u8));
            k.push_str("}:");
            k.push_str(kind);
            k.push_str(b);
            k.push(':');
            k.push_str(c);
            k
        };
        (shard, key("c:"), key("x:"))
    }

    pub fn pair(&self, pair: &Pair) -> PairKeys {
        let shard = shard_of(pair);
        let member = member(pair);
        let base = self.shard_prefix(shard);
        PairKeys {
            shard,
            consent: format!("{base}c:{member}"),
            lapse: format!("{base}x:{member}"),
            history: format!("{base}h:{member}"),
            dedup: format!("{base}d:{member}"),
            stream: self.stream(shard),
            due: self.due(shard),
            trimmed: self.trimmed(shard),
            member,
        }
    }

    /// A `SCAN … MATCH` pattern for every key of every shard under this prefix (the prefix's
    /// glob characters escaped). It may also match another prefix that begins with this one
    /// and `:s`; [`kind_of`](Self::kind_of) tells those apart.
    pub fn scan_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 8);
        pattern.push('{');
        for ch in self.prefix.chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\' | '^') {
                pattern.push('\\');
            }
            pattern.push(ch);
        }
        pattern.push_str(":s*");
        pattern
    }

    /// The kind of one of this prefix's keys: its name after the shard's hash tag, up to the
    /// next `:` (`c`, `x`, `h`, `e`, `due`, `trimmed`). `None` for any other key.
    pub fn kind_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key
            .strip_prefix('{')?
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":s")?;
        let (shard, rest) = rest.split_at_checked(2)?;
        if !shard.bytes().all(|b| b.is_ascii_digit()) || shard.parse::<usize>().ok()? >= SHARDS {
            return None;
        }
        let rest = rest.strip_prefix("}:")?;
        let kind = rest.split(':').next().unwrap_or(rest);
        (!kind.is_empty()).then_some(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PhoneNumber;

    fn pair(b: &str, c: &str) -> Pair {
        Pair::new(
            PhoneNumber::parse(b).unwrap(),
            PhoneNumber::parse(c).unwrap(),
        )
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn all_keys_of_a_pair_share_one_hash_tag() {
        let keys = Keys::new("callgate");
        let k = keys.pair(&pair("+919000000000", "+919876543210"));
        let tag = format!("{{callgate:s{:02}}}:", k.shard);
        for key in [
            &k.consent, &k.lapse, &k.history, &k.dedup, &k.stream, &k.due, &k.trimmed,
        ] {
            assert!(key.starts_with(&tag), "{key} lacks {tag}");
        }
        assert_eq!(k.member, "919000000000:919876543210");
        assert_eq!(k.consent, format!("{tag}c:919000000000:919876543210"));
        assert_eq!(k.lapse, format!("{tag}x:919000000000:919876543210"));
        let (shard, consent, lapse) = keys.current(&pair("+919000000000", "+919876543210"));
        assert_eq!((shard, consent, lapse), (k.shard, k.consent, k.lapse));
    }

    #[test]
    fn every_key_has_a_kind_and_foreign_keys_have_none() {
        let keys = Keys::new("callgate");
        let k = keys.pair(&pair("+919000000000", "+919876543210"));
        for (key, kind) in [
            (&k.consent, "c"),
            (&k.lapse, "x"),
            (&k.history, "h"),
            (&k.dedup, "d"),
            (&k.stream, "e"),
            (&k.due, "due"),
            (&k.trimmed, "trimmed"),
        ] {
            assert_eq!(keys.kind_of(key), Some(kind), "{key}");
        }
        for foreign in [
            "plain",
            "{callgate:s07}",
            "{callgate:s07}:",
            "{callgate:s16}:c:1:2",
            "{callgate:sx7}:c:1:2",
            "{callgate:s07:c:1:2",
            "{callgate-eu:s07}:c:1:2",
            "{other:s07}:c:1:2",
        ] {
            assert_eq!(keys.kind_of(foreign), None, "{foreign}");
        }
        assert_eq!(keys.scan_pattern(), "{callgate:s*");
        assert_eq!(Keys::new("a*b[1]").scan_pattern(), "{a\\*b\\[1\\]:s*");
    }

    #[test]
    fn read_path_keys_equal_the_write_path_keys_for_every_shard() {
        for prefix in ["callgate", "prod-eu"] {
            let keys = Keys::new(prefix);
            for i in 0..200 {
                let p = pair("+919000000000", &format!("+9198{i:08}"));
                let k = keys.pair(&p);
                assert_eq!(
                    keys.current(&p),
                    (k.shard, k.consent, k.lapse),
                    "{prefix} {i}"
                );
            }
        }
    }
}
