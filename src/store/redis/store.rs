//! [`RedisStore`]: the [`ConsentStore`] on Redis (see the module docs of `store/redis` for the
//! design): recording through `record.lua`, checks by `MGET`, the event log, the expiry sweep
//! and readiness.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::{Script, Value};
use tokio::time::Instant;

use super::codec;
use super::connection::Verdict;
use super::error::{corrupt_reply, is_reply_error, map_error, unverifiable_policy};
use super::keys::{self, Keys};
use super::records_chain::{
    ChainPlan, FirstTip, MAX_CHAIN_RETRIES, Recorded, Tip, TipMemo, contention_pause, next_round,
};
use super::reply::{Decoded, bytes_of, newest_id, pairs_of};
use super::routing::{Backend, Call, Route};
use super::{CLAIM_EXPIRED_LUA, RECORD_LUA, RedisConfig, SHARDS};
use crate::domain::{
    Budget, Choice, ConsentEvent, ConsentRequest, Decision, Pair, PhoneNumber, Subscription,
};
use crate::store::{
    CallablePage, CallablePosition, ConsentStore, Cursor, DeliveryConflict, HistoryPage, Lease,
    LoggedEvent, Progress, RecordOutcome, RecordsPage, RecordsPosition, RecordsRange,
    RegisterOutcome, RequestPolicy, StoreError, StreamId, WebhookRecord, callable,
    check_deliveries,
};

/// Lapsed grants claimed per shard per script call, so one call never blocks Redis for long.
const CLAIM_BATCH: usize = 500;
/// Bound on claim rounds per [`RedisStore::claim_expired`] call; the sweep runs again soon.
const CLAIM_MAX_ROUNDS: usize = 20;

