//! Reading the sharded event log: on one Redis, every shard in one `XREAD` (blocking when
//! asked to wait) on a dedicated connection; on a cluster, each shard by itself, polled. Both
//! check the cursor against the shards' trimmed marks in the same round trip, so a cursor
//! before a trimmed event fails with `OutOfRange` instead of skipping it.

use std::time::Duration;

use redis::Value;

use super::connection::{BlockingPool, SharedConnection, Verdict};
use super::error::{corrupt_reply, map_error};
use super::reply::{Decoded, bytes_of, decode_entry, newest_id};
use super::routing::Route;
use super::store::all;
use super::{RedisStore, SHARDS};
use crate::store::{Cursor, CursorError, StoreError, StreamId};

/// On a cluster, how often a waiting event-log read looks again (see `read_events`).
const CLUSTER_POLL: Duration = Duration::from_millis(20);

impl RedisStore {
    /// Reads shard `shard`'s events after `after` (without blocking) and its trimmed mark, in
    /// one single-slot pipeline; fails with `OutOfRange` if events after `after` were trimmed.
    pub(super) async fn read_shard(
        &self,
        shard: usize,
        after: StreamId,
        limit: usize,
    ) -> Result<Vec<Decoded>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&self.trimmed[shard]);
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(limit)
            .arg("STREAMS")
            .arg(&self.streams[shard])
            .arg(after.to_string());
        let (trimmed, reply): (Option<String>, Value) =
            self.read_pipe(Route::Shard(shard), &pipe).await?;
        if let Some(id) = trimmed {
            let id = StreamId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}")))?;
            if after < id {
                return Err(CursorError::OutOfRange { shard }.into());
            }
        }
        let mut events = Vec::new();
        self.decode_xread(&reply, &mut events)?;
        Ok(events)
    }

    /// Appends the events of an `XREAD` reply (RESP2 or RESP3) to `events`.
    pub(super) fn decode_xread(
        &self,
        reply: &Value,
        events: &mut Vec<Decoded>,
    ) -> Result<(), StoreError> {
        let streams: Vec<(&Value, &Value)> = match reply {
            Value::Nil => Vec::new(),
            // RESP3: a map of key to entries.
            Value::Map(map) => map.iter().map(|(k, v)| (k, v)).collect(),
            // RESP2: an array of [key, entries] arrays.
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::Array(kv) if kv.len() == 2 => Some((&kv[0], &kv[1])),
                    _ => None,
                })
                .collect::<Option<_>>()
                .ok_or_else(|| corrupt_reply("XREAD"))?,
            _ => return Err(corrupt_reply("XREAD")),
        };
        for (key, entries) in streams {
            let shard = bytes_of(key)
                .and_then(|k| self.streams.iter().position(|s| s.as_bytes() == k))
                .ok_or_else(|| corrupt_reply("XREAD stream key"))?;
            let Value::Array(entries) = entries else {
                return Err(corrupt_reply("XREAD entries"));
            };
            for entry in entries {
                events.push(decode_entry(shard, entry)?);
            }
        }
        Ok(())
    }

    /// Standalone: every shard in one `XREAD` (blocking if asked to) on a dedicated
    /// connection, pipelined after one `MGET` of every shard's trimmed mark.
    pub(super) async fn read_events_single(
        &self,
        shared: &SharedConnection,
        blocking: &BlockingPool,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Decoded>, StoreError> {
        // One round trip: the range check (the newest trimmed id of every shard), then the
        // read, blocking if asked to. If the cursor is out of range, retained events follow
        // it (a trim never removes the entry just added), so the XREAD returns at once.
        let mut xread = redis::cmd("XREAD");
        xread.arg("COUNT").arg(limit);
        let block_ms = wait.as_millis().min(u128::from(u32::MAX)) as u64;
        if block_ms > 0 {
            xread.arg("BLOCK").arg(block_ms);
        }
        xread.arg("STREAMS").arg(&self.streams);
        for id in after.ids() {
            xread.arg(id.to_string());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(&self.trimmed).add_command(xread);

        let bound = wait + self.config.timeout;
        let (trimmed, reply) = loop {
            let epoch = shared.replacements();
            let (mut conn, reused) = blocking.take(epoch).await?;
            match tokio::time::timeout(
                bound,
                pipe.query_async::<(Vec<Option<String>>, Value)>(&mut conn),
            )
            .await
            {
                Ok(Ok(v)) => {
                    blocking.give_back(conn, epoch);
                    break v;
                }
                // An idle connection may have died with a Redis restart: the read is
                // idempotent, so try once more on a fresh connection.
                Ok(Err(e)) if reused && Verdict::of(&e) == Verdict::Broken => {}
                Ok(Err(e)) => return Err(map_error(e, self.config.timeout)),
                // The connection still owes the reply: it is dropped, not reused.
                Err(_) => return Err(StoreError::Timeout(bound)),
            }
        };

        if trimmed.len() != SHARDS {
            return Err(corrupt_reply("MGET trimmed"));
        }
        for (shard, id) in trimmed.iter().enumerate() {
            let Some(id) = id else { continue };
            let id = StreamId::parse(id)
                .ok_or_else(|| StoreError::Corrupt(format!("trimmed id {id:?}")))?;
            if after.get(shard) < id {
                return Err(CursorError::OutOfRange { shard }.into());
            }
        }
        let mut events = Vec::new();
        self.decode_xread(&reply, &mut events)?;
        Ok(events)
    }

    /// Cluster: an `XREAD` cannot span slots, so each shard is read by itself (one
    /// single-slot pipeline per shard, all at once, none blocking: a blocking read would hold
    /// its node's shared connection, and every check to that node would queue behind it).
    /// To wait for a new event the read is repeated every [`CLUSTER_POLL`] until `wait` ends.
    pub(super) async fn read_events_cluster(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<Decoded>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut events = Vec::new();
            for shard in all(0..SHARDS, |s| self.read_shard(s, after.get(s), limit)).await {
                events.extend(shard?);
            }
            let now = tokio::time::Instant::now();
            if !events.is_empty() || now >= deadline {
                return Ok(events);
            }
            tokio::time::sleep(CLUSTER_POLL.min(deadline - now)).await;
        }
    }

    /// The newest id of shard `shard`'s stream (zero if empty).
    pub(super) async fn head_of(&self, shard: usize) -> Result<StreamId, StoreError> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.streams[shard])
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let reply: Value = self.read_cmd(Route::Shard(shard), &cmd).await?;
        newest_id(&reply)
    }
}
