//! What only Redis layout v2 (`docs/redis-layout-v2.md`, the layout of every new store) must
//! show beyond the conformance suite (`conformance::redis_layout_v2`): its packed structures
//! at the sizes where they change shape. The due index and the calling lists are chunked
//! sorted arrays that split past about 50 records; a pair's dedup walk gives way to a dedup
//! hash past 32 entries; hot-record buckets turn into hash tables past 128 pairs. And the
//! layout marker (with `auto`), damaged records, and the chain tip read.

use chrono::{DateTime, Duration, Utc};

use callgate::domain::{
    Choice, Decision, EventKind, Evidence, Pair, PhoneNumber, Source, to_millis_precision,
};
use callgate::store::redis::{Layout, RedisConfig, RedisStore};
use callgate::store::{ConsentStore, Cursor, RecordOutcome, StoreError};

use crate::redis_harness::RedisServer;

fn pair(n: u32) -> Pair {
    Pair::new(
        PhoneNumber::parse("+14155550000").unwrap(),
        PhoneNumber::parse(&format!("+4479{n:08}")).unwrap(),
    )
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

/// A v2 store with `buckets` hot-record buckets a shard.
async fn v2_store(server: &RedisServer, buckets: u32) -> RedisStore {
    let mut config = RedisConfig::new(server.url());
    config.layout = Layout::V2;
    config.hot_buckets = buckets;
    config.timeout = std::time::Duration::from_secs(5);
    RedisStore::connect(config).await.expect("connect")
}

/// Every event of the store's log, from the start.
async fn all_events(store: &RedisStore) -> Vec<callgate::store::LoggedEvent> {
    let mut cursor = Cursor::uniform(store.shards(), callgate::store::StreamId::ZERO);
    let mut out = Vec::new();
    loop {
        let page = store
            .read_events(&cursor, 500, std::time::Duration::ZERO)
            .await
            .unwrap();
        if page.is_empty() {
            return out;
        }
        for e in &page {
            cursor.advance(e.shard, e.id);
        }
        out.extend(page);
    }
}

#[tokio::test]
async fn many_lapses_across_split_due_chunks_are_each_claimed_once() {
    let server = RedisServer::start();
    // Two buckets a shard: 1,200 pairs overflow the hashes' listpack form too.
    let store = v2_store(&server, 2).await;
    let t = to_millis_precision(Utc::now());
    let lapse_at = t + Duration::hours(1);
    let n = 1200u32;
    // Recorded out of expiry order, so records land in the middle of chunks and split them.
    let grants: Vec<Decision> = (0..n)
        .map(|i| {
            let k = (i * 7919) % n;
            decision(
                &pair(i),
                Choice::GrantTemporary {
                    expires_at: lapse_at + Duration::milliseconds(i64::from(k)),
                },
                t,
                &format!("grant-{i}"),
            )
        })
        .collect();
    for batch in grants.chunks(100) {
        let out = store.record(batch, t).await.unwrap();
        assert!(out.iter().all(|o| *o == RecordOutcome::Applied));
    }
    // Every tenth grant is superseded by a denial before it lapses: its due record leaves.
    let denials: Vec<Decision> = (0..n)
        .step_by(10)
        .map(|i| {
            decision(
                &pair(i),
                Choice::Deny,
                t + Duration::seconds(1),
                &format!("no-{i}"),
            )
        })
        .collect();
    store.record(&denials, t).await.unwrap();
    let superseded = denials.len();

    // Half the expiries are due at the first sweep, the rest at the second; none twice.
    let first = store
        .claim_expired(lapse_at + Duration::milliseconds(599))
        .await
        .unwrap();
    let again = store
        .claim_expired(lapse_at + Duration::milliseconds(599))
        .await
        .unwrap();
    let second = store
        .claim_expired(lapse_at + Duration::seconds(10))
        .await
        .unwrap();
    let want_first = (0..n)
        .filter(|i| i % 10 != 0 && (i * 7919) % n < 600)
        .count();
    assert_eq!(first, want_first);
    assert_eq!(again, 0);
    assert_eq!(first + second, n as usize - superseded);

    let expired: Vec<_> = all_events(&store)
        .await
        .into_iter()
        .filter(|e| e.event.kind == EventKind::Expired)
        .collect();
    assert_eq!(expired.len(), n as usize - superseded);
    let mut customers: Vec<_> = expired
        .iter()
        .map(|e| e.event.decision.pair.clone())
        .collect();
    customers.sort_by(|a, b| a.customer.digits().cmp(b.customer.digits()));
    customers.dedup();
    assert_eq!(customers.len(), expired.len(), "a lapse announced twice");
    // Each event carries the lapsed grant itself, read back from its entry.
    for e in &expired {
        let i: u32 = e.event.decision.evidence.message_id["grant-".len()..]
            .parse()
            .unwrap();
        assert_ne!(i % 10, 0, "a superseded grant was announced");
        assert_eq!(e.event.decision, grants[i as usize]);
    }
}

#[tokio::test]
async fn a_long_history_is_deduplicated_through_its_dedup_hash() {
    let server = RedisServer::start();
    let store = v2_store(&server, 4).await;
    let p = pair(7);
    let t = to_millis_precision(Utc::now()) - Duration::hours(1);
    // 40 decisions: past the 32 a dedup walk reads.
    let history: Vec<Decision> = (0..40)
        .map(|i| {
            let choice = if i % 2 == 0 {
                Choice::GrantPermanent
            } else {
                Choice::Deny
            };
            decision(&p, choice, t + Duration::seconds(i), &format!("m{i}"))
        })
        .collect();
    for d in &history {
        let out = store.record(std::slice::from_ref(d), t).await.unwrap();
        assert_eq!(out, vec![RecordOutcome::Applied]);
    }
    // The oldest, one in the middle, and the newest are each recognised however old.
    for i in [0usize, 5, 31, 33, 39] {
        let out = store
            .record(std::slice::from_ref(&history[i]), t)
            .await
            .unwrap();
        assert_eq!(out, vec![RecordOutcome::Duplicate], "decision {i}");
    }
    // The same delivery saying something else is a conflict, and stores nothing.
    let mut other = history[1].clone();
    other.choice = Choice::GrantPermanent;
    match store.record(&[other], t).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    let kept = store.history(&p).await.unwrap();
    assert_eq!(kept.len(), 40);
    for (entry, d) in kept.iter().zip(&history) {
        assert_eq!(&entry.decision, d);
    }
    // A new delivery is still recorded after all of that.
    let new = decision(
        &p,
        Choice::GrantPermanent,
        t + Duration::seconds(100),
        "m40",
    );
    assert_eq!(
        store.record(&[new], t).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    assert_eq!(store.history(&p).await.unwrap().len(), 41);
}

#[tokio::test]
async fn a_store_is_read_only_in_the_layout_it_was_written_in() {
    let server = RedisServer::start();
    let config = |layout, buckets| {
        let mut c = RedisConfig::new(server.url());
        c.layout = layout;
        c.hot_buckets = buckets;
        c
    };
    let refused = |r: Result<RedisStore, StoreError>| match r {
        Err(StoreError::Misconfigured(m)) => m,
        Err(e) => panic!("expected Misconfigured, got {e}"),
        Ok(_) => panic!("a store in another layout was accepted"),
    };
    // An empty store is marked by the first replica on v2; replicas configured otherwise are
    // refused, whatever order they start in.
    let v2 = RedisStore::connect(config(Layout::V2, 16)).await.unwrap();
    let t = to_millis_precision(Utc::now());
    v2.record(&[decision(&pair(1), Choice::GrantPermanent, t, "m")], t)
        .await
        .unwrap();
    RedisStore::connect(config(Layout::V2, 16)).await.unwrap();
    let m = refused(RedisStore::connect(config(Layout::V1, 16)).await);
    assert!(
        m.contains("layout 2:16") && m.contains("CALLGATE_REDIS_LAYOUT"),
        "{m}"
    );
    refused(RedisStore::connect(config(Layout::V2, 17)).await);

    // A store with v1 data (another prefix) is refused on v2, and kept on v1.
    let mut v1 = config(Layout::V1, 16);
    v1.prefix = "old".into();
    let old = RedisStore::connect(v1.clone()).await.unwrap();
    old.record(&[decision(&pair(1), Choice::GrantPermanent, t, "m")], t)
        .await
        .unwrap();
    let mut on_v2 = v1.clone();
    on_v2.layout = Layout::V2;
    refused(RedisStore::connect(on_v2).await);
    let again = RedisStore::connect(v1.clone()).await.unwrap();
    assert!(again.current(&pair(1)).await.unwrap().is_some());

    // The default, Auto, takes the store's layout: v2 for the marked v2 store, v1 for the
    // v1 store; and v1 for a v1 store written before the marker existed (marking it "1").
    let mut auto = config(Layout::Auto, 16);
    assert_eq!(
        RedisStore::connect(auto.clone())
            .await
            .unwrap()
            .config()
            .layout,
        Layout::V2
    );
    auto.prefix = "old".into();
    let old_auto = RedisStore::connect(auto.clone()).await.unwrap();
    assert_eq!(old_auto.config().layout, Layout::V1);
    assert!(old_auto.current(&pair(1)).await.unwrap().is_some());
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let marker = |prefix: &str| format!("{{{prefix}}}:layout");
    let _: () = redis::cmd("DEL")
        .arg(marker("old"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let unmarked = RedisStore::connect(auto.clone()).await.unwrap();
    assert_eq!(unmarked.config().layout, Layout::V1);
    assert!(unmarked.current(&pair(1)).await.unwrap().is_some());
    let mark: Option<String> = redis::cmd("GET")
        .arg(marker("old"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(mark.as_deref(), Some("1"));
    // ... and v2 for an empty store, which it marks, so that a v1 replica is then refused.
    auto.prefix = "new".into();
    let fresh = RedisStore::connect(auto).await.unwrap();
    assert_eq!(fresh.config().layout, Layout::V2);
    let mut v1_new = config(Layout::V1, 16);
    v1_new.prefix = "new".into();
    refused(RedisStore::connect(v1_new.clone()).await);
    // An explicit v1 replica marks an empty store "1": an Auto one then follows it.
    v1_new.prefix = "newer".into();
    RedisStore::connect(v1_new).await.unwrap();
    let mut auto_newer = config(Layout::Auto, 16);
    auto_newer.prefix = "newer".into();
    assert_eq!(
        RedisStore::connect(auto_newer)
            .await
            .unwrap()
            .config()
            .layout,
        Layout::V1
    );
}

#[tokio::test]
async fn unreadable_records_are_corrupt_never_no_consent() {
    use callgate::store::redis::codec::packed::{HotRecord, pair_field};
    use callgate::store::redis::keys::{Keys, hot_bucket, shard_of};
    use redis::AsyncCommands;

    let server = RedisServer::start();
    let store = v2_store(&server, 4).await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let t = to_millis_precision(Utc::now());
    let p = pair(5);
    store
        .record(&[decision(&p, Choice::GrantPermanent, t, "perm")], t)
        .await
        .unwrap();
    let prefix = Keys::new("callgate").shard_prefix(shard_of(&p));
    let field = pair_field(&p);
    let bucket = format!("{prefix}p:{}", hot_bucket(&field, 4));
    let hot: Vec<u8> = conn.hget(&bucket, &field[..]).await.unwrap();
    let at = HotRecord::decode(&hot).unwrap().current;
    let segment = format!("{prefix}g:{}", at.segment);
    let corrupt = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Corrupt(_)));

    // A damaged entry (its customer byte): the check and the history fail, never "no consent"
    // or another pair's decision.
    let customer_at = isize::try_from(at.offset).unwrap() + 39 + 6;
    let mut byte: Vec<u8> = conn
        .getrange(&segment, customer_at, customer_at)
        .await
        .unwrap();
    byte[0] ^= 0x55;
    let _: () = conn
        .setrange(&segment, customer_at, &byte[..])
        .await
        .unwrap();
    assert!(corrupt(store.current(&p).await.map(|_| ())));
    assert!(corrupt(
        store.current_many(&[pair(6), p.clone()]).await.map(|_| ())
    ));
    assert!(corrupt(store.history(&p).await.map(|_| ())));
    byte[0] ^= 0x55;
    let _: () = conn
        .setrange(&segment, customer_at, &byte[..])
        .await
        .unwrap();
    assert!(store.current(&p).await.unwrap().is_some());

    // An unreadable hot record: checks fail, and the record script refuses to arbitrate
    // against it rather than overwrite it.
    let _: () = conn.hset(&bucket, &field[..], "garbage").await.unwrap();
    assert!(corrupt(store.current(&p).await.map(|_| ())));
    let deny = decision(&p, Choice::Deny, t + Duration::seconds(1), "no");
    assert!(corrupt(store.record(&[deny], t).await.map(|_| ())));

    // A hot record pointing at an entry that is gone (its segment deleted).
    let _: () = conn.hset(&bucket, &field[..], &hot[..]).await.unwrap();
    let _: () = conn.del(&segment).await.unwrap();
    assert!(corrupt(store.current(&p).await.map(|_| ())));
}

#[tokio::test]
async fn records_pages_cover_many_decisions_of_few_instants_exactly_once() {
    use callgate::store::redis::keys::shard_of;
    use callgate::store::{RecordsPosition, RecordsRange, TimeField};

    let server = RedisServer::start();
    let store = v2_store(&server, 8).await;
    // 1,200 decisions of one business in ONE shard at two instants, received at two: the
    // time indexes hold runs of equal keys split over many chunks whose directory entries
    // share a score (and whose ids pass 9, so their string order is not their number's).
    let t = to_millis_precision(Utc::now()) - Duration::hours(1);
    let pairs: Vec<Pair> = (0..200_000)
        .map(pair)
        .filter(|p| shard_of(p) == 3)
        .take(1200)
        .collect();
    assert_eq!(pairs.len(), 1200);
    let all: Vec<Decision> = pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let at = t + Duration::milliseconds(i64::from(i >= 600));
            decision(p, Choice::GrantPermanent, at, &format!("same-{i}"))
        })
        .collect();
    for batch in all.chunks(200) {
        store.record(batch, batch[0].decided_at).await.unwrap();
    }
    for by in [TimeField::Event, TimeField::Received] {
        let range = RecordsRange {
            business: pairs[0].business.clone(),
            by,
            from: t - Duration::seconds(1),
            to: t + Duration::seconds(1),
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut after: Option<RecordsPosition> = None;
        for _ in 0..1000 {
            let page = store
                .records_page(&range, after.as_ref(), 50)
                .await
                .unwrap();
            for item in &page.items {
                assert!(
                    seen.insert(item.pair.customer.clone()),
                    "{by:?}: listed twice"
                );
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen.len(), pairs.len(), "{by:?}: every decision once");
    }
}

/// v2's chain tips, as v1's (`redis_store::recording_guesses_the_chain_tip_…`): a replica
/// guesses the tip it last wrote (or an empty history), a wrong guess costs one refused script
/// call, and once a replica meets returning customers it did not know it reads their tips first
/// (one `v2_read.lua` call, mode `t`). That read must be exact: a wrong one would be refused
/// by the record script, and cost a third call.
#[tokio::test]
async fn a_chain_tip_read_is_exact_and_a_wrong_guess_costs_one_call() {
    use crate::redis_harness::{command_calls, reset_command_stats};

    let server = RedisServer::start();
    let (a, b) = (v2_store(&server, 16).await, v2_store(&server, 16).await);
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let p = pair(12);
    let t = to_millis_precision(Utc::now());
    // (replica, what it knows of the pair's tip), as in v1's test.
    let steps = [
        (&a, "empty"),
        (&b, "nothing"),
        (&b, "its own"),
        (&a, "old"),
        (&a, "its own"),
    ];
    let mut calls = Vec::new();
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
            t + Duration::seconds(i as i64),
            &format!("m{i}"),
        );
        assert_eq!(
            store.record(&[d], t).await.unwrap(),
            vec![RecordOutcome::Applied]
        );
        calls.push(command_calls(&mut conn, "evalsha").await);
    }
    assert_eq!(calls, vec![1, 2, 1, 2, 1]);
    // b has since met a returning customer it did not know: for the next one it reads the tip
    // first (one read-script call), and one record-script call records it.
    let q = pair(13);
    a.record(&[decision(&q, Choice::GrantPermanent, t, "q0")], t)
        .await
        .unwrap();
    reset_command_stats(&mut conn).await;
    let second = decision(&q, Choice::Deny, t + Duration::seconds(1), "q1");
    assert_eq!(
        b.record(&[second], t).await.unwrap(),
        vec![RecordOutcome::Applied]
    );
    assert_eq!(command_calls(&mut conn, "evalsha").await, 2);
    // Both chains are whole.
    for (pair, len) in [(&p, steps.len()), (&q, 2)] {
        let page = a.history_page(pair, 0, 10).await.unwrap();
        let links: Vec<_> = page.links.iter().map(|l| l.unwrap()).collect();
        assert_eq!(links.len(), len);
        assert_eq!(links[0].prev, callgate::domain::GENESIS);
        for w in links.windows(2) {
            assert_eq!(w[1].prev, w[0].hash);
            assert_eq!(w[1].position, w[0].position + 1);
        }
    }
}

/// The first build of layout v2 kept each business's index notes and chunk-id counter in the
/// shard's meta hash; this one keeps them in `b:<business>`, and would give out chunk ids that
/// exist. A store in the old format is refused at connect, never overwritten.
#[tokio::test]
async fn a_store_of_the_first_v2_build_is_refused_not_overwritten() {
    use callgate::store::redis::keys::{Keys, shard_of};

    let server = RedisServer::start();
    let store = v2_store(&server, 16).await;
    let t = to_millis_precision(Utc::now());
    let p = pair(3);
    store
        .record(&[decision(&p, Choice::GrantPermanent, t, "m")], t)
        .await
        .unwrap();
    // This build's meta hash: the open segment, the newest event id, the last trim check.
    let again = v2_store(&server, 16).await;
    assert!(again.current(&p).await.unwrap().is_some());
    // The old format's counter, as the first build wrote it.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let meta = format!("{}m", Keys::new("callgate").shard_prefix(shard_of(&p)));
    let _: () = redis::cmd("HSET")
        .arg(&meta)
        .arg("n14155550000")
        .arg("1")
        .query_async(&mut conn)
        .await
        .unwrap();
    for layout in [Layout::V2, Layout::Auto] {
        let mut config = RedisConfig::new(server.url());
        config.layout = layout;
        config.hot_buckets = 16;
        match RedisStore::connect(config).await {
            Err(StoreError::Misconfigured(m)) => assert!(m.contains("earlier build"), "{m}"),
            Err(e) => panic!("expected Misconfigured, got {e}"),
            Ok(_) => panic!("{layout:?}: a store of the first v2 build was accepted"),
        }
    }
}
