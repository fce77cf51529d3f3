//! Helpers shared by the webhook parsers: field extraction with errors that name the field.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::domain::{PhoneError, PhoneNumber};

/// Why a webhook body was refused. Every variant names what was wrong, so the sender can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("body must be a JSON object")]
    NotAnObject,
    #[error("missing field `{0}`")]
    Missing(String),
    #[error("field `{field}` {problem}")]
    Invalid { field: String, problem: String },
    #[error("field `{field}` {source}")]
    Phone { field: String, source: PhoneError },
}

impl PayloadError {
    /// The field the error is about, if any (reported in the JSON error body).
    pub fn field(&self) -> Option<&str> {
        match self {
            PayloadError::Missing(f)
            | PayloadError::Invalid { field: f, .. }
            | PayloadError::Phone { field: f, .. } => Some(f),
            _ => None,
        }
    }

    pub fn invalid(field: &str, problem: impl Into<String>) -> Self {
        PayloadError::Invalid {
            field: field.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Longest message id accepted (also paired message ids and sender customer ids), in bytes.
/// Meta's `wamid`s are under 100 bytes and DoubleTick's ids are UUIDs; 256 leaves room.
pub const MAX_ID_BYTES: usize = 256;
/// Longest `responseSource` / `response_source` accepted, in bytes (`user_initiated`,
/// `user_action`, `automatic`, ...).
pub const MAX_LABEL_BYTES: usize = 64;

/// Refuses a sender's string that is longer than `max` bytes or holds a control character
/// (a newline in a message id would forge log lines).
fn bounded_text<'a>(field: &str, s: &'a str, max: usize) -> Result<&'a str, PayloadError> {
    if s.len() > max {
        return Err(PayloadError::invalid(
            field,
            format!("is {} bytes long; at most {max} are accepted", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(PayloadError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s)
}

/// Parses a body into a JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, PayloadError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(PayloadError::NotAnObject),
        Err(e) => Err(PayloadError::InvalidJson(e.to_string())),
    }
}

/// A view of one JSON object that reports errors with the field's full path.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>, path: impl Into<String>) -> Self {
        Fields {
            map,
            path: path.into(),
        }
    }

    /// The full name of `key` for error messages.
    pub fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The raw value, treating JSON `null` as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(PayloadError::invalid(&self.name(key), "must be a string")),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str, PayloadError> {
        match self.opt_str(key)? {
            None => Err(PayloadError::Missing(self.name(key))),
            Some(s) if s.trim().is_empty() => {
                Err(PayloadError::invalid(&self.name(key), "must not be empty"))
            }
            Some(s) => Ok(s),
        }
    }

    /// An optional evidence string: at most `max` bytes, no control characters.
    pub fn opt_text(&self, key: &str, max: usize) -> Result<Option<&'a str>, PayloadError> {
        self.opt_str(key)?
            .map(|s| bounded_text(&self.name(key), s, max))
            .transpose()
    }

    /// A required evidence string: not blank, at most `max` bytes, no control characters.
    pub fn text(&self, key: &str, max: usize) -> Result<&'a str, PayloadError> {
        bounded_text(&self.name(key), self.str(key)?, max)
    }

    /// A nested object, or `None` when absent.
    pub fn opt_object(&self, key: &str) -> Result<Option<Fields<'a>>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Fields::new(map, self.name(key)))),
            Some(_) => Err(PayloadError::invalid(&self.name(key), "must be an object")),
        }
    }

    pub fn object(&self, key: &str) -> Result<Fields<'a>, PayloadError> {
        self.opt_object(key)?
            .ok_or_else(|| PayloadError::Missing(self.name(key)))
    }

    /// The objects of an array, each named `key[i]`; an absent array is empty.
    pub fn opt_objects(&self, key: &str) -> Result<Vec<Fields<'a>>, PayloadError> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(PayloadError::invalid(&self.name(key), "must be an array")),
        };
        let name = self.name(key);
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(map) => Ok(Fields::new(map, format!("{name}[{i}]"))),
                _ => Err(PayloadError::invalid(
                    &format!("{name}[{i}]"),
                    "must be an object",
                )),
            })
            .collect()
    }

    /// Like [`Fields::opt_objects`], but the array must be present.
    pub fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>, PayloadError> {
        if self.get(key).is_none() {
            return Err(PayloadError::Missing(self.name(key)));
        }
        self.opt_objects(key)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(PayloadError::invalid(
                &self.name(key),
                "must be true or false",
            )),
        }
    }

    pub fn phone(&self, key: &str) -> Result<PhoneNumber, PayloadError> {
        let raw = self.str(key)?;
        PhoneNumber::parse(raw).map_err(|source| PayloadError::Phone {
            field: self.name(key),
            source,
        })
    }

    /// Unix seconds given as a JSON number or a string of digits.
    pub fn opt_unix_seconds(&self, key: &str) -> Result<Option<DateTime<Utc>>, PayloadError> {
        let secs = match self.get(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
            Some(_) => None,
        };
        let secs = secs.ok_or_else(|| {
            PayloadError::invalid(&self.name(key), "must be Unix seconds (an integer)")
        })?;
        unix_seconds(secs)
            .map(Some)
            .ok_or_else(|| PayloadError::invalid(&self.name(key), "is out of range"))
    }

    pub fn unix_seconds(&self, key: &str) -> Result<DateTime<Utc>, PayloadError> {
        self.opt_unix_seconds(key)?
            .ok_or_else(|| PayloadError::Missing(self.name(key)))
    }

    /// An RFC 3339 / ISO-8601 instant such as `2026-01-15T10:30:00.000Z`.
    pub fn rfc3339(&self, key: &str) -> Result<DateTime<Utc>, PayloadError> {
        let raw = self.str(key)?;
        DateTime::parse_from_rfc3339(raw.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                PayloadError::invalid(&self.name(key), format!("is not an ISO-8601 time: {e}"))
            })
    }
}

/// Unix seconds, within a sane range (years 2000 to 9999).
fn unix_seconds(secs: i64) -> Option<DateTime<Utc>> {
    const YEAR_2000: i64 = 946_684_800;
    const YEAR_10000: i64 = 253_402_300_800;
    if !(YEAR_2000..YEAR_10000).contains(&secs) {
        return None;
    }
    DateTime::from_timestamp(secs, 0)
}

/// The customer's answer, in any spelling the senders use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    Accept,
    Reject,
}

impl Response {
    pub fn parse(field: &str, raw: &str) -> Result<Self, PayloadError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "accept" | "accepted" => Ok(Response::Accept),
            "reject" | "rejected" => Ok(Response::Reject),
            _ => Err(PayloadError::invalid(
                field,
                format!(
                    "must be accept/accepted or reject/rejected, not {:?}",
                    excerpt(raw)
                ),
            )),
        }
    }
}

/// At most 32 characters of a sender's value, for error messages and logs: enough to see the
/// mistake, never a whole body.
pub fn excerpt(raw: &str) -> String {
    const MAX: usize = 32;
    match raw.char_indices().nth(MAX) {
        None => raw.to_owned(),
        Some((cut, _)) => format!("{}…", &raw[..cut]),
    }
}
