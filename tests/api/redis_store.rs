//! What only the Redis store promises: native expiry, durability, failure behaviour,
//! configuration checks and the key layout. Everything both stores share is in `conformance`.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands;

use callgate::domain::{
    Choice, Decision, EventKind, Evidence, Pair, PhoneNumber, Source, to_millis_precision,
};
use callgate::store::redis::keys::Keys;
use callgate::store::redis::{RedisConfig, RedisStore};
use callgate::store::{
    ConsentStore, Cursor, DEDUP_RETENTION, RecordOutcome, RegisterOutcome, StoreError, StreamId,
};

use crate::conformance::{policy, request};
use crate::redis_harness::{RedisOptions, RedisServer, command_calls, reset_command_stats};

fn pair(n: u32) -> Pair {
    Pair::new(
        PhoneNumber::parse("+14155550000").unwrap(),
        PhoneNumber::parse(&format!("+4479{n:08}")).unwrap(),
    )
}

fn now() -> DateTime<Utc> {
    to_millis_precision(Utc::now())
}

fn decision(pair: &Pair, choice: Choice, decided_at: DateTime<Utc>, msg: &str) -> Decision {
    Decision {
        pair: pair.clone(),
        choice,
        decided_at,
        evidence: Evidence {
            source: Source::WhatsApp,
            message_id: msg.to_owned(),
            paired_message_id: String::new(),
            response_source: "user_initiated".to_owned(),
            sender_customer_id: String::new(),
            body_sha256: [0xee; 32],
            stated_at: decided_at,
            stated_expires_at: choice.expires_at(),
        },
        attribution: None,
        customer_name: None,
    }
}

/// This file's tests read and edit layout v1's keys (`tests/api/redis_layout_v2.rs` has v2's).
async fn connect(server: &RedisServer) -> RedisStore {
    RedisStore::connect(server.v1_config())
        .await
        .expect("connect")
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn all_keys(conn: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    conn.keys("*").await.unwrap()
}

/// The hash tag of a key: the text between its first `{` and the next `}`.
fn hash_tag(key: &str) -> &str {
    let start = key.find('{').expect("key has a hash tag") + 1;
    let end = start + key[start..].find('}').expect("hash tag closes");
    &key[start..end]
}

#[tokio::test]
async fn temporary_grant_key_expires_natively_at_the_grant_expiry() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(1);
    let keys = Keys::new("callgate").pair(&p);
    let t = now();
    let expires = t + chrono::Duration::seconds(3600);
    // Decided a minute ago and arriving now: the expiry is the grant's own, not arrival + TTL.
    let grant = decision(
        &p,
        Choice::GrantTemporary {
            expires_at: expires,
        },
        t - chrono::Duration::seconds(60),
        "temp",
    );
    store.record(&[grant], t).await.unwrap();
    let expire_time: i64 = redis::cmd("PEXPIRETIME")
        .arg(&keys.consent)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(expire_time, expires.timestamp_millis());
    let history_ttl: i64 = conn.pttl(&keys.history).await.unwrap();
    assert_eq!(
        history_ttl, -1,
        "the history (which outlives the grant) never expires"
    );
    let due: Option<f64> = conn.zscore(&keys.due, &keys.member).await.unwrap();
    assert_eq!(due, Some(expires.timestamp_millis() as f64));
    // The lapse record holds the same grant, with no TTL: it answers EXPIRED once `c:` is gone.
    let consent: Vec<u8> = conn.get(&keys.consent).await.unwrap();
    let lapse: Vec<u8> = conn.get(&keys.lapse).await.unwrap();
    assert_eq!(lapse, consent);
    let lapse_ttl: i64 = conn.pttl(&keys.lapse).await.unwrap();
    assert_eq!(lapse_ttl, -1);

    // A denial wins: no expiry, no due entry, no lapse record.
    let deny = decision(&p, Choice::Deny, t, "deny");
    store.record(std::slice::from_ref(&deny), t).await.unwrap();
    let consent_ttl: i64 = conn.pttl(&keys.consent).await.unwrap();
    assert_eq!(consent_ttl, -1);
    let due: Option<f64> = conn.zscore(&keys.due, &keys.member).await.unwrap();
    assert_eq!(due, None);
    let lapse_exists: bool = conn.exists(&keys.lapse).await.unwrap();
    assert!(!lapse_exists, "a denial that wins removes the lapse record");
    assert_eq!(store.current(&p).await.unwrap(), Some(deny));
}