/// The Redis consent store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct RedisStore {
    pub(super) config: RedisConfig,
    pub(super) keys: Keys,
    pub(super) backend: Backend,
    pub(super) record_script: Script,
    pub(super) claim_script: Script,
    /// issue 13: `requests.lua`.
    pub(super) requests_script: Script,
    /// Stream keys in shard order, for XREAD.
    pub(super) streams: Vec<String>,
    /// Trimmed-id marks in shard order, for the range check of `read_events`.
    pub(super) trimmed: Vec<String>,
    /// Issue 16: the chain tips this replica last saw, the first recording round's guess.
    pub(super) tip_memo: TipMemo,
    /// Layout v2's scripts (`layout_v2.rs`).
    pub(super) v2_record_script: Script,
    pub(super) v2_read_script: Script,
    pub(super) v2_claim_script: Script,
    pub(super) v2_requests_script: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects, checks that Redis is usable (see [`ping`](ConsentStore::ping): refuses a
    /// `maxmemory-policy` other than `noeviction`), and loads the scripts.
    pub async fn connect(config: RedisConfig) -> Result<Self, StoreError> {
        let backend = if config.cluster {
            Self::connect_cluster(&config).await?
        } else {
            Self::connect_single(&config).await?
        };
        let keys = Keys::new(&config.prefix);
        let mut store = RedisStore {
            streams: (0..SHARDS).map(|s| keys.stream(s)).collect(),
            trimmed: (0..SHARDS).map(|s| keys.trimmed(s)).collect(),
            keys,
            backend,
            record_script: Script::new(RECORD_LUA),
            claim_script: Script::new(CLAIM_EXPIRED_LUA),
            requests_script: Script::new(super::REQUESTS_LUA),
            tip_memo: TipMemo::default(),
            v2_record_script: Script::new(super::V2_RECORD_LUA),
            v2_read_script: Script::new(super::V2_READ_LUA),
            v2_claim_script: Script::new(super::V2_CLAIM_LUA),
            v2_requests_script: Script::new(super::V2_REQUESTS_LUA),
            config,
        };
        store.ping().await?;
        store.load_scripts().await?;
        // From here on `config.layout` is the layout in use, never `Auto`.
        store.config.layout = store.check_layout().await?;
        Ok(store)
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// True when the store runs on a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.backend, Backend::Cluster { .. })
    }

    /// Decodes a check's `MGET c: x:` of `pair`: the consent key when present, else the lapse
    /// record (a temporary grant whose consent key expired natively), else no decision. The two
    /// must agree (the lapse record exists exactly while the current decision is a temporary
    /// grant, and then holds the same value); anything else is corrupt, never a default.
    pub(super) fn decode_current(
        pair: &Pair,
        consent: Option<Vec<u8>>,
        lapse: Option<Vec<u8>>,
    ) -> Result<Option<Decision>, StoreError> {
        let (value, from_lapse) = match (&consent, &lapse) {
            (Some(c), _) => (c, false),
            (None, Some(x)) => (x, true),
            (None, None) => return Ok(None),
        };
        let decision = codec::decode_consent(pair, value)?;
        let temporary = matches!(decision.choice, Choice::GrantTemporary { .. });
        let consistent = if from_lapse {
            temporary
        } else if temporary {
            lapse.as_deref() == Some(value.as_slice())
        } else {
            lapse.is_none()
        };
        if !consistent {
            return Err(StoreError::Corrupt(
                "consent key and lapse record disagree".into(),
            ));
        }
        Ok(Some(decision))
    }

    /// For a call of several decisions: reads the fingerprint stored under each one's id (one
    /// pipelined `HGET` each) and refuses the call before anything is written if one conflicts.
    /// On a cluster, one single-slot pipeline per shard, the shards at once.
    async fn precheck_deliveries(&self, decisions: &[Decision]) -> Result<(), StoreError> {
        let hget = |d: &Decision| {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys.pair(&d.pair).dedup)
                .arg(codec::dedup_bytes(d));
            cmd
        };
        let seen: Vec<Option<Vec<u8>>> = if self.is_cluster() {
            let groups = by_shard(decisions);
            let replies = all(&groups, |(shard, indices)| {
                let mut pipe = redis::pipe();
                for &i in indices {
                    pipe.add_command(hget(&decisions[i]));
                }
                async move {
                    self.read_pipe::<Vec<Option<Vec<u8>>>>(Route::Shard(*shard), &pipe)
                        .await
                }
            })
            .await;
            let mut seen = vec![None; decisions.len()];
            for ((_, indices), reply) in groups.iter().zip(replies) {
                let reply = reply?;
                if reply.len() != indices.len() {
                    return Err(corrupt_reply("HGET dedup"));
                }
                for (&i, f) in indices.iter().zip(reply) {
                    seen[i] = f;
                }
            }
            seen
        } else {
            let mut pipe = redis::pipe();
            for d in decisions {
                pipe.add_command(hget(d));
            }
            self.read_pipe(Route::Keyless, &pipe).await?
        };
        if seen.len() != decisions.len() {
            return Err(corrupt_reply("HGET dedup"));
        }
        let seen = seen
            .into_iter()
            .map(|f| {
                f.map(|f| <[u8; 8]>::try_from(f.as_slice()))
                    .transpose()
                    .map_err(|_| StoreError::Corrupt("dedup fingerprint".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_deliveries(decisions, &seen)?;
        Ok(())
    }

    fn outcome(decisions: &[Decision], i: usize, code: i64) -> Result<RecordOutcome, StoreError> {
        match code {
            0 => Ok(RecordOutcome::Applied),
            1 => Ok(RecordOutcome::Stale),
            2 => Ok(RecordOutcome::Duplicate),
            3 => Err(DeliveryConflict::of(decisions, i).into()),
            other => Err(StoreError::Corrupt(format!(
                "record script answered {other}"
            ))),
        }
    }
}

/// Runs `f` for every item concurrently and collects the results in order.
pub(super) async fn all<I, F, Fut, T>(items: I, f: F) -> Vec<T>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = T>,
{
    futures_util::future::join_all(items.into_iter().map(f)).await
}

/// The indices of `decisions` grouped by shard (shard order; each group in call order).
pub(super) fn by_shard(decisions: &[Decision]) -> Vec<(usize, Vec<usize>)> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
    for (i, d) in decisions.iter().enumerate() {
        groups[keys::shard_of(&d.pair)].push(i);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, g)| !g.is_empty())
        .collect()
}

impl RedisStore {
    /// The `WAIT` timeout: half the store timeout, so the write before it and the round trip
    /// fit in the rest.
    pub(super) fn wait_ms(&self) -> u64 {
        (self.config.timeout.as_millis() as u64 / 2).max(1)
    }

    /// Records `decisions` (given by index into `all`) with one pipeline on the write
    /// connection: one `record.lua` call each, inside `MULTI`/`EXEC` when `atomic`, then
    /// `WAIT replica_acks` when asked for. `WAIT` must follow `EXEC` (inside a transaction it
    /// does not block) and share the connection of the writes: it waits for this connection's
    /// writes. Returns one outcome per index, in order.
    pub(super) async fn record_group(
        &self,
        all: &[Decision],
        indices: &[usize],
        plans: &[ChainPlan],
        received_at: DateTime<Utc>,
        atomic: bool,
    ) -> Result<Vec<Recorded>, StoreError> {
        let received = codec::base36(received_at.timestamp_millis());
        let mut pipe = redis::pipe();
        if atomic {
            pipe.cmd("MULTI").ignore();
        }
        for (&i, plan) in indices.iter().zip(plans) {
            let decision = &all[i];
            if self.v2() {
                pipe.invoke_script(&self.v2_record_call(decision, plan, received_at)?);
                if atomic {
                    pipe.ignore(); // `QUEUED`; the results come with EXEC.
                }
                continue;
            }
            let k = self.keys.pair(&decision.pair);
            let event = ConsentEvent::for_applied(decision, received_at)
                .map(|e| codec::event_kind_code(e.kind))
                .unwrap_or("");
            let mut invocation = self.record_script.prepare_invoke();
            invocation
                .key(&k.consent)
                .key(&k.lapse)
                .key(&k.history)
                .key(&k.stream)
                .key(&k.due)
                .key(&k.trimmed)
                .key(&k.dedup)
                .key(&k.records_received)
                .key(&k.records_event)
                .arg(codec::encode_body(decision))
                .arg(codec::dedup_bytes(decision))
                .arg(&received)
                .arg(event)
                .arg(self.config.event_retention.as_millis() as u64)
                .arg(&k.member)
                .arg(decision.fingerprint().as_slice())
                .arg(plan.position)
                .arg(plan.prev.as_slice())
                .arg(&plan.applied)
                .arg(&plan.stale)
                .arg(&plan.received_member)
                .arg(&plan.event_member);
            // issue 13 (attribution): the pair's registrations.
            invocation
                .key(self.keys.requests(&decision.pair).requests)
                .arg(&decision.evidence.paired_message_id);
            // issue 13 (calling lists): the business's calling-list index in this shard
            // (KEYS[11]); its member, the customer (ARGV[15]).
            invocation
                .key(self.keys.callable(k.shard, &decision.pair.business))
                .arg(decision.pair.customer.digits());
            pipe.invoke_script(&invocation);
            if atomic {
                pipe.ignore(); // `QUEUED`; the results come with EXEC.
            }
        }
        if atomic {
            pipe.cmd("EXEC");
        }
        self.wait_for_replicas(&mut pipe);
        let shard = keys::shard_of(&all[indices[0]].pair);
        let mut replies: Vec<Value> = self.query_scripts(Route::Shard(shard), true, &pipe).await?;
        self.replicas_reached(&mut replies, "the write")?;
        let replies: Vec<Value> = if atomic {
            match replies.pop() {
                Some(exec) if replies.is_empty() => {
                    redis::from_redis_value(exec).map_err(|_| corrupt_reply("EXEC"))?
                }
                _ => return Err(corrupt_reply("EXEC")),
            }
        } else {
            replies
        };
        if replies.len() != indices.len() {
            return Err(corrupt_reply("record"));
        }
        indices
            .iter()
            .zip(replies)
            .map(|(&i, reply)| {
                // issue 16: an applied decision that logged an event answers with its id.
                if let Some(id) = bytes_of(&reply) {
                    let id = std::str::from_utf8(id)
                        .ok()
                        .and_then(StreamId::parse)
                        .ok_or_else(|| corrupt_reply("record"))?;
                    return Ok(Recorded::Done(crate::store::Recorded {
                        outcome: RecordOutcome::Applied,
                        logged: Some((keys::shard_of(&all[i].pair), id)),
                    }));
                }
                if let Value::Array(moved) = &reply {
                    return Self::moved_tip(moved).map(Recorded::Moved);
                }
                let code: i64 =
                    redis::from_redis_value(reply).map_err(|_| corrupt_reply("record"))?;
                Self::outcome(all, i, code).map(|outcome| {
                    Recorded::Done(crate::store::Recorded {
                        outcome,
                        logged: None,
                    })
                })
            })
            .collect()
    }

    /// Ends a write pipeline with `WAIT replica_acks` when asked for. It must follow `EXEC`
    /// (inside a transaction it does not block) and share the writes' connection.
    pub(super) fn wait_for_replicas(&self, pipe: &mut redis::Pipeline) {
        let acks = self.config.replica_acks;
        if acks > 0 {
            pipe.cmd("WAIT").arg(acks).arg(self.wait_ms());
        }
    }

    /// Takes `WAIT`'s reply (see [`wait_for_replicas`](Self::wait_for_replicas)) off the end
    /// of `replies`, and refuses `what` (unacknowledged: the sender retries) if it reached
    /// fewer replicas than required.
    pub(super) fn replicas_reached(
        &self,
        replies: &mut Vec<Value>,
        what: &str,
    ) -> Result<(), StoreError> {
        let acks = self.config.replica_acks;
        if acks == 0 {
            return Ok(());
        }
        let acked: i64 = replies
            .pop()
            .and_then(|v| redis::from_redis_value(v).ok())
            .ok_or_else(|| corrupt_reply("WAIT"))?;
        if acked < i64::from(acks) {
            return Err(StoreError::Unavailable(format!(
                "{what} reached {acked} of the {acks} replicas required \
                 (CALLGATE_REDIS_REPLICA_ACKS) within {} ms; not acknowledged, the sender will \
                 retry",
                self.wait_ms()
            )));
        }
        Ok(())
    }

    /// The tip in `record.lua`'s answer `{4, length, tip}`: the pair's history was not at the
    /// tip the entry was chained to.
    fn moved_tip(reply: &[Value]) -> Result<Tip, StoreError> {
        let bad = || corrupt_reply("record (chain tip moved)");
        match reply {
            [Value::Int(4), Value::Int(len), tip] => {
                let len = u64::try_from(*len).map_err(|_| bad())?;
                let tip: crate::domain::Hash = bytes_of(tip)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(bad)?;
                Ok((len, tip))
            }
            _ => Err(bad()),
        }
    }

    /// One `claim_expired.lua` call for shard `shard`: at most [`CLAIM_BATCH`] grants that
    /// lapsed at or before `now_ms`.
    fn claim_call(&self, shard: usize, now_ms: i64) -> redis::ScriptInvocation<'_> {
        if self.v2() {
            return self.v2_claim_call(shard, now_ms, CLAIM_BATCH);
        }
        let mut invocation = self.claim_script.prepare_invoke();
        invocation
            .key(self.keys.due(shard))
            .key(&self.streams[shard])
            .key(&self.trimmed[shard])
            .arg(now_ms)
            .arg(CLAIM_BATCH)
            .arg(self.keys.shard_prefix(shard))
            .arg(self.config.event_retention.as_millis() as u64);
        invocation
    }

    /// Claims lapsed grants of one shard, in rounds of at most [`CLAIM_BATCH`].
    async fn claim_shard(&self, shard: usize, now_ms: i64) -> Result<usize, StoreError> {
        let mut published = 0;
        for _ in 0..CLAIM_MAX_ROUNDS {
            let mut pipe = redis::pipe();
            pipe.invoke_script(&self.claim_call(shard, now_ms));
            let (p, claimed): (usize, usize) = self
                .query_scripts::<Vec<(usize, usize)>>(Route::Shard(shard), false, &pipe)
                .await?
                .pop()
                .ok_or_else(|| corrupt_reply("claim"))?;
            published += p;
            if claimed < CLAIM_BATCH {
                break;
            }
        }
        Ok(published)
    }

    /// The `MGET`s of a batch check: for each shard holding some of `pairs` (in shard order),
    /// the shard, the indices of its pairs (in call order) and one `MGET` of their `c:`/`x:`
    /// keys, two per pair in that order.
    fn current_mgets(&self, pairs: &[Pair]) -> Vec<(usize, Vec<usize>, redis::Cmd)> {
        let mut mgets: Vec<Option<redis::Cmd>> = vec![None; SHARDS];
        let mut asked: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, pair) in pairs.iter().enumerate() {
            let (shard, consent, lapse) = self.keys.current(pair);
            mgets[shard]
                .get_or_insert_with(|| redis::cmd("MGET"))
                .arg(consent)
                .arg(lapse);
            asked[shard].push(i);
        }
        asked
            .into_iter()
            .zip(mgets)
            .enumerate()
            .filter_map(|(shard, (indices, cmd))| cmd.map(|c| (shard, indices, c)))
            .collect()
    }

    /// [`ConsentStore::current_each`] on a cluster: one single-slot `MGET` per shard, all at
    /// once, each bounded by the store timeout. A shard that fails (its master died and its
    /// replica is not yet promoted) fails only its own pairs.
    async fn current_each_cluster(
        &self,
        pairs: &[Pair],
    ) -> Vec<Result<Option<Decision>, StoreError>> {
        let groups = self.current_mgets(pairs);
        let replies = all(&groups, |(shard, _, cmd)| {
            self.read_cmd::<Vec<Option<Vec<u8>>>>(Route::Shard(*shard), cmd)
        })
        .await;
        let mut out: Vec<Result<Option<Decision>, StoreError>> =
            (0..pairs.len()).map(|_| Ok(None)).collect();
        for ((_, indices, _), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(values) if values.len() == 2 * indices.len() => {
                    let mut values = values.into_iter();
                    for &i in indices {
                        let (consent, lapse) = (values.next().flatten(), values.next().flatten());
                        out[i] = Self::decode_current(&pairs[i], consent, lapse);
                    }
                }
                Ok(_) => indices
                    .iter()
                    .for_each(|&i| out[i] = Err(corrupt_reply("MGET current"))),
                Err(e) => indices.iter().for_each(|&i| out[i] = Err(e.clone())),
            }
        }
        out
    }
}

