//! The JSON wire format of the HTTP port's checks: request bodies in, answers out. Field names
//! and values follow the proto's JSON mapping (`CheckCallPermissionRequest`,
//! `CheckCallPermissionResponse`, `CheckResult`), so a REST-only dialer reads the same answer a
//! gRPC client gets.
//!
//! Requests are parsed in one pass over the body, with no intermediate JSON tree: a batch of
//! [`MAX_BATCH_CHECKS`] costs its body plus one small entry per check. Errors tell a syntax
//! problem (the position: 400) from a wrong shape (the field, as `checks[17].customer_number`:
//! 422); a batch with more checks than [`MAX_BATCH_CHECKS`] stops being read at the first one
//! too many. Unknown fields are refused (a typo must not look like an empty request). Numbers
//! are not validated here: a malformed number is the shared checker's error, answered in
//! place in a batch.
//!
//! Answers are rendered from the protobuf message the gRPC API answers with (built by the same
//! conversion), destructured field by field, so a field added to the proto fails to compile
//! here until it is rendered.

use std::cell::{Cell, RefCell};
use std::fmt;

use chrono::SecondsFormat;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};

use crate::checks::Query;
use crate::grpc_api::from_timestamp;
use crate::pb;

/// Most checks in one `POST /v1/check-batch`.
pub const MAX_BATCH_CHECKS: usize = 50_000;
/// Largest `POST /v1/check-batch` body: 50,000 checks of ordinary numbers take about 3.6 MB
/// compact (`{"business_number":"+919000000000","customer_number":"+919876543210"}`, 72 bytes
/// each) and about 6 MB pretty-printed; 8 MiB leaves room for spelled-out numbers.
pub const MAX_BATCH_BODY: usize = 8 * 1024 * 1024;
/// Largest `POST /v1/check` body.
pub const MAX_CHECK_BODY: usize = 4 * 1024;

/// One check as received: the two numbers as the client spelled them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRequest {
    pub business_number: String,
    pub customer_number: String,
}

/// Issue 16: what a check (or a whole batch) asks beyond the pair: `at_least_as_fresh` (a
/// consistency token or an RFC 3339 time, parsed by the checker; empty: the default bound) and
/// `include_evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckOptions {
    pub at_least_as_fresh: String,
    pub include_evidence: bool,
}

/// `POST /v1/check-batch`'s body: the checks and the options that apply to all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchRequest {
    pub checks: Vec<CheckRequest>,
    pub options: CheckOptions,
}

impl CheckRequest {
    pub fn query(&self) -> Query<'_> {
        Query {
            business_number: &self.business_number,
            customer_number: &self.customer_number,
        }
    }
}

/// Why a request body is not a check (or a batch of them).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyProblem {
    /// Not JSON: serde_json's message, with the line and column.
    #[error("body is not valid JSON: {0}")]
    Syntax(String),
    /// JSON, but not the expected shape; `field` is empty for the body itself.
    #[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Field { field: String, message: String },
    /// More than [`MAX_BATCH_CHECKS`] checks.
    #[error("checks: more than {MAX_BATCH_CHECKS} checks in one batch; split it")]
    TooMany,
}