#[tokio::test]
async fn a_grant_whose_consent_key_expired_is_read_from_the_lapse_record() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(8);
    let keys = Keys::new("callgate").pair(&p);
    let t = now();
    let grant = decision(
        &p,
        Choice::GrantTemporary {
            expires_at: t + chrono::Duration::milliseconds(300),
        },
        t,
        "short",
    );
    store.record(std::slice::from_ref(&grant), t).await.unwrap();
    assert_eq!(store.current(&p).await.unwrap(), Some(grant.clone()));
    // Redis expires the consent key natively, on its own clock: wait (bounded) for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let consent_exists: bool = conn.exists(&keys.consent).await.unwrap();
        if !consent_exists {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never expired the consent key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.current(&p).await.unwrap(), Some(grant.clone()));
    assert_eq!(
        store.current_many(&[pair(9), p.clone()]).await.unwrap(),
        vec![None, Some(grant.clone())]
    );
    // The sweep claims it once and leaves the lapse record.
    assert_eq!(store.claim_expired(now()).await.unwrap(), 1);
    assert_eq!(store.claim_expired(now()).await.unwrap(), 0);
    assert_eq!(store.current(&p).await.unwrap(), Some(grant));
    // A permanent grant arbitrates against the lapsed grant and removes its lapse record.
    let permanent = decision(&p, Choice::GrantPermanent, now(), "perm");
    assert_eq!(
        store
            .record(std::slice::from_ref(&permanent), now())
            .await
            .unwrap(),
        vec![RecordOutcome::Applied]
    );
    let lapse_exists: bool = conn.exists(&keys.lapse).await.unwrap();
    assert!(!lapse_exists);
    assert_eq!(store.current(&p).await.unwrap(), Some(permanent));
}

#[tokio::test]
async fn grant_expired_on_arrival_has_no_consent_key_and_is_read_from_the_lapse_record() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(2);
    let keys = Keys::new("callgate").pair(&p);
    let t = now();
    let late = decision(
        &p,
        Choice::GrantTemporary {
            expires_at: t - chrono::Duration::seconds(1),
        },
        t - chrono::Duration::seconds(10),
        "late",
    );
    store.record(std::slice::from_ref(&late), t).await.unwrap();
    let consent_exists: bool = conn.exists(&keys.consent).await.unwrap();
    assert!(!consent_exists);
    let lapse_exists: bool = conn.exists(&keys.lapse).await.unwrap();
    assert!(lapse_exists);
    assert_eq!(store.current(&p).await.unwrap(), Some(late));
}

#[tokio::test]
async fn a_retry_long_after_the_dedup_horizon_is_still_a_duplicate() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(7);
    let t = now();
    let then = t - chrono::Duration::from_std(DEDUP_RETENTION).unwrap() - chrono::Duration::days(1);
    let first = decision(&p, Choice::GrantPermanent, then, "first");
    let newer = decision(
        &p,
        Choice::Deny,
        then + chrono::Duration::seconds(1),
        "newer",
    );
    assert_eq!(
        store
            .record(&[first.clone(), newer.clone()], then)
            .await
            .unwrap(),
        vec![RecordOutcome::Applied; 2]
    );
    // The history is the de-duplication memory, and nothing of it expires.
    for key in all_keys(&mut conn).await {
        let ttl: i64 = conn.pttl(&key).await.unwrap();
        assert_eq!(ttl, -1, "{key} expires");
    }
    // Nine days later the sender retries both. The first one lost arbitration, so only the
    // de-duplication memory can tell it from a new stale decision.
    assert_eq!(
        store.record(&[first, newer.clone()], t).await.unwrap(),
        vec![RecordOutcome::Duplicate; 2]
    );
    assert_eq!(store.history(&p).await.unwrap().len(), 2);
    assert_eq!(store.current(&p).await.unwrap(), Some(newer));
}

