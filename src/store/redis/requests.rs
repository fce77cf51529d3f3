//! issue 13 (attribution): consent requests on Redis. Registration reads the pair's history
//! (one `LRANGE`; a pair's history is a handful of decisions) and finds the replies recorded
//! before it that answer it, then runs `requests.lua` (purge, retry check, the request budget,
//! store, and the late attribution of those replies) as one atomic script on the pair's shard,
//! so two teams racing for the last request cannot both pass. The script refuses if the
//! history grew in between (a reply landing meanwhile), and the read is done again, so no reply
//! is missed. The budget is read with one `ZRANGE` of the pair's request log and answered by
//! the domain's rule. Key names in `keys.rs`, the value format in `codec.rs`.
//!
//! No index of waiting replies is kept: it would cost every pair that ever answered an
//! unregistered request a key (measured: about 127 bytes per consent) for a lookup that a
//! registration, far rarer than a reply, can do by reading the history.

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
pub(super) fn limits_arg(policy: &RequestPolicy) -> String {
    policy
        .limits
        .iter()
        .map(|l| format!("{}:{}", l.max, l.window.as_millis()))
        .collect::<Vec<_>>()
        .join(";")
}

/// Registration attempts when replies keep landing between reading the history and the script.
const MAX_ATTEMPTS: usize = super::records_chain::MAX_CHAIN_RETRIES;

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
        for attempt in 1..=MAX_ATTEMPTS {
            if let Some(outcome) = self.register_once(request, now, policy).await? {
                return Ok(outcome);
            }
            super::records_chain::contention_pause(attempt).await;
        }
        Err(StoreError::Unavailable(format!(
            "the customer's history kept changing during {MAX_ATTEMPTS} registration attempts; \
             nothing was registered, retry"
        )))
    }

    /// One attempt; `None` when the history grew since it was read.
    async fn register_once(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Option<RegisterOutcome>, StoreError> {
        if self.v2() {
            return self.v2_register_once(request, now, policy).await;
        }
        let pair = &request.pair;
        let k = self.keys.pair(pair);
        let r = self.keys.requests(pair);
        let shard = keys::shard_of(pair);
        // The replies recorded before the registration that answer it.
        let mut lrange = redis::cmd("LRANGE");
        lrange.arg(&k.history).arg(0).arg(-1);
        let raw: Vec<Vec<u8>> = self.read_cmd(Route::Shard(shard), &lrange).await?;
        let oldest = now - chrono::Duration::milliseconds(policy.retention_ms());
        let mut waiting = String::new();
        for (position, bytes) in raw.iter().enumerate() {
            let entry = codec::decode_history(pair, bytes)?;
            if entry.received_at >= oldest
                && entry.decision.attribution.is_none()
                && request.answered_by(&entry.decision)
            {
                waiting.push_str(&format!(
                    "{position}:{};",
                    hex::encode(entry.decision.dedup_digest())
                ));
            }
        }
        let mut invocation = self.requests_script.prepare_invoke();
        invocation
            .key(&r.requests)
            .key(&r.sent)
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
            .arg(&k.member)
            .arg(raw.len())
            .arg(waiting);
        let mut pipe = redis::pipe();
        pipe.invoke_script(&invocation);
        self.wait_for_replicas(&mut pipe);
        let mut replies: Vec<Value> = self.query_scripts(Route::Shard(shard), true, &pipe).await?;
        self.replicas_reached(&mut replies, "the registration")?;
        let reply: Vec<i64> = match replies.pop() {
            Some(v) if replies.is_empty() => {
                redis::from_redis_value(v).map_err(|_| corrupt_reply("requests"))?
            }
            _ => return Err(corrupt_reply("requests")),
        };
        Self::registered(&reply, now, policy)
    }

    /// The outcome of a registration script's answer (`requests.lua`, `v2_requests.lua`);
    /// `None`: the history grew since it was read.
    pub(super) fn registered(
        reply: &[i64],
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Option<RegisterOutcome>, StoreError> {
        let outcome = match reply {
            [0, attributed, _announced] => RegisterOutcome::Registered {
                attributed: usize::try_from(*attributed).unwrap_or(0),
            },
            [1] => RegisterOutcome::Duplicate,
            [2] => RegisterOutcome::Conflict,
            [3, sent @ ..] => {
                let sent = sent
                    .iter()
                    .map(|ms| millis(*ms))
                    .collect::<Result<Vec<_>, _>>()?;
                RegisterOutcome::OverBudget(budget(&sent, now, &policy.limits))
            }
            [4] => return Ok(None),
            _ => return Err(corrupt_reply("requests")),
        };
        Ok(Some(outcome))
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
