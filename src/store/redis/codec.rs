//! How decisions, history entries and events are spelled inside Redis.
//!
//! Only this file and the Lua scripts next to it know these formats. They are compact and
//! positional rather than self-describing, because Redis memory is the cost of a stored
//! consent (see `callgate-bench redis-memory`). A pair's phone numbers are in its key names, so
//! values about one pair never repeat them.
//!
//! - A **decision body** `D` is a text header the scripts read, then binary evidence only Rust
//!   reads:
//!
//!   ```text
//!   <rank><decided>,<expires>,<source><message id><paired id><response source><sender id><hash>
//!   <stated at>,<stated expiry>,
//!   ```
//!
//!   `rank` is one digit (`0` temporary grant, `1` permanent grant, `2` denial: the tie rank of
//!   [`tie_rank`]); times are milliseconds since the epoch in lower-case base 36 with an
//!   optional `-`; `expires` is empty unless the grant is temporary. `source` is one byte (`w`
//!   WhatsApp, `d` DoubleTick). Each evidence string is a LEB128 length and its UTF-8 bytes, so
//!   any text (`|`, `,`, unicode, empty) round-trips without escaping. The body hash is `x` and
//!   its 32 raw bytes. The last two fields are the sender's stated event time and stated
//!   expiry (empty if none) in base 36, each followed by `,`: what the sender said, kept as
//!   evidence beside the times the rules derived from it.
//! - A **history entry** (`h:` list, one per kept decision) is
//!   `<outcome><dedup id><received>,<D>`: `a` applied or `s` stale, the 16 raw bytes of
//!   [`Decision::dedup_id`], the arrival time in base 36. Issue 14: an entry recorded since the
//!   hash chain exists is `<OUTCOME><dedup id><position>,<prev><hash><received>,<D>`: `A`
//!   applied or `S` stale, its position in the history in base 36, the previous entry's hash
//!   and its own (32 raw bytes each, see [`crate::domain::chain`]). Lower-case entries are
//!   pre-chain.
//! - Issue 14: a **records index** member (`br:`/`be:` sorted sets, all scores 0, read by lex
//!   range) is the [`index_key`](crate::store::records::index_key) of an entry.
//! - A **dedup hash** (`d:`) maps the 16 raw bytes of each kept decision's
//!   [`Decision::dedup_id`] to the 8 raw bytes of its [`Decision::fingerprint`].
//! - A **consent value** (`c:`, and `x:` for a temporary grant) is `<dedup id><D>`: the 16 raw
//!   bytes of [`Decision::dedup_id`] (the scripts' arbitration tie-break, and a check that the
//!   value is whole), then the whole current decision. A check decodes it as is, with no
//!   second read: this repeats the current decision's body that the history also holds (about
//!   150 bytes per pair, twice more for a live temporary grant's lapse record), memory spent
//!   on purpose so that the hot path is a plain `MGET`.
//! - An **event** is a stream entry with fields `k` (`g` granted, `d` denied, `e` expired; issue
//!   13: `G` / `D` for the event of a late attribution) and
//!   `d` = `<business digits>:<customer digits>:<D>`.
//! - issue 13: a decision body may end with optional sections (customer name, attribution) and
//!   a **registration** is `<sent at>,<trailer>`: see the issue 13 block below.
//!
//! - Layout v2 (`docs/redis-layout-v2.md`): the packed entries, hot records and pointers of
//!   [`packed`], which the store does not write yet.
//!
//! Anything that does not decode is [`StoreError::Corrupt`]: a store that cannot read a consent
//! must not answer as if there were none. Decoding checks that the stored dedup id is the
//! decision's own, so a damaged entry cannot pass for another decision.

pub mod packed;

use chrono::{DateTime, Utc};

use crate::domain::rules::tie_rank;
use crate::domain::{
    ChainLink, Choice, ConsentEvent, ConsentRequest, Decision, EventKind, Evidence, Hash,
    HistoryEntry, HistoryOutcome, Pair, PhoneNumber, Source,
};
use crate::store::StoreError;

/// Length of the raw dedup id in a history entry.
pub const DEDUP_ID_LEN: usize = 16;

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt(format!("time {ms} out of range")))
}

