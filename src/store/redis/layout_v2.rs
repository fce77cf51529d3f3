//! Layout v2 (`docs/redis-layout-v2.md`): the store's operations on packed history segments,
//! hot-record buckets, leases and chunked sorted indexes, about 290 bytes a consent where v1
//! takes 1,150, and records webhooks as fast (BENCHMARKS.md). Every new store is written in it
//! ([`Layout::Auto`](super::Layout::Auto), the default, or `CALLGATE_REDIS_LAYOUT=v2`); a v1
//! store stays v1 (no migration yet). Every operation of the store trait is built and the
//! whole conformance suite runs on it (`conformance::redis_layout_v2`, and on a cluster);
//! [`RedisStore::check_layout`] decides the layout at connect and keeps a store from being
//! read in the other one.
//!
//! Scripts: `v2_record.lua`, `v2_read.lua` (every read that follows a pointer),
//! `v2_claim.lua`, `v2_requests.lua` (registration and late attribution), sharing
//! `v2_lib.lua` (and `requests_lib.lua` with v1's `requests.lua`). Formats:
//! [`codec::packed`](super::codec::packed).

use chrono::{DateTime, Utc};
use redis::Value;

use super::codec::{self, packed};
use super::error::{corrupt_reply, map_error};
use super::keys::{self, hot_bucket};
use super::reply::bytes_of;
use super::routing::{Call, Route};
use super::store::{RedisStore, all};
use super::{Layout, SHARDS};
use crate::domain::ConsentRequest;
use crate::domain::{
    ChainLink, ConsentEvent, Decision, EventKind, GENESIS, HistoryEntry, HistoryOutcome, Pair,
};
use crate::store::records::{
    self, RecordedDecision, RecordsPage, RecordsPosition, RecordsRange, TimeField,
};
use crate::store::{
    HistoryPage, LoggedEvent, RegisterOutcome, RequestPolicy, StoreError, StreamId,
};

use super::records_chain::{ChainPlan, Tip};

/// An EXPIRED event of layout v2 as logged: the lapsed grant's pair and entry pointer (kind
/// `x`), decoded once the entry is read ([`RedisStore::v2_resolve`]).
#[derive(Debug, Clone)]
pub(super) struct Lapsed {
    pub shard: usize,
    pub id: StreamId,
    pub pair: Pair,
    pub pointer: [u8; packed::POINTER_LEN],
}

/// Decodes the payload of a kind-`x` event: the pair's field (14 bytes), then the pointer.
pub(super) fn decode_lapsed(
    shard: usize,
    id: StreamId,
    payload: &[u8],
) -> Result<Lapsed, StoreError> {
    let bad = || StoreError::Corrupt(format!("expiry event {id} in shard {shard}"));
    if payload.len() != 14 + packed::POINTER_LEN {
        return Err(bad());
    }
    let number = |b: &[u8]| {
        let b: [u8; 7] = b.try_into().map_err(|_| bad())?;
        packed::phone_from_bytes(&b)
    };
    Ok(Lapsed {
        shard,
        id,
        pair: Pair::new(number(&payload[..7])?, number(&payload[7..14])?),
        pointer: payload[14..].try_into().map_err(|_| bad())?,
    })
}

/// The time (ms) of a records position's index key (`records::index_key`: 16 hex digits of
/// the time with its sign bit flipped, first).
fn position_time(key: &[u8]) -> Result<i64, StoreError> {
    std::str::from_utf8(key.get(..16).unwrap_or_default())
        .ok()
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .map(|t| (t ^ (1 << 63)) as i64)
        .ok_or_else(|| StoreError::Corrupt("records position".into()))
}

/// The sender as the scripts compare it (an entry's flag bit 3): "1" DoubleTick, "0" WhatsApp.
fn source_flag(d: &Decision) -> &'static str {
    if d.evidence.source == crate::domain::Source::DoubleTick {
        "1"
    } else {
        "0"
    }
}