impl RedisStore {
    /// Readiness of a degraded cluster: `Ok` if the first shard of any lane (any master of a
    /// default cluster) answers a read, else `failure`.
    async fn any_shard_answers(&self, failure: StoreError) -> Result<(), StoreError> {
        let per_lane = SHARDS / 3;
        let answers = all((0..3).map(|lane| lane * per_lane), |shard| {
            let mut get = redis::cmd("GET");
            get.arg(&self.trimmed[shard]);
            async move {
                self.read_cmd::<Option<String>>(Route::Shard(shard), &get)
                    .await
            }
        })
        .await;
        if answers.iter().any(Result::is_ok) {
            tracing::warn!(error = %failure, "a Redis Cluster master is unreachable; serving the others");
            Ok(())
        } else {
            Err(failure)
        }
    }
}

#[async_trait]
impl ConsentStore for RedisStore {
    async fn record_logged(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<crate::store::Recorded>, StoreError> {
        if decisions.is_empty() {
            return Ok(Vec::new());
        }
        // A conflict anywhere in the call must store nothing. One decision is checked inside
        // its script; several are checked first, in one round trip per shard (see the module
        // docs for the one race this leaves).
        if decisions.len() > 1 {
            if self.v2() {
                self.v2_precheck_deliveries(decisions).await?;
            } else {
                self.precheck_deliveries(decisions).await?;
            }
        }
        // Issue 14: each round sends at most one decision per pair, chained to the tip read
        // just before; a decision whose pair's history moved meanwhile is sent again in the
        // next round (see `records_chain`).
        let mut out: Vec<Option<crate::store::Recorded>> = vec![None; decisions.len()];
        // The tip a refused script call found, per decision: its next round chains to it.
        let mut found: Vec<Option<Tip>> = vec![None; decisions.len()];
        let mut moved_rounds = 0;
        // The first round mostly guesses (see `FirstTip`); a wrong guess is refused by the
        // script and is no contention: that pair's next round chains to the tip the script
        // answered with, without a pause.
        let mut first = true;
        loop {
            let round = next_round(decisions, &out);
            if round.is_empty() {
                break;
            }
            // The first round: the memo's tip, a guess or a read (`FirstTip`); later rounds:
            // the tip a refused script call answered with, or a read.
            let (first_tips, known): (Vec<FirstTip>, Vec<Option<Tip>>) = if first {
                let tips: Vec<FirstTip> = round
                    .iter()
                    .map(|&i| self.tip_memo.first_tip(&decisions[i].pair))
                    .collect();
                let known = tips.iter().map(|t| t.tip()).collect();
                (tips, known)
            } else {
                let known = round.iter().map(|&i| found[i].take()).collect();
                (Vec::new(), known)
            };
            let plans = self
                .chain_plans(decisions, &round, received_at, &known)
                .await?;
            let recorded = self
                .record_round(decisions, &round, &plans, received_at)
                .await?;
            let mut moved = false;
            for (at, ((&i, r), plan)) in round.iter().zip(recorded).zip(&plans).enumerate() {
                let pair = &decisions[i].pair;
                // A pair the memo did not know: was its history empty?
                match (first_tips.get(at), &r) {
                    (Some(FirstTip::Empty), r) => self
                        .tip_memo
                        .observe_unknown(!matches!(r, Recorded::Moved(_))),
                    (Some(FirstTip::Read), _) => self.tip_memo.observe_unknown(plan.position == 0),
                    _ => {}
                }
                match r {
                    Recorded::Done(done) => {
                        // The entry written is the pair's new tip (a duplicate wrote none).
                        let written = match done.outcome {
                            RecordOutcome::Applied => Some(plan.applied_hash),
                            RecordOutcome::Stale => Some(plan.stale_hash),
                            RecordOutcome::Duplicate => None,
                        };
                        if let Some(hash) = written {
                            self.tip_memo.learn(pair, (plan.position + 1, hash));
                        }
                        out[i] = Some(done);
                    }
                    Recorded::Moved(tip) => {
                        self.tip_memo.learn(pair, tip);
                        found[i] = Some(tip);
                        moved = true;
                    }
                }
            }
            if moved && !first {
                moved_rounds += 1;
                if moved_rounds > MAX_CHAIN_RETRIES {
                    return Err(StoreError::Unavailable(format!(
                        "a pair's history kept changing during {MAX_CHAIN_RETRIES} attempts to \
                         record; not acknowledged, the sender will retry"
                    )));
                }
                contention_pause(moved_rounds).await;
            }
            first = false;
        }
        Ok(out
            .into_iter()
            .map(|o| {
                o.unwrap_or(crate::store::Recorded {
                    outcome: RecordOutcome::Duplicate,
                    logged: None,
                })
            })
            .collect())
    }

    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError> {
        if self.v2() {
            let mut one = self.v2_current_each(std::slice::from_ref(pair)).await;
            return one
                .pop()
                .unwrap_or_else(|| Err(corrupt_reply("layout v2 current")));
        }
        let (shard, consent, lapse) = self.keys.current(pair);
        let mut values: Vec<Option<Vec<u8>>> = self
            .read_cmd(
                Route::Shard(shard),
                redis::cmd("MGET").arg(consent).arg(lapse),
            )
            .await?;
        match (values.pop(), values.pop(), values.is_empty()) {
            (Some(lapse), Some(consent), true) => Self::decode_current(pair, consent, lapse),
            _ => Err(corrupt_reply("MGET current")),
        }
    }

    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        if self.v2() {
            return self.v2_current_each(pairs).await.into_iter().collect();
        }
        if self.is_cluster() {
            return self.current_each_cluster(pairs).await.into_iter().collect();
        }
        // One MGET per shard (one slot each), all in one pipeline.
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for (_, indices, cmd) in self.current_mgets(pairs) {
            pipe.add_command(cmd);
            asked.push(indices);
        }
        let replies: Vec<Vec<Option<Vec<u8>>>> = self.read_pipe(Route::Keyless, &pipe).await?;
        if replies.len() != asked.len() {
            return Err(corrupt_reply("MGET current"));
        }
        let mut out: Vec<Option<Decision>> = vec![None; pairs.len()];
        for (indices, values) in asked.iter().zip(replies) {
            if values.len() != 2 * indices.len() {
                return Err(corrupt_reply("MGET current"));
            }
            let mut values = values.into_iter();
            for &i in indices {
                let (consent, lapse) = (values.next().flatten(), values.next().flatten());
                out[i] = Self::decode_current(&pairs[i], consent, lapse)?;
            }
        }
        Ok(out)
    }