/// `n` in lower-case base 36, with a leading `-` if negative (Lua: `tonumber(s, 36)`).
pub fn base36(n: i64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut v = n.unsigned_abs();
    let mut out = Vec::with_capacity(14);
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        out.push(b'-');
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn parse_base36(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(36)?.checked_sub(i64::from(d))?;
    }
    // Accumulated negatively, so i64::MIN round-trips too.
    if negative { Some(v) } else { v.checked_neg() }
}

/// The raw 16 bytes of the decision's dedup id (its 32 hex digits, decoded).
pub fn dedup_bytes(d: &Decision) -> Vec<u8> {
    d.dedup_digest().to_vec()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The decision body `D` (everything but the pair).
pub fn encode_body(d: &Decision) -> Vec<u8> {
    let e = &d.evidence;
    let mut out = Vec::with_capacity(64 + e.message_id.len() + e.paired_message_id.len());
    out.push(b'0' + tie_rank(&d.choice));
    out.extend_from_slice(base36(d.decided_at.timestamp_millis()).as_bytes());
    out.push(b',');
    if let Some(expires) = d.choice.expires_at() {
        out.extend_from_slice(base36(expires.timestamp_millis()).as_bytes());
    }
    out.push(b',');
    out.push(match e.source {
        Source::WhatsApp => b'w',
        Source::DoubleTick => b'd',
    });
    for s in [
        &e.message_id,
        &e.paired_message_id,
        &e.response_source,
        &e.sender_customer_id,
    ] {
        put_str(&mut out, s);
    }
    out.push(b'x');
    out.extend_from_slice(&e.body_sha256);
    out.extend_from_slice(base36(e.stated_at.timestamp_millis()).as_bytes());
    out.push(b',');
    if let Some(t) = e.stated_expires_at {
        out.extend_from_slice(base36(t.timestamp_millis()).as_bytes());
    }
    out.push(b',');
    put_sections(&mut out, d);
    out
}

/// issue 13 (attribution): the optional tagged sections after a body's fixed fields (v1's
/// body and layout v2's packed entry both end with them).
fn put_sections(out: &mut Vec<u8>, d: &Decision) {
    if let Some(name) = &d.customer_name {
        out.push(b'n');
        put_str(out, name);
    }
    if let Some(a) = &d.attribution {
        put_attribution(out, a);
    }
}

// ---- issue 13 (attribution) -------------------------------------------------------------
//
// A decision body may end with tagged sections, in this order, each optional:
//
// - `n<name>`: the customer's name the reply carried (Meta's profile name);
// - `a<request id><team><campaign><label count><key><value>...`: the attribution (strings as
//   everywhere, the count a LEB128 number);
// - `N<name>`: the customer's name from the registration, used only when there is no `n`.
//
// The scripts never read them: `record.lua` and `requests.lua` attribute a reply by appending
// a registration's stored trailer (`a…` and `N…`, see [`encode_request`]) to its body, so a
// registration landing after its reply only ever appends bytes.
//
// A **registration** (`r:` hash, field = request message id) is `<sent at>,<trailer>`: the
// send time in base 36, then exactly the bytes appended to an attributed reply's body.

fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            break;
        }
        out.push(low | 0x80);
    }
}

fn put_attribution(out: &mut Vec<u8>, a: &crate::domain::Attribution) {
    out.push(b'a');
    put_str(out, &a.request_message_id);
    put_str(out, &a.team);
    put_str(out, &a.campaign);
    put_len(out, a.labels.len());
    for (k, v) in &a.labels {
        put_str(out, k);
        put_str(out, v);
    }
}

/// The trailer a reply to `request` gets: its attribution, and its customer name if any.
pub fn request_trailer(request: &ConsentRequest) -> Vec<u8> {
    let mut out = Vec::new();
    put_attribution(&mut out, &request.attribution());
    if let Some(name) = &request.customer_name {
        out.push(b'N');
        put_str(&mut out, name);
    }
    out
}

/// A registration as stored in the pair's `r:` hash: `<sent at>,<trailer>`.
pub fn encode_request(request: &ConsentRequest) -> Vec<u8> {
    let mut out = base36(request.sent_at.timestamp_millis()).into_bytes();
    out.push(b',');
    out.extend_from_slice(&request_trailer(request));
    out
}

