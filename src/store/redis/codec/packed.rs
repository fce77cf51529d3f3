//! The packed formats of Redis layout v2 (`docs/redis-layout-v2.md`, step 1): binary history
//! entries, hot records, entry pointers and index records. **The store does not write them
//! yet**: today they are the formats `callgate-bench redis-memory-floor` and
//! `redis-record-prototype` measure, kept here so the store, the bench and the migration
//! share one definition when layout v2 is built.
//!
//! A **pointer** names an entry: 3 bytes of segment number and 2 of offset in it.
//!
//! An **entry** (one kept decision, appended to a per-shard segment string):
//!
//! ```text
//! flags (1)  bits 0-1 rank (0 temporary grant, 1 permanent grant, 2 denial), 2 stale,
//!            3 DoubleTick, 4 stated time differs, 5 stated expiry differs, 6 back pointer
//! length (2) of the whole entry
//! dedup tag (4)   the first bytes of the decision's dedup id
//! hash (32)       the entry's own chain hash (the previous one is the prior entry's own)
//! [back pointer (5)]   the pair's previous entry
//! customer (7)     the pair's customer (the business is in every key that leads here), so an
//!                  index record (a pointer) names its pair
//! decided (6)  [expires (6)]  arrival lag (zig-zag varint)  [stated (8)]  [stated expiry:
//! 0, or 1 and 8 bytes]
//! message id, paired id, response source, sender id   (packed texts)
//! body hash (32)
//! sections   the optional customer name and attribution, as in the v1 body (to the end)
//! ```
//!
//! Times callgate derives (decided, expires) are signed 48-bit milliseconds (about 2490 BC to
//! AD 6429); what a sender stated is kept whatever it said, as signed 64-bit milliseconds
//! (only when it differs from the derived time). A derived time outside its range is
//! refused, never truncated. The position and the dedup id are not stored: the position is
//! the entry's place in its pair's chain, and the dedup id is derived from the decision (the
//! tag lets a dedup walk skip entries without decoding them, and decoding checks it).
//!
//! A **hot record** (a field of a bucket hash; what a check and the record script read):
//! flags (bits 0-1 rank, 2 an expiry follows, 3 the newest entry is not the current one),
//! decided (6), [expires (6)], the current decision's dedup id (16), a pointer to its entry,
//! [a pointer to the pair's newest entry], the pair's history length (varint: the next
//! entry's chain position).

use chrono::{DateTime, Utc};

use super::{Reader, corrupt, millis, put_len, read_sections};
use crate::domain::rules::tie_rank;
use crate::domain::{Choice, Decision, Evidence, Hash, HistoryEntry, HistoryOutcome, Pair, Source};
use crate::domain::{PhoneNumber, attribution::Attribution};
use crate::store::StoreError;

/// Where an entry is: its segment's number in its shard, and its offset in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// Below 2^24.
    pub segment: u32,
    pub offset: u16,
}

/// Bytes of an encoded [`Pointer`].
pub const POINTER_LEN: usize = 5;

/// Bytes of an entry before its back pointer: flags, length, dedup tag, hash.
pub const ENTRY_HEAD_LEN: usize = 1 + 2 + 4 + 32;

const STALE: u8 = 1 << 2;
const DOUBLETICK: u8 = 1 << 3;
const STATED_DIFFERS: u8 = 1 << 4;
const STATED_EXPIRY_DIFFERS: u8 = 1 << 5;
const BACK_POINTER: u8 = 1 << 6;

/// The 48-bit range of a packed time.
const TIME_LIMIT: i64 = 1 << 47;

impl Pointer {
    pub fn encode(self) -> Result<[u8; POINTER_LEN], StoreError> {
        if self.segment >= 1 << 24 {
            return Err(corrupt("packed pointer: segment number too large"));
        }
        let s = self.segment.to_be_bytes();
        let o = self.offset.to_be_bytes();
        Ok([s[1], s[2], s[3], o[0], o[1]])
    }

