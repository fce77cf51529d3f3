//! Every Redis key name callgate uses, and the shard a pair belongs to.
//!
//! Keys are grouped by shard, and every key of one shard carries the same hash tag
//! (`{<prefix>:sNN-k}`), so on Redis Cluster a whole shard lives in one slot and a script may
//! touch any key of its shard. A pair's shard is a stable hash of the pair, so all keys one
//! decision touches (consent, lapse record, history, event stream, due index) are in one slot,
//! and different pairs spread over [`SHARDS`] slots (and so over cluster nodes). A check's
//! `MGET c: x:` is one slot for the same reason, and so is a batch check's `MGET` of every
//! `c:`/`x:` key of one shard.
//!
//! ```text
//! {callgate:s07-3}:c:<business>:<customer>  the whole current decision (STRING; PEXPIREAT at
//!                                           a temporary grant's expiry)
//! {callgate:s07-3}:x:<business>:<customer>  lapse record: the current temporary grant, no TTL
//!                                           (STRING; absent unless the current decision is one)
//! {callgate:s07-3}:h:<business>:<customer>  history (LIST, arrival order, read in pages)
//! {callgate:s07-3}:d:<business>:<customer>  de-duplication memory: delivery id → fingerprint
//!                                           (HASH; one field per decision ever kept)
//! {callgate:s07-3}:e                        the shard's event log (STREAM)
//! {callgate:s07-3}:due                      temporary grants by expiry ms (ZSET, member = pair)
//! {callgate:s07-3}:trimmed                  newest event id trimmed from `e` (STRING)
//! {callgate:s07-3}:br:<business>            issue 14: the business's history entries of this
//!                                           shard by received time (ZSET, scores 0, members
//!                                           `records::index_key`, read by lex range)
//! {callgate:s07-3}:be:<business>            the same by event time
//! {callgate:s07-3}:r:<business>:<customer>  issue 13: registered consent requests (HASH
//!                                           request message id → registration; PEXPIRE)
//! {callgate:s07-3}:q:<business>:<customer>  issue 13: their send times (ZSET id → sent ms)
//! {callgate:s07-3}:l:<business>             issue 13: the business's customers in this shard
//!                                           whose current decision is a grant (ZSET, score
//!                                           0, member = customer digits, read BYLEX)
//! ```
//!
//! # How the hash tags are chosen: an even spread over a default 3-master cluster
//!
//! `redis-cli --cluster create` with three masters gives them the slot ranges 0–5460,
//! 5461–10922 and 10923–16383. [`SHARDS`] is a multiple of 3, and shard `s` must land in
//! third `s / (SHARDS / 3)` ([`slot_third`]): its tag is `<prefix>:s<NN>-<k>` with the
//! smallest `k ≥ 0` whose [`key_slot`] lies in that third and in no earlier shard's slot. So
//! with any prefix each master of a default cluster holds exactly a third of the shards (and,
//! since pairs hash evenly over shards, a third of the pairs), and no two shards share a slot.
//! (16 fixed tags `{callgate:s00}`…`{callgate:s15}` used to land 4/4/8.) On a cluster with
//! another slot layout the spread is whatever CRC16 gives; `CLUSTER KEYSLOT <tag>` tells.
//!
//! Changing [`SHARDS`], the tag rule or [`shard_of`] moves every pair to another key: it is a
//! data migration, and it changes the shape of every cursor subscribers hold (the cursor's
//! version prefix changes with it, see [`crate::store::cursor`]).

use crate::domain::{Pair, PhoneNumber};
use crate::store::records::TimeField;

/// Number of shards. Fixed: cursors carry one position per shard. A multiple of 3, so each
/// master of a default 3-master cluster gets the same number (see the module docs).
pub const SHARDS: usize = 18;

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), the checksum Redis Cluster hashes keys
/// with.
pub fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0u16, |mut crc, b| {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    })
}

