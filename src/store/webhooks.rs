//! Outbound webhook subscriptions in the store (issue 17): the record every replica sees, the
//! delivery lease with its fencing token, and the in-memory table the embedded store keeps them
//! in (the Redis twin is `store/redis/webhooks.rs` with its scripts).
//!
//! The fencing token is one counter per subscription (its `version`), raised by every lease
//! granted to a new holder and by every operator change. A delivery moves the cursor only with
//! the token it was granted ([`ConsentStore::webhook_progress`]), so a replica that paused past
//! its lease, or whose subscription an operator changed meanwhile (replay, rotation, disable),
//! can never move the cursor again: it must take the lease anew and re-read the record.
//!
//! [`ConsentStore::webhook_progress`]: super::ConsentStore::webhook_progress

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Cursor;
use crate::domain::{Subscription, SubscriptionState};

/// A subscription as stored: its settings, its delivery cursor and its version (the current
/// fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRecord {
    pub subscription: Subscription,
    /// Every event up to here was delivered (or filtered out).
    pub cursor: Cursor,
    pub version: u64,
}

/// The answer to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The caller holds the lease with this fencing token (the same token as before when it
    /// renewed its own lease; a new, larger one when it took the lease anew).
    Held(u64),
    /// Another replica holds a live lease.
    Busy,
    /// No such subscription.
    Gone,
}

/// A change a delivery makes, fenced by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub cursor: Cursor,
    /// A new state and its reason (failing after the retry window, disabled by `410`).
    pub state: Option<(SubscriptionState, String)>,
}

/// Whether `id` has the shape callgate gives subscription ids (`wh_` and 16 lower-case hex
/// digits): checked before an id reaches a key name.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("wh_").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

struct Entry {
    record: WebhookRecord,
    /// Holder, token and end of the lease, if one was granted.
    lease: Option<(String, u64, DateTime<Utc>)>,
}

/// The embedded store's subscriptions: one lock, the same rules as the Redis scripts.
#[derive(Default)]
pub struct MemoryWebhooks {
    entries: Mutex<HashMap<String, Entry>>,
}

impl MemoryWebhooks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Every mutation below is done after all fallible work: a poisoned lock is consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn create(&self, subscription: &Subscription, cursor: &Cursor) {
        self.lock().insert(
            subscription.id.clone(),
            Entry {
                record: WebhookRecord {
                    subscription: subscription.clone(),
                    cursor: cursor.clone(),
                    version: 0,
                },
                lease: None,
            },
        );
    }

    pub fn list(&self) -> Vec<WebhookRecord> {
        let mut all: Vec<WebhookRecord> = self.lock().values().map(|e| e.record.clone()).collect();
        all.sort_by(|a, b| a.subscription.id.cmp(&b.subscription.id));
        all
    }

    pub fn get(&self, id: &str) -> Option<WebhookRecord> {
        self.lock().get(id).map(|e| e.record.clone())
    }

    pub fn replace(&self, record: &WebhookRecord) -> Option<bool> {
        let mut entries = self.lock();
        let entry = entries.get_mut(&record.subscription.id)?;
        if entry.record.version != record.version {
            return Some(false);
        }
        entry.record = WebhookRecord {
            version: record.version + 1,
            ..record.clone()
        };
        entry.lease = None;
        Some(true)
    }

    pub fn lease(&self, id: &str, holder: &str, ttl: Duration, now: DateTime<Utc>) -> Lease {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return Lease::Gone;
        };
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        match &entry.lease {
            Some((h, _, end)) if h != holder && *end > now => Lease::Busy,
            Some((h, token, _)) if h == holder && *token == entry.record.version => {
                let token = *token;
                entry.lease = Some((holder.to_owned(), token, until));
                Lease::Held(token)
            }
            _ => {
                entry.record.version += 1;
                let token = entry.record.version;
                entry.lease = Some((holder.to_owned(), token, until));
                Lease::Held(token)
            }
        }
    }

    pub fn progress(&self, id: &str, token: u64, progress: &Progress) -> bool {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return false;
        };
        if entry.record.version != token {
            return false;
        }
        entry.record.cursor = progress.cursor.clone();
        if let Some((state, reason)) = &progress.state {
            entry.record.subscription.state = *state;
            entry.record.subscription.reason = reason.clone();
        }
        true
    }

    pub fn release(&self, id: &str, holder: &str, token: u64) {
        if let Some(entry) = self.lock().get_mut(id)
            && entry
                .lease
                .as_ref()
                .is_some_and(|(h, t, _)| h == holder && *t == token)
        {
            entry.lease = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_key() {
        assert!(valid_id("wh_0123456789abcdef"));
        for bad in [
            "",
            "wh_",
            "wh_0123456789ABCDEF",
            "wh_0123456789abcde",
            "x}:{y",
            "wh_0123456789abcdef0",
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
