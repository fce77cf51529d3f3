//! Issue 13, calling lists on Redis: reading a business's calling-list index a page at a time.
//!
//! The index (see [`keys`](super::keys)) is one sorted set per (shard, business),
//! `{p:sNN}:l:<business>`, every member the digits of a customer whose current decision is a
//! grant, all with score 0 so `ZRANGEBYLEX` walks them in byte order from a position. It lives
//! in the shard's hash tag, beside the pairs it lists, so `record.lua` keeps it in step with
//! the current decision in the same atomic step (a grant applied `ZADD`s, a denial applied
//! `ZREM`s) and `claim_expired.lua` takes a lapsed grant out when it claims the lapse. On a
//! cluster nothing spans slots: a page reads one shard at a time.
//!
//! A page walks the shards in order from its [`CallablePosition`]: one `ZRANGEBYLEX` of the
//! shard's index from the position, then one `MGET` of the listed pairs' `c:`/`x:` keys (one
//! slot: the check's own read), decoded exactly as a check decodes them, and kept if the
//! caller's predicate admits the decision. So what a page lists is the authoritative current
//! decision at read time, never the index's opinion: a grant that lapsed before the sweep ran,
//! or one denied between the two reads, is filtered out. Memory per page is bounded by the
//! chunk size ([`callable::chunk`]) and work by [`callable::scan_budget`].

use super::error::corrupt_reply;
use super::routing::Route;
use super::{RedisStore, SHARDS};
use crate::domain::{Pair, PhoneNumber};
use crate::store::StoreError;
use crate::store::callable::{self, CallablePage, CallablePosition, Keep};

impl RedisStore {
    /// [`ConsentStore::callable_page`](crate::store::ConsentStore::callable_page) on Redis.
    pub(super) async fn read_callable_page(
        &self,
        business: &PhoneNumber,
        from: &CallablePosition,
        limit: usize,
        keep: Keep<'_>,
    ) -> Result<CallablePage, StoreError> {
        let limit = limit.max(1);
        let budget = callable::scan_budget(limit);
        let mut entries = Vec::new();
        let mut scanned = 0;
        let mut pos = from.clone();
        while pos.shard < SHARDS {
            if entries.len() == limit || scanned >= budget {
                return Ok(CallablePage {
                    entries,
                    next: Some(pos),
                });
            }
            let want = callable::chunk(limit, entries.len()).min(budget - scanned);
            let customers = self.index_range(business, &pos, want).await?;
            let read = customers.len();
            let pairs: Vec<Pair> = customers
                .into_iter()
                .map(|c| Pair::new(business.clone(), c))
                .collect();
            let currents = self.shard_currents(pos.shard, &pairs).await?;
            let mut stopped_early = false;
            for (i, (pair, current)) in pairs.into_iter().zip(currents).enumerate() {
                scanned += 1;
                if let Some(d) = current
                    && keep(&d)
                {
                    entries.push(d);
                }
                pos.after = Some(pair.customer);
                if entries.len() == limit && i + 1 < read {
                    stopped_early = true;
                    break;
                }
            }
            if !stopped_early && read < want {
                // The shard's index is done: the next shard from its start.
                pos = CallablePosition {
                    shard: pos.shard + 1,
                    after: None,
                };
            }
        }
        Ok(CallablePage {
            entries,
            next: None,
        })
    }

    /// At most `n` customers of `business`'s index in `pos.shard`, after `pos.after`.
    async fn index_range(
        &self,
        business: &PhoneNumber,
        pos: &CallablePosition,
        n: usize,
    ) -> Result<Vec<PhoneNumber>, StoreError> {
        if self.v2() {
            return self.v2_calling_list_range(business, pos, n).await;
        }
        let min = match &pos.after {
            None => "-".to_owned(),
            Some(c) => format!("({}", c.digits()),
        };
        let mut range = redis::cmd("ZRANGEBYLEX");
        range
            .arg(self.keys.callable(pos.shard, business))
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(n);
        let members: Vec<String> = self.read_cmd(Route::Shard(pos.shard), &range).await?;
        if members.len() > n {
            return Err(corrupt_reply("ZRANGEBYLEX callable"));
        }
        members
            .iter()
            .map(|m| {
                PhoneNumber::from_digits(m)
                    // Never the member: it is a phone number.
                    .map_err(|_| StoreError::Corrupt("calling-list index member".into()))
            })
            .collect()
    }

    /// The current decisions of `pairs`, all in `shard`: one `MGET` of their `c:`/`x:` keys,
    /// decoded as a check decodes them.
    async fn shard_currents(
        &self,
        shard: usize,
        pairs: &[Pair],
    ) -> Result<Vec<Option<crate::domain::Decision>>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        if self.v2() {
            if pairs.iter().any(|p| super::keys::shard_of(p) != shard) {
                return Err(StoreError::Corrupt(
                    "calling-list index entry in another shard".into(),
                ));
            }
            return self.v2_current_each(pairs).await.into_iter().collect();
        }
        let mut mget = redis::cmd("MGET");
        for pair in pairs {
            let (pair_shard, consent, lapse) = self.keys.current(pair);
            if pair_shard != shard {
                // The index of one shard lists only that shard's pairs (record.lua writes it
                // with the pair's own keys).
                return Err(StoreError::Corrupt(
                    "calling-list index entry in another shard".into(),
                ));
            }
            mget.arg(consent).arg(lapse);
        }
        let values: Vec<Option<Vec<u8>>> = self.read_cmd(Route::Shard(shard), &mget).await?;
        if values.len() != 2 * pairs.len() {
            return Err(corrupt_reply("MGET callable"));
        }
        let mut values = values.into_iter();
        pairs
            .iter()
            .map(|pair| {
                let (consent, lapse) = (values.next().flatten(), values.next().flatten());
                Self::decode_current(pair, consent, lapse)
            })
            .collect()
    }
}
