//! issue 13 (attribution): consent requests on Redis. Registration runs `requests.lua` (purge,
//! retry check, the request budget, store, and the late attribution of replies recorded
//! before it) as one atomic script on the pair's shard, so two teams racing for the last
//! request cannot both pass; the budget is read with one `ZRANGE` of the pair's request log
//! and answered by the domain's rule. Key names in `keys.rs`, the value format in `codec.rs`.

use chrono::{DateTime, Utc};
use redis::Value;

use super::RedisStore;
use super::codec;
use super::error::corrupt_reply;
use super::keys;
use super::routing::Route;
use crate::domain::attribution::budget;
use crate::domain::{Budget, ConsentRequest, Pair};
use crate::store::{RegisterOutcome, RequestPolicy, StoreError};

/// The budget as `requests.lua` reads it: `<max>:<window ms>;...`.
fn limits_arg(policy: &RequestPolicy) -> String {
    policy
        .limits
        .iter()
        .map(|l| format!("{}:{}", l.max, l.window.as_millis()))
        .collect::<Vec<_>>()
        .join(";")
}

fn millis(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| corrupt_reply("request time"))
}

impl RedisStore {
    pub(super) async fn register(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<RegisterOutcome, StoreError> {
        let pair = &request.pair;
        let k = self.keys.pair(pair);
        let r = self.keys.requests(pair);
        let mut invocation = self.requests_script.prepare_invoke();
        invocation
            .key(&r.requests)
            .key(&r.sent)
            .key(&r.pending)
            .key(&k.history)
            .key(&k.consent)
            .key(&k.lapse)
            .key(&k.stream)
            .key(&k.trimmed)
            .arg(&request.request_message_id)
            .arg(codec::encode_request(request))
            .arg(request.sent_at.timestamp_millis())
            .arg(now.timestamp_millis())
            .arg(policy.retention_ms())
            .arg(limits_arg(policy))
            .arg(self.config.event_retention.as_millis() as u64)
            .arg(&k.member);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        let acks = self.config.replica_acks;
        if acks > 0 {
            pipe.cmd("WAIT").arg(acks).arg(self.wait_ms());
        }
        let shard = keys::shard_of(pair);
        let mut replies: Vec<Value> = self.query_scripts(Route::Shard(shard), true, &pipe).await?;
        if acks > 0 {
            let acked: i64 = replies
                .pop()
                .and_then(|v| redis::from_redis_value(v).ok())
                .ok_or_else(|| corrupt_reply("WAIT"))?;
            if acked < i64::from(acks) {
                return Err(StoreError::Unavailable(format!(
                    "the registration reached {acked} of the {acks} replicas required \
                     (CALLGATE_REDIS_REPLICA_ACKS) within {} ms; not acknowledged",
                    self.wait_ms()
                )));
            }
        }
        let reply: Vec<i64> = match replies.pop() {
            Some(v) if replies.is_empty() => {
                redis::from_redis_value(v).map_err(|_| corrupt_reply("requests"))?
            }
            _ => return Err(corrupt_reply("requests")),
        };
        match reply.as_slice() {
            [0, attributed, _announced] => Ok(RegisterOutcome::Registered {
                attributed: usize::try_from(*attributed).unwrap_or(0),
            }),
            [1] => Ok(RegisterOutcome::Duplicate),
            [2] => Ok(RegisterOutcome::Conflict),
            [3, sent @ ..] => {
                let sent = sent
                    .iter()
                    .map(|ms| millis(*ms))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(RegisterOutcome::OverBudget(budget(
                    &sent,
                    now,
                    &policy.limits,
                )))
            }
            _ => Err(corrupt_reply("requests")),
        }
    }

    pub(super) async fn budget(
        &self,
        pair: &Pair,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Budget, StoreError> {
        let r = self.keys.requests(pair);
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&r.sent).arg(0).arg(-1).arg("WITHSCORES");
        let logged: Vec<(String, f64)> = self
            .read_cmd(Route::Shard(keys::shard_of(pair)), &cmd)
            .await?;
        let sent = logged
            .into_iter()
            .map(|(_, ms)| millis(ms as i64))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(budget(&sent, now, &policy.limits))
    }
}
