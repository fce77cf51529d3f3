//! Decoding Redis replies (RESP2 or RESP3) that are not plain values: bulk strings, key/value
//! pairs, stream entries and ids. A reply of an unexpected shape is `Corrupt`, never a default.

use redis::Value;

use super::codec;
use super::error::corrupt_reply;
use super::layout_v2::{Lapsed, decode_lapsed};
use crate::store::{LoggedEvent, StoreError, StreamId};

pub(super) fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn stream_id_of(v: &Value, what: &str) -> Result<StreamId, StoreError> {
    bytes_of(v)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(StreamId::parse)
        .ok_or_else(|| corrupt_reply(what))
}

/// Pairs of a RESP2 flat array or a RESP3 map.
pub(super) fn pairs_of(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(m) => Some(m.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(a) if a.len() % 2 == 0 => {
            Some(a.chunks(2).map(|kv| (&kv[0], &kv[1])).collect())
        }
        _ => None,
    }
}

/// A stream entry decoded: an event, or (layout v2) an EXPIRED event still to be read from
/// the lapsed grant's entry. (The large variant is the common one: boxing it would allocate
/// for every event read.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Decoded {
    Event(LoggedEvent),
    Lapsed(Lapsed),
}

/// Decodes one stream entry `[id, [field, value, ...]]`.
pub(super) fn decode_entry(shard: usize, entry: &Value) -> Result<Decoded, StoreError> {
    let Value::Array(parts) = entry else {
        return Err(corrupt_reply("stream entry"));
    };
    let [id, fields] = parts.as_slice() else {
        return Err(corrupt_reply("stream entry"));
    };
    let id = stream_id_of(id, "stream entry id")?;
    let (mut kind, mut decision) = (None, None);
    for (k, v) in pairs_of(fields).ok_or_else(|| corrupt_reply("stream entry fields"))? {
        match bytes_of(k) {
            Some(b"k") => kind = bytes_of(v),
            Some(b"d") => decision = bytes_of(v),
            _ => {}
        }
    }
    let (Some(kind), Some(decision)) = (kind, decision) else {
        return Err(StoreError::Corrupt(format!(
            "event {id} in shard {shard} lacks fields"
        )));
    };
    if kind == b"x" {
        return decode_lapsed(shard, id, decision).map(Decoded::Lapsed);
    }
    Ok(Decoded::Event(LoggedEvent {
        shard,
        id,
        event: codec::decode_event(kind, decision)?,
    }))
}

/// The id of the one entry of an `XREVRANGE … COUNT 1` reply, zero for an empty stream.
pub(super) fn newest_id(reply: &Value) -> Result<StreamId, StoreError> {
    match reply {
        Value::Array(entries) => match entries.first() {
            None => Ok(StreamId::ZERO),
            Some(Value::Array(entry)) => entry
                .first()
                .map(|id| stream_id_of(id, "XREVRANGE id"))
                .unwrap_or_else(|| Err(corrupt_reply("XREVRANGE"))),
            Some(_) => Err(corrupt_reply("XREVRANGE")),
        },
        _ => Err(corrupt_reply("XREVRANGE")),
    }
}