/// Where the parser is, to name the field of a shape error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Body,
    /// A field of the body (a single check's, or `checks`).
    Field(&'static str),
    /// A field of the body that is not one (its name is in [`Ctx::unknown`]).
    UnknownField,
    /// `checks[i]`.
    Item(usize),
    /// `checks[i].<field>`.
    ItemField(usize, &'static str),
    /// `checks[i].<name in Ctx::unknown>`.
    ItemUnknown(usize),
}

/// The parser's side channel: where it is and, once it gave up, why.
struct Ctx {
    loc: Cell<Loc>,
    unknown: RefCell<String>,
    too_many: Cell<bool>,
}

impl Ctx {
    fn new() -> Self {
        Ctx {
            loc: Cell::new(Loc::Body),
            unknown: RefCell::new(String::new()),
            too_many: Cell::new(false),
        }
    }

    fn at(&self, loc: Loc) {
        self.loc.set(loc);
    }

    fn field(&self) -> String {
        let unknown = self.unknown.borrow();
        match self.loc.get() {
            Loc::Body => String::new(),
            Loc::Field(f) => f.to_owned(),
            Loc::UnknownField => unknown.clone(),
            Loc::Item(i) => format!("checks[{i}]"),
            Loc::ItemField(i, f) => format!("checks[{i}].{f}"),
            Loc::ItemUnknown(i) => format!("checks[{i}].{unknown}"),
        }
    }

    /// The problem behind a parse error.
    fn problem(&self, e: serde_json::Error) -> BodyProblem {
        if self.too_many.get() {
            return BodyProblem::TooMany;
        }
        match e.classify() {
            serde_json::error::Category::Data => BodyProblem::Field {
                field: self.field(),
                message: e.to_string(),
            },
            _ => BodyProblem::Syntax(e.to_string()),
        }
    }
}

/// Parses `POST /v1/check`'s body: `{"business_number": ..., "customer_number": ...}`, and
/// optionally (issue 16) `"at_least_as_fresh": "<token>"` and `"include_evidence": true`.
pub fn parse_check(body: &[u8]) -> Result<(CheckRequest, CheckOptions), BodyProblem> {
    let ctx = Ctx::new();
    parse_with(
        body,
        &ctx,
        CheckSeed {
            ctx: &ctx,
            item: None,
        },
    )
}

/// Parses `POST /v1/check-batch`'s body: `{"checks": [{...}, ...]}`, at most
/// [`MAX_BATCH_CHECKS`] checks, and optionally (issue 16) `at_least_as_fresh` and
/// `include_evidence` for the whole batch.
pub fn parse_batch(body: &[u8]) -> Result<BatchRequest, BodyProblem> {
    let ctx = Ctx::new();
    parse_with(body, &ctx, BatchSeed { ctx: &ctx })
}

fn parse_with<'de, S: DeserializeSeed<'de>>(
    body: &'de [u8],
    ctx: &Ctx,
    seed: S,
) -> Result<S::Value, BodyProblem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = seed.deserialize(&mut de).map_err(|e| ctx.problem(e))?;
    ctx.at(Loc::Body);
    de.end().map_err(|e| ctx.problem(e))?;
    Ok(value)
}

/// The batch body: an object whose only field is `checks`.
struct BatchSeed<'c> {
    ctx: &'c Ctx,
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = BatchRequest;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = BatchRequest;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an object {"checks": [...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut checks = None;
        let mut options = OptionSlots::default();
        while let Some(key) = map.next_key::<String>()? {
            if key == "checks" {
                self.ctx.at(Loc::Field("checks"));
                if checks.is_some() {
                    return Err(de::Error::custom("given twice"));
                }
                checks = Some(map.next_value_seed(ChecksSeed { ctx: self.ctx })?);
                continue;
            }
            if options.take(&key, &mut map, |f| self.ctx.at(Loc::Field(f)))? {
                continue;
            }
            *self.ctx.unknown.borrow_mut() = key;
            self.ctx.at(Loc::UnknownField);
            return Err(de::Error::custom(
                "unknown field; a batch has `checks`, `at_least_as_fresh` and \
                 `include_evidence`",
            ));
        }
        self.ctx.at(Loc::Field("checks"));
        Ok(BatchRequest {
            checks: checks.ok_or_else(|| de::Error::custom("is required"))?,
            options: options.into_options(),
        })
    }
}

/// Issue 16: the optional fields of a single check or a batch, each given at most once.
#[derive(Default)]
struct OptionSlots {
    at_least_as_fresh: Option<String>,
    include_evidence: Option<bool>,
}