/// The Cluster hash slot of `key`: CRC16 of its hash tag (the text between the first `{` and
/// the next `}`, if non-empty), else of the whole key, modulo [`SLOTS`].
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|b| *b == b'}')
                .filter(|close| *close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// Which third of the slot space (0, 1 or 2) `slot` is in, as a default 3-master cluster
/// splits it: 0–5460, 5461–10922, 10923–16383.
pub fn slot_third(slot: u16) -> usize {
    match slot {
        0..=5460 => 0,
        5461..=10922 => 1,
        _ => 2,
    }
}

/// The hash tag of every shard (without braces), chosen by slot: see the module docs.
pub fn shard_tags(prefix: &str) -> Vec<String> {
    let per_third = SHARDS / 3;
    let mut used = Vec::with_capacity(SHARDS);
    (0..SHARDS)
        .map(|shard| {
            let third = shard / per_third;
            (0u32..)
                .map(|k| format!("{prefix}:s{shard:02}-{k}"))
                .find(|tag| {
                    let slot = key_slot(tag.as_bytes());
                    slot_third(slot) == third && !used.contains(&slot)
                })
                .inspect(|tag| used.push(key_slot(tag.as_bytes())))
                .expect("CRC16 reaches every third of the slot space")
        })
        .collect()
}

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

/// Layout v2: the default number of hot-record buckets per shard (`p:<n>`,
/// [`RedisConfig::hot_buckets`](super::RedisConfig::hot_buckets)): about 64 pairs a bucket
/// at 1.2 million pairs. Past 128 pairs a bucket still works, at about 40 bytes more a pair
/// (Redis converts the hash from a listpack to a table); far fewer wastes a key's overhead.
pub const HOT_BUCKETS: u32 = 1024;

/// Layout v2: the hot-record bucket, of `buckets` per shard, of a pair's field
/// (`codec::packed::pair_field`). The twin of `v2_lib.lua`'s `hot_bucket`.
pub fn hot_bucket(field: &[u8; 14], buckets: u32) -> u32 {
    fnv1a(field) / SHARDS as u32 % buckets.max(1)
}

/// Builds key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// `{<tag>}:` of every shard, in shard order.
    shard_prefixes: Vec<String>,
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
    /// Issue 14: the pair's business's records index of this shard, by received time.
    pub records_received: String,
    /// Issue 14: the same by event time.
    pub records_event: String,
}

/// issue 13 (attribution): the keys of one pair's consent requests (same shard as its
/// [`PairKeys`]).
#[derive(Debug, Clone)]
pub struct RequestKeys {
    /// `r:`: registrations by request message id.
    pub requests: String,
    /// `q:`: request message ids by send time.
    pub sent: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            shard_prefixes: shard_tags(prefix)
                .into_iter()
                .map(|tag| format!("{{{tag}}}:"))
                .collect(),
        }
    }

    /// `{prefix:sNN-k}:`: the start of every key of a shard; the braces are the hash tag.
    pub fn shard_prefix(&self, shard: usize) -> String {
        self.shard_prefixes[shard].clone()
    }

    /// The Cluster hash slot of every key of `shard`.
    pub fn slot(&self, shard: usize) -> u16 {
        key_slot(self.shard_prefixes[shard].as_bytes())
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
        let base = &self.shard_prefixes[shard];
        let key = |kind: &str| {
            let (b, c) = (pair.business.digits(), pair.customer.digits());
            let mut k = String::with_capacity(base.len() + b.len() + c.len() + 4);
            k.push_str(base);
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
            records_received: self.records(shard, &pair.business, TimeField::Received),
            records_event: self.records(shard, &pair.business, TimeField::Event),
            member,
        }
    }

    /// Issue 14: the records index of `business` in `shard` by `by` time (`br:` received,
    /// `be:` event).
    pub fn records(&self, shard: usize, business: &PhoneNumber, by: TimeField) -> String {
        let kind = match by {
            TimeField::Received => "br",
            TimeField::Event => "be",
        };
        format!("{}{kind}:{}", self.shard_prefix(shard), business.digits())
    }

    /// issue 13 (attribution): the keys of the pair's consent requests.
    pub fn requests(&self, pair: &Pair) -> RequestKeys {
        let shard = shard_of(pair);
        let member = member(pair);
        let base = self.shard_prefix(shard);
        RequestKeys {
            requests: format!("{base}r:{member}"),
            sent: format!("{base}q:{member}"),
        }
    }

    /// Issue 13: the calling-list index of `business`'s pairs in `shard` (see
    /// `store/redis/callable.rs`).
    pub fn callable(&self, shard: usize, business: &PhoneNumber) -> String {
        format!("{}l:{}", self.shard_prefix(shard), business.digits())
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
    /// next `:` (`c`, `x`, `h`, `e`, `due`, `trimmed`, `l`). `None` for any other key.
    /// Key names are bytes: layout v2's lease (`t:`) and dedup (`d:`) keys end in a packed
    /// pair; the kind itself is text.
    pub fn kind_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = self
            .shard_prefixes
            .iter()
            .find_map(|shard| key.strip_prefix(shard.as_bytes()))?;
        let kind = rest.split(|&b| b == b':').next().unwrap_or(rest);
        std::str::from_utf8(kind).ok().filter(|k| !k.is_empty())
    }
}