/// Decodes a registration of `pair` stored under `request_message_id`.
pub fn decode_request(pair: &Pair, bytes: &[u8]) -> Result<ConsentRequest, StoreError> {
    let mut r = Reader {
        rest: bytes,
        what: "consent request",
    };
    let sent_at = millis(r.time(b',')?)?;
    let (mut attribution, mut own, mut registered) = (None, None, None);
    read_sections(&mut r, &mut attribution, &mut own, &mut registered)?;
    let (Some(a), None) = (attribution, own) else {
        return Err(r.fail("not a registration"));
    };
    Ok(ConsentRequest {
        pair: pair.clone(),
        request_message_id: a.request_message_id,
        team: a.team,
        campaign: a.campaign,
        labels: a.labels,
        sent_at,
        customer_name: registered,
    })
}

/// Reads the optional sections at the end of a body (or a registration) to the end.
fn read_sections(
    r: &mut Reader<'_>,
    attribution: &mut Option<crate::domain::Attribution>,
    own_name: &mut Option<String>,
    registered_name: &mut Option<String>,
) -> Result<(), StoreError> {
    // Each tag at most once, in order.
    let mut next_allowed = 0;
    while !r.rest.is_empty() {
        let (order, tag) = match r.byte()? {
            b'n' => (0, b'n'),
            b'a' => (1, b'a'),
            b'N' => (2, b'N'),
            _ => return Err(r.fail("unknown section")),
        };
        if order < next_allowed {
            return Err(r.fail("sections out of order"));
        }
        next_allowed = order + 1;
        match tag {
            b'n' => *own_name = Some(r.string()?),
            b'N' => *registered_name = Some(r.string()?),
            _ => {
                let request_message_id = r.string()?;
                let team = r.string()?;
                let campaign = r.string()?;
                let count = r.len()?;
                if count > crate::domain::attribution::MAX_LABELS {
                    return Err(r.fail("too many labels"));
                }
                let mut labels = std::collections::BTreeMap::new();
                for _ in 0..count {
                    let k = r.string()?;
                    labels.insert(k, r.string()?);
                }
                *attribution = Some(crate::domain::Attribution {
                    request_message_id,
                    team,
                    campaign,
                    labels,
                });
            }
        }
    }
    Ok(())
}

/// The stream field `k` of the event a late attribution publishes: `G` or `D` (the decision's
/// own kind in upper case), so the event says the consent did not change, its attribution did.
pub fn late_event_kind_code(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Denied => "D",
        _ => "G",
    }
}
// ---- end issue 13 -----------------------------------------------------------------------

/// Reads a value front to back; every read that runs out or finds the wrong thing is corrupt.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn fail(&self, why: &str) -> StoreError {
        corrupt(format!("{}: {why}", self.what))
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        let (b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.fail("truncated"))?;
        self.rest = rest;
        Ok(*b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < n {
            return Err(self.fail("truncated"));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Bytes up to (not including) the next `sep`, which is consumed.
    fn until(&mut self, sep: u8) -> Result<&'a [u8], StoreError> {
        let at = self
            .rest
            .iter()
            .position(|b| *b == sep)
            .ok_or_else(|| self.fail("missing separator"))?;
        let field = &self.rest[..at];
        self.rest = &self.rest[at + 1..];
        Ok(field)
    }

    fn time(&mut self, sep: u8) -> Result<i64, StoreError> {
        let field = self.until(sep)?;
        parse_base36(field).ok_or_else(|| self.fail("unreadable time"))
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail("not UTF-8"))
    }

    /// A LEB128 length (at most five bytes).
    fn len(&mut self) -> Result<usize, StoreError> {
        let mut len: usize = 0;
        for shift in (0..).step_by(7).take(5) {
            let b = self.byte()?;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(len);
            }
        }
        Err(self.fail("length too long"))
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.fail("trailing bytes"))
        }
    }
}

