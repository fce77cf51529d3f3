//! Property tests for everything that reads untrusted input: the webhook parsers, phone numbers,
//! and the authentication primitives.
//!
//! The unit tests next to each module pin down known cases; these check what must hold for *any*
//! input: no panic on junk, every refusal of a JSON object names a field, and phone numbers
//! normalise the same however they are spelled. The JSON generators build the real envelope
//! shapes with each field valid, absent or junk, so they reach deep into the parsers rather than
//! stopping at the first missing key. They run in the normal `cargo test` (256 cases each).

use std::time::Duration;

use callgate::domain::{Choice, Decision, PhoneNumber, Source};
use callgate::ingest::auth::{Secret, WebhookAuth, verify_meta_signature, verify_subscription};
use callgate::ingest::{IngestContext, PayloadError, body_sha256, doubletick, whatsapp};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sha2::Sha256;

fn ctx() -> IngestContext {
    IngestContext {
        dates: callgate::domain::DateRules {
            temporary_window: Duration::from_secs(7 * 24 * 3600),
            max_clock_skew: Duration::from_secs(120),
        },
    }
}

/// A fixed arrival time for the parsers.
fn arrival() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_768_473_005, 0).unwrap()
}

/// Strings the parsers give meaning to, so junk often looks almost right.
const VOCABULARY: &[&str] = &[
    "",
    " ",
    "interactive",
    "call_permission_reply",
    "text",
    "accept",
    "accepted",
    "reject",
    "REJECTED",
    "maybe",
    "user_action",
    "automatic",
    "1767168000",
    "1768550400",
    "-1",
    "99999999999999999999",
    "2026-01-15T10:30:00.000Z",
    "+919876543210",
    "16505551234",
    "0091 98765 43210",
    "+",
    "true",
    "wamid.x",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(VOCABULARY).prop_map(str::to_owned),
        ".{0,16}",
    ]
}

/// Any JSON value, small and shallow.
fn junk() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(word(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly one of the `valid` values; sometimes absent, sometimes junk.
fn field(valid: Vec<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        24 => prop::sample::select(valid).prop_map(Some),
        1 => Just(None),
        1 => junk().prop_map(Some),
    ]
    .boxed()
}

/// A nested field: mostly the generated object, sometimes absent or junk.
fn nested(valid: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        24 => valid.prop_map(Some),
        1 => Just(None),
        1 => junk().prop_map(Some),
    ]
    .boxed()
}

/// An array of generated objects (or, now and then, of junk).
fn array(item: BoxedStrategy<Value>, max: usize) -> BoxedStrategy<Value> {
    prop_oneof![
        24 => prop::collection::vec(item, 1..=max).prop_map(Value::Array),
        1 => Just(Value::Array(Vec::new())),
        1 => prop::collection::vec(junk(), 1..=2).prop_map(Value::Array),
    ]
    .boxed()
}

