//! What the admin API does with subscriptions: create (the secret shown once), list, disable,
//! enable, rotate the secret, replay from a time. Each change is a versioned write
//! ([`ConsentStore::webhook_replace`]): it ends the current lease, so the delivering replica
//! stops at once and the next holder starts from the record as changed.
//!
//! [`ConsentStore::webhook_replace`]: crate::store::ConsentStore::webhook_replace

use chrono::{DateTime, Utc};

use super::Outbound;
use super::destination::Destination;
use super::signature;
use crate::domain::{EventKinds, PhoneNumber, SigningKey, Subscription, SubscriptionState};
use crate::store::{StoreError, WebhookRecord, cursor_at};

/// Most subscriptions (each has a task on every replica and its own metric series).
pub const MAX_SUBSCRIPTIONS: usize = 1000;
/// Most filter values of each kind on one subscription, and longest team/campaign name.
pub const MAX_FILTERS: usize = 100;
pub const MAX_TAG_LEN: usize = 200;
/// How often a change is tried again when the record changed under it.
const CHANGE_ATTEMPTS: usize = 8;

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error("no webhook subscription {0:?}")]
    NotFound(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("the subscription kept changing; try again")]
    Contended,
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A new subscription's settings, as asked for.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub url: String,
    pub kinds: EventKinds,
    pub businesses: Vec<PhoneNumber>,
    pub teams: Vec<String>,
    pub campaigns: Vec<String>,
}

fn check_tags(field: &str, tags: &[String]) -> Result<(), ManageError> {
    if tags.len() > MAX_FILTERS {
        return Err(ManageError::Invalid(format!(
            "{field}: at most {MAX_FILTERS} values"
        )));
    }
    if let Some(t) = tags
        .iter()
        .find(|t| t.trim().is_empty() || t.len() > MAX_TAG_LEN)
    {
        return Err(ManageError::Invalid(format!(
            "{field}: {t:?} must be 1 to {MAX_TAG_LEN} characters"
        )));
    }
    Ok(())
}

fn new_key() -> Result<Vec<u8>, ManageError> {
    signature::new_key()
        .map_err(|e| ManageError::Store(StoreError::Unavailable(format!("no randomness: {e}"))))
}

impl Outbound {
    /// Registers a subscription whose delivery starts with the next event; returns it and its
    /// secret (`whsec_…`), which is never shown again.
    pub async fn create(
        &self,
        new: NewSubscription,
    ) -> Result<(WebhookRecord, String), ManageError> {
        let dest = Destination::parse(&new.url).map_err(|e| ManageError::Invalid(e.to_string()))?;
        self.sender
            .allow_list()
            .check_all(&dest)
            .await
            .map_err(|e| ManageError::Invalid(e.to_string()))?;
        if new.businesses.len() > MAX_FILTERS {
            return Err(ManageError::Invalid(format!(
                "business_numbers: at most {MAX_FILTERS} values"
            )));
        }
        check_tags("teams", &new.teams)?;
        check_tags("campaigns", &new.campaigns)?;
        if self.store.webhook_list().await?.len() >= MAX_SUBSCRIPTIONS {
            return Err(ManageError::Limit(format!(
                "at most {MAX_SUBSCRIPTIONS} webhook subscriptions"
            )));
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| {
            ManageError::Store(StoreError::Unavailable(format!("no randomness: {e}")))
        })?;
        let key = new_key()?;
        let secret = signature::secret_string(&key);
        let subscription = Subscription {
            id: format!("wh_{}", hex::encode(id)),
            url: new.url,
            keys: vec![SigningKey {
                key,
                retire_at: None,
            }],
            kinds: new.kinds,
            businesses: new.businesses,
            teams: new.teams,
            campaigns: new.campaigns,
            state: SubscriptionState::Active,
            reason: String::new(),
            created_at: self.clock.now(),
        };
        // Delivery starts after the newest event logged so far.
        let cursor = self.store.head().await?;
        self.store.webhook_create(&subscription, &cursor).await?;
        self.wake();
        let record = WebhookRecord {
            subscription,
            cursor,
            version: 0,
        };
        Ok((record, secret))
    }

    pub async fn list(&self) -> Result<Vec<WebhookRecord>, ManageError> {
        Ok(self.store.webhook_list().await?)
    }

    pub async fn get(&self, id: &str) -> Result<WebhookRecord, ManageError> {
        self.store
            .webhook_get(id)
            .await?
            .ok_or_else(|| ManageError::NotFound(id.to_owned()))
    }

    /// Reads the record, applies `change`, writes it if nothing changed it meanwhile.
    async fn change<T>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut WebhookRecord) -> Result<T, ManageError>,
    ) -> Result<(WebhookRecord, T), ManageError> {
        for _ in 0..CHANGE_ATTEMPTS {
            let mut record = self.get(id).await?;
            let out = change(&mut record)?;
            if self.store.webhook_replace(&record).await? {
                self.wake();
                record.version += 1;
                return Ok((record, out));
            }
        }
        Err(ManageError::Contended)
    }

    /// Stops delivery; the cursor is kept.
    pub async fn disable(&self, id: &str) -> Result<WebhookRecord, ManageError> {
        self.change(id, |r| {
            r.subscription.state = SubscriptionState::Disabled;
            r.subscription.reason = "disabled by an operator".into();
            Ok(())
        })
        .await
        .map(|(r, ())| r)
    }

    /// Resumes delivery from the kept cursor (after a failing receiver was fixed).
    pub async fn enable(&self, id: &str) -> Result<WebhookRecord, ManageError> {
        self.change(id, |r| {
            r.subscription.state = SubscriptionState::Active;
            r.subscription.reason.clear();
            Ok(())
        })
        .await
        .map(|(r, ())| r)
    }

    /// A new signing secret; the previous one keeps signing for the overlap window.
    pub async fn rotate_secret(&self, id: &str) -> Result<(WebhookRecord, String), ManageError> {
        let key = new_key()?;
        let secret = signature::secret_string(&key);
        let now = self.clock.now();
        let overlap = self.config.secret_overlap;
        let (record, ()) = self
            .change(id, |r| {
                r.subscription.rotate(key.clone(), now, overlap);
                Ok(())
            })
            .await?;
        Ok((record, secret))
    }

    /// Delivers again every event logged at or after `since` (and everything after), and makes
    /// the subscription active. Refused if `since` is before the retained event log.
    pub async fn replay(
        &self,
        id: &str,
        since: DateTime<Utc>,
    ) -> Result<WebhookRecord, ManageError> {
        let cursor = cursor_at(self.store.shards(), since);
        let retained = self.store.retained_from().await?;
        if cursor.first_behind(&retained).is_some() {
            return Err(ManageError::OutOfRange(format!(
                "since: {since} is before the retained event log (events are kept for \
                 CALLGATE_EVENT_RETENTION_SECS); choose a later time"
            )));
        }
        self.change(id, |r| {
            r.cursor = cursor.clone();
            r.subscription.state = SubscriptionState::Active;
            r.subscription.reason.clear();
            Ok(())
        })
        .await
        .map(|(r, ())| r)
    }
}
