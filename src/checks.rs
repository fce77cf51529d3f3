//! Answering "may we call this customer now?": the one implementation behind every front end
//! that asks it (gRPC `CheckCallPermission` / `CheckCallPermissions`, and the HTTP port's
//! `POST /v1/check` / `POST /v1/check-batch`), so their answers and errors cannot drift.
//!
//! A check parses both numbers (the field a bad one came from is named), keeps a client
//! limited to some businesses to those businesses, reads the pair's current decision and
//! evaluates it at the clock's "now". A batch is answered per pair in request order: a bad
//! number or another business's pair is that pair's error, and a store that fails only some
//! pairs (one Redis Cluster master) fails only those. Every answered check is counted in
//! `callgate_checks_total` here, once.
//!
//! What it returns is domain values ([`Checked`]) and [`CheckError`]; each front end turns
//! them into its own wire format and status at its edge.
//!
//! Issue 16: with the replica's [`CheckCache`], a check whose pair is cached in a fresh shard
//! is answered from memory (still evaluated at the clock's now); a miss reads the store (one
//! `current_each` for a batch's misses) and fills the cache with the stamp taken *before*
//! the read. A check may ask for an answer at least as fresh as a token ([`Freshness`]:
//! `at_least_as_fresh`), parsed here for both front ends ([`Checker::freshness`]).

use std::sync::Arc;

use crate::check_cache::{CheckCache, Freshness, Lookup, Stamp};
use crate::clock::Clock;
use crate::domain::{Decision, Pair, PhoneError, PhoneNumber, Verdict, evaluate};
use crate::grpc_api::auth::Caller;
use crate::metrics::{CheckAnswer, Metrics, RefusalReason, StoreOp};
use crate::store::{ConsentStore, StoreError};

/// Why one check was not answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckError {
    /// `field` is not a phone number.
    #[error("{field}: {source}")]
    Phone {
        field: &'static str,
        source: PhoneError,
    },
    /// The caller may not see this business's consent.
    #[error("{field}: this client may not see business {business}")]
    OtherBusiness {
        field: &'static str,
        business: PhoneNumber,
    },
    /// The store did not answer for this pair: never an answer, always an error.
    #[error(transparent)]
    Store(StoreError),
    /// Issue 16: `field` is not a consistency token.
    #[error("{field}: {message}")]
    Token {
        field: &'static str,
        message: String,
    },
}

impl CheckError {
    /// The canonical status code (the gRPC code; the JSON API uses the same numbers for a
    /// batch item's error).
    pub fn code(&self) -> tonic::Code {
        match self {
            CheckError::Phone { .. } => tonic::Code::InvalidArgument,
            CheckError::OtherBusiness { .. } => tonic::Code::PermissionDenied,
            CheckError::Store(_) => tonic::Code::Unavailable,
            CheckError::Token { .. } => tonic::Code::InvalidArgument,
        }
    }

    /// How it counts in `callgate_checks_total`; `None` for a refusal (counted in
    /// `callgate_api_refusals_total` instead).
    pub fn answer(&self) -> Option<CheckAnswer> {
        match self {
            CheckError::Phone { .. } => Some(CheckAnswer::InvalidArgument),
            CheckError::OtherBusiness { .. } => None,
            CheckError::Store(_) => Some(CheckAnswer::Unavailable),
            CheckError::Token { .. } => Some(CheckAnswer::InvalidArgument),
        }
    }

    /// The field at fault, for errors that have one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            CheckError::Phone { field, .. }
            | CheckError::OtherBusiness { field, .. }
            | CheckError::Token { field, .. } => Some(field),
            CheckError::Store(_) => None,
        }
    }
}

/// An answered check: the pair (normalised) and the verdict at the clock's "now" (its
/// decision shared with the check cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub pair: Pair,
    pub verdict: Verdict<Arc<Decision>>,
}

/// One check as a front end received it: the two numbers as spelled by the client.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub business_number: &'a str,
    pub customer_number: &'a str,
}

/// Parses a number the client gave in `field`.
pub fn phone(field: &'static str, raw: &str) -> Result<PhoneNumber, CheckError> {
    PhoneNumber::parse(raw).map_err(|source| CheckError::Phone { field, source })
}

/// Answers checks against a store. Cheap to share (`Arc`) between front ends.
pub struct Checker {
    store: Arc<dyn ConsentStore>,
    /// The "now" every check is evaluated at.
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Issue 16: the replica's check cache (`None`: every check reads the store).
    cache: Option<Arc<CheckCache>>,
}

impl Checker {
    pub fn new(store: Arc<dyn ConsentStore>, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Checker {
            store,
            clock,
            metrics,
            cache: None,
        }
    }

    /// Issue 16: answers from `cache` when it can (the one every front end of this replica
    /// shares, fed by the fan-out tailer).
    pub fn with_cache(mut self, cache: Option<Arc<CheckCache>>) -> Self {
        self.cache = cache;
        self
    }

