//! callgate on a real Redis Cluster (3 masters + 3 replicas): even spread of shards, cluster
//! stores, failover.

use crate::cluster_harness::RedisCluster;

#[test]
fn harness_starts_a_cluster_of_three_masters_with_one_replica_each() {
    let cluster = RedisCluster::start();
    let roles: Vec<String> = cluster.nodes.iter().map(|n| n.role().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| *r == "master").count(), 3, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| *r == "slave").count(), 3, "{roles:?}");
}