/// The expiry the sender stated, in ms, or "" for none.
fn stated_expiry(d: &Decision) -> String {
    d.evidence
        .stated_expires_at
        .map(|t| t.timestamp_millis().to_string())
        .unwrap_or_default()
}

/// Reads a script reply that is an array of bulk strings.
fn strings(reply: Value, what: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    redis::from_redis_value(reply).map_err(|_| corrupt_reply(what))
}

impl RedisStore {
    /// Decides, at connect, the layout this replica reads and writes, and marks an empty
    /// store's layout: `{prefix}:layout` is `2:<hot buckets>` for v2 and `1` (or absent, on a
    /// store written before the marker) for v1. A store on v2 must not be read as v1 nor the
    /// other way round, nor with other hot-record buckets: every pair would look unknown (no
    /// consent: closed, but every answer lost). So a replica configured for another layout
    /// than its store's refuses to start. [`Layout::Auto`] (the default) takes the store's:
    /// the marker's, v1 for an unmarked store holding v1 data, and v2 for an empty one.
    pub(super) async fn check_layout(&self) -> Result<Layout, StoreError> {
        let key = self.keys.layout();
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let marked: Option<String> = self.read_cmd(Route::Keyless, &get).await?;
        let v2_mark = format!("2:{}", self.config.hot_buckets.max(1));
        let configured = match self.config.layout {
            Layout::Auto => format!("auto (v2 is {v2_mark})"),
            Layout::V1 => "1".to_owned(),
            Layout::V2 => v2_mark.clone(),
        };
        let refuse = |found: &str| {
            StoreError::Misconfigured(format!(
                "the Redis store under prefix {:?} holds layout {found}; this replica is \
                 configured for layout {configured} (CALLGATE_REDIS_LAYOUT, \
                 CALLGATE_REDIS_HOT_BUCKETS). Configure it like the store (there is no \
                 migration between layouts yet)",
                self.config.prefix,
            ))
        };
        // The layout a marker names, if this replica may use it.
        let accept = |found: &str| match (found, self.config.layout) {
            ("1", Layout::V1 | Layout::Auto) => Ok(Layout::V1),
            (f, Layout::V2 | Layout::Auto) if f == v2_mark => Ok(Layout::V2),
            _ => Err(refuse(found)),
        };
        if let Some(found) = marked {
            let layout = accept(&found)?;
            if layout == Layout::V2 {
                self.refuse_early_v2().await?;
            }
            return Ok(layout);
        }
        // Not marked: a v1 store written before the marker, or an empty one. Any shard's
        // event stream says v1 data was written (it outlives its events: trimming keeps it).
        let streams = all(0..SHARDS, |s| {
            let mut exists = redis::cmd("EXISTS");
            exists.arg(&self.streams[s]);
            async move { self.read_cmd::<i64>(Route::Shard(s), &exists).await }
        })
        .await;
        let mut v1_data = false;
        for found in streams {
            v1_data |= found? > 0;
        }
        let want = match (self.config.layout, v1_data) {
            (Layout::V2, true) => return Err(refuse("1 (unmarked, with data)")),
            (Layout::V2, false) | (Layout::Auto, false) => v2_mark.clone(),
            (Layout::V1 | Layout::Auto, _) => "1".to_owned(),
        };
        let mut set = redis::cmd("SET");
        set.arg(&key).arg(&want).arg("NX");
        let _: Option<String> = self
            .attempt_routed(Route::Keyless, true, Call::Cmd(&set))
            .await?
            .map_err(|e| map_error(e, self.config.timeout))?;
        // Another replica may have marked it first, maybe otherwise.
        let marked: Option<String> = self.read_cmd(Route::Keyless, &get).await?;
        match marked {
            Some(found) => accept(&found),
            None => Err(corrupt_reply("SET layout")),
        }
    }