fn decode_body(pair: Pair, r: &mut Reader<'_>) -> Result<Decision, StoreError> {
    let rank = r.byte()?;
    let decided_at = millis(r.time(b',')?)?;
    let expires = r.until(b',')?;
    let choice = match (rank, expires.is_empty()) {
        (b'1', true) => Choice::GrantPermanent,
        (b'2', true) => Choice::Deny,
        (b'0', false) => Choice::GrantTemporary {
            expires_at: millis(parse_base36(expires).ok_or_else(|| r.fail("unreadable expiry"))?)?,
        },
        _ => return Err(r.fail("unknown choice")),
    };
    let source = match r.byte()? {
        b'w' => Source::WhatsApp,
        b'd' => Source::DoubleTick,
        _ => return Err(r.fail("unknown source")),
    };
    let message_id = r.string()?;
    let paired_message_id = r.string()?;
    let response_source = r.string()?;
    let sender_customer_id = r.string()?;
    let body_sha256 = match r.byte()? {
        b'x' => r.array::<32>()?,
        _ => return Err(r.fail("unknown body hash form")),
    };
    let stated_at = millis(r.time(b',')?)?;
    let stated_expires_at = match r.until(b',')? {
        b"" => None,
        t => Some(millis(
            parse_base36(t).ok_or_else(|| r.fail("unreadable stated expiry"))?,
        )?),
    };
    // issue 13 (attribution): the optional sections.
    let (mut attribution, mut own_name, mut registered_name) = (None, None, None);
    read_sections(r, &mut attribution, &mut own_name, &mut registered_name)?;
    let customer_name = own_name.or(registered_name);
    r.end()?;
    Ok(Decision {
        pair,
        choice,
        decided_at,
        evidence: Evidence {
            source,
            message_id,
            paired_message_id,
            response_source,
            sender_customer_id,
            body_sha256,
            stated_at,
            stated_expires_at,
        },
        attribution,
        customer_name,
    })
}

/// A history entry as `record.lua` writes it (for tests and tools; the script builds its own).
pub fn encode_history(
    d: &Decision,
    outcome: HistoryOutcome,
    received_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = vec![match outcome {
        HistoryOutcome::Applied => b'a',
        HistoryOutcome::Stale => b's',
    }];
    out.extend_from_slice(&dedup_bytes(d));
    out.extend_from_slice(base36(received_at.timestamp_millis()).as_bytes());
    out.push(b',');
    out.extend_from_slice(&encode_body(d));
    out
}

/// Decodes one history entry of `pair` (without its chain link).
pub fn decode_history(pair: &Pair, bytes: &[u8]) -> Result<HistoryEntry, StoreError> {
    decode_history_linked(pair, bytes).map(|(entry, _)| entry)
}

// ---- issue 14: chained history entries -------------------------------------------------

/// The chain part of an entry as `record.lua` writes it after the dedup id:
/// `<position>,<prev><hash>` (see the module docs).
pub fn encode_link(link: &ChainLink) -> Vec<u8> {
    let mut out = base36(link.position as i64).into_bytes();
    out.push(b',');
    out.extend_from_slice(&link.prev);
    out.extend_from_slice(&link.hash);
    out
}

/// A chained history entry as `record.lua` writes it (for tests and tools).
pub fn encode_history_linked(
    d: &Decision,
    outcome: HistoryOutcome,
    received_at: DateTime<Utc>,
    link: &ChainLink,
) -> Vec<u8> {
    let mut out = vec![match outcome {
        HistoryOutcome::Applied => b'A',
        HistoryOutcome::Stale => b'S',
    }];
    out.extend_from_slice(&dedup_bytes(d));
    out.extend_from_slice(&encode_link(link));
    out.extend_from_slice(base36(received_at.timestamp_millis()).as_bytes());
    out.push(b',');
    out.extend_from_slice(&encode_body(d));
    out
}

/// The hash stored in a raw history entry, read the way `record.lua` reads the chain tip:
/// `None` for a pre-chain entry (or one too damaged to hold a hash).
pub fn stored_hash(bytes: &[u8]) -> Option<Hash> {
    if !matches!(bytes.first(), Some(b'A' | b'S')) {
        return None;
    }
    let rest = bytes.get(1 + DEDUP_ID_LEN..)?;
    let comma = rest.iter().position(|b| *b == b',')?;
    rest.get(comma + 1 + 32..comma + 1 + 64)?.try_into().ok()
}

