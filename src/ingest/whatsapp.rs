//! Meta's WhatsApp Cloud API webhook → domain [`Decision`]s.
//!
//! Meta posts one envelope for everything that happens on a WhatsApp Business Account:
//!
//! ```json
//! { "object": "whatsapp_business_account",
//!   "entry": [{ "id": "<WABA id>", "changes": [{ "field": "messages", "value": {
//!       "metadata": { "display_phone_number": "15550783881", "phone_number_id": "…" },
//!       "contacts": [{ "profile": { "name": "Sheena Nelson" }, "wa_id": "16505551234",
//!                      "user_id": "US.…" }],
//!       "messages": [{ "from": "16505551234", "from_user_id": "US.…", "id": "wamid.…",
//!         "timestamp": "1767168000", "context": { "id": "wamid.<the permission request>" },
//!         "type": "interactive", "interactive": { "type": "call_permission_reply",
//!           "call_permission_reply": { "response": "accept", "is_permanent": false,
//!             "expiration_timestamp": 1768550400, "response_source": "user_action" } } }] } }] }] }
//! ```
//!
//! Why it is parsed the way it is:
//!
//! - One POST can carry several entries, changes and messages, and most of them are not consent
//!   (text messages, delivery `statuses`, template updates). Only `interactive` messages of type
//!   `call_permission_reply` become decisions; everything else is skipped, so a body may yield no
//!   decision at all, and Meta must still get a 200 for it or it will retry for days.
//! - A permission reply is all-or-nothing: if any field of any reply is missing or wrong, the
//!   whole body is refused with the field's full path (such as
//!   `entry[0].changes[0].value.messages[1].interactive.call_permission_reply.response`). Taking
//!   half a batch would make the outcome depend on the order of messages in the body.
//! - The customer is the message's `from`. Meta may leave `from` out (users identified only by a
//!   business-scoped user id); then the single `wa_id` in `value.contacts` is used. If that is
//!   ambiguous or absent, the reply is refused: callgate does not guess who consented.
//! - An `automatic` reject is Meta revoking permission after unanswered calls. It is a denial like
//!   any other; `response_source` is kept as evidence, never used to weaken the decision.

use chrono::{DateTime, Utc};

use super::payload::{Fields, MAX_ID_BYTES, MAX_LABEL_BYTES, PayloadError, Response, object};
use super::{IngestContext, body_sha256};
use crate::domain::attribution::MAX_CUSTOMER_NAME_BYTES;
use crate::domain::{Decision, Evidence, Pair, PhoneNumber, Source, decide, to_millis_precision};

/// The message `type` of every interactive reply.
pub const INTERACTIVE: &str = "interactive";
/// The `interactive.type` of a reply to a call permission request.
pub const CALL_PERMISSION_REPLY: &str = "call_permission_reply";

/// Parses one Cloud API webhook body that arrived at `received_at` into the consent decisions
/// it holds, in body order.
pub fn parse(
    body: &[u8],
    ctx: &IngestContext,
    received_at: DateTime<Utc>,
) -> Result<Vec<Decision>, PayloadError> {
    let map = object(body)?;
    let root = Fields::new(&map, "");
    let body_sha256 = body_sha256(body);
    let mut decisions = Vec::new();
    for entry in root.objects("entry")? {
        for change in entry.opt_objects("changes")? {
            let Some(value) = change.opt_object("value")? else {
                continue;
            };
            for message in value.opt_objects("messages")? {
                let Some(reply) = permission_reply(&message)? else {
                    continue;
                };
                // Read only for a reply: a `statuses` change without metadata is no reason to
                // refuse the body.
                let business = value.object("metadata")?.phone("display_phone_number")?;
                decisions.push(decision(
                    &message,
                    &reply,
                    &value,
                    business,
                    body_sha256,
                    ctx,
                    received_at,
                )?);
            }
        }
    }
    Ok(decisions)
}

