//! Issue 13, the seed's story end to end over real sockets: three teams of one business
//! (premium, retention, acquisition) register consent requests for different customers;
//! customers answer in DoubleTick's and Meta's formats, some before their registration lands;
//! each team's StreamGrants subscriber receives exactly its grants (with the customer's name
//! where known), each team's `ListCallable` matches, a denial takes the pair off every list and
//! reaches every team, and a 7-day grant (a 3-second window here) leaves the list at its
//! instant.
//!
//! Unattributed replies are configured `no_team` (`CALLGATE_UNATTRIBUTED_REPLIES`), so a reply
//! that arrives before its registration reaches its team only once the registration attributes
//! it (a `late_attribution` event), never every team.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::time::Duration;

use callgate::domain::UnattributedPolicy;
use callgate::grpc_api::auth::key_digest;
use callgate::pb::{self, ConsentState, EventKind};
use chrono::{DateTime, Utc};
use tonic::Streaming;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);
const TEAMS: [&str; 3] = ["premium", "retention", "acquisition"];
/// The temporary window of this test's service.
const WINDOW_SECS: i64 = 3;

fn customer(n: usize) -> String {
    format!("+91988{n:07}")
}

/// Every scope, `register` included.
fn clients_file() -> tempfile::NamedTempFile {
    let text = format!(
        r#"
[[client]]
name = "crm"
key_sha256 = ["{}"]
scopes = ["check", "stream", "history", "register"]
"#,
        key_digest(API_KEY),
    );
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

async fn register(app: &TestApp, customer: &str, request_id: &str, team: &str, name: Option<&str>) {
    let mut labels = std::collections::HashMap::new();
    labels.insert("source".to_owned(), "crm".to_owned());
    let r = app
        .grpc()
        .await
        .register_consent_request(pb::RegisterConsentRequestRequest {
            business_number: BUSINESS.into(),
            customer_number: customer.into(),
            request_message_id: request_id.into(),
            team: team.into(),
            campaign: format!("{team}-q4"),
            labels,
            sent_at: Some(callgate::grpc_api::timestamp(app.clock.now())),
            customer_name: name.unwrap_or_default().into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.registered, "{r:?}");
}

/// A DoubleTick answer to the template message `request_id`.
async fn doubletick_answer(
    app: &TestApp,
    customer: &str,
    id: &str,
    response: &str,
    permanent: bool,
) {
    // The helper's paired message id is `paired-<id>`: registrations use that id.
    let body = doubletick(
        BUSINESS,
        customer,
        id,
        app.clock.now(),
        response,
        (response == "accept").then_some(permanent),
    );
    let a = app.post_doubletick(body).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

fn meta_signature(body: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A Meta (WhatsApp Cloud API) call permission reply to `request_id`, with the customer's
/// profile name. A temporary grant states its expiry `WINDOW_SECS` after the reply.
async fn meta_answer(
    app: &TestApp,
    customer: &str,
    name: &str,
    id: &str,
    request_id: &str,
    permanent: bool,
) -> DateTime<Utc> {
    let at = app.clock.now().timestamp();
    let wa_id = customer.trim_start_matches('+');
    let mut reply = serde_json::json!({
        "response": "accept",
        "is_permanent": permanent,
        "response_source": "user_action",
    });
    if !permanent {
        reply["expiration_timestamp"] = (at + WINDOW_SECS).to_string().into();
    }
    let body = serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{
            "id": "102290129340398",
            "changes": [{
                "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {
                        "display_phone_number": BUSINESS.trim_start_matches('+'),
                        "phone_number_id": "106540352242922"
                    },
                    "contacts": [{ "profile": { "name": name }, "wa_id": wa_id }],
                    "messages": [{
                        "context": { "from": BUSINESS.trim_start_matches('+'), "id": request_id },
                        "from": wa_id,
                        "id": id,
                        "timestamp": at.to_string(),
                        "type": "interactive",
                        "interactive": {
                            "type": "call_permission_reply",
                            "call_permission_reply": reply
                        }
                    }]
                }
                ,
                "field": "messages"
            }]
        }]
    })
    .to_string();
    let signature = meta_signature(&body);
    let a = app
        .request(
            "POST",
            "/webhooks/whatsapp",
            &[JSON, ("x-hub-signature-256", signature.as_str())],
            body,
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    DateTime::from_timestamp(at + WINDOW_SECS, 0).unwrap()
}