/// A JSON object whose fields are generated independently; absent fields are left out.
fn object(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Value> {
    let (names, strategies): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    strategies
        .prop_map(move |values| {
            let mut map = Map::new();
            for (name, value) in names.iter().zip(values) {
                if let Some(value) = value {
                    map.insert((*name).to_owned(), value);
                }
            }
            Value::Object(map)
        })
        .boxed()
}

fn strings(values: &[&str]) -> Vec<Value> {
    values.iter().map(|s| Value::from(*s)).collect()
}

fn whatsapp_envelope() -> BoxedStrategy<Value> {
    let reply = object(vec![
        (
            "response",
            field(strings(&["accept", "reject", "Accepted"])),
        ),
        ("is_permanent", field(vec![true.into(), false.into()])),
        (
            "expiration_timestamp",
            field(vec![1_768_550_400.into(), "1768550400".into()]),
        ),
        (
            "response_source",
            field(strings(&["user_action", "automatic"])),
        ),
    ]);
    let interactive = object(vec![
        (
            "type",
            field(strings(&["call_permission_reply", "button_reply"])),
        ),
        ("call_permission_reply", nested(reply)),
    ]);
    let message = object(vec![
        ("from", field(strings(&["16505551234", "+91 98765 43210"]))),
        ("from_user_id", field(strings(&["US.1"]))),
        ("id", field(strings(&["wamid.a", "wamid.b"]))),
        (
            "timestamp",
            field(vec!["1767168000".into(), 1_767_168_001.into()]),
        ),
        ("type", field(strings(&["interactive", "text"]))),
        (
            "context",
            nested(object(vec![("id", field(strings(&["wamid.q"])))])),
        ),
        ("interactive", nested(interactive)),
    ]);
    let value = object(vec![
        (
            "metadata",
            nested(object(vec![(
                "display_phone_number",
                field(strings(&["15550783881", "+1 555 078 3881"])),
            )])),
        ),
        (
            "contacts",
            nested(array(
                object(vec![(
                    "wa_id",
                    field(strings(&["16505551234", "447700900123"])),
                )]),
                2,
            )),
        ),
        ("messages", nested(array(message, 3))),
        (
            "statuses",
            field(vec![json!([{ "id": "wamid.s", "status": "read" }])]),
        ),
    ]);
    let change = object(vec![
        ("field", field(strings(&["messages", "account_update"]))),
        ("value", nested(value)),
    ]);
    let entry = object(vec![
        ("id", field(strings(&["102290129340398"]))),
        ("changes", nested(array(change, 2))),
    ]);
    object(vec![
        ("object", field(strings(&["whatsapp_business_account"]))),
        ("entry", nested(array(entry, 2))),
    ])
}

fn doubletick_body() -> BoxedStrategy<Value> {
    object(vec![
        ("from", field(strings(&["+919876543210", "919876543210"]))),
        ("to", field(strings(&["+919000000000"]))),
        (
            "receivedAt",
            field(strings(&[
                "2026-01-15T10:30:00.000Z",
                "2026-01-15T10:30:00+05:30",
            ])),
        ),
        ("messageId", field(strings(&["wamid.x"]))),
        ("pairedMessageId", field(strings(&["wamid.y"]))),
        ("response", field(strings(&["accept", "rejected"]))),
        ("responseSource", field(strings(&["user_initiated"]))),
        ("isPermanent", field(vec![true.into(), false.into()])),
        (
            "expirationTimestamp",
            field(vec![1_768_470_600.into(), "1768470600".into()]),
        ),
        ("dtCustomerId", field(strings(&["customer_x"]))),
    ])
}

/// What every accepted decision must look like, whichever parser made it.
fn check_decision(d: &Decision, body: &[u8], source: Source) -> Result<(), TestCaseError> {
    prop_assert_eq!(d.evidence.source, source);
    prop_assert_eq!(&d.evidence.body_sha256, &body_sha256(body));
    prop_assert!(!d.evidence.message_id.trim().is_empty());
    prop_assert_eq!(d.decided_at.timestamp_subsec_nanos() % 1_000_000, 0);
    if let Choice::GrantTemporary { expires_at } = d.choice {
        prop_assert_eq!(expires_at.timestamp_subsec_nanos() % 1_000_000, 0);
    }
    Ok(())
}

/// A JSON object is never refused without naming the field that was wrong.
fn check_error_names_field(err: &PayloadError) -> Result<(), TestCaseError> {
    prop_assert!(err.field().is_some(), "error without a field: {}", err);
    Ok(())
}

proptest! {
    #[test]
    fn parsers_never_panic_on_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = doubletick::parse(&body, &ctx(), arrival());
        let _ = whatsapp::parse(&body, &ctx(), arrival());
    }

    #[test]
    fn parsers_never_panic_on_any_json(value in junk()) {
        let body = value.to_string();
        let _ = doubletick::parse(body.as_bytes(), &ctx(), arrival());
        let _ = whatsapp::parse(body.as_bytes(), &ctx(), arrival());
    }

    #[test]
    fn whatsapp_envelopes_parse_or_name_the_field(envelope in whatsapp_envelope()) {
        let body = envelope.to_string();
        match whatsapp::parse(body.as_bytes(), &ctx(), arrival()) {
            Ok(decisions) => {
                for d in &decisions {
                    check_decision(d, body.as_bytes(), Source::WhatsApp)?;
                }
            }
            Err(err) if envelope.is_object() => check_error_names_field(&err)?,
            Err(_) => {}
        }
    }

    #[test]
    fn doubletick_bodies_parse_or_name_the_field(body in doubletick_body()) {
        let body = body.to_string();
        match doubletick::parse(body.as_bytes(), &ctx(), arrival()) {
            Ok(d) => check_decision(&d, body.as_bytes(), Source::DoubleTick)?,
            Err(err) => check_error_names_field(&err)?,
        }
    }

    #[test]
    fn every_permission_reply_in_a_valid_batch_becomes_one_decision(
        kinds in prop::collection::vec(0u8..3, 0..8),
    ) {
        // 0: permission reply, 1: text message, 2: another interactive reply.
        let messages: Vec<Value> = kinds.iter().enumerate().map(|(i, kind)| {
            let mut m = json!({ "from": "16505551234", "id": format!("wamid.{i}"),
                                "timestamp": "1767168000" });
            m.as_object_mut().unwrap().extend(match kind {
                0 => json!({ "type": "interactive", "interactive": {
                        "type": "call_permission_reply",
                        "call_permission_reply": { "response": "accept", "is_permanent": true } } }),
                1 => json!({ "type": "text", "text": { "body": "hi" } }),
                _ => json!({ "type": "interactive", "interactive": {
                        "type": "list_reply", "list_reply": { "id": "x" } } }),
            }.as_object().unwrap().clone());
            m
        }).collect();
        let body = json!({ "entry": [{ "changes": [
            { "value": { "statuses": [{ "id": "s" }] } },
            { "value": { "metadata": { "display_phone_number": "15550783881" },
                         "messages": messages } }
        ] }] }).to_string();
        let got: Vec<String> = whatsapp::parse(body.as_bytes(), &ctx(), arrival())
            .unwrap()
            .into_iter()
            .map(|d| d.evidence.message_id)
            .collect();
        let want: Vec<String> = kinds.iter().enumerate()
            .filter(|(_, k)| **k == 0)
            .map(|(i, _)| format!("wamid.{i}"))
            .collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn phone_parse_never_panics(s in any::<String>()) {
        let _ = PhoneNumber::parse(&s);
        let _ = PhoneNumber::from_digits(&s);
    }

    #[test]
    fn a_parsed_phone_number_parses_to_itself(s in "[0-9+() ./\\-]{0,24}") {
        if let Ok(n) = PhoneNumber::parse(&s) {
            prop_assert_eq!(PhoneNumber::parse(&n.to_string()), Ok(n.clone()));
            prop_assert_eq!(PhoneNumber::from_digits(n.digits()), Ok(n.clone()));
            prop_assert_eq!(n.to_string(), format!("+{}", n.digits()));
        }
    }

    #[test]
    fn any_spelling_of_a_valid_number_normalises_to_it(
        (digits, gaps) in (1u16..1000, 0usize..=15).prop_flat_map(|(cc, n)| {
            let cc = cc.to_string();
            let sub_len = n.clamp(7 - cc.len().min(7), 15 - cc.len());
            let len = cc.len() + sub_len;
            (
                proptest::string::string_regex(&format!("[0-9]{{{sub_len}}}"))
                    .unwrap()
                    .prop_map(move |sub| format!("{cc}{sub}")),
                prop::collection::vec(
                    prop::sample::select(&["", "", "", " ", "-", ".", "/", "(", ")", "\u{a0}", " - "][..]),
                    len,
                ),
            )
        }),
        prefix in prop::sample::select(&["", "+", "00", "+ ", "00 ", "(+", "+(", "00-"][..]),
        pad in prop::sample::select(&["", " ", "\t", "\n "][..]),
    ) {
        let mut spelled = format!("{pad}{prefix}");
        for (digit, gap) in digits.chars().zip(&gaps) {
            spelled.push(digit);
            spelled.push_str(gap);
        }
        spelled.push_str(pad);
        let n = PhoneNumber::parse(&spelled);
        prop_assert_eq!(n.as_ref().map(PhoneNumber::digits), Ok(digits.as_str()), "{:?}", spelled);
        let n = n.unwrap();
        prop_assert_eq!(PhoneNumber::parse(&n.to_string()), Ok(n.clone()));
    }

    #[test]
    fn auth_primitives_never_panic(s in any::<String>(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let secret = Secret::new("verify-me");
        let _ = verify_subscription(&s, &secret);
        let _ = verify_meta_signature(&secret, &body, Some(&s));
        let auth = WebhookAuth::new([secret], Some("x-token")).unwrap();
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&s) {
            headers.insert(http::header::AUTHORIZATION, v.clone());
            headers.insert("x-token", v);
        }
        let _ = auth.verify(&headers);
    }

    #[test]
    fn meta_signature_accepts_exactly_the_right_mac(
        secret in ".{0,32}",
        body in prop::collection::vec(any::<u8>(), 0..128),
        bit in 0usize..256,
    ) {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        let mut tag = mac.finalize().into_bytes().to_vec();
        let secret = Secret::new(secret);
        let header = format!("sha256={}", hex::encode(&tag));
        prop_assert_eq!(verify_meta_signature(&secret, &body, Some(&header)), Ok(()));
        tag[bit / 8] ^= 1 << (bit % 8);
        let header = format!("sha256={}", hex::encode(&tag));
        prop_assert!(verify_meta_signature(&secret, &body, Some(&header)).is_err());
    }
}