/// The `call_permission_reply` object of a message, or `None` for any other kind of message.
fn permission_reply<'a>(message: &Fields<'a>) -> Result<Option<Fields<'a>>, PayloadError> {
    if message.opt_str("type")? != Some(INTERACTIVE) {
        return Ok(None);
    }
    let interactive = message.object("interactive")?;
    if interactive.opt_str("type")? != Some(CALL_PERMISSION_REPLY) {
        return Ok(None);
    }
    interactive.object(CALL_PERMISSION_REPLY).map(Some)
}

/// One reply → one decision. Every field is read before the choice is made, so a malformed reply
/// is refused whatever its answer.
fn decision(
    message: &Fields<'_>,
    reply: &Fields<'_>,
    value: &Fields<'_>,
    business: PhoneNumber,
    body_sha256: [u8; 32],
    ctx: &IngestContext,
    received_at: DateTime<Utc>,
) -> Result<Decision, PayloadError> {
    let customer = customer(message, value)?;
    let customer_name = profile_name(value, &customer);
    let message_id = message.text("id", MAX_ID_BYTES)?.to_owned();
    let stated_at = to_millis_precision(message.unix_seconds("timestamp")?);
    let paired_message_id = match message.opt_object("context")? {
        Some(context) => context
            .opt_text("id", MAX_ID_BYTES)?
            .unwrap_or_default()
            .to_owned(),
        None => String::new(),
    };
    let sender_customer_id = message
        .opt_text("from_user_id", MAX_ID_BYTES)?
        .unwrap_or_default()
        .to_owned();
    let response = Response::parse(&reply.name("response"), reply.str("response")?)?;
    // An accept without `is_permanent` is read as temporary: the narrower of the two grants.
    let is_permanent = reply.opt_bool("is_permanent")?;
    let stated_expiry = reply.opt_unix_seconds("expiration_timestamp")?;
    // Evidence only, so a value Meta adds later is kept rather than refused (if it is a
    // plausible label: bounded, no control characters).
    let response_source = reply
        .opt_text("response_source", MAX_LABEL_BYTES)?
        .unwrap_or_default()
        .to_owned();

    let (decided_at, choice) = decide(
        response == Response::Accept,
        is_permanent,
        stated_at,
        stated_expiry,
        received_at,
        &ctx.dates,
    );
    Ok(Decision {
        pair: Pair::new(business, customer),
        choice,
        decided_at,
        evidence: Evidence {
            source: Source::WhatsApp,
            message_id,
            paired_message_id,
            response_source,
            sender_customer_id,
            body_sha256,
            stated_at,
            stated_expires_at: stated_expiry,
        },
        attribution: None,
        customer_name,
    })
}

/// issue 13 (attribution): the customer's WhatsApp profile name, from the `value.contacts`
/// entry whose `wa_id` is the customer (or the only entry, when it has no `wa_id`). A name
/// is a courtesy for alerts, not consent evidence: one that is absent, not a string, longer
/// than [`MAX_CUSTOMER_NAME_BYTES`] or holding a control character is left out rather than
/// failing the reply (Meta would retry a refused body for days).
fn profile_name(value: &Fields<'_>, customer: &PhoneNumber) -> Option<String> {
    let contacts = value.opt_objects("contacts").ok()?;
    let only = contacts.len() == 1;
    contacts.iter().find_map(|contact| {
        let is_customer = match contact.get("wa_id") {
            Some(_) => contact.phone("wa_id").ok().as_ref() == Some(customer),
            None => only,
        };
        if !is_customer {
            return None;
        }
        let profile = contact.opt_object("profile").ok()??;
        let name = profile.opt_str("name").ok()??.trim();
        (!name.is_empty()
            && name.len() <= MAX_CUSTOMER_NAME_BYTES
            && !name.chars().any(char::is_control))
        .then(|| name.to_owned())
    })
}