/// The team's calling list: customer → entry.
async fn list(app: &TestApp, team: &str) -> BTreeMap<String, pb::CallableEntry> {
    let page = app
        .grpc()
        .await
        .list_callable(pb::ListCallableRequest {
            business_number: BUSINESS.into(),
            team: team.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty());
    page.entries
        .into_iter()
        .map(|e| (e.customer_number.clone(), e))
        .collect()
}

/// Reads events (checkpoints skipped) into `events` until one satisfies `until` (kept too).
async fn read_until(
    s: &mut Streaming<pb::ConsentEvent>,
    events: &mut Vec<pb::ConsentEvent>,
    until: impl Fn(&pb::ConsentEvent) -> bool,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = s.message().await.unwrap().expect("stream ended");
            if e.kind == EventKind::Checkpoint as i32 {
                continue;
            }
            let done = until(&e);
            events.push(e);
            if done {
                return;
            }
        }
    })
    .await
    .expect("the awaited event did not arrive")
}

fn granted(events: &[pb::ConsentEvent]) -> BTreeMap<String, (String, String)> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Granted as i32)
        .map(|e| {
            (
                e.customer_number.clone(),
                (e.team.clone(), e.customer_name.clone()),
            )
        })
        .collect()
}

#[tokio::test]
async fn issue13_three_teams_register_customers_answer_and_each_team_lists_and_follows_its_own() {
    let file = clients_file();
    let mut config = test_config();
    config.api_clients_file = Some(file.path().to_owned());
    config.attribution.unattributed = UnattributedPolicy::NoTeam;
    config.temporary_grant = Duration::from_secs(WINDOW_SECS as u64);
    let app = spawn_app_with(config, memory_store()).await;

    let mut streams = Vec::new();
    for team in TEAMS {
        streams.push(
            app.stream(pb::StreamGrantsRequest {
                teams: vec![team.into()],
                include_denials: true,
                include_expiries: true,
                ..Default::default()
            })
            .await,
        );
    }
    let (c1, c2, c3, c4, c5) = (
        customer(1),
        customer(2),
        customer(3),
        customer(4),
        customer(5),
    );
    // premium: c1 answers on DoubleTick ("Always Allow"), registered first, no name known.
    register(&app, &c1, "paired-dt-c1", "premium", None).await;
    doubletick_answer(&app, &c1, "dt-c1", "accept", true).await;
    // premium: c4 answers on Meta ("Always Allow"), registered first; Meta names her.
    register(&app, &c4, "wamid.req-c4", "premium", None).await;
    meta_answer(&app, &c4, "Asha Rao", "wamid.c4", "wamid.req-c4", true).await;
    // acquisition: c3's DoubleTick "Always Allow" lands BEFORE the registration, which names
    // him.
    doubletick_answer(&app, &c3, "dt-c3", "accept", true).await;
    register(&app, &c3, "paired-dt-c3", "acquisition", Some("Ravi Kumar")).await;
    // acquisition: c5 says "Don't Allow".
    register(&app, &c5, "paired-dt-c5", "acquisition", None).await;
    doubletick_answer(&app, &c5, "dt-c5", "reject", false).await;
    // retention: c2's Meta "Allow for 7 Days" (3 s here) lands BEFORE the registration.
    let c2_expires = meta_answer(
        &app,
        &c2,
        "Sheena Nelson",
        "wamid.c2",
        "wamid.req-c2",
        false,
    )
    .await;
    register(&app, &c2, "wamid.req-c2", "retention", None).await;

    // Each team's list.
    let premium = list(&app, "premium").await;
    assert_eq!(
        premium.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([c1.clone(), c4.clone()])
    );
    assert_eq!(premium[&c4].customer_name, "Asha Rao");
    assert_eq!(premium[&c4].campaign, "premium-q4");
    assert_eq!(
        premium[&c4].labels.get("source").map(String::as_str),
        Some("crm")
    );
    assert_eq!(premium[&c1].state, ConsentState::GrantedPermanent as i32);
    let retention = list(&app, "retention").await;
    assert_eq!(
        retention.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([c2.clone()])
    );
    assert_eq!(retention[&c2].customer_name, "Sheena Nelson");
    assert_eq!(retention[&c2].state, ConsentState::GrantedTemporary as i32);
    assert_eq!(
        retention[&c2]
            .expires_at
            .as_ref()
            .and_then(callgate::grpc_api::from_timestamp),
        Some(c2_expires)
    );
    let acquisition = list(&app, "acquisition").await;
    assert_eq!(
        acquisition.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([c3.clone()])
    );
    assert_eq!(acquisition[&c3].customer_name, "Ravi Kumar");
    // The unfiltered list holds all four grants.
    let everyone = list(&app, "").await;
    assert_eq!(everyone.len(), 4);

    // c4 changes her mind: off every list, and every team hears of it.
    doubletick_answer(&app, &c4, "dt-c4-deny", "reject", false).await;
    for team in TEAMS {
        assert!(!list(&app, team).await.contains_key(&c4), "{team}");
    }

    // The 7-day grant leaves the list at its instant: present while the clock is before
    // `expires_at`, absent from it on (each read bracketed by the clock, so no read is
    // judged on the wrong side of the instant), within a bounded wait.
    tokio::time::timeout(WAIT, async {
        loop {
            let before = app.clock.now();
            let listed = list(&app, "retention").await.contains_key(&c2);
            let after = app.clock.now();
            if after < c2_expires {
                assert!(listed, "left the list before its instant");
            }
            if before >= c2_expires {
                assert!(!listed, "still listed after its instant");
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the 7-day grant did not leave the list");

    // The sweep announces the lapse (every team hears it) ...
    let mut seen: Vec<Vec<pb::ConsentEvent>> = vec![Vec::new(); TEAMS.len()];
    for (s, events) in streams.iter_mut().zip(seen.iter_mut()) {
        read_until(s, events, |e| {
            e.kind == EventKind::Expired as i32 && e.customer_number == c2
        })
        .await;
    }
    // ... and a marker grant per team closes each stream's story: what came before it is all
    // the stream delivered.
    for (i, team) in TEAMS.iter().enumerate() {
        let marker = customer(900 + i);
        register(&app, &marker, &format!("paired-marker-{i}"), team, None).await;
        doubletick_answer(&app, &marker, &format!("marker-{i}"), "accept", true).await;
    }
    for (i, (s, events)) in streams.iter_mut().zip(seen.iter_mut()).enumerate() {
        let marker = customer(900 + i);
        read_until(s, events, |e| e.customer_number == marker).await;
        let last = events.pop().unwrap();
        assert_eq!(last.kind, EventKind::Granted as i32);
    }
    // Exactly its grants, with the name where known.
    let want: [BTreeMap<String, (String, String)>; 3] = [
        BTreeMap::from([
            (c1.clone(), ("premium".into(), String::new())),
            (c4.clone(), ("premium".into(), "Asha Rao".into())),
        ]),
        BTreeMap::from([(c2.clone(), ("retention".into(), "Sheena Nelson".into()))]),
        BTreeMap::from([(c3.clone(), ("acquisition".into(), "Ravi Kumar".into()))]),
    ];
    for (i, team) in TEAMS.iter().enumerate() {
        let events = &seen[i];
        assert_eq!(granted(events), want[i], "{team}");
        let grants = events
            .iter()
            .filter(|e| e.kind == EventKind::Granted as i32)
            .count();
        assert_eq!(grants, want[i].len(), "{team}: a grant delivered twice");
        // Replies that came before their registration reach their team as late attributions.
        for e in events
            .iter()
            .filter(|e| e.kind == EventKind::Granted as i32)
        {
            assert_eq!(
                e.late_attribution,
                e.customer_number == c2 || e.customer_number == c3,
                "{team}"
            );
        }
        // Every team hears every denial (c5's, c4's) and the 7-day grant's expiry.
        let denied: BTreeSet<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Denied as i32)
            .map(|e| e.customer_number.as_str())
            .collect();
        assert_eq!(denied, BTreeSet::from([c5.as_str(), c4.as_str()]), "{team}");
        let expired: Vec<&str> = events
            .iter()
            .filter(|e| e.kind == EventKind::Expired as i32)
            .map(|e| e.customer_number.as_str())
            .collect();
        assert_eq!(expired, vec![c2.as_str()], "{team}");
    }
    // And the lists agree with what each team followed.
    for (i, team) in TEAMS.iter().enumerate() {
        let listed: BTreeSet<String> = list(&app, team).await.into_keys().collect();
        let mut followed: BTreeSet<String> = want[i].keys().cloned().collect();
        followed.remove(&c4);
        followed.remove(&c2);
        followed.insert(customer(900 + i));
        assert_eq!(listed, followed, "{team}");
    }
}