    /// Refuses a v2 store written by the first build of layout v2 (2026-11-25), which kept each
    /// business's index notes and chunk-id counter in the shard's meta hash `m` (`r<business>`,
    /// `e<business>`, `n<business>`); this build keeps them in `b:<business>` and would give
    /// out chunk ids that exist, overwriting index chunks. `m` now holds only `g`, `i` and `k`.
    async fn refuse_early_v2(&self) -> Result<(), StoreError> {
        let fields = all(0..SHARDS, |s| {
            let mut hkeys = redis::cmd("HKEYS");
            hkeys.arg(format!("{}m", self.keys.shard_prefix(s)));
            async move { self.read_cmd::<Vec<Vec<u8>>>(Route::Shard(s), &hkeys).await }
        })
        .await;
        for found in fields {
            if found?.iter().any(|f| !matches!(&f[..], b"g" | b"i" | b"k")) {
                return Err(StoreError::Misconfigured(format!(
                    "the Redis store under prefix {:?} was written by an earlier build of layout \
                     v2 (per-business notes in the shards' meta hashes), which this build cannot \
                     write without overwriting index chunks. Run the build that wrote it, or \
                     start a new store",
                    self.config.prefix,
                )));
            }
        }
        Ok(())
    }

    /// A pair's hot-record bucket number and field.
    fn bucket_and_field(&self, pair: &Pair) -> (u32, [u8; 14]) {
        let field = packed::pair_field(pair);
        (hot_bucket(&field, self.config.hot_buckets), field)
    }

    /// Whether this store writes and reads layout v2.
    pub(super) fn v2(&self) -> bool {
        self.config.layout == Layout::V2
    }