/// The customer who replied: the message's `from`, else the one `wa_id` in `value.contacts`.
fn customer(message: &Fields<'_>, value: &Fields<'_>) -> Result<PhoneNumber, PayloadError> {
    if message.get("from").is_some() {
        return message.phone("from");
    }
    let mut found: Option<PhoneNumber> = None;
    for contact in value.opt_objects("contacts")? {
        if contact.get("wa_id").is_none() {
            continue;
        }
        let wa_id = contact.phone("wa_id")?;
        match &found {
            Some(other) if *other != wa_id => {
                return Err(PayloadError::invalid(
                    &message.name("from"),
                    "is missing, and value.contacts names more than one customer",
                ));
            }
            _ => found = Some(wa_id),
        }
    }
    found.ok_or_else(|| PayloadError::Missing(message.name("from")))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, Utc};

    use crate::domain::Choice;
    use serde_json::{Value, json};

    use super::*;

    const SAMPLE: &str = include_str!("../../tests/fixtures/whatsapp/accept-temporary.json");
    const REPLY: &str = "entry[0].changes[0].value.messages[0]";

    fn ctx() -> IngestContext {
        IngestContext {
            dates: crate::domain::DateRules {
                temporary_window: Duration::from_secs(7 * 24 * 3600),
                max_clock_skew: Duration::from_secs(120),
            },
        }
    }

    /// Shortly after the sample's `timestamp`.
    fn parse(body: &[u8], ctx: &IngestContext) -> Result<Vec<Decision>, PayloadError> {
        super::parse(body, ctx, t(1_767_168_005))
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn sample() -> Value {
        serde_json::from_str(SAMPLE).unwrap()
    }

    /// The sample with its one message's `call_permission_reply` changed by `edit`.
    fn sample_reply(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut v = sample();
        let reply = v["entry"][0]["changes"][0]["value"]["messages"][0]["interactive"]
            ["call_permission_reply"]
            .as_object_mut()
            .unwrap();
        edit(reply);
        v
    }

    fn parse_value(v: &Value) -> Result<Vec<Decision>, PayloadError> {
        parse(v.to_string().as_bytes(), &ctx())
    }

    fn one(v: &Value) -> Decision {
        let mut ds = parse_value(v).unwrap();
        assert_eq!(ds.len(), 1, "{v}");
        ds.pop().unwrap()
    }

    #[test]
    fn sample_is_one_temporary_grant_with_its_evidence() {
        let ds = parse(SAMPLE.as_bytes(), &ctx()).unwrap();
        assert_eq!(ds.len(), 1);
        let d = &ds[0];
        assert_eq!(d.pair.business.to_string(), "+15550783881");
        assert_eq!(d.pair.customer.to_string(), "+16505551234");
        assert_eq!(
            d.choice,
            Choice::GrantTemporary {
                // The sample states 16 days: bounded to the 7-day window, as stated kept.
                expires_at: t(1_767_168_000 + 7 * 24 * 3600)
            }
        );
        assert_eq!(d.evidence.stated_expires_at, Some(t(1_768_550_400)));
        assert_eq!(d.evidence.stated_at, t(1_767_168_000));
        assert_eq!(d.decided_at, t(1_767_168_000));
        assert_eq!(d.evidence.source, Source::WhatsApp);
        assert_eq!(d.evidence.message_id, "wamid.sH0kFlaCGg0xcvZbgmg90lHrg2dL");
        assert_eq!(d.evidence.paired_message_id, "wamid.gBGGFlaCmZ9plHrf2Mh-o");
        assert_eq!(d.evidence.response_source, "user_action");
        assert_eq!(d.evidence.sender_customer_id, "US.13491208655302741918");
        assert_eq!(d.evidence.body_sha256, body_sha256(SAMPLE.as_bytes()));
    }

    #[test]
    fn replies_map_to_the_right_choice() {
        let cases: Vec<(&str, Value, Choice, &str)> = vec![
            (
                "permanent accept",
                sample_reply(|r| {
                    r.insert("is_permanent".into(), true.into());
                }),
                Choice::GrantPermanent,
                "user_action",
            ),
            (
                "automatic reject is a denial",
                sample_reply(|r| {
                    r.insert("response".into(), "reject".into());
                    r.insert("response_source".into(), "automatic".into());
                    r.remove("is_permanent");
                    r.remove("expiration_timestamp");
                }),
                Choice::Deny,
                "automatic",
            ),
            (
                "expiry as a number",
                sample_reply(|r| {
                    r.insert("expiration_timestamp".into(), 1_767_500_000.into());
                }),
                Choice::GrantTemporary {
                    expires_at: t(1_767_500_000),
                },
                "user_action",
            ),
            (
                "expiry as a string",
                sample_reply(|r| {
                    r.insert("expiration_timestamp".into(), "1767500001".into());
                }),
                Choice::GrantTemporary {
                    expires_at: t(1_767_500_001),
                },
                "user_action",
            ),
            (
                "no expiry: the configured window from the reply's time",
                sample_reply(|r| {
                    r.remove("expiration_timestamp");
                    r.remove("is_permanent");
                }),
                Choice::GrantTemporary {
                    expires_at: t(1_767_168_000 + 7 * 24 * 3600),
                },
                "user_action",
            ),
        ];
        for (name, body, choice, source) in cases {
            let d = one(&body);
            assert_eq!(d.choice, choice, "{name}");
            assert_eq!(d.evidence.response_source, source, "{name}");
        }
    }

    #[test]
    fn timestamp_may_be_a_number_and_from_may_come_from_contacts() {
        let mut v = sample();
        let message = &mut v["entry"][0]["changes"][0]["value"]["messages"][0];
        message["timestamp"] = 1_767_168_123.into();
        message.as_object_mut().unwrap().remove("from");
        let d = one(&v);
        assert_eq!(d.decided_at, t(1_767_168_123));
        assert_eq!(d.pair.customer.to_string(), "+16505551234");
    }

    #[test]
    fn only_permission_replies_in_a_batch_become_decisions() {
        let reply = sample()["entry"][0]["changes"][0]["value"]["messages"][0].clone();
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [
                { "id": "1", "changes": [
                    { "field": "messages", "value": {
                        "metadata": { "display_phone_number": "15550783881" },
                        "messages": [
                            { "from": "16505551234", "id": "wamid.text", "timestamp": "1767168000",
                              "type": "text", "text": { "body": "hello" } },
                            reply,
                            { "from": "16505551234", "id": "wamid.button", "timestamp": "1767168000",
                              "type": "interactive",
                              "interactive": { "type": "button_reply",
                                               "button_reply": { "id": "b", "title": "Yes" } } }
                        ] } },
                    { "field": "messages", "value": {
                        "statuses": [{ "id": "wamid.s", "status": "delivered",
                                       "timestamp": "1767168000", "recipient_id": "16505551234" }] } }
                ] },
                { "id": "2", "changes": [{ "field": "account_update", "value": { "event": "x" } }] },
                { "id": "3" }
            ]
        });
        let ds = parse_value(&body).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(
            ds[0].evidence.message_id,
            "wamid.sH0kFlaCGg0xcvZbgmg90lHrg2dL"
        );
    }

    #[test]
    fn several_replies_in_one_body_come_out_in_order() {
        let mut v = sample();
        let first = v["entry"][0]["changes"][0]["value"]["messages"][0].clone();
        let mut second = first.clone();
        second["id"] = "wamid.second".into();
        second["interactive"]["call_permission_reply"]["response"] = "reject".into();
        v["entry"][0]["changes"][0]["value"]["messages"] = json!([first, second]);
        let ds = parse_value(&v).unwrap();
        let got: Vec<_> = ds
            .iter()
            .map(|d| (d.evidence.message_id.as_str(), d.choice.name()))
            .collect();
        assert_eq!(
            got,
            [
                ("wamid.sH0kFlaCGg0xcvZbgmg90lHrg2dL", "grant_temporary"),
                ("wamid.second", "deny")
            ]
        );
    }

    #[test]
    fn bodies_without_replies_are_empty_not_errors() {
        let cases = [
            json!({ "entry": [] }),
            json!({ "entry": [{ "changes": [] }] }),
            json!({ "entry": [{ "changes": [{ "value": { "statuses": [] } }] }] }),
            json!({ "entry": [{ "changes": [{ "value": { "messages": [
                { "type": "text", "text": { "body": "hi" } }
            ] } }] }] }),
        ];
        for body in cases {
            assert_eq!(parse_value(&body), Ok(vec![]), "{body}");
        }
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let with = |path: &[&str], value: Option<Value>| {
            let mut v = sample();
            let (last, parents) = path.split_last().unwrap();
            let mut cur = &mut v;
            for p in parents {
                cur = match p.parse::<usize>() {
                    Ok(i) => &mut cur[i],
                    Err(_) => &mut cur[*p],
                };
            }
            match (value, last.parse::<usize>()) {
                (Some(x), Ok(i)) => cur[i] = x,
                (Some(x), Err(_)) => cur[*last] = x,
                (None, _) => {
                    cur.as_object_mut().unwrap().remove(*last);
                }
            }
            v.to_string()
        };
        let msg: &[&str] = &["entry", "0", "changes", "0", "value", "messages", "0"];
        let at_msg = |rest: &[&'static str]| [msg, rest].concat();
        let reply = |key: &'static str| at_msg(&["interactive", "call_permission_reply", key]);
        let value = |rest: &[&'static str]| [&msg[..5], rest].concat();
        let reply_field = |key: &str| format!("{REPLY}.interactive.call_permission_reply.{key}");

        let cases: Vec<(String, Option<String>)> = vec![
            ("not json".into(), None),
            ("[]".into(), None),
            ("{}".into(), Some("entry".into())),
            (with(&["entry"], Some(json!({}))), Some("entry".into())),
            (
                with(&["entry", "0"], Some(json!(7))),
                Some("entry[0]".into()),
            ),
            (
                with(&["entry", "0", "changes"], Some(json!("x"))),
                Some("entry[0].changes".into()),
            ),
            (
                with(&["entry", "0", "changes", "0", "value"], Some(json!([]))),
                Some("entry[0].changes[0].value".into()),
            ),
            (
                with(&value(&["messages"]), Some(json!({}))),
                Some("entry[0].changes[0].value.messages".into()),
            ),
            (
                with(&value(&["metadata"]), None),
                Some("entry[0].changes[0].value.metadata".into()),
            ),
            (
                with(&value(&["metadata", "display_phone_number"]), None),
                Some("entry[0].changes[0].value.metadata.display_phone_number".into()),
            ),
            (
                with(
                    &value(&["metadata", "display_phone_number"]),
                    Some("call us".into()),
                ),
                Some("entry[0].changes[0].value.metadata.display_phone_number".into()),
            ),
            (
                with(&at_msg(&["type"]), Some(json!(1))),
                Some(format!("{REPLY}.type")),
            ),
            (
                with(&at_msg(&["interactive"]), None),
                Some(format!("{REPLY}.interactive")),
            ),
            (
                with(&at_msg(&["interactive", "type"]), Some(json!(true))),
                Some(format!("{REPLY}.interactive.type")),
            ),
            (
                with(&at_msg(&["interactive", "call_permission_reply"]), None),
                Some(format!("{REPLY}.interactive.call_permission_reply")),
            ),
            (
                with(&reply("response"), None),
                Some(reply_field("response")),
            ),
            (
                with(&reply("response"), Some("maybe".into())),
                Some(reply_field("response")),
            ),
            (
                with(&reply("is_permanent"), Some("no".into())),
                Some(reply_field("is_permanent")),
            ),
            (
                with(&reply("expiration_timestamp"), Some("next week".into())),
                Some(reply_field("expiration_timestamp")),
            ),
            (
                with(&reply("expiration_timestamp"), Some(json!(-1))),
                Some(reply_field("expiration_timestamp")),
            ),
            (
                with(&reply("response_source"), Some(json!(3))),
                Some(reply_field("response_source")),
            ),
            (with(&at_msg(&["id"]), None), Some(format!("{REPLY}.id"))),
            (
                with(&at_msg(&["id"]), Some(" ".into())),
                Some(format!("{REPLY}.id")),
            ),
            (
                with(&at_msg(&["timestamp"]), None),
                Some(format!("{REPLY}.timestamp")),
            ),
            (
                with(&at_msg(&["timestamp"]), Some("2026-01-01T00:00:00Z".into())),
                Some(format!("{REPLY}.timestamp")),
            ),
            (
                with(&at_msg(&["from"]), Some("not a number".into())),
                Some(format!("{REPLY}.from")),
            ),
            (
                with(&at_msg(&["context"]), Some("wamid".into())),
                Some(format!("{REPLY}.context")),
            ),
            (
                with(&at_msg(&["context", "id"]), Some(json!(5))),
                Some(format!("{REPLY}.context.id")),
            ),
            (
                with(&at_msg(&["from_user_id"]), Some(json!([]))),
                Some(format!("{REPLY}.from_user_id")),
            ),
        ];
        for (body, field) in cases {
            let err = parse(body.as_bytes(), &ctx()).unwrap_err();
            assert_eq!(err.field(), field.as_deref(), "body {body}: {err}");
        }
    }

    #[test]
    fn a_bad_second_reply_refuses_the_whole_body_naming_it() {
        let mut v = sample();
        let first = v["entry"][0]["changes"][0]["value"]["messages"][0].clone();
        let mut second = first.clone();
        second["interactive"]["call_permission_reply"]["response"] = "perhaps".into();
        v["entry"][0]["changes"][0]["value"]["messages"] = json!([first, second]);
        let err = parse_value(&v).unwrap_err();
        assert_eq!(
            err.field(),
            Some(
                "entry[0].changes[0].value.messages[1].interactive.call_permission_reply.response"
            )
        );
    }

    #[test]
    fn customer_falls_back_to_contacts_only_when_unambiguous() {
        let without_from = |contacts: Value| {
            let mut v = sample();
            let value = &mut v["entry"][0]["changes"][0]["value"];
            value["messages"][0].as_object_mut().unwrap().remove("from");
            value["contacts"] = contacts;
            parse_value(&v).map(|ds| ds[0].pair.customer.to_string())
        };
        let from = format!("{REPLY}.from");
        let cases: Vec<(Value, Result<&str, Option<&str>>)> = vec![
            (json!([{ "wa_id": "16505551234" }]), Ok("+16505551234")),
            (
                json!([{ "wa_id": "16505551234" }, { "wa_id": "+1 650 555 1234" }]),
                Ok("+16505551234"),
            ),
            (
                json!([{ "wa_id": "16505551234" }, { "wa_id": "16505559999" }]),
                Err(Some(&from)),
            ),
            (json!([]), Err(Some(&from))),
            (json!([{ "profile": {} }]), Err(Some(&from))),
            (
                json!([{ "wa_id": "x" }]),
                Err(Some("entry[0].changes[0].value.contacts[0].wa_id")),
            ),
        ];
        for (contacts, want) in cases {
            let got = without_from(contacts.clone());
            match (got, want) {
                (Ok(c), Ok(w)) => assert_eq!(c, w, "{contacts}"),
                (Err(e), Err(field)) => assert_eq!(e.field(), field, "{contacts}"),
                (got, want) => panic!("{contacts}: got {got:?}, want {want:?}"),
            }
        }
    }
}
