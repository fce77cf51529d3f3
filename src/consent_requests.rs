//! issue 13 (attribution): registering consent requests and asking the request budget. The
//! one code path behind `RegisterConsentRequest` / `CanRequestConsent` (gRPC) and
//! `POST /v1/consent-requests` (HTTP): each edge parses its wire format into a
//! [`ConsentRequest`], this module validates it against the app's clock, and the store applies
//! the budget and stores it in one atomic step. Errors are a [`RegisterError`], which each
//! edge maps to its status in one place.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::config::AttributionConfig;
use crate::domain::{Budget, ConsentRequest, Pair, RequestFieldError};
use crate::store::{ConsentStore, RegisterOutcome, RequestPolicy, StoreError};

/// What a registration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// False for a retry of a registration stored before (nothing changed).
    pub new: bool,
    /// Replies recorded before the registration that it attributed.
    pub attributed: usize,
    /// The pair's budget after it.
    pub budget: Budget,
}

/// Why a registration was refused. Nothing is stored for any of them.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Field(#[from] RequestFieldError),
    #[error(
        "request budget exhausted for this customer: the next request may be sent at {}",
        .0.next_allowed_at.to_rfc3339()
    )]
    OverBudget(Budget),
    #[error(
        "request_message_id: already registered for this customer with other fields; a \
         registration is never overwritten"
    )]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Registers consent requests and answers the request budget.
pub struct ConsentRequests {
    store: Arc<dyn ConsentStore>,
    clock: Clock,
    policy: RequestPolicy,
    /// How far in the future a `sent_at` may be (the senders' clock tolerance).
    max_skew: Duration,
}

impl ConsentRequests {
    pub fn new(
        store: Arc<dyn ConsentStore>,
        clock: Clock,
        config: &AttributionConfig,
        max_skew: Duration,
    ) -> Self {
        ConsentRequests {
            store,
            clock,
            policy: RequestPolicy::new(config.request_limits.clone(), config.request_retention),
            max_skew,
        }
    }

    pub fn policy(&self) -> &RequestPolicy {
        &self.policy
    }

    /// Validates and registers `request`.
    pub async fn register(&self, request: &ConsentRequest) -> Result<Registered, RegisterError> {
        let now = self.clock.now();
        request.validate(now, self.max_skew)?;
        let oldest = now - chrono::Duration::milliseconds(self.policy.retention_ms());
        if request.sent_at < oldest {
            return Err(RequestFieldError {
                field: "sent_at".into(),
                problem: format!(
                    "is older than the request retention ({} s): such a request no longer \
                     counts in the budget nor attributes a reply",
                    self.policy.retention.as_secs()
                ),
            }
            .into());
        }
        let (new, attributed) = match self
            .store
            .register_request(request, now, &self.policy)
            .await?
        {
            RegisterOutcome::Registered { attributed } => (true, attributed),
            RegisterOutcome::Duplicate => (false, 0),
            RegisterOutcome::OverBudget(budget) => return Err(RegisterError::OverBudget(budget)),
            RegisterOutcome::Conflict => return Err(RegisterError::Conflict),
        };
        let budget = self.budget(&request.pair).await?;
        Ok(Registered {
            new,
            attributed,
            budget,
        })
    }

    /// The pair's request budget now.
    pub async fn budget(&self, pair: &Pair) -> Result<Budget, StoreError> {
        self.store
            .request_budget(pair, self.clock.now(), &self.policy)
            .await
    }
}
