//! callgate on a real Redis Cluster (3 masters + 3 replicas): the harness, the even spread of
//! shards over masters, failover. The store conformance suite's cluster run is in
//! `conformance.rs`. Each test starts its own cluster (2–4 s), so there are few of them.

use std::collections::BTreeMap;

use callgate::store::redis::SHARDS;
use callgate::store::redis::keys::Keys;

use crate::cluster_harness::RedisCluster;

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