    /// One `v2_record.lua` call: `decision`, chained as `plan` says.
    pub(super) fn v2_record_call(
        &self,
        decision: &Decision,
        plan: &ChainPlan,
        received_at: DateTime<Utc>,
    ) -> Result<redis::ScriptInvocation<'_>, StoreError> {
        let d = decision;
        let shard = keys::shard_of(&d.pair);
        let prefix = self.keys.shard_prefix(shard);
        let (bucket, field) = self.bucket_and_field(&d.pair);
        let as_applied = HistoryEntry {
            decision: d.clone(),
            outcome: HistoryOutcome::Applied,
            received_at,
        };
        let entry = packed::encode_entry(&as_applied, &plan.applied_hash, None)?;
        let event = ConsentEvent::for_applied(d, received_at)
            .map(|e| codec::event_kind_code(e.kind))
            .unwrap_or("");
        let mut event_body = keys::member(&d.pair).into_bytes();
        event_body.push(b':');
        event_body.extend_from_slice(&codec::encode_body(d));
        let mut message_id = Vec::new();
        packed::put_text(&mut message_id, &d.evidence.message_id);
        let mut call = self.v2_record_script.prepare_invoke();
        call.key(format!("{prefix}p:{bucket}"))
            .arg(&prefix)
            .arg(&field[..])
            .arg(d.pair.business.digits())
            .arg(&field[7..])
            .arg(crate::domain::rules::tie_rank(&d.choice))
            .arg(d.decided_at.timestamp_millis())
            .arg(d.choice.expires_at().map_or(0, |t| t.timestamp_millis()))
            .arg(&d.dedup_digest()[..])
            .arg(plan.position)
            .arg(&plan.prev[..])
            .arg(&plan.applied_hash[..])
            .arg(&plan.stale_hash[..])
            .arg(entry)
            .arg(event_body)
            .arg(self.config.event_retention.as_millis() as u64)
            .arg(event)
            .arg(message_id)
            .arg(d.evidence.stated_at.timestamp_millis())
            .arg(stated_expiry(d))
            .arg(&d.evidence.paired_message_id)
            .arg(self.keys.requests(&d.pair).requests)
            .arg(source_flag(d))
            .arg(received_at.timestamp_millis());
        Ok(call)
    }

    /// One `v2_read.lua` call of `mode` `c` (current entries) or `t` (chain tips) for `pairs`,
    /// all in `shard`.
    fn v2_pairs_call<'p>(
        &self,
        mode: &str,
        shard: usize,
        pairs: impl Iterator<Item = &'p Pair>,
    ) -> redis::ScriptInvocation<'_> {
        let prefix = self.keys.shard_prefix(shard);
        let mut call = self.v2_read_script.prepare_invoke();
        call.key(format!("{prefix}m")).arg(&prefix).arg(mode);
        for pair in pairs {
            let (bucket, field) = self.bucket_and_field(pair);
            call.arg(bucket).arg(&field[..]);
        }
        call
    }

    /// `v2_read.lua` in `mode` (`c` or `t`) for `pairs`: one call per shard, in one round
    /// trip. Returns the groups (shard, indices into `pairs`) and each group's reply.
    async fn v2_pairs_read(
        &self,
        mode: &str,
        pairs: &[Pair],
    ) -> (Vec<(usize, Vec<usize>)>, Vec<Result<Value, StoreError>>) {
        let groups = Self::v2_by_shard(pairs);
        let calls = groups
            .iter()
            .map(|(shard, ix)| {
                (
                    *shard,
                    self.v2_pairs_call(mode, *shard, ix.iter().map(|&i| &pairs[i])),
                )
            })
            .collect();
        let replies = self.v2_read_groups(calls).await;
        (groups, replies)
    }

    /// Runs one read-script call per group (a shard and the indices of its items): on one
    /// Redis all in one pipeline, on a cluster each shard by itself, at once, on the read
    /// connections (with replica acks the write connection carries `WAIT`s, which a check must
    /// not queue behind). Returns each group's reply, in order.
    async fn v2_read_groups(
        &self,
        calls: Vec<(usize, redis::ScriptInvocation<'_>)>,
    ) -> Vec<Result<Value, StoreError>> {
        if self.is_cluster() {
            return all(&calls, |(shard, call)| async move {
                let mut pipe = redis::pipe();
                pipe.invoke_script(call);
                let mut replies: Vec<Value> = self
                    .query_scripts(Route::Shard(*shard), false, &pipe)
                    .await?;
                replies.pop().ok_or_else(|| corrupt_reply("layout v2 read"))
            })
            .await;
        }
        let mut pipe = redis::pipe();
        for (_, call) in &calls {
            pipe.invoke_script(call);
        }
        match self
            .query_scripts::<Vec<Value>>(Route::Keyless, false, &pipe)
            .await
        {
            Ok(replies) if replies.len() == calls.len() => replies.into_iter().map(Ok).collect(),
            Ok(_) => calls
                .iter()
                .map(|_| Err(corrupt_reply("layout v2 read")))
                .collect(),
            Err(e) => calls.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// Pairs grouped by shard: (shard, indices into `pairs`), in shard order.
    fn v2_by_shard(pairs: &[Pair]) -> Vec<(usize, Vec<usize>)> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, pair) in pairs.iter().enumerate() {
            groups[keys::shard_of(pair)].push(i);
        }
        groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect()
    }

    /// For a call of several decisions: whether each one's delivery was seen, and what it said
    /// (one script call per shard); refuses the call before anything is written if one
    /// conflicts, as v1's precheck does.
    pub(super) async fn v2_precheck_deliveries(
        &self,
        decisions: &[Decision],
    ) -> Result<(), StoreError> {
        let pairs: Vec<Pair> = decisions.iter().map(|d| d.pair.clone()).collect();
        let groups = Self::v2_by_shard(&pairs);
        let calls = groups
            .iter()
            .map(|(shard, ix)| {
                let prefix = self.keys.shard_prefix(*shard);
                let mut call = self.v2_read_script.prepare_invoke();
                call.key(format!("{prefix}m")).arg(&prefix).arg("d");
                for &i in ix {
                    let d = &decisions[i];
                    let (bucket, field) = self.bucket_and_field(&d.pair);
                    let mut message_id = Vec::new();
                    packed::put_text(&mut message_id, &d.evidence.message_id);
                    call.arg(bucket)
                        .arg(&field[..])
                        .arg(&d.dedup_digest()[..4])
                        .arg(message_id)
                        .arg(source_flag(d))
                        .arg(crate::domain::rules::tie_rank(&d.choice))
                        .arg(d.evidence.stated_at.timestamp_millis())
                        .arg(stated_expiry(d));
                }
                (*shard, call)
            })
            .collect();
        let replies = self.v2_read_groups(calls).await;
        // What `check_deliveries` compares: the fingerprint stored for the delivery. Layout
        // v2 stores none (it is derived from the entry); the script compared the fields
        // instead, so "said the same" is this decision's own fingerprint and "said something
        // else" any other.
        let mut seen: Vec<Option<[u8; 8]>> = vec![None; decisions.len()];
        for ((_, ix), reply) in groups.iter().zip(replies) {
            let codes: Vec<i64> = redis::from_redis_value(reply?)
                .map_err(|_| corrupt_reply("layout v2 dedup precheck"))?;
            if codes.len() != ix.len() {
                return Err(corrupt_reply("layout v2 dedup precheck"));
            }
            for (&i, code) in ix.iter().zip(codes) {
                let own = decisions[i].fingerprint();
                seen[i] = match code {
                    0 => None,
                    2 => Some(own),
                    3 => Some(own.map(|b| !b)),
                    _ => return Err(corrupt_reply("layout v2 dedup precheck")),
                };
            }
        }
        crate::store::check_deliveries(decisions, &seen)?;
        Ok(())
    }

    /// At most `n` customers of `business`'s calling list in `pos.shard`, after `pos.after`
    /// (the `li` chunks, in order: one script call).
    pub(super) async fn v2_calling_list_range(
        &self,
        business: &crate::domain::PhoneNumber,
        pos: &crate::store::CallablePosition,
        n: usize,
    ) -> Result<Vec<crate::domain::PhoneNumber>, StoreError> {
        let prefix = self.keys.shard_prefix(pos.shard);
        let after = pos
            .after
            .as_ref()
            .map(|c| packed::phone_bytes(c).to_vec())
            .unwrap_or_default();
        let mut call = self.v2_read_script.prepare_invoke();
        call.key(format!("{prefix}m"))
            .arg(&prefix)
            .arg("l")
            .arg(business.digits())
            .arg(after)
            .arg(n);
        let reply = self
            .v2_read_groups(vec![(pos.shard, call)])
            .await
            .pop()
            .ok_or_else(|| corrupt_reply("layout v2 calling list"))??;
        let customers = strings(reply, "layout v2 calling list")?;
        if customers.len() > n {
            return Err(corrupt_reply("layout v2 calling list"));
        }
        customers
            .iter()
            .map(|c| {
                let c: [u8; 7] = c
                    .as_slice()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("calling-list index member".into()))?;
                packed::phone_from_bytes(&c)
            })
            .collect()
    }

    /// A records page on v2: from every shard (one script call each), the business's index
    /// records from the page's start, with their entries, chain positions and previous hashes;
    /// merged here in the index order (`records::index_key`).
    pub(super) async fn v2_records_page(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        let limit = limit.max(1);
        let (from, to) = (range.from.timestamp_millis(), range.to.timestamp_millis());
        if from >= to {
            return Ok(RecordsPage {
                items: Vec::new(),
                next: None,
            });
        }
        let after_ms = after
            .map(|p| position_time(p.key()))
            .transpose()?
            .map(|ms| ms.to_string())
            .unwrap_or_default();
        let (index, dir) = match range.by {
            TimeField::Received => ("bri", "xr"),
            TimeField::Event => ("bei", "xe"),
        };
        let calls = (0..SHARDS)
            .map(|shard| {
                let prefix = self.keys.shard_prefix(shard);
                let mut call = self.v2_read_script.prepare_invoke();
                call.key(format!("{prefix}m"))
                    .arg(&prefix)
                    .arg("r")
                    .arg(range.business.digits())
                    .arg(index)
                    .arg(dir)
                    .arg(from)
                    .arg(to)
                    .arg(&after_ms)
                    .arg(limit + 1)
                    .arg(SHARDS)
                    .arg(self.config.hot_buckets.max(1));
                (shard, call)
            })
            .collect();
        let bad = || corrupt_reply("layout v2 records page");
        let mut items: Vec<(Vec<u8>, RecordedDecision)> = Vec::new();
        for reply in self.v2_read_groups(calls).await {
            let Value::Array(values) = reply? else {
                return Err(bad());
            };
            if values.len() % 4 != 0 {
                return Err(bad());
            }
            for v in values.chunks(4) {
                let ms: i64 = bytes_of(&v[0])
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad)?;
                let entry = bytes_of(&v[1]).ok_or_else(bad)?;
                // Negative: the entry is no longer in its pair's chain (v2_read.lua), gone.
                let answered: i64 = redis::from_redis_value(v[2].clone()).map_err(|_| bad())?;
                let (position, gone) = match u64::try_from(answered) {
                    Ok(position) => (position, false),
                    Err(_) => ((-answered - 1) as u64, true),
                };
                let prev = match bytes_of(&v[3]).ok_or_else(bad)? {
                    [] => GENESIS,
                    h => h.try_into().map_err(|_| bad())?,
                };
                let (read, _) = packed::decode_entry_of(&range.business, entry)?;
                let entry = read.entry;
                // An entry whose time is not its index record's was edited in Redis after it
                // was indexed. It is returned as stored, in the index's order (as v1 does):
                // its hash covers that time, so `audit verify` reports it edited, where an
                // error here would stop the whole audit at the first edited entry.
                let key = records::index_key(ms, &entry.decision.pair.customer, position);
                if after.is_some_and(|p| key.as_slice() <= p.key()) {
                    continue;
                }
                let item = if gone {
                    RecordedDecision {
                        pair: entry.decision.pair.clone(),
                        position,
                        entry: None,
                        link: None,
                    }
                } else {
                    RecordedDecision {
                        pair: entry.decision.pair.clone(),
                        position,
                        link: Some(ChainLink {
                            position,
                            prev,
                            hash: read.hash,
                        }),
                        entry: Some(entry),
                    }
                };
                items.push((key, item));
            }
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        let next =
            (items.len() > limit).then(|| RecordsPosition::after_key(items[limit - 1].0.clone()));
        items.truncate(limit);
        Ok(RecordsPage {
            items: items.into_iter().map(|(_, item)| item).collect(),
            next,
        })
    }

    /// One registration attempt on v2 (`v2_requests.lua`): reads the pair's history, finds
    /// the replies recorded before the registration that answer it, and registers; `None`
    /// when the history grew in between (the caller reads again).
    pub(super) async fn v2_register_once(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Option<RegisterOutcome>, StoreError> {
        let pair = &request.pair;
        let shard = keys::shard_of(pair);
        let history = self.v2_history_page(pair, 0, usize::MAX).await?;
        let oldest = now - chrono::Duration::milliseconds(policy.retention_ms());
        let (bucket, field) = self.bucket_and_field(pair);
        let r = self.keys.requests(pair);
        let mut call = self.v2_requests_script.prepare_invoke();
        call.key(&r.requests)
            .key(&r.sent)
            .arg(&request.request_message_id)
            .arg(codec::encode_request(request))
            .arg(request.sent_at.timestamp_millis())
            .arg(now.timestamp_millis())
            .arg(policy.retention_ms())
            .arg(super::requests::limits_arg(policy))
            .arg(self.config.event_retention.as_millis() as u64)
            .arg(self.keys.shard_prefix(shard))
            .arg(bucket)
            .arg(&field[..])
            .arg(history.entries.len())
            .arg(pair.business.digits());
        for (position, entry) in history.entries.iter().enumerate() {
            if entry.received_at >= oldest
                && entry.decision.attribution.is_none()
                && request.answered_by(&entry.decision)
            {
                let mut body = keys::member(pair).into_bytes();
                body.push(b':');
                body.extend_from_slice(&codec::encode_body(&entry.decision));
                call.arg(position)
                    .arg(&entry.decision.dedup_digest()[..4])
                    .arg(body);
            }
        }
        let mut pipe = redis::pipe();
        pipe.invoke_script(&call);
        self.wait_for_replicas(&mut pipe);
        let mut replies: Vec<Value> = self.query_scripts(Route::Shard(shard), true, &pipe).await?;
        self.replicas_reached(&mut replies, "the registration")?;
        let reply: Vec<i64> = match replies.pop() {
            Some(v) if replies.is_empty() => {
                redis::from_redis_value(v).map_err(|_| corrupt_reply("layout v2 requests"))?
            }
            _ => return Err(corrupt_reply("layout v2 requests")),
        };
        Self::registered(&reply, now, policy)
    }

    /// The chain tips (history length, newest hash) of `pairs`: one `v2_read.lua` call (mode
    /// `t`) per shard, all in one round trip. Reading a tip takes the hot record, then the
    /// newest entry's hash at the pointer it holds: as plain commands that is two round trips
    /// (an `HGET`, then a `GETRANGE`). On a replica that did not write a pair last this read
    /// comes before its webhook's script, and the second round trip cost more than the script
    /// (ingestion on that replica 13,079 and 12,672/s with plain commands, 15,455 and 14,620/s
    /// with the script, alternating runs, `bench/results/issue16-layouts-v1-v2.txt`).
    pub(super) async fn v2_read_tips(&self, pairs: &[Pair]) -> Result<Vec<Tip>, StoreError> {
        let (groups, replies) = self.v2_pairs_read("t", pairs).await;
        let bad = || corrupt_reply("layout v2 chain tips");
        let mut tips = vec![(0, GENESIS); pairs.len()];
        for ((_, ix), reply) in groups.iter().zip(replies) {
            let Value::Array(values) = reply? else {
                return Err(bad());
            };
            if values.len() != 2 * ix.len() {
                return Err(bad());
            }
            for (&i, v) in ix.iter().zip(values.chunks(2)) {
                let count: u64 = redis::from_redis_value(v[0].clone()).map_err(|_| bad())?;
                if count > 0 {
                    let hash = bytes_of(&v[1])
                        .and_then(|h| h.try_into().ok())
                        .ok_or_else(bad)?;
                    tips[i] = (count, hash);
                }
            }
        }
        Ok(tips)
    }

    /// Each pair's current decision, read from the entry its hot record points at: one script
    /// call per shard. On a cluster a failing shard fails only its own pairs.
    pub(super) async fn v2_current_each(
        &self,
        pairs: &[Pair],
    ) -> Vec<Result<Option<Decision>, StoreError>> {
        let (groups, replies) = self.v2_pairs_read("c", pairs).await;
        let mut out: Vec<Result<Option<Decision>, StoreError>> =
            (0..pairs.len()).map(|_| Ok(None)).collect();
        for ((_, ix), reply) in groups.iter().zip(replies) {
            let entries = reply.and_then(|r| strings(r, "layout v2 current"));
            match entries {
                Ok(entries) if entries.len() == ix.len() => {
                    for (&i, entry) in ix.iter().zip(entries) {
                        out[i] = Self::v2_decode_current(&pairs[i], &entry);
                    }
                }
                Ok(_) => ix
                    .iter()
                    .for_each(|&i| out[i] = Err(corrupt_reply("layout v2 current"))),
                Err(e) => ix.iter().for_each(|&i| out[i] = Err(e.clone())),
            }
        }
        out
    }

    /// The current decision in `entry` (empty: none). Its entry must be an applied one.
    fn v2_decode_current(pair: &Pair, entry: &[u8]) -> Result<Option<Decision>, StoreError> {
        if entry.is_empty() {
            return Ok(None);
        }
        let (read, _) = packed::decode_entry(pair, entry)?;
        if read.entry.outcome != HistoryOutcome::Applied {
            return Err(StoreError::Corrupt(
                "layout v2: the current decision's entry is a stale one".into(),
            ));
        }
        Ok(Some(read.entry.decision))
    }

    /// A page of the pair's history: the script walks the pair's back pointers (every entry
    /// of the pair, one call), and the page is cut here.
    pub(super) async fn v2_history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        let shard = keys::shard_of(pair);
        let prefix = self.keys.shard_prefix(shard);
        let (bucket, field) = self.bucket_and_field(pair);
        let mut call = self.v2_read_script.prepare_invoke();
        call.key(format!("{prefix}m"))
            .arg(&prefix)
            .arg("h")
            .arg(bucket)
            .arg(&field[..]);
        let reply = self
            .v2_read_groups(vec![(shard, call)])
            .await
            .pop()
            .ok_or_else(|| corrupt_reply("layout v2 history"))??;
        let entries = strings(reply, "layout v2 history")?;
        let limit = limit.max(1);
        let mut prev = GENESIS;
        let mut page = HistoryPage {
            entries: Vec::new(),
            links: Vec::new(),
            next: None,
        };
        for (position, bytes) in entries.iter().enumerate() {
            let (read, _) = packed::decode_entry(pair, bytes)?;
            let link = ChainLink {
                position: position as u64,
                prev,
                hash: read.hash,
            };
            prev = read.hash;
            if position < start {
                continue;
            }
            if page.entries.len() == limit {
                page.next = Some(position);
                break;
            }
            page.entries.push(read.entry);
            page.links.push(Some(link));
        }
        Ok(page)
    }

    /// One `v2_claim.lua` call for `shard`: at most `batch` grants lapsed at `now_ms`.
    pub(super) fn v2_claim_call(
        &self,
        shard: usize,
        now_ms: i64,
        batch: usize,
    ) -> redis::ScriptInvocation<'_> {
        let mut call = self.v2_claim_script.prepare_invoke();
        call.key(format!("{}xd", self.keys.shard_prefix(shard)))
            .key(&self.streams[shard])
            .key(&self.trimmed[shard])
            .arg(now_ms)
            .arg(batch)
            .arg(self.keys.shard_prefix(shard))
            .arg(self.config.event_retention.as_millis() as u64)
            .arg(SHARDS)
            .arg(self.config.hot_buckets.max(1));
        call
    }

    /// Decodes layout v2's EXPIRED events: reads the lapsed grants' entries (one script call
    /// per shard) and returns them as events.
    pub(super) async fn v2_resolve(
        &self,
        lapsed: Vec<Lapsed>,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        if lapsed.is_empty() {
            return Ok(Vec::new());
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); SHARDS];
        for (i, l) in lapsed.iter().enumerate() {
            groups[l.shard].push(i);
        }
        let groups: Vec<(usize, Vec<usize>)> = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.is_empty())
            .collect();
        let calls = groups
            .iter()
            .map(|(shard, ix)| {
                let prefix = self.keys.shard_prefix(*shard);
                let mut call = self.v2_read_script.prepare_invoke();
                call.key(format!("{prefix}m")).arg(&prefix).arg("p");
                for &i in ix {
                    call.arg(&lapsed[i].pointer[..]);
                }
                (*shard, call)
            })
            .collect();
        let replies = self.v2_read_groups(calls).await;
        let mut out = Vec::with_capacity(lapsed.len());
        for ((_, ix), reply) in groups.iter().zip(replies) {
            let entries = strings(reply?, "layout v2 expiry events")?;
            if entries.len() != ix.len() {
                return Err(corrupt_reply("layout v2 expiry events"));
            }
            for (&i, bytes) in ix.iter().zip(entries) {
                let l = &lapsed[i];
                let (read, _) = packed::decode_entry(&l.pair, &bytes)?;
                out.push(LoggedEvent {
                    shard: l.shard,
                    id: l.id,
                    event: ConsentEvent {
                        kind: EventKind::Expired,
                        decision: read.entry.decision,
                        late_attribution: false,
                    },
                });
            }
        }
        Ok(out)
    }
}