impl OptionSlots {
    /// Reads `key`'s value if it is one of the options (true), after `at` names the field.
    fn take<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
        at: impl Fn(&'static str),
    ) -> Result<bool, A::Error> {
        match key {
            "at_least_as_fresh" => {
                at("at_least_as_fresh");
                if self.at_least_as_fresh.is_some() {
                    return Err(de::Error::custom("given twice"));
                }
                self.at_least_as_fresh = Some(map.next_value::<String>()?);
            }
            "include_evidence" => {
                at("include_evidence");
                if self.include_evidence.is_some() {
                    return Err(de::Error::custom("given twice"));
                }
                self.include_evidence = Some(map.next_value::<bool>()?);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn into_options(self) -> CheckOptions {
        CheckOptions {
            at_least_as_fresh: self.at_least_as_fresh.unwrap_or_default(),
            include_evidence: self.include_evidence.unwrap_or(false),
        }
    }
}

/// The `checks` array.
struct ChecksSeed<'c> {
    ctx: &'c Ctx,
}

impl<'de> DeserializeSeed<'de> for ChecksSeed<'_> {
    type Value = Vec<CheckRequest>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ChecksSeed<'_> {
    type Value = Vec<CheckRequest>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of checks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut checks = Vec::new();
        loop {
            let i = checks.len();
            if i == MAX_BATCH_CHECKS {
                // One more element is one too many: stop reading here.
                self.ctx.at(Loc::Field("checks"));
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.ctx.too_many.set(true);
                    return Err(de::Error::custom("too many checks"));
                }
                return Ok(checks);
            }
            self.ctx.at(Loc::Item(i));
            let seed = CheckSeed {
                ctx: self.ctx,
                item: Some(i),
            };
            match seq.next_element_seed(seed)? {
                Some((check, _)) => checks.push(check),
                None => return Ok(checks),
            }
        }
    }
}

/// One check: an object with `business_number` and `customer_number` (strings), nothing else.
struct CheckSeed<'c> {
    ctx: &'c Ctx,
    /// Its index in a batch; `None`: the body of a single check.
    item: Option<usize>,
}

impl CheckSeed<'_> {
    fn at_field(&self, field: &'static str) {
        self.ctx.at(match self.item {
            Some(i) => Loc::ItemField(i, field),
            None => Loc::Field(field),
        });
    }
}

impl<'de> DeserializeSeed<'de> for CheckSeed<'_> {
    type Value = (CheckRequest, CheckOptions);

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CheckSeed<'_> {
    type Value = (CheckRequest, CheckOptions);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"an object {"business_number": "...", "customer_number": "..."}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut business = None;
        let mut customer = None;
        let mut options = OptionSlots::default();
        while let Some(key) = map.next_key::<String>()? {
            let (field, slot) = match key.as_str() {
                "business_number" => ("business_number", &mut business),
                "customer_number" => ("customer_number", &mut customer),
                _ => {
                    // A single check's options; a batch's checks take them from the batch.
                    if self.item.is_none() && options.take(&key, &mut map, |f| self.at_field(f))? {
                        continue;
                    }
                    *self.ctx.unknown.borrow_mut() = key;
                    self.ctx.at(match self.item {
                        Some(i) => Loc::ItemUnknown(i),
                        None => Loc::UnknownField,
                    });
                    return Err(de::Error::custom(match self.item {
                        Some(_) => {
                            "unknown field; a check has business_number and customer_number \
                             (at_least_as_fresh and include_evidence go on the batch)"
                        }
                        None => {
                            "unknown field; a check has business_number, customer_number, \
                             at_least_as_fresh and include_evidence"
                        }
                    }));
                }
            };
            self.at_field(field);
            if slot.is_some() {
                return Err(de::Error::custom("given twice"));
            }
            *slot = Some(map.next_value::<String>()?);
        }
        let Some(business_number) = business else {
            self.at_field("business_number");
            return Err(de::Error::custom("is required"));
        };
        let Some(customer_number) = customer else {
            self.at_field("customer_number");
            return Err(de::Error::custom("is required"));
        };
        Ok((
            CheckRequest {
                business_number,
                customer_number,
            },
            options.into_options(),
        ))
    }
}

/// A protobuf timestamp as the proto JSON mapping writes it (RFC 3339, UTC, `Z`).
fn timestamp(t: Option<prost_types::Timestamp>) -> Value {
    t.as_ref()
        .and_then(from_timestamp)
        .map_or(Value::Null, |t| {
            Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        })
}

fn state(state: i32) -> Value {
    match pb::ConsentState::try_from(state) {
        Ok(s) => Value::String(s.as_str_name().to_owned()),
        Err(_) => Value::from(state),
    }
}

fn evidence(e: Option<pb::Evidence>) -> Value {
    let Some(pb::Evidence {
        message_id,
        paired_message_id,
        source,
        response_source,
        sender_customer_id,
        body_sha256,
        stated_decided_at,
        stated_expires_at,
    }) = e
    else {
        return Value::Null;
    };
    json!({
        "message_id": message_id,
        "paired_message_id": paired_message_id,
        "source": source,
        "response_source": response_source,
        "sender_customer_id": sender_customer_id,
        "body_sha256": body_sha256,
        "stated_decided_at": timestamp(stated_decided_at),
        "stated_expires_at": timestamp(stated_expires_at),
    })
}