    pub fn decode(bytes: &[u8]) -> Option<Pointer> {
        let b: [u8; POINTER_LEN] = bytes.get(..POINTER_LEN)?.try_into().ok()?;
        Some(Pointer {
            segment: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            offset: u16::from_be_bytes([b[3], b[4]]),
        })
    }
}

/// A phone number's digits as 7 big-endian bytes of the number (E.164: at most 15 digits,
/// no leading zero, so it fits in 50 bits).
pub fn phone_bytes(number: &PhoneNumber) -> [u8; 7] {
    let n: u64 = number
        .digits()
        .parse()
        .expect("a PhoneNumber is 1 to 15 digits");
    let b = n.to_be_bytes();
    [b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// The phone number 7 bytes name.
pub fn phone_from_bytes(bytes: &[u8; 7]) -> Result<PhoneNumber, StoreError> {
    let mut b = [0u8; 8];
    b[1..].copy_from_slice(bytes);
    PhoneNumber::from_digits(&u64::from_be_bytes(b).to_string())
        .map_err(|_| corrupt("packed phone number"))
}

/// A pair as a hot-record field: business then customer, 7 bytes each.
pub fn pair_field(pair: &Pair) -> [u8; 14] {
    let mut out = [0; 14];
    out[..7].copy_from_slice(&phone_bytes(&pair.business));
    out[7..].copy_from_slice(&phone_bytes(&pair.customer));
    out
}

fn put_time(out: &mut Vec<u8>, t: DateTime<Utc>) -> Result<(), StoreError> {
    let ms = t.timestamp_millis();
    if !(-TIME_LIMIT..TIME_LIMIT).contains(&ms) {
        return Err(corrupt("packed time out of range"));
    }
    out.extend_from_slice(&ms.to_be_bytes()[2..]);
    Ok(())
}

fn get_time(r: &mut Reader<'_>) -> Result<DateTime<Utc>, StoreError> {
    let b = r.array::<6>()?;
    // Sign-extend the 48 bits.
    let fill = if b[0] & 0x80 != 0 { 0xff } else { 0 };
    millis(i64::from_be_bytes([
        fill, fill, b[0], b[1], b[2], b[3], b[4], b[5],
    ]))
}

/// A time a sender stated: signed 64-bit milliseconds.
fn get_stated(r: &mut Reader<'_>) -> Result<DateTime<Utc>, StoreError> {
    millis(i64::from_be_bytes(r.array::<8>()?))
}

/// The choice whose rank is in the low two bits of `flags`; a temporary grant's expiry is
/// read next.
fn get_choice(r: &mut Reader<'_>, flags: u8) -> Result<Choice, StoreError> {
    Ok(match flags & 3 {
        0 => Choice::GrantTemporary {
            expires_at: get_time(r)?,
        },
        1 => Choice::GrantPermanent,
        2 => Choice::Deny,
        _ => return Err(r.fail("unknown choice")),
    })
}

/// The base64url alphabet: texts made of it are packed 6 bits a character.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Texts spelled as one byte.
const KNOWN: [&str; 3] = ["", "user_initiated", "business_initiated"];

/// A text, as compactly as it round-trips: a known text (one byte `0x80 | index`), base64url
/// text with or without a `wamid.` prefix (tag 2 or 1, its length, 6 bits a character), or
/// any other text (tag 0, its length, its UTF-8 bytes).
pub fn put_text(out: &mut Vec<u8>, s: &str) {
    if let Some(known) = KNOWN.iter().position(|k| *k == s) {
        out.push(0x80 | known as u8);
        return;
    }
    let (tag, body) = match s.strip_prefix("wamid.") {
        Some(rest) if !rest.is_empty() => (1, rest),
        _ => (2, s),
    };
    let sixes: Option<Vec<u8>> = body
        .bytes()
        .map(|b| ALPHABET.iter().position(|a| *a == b).map(|p| p as u8))
        .collect();
    let Some(sixes) = sixes else {
        out.push(0);
        put_len(out, s.len());
        out.extend_from_slice(s.as_bytes());
        return;
    };
    out.push(tag);
    put_len(out, body.len());
    let (mut acc, mut bits) = (0u32, 0);
    for six in sixes {
        acc = (acc << 6) | u32::from(six);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8);
    }
}

fn get_text(r: &mut Reader<'_>) -> Result<String, StoreError> {
    let tag = r.byte()?;
    if tag & 0x80 != 0 {
        return KNOWN
            .get(usize::from(tag & 0x7f))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| r.fail("unknown packed text"));
    }
    let len = r.len()?;
    if tag == 0 {
        let bytes = r.take(len)?;
        return String::from_utf8(bytes.to_vec()).map_err(|_| r.fail("not UTF-8"));
    }
    if tag > 2 {
        return Err(r.fail("unknown text form"));
    }
    let packed = r.take(
        len.checked_mul(6)
            .ok_or_else(|| r.fail("length"))?
            .div_ceil(8),
    )?;
    let mut text = String::with_capacity(len + 6);
    if tag == 1 {
        text.push_str("wamid.");
    }
    let (mut acc, mut bits, mut chars) = (0u32, 0, 0);
    for b in packed {
        acc = ((acc << 8) | u32::from(*b)) & 0xffff;
        bits += 8;
        while bits >= 6 && chars < len {
            bits -= 6;
            text.push(char::from(ALPHABET[((acc >> bits) & 63) as usize]));
            chars += 1;
        }
    }
    Ok(text)
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut v = v;
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

fn get_varint(r: &mut Reader<'_>) -> Result<u64, StoreError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = r.byte()?;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(r.fail("varint too long"))
}

/// One kept decision as an entry, with its own chain hash and its pair's previous entry.
pub fn encode_entry(
    entry: &HistoryEntry,
    hash: &Hash,
    previous: Option<Pointer>,
) -> Result<Vec<u8>, StoreError> {
    let d = &entry.decision;
    let e = &d.evidence;
    let stated_differs = e.stated_at != d.decided_at;
    let stated_expiry_differs = e.stated_expires_at != d.choice.expires_at();
    let flags = tie_rank(&d.choice)
        | if entry.outcome == HistoryOutcome::Stale {
            STALE
        } else {
            0
        }
        | if e.source == Source::DoubleTick {
            DOUBLETICK
        } else {
            0
        }
        | if stated_differs { STATED_DIFFERS } else { 0 }
        | if stated_expiry_differs {
            STATED_EXPIRY_DIFFERS
        } else {
            0
        }
        | if previous.is_some() { BACK_POINTER } else { 0 };
    let mut out = Vec::with_capacity(160);
    out.push(flags);
    out.extend_from_slice(&[0, 0]); // the length, below
    out.extend_from_slice(&d.dedup_digest()[..4]);
    out.extend_from_slice(hash);
    if let Some(p) = previous {
        out.extend_from_slice(&p.encode()?);
    }
    out.extend_from_slice(&phone_bytes(&d.pair.customer));
    put_time(&mut out, d.decided_at)?;
    if let Some(expires) = d.choice.expires_at() {
        put_time(&mut out, expires)?;
    }
    let lag = (entry.received_at - d.decided_at).num_milliseconds();
    put_varint(&mut out, ((lag << 1) ^ (lag >> 63)) as u64);
    if stated_differs {
        out.extend_from_slice(&e.stated_at.timestamp_millis().to_be_bytes());
    }
    if stated_expiry_differs {
        match e.stated_expires_at {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.timestamp_millis().to_be_bytes());
            }
        }
    }
    for s in [
        &e.message_id,
        &e.paired_message_id,
        &e.response_source,
        &e.sender_customer_id,
    ] {
        put_text(&mut out, s);
    }
    out.extend_from_slice(&e.body_sha256);
    super::put_sections(&mut out, d);
    let len = u16::try_from(out.len()).map_err(|_| corrupt("packed entry too long"))?;
    out[1..3].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// The length of the entry whose first bytes are `head` (at least 3 of them).