/// Decodes one history entry of `pair` with its chain link (`None`: pre-chain).
pub fn decode_history_linked(
    pair: &Pair,
    bytes: &[u8],
) -> Result<(HistoryEntry, Option<ChainLink>), StoreError> {
    let mut r = Reader {
        rest: bytes,
        what: "history entry",
    };
    let (outcome, chained) = match r.byte()? {
        b'a' => (HistoryOutcome::Applied, false),
        b's' => (HistoryOutcome::Stale, false),
        b'A' => (HistoryOutcome::Applied, true),
        b'S' => (HistoryOutcome::Stale, true),
        _ => return Err(r.fail("unknown outcome")),
    };
    let id = r.take(DEDUP_ID_LEN)?;
    let link = if chained {
        let position = u64::try_from(r.time(b',')?).map_err(|_| r.fail("negative position"))?;
        let prev = r.array::<32>()?;
        let hash = r.array::<32>()?;
        Some(ChainLink {
            position,
            prev,
            hash,
        })
    } else {
        None
    };
    let received_at = millis(r.time(b',')?)?;
    let decision = decode_body(pair.clone(), &mut r)?;
    if dedup_bytes(&decision) != id {
        return Err(corrupt(
            "history entry: dedup id does not match the decision",
        ));
    }
    Ok((
        HistoryEntry {
            decision,
            outcome,
            received_at,
        },
        link,
    ))
}

/// A consent value `<dedup id><D>` as `record.lua` writes it to `c:` and `x:` (for tests and
/// tools; the script builds its own).
pub fn encode_consent(d: &Decision) -> Vec<u8> {
    let mut out = dedup_bytes(d);
    out.extend_from_slice(&encode_body(d));
    out
}

/// Decodes a consent value (`c:` or `x:`) of `pair`: what a check reads.
pub fn decode_consent(pair: &Pair, bytes: &[u8]) -> Result<Decision, StoreError> {
    let mut r = Reader {
        rest: bytes,
        what: "consent value",
    };
    let id = r.take(DEDUP_ID_LEN)?;
    let decision = decode_body(pair.clone(), &mut r)?;
    if dedup_bytes(&decision) != id {
        return Err(corrupt(
            "consent value: dedup id does not match the decision",
        ));
    }
    Ok(decision)
}

/// The stream field `k` for an event kind.
pub fn event_kind_code(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Granted => "g",
        EventKind::Denied => "d",
        EventKind::Expired => "e",
    }
}

/// The stream field `d` of an event: the pair, then the decision body (as the scripts write it).
pub fn encode_event_decision(d: &Decision) -> Vec<u8> {
    let mut out =
        format!("{}:{}:", d.pair.business.digits(), d.pair.customer.digits()).into_bytes();
    out.extend_from_slice(&encode_body(d));
    out
}