#[tokio::test]
async fn data_survives_a_new_store_and_a_server_crash_with_aof() {
    let mut server = RedisServer::start_with(RedisOptions::aof());
    let p = pair(3);
    let t = now();
    let grant = decision(&p, Choice::GrantPermanent, t, "g");
    let deny = decision(&p, Choice::Deny, t + chrono::Duration::seconds(1), "d");
    {
        let store = connect(&server).await;
        store
            .record(&[grant.clone(), deny.clone()], t)
            .await
            .unwrap();
    }
    let store = connect(&server).await;
    assert_eq!(store.current(&p).await.unwrap(), Some(deny.clone()));
    let history = store.history(&p).await.unwrap();

    server.stop();
    server.restart();
    let store = connect(&server).await;
    assert_eq!(store.current(&p).await.unwrap(), Some(deny.clone()));
    assert_eq!(store.history(&p).await.unwrap(), history);
    let zero = Cursor::uniform(store.shards(), StreamId::ZERO);
    let events = store.read_events(&zero, 10, Duration::ZERO).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.kind).collect::<Vec<_>>(),
        vec![EventKind::Granted, EventKind::Denied]
    );
    // The dedup memory survived too (and the scripts, gone with the restart, are reloaded).
    assert_eq!(
        store.record(&[grant, deny], now()).await.unwrap(),
        vec![RecordOutcome::Duplicate; 2]
    );
}