pub fn entry_len(head: &[u8]) -> Option<usize> {
    Some(usize::from(u16::from_be_bytes([
        *head.get(1)?,
        *head.get(2)?,
    ])))
}

/// An entry read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedEntry {
    pub entry: HistoryEntry,
    pub hash: Hash,
    pub previous: Option<Pointer>,
}

/// Decodes the entry at the start of `bytes`, which must be `pair`'s (where it was found
/// says so). Returns it and its length. Anything malformed, another customer's entry, or a
/// dedup tag that is not the decision's own, is [`StoreError::Corrupt`].
pub fn decode_entry(pair: &Pair, bytes: &[u8]) -> Result<(PackedEntry, usize), StoreError> {
    let (read, len) = decode_entry_of(&pair.business, bytes)?;
    if read.entry.decision.pair != *pair {
        return Err(corrupt("packed entry: another pair's"));
    }
    Ok((read, len))
}

/// Decodes the entry at the start of `bytes`, of one of `business`'s pairs (an index record
/// led here); the customer is the entry's own.
pub fn decode_entry_of(
    business: &PhoneNumber,
    bytes: &[u8],
) -> Result<(PackedEntry, usize), StoreError> {
    let len = entry_len(bytes)
        .filter(|n| (ENTRY_HEAD_LEN..=bytes.len()).contains(n))
        .ok_or_else(|| corrupt("packed entry: truncated"))?;
    let mut r = Reader {
        rest: &bytes[..len],
        what: "packed entry",
    };
    let flags = r.byte()?;
    if flags & 0x80 != 0 {
        return Err(r.fail("unknown flag"));
    }
    r.take(2)?;
    let tag = r.array::<4>()?;
    let hash = r.array::<32>()?;
    let previous = if flags & BACK_POINTER != 0 {
        Some(Pointer::decode(r.take(POINTER_LEN)?).ok_or_else(|| r.fail("pointer"))?)
    } else {
        None
    };
    let customer = phone_from_bytes(&r.array::<7>()?)?;
    let decided_at = get_time(&mut r)?;
    let choice = get_choice(&mut r, flags)?;
    let zigzag = get_varint(&mut r)?;
    let lag = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
    let received_at = decided_at
        .checked_add_signed(chrono::Duration::milliseconds(lag))
        .ok_or_else(|| r.fail("arrival time"))?;
    let stated_at = if flags & STATED_DIFFERS != 0 {
        get_stated(&mut r)?
    } else {
        decided_at
    };
    let stated_expires_at = if flags & STATED_EXPIRY_DIFFERS != 0 {
        match r.byte()? {
            0 => None,
            1 => Some(get_stated(&mut r)?),
            _ => return Err(r.fail("stated expiry")),
        }
    } else {
        choice.expires_at()
    };
    let message_id = get_text(&mut r)?;
    let paired_message_id = get_text(&mut r)?;
    let response_source = get_text(&mut r)?;
    let sender_customer_id = get_text(&mut r)?;
    let body_sha256 = r.array::<32>()?;
    let (mut attribution, mut own_name, mut registered_name): (Option<Attribution>, _, _) =
        (None, None, None);
    read_sections(
        &mut r,
        &mut attribution,
        &mut own_name,
        &mut registered_name,
    )?;
    let decision = Decision {
        pair: Pair::new(business.clone(), customer),
        choice,
        decided_at,
        evidence: Evidence {
            source: if flags & DOUBLETICK != 0 {
                Source::DoubleTick
            } else {
                Source::WhatsApp
            },
            message_id,
            paired_message_id,
            response_source,
            sender_customer_id,
            body_sha256,
            stated_at,
            stated_expires_at,
        },
        attribution,
        customer_name: own_name.or(registered_name),
    };
    if decision.dedup_digest()[..4] != tag {
        return Err(corrupt(
            "packed entry: not the decision its dedup tag names",
        ));
    }
    let outcome = if flags & STALE != 0 {
        HistoryOutcome::Stale
    } else {
        HistoryOutcome::Applied
    };
    let entry = HistoryEntry {
        decision,
        outcome,
        received_at,
    };
    Ok((
        PackedEntry {
            entry,
            hash,
            previous,
        },
        len,
    ))
}

