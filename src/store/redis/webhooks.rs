//! Outbound webhook subscriptions on Redis (issue 17): one hash and one lease key per
//! subscription under its own hash tag, an index set of ids, and four small scripts (lease,
//! fenced progress, an operator's versioned change, release) so that each step that must be
//! atomic is one script on one slot. Key names are in `keys.rs`, the settings' format in
//! `codec.rs`.
//!
//! The scripts run with `EVAL` (Redis caches them by digest): they run once per delivered
//! event or lease renewal, far off the check path, so they skip the `SCRIPT LOAD` bookkeeping
//! of the consent scripts.
//!
//! The lease's length is measured by Redis (`PX`), so replicas' clocks never decide who holds
//! it.

use std::time::Duration;

use redis::Value;

use super::codec::{decode_webhook, encode_webhook};
use super::error::map_error;
use super::routing::{Call, Route};
use super::{RedisStore, SHARDS};
use crate::domain::Subscription;
use crate::store::webhooks::valid_id;
use crate::store::{Cursor, Lease, Progress, StoreError, WebhookRecord};

const LEASE_LUA: &str = include_str!("webhook_lease.lua");
const PROGRESS_LUA: &str = include_str!("webhook_progress.lua");
const REPLACE_LUA: &str = include_str!("webhook_replace.lua");
const RELEASE_LUA: &str = include_str!("webhook_release.lua");

fn no_such(id: &str) -> StoreError {
    StoreError::Misconfigured(format!("not a webhook subscription id: {id:?}"))
}

impl RedisStore {
    /// One write (not retried: a lost reply must not be applied twice).
    async fn webhook_write<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.attempt_routed::<T>(Route::Keyless, true, Call::Cmd(cmd))
            .await?
            .map_err(|e| map_error(e, self.config.timeout))
    }

    fn eval(source: &str, keys: &[&str]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(source).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        cmd
    }

    pub(super) async fn webhook_create_impl(
        &self,
        sub: &Subscription,
        cursor: &Cursor,
    ) -> Result<(), StoreError> {
        if !valid_id(&sub.id) {
            return Err(no_such(&sub.id));
        }
        let keys = self.keys.webhook(&sub.id);
        let mut hset = redis::cmd("HSET");
        hset.arg(&keys.sub)
            .arg("sub")
            .arg(encode_webhook(sub))
            .arg("state")
            .arg(sub.state.as_str())
            .arg("reason")
            .arg(&sub.reason)
            .arg("cursor")
            .arg(cursor.to_string())
            .arg("fence")
            .arg(0);
        self.webhook_write::<Value>(&hset).await?;
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.keys.webhook_index()).arg(&sub.id);
        self.webhook_write::<Value>(&sadd).await?;
        Ok(())
    }

    pub(super) async fn webhook_list_impl(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let mut smembers = redis::cmd("SMEMBERS");
        smembers.arg(self.keys.webhook_index());
        let mut ids: Vec<String> = self.read_cmd(Route::Keyless, &smembers).await?;
        ids.sort();
        let mut all = Vec::with_capacity(ids.len());
        for id in ids.iter().filter(|id| valid_id(id)) {
            if let Some(record) = self.webhook_get_impl(id).await? {
                all.push(record);
            }
        }
        Ok(all)
    }

    pub(super) async fn webhook_get_impl(
        &self,
        id: &str,
    ) -> Result<Option<WebhookRecord>, StoreError> {
        if !valid_id(id) {
            return Ok(None);
        }
        let mut hmget = redis::cmd("HMGET");
        hmget
            .arg(self.keys.webhook(id).sub)
            .arg(&["sub", "state", "reason", "cursor", "fence"]);
        let fields: Vec<Option<String>> = self.read_cmd(Route::Keyless, &hmget).await?;
        let [
            Some(settings),
            Some(state),
            reason,
            Some(cursor),
            Some(fence),
        ] = <[Option<String>; 5]>::try_from(fields)
            .map_err(|_| StoreError::Corrupt("HMGET webhook subscription".into()))?
        else {
            return Ok(None);
        };
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("webhook subscription {id}: {what}"));
        Ok(Some(WebhookRecord {
            subscription: decode_webhook(id, &settings, &state, &reason.unwrap_or_default())?,
            cursor: Cursor::parse(&cursor, SHARDS).map_err(|_| corrupt("cursor"))?,
            version: fence.parse().map_err(|_| corrupt("version"))?,
        }))
    }

    pub(super) async fn webhook_replace_impl(
        &self,
        record: &WebhookRecord,
    ) -> Result<bool, StoreError> {
        let sub = &record.subscription;
        if !valid_id(&sub.id) {
            return Ok(false);
        }
        let keys = self.keys.webhook(&sub.id);
        let mut cmd = Self::eval(REPLACE_LUA, &[&keys.sub, &keys.lease]);
        cmd.arg(record.version)
            .arg(encode_webhook(sub))
            .arg(sub.state.as_str())
            .arg(&sub.reason)
            .arg(record.cursor.to_string());
        Ok(self.webhook_write::<i64>(&cmd).await? == 1)
    }

    pub(super) async fn webhook_lease_impl(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        if !valid_id(id) {
            return Ok(Lease::Gone);
        }
        let keys = self.keys.webhook(id);
        let mut cmd = Self::eval(LEASE_LUA, &[&keys.sub, &keys.lease]);
        cmd.arg(holder).arg(ttl.as_millis().max(1) as u64);
        Ok(match self.webhook_write::<i64>(&cmd).await? {
            -1 => Lease::Gone,
            0 => Lease::Busy,
            token => Lease::Held(token as u64),
        })
    }

    pub(super) async fn webhook_progress_impl(
        &self,
        id: &str,
        token: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        if !valid_id(id) {
            return Ok(false);
        }
        let keys = self.keys.webhook(id);
        let mut cmd = Self::eval(PROGRESS_LUA, &[&keys.sub]);
        let (state, reason) = progress
            .state
            .as_ref()
            .map_or(("", ""), |(s, r)| (s.as_str(), r.as_str()));
        cmd.arg(token)
            .arg(progress.cursor.to_string())
            .arg(state)
            .arg(reason);
        Ok(self.webhook_write::<i64>(&cmd).await? == 1)
    }

    pub(super) async fn webhook_release_impl(
        &self,
        id: &str,
        holder: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        if !valid_id(id) {
            return Ok(());
        }
        let keys = self.keys.webhook(id);
        let mut cmd = Self::eval(RELEASE_LUA, &[&keys.lease]);
        cmd.arg(format!("{holder} {token}"));
        self.webhook_write::<Value>(&cmd).await.map(drop)
    }
}
