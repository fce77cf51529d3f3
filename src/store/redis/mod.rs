//! The production store: consent state in Redis, shared by every callgate replica.
//!
//! All Redis knowledge lives in this module: key names in [`keys`], value formats in [`codec`],
//! and the Lua scripts next to this file (`record.lua`, `claim_expired.lua`, and `lib.lua`,
//! their shared helpers). It behaves exactly like
//! [`MemoryStore`](crate::store::memory::MemoryStore); the conformance suite in `tests/api`
//! runs the same tests against both.
//!
//! One job per file: `config` ([`RedisConfig`], the URL kept a `Secret`, its redacted form),
//! `store` ([`RedisStore`] and its [`ConsentStore`](crate::store::ConsentStore) impl),
//! `routing` (which connection a call takes, and how it runs: timeout, retry, `NOSCRIPT`),
//! `connection` (standalone connections) and [`cluster`] (Redis Cluster connections), `events`
//! (reading the sharded event log), `error` (redis-rs errors to `StoreError`), `reply` (reply
//! shapes), `inspect` (memory report), `webhooks` (issue 17: outbound webhook subscriptions, their
//! lease and fenced cursor, with the `webhook_*.lua` scripts), `callable` (issue 13: reading the
//! calling lists' per-business index), `layout_v2` (below).
//!
//! # Layout v2 (every new store)
//!
//! Everything below describes layout v1, the layout of stores written before v2. Layout v2
//! (`docs/redis-layout-v2.md`: packed history segments, hot-record buckets, leases, under 300
//! bytes a consent) is in `layout_v2` and the `v2_*.lua` scripts. [`RedisConfig::layout`]
//! (`CALLGATE_REDIS_LAYOUT`, `auto` by default) chooses: `auto` writes an empty store in v2
//! and keeps any other store in its own layout; the `{prefix}:layout` marker keeps each store
//! in the layout it was first written in.
//!
//! # Key layout: sharded, cluster-ready
//!
//! Pairs are spread over [`SHARDS`] shards by a stable hash ([`keys::shard_of`]). Every key of
//! a shard carries the shard's hash tag (`{callgate:s07-3}`), so every key one script touches is
//! in one Cluster slot, and the shards spread over the cluster's nodes. Each shard has its own
//! event stream and due-time index; a subscriber's cursor is one stream id per shard. See
//! [`keys`] for the full list.
//!
//! # The consent key holds the current decision: a check is a plain `MGET`
//!
//! Each pair has up to four keys. Its history (`h:`, a list) holds every decision ever kept,
//! with its full evidence and its dedup id; its dedup hash (`d:`) maps each kept delivery's id
//! to the fingerprint of what it said. Its consent key (`c:`) holds the **whole** current
//! decision (its dedup id and body, see [`codec`]). While the current decision is a temporary
//! grant, its lapse record (`x:`) holds the same value without a TTL.
//!
//! A temporary grant's consent key carries Redis's own expiry at the grant's expiry instant
//! (`PXAT` from the decision, not from arrival), so Redis reclaims it without callgate doing
//! anything. A check after the expiry must answer EXPIRED, with the grant's evidence, not
//! NO_CONSENT: that is what the lapse record is for. A grant already expired on arrival gets
//! only the lapse record; a permanent grant or a denial that wins deletes it.
//!
//! So a check ([`current`](crate::store::ConsentStore::current)) is one `MGET c: x:` (both keys
//! share the shard's hash tag): `c:` when present, else `x:`, else no decision. No script runs
//! on the read path. A batch check ([`current_many`](crate::store::ConsentStore::current_many))
//! groups its pairs by shard and sends one `MGET` per shard with all of that shard's `c:`/`x:`
//! keys (one Cluster slot each), all of them in one pipeline: at most [`SHARDS`] commands and
//! one round trip for any batch size.
//!
//! The trade-off: the current decision's body is stored twice (in `c:` and in the history),
//! three times for a live temporary grant, and `c:` is no longer small enough for Redis's
//! `embstr` encoding. That costs Redis memory per consent (see BENCHMARKS.md and
//! `callgate-bench redis-memory`); a pointer into the history would save it, but following a
//! pointer in one round trip needs a Lua script, and the check is the hot path: an `EVALSHA`
//! costs Redis several times the CPU of an `MGET`, and Redis shares the machine's cores with
//! callgate.
//!
//! # Atomicity
//!
//! Each decision is recorded by one Lua script (`record.lua`): de-duplication (one `HGET` of
//! the delivery id in the pair's `d:` hash, the twin of
//! [`redelivery`](crate::domain::rules::redelivery): same fingerprint = duplicate, another =
//! conflict, nothing written; the hash never expires, so a retry is recognised however late,
//! which more than covers [`DEDUP_RETENTION`](crate::store::DEDUP_RETENTION), and the cost does
//! not grow with the history), arbitration (the twin of
//! [`precedence`](crate::domain::rules::precedence)), history, current decision, due index and
//! event (`XADD` with exact `MINID` trimming). No reader ever sees half a decision. A call of
//! several decisions is first checked for conflicts in one pipelined round trip of `HGET`s, so
//! a conflict stores nothing; the one gap is a conflicting delivery of the same message id
//! recorded by another replica between that check and the `EXEC`: then the other decisions of
//! the call are stored, the call still answers the conflict, and a retry finds them as
//! duplicates. Several decisions given to one [`record`](crate::store::ConsentStore::record)
//! call are sent as `EVALSHA`s inside `MULTI`/`EXEC`, so on a standalone Redis they are applied
//! together or (on a connection error before `EXEC`) not at all. `EXEC` does not roll back: if
//! one script fails inside it (say Redis hits `maxmemory`), the call is an error and the
//! sender's retry records the rest, the ones already stored being recognised as duplicates.
//!
//! The expiry sweep (`claim_expired.lua`) runs per shard: `ZREM` of a due-index member inside
//! the script is the claim, so every replica may sweep at once and each lapse still yields
//! exactly one EXPIRED event.
//!
//! # The event log
//!
//! One stream per shard; event ids are the Redis stream ids, set by the scripts to
//! `<ms>-<microsecond within the ms>` of the server's clock (or the stream's newest id plus one
//! if that would not be greater), so [`cursor_at`](crate::store::cursor_at) works and events of
//! different shards sort by id in the order they were logged;
//! [`read_events`](crate::store::ConsentStore::read_events) merges the shards by id. Every
//! `XADD` trims exactly (`MINID =`, not `~`) to [`RedisConfig::event_retention`]. A cursor is
//! out of range when it is older than an event that was trimmed away. Redis 7.0 does not record
//! that (`XINFO STREAM`'s `max-deleted-entry-id` only follows `XDEL`, not trimming), so the
//! scripts keep the newest trimmed id per shard in a `trimmed` key, and
//! [`read_events`](crate::store::ConsentStore::read_events) pipelines one `MGET` of those with
//! its `XREAD`: the check costs no extra round trip.
//!
//! # Redis Cluster
//!
//! With [`RedisConfig::cluster`] (`CALLGATE_REDIS_CLUSTER_NODES`) the same keys live on a Redis
//! Cluster; the shard tags are chosen so a default 3-master cluster holds a third of the shards
//! on each master ([`keys`]). A cluster refuses any command or transaction whose keys span
//! slots (even on one node), and redis-rs refuses a pipeline that spans slots, so on a cluster:
//!
//! - a check is the same single-slot `MGET`; a batch check sends one `MGET` per shard, all at
//!   once ([`current_each`](crate::store::ConsentStore::current_each)), so a shard whose master
//!   is down fails only its own pairs (`UNAVAILABLE` each) while the others are answered;
//! - a multi-decision [`record`](crate::store::ConsentStore::record) sends one single-slot
//!   pipeline per shard (a pair's decisions in order), the shards at once, with no `MULTI`:
//!   each decision is atomic by itself. The call succeeds (HTTP 200) only if every decision was
//!   stored; if one shard fails, the call fails (503), the sender retries the whole delivery,
//!   and the decisions already stored are recognised as duplicates. All or none *acknowledged*,
//!   not all or none *stored*: a reader may see some decisions of a failed call before its
//!   retry;
//! - [`read_events`](crate::store::ConsentStore::read_events) reads each shard's stream by
//!   itself (with its `trimmed` mark, one slot), none blocking; a waiting read repeats every
//!   `CLUSTER_POLL` (20 ms) until its wait ends. A blocking `XREAD` holds its node's connection
//!   (a check to that node waited 1.9 s behind `XREAD BLOCK 2000`), and one blocking read per
//!   shard would need a dedicated connection per shard per process: polling costs one cheap
//!   `XREAD` per shard per 20 ms per tailer instead, and up to 20 ms of extra StreamGrants
//!   latency;
//! - the sweep claims per shard, each shard by itself, so a shard failing over does not hold
//!   back the others' expiries;
//! - `maxmemory-policy` is checked on every master (`CONFIG GET` to all of them).
//!
//! Connections: one redis-rs cluster connection per third of the shards, plus one for keyless
//! commands (see [`cluster::Lanes`]: a refreshing cluster connection stalls every request it
//! carries, and must not carry a healthy master's checks while another master fails over), each
//! replaced if it keeps failing ([`cluster`]). Cross-shard order of events: stream ids come from
//! each master's clock, so events of different masters are ordered by those clocks (as close
//! as the masters' clocks agree); a pair's events are always in order (one stream).
//!
//! Failover: a master's death makes its shards answer `UNAVAILABLE` (never a default) until its
//! replica is promoted (2–3 s with `cluster-node-timeout 1000`, measured in
//! `tests/api/cluster.rs`), then they answer again with no restart; a promoted replica lacks
//! the scripts, which are loaded again on the first `NOSCRIPT`. Replication is asynchronous:
//! a promotion can lose the newest writes of the dead master. With
//! [`RedisConfig::replica_acks`] = n, each write pipeline ends with `WAIT n` (after `EXEC`,
//! on the writes' own connection, so it waits for exactly those writes), and fewer than n
//! replicas within half the store timeout fails the call (503, the sender retries): a 200
//! then means n replicas hold the decision. (`WAITAOF` would also cover the replicas' disks;
//! it needs Redis 7.2.) The expiry claim writes without `WAIT`: if a promotion loses a claim,
//! the new master sweeps that lapse again, and a subscriber that read the first `EXPIRED`
//! from the old master may see a second one (exactly once holds when no write is lost).
//!
//! # Consent requests (issue 13)
//!
//! A pair's registered consent requests live beside its decisions, on its shard: `r:` (request
//! message id → registration: send time and the attribution trailer, see `codec.rs`) and `q:`
//! (ids by send time, for the budget). `requests.lua` registers one request atomically: purge
//! past the retention, refuse a retry with other fields, check the budget (`budget_fits`, the
//! twin of [`fits`](crate::domain::attribution::fits)), store, and attribute the replies
//! recorded before it (which `requests.rs` found by reading and decoding the history; the script
//! refuses if the history grew meanwhile, and the registration is tried again): append the
//! trailer to their history entries and, when one is current, to `c:`/`x:` with `KEEPTTL`,
//! logging an event with kind `G`/`D` when it is a live grant or a denial. `record.lua`'s issue
//! 13 block appends a matching registration's trailer to a new reply's body. `r:`/`q:` expire as
//! a whole at the newest registration's retention. So check and insert of the budget are one
//! script: two registrations racing cannot both take the last request. A budget read is one
//! `ZRANGE q:`, answered by the domain's rule.
//!
//! # Failure behaviour
//!
//! On a standalone Redis, checks and writes share one multiplexed connection (`TCP_NODELAY`,
//! TCP keepalive; writes get their own when replica acks are asked for, since `WAIT` holds its
//! connection), owned by a supervisor task in `connection` that replaces it after **any**
//! fault: an I/O error, an unreadable reply, a call with no reply in time that a `PING` then
//! confirms, a failed health `PING` (every [`RedisConfig::health_interval`]), a failed
//! reconnect of any kind (`AUTH` refused, handshake cut short, connect timed out), retried for
//! ever with a short backoff. Every call is bounded by [`RedisConfig::timeout`] (a `tokio`
//! timeout, which also bounds waiting for a reconnect). A connection error is
//! [`StoreError::Unavailable`](crate::store::StoreError::Unavailable), a slow answer
//! [`StoreError::Timeout`](crate::store::StoreError::Timeout), an unreadable one
//! [`StoreError::Corrupt`](crate::store::StoreError::Corrupt): never a default value, so a
//! check can never read "allowed" from a failure. No restart is ever needed.
//!
//! Blocking `XREAD`s would stall every check queued behind them on a multiplexed connection, so
//! (standalone) they use dedicated connections from a small pool; a connection that failed or
//! timed out is dropped, idle ones are dropped when the shared connection was replaced, and the
//! next read opens a fresh one.
//!
//! Redis must run with `maxmemory-policy noeviction`: evicting a denial would turn it into "no
//! consent", and evicting a history would forget decisions and their de-duplication.
//! [`RedisStore::connect`] and [`ping`](crate::store::ConsentStore::ping) refuse any other
//! policy. If `CONFIG GET` is disabled or renamed, the policy cannot be verified and that is
//! also refused as misconfigured (the error says so): callgate does not run on an unverified
//! policy.