/// What a check and the record script read of a pair: its current decision's rank and
/// times, that decision's dedup id (the ordering rule's tie-break), where its entry is, and
/// where the pair's newest entry is (the chain tip and the start of a dedup walk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotRecord {
    pub choice: Choice,
    pub decided_at: DateTime<Utc>,
    pub dedup_id: [u8; 16],
    pub current: Pointer,
    pub newest: Pointer,
    /// Entries in the pair's history: the position the next one is chained at.
    pub count: u64,
}

impl HotRecord {
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::with_capacity(40);
        let expires = self.choice.expires_at();
        out.push(
            tie_rank(&self.choice)
                | if expires.is_some() { 4 } else { 0 }
                | if self.newest != self.current { 8 } else { 0 },
        );
        put_time(&mut out, self.decided_at)?;
        if let Some(t) = expires {
            put_time(&mut out, t)?;
        }
        out.extend_from_slice(&self.dedup_id);
        out.extend_from_slice(&self.current.encode()?);
        if self.newest != self.current {
            out.extend_from_slice(&self.newest.encode()?);
        }
        put_varint(&mut out, self.count);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<HotRecord, StoreError> {
        let mut r = Reader {
            rest: bytes,
            what: "hot record",
        };
        let flags = r.byte()?;
        if flags & !0x0f != 0 || (flags & 3 == 0) != (flags & 4 != 0) {
            return Err(r.fail("flags"));
        }
        let decided_at = get_time(&mut r)?;
        let choice = get_choice(&mut r, flags)?;
        let dedup_id = r.array::<16>()?;
        let pointer = |r: &mut Reader<'_>| {
            Pointer::decode(r.take(POINTER_LEN)?).ok_or_else(|| r.fail("pointer"))
        };
        let current = pointer(&mut r)?;
        let newest = if flags & 8 != 0 {
            pointer(&mut r)?
        } else {
            current
        };
        let count = get_varint(&mut r)?;
        r.end()?;
        Ok(HotRecord {
            choice,
            decided_at,
            dedup_id,
            current,
            newest,
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn phone() -> impl Strategy<Value = PhoneNumber> {
        "[1-9][0-9]{6,14}".prop_map(|d| PhoneNumber::from_digits(&d).unwrap())
    }

    /// A time in the packed range, to the millisecond.
    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        (-TIME_LIMIT..TIME_LIMIT).prop_map(|ms| DateTime::from_timestamp_millis(ms).unwrap())
    }

    /// Any time chrono holds, to the millisecond: what a sender states is kept as said.
    fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
        let (min, max) = (
            DateTime::<Utc>::MIN_UTC.timestamp_millis(),
            DateTime::<Utc>::MAX_UTC.timestamp_millis(),
        );
        (min..=max).prop_map(|ms| DateTime::from_timestamp_millis(ms).unwrap())
    }