    /// Issue 16: what this replica just recorded (`decisions` and the store's answer for
    /// each), so its own checks see it before the tailer brings the events
    /// ([`CheckCache::wrote`]).
    pub fn wrote(&self, decisions: &[Decision], recorded: &[crate::store::Recorded]) {
        let Some(cache) = &self.cache else { return };
        for (d, r) in decisions.iter().zip(recorded) {
            if r.outcome != crate::store::RecordOutcome::Applied {
                continue;
            }
            let shard = self.store.shard_of(&d.pair);
            cache.wrote(&d.pair, shard, r.logged.map(|(_, id)| id));
        }
    }

    /// Issue 16: the `at_least_as_fresh` token a client gave in `field` (empty: the default
    /// bound). Unparseable: INVALID_ARGUMENT naming the field, never ignored.
    pub fn freshness(&self, field: &'static str, raw: &str) -> Result<Freshness, CheckError> {
        Freshness::parse(raw, self.store.shards())
            .map_err(|message| CheckError::Token { field, message })
    }

    /// Refuses (and counts) a question about a business `caller` may not see.
    pub fn admit_business(
        &self,
        caller: &Caller,
        field: &'static str,
        business: &PhoneNumber,
    ) -> Result<(), CheckError> {
        if caller.may_see(business) {
            return Ok(());
        }
        self.metrics
            .api_refusal(caller.name(), RefusalReason::OtherBusiness);
        tracing::info!(
            client = caller.name(),
            reason = RefusalReason::OtherBusiness.label(),
            "api call refused"
        );
        Err(CheckError::OtherBusiness {
            field,
            business: business.clone(),
        })
    }

    /// The pair a query names, if both numbers parse and `caller` may see the business.
    pub fn pair(&self, caller: &Caller, query: Query<'_>) -> Result<Pair, CheckError> {
        let pair = Pair::new(
            phone("business_number", query.business_number)?,
            phone("customer_number", query.customer_number)?,
        );
        self.admit_business(caller, "business_number", &pair.business)?;
        Ok(pair)
    }

    /// One check, at least as fresh as `need`, counted in `callgate_checks_total` (a
    /// refusal is counted as a refusal).
    pub async fn check(
        &self,
        caller: &Caller,
        query: Query<'_>,
        need: &Freshness,
    ) -> Result<Checked, CheckError> {
        let result = self.answer_one(caller, query, need).await;
        if let Some(answer) = Self::counted_as(&result) {
            self.metrics.check(answer);
        }
        result
    }

    async fn answer_one(
        &self,
        caller: &Caller,
        query: Query<'_>,
        need: &Freshness,
    ) -> Result<Checked, CheckError> {
        let pair = self.pair(caller, query)?;
        let current = self.current(&pair, need).await.map_err(|e| {
            self.metrics.store_error(StoreOp::Check);
            CheckError::Store(e)
        })?;
        let verdict = evaluate(current, self.clock.now());
        Ok(Checked { pair, verdict })
    }

    /// The pair's current decision: from the cache when it may answer, else from the store
    /// (filling the cache with the stamp taken before the read).
    async fn current(
        &self,
        pair: &Pair,
        need: &Freshness,
    ) -> Result<Option<Arc<Decision>>, StoreError> {
        let Some(cache) = &self.cache else {
            return Ok(self.store.current(pair).await?.map(Arc::new));
        };
        let shard = self.store.shard_of(pair);
        if let Lookup::Hit(d) = cache.lookup(pair, shard, need) {
            return Ok(d);
        }
        let stamp = cache.stamp(shard);
        let current = self.store.current(pair).await?.map(Arc::new);
        cache.fill(pair, stamp, current.clone());
        Ok(current)
    }