    async fn current_each(&self, pairs: &[Pair]) -> Vec<Result<Option<Decision>, StoreError>> {
        if self.v2() && self.is_cluster() {
            return self.v2_current_each(pairs).await;
        }
        if self.is_cluster() {
            return self.current_each_cluster(pairs).await;
        }
        // One Redis: one pipeline, so it answers for all pairs or fails for all.
        crate::store::each_alike(pairs.len(), self.current_many(pairs).await)
    }

    async fn history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        if self.v2() {
            return self.v2_history_page(pair, start, limit).await;
        }
        let k = self.keys.pair(pair);
        let limit = limit.max(1);
        // One entry more than asked, to know whether another page follows.
        let last = start.saturating_add(limit);
        let mut entries: Vec<Vec<u8>> = self
            .read_cmd(
                Route::Shard(k.shard),
                redis::cmd("LRANGE").arg(&k.history).arg(start).arg(last),
            )
            .await?;
        let next = (entries.len() > limit).then_some(last);
        entries.truncate(limit);
        let (entries, links) = entries
            .iter()
            .map(|e| codec::decode_history_linked(pair, e))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        Ok(HistoryPage {
            entries,
            links,
            next,
        })
    }

    async fn records_page(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        if self.v2() {
            return self.v2_records_page(range, after, limit).await;
        }
        self.records_page_impl(range, after, limit).await
    }

    fn shards(&self) -> usize {
        SHARDS
    }

    fn shard_of(&self, pair: &Pair) -> usize {
        keys::shard_of(pair)
    }

    async fn read_events(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        after.expect_shards(SHARDS)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let decoded = match &self.backend {
            Backend::Single { conn, blocking, .. } => {
                self.read_events_single(conn, blocking, after, limit, wait)
                    .await?
            }
            Backend::Cluster { .. } => self.read_events_cluster(after, limit, wait).await?,
        };
        // Layout v2's EXPIRED events name the lapsed grant's entry: read them.
        let mut events = Vec::with_capacity(decoded.len());
        let mut lapsed = Vec::new();
        for d in decoded {
            match d {
                Decoded::Event(e) => events.push(e),
                Decoded::Lapsed(l) => lapsed.push(l),
            }
        }
        events.extend(self.v2_resolve(lapsed).await?);
        // Merge the shards by log position: ids are stamped by the masters' clocks (one clock
        // on a standalone Redis), so (id, shard) order is the order events were logged. COUNT
        // applies per stream; the first `limit` of the merge are all among the shards' first
        // `limit`, and they keep a
        // prefix of every shard's events, so a cursor advanced over them misses nothing.
        events.sort_by_key(|e| (e.id, e.shard));
        events.truncate(limit);
        Ok(events)
    }

    async fn retained_from(&self) -> Result<Cursor, StoreError> {
        let trimmed: Vec<Option<String>> = if self.is_cluster() {
            // One slot per shard: one GET each, all at once.
            all(0..SHARDS, |s| {
                let mut get = redis::cmd("GET");
                get.arg(&self.trimmed[s]);
                async move { self.read_cmd::<Option<String>>(Route::Shard(s), &get).await }
            })
            .await
            .into_iter()
            .collect::<Result<_, _>>()?
        } else {
            self.read_cmd(Route::Keyless, redis::cmd("MGET").arg(&self.trimmed))
                .await?
        };
        if trimmed.len() != SHARDS {
            return Err(corrupt_reply("MGET trimmed"));
        }
        let ids = trimmed
            .iter()
            .map(|id| match id {
                None => Ok(StreamId::ZERO),
                Some(id) => StreamId::parse(id)
                    .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cursor::from_ids(ids))
    }

    async fn head(&self) -> Result<Cursor, StoreError> {
        if self.is_cluster() {
            let ids = all(0..SHARDS, |s| self.head_of(s))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Cursor::from_ids(ids));
        }
        let mut pipe = redis::pipe();
        for key in &self.streams {
            pipe.cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let replies: Vec<Value> = self.read_pipe(Route::Keyless, &pipe).await?;
        if replies.len() != SHARDS {
            return Err(corrupt_reply("XREVRANGE"));
        }
        let ids = replies
            .iter()
            .map(newest_id)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Cursor::from_ids(ids))
    }

    async fn claim_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let now_ms = now.timestamp_millis();
        if self.is_cluster() {
            // Each shard by itself (one slot each): a shard whose master is failing over
            // does not hold back the others' expiries; its lapses are claimed by a later
            // sweep.
            let mut published = 0;
            let mut failed = None;
            for result in all(0..SHARDS, |s| self.claim_shard(s, now_ms)).await {
                match result {
                    Ok(n) => published += n,
                    Err(e) => failed = Some(e),
                }
            }
            return match failed {
                Some(e) => Err(e),
                None => Ok(published),
            };
        }
        let mut published = 0;
        for _ in 0..CLAIM_MAX_ROUNDS {
            // One script per shard, all in one pipeline (not a transaction: each shard's
            // claim is atomic by itself).
            let mut pipe = redis::pipe();
            for shard in 0..SHARDS {
                pipe.invoke_script(&self.claim_call(shard, now_ms));
            }
            let replies: Vec<(usize, usize)> =
                self.query_scripts(Route::Keyless, false, &pipe).await?;
            published += replies.iter().map(|(p, _)| p).sum::<usize>();
            if replies.iter().all(|(_, claimed)| *claimed < CLAIM_BATCH) {
                break;
            }
        }
        Ok(published)
    }

    // ---- issue 13 (attribution): in requests.rs ----

    async fn register_request(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<RegisterOutcome, StoreError> {
        self.register(request, now, policy).await
    }

    async fn request_budget(
        &self,
        pair: &Pair,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Budget, StoreError> {
        self.budget(pair, now, policy).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let replies = match &self.backend {
            Backend::Single { conn, .. } => {
                let pong: String = self.read_cmd(Route::Keyless, &redis::cmd("PING")).await?;
                if pong != "PONG" {
                    return Err(corrupt_reply("PING"));
                }
                let mut config_get = redis::cmd("CONFIG");
                config_get.arg("GET").arg("maxmemory-policy");
                let reply = self
                    .attempt::<Value>(
                        conn,
                        Call::Cmd(&config_get),
                        Instant::now() + self.config.timeout,
                    )
                    .await?;
                match reply {
                    Ok(v) => vec![("redis".to_owned(), v)],
                    // Not an answer from Redis: the connection failed, not the command.
                    Err(e) if Verdict::of(&e) != Verdict::Healthy => {
                        return Err(map_error(e, self.config.timeout));
                    }
                    Err(e) => return Err(unverifiable_policy(&e)),
                }
            }
            Backend::Cluster { conn, .. } => {
                // Every master must refuse to evict.
                let mut get = redis::cmd("CONFIG");
                get.arg("GET").arg("maxmemory-policy");
                let mut keyless = conn.keyless().clone();
                let replies =
                    tokio::time::timeout(self.config.timeout, keyless.on_every_master(&get)).await;
                match replies {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) if is_reply_error(&e) => return Err(unverifiable_policy(&e)),
                    // A cluster with a master down (or failing over) still serves the other
                    // masters' shards: it is ready if any shard answers. The dead master's
                    // policy is checked again once it (or its promoted replica) answers.
                    Ok(Err(e)) => {
                        return self
                            .any_shard_answers(map_error(e, self.config.timeout))
                            .await;
                    }
                    Err(_) => {
                        return self
                            .any_shard_answers(StoreError::Timeout(self.config.timeout))
                            .await;
                    }
                }
            }
        };
        for (node, reply) in &replies {
            let policy = pairs_of(reply)
                .and_then(|pairs| {
                    pairs
                        .into_iter()
                        .find(|(k, _)| bytes_of(k) == Some(b"maxmemory-policy"))
                        .and_then(|(_, v)| bytes_of(v))
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                })
                .unwrap_or_else(|| "unknown".to_owned());
            if policy != "noeviction" {
                let (on, every) = if self.is_cluster() {
                    (format!(" on master {node}"), " on every master")
                } else {
                    (String::new(), "")
                };
                return Err(StoreError::Misconfigured(format!(
                    "maxmemory-policy is {policy}{on}; callgate needs noeviction, because an \
                     evicted denial would read as no consent (set `maxmemory-policy \
                     noeviction`{every})"
                )));
            }
        }
        Ok(())
    }

    // ---- issue 17: outbound webhook subscriptions (in `webhooks.rs`) ----

    async fn webhook_create(
        &self,
        subscription: &Subscription,
        cursor: &Cursor,
    ) -> Result<(), StoreError> {
        self.webhook_create_impl(subscription, cursor).await
    }

    async fn webhook_list(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.webhook_list_impl().await
    }

    async fn webhook_get(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        self.webhook_get_impl(id).await
    }

    async fn webhook_replace(&self, record: &WebhookRecord) -> Result<bool, StoreError> {
        self.webhook_replace_impl(record).await
    }

    async fn webhook_lease(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
        _now: DateTime<Utc>,
    ) -> Result<Lease, StoreError> {
        self.webhook_lease_impl(id, holder, ttl).await
    }

    async fn webhook_progress(
        &self,
        id: &str,
        token: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        self.webhook_progress_impl(id, token, progress).await
    }

    async fn webhook_release(&self, id: &str, holder: &str, token: u64) -> Result<(), StoreError> {
        self.webhook_release_impl(id, holder, token).await
    }

    async fn callable_page(
        &self,
        business: &PhoneNumber,
        from: &CallablePosition,
        limit: usize,
        keep: callable::Keep<'_>,
    ) -> Result<CallablePage, StoreError> {
        // Issue 13: see store/redis/callable.rs.
        self.read_callable_page(business, from, limit, keep).await
    }
}