    /// Texts of every packed form: known ones, message ids, base64url, anything.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(&["", "user_initiated", "business_initiated", "wamid."][..])
                .prop_map(str::to_owned),
            "wamid\\.[A-Za-z0-9_=-]{0,60}",
            "[A-Za-z0-9_-]{0,40}",
            ".{0,24}",
        ]
    }

    fn attribution() -> impl Strategy<Value = Option<Attribution>> {
        prop::option::of(
            (
                text(),
                text(),
                text(),
                prop::collection::btree_map(text(), text(), 0..3),
            )
                .prop_map(|(request_message_id, team, campaign, labels)| Attribution {
                    request_message_id,
                    team,
                    campaign,
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                }),
        )
    }

    prop_compose! {
        fn decision()(
            business in phone(),
            customer in phone(),
            choice in prop_oneof![
                Just(None), time().prop_map(Some)
            ].prop_flat_map(|t| prop_oneof![
                Just(Choice::GrantPermanent),
                Just(Choice::Deny),
                Just(t.map_or(Choice::Deny, |expires_at| Choice::GrantTemporary { expires_at })),
            ]),
            decided_at in time(),
            stated_at in prop::option::of(any_time()),
            stated_expires_at in prop::option::of(prop::option::of(any_time())),
            doubletick in any::<bool>(),
            texts in (text(), text(), text(), text()),
            body_sha256 in any::<[u8; 32]>(),
            attribution in attribution(),
            customer_name in prop::option::of(text()),
        ) -> Decision {
            Decision {
                pair: Pair::new(business, customer),
                decided_at,
                evidence: Evidence {
                    source: if doubletick { Source::DoubleTick } else { Source::WhatsApp },
                    message_id: texts.0,
                    paired_message_id: texts.1,
                    response_source: texts.2,
                    sender_customer_id: texts.3,
                    body_sha256,
                    stated_at: stated_at.unwrap_or(decided_at),
                    stated_expires_at: stated_expires_at.unwrap_or(choice.expires_at()),
                },
                choice,
                attribution,
                customer_name,
            }
        }
    }

    fn pointer() -> impl Strategy<Value = Pointer> {
        (0u32..1 << 24, any::<u16>()).prop_map(|(segment, offset)| Pointer { segment, offset })
    }

    proptest! {
        #[test]
        fn an_entry_round_trips_with_every_piece_of_evidence(
            d in decision(),
            lag in -10_000_000i64..10_000_000_000,
            stale in any::<bool>(),
            hash in any::<[u8; 32]>(),
            previous in prop::option::of(pointer()),
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let Some(received_at) = d.decided_at.checked_add_signed(chrono::Duration::milliseconds(lag)) else {
                return Ok(());
            };
            let entry = HistoryEntry {
                decision: d.clone(),
                outcome: if stale { HistoryOutcome::Stale } else { HistoryOutcome::Applied },
                received_at,
            };
            let mut bytes = encode_entry(&entry, &hash, previous).unwrap();
            let len = bytes.len();
            // Entries sit back to back in a segment: decoding stops at the entry's own length.
            bytes.extend_from_slice(&tail);
            let (back, used) = decode_entry(&d.pair, &bytes).unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(back, PackedEntry { entry, hash, previous });
        }

        #[test]
        fn a_damaged_entry_is_refused_or_read_as_itself_never_as_another_decision(
            d in decision(),
            hash in any::<[u8; 32]>(),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let entry = HistoryEntry { decision: d.clone(), outcome: HistoryOutcome::Applied, received_at: d.decided_at };
            let mut bytes = encode_entry(&entry, &hash, None).unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok((back, _)) = decode_entry(&d.pair, &bytes) {
                // A flipped byte the decoder accepts can only be one the dedup id does not
                // cover (the outcome, arrival, stated times, response source, body hash,
                // sections or the hash): the sender and message id still name this decision.
                prop_assert_eq!(back.entry.decision.dedup_digest(), d.dedup_digest());
            }
        }

        #[test]
        fn a_hot_record_round_trips(
            d in decision(),
            current in pointer(),
            newest in prop::option::of(pointer()),
            count in any::<u64>(),
        ) {
            let hot = HotRecord {
                choice: d.choice,
                decided_at: d.decided_at,
                dedup_id: d.dedup_digest(),
                current,
                newest: newest.unwrap_or(current),
                count,
            };
            prop_assert_eq!(HotRecord::decode(&hot.encode().unwrap()).unwrap(), hot);
        }

        #[test]
        fn a_phone_number_round_trips_in_seven_bytes(p in phone()) {
            prop_assert_eq!(phone_from_bytes(&phone_bytes(&p)).unwrap(), p);
        }
    }

    #[test]
    fn a_time_outside_48_bits_is_refused_not_truncated() {
        let mut out = Vec::new();
        let far = DateTime::from_timestamp_millis(TIME_LIMIT).unwrap();
        assert!(put_time(&mut out, far).is_err());
        assert!(
            Pointer {
                segment: 1 << 24,
                offset: 0
            }
            .encode()
            .is_err()
        );
    }

    #[test]
    fn a_message_id_packs_six_bits_a_character() {
        let mut out = Vec::new();
        put_text(&mut out, "wamid.9OprpBGHpe0z8SWAscW9iytRf_DKE");
        // 29 characters of 6 bits: 22 bytes, a tag and a length.
        assert_eq!(out.len(), 24);
    }
}