#[tokio::test]
async fn a_dead_server_is_an_error_and_the_store_recovers_when_it_returns() {
    let mut server = RedisServer::start();
    let store = connect(&server).await;
    let p = pair(4);
    let d = decision(&p, Choice::GrantPermanent, now(), "g");
    store.record(std::slice::from_ref(&d), now()).await.unwrap();
    let zero = Cursor::uniform(store.shards(), StreamId::ZERO);
    assert_eq!(
        store
            .read_events(&zero, 10, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );

    server.stop();
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let current = store.current(&p).await;
        assert!(
            matches!(
                current,
                Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
            ),
            "{current:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let recorded = store.record(std::slice::from_ref(&d), now()).await;
        assert!(
            matches!(
                recorded,
                Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
            ),
            "{recorded:?}"
        );
        assert!(store.current_many(std::slice::from_ref(&p)).await.is_err());
        assert!(store.ping().await.is_err());
        assert!(store.claim_expired(now()).await.is_err());
        assert!(
            store
                .read_events(&zero, 10, Duration::from_millis(50))
                .await
                .is_err()
        );
    }

    // Data is gone (no persistence), but the same store instance works again.
    let port = server.port();
    server.restart();
    assert_eq!(server.port(), port, "restarted on the same port");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store.current(&p).await {
            Ok(current) => {
                assert_eq!(current, None);
                break;
            }
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "store did not recover: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        store.record(std::slice::from_ref(&d), now()).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    store.ping().await.unwrap();
    let events = store
        .read_events(&zero, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(events.len(), 1);

    // A restart while nobody reads: the idle blocking-read connection is dead, and the next
    // read still succeeds on a fresh one.
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = store
        .read_events(&zero, 10, Duration::from_millis(100))
        .await
        .unwrap();
    assert!(events.is_empty(), "the restarted server has no data");
}

#[tokio::test]
async fn eviction_policies_other_than_noeviction_are_refused() {
    let server = RedisServer::start_with(RedisOptions::maxmemory_policy("allkeys-lru"));
    let err = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .unwrap_err();
    let StoreError::Misconfigured(msg) = &err else {
        panic!("expected Misconfigured, got {err:?}");
    };
    assert!(
        msg.contains("allkeys-lru") && msg.contains("noeviction"),
        "{msg}"
    );

    // A policy changed while running is caught by the readiness check.
    let server = RedisServer::start();
    let store = connect(&server).await;
    store.ping().await.unwrap();
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    match store.ping().await {
        Err(StoreError::Misconfigured(msg)) => assert!(msg.contains("volatile-lru"), "{msg}"),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn a_redis_without_config_get_is_refused_as_unverifiable() {
    let server = RedisServer::start_with(RedisOptions {
        extra_args: vec!["--rename-command".into(), "CONFIG".into(), String::new()],
        ..Default::default()
    });
    match RedisStore::connect(RedisConfig::new(server.url())).await {
        Err(StoreError::Misconfigured(msg)) => {
            assert!(
                msg.contains("cannot verify maxmemory-policy") && msg.contains("noeviction"),
                "{msg}"
            )
        }
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn unreadable_values_are_corrupt_never_no_consent() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(5);
    let keys = Keys::new("callgate").pair(&p);
    // A lapse record beside a permanent grant: the two keys disagree.
    store
        .record(
            &[decision(&p, Choice::GrantPermanent, now(), "perm")],
            now(),
        )
        .await
        .unwrap();
    let stray: Vec<u8> = conn.get(&keys.consent).await.unwrap();
    let _: () = conn.set(&keys.lapse, stray).await.unwrap();
    assert!(matches!(
        store.current(&p).await,
        Err(StoreError::Corrupt(_))
    ));
    let _: () = conn.del(&keys.lapse).await.unwrap();
    let _: () = conn.set(&keys.consent, "garbage").await.unwrap();
    assert!(matches!(
        store.current(&p).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.current_many(&[pair(6), p.clone()]).await,
        Err(StoreError::Corrupt(_))
    ));
    // The record script refuses to arbitrate against it rather than overwrite it.
    let d = decision(&p, Choice::Deny, now(), "d");
    assert!(matches!(
        store.record(&[d], now()).await,
        Err(StoreError::Corrupt(_))
    ));
    // The same for an unreadable lapse record without a consent key.
    let _: () = conn.del(&keys.consent).await.unwrap();
    let _: () = conn.set(&keys.lapse, "garbage").await.unwrap();
    assert!(matches!(
        store.current(&p).await,
        Err(StoreError::Corrupt(_))
    ));
    let d = decision(&p, Choice::Deny, now(), "d2");
    assert!(matches!(
        store.record(&[d], now()).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn a_batch_check_spanning_every_shard_answers_in_request_order() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let t = now();
    // 300 pairs (every shard), a mix of all kinds, one lapse record only; 50 pairs unknown.
    let decisions: Vec<Decision> = (0..300)
        .map(|n| {
            let choice = match n % 4 {
                0 => Choice::GrantPermanent,
                1 => Choice::Deny,
                2 => Choice::GrantTemporary {
                    expires_at: t + chrono::Duration::seconds(600),
                },
                _ => Choice::GrantTemporary {
                    expires_at: t - chrono::Duration::seconds(1),
                },
            };
            decision(&pair(n), choice, t - chrono::Duration::seconds(5), "m")
        })
        .collect();
    store.record(&decisions, t).await.unwrap();
    // Reversed, interleaved with unknown pairs, some asked twice.
    let asked: Vec<Pair> = (0..350u32)
        .rev()
        .flat_map(|n| {
            if n % 7 == 0 {
                vec![pair(n), pair(n)]
            } else {
                vec![pair(n)]
            }
        })
        .collect();
    let want: Vec<Option<Decision>> = asked
        .iter()
        .map(|p| decisions.iter().find(|d| &d.pair == p).cloned())
        .collect();
    assert_eq!(store.current_many(&asked).await.unwrap(), want);
    for (p, want) in asked.iter().zip(&want) {
        assert_eq!(&store.current(p).await.unwrap(), want);
    }
}

#[tokio::test]
async fn keys_of_one_decision_share_a_hash_tag_and_pairs_spread_over_shards() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let t = now();
    let temp = decision(
        &pair(0),
        Choice::GrantTemporary {
            expires_at: t + chrono::Duration::seconds(600),
        },
        t,
        "temp",
    );
    store.record(&[temp], t).await.unwrap();
    // The store's layout marker, written at connect, is no decision's key (its own slot).
    let keys: Vec<String> = all_keys(&mut conn)
        .await
        .into_iter()
        .filter(|k| k != "{callgate}:layout")
        .collect();
    // consent, lapse record, history, dedup hash, stream, due index, (issue 14) the
    // business's records index of the shard by received and by event time, and (issue 13)
    // the business's calling-list index in the pair's shard.
    assert_eq!(keys.len(), 9, "{keys:?}");
    let tags: BTreeSet<&str> = keys.iter().map(|k| hash_tag(k)).collect();
    assert_eq!(tags.len(), 1, "{keys:?}");
    assert!(tags.iter().all(|t| t.starts_with("callgate:s")), "{tags:?}");

    let many: Vec<Decision> = (1..=200)
        .map(|n| decision(&pair(n), Choice::GrantPermanent, t, "p"))
        .collect();
    store.record(&many, t).await.unwrap();
    let keys: Vec<String> = all_keys(&mut conn)
        .await
        .into_iter()
        .filter(|k| k != "{callgate}:layout")
        .collect();
    let tags: BTreeSet<&str> = keys.iter().map(|k| hash_tag(k)).collect();
    assert!(tags.len() >= 12, "200 pairs landed on only {tags:?}");
    assert!(tags.len() <= callgate::store::redis::SHARDS);

    // The prefix is configurable and keeps deployments apart.
    let mut config = server.v1_config();
    config.prefix = "other".to_owned();
    let other = RedisStore::connect(config).await.unwrap();
    assert_eq!(other.current(&pair(1)).await.unwrap(), None);
    other
        .record(&[decision(&pair(1), Choice::Deny, t, "d")], t)
        .await
        .unwrap();
    let other_keys: Vec<String> = conn.keys("{other:*").await.unwrap();
    assert!(!other_keys.is_empty());
    assert_eq!(
        store.current(&pair(1)).await.unwrap().map(|d| d.choice),
        Some(Choice::GrantPermanent)
    );
}

#[tokio::test]
async fn events_are_trimmed_exactly_by_retention() {
    let server = RedisServer::start();
    let mut config = server.v1_config();
    config.event_retention = Duration::from_millis(200);
    let store = RedisStore::connect(config).await.unwrap();
    let mut conn = raw(&server).await;
    let p = pair(9);
    let stream = Keys::new("callgate").pair(&p).stream;
    let t = now();
    for i in 0..5 {
        store
            .record(
                &[decision(
                    &p,
                    Choice::Deny,
                    t + chrono::Duration::milliseconds(i),
                    &format!("d{i}"),
                )],
                now(),
            )
            .await
            .unwrap();
    }
    let len: usize = conn.xlen(&stream).await.unwrap();
    assert_eq!(len, 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .record(&[decision(&p, Choice::GrantPermanent, now(), "g")], now())
        .await
        .unwrap();
    let len: usize = conn.xlen(&stream).await.unwrap();
    assert_eq!(len, 1, "exact MINID trimming leaves only the new event");
}

/// Issue 9.6: recording costs the same however long the pair's history is: the record script
/// looks up the delivery in the pair's dedup hash and never reads the history list.
#[tokio::test]
async fn issue9_6_recording_never_reads_the_history() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut conn = raw(&server).await;
    let p = pair(11);
    let t = now();
    for i in 0..300 {
        let d = decision(
            &p,
            Choice::Deny,
            t + chrono::Duration::milliseconds(i),
            &format!("m{i}"),
        );
        store.record(&[d], now()).await.unwrap();
    }
    // A retry of an old delivery is still recognised.
    let first = decision(&p, Choice::Deny, t, "m0");
    assert_eq!(
        store.record(&[first], now()).await.unwrap(),
        vec![RecordOutcome::Duplicate]
    );
    assert_eq!(
        command_calls(&mut conn, "lrange").await,
        0,
        "a record read the history"
    );
    assert!(command_calls(&mut conn, "hget").await > 0);
}

/// Issue 16: recording guesses the pair's chain tip without a read: the tip this replica last
/// wrote, else an empty history. A right guess costs one script call; a wrong one is refused
/// before anything is written and answered with the real tip, and the second call chains to
/// it: two script calls. While most pairs it did not know had a history, a replica reads the
/// tip first instead (a read and one script call). The chain stays whole.
#[tokio::test]
async fn recording_guesses_the_chain_tip_and_a_wrong_guess_costs_one_refused_call() {
    let server = RedisServer::start();
    let (a, b) = (connect(&server).await, connect(&server).await);
    let mut conn = raw(&server).await;
    let p = pair(12);
    let t = now();
    let mut recorded = Vec::new();
    // (replica, what it knows of the pair's tip)
    let steps = [
        (&a, "nothing: the history is empty"),
        (&b, "nothing, and the history is not empty"),
        (&b, "the tip it wrote"),
        (&a, "an old tip (b wrote since)"),
        (&a, "the tip it wrote"),
    ];
    for (i, (store, _)) in steps.iter().enumerate() {
        reset_command_stats(&mut conn).await;
        let choice = if i % 2 == 0 {
            Choice::GrantPermanent
        } else {
            Choice::Deny
        };
        let d = decision(
            &p,
            choice,
            t + chrono::Duration::seconds(i as i64),
            &format!("m{i}"),
        );
        assert_eq!(
            store.record(&[d], now()).await.unwrap(),
            vec![RecordOutcome::Applied]
        );
        // (script calls, LLEN calls): each script reads the length once, nothing else does.
        recorded.push((
            command_calls(&mut conn, "evalsha").await,
            command_calls(&mut conn, "llen").await,
        ));
    }
    assert_eq!(recorded, vec![(1, 1), (2, 2), (1, 1), (2, 2), (1, 1)]);
    // Replica b has since met only returning customers it did not know (one, above): for the
    // next such pair it reads the tip first (one LLEN outside the script), and needs one script
    // call, not two.
    let q = pair(13);
    let first = decision(&q, Choice::GrantPermanent, t, "q0");
    a.record(&[first], now()).await.unwrap();
    reset_command_stats(&mut conn).await;
    let second = decision(&q, Choice::Deny, t + chrono::Duration::seconds(1), "q1");
    assert_eq!(
        b.record(&[second], now()).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    assert_eq!(
        (
            command_calls(&mut conn, "evalsha").await,
            command_calls(&mut conn, "llen").await
        ),
        (1, 2)
    );
    // The chain is whole: every entry links to the one before it.
    let page = a.history_page(&p, 0, 10).await.unwrap();
    let links: Vec<_> = page.links.iter().map(|l| l.unwrap()).collect();
    assert_eq!(links.len(), steps.len());
    assert_eq!(links[0].prev, callgate::domain::GENESIS);
    for (at, pair) in links.windows(2).enumerate() {
        assert_eq!(pair[1].prev, pair[0].hash, "entry {}", at + 1);
        assert_eq!(pair[1].position, at as u64 + 1);
    }
}

/// The store's memory report (used by `callgate-bench redis-memory`) counts exactly this
/// prefix's keys by kind, and measures a bounded sample of each.
#[tokio::test]
async fn the_memory_report_counts_this_prefixs_keys_by_kind() {
    let server = RedisServer::start();
    let store = connect(&server).await;
    let mut other = server.v1_config();
    other.prefix = "other".into();
    let other = RedisStore::connect(other).await.unwrap();
    let empty = store.memory_usage().await.unwrap();
    // DBSIZE: the two stores' layout markers.
    assert_eq!(empty.keys, 2);
    assert!(empty.used_memory > 0);

    let t = now();
    let later = t + chrono::Duration::days(7);
    let decisions: Vec<Decision> = (0..40)
        .map(|i| {
            let choice = match i % 4 {
                0 | 1 => Choice::GrantPermanent,
                2 => Choice::GrantTemporary { expires_at: later },
                _ => Choice::Deny,
            };
            decision(&pair(i), choice, t, &format!("m{i}"))
        })
        .collect();
    store.record(&decisions, now()).await.unwrap();
    other.record(&decisions[..3], now()).await.unwrap();
    let shards: BTreeSet<usize> = decisions
        .iter()
        .map(|d| Keys::new("callgate").pair(&d.pair).shard)
        .collect();
    let temporary_shards: BTreeSet<usize> = decisions
        .iter()
        .filter(|d| matches!(d.choice, Choice::GrantTemporary { .. }))
        .map(|d| Keys::new("callgate").pair(&d.pair).shard)
        .collect();
    // Issue 13: one calling-list index per (shard, business) holding a grant.
    let granted_shards: BTreeSet<usize> = decisions
        .iter()
        .filter(|d| !matches!(d.choice, Choice::Deny))
        .map(|d| Keys::new("callgate").pair(&d.pair).shard)
        .collect();

    let report = store.memory_report(3, 1).await.unwrap();
    let mut conn = raw(&server).await;
    assert_eq!(report.usage.keys, all_keys(&mut conn).await.len() as u64);
    assert!(report.usage.used_memory > empty.used_memory);
    assert!(!report.redis_version.is_empty());
    assert!(!report.list_max_listpack_size.is_empty());
    let counts: Vec<(&str, u64)> = report
        .kinds
        .iter()
        .map(|(kind, k)| (kind.as_str(), k.keys))
        .collect();
    assert_eq!(
        counts,
        [
            // issue 14: one records index per order per shard the business has pairs in.
            ("be", shards.len() as u64),
            ("br", shards.len() as u64),
            ("c", 40),
            ("d", 40),
            ("due", temporary_shards.len() as u64),
            ("e", shards.len() as u64),
            ("h", 40),
            ("l", granted_shards.len() as u64),
            ("x", 10),
        ]
    );
    for (kind, k) in &report.kinds {
        assert_eq!(k.sampled, k.keys.min(3), "{kind}");
        assert_eq!(k.encodings.values().sum::<u64>(), k.sampled, "{kind}");
        assert!(k.mean_bytes() > 0.0, "{kind}");
        assert!(k.estimated_bytes() >= k.mean_bytes(), "{kind}");
    }
    // The other prefix's keys are in DBSIZE, never in this store's kinds.
    let other_report = other.memory_report(3, 1).await.unwrap();
    assert_eq!(other_report.kinds["c"].keys, 3);
    assert_eq!(other_report.usage.keys, report.usage.keys);
}

#[tokio::test]
async fn with_replica_acks_a_write_is_acknowledged_only_once_a_replica_holds_it() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(RedisOptions {
        extra_args: vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ],
        ..Default::default()
    });
    let mut config = RedisConfig::new(primary.url());
    config.replica_acks = 1;
    let store = RedisStore::connect(config.clone()).await.unwrap();
    let t = now();
    let both = [
        decision(&pair(1), Choice::GrantPermanent, t, "a"),
        decision(&pair(2), Choice::Deny, t, "b"),
    ];
    // The replica syncs within moments of starting; until then WAIT answers 0.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let outcomes = loop {
        match store.record(&both, t).await {
            Ok(outcomes) => break outcomes,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outcomes.len(), 2);
    // The replica holds both: it answers a check as the primary does.
    let on_replica = RedisStore::connect(RedisConfig::new(replica.url()))
        .await
        .unwrap();
    assert_eq!(
        on_replica.current(&pair(2)).await.unwrap(),
        Some(both[1].clone())
    );
    // A consent request's registration takes the same path: acknowledged once the replica
    // holds it, so the replica counts it in the pair's budget.
    let policy = policy();
    let registration = request(&pair(1), "req-1", "premium", t);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        // On a loaded machine WAIT may run out (the store timeout's half): the sender retries,
        // and the retry finds the stored registration.
        match store.register_request(&registration, t, &policy).await {
            Ok(outcome) => break outcome,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        matches!(
            outcome,
            RegisterOutcome::Registered { attributed: 0 } | RegisterOutcome::Duplicate
        ),
        "{outcome:?}"
    );
    let budget = on_replica
        .request_budget(&pair(1), t, &policy)
        .await
        .unwrap();
    assert!(budget.uses.iter().all(|u| u.used == 1), "{budget:?}");
    assert!(!budget.uses.is_empty());

    // No replica: the write is stored on the primary but not acknowledged.
    drop(replica);
    let lone = decision(&pair(3), Choice::GrantPermanent, t, "c");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match store.record(std::slice::from_ref(&lone), t).await {
            Err(e) => break e,
            // The primary notices the replica's loss within a moment.
            Ok(_) => assert!(std::time::Instant::now() < deadline, "acknowledged alone"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Refused because no replica acknowledged (or, on a loaded machine, because the WAIT
    // and the write did not fit in the store timeout): either way, never acknowledged.
    let refused = |err: &StoreError| match err {
        StoreError::Unavailable(m) => assert!(m.contains("CALLGATE_REDIS_REPLICA_ACKS"), "{m}"),
        StoreError::Timeout(_) => {}
        other => panic!("{other:?}"),
    };
    refused(&err);
    // So is a registration: the primary knows it has no replica now.
    let err = store
        .register_request(&request(&pair(3), "req-2", "premium", t), t, &policy)
        .await
        .expect_err("a registration no replica holds was acknowledged");
    refused(&err);
}