mod callable;
pub mod cluster;
pub mod codec;
mod config;
mod connection;
mod error;
mod events;
mod inspect;
pub mod keys;
mod layout_v2;
mod records_chain;
mod reply;
mod requests;
mod routing;
mod store;
mod webhooks;

pub use config::{Layout, RedisConfig};
pub use inspect::{KindUsage, MemoryReport, MemoryUsage, RedisAddress};
pub use keys::SHARDS;
pub use store::RedisStore;

/// `record.lua` with the shared helpers of `lib.lua` before it. The `#!lua` line must come
/// first (it makes the script one with flags: every key it touches is declared), so it is
/// written here rather than in `record.lua`.
const RECORD_LUA: &str = concat!(
    "#!lua\n",
    include_str!("lib.lua"),
    include_str!("record.lua")
);
/// issue 13: `requests.lua` (registration, budget, late attribution) with the shared helpers
/// of `lib.lua` before it, every key declared.
const REQUESTS_LUA: &str = concat!(
    "#!lua\n",
    include_str!("lib.lua"),
    include_str!("requests_lib.lua"),
    include_str!("requests.lua")
);
/// `claim_expired.lua` with the shared helpers of `lib.lua` before it (no `#!lua`: see the
/// script's header).
const CLAIM_EXPIRED_LUA: &str = concat!(include_str!("lib.lua"), include_str!("claim_expired.lua"));
/// Layout v2 (`layout_v2.rs`): its scripts, each with `lib.lua` and `v2_lib.lua` before it (no
/// `#!lua`: they name keys they only know once they have read).
const V2_RECORD_LUA: &str = concat!(
    include_str!("lib.lua"),
    include_str!("v2_lib.lua"),
    include_str!("v2_record.lua")
);
const V2_READ_LUA: &str = concat!(
    include_str!("lib.lua"),
    include_str!("v2_lib.lua"),
    include_str!("v2_read.lua")
);
const V2_REQUESTS_LUA: &str = concat!(
    include_str!("lib.lua"),
    include_str!("v2_lib.lua"),
    include_str!("requests_lib.lua"),
    include_str!("v2_requests.lua")
);
const V2_CLAIM_LUA: &str = concat!(
    include_str!("lib.lua"),
    include_str!("v2_lib.lua"),
    include_str!("v2_claim.lua")
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_script_carries_one_copy_of_the_shared_helpers() {
        // The flags line must stay the first line of record.lua's source, or Redis runs it as
        // a flag-less script.
        assert!(RECORD_LUA.starts_with("#!lua\n"));
        assert!(REQUESTS_LUA.starts_with("#!lua\n"));
        assert!(!CLAIM_EXPIRED_LUA.starts_with("#!"));
        for (name, source) in [
            ("record", RECORD_LUA),
            ("claim_expired", CLAIM_EXPIRED_LUA),
            ("requests", REQUESTS_LUA),
        ] {
            for helper in ["b36", "header", "trimmed_by", "next_event_id", "now_ms"] {
                let definitions = source.matches(&format!("local function {helper}(")).count();
                assert_eq!(
                    definitions, 1,
                    "{name}.lua defines {helper} {definitions} times"
                );
            }
        }
    }
}