/// A check's answer in JSON. Absent times and evidence are `null`; the attribution (issue 13:
/// `team`, `campaign`, `labels`, `customer_name`) is present always, empty when the decision is
/// unattributed or the name unknown, as in the protobuf answer.
pub fn answer(r: pb::CheckCallPermissionResponse) -> Value {
    let pb::CheckCallPermissionResponse {
        allowed,
        state: s,
        expires_at,
        decided_at,
        evidence: e,
        business_number,
        customer_number,
        team,
        campaign,
        labels,
        customer_name,
    } = r;
    let labels: serde_json::Map<String, Value> = labels
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "allowed": allowed,
        "state": state(s),
        "expires_at": timestamp(expires_at),
        "decided_at": timestamp(decided_at),
        "evidence": evidence(e),
        "business_number": business_number,
        "customer_number": customer_number,
        "team": team,
        "campaign": campaign,
        "labels": labels,
        "customer_name": customer_name,
    })
}

/// A batch item's error: the canonical code (as the gRPC `CheckError`) and a message.
pub fn item_error(code: tonic::Code, message: &str) -> Value {
    json!({ "error": { "code": code as i32, "message": message } })
}

/// A batch item's answer.
pub fn item_answer(r: pb::CheckCallPermissionResponse) -> Value {
    json!({ "answer": answer(r) })
}

/// The bytes a streamed batch answer starts and ends with; results go between, separated by
/// [`RESULT_SEPARATOR`].
pub const RESULTS_OPEN: &[u8] = br#"{"results":["#;
pub const RESULTS_CLOSE: &[u8] = b"]}";
pub const RESULT_SEPARATOR: &[u8] = b",";

#[cfg(test)]
mod tests {
    use super::*;

    fn req(b: &str, c: &str) -> CheckRequest {
        CheckRequest {
            business_number: b.into(),
            customer_number: c.into(),
        }
    }