// ---- issue 17: outbound webhook subscriptions ----------------------------------------------
//
// ```text
// {callgate:wh:<id>}:sub    HASH: `sub` (settings, see codec), `state`, `reason`, `cursor`,
//                           `fence` (the version: the fencing token of the delivery lease)
// {callgate:wh:<id>}:lease  STRING `<holder> <token>`, PX = the lease's length
// {callgate:wh}:ids         SET of every subscription id (the list; its own slot)
// ```
//
// Each subscription's keys share its own hash tag, so its scripts touch one slot; the index is
// written after the hash (two slots, two commands) and a listed id whose hash is missing is
// skipped.

/// The keys of one outbound webhook subscription.
#[derive(Debug, Clone)]
pub struct WebhookKeys {
    pub sub: String,
    pub lease: String,
}

impl Keys {
    /// `id` must have passed [`crate::store::webhooks::valid_id`] (no braces in it).
    pub fn webhook(&self, id: &str) -> WebhookKeys {
        let tag = format!("{{{}:wh:{id}}}:", self.prefix);
        WebhookKeys {
            sub: format!("{tag}sub"),
            lease: format!("{tag}lease"),
        }
    }

    /// The store's layout marker, `{prefix}:layout` (its own slot): absent or `1` for layout
    /// v1, `2:<hot buckets a shard>` for v2 (`layout_v2.rs`, `check_layout`).
    pub fn layout(&self) -> String {
        format!("{{{}}}:layout", self.prefix)
    }

    pub fn webhook_index(&self) -> String {
        format!("{{{}:wh}}:ids", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let tag = keys.shard_prefix(k.shard);
        assert!(
            tag.starts_with(&format!("{{callgate:s{:02}-", k.shard)),
            "{tag}"
        );
        for key in [
            &k.consent,
            &k.lapse,
            &k.history,
            &k.dedup,
            &k.stream,
            &k.due,
            &k.trimmed,
            &k.records_received,
            &k.records_event,
        ] {
            assert!(key.starts_with(&tag), "{key} lacks {tag}");
        }
        assert_eq!(k.member, "919000000000:919876543210");
        assert_eq!(k.consent, format!("{tag}c:919000000000:919876543210"));
        assert_eq!(k.lapse, format!("{tag}x:919000000000:919876543210"));
        let r = keys.requests(&pair("+919000000000", "+919876543210"));
        for key in [&r.requests, &r.sent] {
            assert!(key.starts_with(&tag), "{key} lacks {tag}");
        }
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
            assert_eq!(keys.kind_of(key.as_bytes()), Some(kind), "{key}");
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
            assert_eq!(keys.kind_of(foreign.as_bytes()), None, "{foreign}");
        }
        assert_eq!(keys.scan_pattern(), "{callgate:s*");
        assert_eq!(Keys::new("a*b[1]").scan_pattern(), "{a\\*b\\[1\\]:s*");
    }

    #[test]
    fn issue17_a_subscriptions_keys_share_one_slot_and_are_no_shard_kind() {
        let keys = Keys::new("callgate");
        let k = keys.webhook("wh_0123456789abcdef");
        assert_eq!(k.sub, "{callgate:wh:wh_0123456789abcdef}:sub");
        assert_eq!(key_slot(k.sub.as_bytes()), key_slot(k.lease.as_bytes()));
        assert_eq!(keys.kind_of(k.sub.as_bytes()), None);
        assert_eq!(keys.kind_of(keys.webhook_index().as_bytes()), None);
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

    #[test]
    fn crc16_and_key_slot_match_redis() {
        // The CRC16/XMODEM check value, and slots `CLUSTER KEYSLOT` gives on Redis 7.0.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
    }

    #[test]
    fn shards_spread_evenly_over_the_three_masters_of_a_default_cluster() {
        assert_eq!(SHARDS % 3, 0);
        for prefix in ["callgate", "prod-eu", "retention7", ""] {
            let keys = Keys::new(prefix);
            let slots: Vec<u16> = (0..SHARDS).map(|s| keys.slot(s)).collect();
            let mut per_third = [0; 3];
            for (shard, slot) in slots.iter().enumerate() {
                per_third[slot_third(*slot)] += 1;
                // The rule: shard s is in third s / (SHARDS / 3).
                assert_eq!(slot_third(*slot), shard / (SHARDS / 3), "{prefix} {shard}");
            }
            assert_eq!(per_third, [SHARDS / 3; 3], "{prefix}: {slots:?}");
            let mut distinct = slots.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), SHARDS, "{prefix}: two shards share a slot");
        }
    }

    #[test]
    fn pairs_spread_evenly_over_the_shards_and_so_the_masters() {
        let keys = Keys::new("callgate");
        let mut per_third = [0usize; 3];
        for i in 0..30_000 {
            let p = pair("+919000000000", &format!("+9198{i:08}"));
            per_third[slot_third(keys.slot(shard_of(&p)))] += 1;
        }
        for n in per_third {
            assert!((9_000..=11_000).contains(&n), "{per_third:?}");
        }
    }
}