    /// The current decisions of `pairs` (in order): the cache's hits, and one
    /// `current_each` for the misses.
    async fn current_each(
        &self,
        pairs: &[Pair],
        need: &Freshness,
    ) -> Vec<Result<Option<Arc<Decision>>, StoreError>> {
        let Some(cache) = &self.cache else {
            return self
                .store
                .current_each(pairs)
                .await
                .into_iter()
                .map(|r| r.map(|d| d.map(Arc::new)))
                .collect();
        };
        let mut out: Vec<Option<Result<Option<Arc<Decision>>, StoreError>>> =
            Vec::with_capacity(pairs.len());
        // Misses: their index in `pairs` and the stamp of their shard before the read.
        let mut misses: Vec<(usize, Stamp)> = Vec::new();
        for (i, pair) in pairs.iter().enumerate() {
            let shard = self.store.shard_of(pair);
            match cache.lookup(pair, shard, need) {
                Lookup::Hit(d) => out.push(Some(Ok(d))),
                Lookup::Read(_) => {
                    out.push(None);
                    misses.push((i, cache.stamp(shard)));
                }
            }
        }
        if !misses.is_empty() {
            let asked: Vec<Pair> = misses.iter().map(|(i, _)| pairs[*i].clone()).collect();
            let read = self.store.current_each(&asked).await;
            for ((i, stamp), r) in misses.into_iter().zip(read) {
                let r = r.map(|d| d.map(Arc::new));
                if let Ok(d) = &r {
                    cache.fill(&pairs[i], stamp, d.clone());
                }
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(StoreError::Unavailable(
                        "store gave no answer for this pair".into(),
                    ))
                })
            })
            .collect()
    }

    /// How a check's result counts in `callgate_checks_total`.
    pub fn counted_as(result: &Result<Checked, CheckError>) -> Option<CheckAnswer> {
        match result {
            Ok(c) => Some(CheckAnswer::State(c.verdict.state)),
            Err(e) => e.answer(),
        }
    }

    /// Many checks with one store read ([`ConsentStore::current_each`]), answered per query in
    /// order and each counted. `Err` (nothing counted but the store error) when the store
    /// answered none of the pairs it was asked about: the caller decides whether that fails
    /// the whole call or becomes each pair's error.
    pub async fn check_each(
        &self,
        caller: &Caller,
        queries: &[Query<'_>],
        need: &Freshness,
    ) -> Result<Vec<Result<Checked, CheckError>>, StoreError> {
        let parsed: Vec<Result<Pair, CheckError>> =
            queries.iter().map(|q| self.pair(caller, *q)).collect();
        let valid: Vec<Pair> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let currents = if valid.is_empty() {
            Vec::new()
        } else {
            self.current_each(&valid, need).await
        };
        // Nothing answered: the store is down.
        if let Some(Err(e)) = currents.first()
            && currents.iter().all(Result::is_err)
        {
            self.metrics.store_error(StoreOp::Check);
            return Err(e.clone());
        }
        let mut currents = currents.into_iter();
        let now = self.clock.now();
        let results = parsed
            .into_iter()
            .map(|p| {
                let result = p.and_then(|pair| match currents.next() {
                    Some(Ok(current)) => Ok(Checked {
                        verdict: evaluate(current, now),
                        pair,
                    }),
                    // This pair's part of the store failed (on a cluster, one master): its own
                    // UNAVAILABLE, never an answer.
                    Some(Err(e)) => {
                        self.metrics.store_error(StoreOp::Check);
                        Err(CheckError::Store(e))
                    }
                    None => Err(CheckError::Store(StoreError::Unavailable(
                        "store gave no answer for this pair".into(),
                    ))),
                });
                if let Some(answer) = Self::counted_as(&result) {
                    self.metrics.check(answer);
                }
                result
            })
            .collect();
        Ok(results)
    }

    /// Counts `n` checks answered UNAVAILABLE without an answer from the store (a batch the
    /// store failed as a whole).
    pub fn count_unavailable(&self, n: usize) {
        for _ in 0..n {
            self.metrics.check(CheckAnswer::Unavailable);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ConsentState;
    use crate::store::memory::{MemoryConfig, MemoryStore};

    fn checker() -> Checker {
        Checker::new(
            Arc::new(MemoryStore::new(MemoryConfig::default())),
            Clock::System,
            Arc::new(Metrics::default()),
        )
    }

    fn q<'a>(business_number: &'a str, customer_number: &'a str) -> Query<'a> {
        Query {
            business_number,
            customer_number,
        }
    }

    #[tokio::test]
    async fn a_batch_answers_in_order_with_bad_numbers_in_place() {
        let c = checker();
        let caller = Caller::unrestricted();
        let results = c
            .check_each(
                &caller,
                &[
                    q("+919000000000", "+919876543210"),
                    q("+919000000000", "nope"),
                    q("0123", "+919876543210"),
                    q("919000000000", "00919876543211"),
                ],
                &Freshness::Bounded,
            )
            .await
            .unwrap();
        let summary: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(c) => format!("{} {:?}", c.pair.customer, c.verdict.state),
                Err(e) => format!("{:?} {}", e.code(), e.field().unwrap_or("-")),
            })
            .collect();
        assert_eq!(
            summary,
            [
                format!("+919876543210 {:?}", ConsentState::NoConsent),
                "InvalidArgument customer_number".to_owned(),
                "InvalidArgument business_number".to_owned(),
                format!("+919876543211 {:?}", ConsentState::NoConsent),
            ]
        );
    }

    #[tokio::test]
    async fn a_batch_of_only_bad_numbers_asks_the_store_nothing_and_is_answered() {
        let results = checker()
            .check_each(
                &Caller::unrestricted(),
                &[q("x", "y"), q("", "")],
                &Freshness::Bounded,
            )
            .await
            .unwrap();
        assert!(results.iter().all(|r| matches!(
            r,
            Err(CheckError::Phone {
                field: "business_number",
                ..
            })
        )));
    }
}