    #[test]
    fn single_checks_parse_and_name_the_field_at_fault() {
        assert_eq!(
            parse_check(br#"{"business_number":"+91 90000 00000","customer_number":"x"}"#),
            Ok((req("+91 90000 00000", "x"), CheckOptions::default()))
        );
        assert_eq!(
            parse_check(
                br#"{"business_number":"1","customer_number":"2","at_least_as_fresh":"c2.1-0",
                    "include_evidence":true}"#
            ),
            Ok((
                req("1", "2"),
                CheckOptions {
                    at_least_as_fresh: "c2.1-0".into(),
                    include_evidence: true,
                }
            ))
        );
        let cases: [(&[u8], Result<&str, &str>); 10] = [
            (
                br#"{"business_number":"1","customer_number":"2","include_evidence":"yes"}"#,
                Ok("include_evidence"),
            ),
            (
                br#"{"business_number":"1","customer_number":"2","at_least_as_fresh":1}"#,
                Ok("at_least_as_fresh"),
            ),
            (br#"{"business_number":"1"}"#, Ok("customer_number")),
            (br#"{"customer_number":"1"}"#, Ok("business_number")),
            (
                br#"{"business_number":1,"customer_number":"1"}"#,
                Ok("business_number"),
            ),
            (
                br#"{"business_number":"1","customer_number":null}"#,
                Ok("customer_number"),
            ),
            (
                br#"{"business_number":"1","customer_number":"2","team":"x"}"#,
                Ok("team"),
            ),
            (br#"["1","2"]"#, Ok("")),
            (br#"{"business_number":"1","#, Err("EOF while parsing")),
            (
                br#"{"business_number":"1","customer_number":"2"} x"#,
                Err("trailing characters"),
            ),
        ];
        for (body, want) in cases {
            let got = parse_check(body);
            match (want, &got) {
                (Ok(field), Err(BodyProblem::Field { field: f, .. })) => {
                    assert_eq!(f, field, "{}", String::from_utf8_lossy(body))
                }
                (Err(msg), Err(BodyProblem::Syntax(m))) => {
                    assert!(m.contains(msg) && m.contains("column"), "{m}")
                }
                _ => panic!("{}: {got:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn batch_fields_are_named_with_their_index() {
        let ok = parse_batch(
            br#"{"checks":[{"business_number":"1","customer_number":"2"},
                {"customer_number":"4","business_number":"3"}]}"#,
        );
        assert_eq!(ok.map(|b| b.checks), Ok(vec![req("1", "2"), req("3", "4")]));
        assert_eq!(
            parse_batch(br#"{"checks":[]}"#),
            Ok(BatchRequest::default())
        );
        assert_eq!(
            parse_batch(br#"{"include_evidence":true,"checks":[],"at_least_as_fresh":"x"}"#),
            Ok(BatchRequest {
                checks: vec![],
                options: CheckOptions {
                    at_least_as_fresh: "x".into(),
                    include_evidence: true,
                },
            })
        );
        let cases: [(&[u8], &str); 9] = [
            (
                br#"{"checks":[{"business_number":"1","customer_number":"2","include_evidence":true}]}"#,
                "checks[0].include_evidence",
            ),
            (br#"{"checks":[],"include_evidence":1}"#, "include_evidence"),
            (br#"{}"#, "checks"),
            (br#"{"checks":{}}"#, "checks"),
            (br#"{"checks":[],"checks":[]}"#, "checks"),
            (br#"{"check":[]}"#, "check"),
            (br#"{"checks":[{"business_number":"1","customer_number":"2"},3]}"#, "checks[1]"),
            (
                br#"{"checks":[{"business_number":"1","customer_number":"2"},{"business_number":"1"}]}"#,
                "checks[1].customer_number",
            ),
            (
                br#"{"checks":[{"business_number":"1","customer_number":"2","x":1}]}"#,
                "checks[0].x",
            ),
        ];
        for (body, want) in cases {
            match parse_batch(body) {
                Err(BodyProblem::Field { field, .. }) => {
                    assert_eq!(field, want, "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
        assert!(matches!(
            parse_batch(br#"{"checks":[{"business_number":"1" "customer_number":"2"}]}"#),
            Err(BodyProblem::Syntax(_))
        ));
    }

    #[test]
    fn a_batch_of_the_maximum_parses_and_one_more_is_too_many() {
        let one = r#"{"business_number":"+919000000000","customer_number":"+919876543210"}"#;
        let body = |n: usize| format!(r#"{{"checks":[{}]}}"#, vec![one; n].join(","));
        let max = body(MAX_BATCH_CHECKS);
        assert!(max.len() < MAX_BATCH_BODY / 2, "{} bytes", max.len());
        assert_eq!(
            parse_batch(max.as_bytes()).unwrap().checks.len(),
            MAX_BATCH_CHECKS
        );
        assert_eq!(
            parse_batch(body(MAX_BATCH_CHECKS + 1).as_bytes()),
            Err(BodyProblem::TooMany)
        );
    }

    #[test]
    fn answers_follow_the_proto_json_mapping() {
        let r = pb::CheckCallPermissionResponse {
            allowed: true,
            state: pb::ConsentState::GrantedTemporary as i32,
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_768_470_600,
                nanos: 0,
            }),
            decided_at: Some(prost_types::Timestamp {
                seconds: 1_767_865_800,
                nanos: 123_000_000,
            }),
            evidence: None,
            business_number: "+919000000000".into(),
            customer_number: "+919876543210".into(),
            team: "retention".into(),
            campaign: "winback-q4".into(),
            labels: [("region".to_owned(), "north".to_owned())].into(),
            customer_name: "Asha".into(),
        };
        assert_eq!(
            answer(r),
            json!({
                "allowed": true,
                "state": "CONSENT_STATE_GRANTED_TEMPORARY",
                "expires_at": "2026-01-15T09:50:00Z",
                "decided_at": "2026-01-08T09:50:00.123Z",
                "evidence": null,
                "business_number": "+919000000000",
                "customer_number": "+919876543210",
                "team": "retention",
                "campaign": "winback-q4",
                "labels": {"region": "north"},
                "customer_name": "Asha",
            })
        );
        assert_eq!(
            item_error(tonic::Code::InvalidArgument, "m"),
            json!({"error": {"code": 3, "message": "m"}})
        );
    }
}
