//! One store wrapper for every test that needs a store to fail, stall or count at a chosen
//! call: [`Intercepted`] delegates every `ConsentStore` method to a real store and, before the
//! reads tests interfere with, asks its [`Hooks`] (which may fail the call, or await before
//! letting it through: a stalled read), and after them (issue 16: awaiting there holds back a
//! reply that was already read). A method added to the trait needs its line here only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use callgate::domain::{Budget, ConsentRequest, Decision, Pair, PhoneNumber, Subscription};
use callgate::store::callable::Keep;
use callgate::store::{
    CallablePage, CallablePosition, ConsentStore, Cursor, HistoryPage, Lease, LoggedEvent,
    Progress, Recorded, RecordsPage, RecordsPosition, RecordsRange, RegisterOutcome, RequestPolicy,
    StoreError, WebhookRecord,
};
use chrono::{DateTime, Utc};

/// The reads a test can interfere with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `current` (one pair).
    Current,
    /// `current_many` (a batch; `current_each` goes through it).
    CurrentMany,
    /// `callable_page` (a calling list's page).
    CallablePage,
    /// `read_events` (the fan-out tailer, catch-ups, outbound delivery).
    Events,
}

/// What happens before an intercepted read: `Err` fails it (nothing is asked of the real
/// store); awaiting delays it. And after it (whatever it returned): awaiting holds the reply
/// back (issue 16: a check's fill that lands late); by default nothing.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    async fn before(&self, read: Read) -> Result<(), StoreError>;

    async fn after(&self, _read: Read) {}
}

/// A real store with [`Hooks`] in front of some of its reads.
pub struct Intercepted<H> {
    pub inner: Arc<dyn ConsentStore>,
    pub hooks: H,
}

impl<H: Hooks> Intercepted<H> {
    pub fn new(inner: Arc<dyn ConsentStore>, hooks: H) -> Arc<Self> {
        Arc::new(Intercepted { inner, hooks })
    }
}

#[async_trait]
impl<H: Hooks> ConsentStore for Intercepted<H> {
    async fn record_logged(
        &self,
        decisions: &[Decision],
        received_at: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.inner.record_logged(decisions, received_at).await
    }
    async fn current(&self, pair: &Pair) -> Result<Option<Decision>, StoreError> {
        self.hooks.before(Read::Current).await?;
        let reply = self.inner.current(pair).await;
        self.hooks.after(Read::Current).await;
        reply
    }
    async fn current_many(&self, pairs: &[Pair]) -> Result<Vec<Option<Decision>>, StoreError> {
        self.hooks.before(Read::CurrentMany).await?;
        let reply = self.inner.current_many(pairs).await;
        self.hooks.after(Read::CurrentMany).await;
        reply
    }
    async fn history_page(
        &self,
        pair: &Pair,
        start: usize,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        self.inner.history_page(pair, start, limit).await
    }
    async fn records_page(
        &self,
        range: &RecordsRange,
        after: Option<&RecordsPosition>,
        limit: usize,
    ) -> Result<RecordsPage, StoreError> {
        self.inner.records_page(range, after, limit).await
    }
    fn shards(&self) -> usize {
        self.inner.shards()
    }
    fn shard_of(&self, pair: &Pair) -> usize {
        self.inner.shard_of(pair)
    }
    async fn read_events(
        &self,
        after: &Cursor,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        self.hooks.before(Read::Events).await?;
        let reply = self.inner.read_events(after, limit, wait).await;
        self.hooks.after(Read::Events).await;
        reply
    }
    async fn head(&self) -> Result<Cursor, StoreError> {
        self.inner.head().await
    }
    async fn retained_from(&self) -> Result<Cursor, StoreError> {
        self.inner.retained_from().await
    }
    async fn claim_expired(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.inner.claim_expired(now).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn register_request(
        &self,
        request: &ConsentRequest,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<RegisterOutcome, StoreError> {
        self.inner.register_request(request, now, policy).await
    }
    async fn request_budget(
        &self,
        pair: &Pair,
        now: DateTime<Utc>,
        policy: &RequestPolicy,
    ) -> Result<Budget, StoreError> {
        self.inner.request_budget(pair, now, policy).await
    }
    async fn webhook_create(
        &self,
        subscription: &Subscription,
        cursor: &Cursor,
    ) -> Result<(), StoreError> {
        self.inner.webhook_create(subscription, cursor).await
    }
    async fn webhook_list(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.inner.webhook_list().await
    }
    async fn webhook_get(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        self.inner.webhook_get(id).await
    }
    async fn webhook_replace(&self, record: &WebhookRecord) -> Result<bool, StoreError> {
        self.inner.webhook_replace(record).await
    }
    async fn webhook_lease(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease, StoreError> {
        self.inner.webhook_lease(id, holder, ttl, now).await
    }
    async fn webhook_progress(
        &self,
        id: &str,
        token: u64,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        self.inner.webhook_progress(id, token, progress).await
    }
    async fn webhook_release(&self, id: &str, holder: &str, token: u64) -> Result<(), StoreError> {
        self.inner.webhook_release(id, holder, token).await
    }
    async fn callable_page(
        &self,
        business: &PhoneNumber,
        from: &CallablePosition,
        limit: usize,
        keep: Keep<'_>,
    ) -> Result<CallablePage, StoreError> {
        self.hooks.before(Read::CallablePage).await?;
        self.inner.callable_page(business, from, limit, keep).await
    }
}