/// Rebuilds an event from its stream fields `k` and `d`.
pub fn decode_event(kind: &[u8], decision: &[u8]) -> Result<ConsentEvent, StoreError> {
    let (kind, late_attribution) = match kind {
        b"g" => (EventKind::Granted, false),
        b"d" => (EventKind::Denied, false),
        b"e" => (EventKind::Expired, false),
        // issue 13 (attribution): a late attribution's event.
        b"G" => (EventKind::Granted, true),
        b"D" => (EventKind::Denied, true),
        other => {
            return Err(corrupt(format!(
                "event kind {:?}",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let mut r = Reader {
        rest: decision,
        what: "event",
    };
    let phone = |digits: &[u8]| {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| PhoneNumber::from_digits(d).ok())
            // Never the digits themselves: they may be (most of) a phone number.
            .ok_or_else(|| corrupt("event: unreadable phone number"))
    };
    let business = phone(r.until(b':')?)?;
    let customer = phone(r.until(b':')?)?;
    Ok(ConsentEvent {
        kind,
        decision: decode_body(Pair::new(business, customer), &mut r)?,
        late_attribution,
    })
}

// ---- issue 17: outbound webhook subscription settings ---------------------------------------
//
// The `sub` field of a subscription's hash is JSON (read only by Rust, rarely, so plain beats
// compact): `{"url", "keys": [{"k": base64, "r": retire ms or null}], "kinds": "grant,deny",
// "businesses": [E.164], "teams", "campaigns", "created": ms}`. State, reason, cursor and
// version are fields of their own, which the scripts write.

/// The settings of `sub` (everything but state, reason, cursor and version).
pub fn encode_webhook(sub: &crate::domain::Subscription) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::json!({
        "url": sub.url,
        "keys": sub.keys.iter().map(|k| serde_json::json!({
            "k": b64.encode(&k.key),
            "r": k.retire_at.map(|t| t.timestamp_millis()),
        })).collect::<Vec<_>>(),
        "kinds": sub.kinds.to_string(),
        "businesses": sub.businesses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "teams": sub.teams,
        "campaigns": sub.campaigns,
        "created": sub.created_at.timestamp_millis(),
    })
    .to_string()
}

/// A subscription from its stored settings, state and reason.
pub fn decode_webhook(
    id: &str,
    settings: &str,
    state: &str,
    reason: &str,
) -> Result<crate::domain::Subscription, StoreError> {
    use crate::domain::{EventKinds, SigningKey, Subscription, SubscriptionState};
    use base64::Engine as _;
    let bad = |what: &str| corrupt(format!("webhook subscription {id}: {what}"));
    let v: serde_json::Value = serde_json::from_str(settings).map_err(|_| bad("settings"))?;
    let strings = |field: &str| -> Result<Vec<String>, StoreError> {
        v[field]
            .as_array()
            .ok_or_else(|| bad(field))?
            .iter()
            .map(|s| s.as_str().map(str::to_owned).ok_or_else(|| bad(field)))
            .collect()
    };
    let keys = v["keys"]
        .as_array()
        .ok_or_else(|| bad("keys"))?
        .iter()
        .map(|k| {
            let key = k["k"]
                .as_str()
                .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .ok_or_else(|| bad("key"))?;
            let retire_at = match &k["r"] {
                serde_json::Value::Null => None,
                r => Some(millis(r.as_i64().ok_or_else(|| bad("key retirement"))?)?),
            };
            Ok(SigningKey { key, retire_at })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let businesses = strings("businesses")?
        .iter()
        .map(|b| PhoneNumber::parse(b).map_err(|_| bad("business")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Subscription {
        id: id.to_owned(),
        url: v["url"].as_str().ok_or_else(|| bad("url"))?.to_owned(),
        keys,
        kinds: EventKinds::parse(v["kinds"].as_str().ok_or_else(|| bad("kinds"))?)
            .map_err(|_| bad("kinds"))?,
        businesses,
        teams: strings("teams")?,
        campaigns: strings("campaigns")?,
        state: SubscriptionState::parse(state).ok_or_else(|| bad("state"))?,
        reason: reason.to_owned(),
        created_at: millis(v["created"].as_i64().ok_or_else(|| bad("created"))?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair::new(
            PhoneNumber::parse("+919000000000").unwrap(),
            PhoneNumber::parse("+919876543210").unwrap(),
        )
    }

    fn decision(choice: Choice, evidence: Evidence) -> Decision {
        Decision {
            pair: pair(),
            choice,
            decided_at: DateTime::from_timestamp_millis(1_767_000_000_123).unwrap(),
            evidence,
            attribution: None,
            customer_name: None,
        }
    }

    fn evidences() -> Vec<Evidence> {
        let full = Evidence {
            source: Source::WhatsApp,
            message_id: "wamid.HBgLMTIzNDU2Nzg5MBUCABIYFjNFQjBD".into(),
            paired_message_id: "wamid.template|1,2:3".into(),
            response_source: "user_initiated".into(),
            sender_customer_id: "US.13491208655302741918".into(),
            body_sha256: [0xab; 32],
            stated_at: DateTime::from_timestamp_millis(1_767_000_000_123).unwrap(),
            stated_expires_at: Some(DateTime::from_timestamp_millis(253_402_300_000_000).unwrap()),
        };
        let mut out = vec![full.clone()];
        // Separators, escapes and unicode in every string; empty strings; a long id.
        out.push(Evidence {
            source: Source::DoubleTick,
            message_id: "m|x,y:z\\|\u{0}é✓🙂".into(),
            paired_message_id: String::new(),
            response_source: "|".into(),
            sender_customer_id: ",".into(),
            body_sha256: [0; 32],
            stated_at: DateTime::from_timestamp_millis(-5).unwrap(),
            stated_expires_at: None,
        });
        out.push(Evidence {
            message_id: "x".repeat(300),
            paired_message_id: "ünïcödé".into(),
            response_source: String::new(),
            sender_customer_id: String::new(),
            ..full.clone()
        });
        out.push(Evidence {
            body_sha256: std::array::from_fn(|i| i as u8),
            ..full.clone()
        });
        out
    }

    fn choices() -> Vec<Choice> {
        vec![
            Choice::GrantPermanent,
            Choice::Deny,
            Choice::GrantTemporary {
                expires_at: DateTime::from_timestamp_millis(1_767_600_000_456).unwrap(),
            },
            Choice::GrantTemporary {
                expires_at: DateTime::from_timestamp_millis(-5).unwrap(),
            },
        ]
    }

    #[test]
    fn base36_round_trips() {
        for n in [0, 1, 35, 36, -1, -36, 1_767_000_000_123, i64::MAX, i64::MIN] {
            assert_eq!(parse_base36(base36(n).as_bytes()), Some(n), "{n}");
        }
        assert_eq!(base36(1_767_000_000_123), "mjqy6e0r");
        assert_eq!(base36(-71), "-1z");
        for bad in ["", "-", "A", "1 ", "+1", "zzzzzzzzzzzzzzz"] {
            assert_eq!(parse_base36(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn history_entries_round_trip_every_field_and_variant() {
        let received = DateTime::from_timestamp_millis(1_767_000_000_999).unwrap();
        for choice in choices() {
            for evidence in evidences() {
                for outcome in [HistoryOutcome::Applied, HistoryOutcome::Stale] {
                    let d = decision(choice, evidence.clone());
                    let raw = encode_history(&d, outcome, received);
                    let e = decode_history(&pair(), &raw).unwrap();
                    assert_eq!(
                        e,
                        HistoryEntry {
                            decision: d,
                            outcome,
                            received_at: received
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn consent_values_round_trip_every_field_and_variant() {
        for choice in choices() {
            for evidence in evidences() {
                let d = decision(choice, evidence);
                let raw = encode_consent(&d);
                assert_eq!(&raw[..DEDUP_ID_LEN], dedup_bytes(&d).as_slice());
                assert_eq!(&raw[DEDUP_ID_LEN..], encode_body(&d).as_slice());
                assert_eq!(decode_consent(&pair(), &raw).unwrap(), d);
            }
        }
    }

    #[test]
    fn unreadable_consent_values_are_corrupt() {
        let p = pair();
        let good = encode_consent(&decision(choices()[2], evidences()[0].clone()));
        for cut in 0..good.len() {
            assert!(
                matches!(
                    decode_consent(&p, &good[..cut]),
                    Err(StoreError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
        let mut wrong_id = good.clone();
        wrong_id[0] ^= 1;
        let trailing = [good.as_slice(), b"!"].concat();
        // A history entry or the old pointer format is not a consent value.
        let entry = encode_history(
            &decision(choices()[2], evidences()[0].clone()),
            HistoryOutcome::Applied,
            DateTime::from_timestamp_millis(1).unwrap(),
        );
        for raw in [wrong_id, trailing, entry, b"0mjqy6e0r,mk1,3".to_vec()] {
            assert!(
                matches!(decode_consent(&p, &raw), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(&raw)
            );
        }
    }

    #[test]
    fn events_round_trip() {
        for choice in choices() {
            for evidence in evidences() {
                let d = decision(choice, evidence);
                for kind in [EventKind::Granted, EventKind::Denied, EventKind::Expired] {
                    let e =
                        decode_event(event_kind_code(kind).as_bytes(), &encode_event_decision(&d))
                            .unwrap();
                    assert_eq!(
                        e,
                        ConsentEvent {
                            kind,
                            decision: d.clone(),
                            late_attribution: false,
                        }
                    );
                }
            }
        }
    }

    /// issue 13 (attribution): names and attributions round-trip, and a registration's trailer
    /// appended to a body (what the scripts do) decodes as the attributed decision.
    #[test]
    fn attributed_bodies_and_registrations_round_trip() {
        let request = ConsentRequest {
            pair: pair(),
            request_message_id: "wamid.req|1".into(),
            team: "premium".into(),
            campaign: "".into(),
            labels: [("tier".into(), "gold ✓".into()), ("k".into(), "".into())].into(),
            sent_at: DateTime::from_timestamp_millis(1_767_000_000_000).unwrap(),
            customer_name: Some("Asha Rao".into()),
        };
        let raw = encode_request(&request);
        assert_eq!(decode_request(&pair(), &raw).unwrap(), request);
        for own_name in [None, Some("Sheena Nelson".to_string())] {
            let mut d = decision(choices()[2], evidences()[0].clone());
            d.customer_name.clone_from(&own_name);
            let mut body = encode_body(&d);
            body.extend_from_slice(&request_trailer(&request));
            let mut consent = dedup_bytes(&d);
            consent.extend_from_slice(&body);
            let got = decode_consent(&pair(), &consent).unwrap();
            assert_eq!(got.attribution, Some(request.attribution()));
            assert_eq!(
                got.customer_name,
                own_name.or(request.customer_name.clone()),
                "the reply's own name comes first"
            );
            // Encoding the decoded decision gives a body that decodes the same.
            assert_eq!(decode_consent(&pair(), &encode_consent(&got)).unwrap(), got);
            let e = decode_event(b"G", &encode_event_decision(&got)).unwrap();
            assert!(e.late_attribution);
            assert_eq!(e.decision, got);
        }
        // Sections out of order, unknown or repeated are corrupt.
        let d = decision(choices()[0], evidences()[0].clone());
        for tail in [&b"z"[..], b"\x01a", b"n\x01an\x01b", b"N\x01an\x01b", b"Nx"] {
            let mut raw = encode_consent(&d);
            raw.extend_from_slice(tail);
            assert!(decode_consent(&pair(), &raw).is_err(), "{tail:?}");
        }
    }

    #[test]
    fn a_typical_entry_is_small() {
        let d = decision(choices()[0], evidences()[0].clone());
        let raw = encode_history(&d, HistoryOutcome::Applied, d.decided_at);
        // 1 + 16 + 9 + header 11 + source 1 + evidence (38 + 21 + 14 + 23 + 4 length bytes)
        // + hash 33.
        assert!(raw.len() <= 200, "{}", raw.len());
    }

    #[test]
    fn unreadable_values_are_corrupt_not_defaults() {
        let p = pair();
        let good = encode_history(
            &decision(choices()[2], evidences()[0].clone()),
            HistoryOutcome::Applied,
            DateTime::from_timestamp_millis(1).unwrap(),
        );
        let mut bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"a".to_vec(),
            b"x0123456789abcdef1,1a,,w".to_vec(),
            // Every truncation of a good entry.
            good[..good.len() - 1].to_vec(),
            good[..20].to_vec(),
            // Trailing garbage.
            [good.as_slice(), b"!"].concat(),
        ];
        // Another decision's id.
        let mut wrong_id = good.clone();
        wrong_id[1] ^= 1;
        bad.push(wrong_id);
        // A temporary grant without expiry, a permanent one with one.
        let at = 1 + DEDUP_ID_LEN;
        let body_at = at + good[at..].iter().position(|b| *b == b',').unwrap() + 1;
        let mut no_rank = good.clone();
        no_rank[body_at] = b'7';
        bad.push(no_rank);
        let mut permanent_with_expiry = good.clone();
        permanent_with_expiry[body_at] = b'1';
        bad.push(permanent_with_expiry);
        for raw in &bad {
            assert!(
                matches!(decode_history(&p, raw), Err(StoreError::Corrupt(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        for cut in 0..good.len() {
            assert!(decode_history(&p, &good[..cut]).is_err(), "cut at {cut}");
        }
        let event = encode_event_decision(&decision(choices()[0], evidences()[0].clone()));
        for cut in 0..event.len() {
            assert!(decode_event(b"g", &event[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            decode_event(b"z", &event),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_event(b"g", b"12:34:1a,,w"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
