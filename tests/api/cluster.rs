//! callgate on a real Redis Cluster (3 masters + 3 replicas): the harness, the even spread of
//! shards over masters, failover. The store conformance suite's cluster run is in
//! `conformance.rs`. Each test starts its own cluster (2–4 s), so there are few of them.

use std::collections::BTreeMap;

use callgate::domain::{Pair, PhoneNumber};
use callgate::pb::{self, ConsentState};
use callgate::store::redis::SHARDS;
use callgate::store::redis::keys::{self, Keys};
use chrono::Utc;

use crate::cluster_harness::RedisCluster;
use crate::helpers::*;
use crate::process::CallgateProcess;

#[test]
fn shard_tags_spread_evenly_over_the_masters_of_a_real_cluster() {
    let cluster = RedisCluster::start();
    let roles: Vec<String> = cluster.nodes.iter().map(|n| n.role().unwrap()).collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "master").count(),
        3,
        "{roles:?}"
    );
    assert_eq!(
        roles.iter().filter(|r| *r == "slave").count(),
        3,
        "{roles:?}"
    );

    let keys = Keys::new("callgate");
    let mut per_master: BTreeMap<usize, usize> = BTreeMap::new();
    for shard in 0..SHARDS {
        let prefix = keys.shard_prefix(shard);
        // Redis itself computes the slot of a real key of the shard.
        let reply = cluster.command(0, &format!("CLUSTER KEYSLOT {prefix}e"));
        let slot: u16 = reply.trim_start_matches(':').trim().parse().unwrap();
        assert_eq!(slot, keys.slot(shard), "shard {shard} ({prefix})");
        *per_master.entry(cluster.master_of_slot(slot)).or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "{per_master:?}");
    assert!(
        per_master.values().all(|n| *n == SHARDS / 3),
        "masters hold unequal shares: {per_master:?}"
    );
}

// ---- callgate processes on a cluster ----------------------------------------------------

/// Starts `callgate serve` on `cluster` with quick sweeps and checkpoints, plus `extra`.
fn callgate_on(cluster: &RedisCluster, extra: &[(&str, &str)]) -> (CallgateProcess, Endpoints) {
    let nodes = cluster.nodes_env();
    let mut env = vec![
        ("CALLGATE_REDIS_CLUSTER_NODES", nodes.as_str()),
        ("CALLGATE_REDIS_TIMEOUT_MS", "250"),
        ("CALLGATE_EXPIRY_SWEEP_MS", "100"),
        ("CALLGATE_CHECKPOINT_SECS", "0.3"),
        ("CALLGATE_WEBHOOK_TOKENS", TOKEN),
    ];
    env.extend_from_slice(extra);
    let process = CallgateProcess::start(&env).unwrap();
    let api = Endpoints::new(process.http, process.grpc);
    (process, api)
}

/// The `nth` customer number (from `base`) whose pair with [`BUSINESS`] lives in `shard`.
fn customer_in_shard(shard: usize, nth: usize, base: u64) -> String {
    let business = PhoneNumber::parse(BUSINESS).unwrap();
    (base..)
        .map(|n| format!("+91{n:010}"))
        .filter(|c| {
            let pair = Pair::new(business.clone(), PhoneNumber::parse(c).unwrap());
            keys::shard_of(&pair) == shard
        })
        .nth(nth)
        .unwrap()
}

fn shard_of_customer(customer: &str) -> usize {
    keys::shard_of(&Pair::new(
        PhoneNumber::parse(BUSINESS).unwrap(),
        PhoneNumber::parse(customer).unwrap(),
    ))
}

async fn post(api: &Endpoints, customer: &str, id: &str, response: &str) -> u16 {
    let permanent = (response == "accept").then_some(true);
    let body = doubletick(BUSINESS, customer, id, Utc::now(), response, permanent);
    api.post_doubletick(body).await.status
}

fn single(customer: &str) -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        business_number: BUSINESS.into(),
        customer_number: customer.into(),
    }
}

/// What a check answered, without the parts that differ between identical answers.
fn answer_of(r: &pb::CheckCallPermissionResponse) -> (bool, i32, Option<prost_types::Timestamp>) {
    (r.allowed, r.state, r.decided_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_callgates_on_one_cluster_agree_and_see_each_others_denials_at_once() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let (_a, api_a) = callgate_on(&cluster, &[]);
    let (_b, api_b) = callgate_on(&cluster, &[]);
    let apis = [&api_a, &api_b];
    let customers: Vec<String> = (0..SHARDS)
        .map(|s| customer_in_shard(s, 0, 9_700_000_000))
        .collect();
    // "Random" routing, but reproducible: each webhook to one process, each check to both.
    let mut rng = 0x2545_f491_u64;
    let mut pick = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 2) as usize
    };
    let (mut grpc_a, mut grpc_b) = (api_a.grpc().await, api_b.grpc().await);
    for (i, c) in customers.iter().enumerate() {
        assert_eq!(post(apis[pick()], c, &format!("g{i}"), "accept").await, 200);
        let a = grpc_a
            .check_call_permission(single(c))
            .await
            .unwrap()
            .into_inner();
        let b = grpc_b
            .check_call_permission(single(c))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a, b, "shard {i}");
        assert_eq!(a.state, ConsentState::GrantedPermanent as i32, "shard {i}");
    }
    // A batch on one equals single checks on the other, pair by pair.
    let batch = grpc_a
        .check_call_permissions(pb::CheckCallPermissionsRequest {
            checks: customers.iter().map(|c| single(c)).collect(),
        })
        .await
        .unwrap()
        .into_inner();
    for (c, result) in customers.iter().zip(&batch.results) {
        let Some(pb::check_result::Result::Answer(answer)) = &result.result else {
            panic!("batch item failed: {result:?}");
        };
        let single = grpc_b
            .check_call_permission(single(c))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer_of(answer), answer_of(&single));
    }
    // A denial posted to one is DENIED on the other right after its 200.
    for (i, c) in customers.iter().enumerate() {
        let (to, other) = if pick() == 0 { (0, 1) } else { (1, 0) };
        assert_eq!(post(apis[to], c, &format!("d{i}"), "reject").await, 200);
        let mut client = if other == 0 {
            grpc_a.clone()
        } else {
            grpc_b.clone()
        };
        let after = client
            .check_call_permission(single(c))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.state, ConsentState::Denied as i32, "shard {i}");
        assert!(!after.allowed);
    }
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
