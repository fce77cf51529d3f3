//! The gRPC API (`callgate.v1.ConsentAuthority`): requests → domain questions → responses.
//!
//! Errors map to a gRPC `Status` in one place ([`ApiError`]). A store failure is always
//! `UNAVAILABLE`: a dialer can never read an error as "allowed".
//!
//! Every call has been admitted by [`auth::Guard`] (key and scope) before a handler runs; the
//! handlers then keep a client limited to some businesses to those businesses
//! ([`auth::Caller::may_see`]), before the store is read.
//!
//! The checks themselves (parse, business scoping, store read, verdict, counting) are
//! [`crate::checks::Checker`]'s, shared with the HTTP port's JSON checks; this module only
//! turns requests into its queries and its answers into protobuf.

pub mod auth;
pub(crate) mod convert;
mod trace;
mod webhooks;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub use convert::{from_timestamp, state_name, timestamp};
pub use trace::Traced;

use crate::calling_list::{CallingLists, ListError, ListQuery};
use crate::checks::{self, CheckError, Checker, Query};
use crate::clock::Clock;
use crate::config::AttributionConfig;
use crate::consent_requests::{ConsentRequests, RegisterError};
use crate::domain::{
    AttributionFilter, ConsentRequest, Pair, PhoneError, PhoneNumber, UnattributedPolicy,
};
use crate::export;
use crate::fanout::{Filter, Hub, Item, Start, Subscription, SubscriptionError};
use crate::metrics::{CheckAnswer, CheckRpc, Metrics, StoreOp};
use crate::pb::{self, consent_authority_server::ConsentAuthority};
use crate::store::{ConsentStore, Cursor, CursorError, RecordsRange, StoreError, TimeField};
use auth::Caller;
use futures_util::StreamExt;

/// Most pairs one CheckCallPermissions call may carry.
pub const MAX_BATCH: usize = 1000;
/// GetConsentHistory entries per page when the client asks for none.
pub const DEFAULT_HISTORY_PAGE: usize = 100;
/// Most GetConsentHistory entries per page (larger requests get this many). With every
/// evidence field bounded at the edge, a full page stays far below gRPC's 4 MiB default.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// Messages queued per StreamGrants client before its pump waits (memory bound per stream,
/// besides HTTP/2's own send buffer, [`crate::grpc_port::STREAM_SEND_BUFFER`]).
const STREAM_BUFFER: usize = 16;
/// How far ahead of the server's clock a `since` may be (clients' clocks drift a little).
const MAX_SINCE_AHEAD: chrono::TimeDelta = chrono::TimeDelta::seconds(5);
/// Trailer metadata key of the cursor a client resumes from after a resumable end.
pub const RESUME_AFTER_KEY: &str = "callgate-resume-after";

/// Limits of StreamGrants on one replica.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Most subscriptions open at once; more are refused with `RESOURCE_EXHAUSTED`.
    pub max_subscriptions: usize,
    /// A client that takes no message for this long is ended with a resumable `UNAVAILABLE`.
    pub stall_timeout: Duration,
}

/// Everything that can fail in an RPC, mapped to a `Status` in one `match`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{field}: {source}")]
    Phone {
        field: &'static str,
        source: PhoneError,
    },
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller may not see this business's consent.
    #[error("{field}: this client may not see business {business}")]
    OtherBusiness {
        field: &'static str,
        business: PhoneNumber,
    },
    /// No admitted caller on the request (the guard did not run): refuse, never answer.
    #[error("call not authenticated")]
    NoCaller,
    /// issue 13: a refused registration.
    #[error(transparent)]
    Register(RegisterError),
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Store(s) => ApiError::Store(s),
            other => ApiError::Register(other),
        }
    }
}

impl ApiError {
    /// How a failed check is counted in `callgate_checks_total` (a refusal is counted in
    /// `callgate_api_refusals_total` instead).
    fn check_answer(&self) -> Option<CheckAnswer> {
        match self {
            ApiError::Store(StoreError::Cursor(_)) => Some(CheckAnswer::InvalidArgument),
            ApiError::Store(_) => Some(CheckAnswer::Unavailable),
            ApiError::OtherBusiness { .. } | ApiError::NoCaller => None,
            _ => Some(CheckAnswer::InvalidArgument),
        }
    }
}

impl From<CheckError> for ApiError {
    fn from(e: CheckError) -> Self {
        match e {
            CheckError::Phone { field, source } => ApiError::Phone { field, source },
            CheckError::OtherBusiness { field, business } => {
                ApiError::OtherBusiness { field, business }
            }
            CheckError::Store(e) => ApiError::Store(e),
            e @ CheckError::Token { .. } => ApiError::InvalidArgument(e.to_string()),
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::Phone { .. } | ApiError::InvalidArgument(_) => {
                Status::invalid_argument(e.to_string())
            }
            ApiError::Store(StoreError::Cursor(
                CursorError::OutOfRange { .. } | CursorError::Outdated,
            )) => Status::out_of_range(e.to_string()),
            ApiError::Store(StoreError::Cursor(_)) => Status::invalid_argument(e.to_string()),
            ApiError::Store(_) => {
                tracing::warn!(error = %e, "store error answered as UNAVAILABLE");
                Status::unavailable(e.to_string())
            }
            ApiError::OtherBusiness { .. } => Status::permission_denied(e.to_string()),
            ApiError::NoCaller => Status::unauthenticated(e.to_string()),
            ApiError::Register(RegisterError::Field(_)) => Status::invalid_argument(e.to_string()),
            ApiError::Register(RegisterError::Conflict) => Status::already_exists(e.to_string()),
            // The budget's answer in the details (a CanRequestConsentResponse) and its
            // instant in a trailer, so a client need not parse the message.
            ApiError::Register(RegisterError::OverBudget(budget)) => {
                let details = prost::Message::encode_to_vec(&convert::budget(None, budget));
                let mut status = Status::with_details(
                    tonic::Code::ResourceExhausted,
                    e.to_string(),
                    details.into(),
                );
                if let Ok(v) = budget.next_allowed_at.to_rfc3339().parse() {
                    status.metadata_mut().insert(NEXT_ALLOWED_AT_KEY, v);
                }
                status
            }
            ApiError::Register(RegisterError::Store(_)) => Status::unavailable(e.to_string()),
        }
    }
}

/// issue 13: trailer of a RegisterConsentRequest refused for the budget: when the next
/// request fits (RFC 3339).
pub const NEXT_ALLOWED_AT_KEY: &str = "callgate-next-allowed-at";

/// issue 13: StreamGrants' `teams`, `campaigns` and `labels` as a filter.
fn attribution_filter(req: &pb::StreamGrantsRequest) -> Result<AttributionFilter, ApiError> {
    const MAX_FILTER_VALUES: usize = 100;
    let n = req.teams.len() + req.campaigns.len() + req.labels.len();
    if n > MAX_FILTER_VALUES {
        return Err(ApiError::InvalidArgument(format!(
            "teams, campaigns, labels: {n} values; at most {MAX_FILTER_VALUES} together"
        )));
    }
    Ok(AttributionFilter {
        teams: req.teams.clone(),
        campaigns: req.campaigns.clone(),
        labels: req
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// issue 13: a RegisterConsentRequest as the domain's registration (fields checked by
/// [`ConsentRequest::validate`] when registered).
fn consent_request(req: pb::RegisterConsentRequestRequest) -> Result<ConsentRequest, ApiError> {
    let pair = pair(&req.business_number, &req.customer_number)?;
    let sent_at = req
        .sent_at
        .as_ref()
        .ok_or_else(|| ApiError::InvalidArgument("sent_at: is required".into()))?;
    let sent_at = from_timestamp(sent_at)
        .map(crate::domain::to_millis_precision)
        .ok_or_else(|| ApiError::InvalidArgument("sent_at: is not a valid time".into()))?;
    Ok(ConsentRequest {
        pair,
        request_message_id: req.request_message_id,
        team: req.team,
        campaign: req.campaign,
        labels: req.labels.into_iter().collect(),
        sent_at,
        customer_name: Some(req.customer_name).filter(|n| !n.is_empty()),
    })
}

fn phone(field: &'static str, raw: &str) -> Result<PhoneNumber, ApiError> {
    Ok(checks::phone(field, raw)?)
}

/// A check request as the shared [`Checker`] takes it.
fn query(req: &pb::CheckCallPermissionRequest) -> Query<'_> {
    Query {
        business_number: &req.business_number,
        customer_number: &req.customer_number,
    }
}

fn pair(business: &str, customer: &str) -> Result<Pair, ApiError> {
    Ok(Pair::new(
        phone("business_number", business)?,
        phone("customer_number", customer)?,
    ))
}

/// The caller the guard admitted.
fn caller<T>(request: &Request<T>) -> Result<Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::NoCaller)
}

/// The `ConsentAuthority` service.
pub struct Api {
    store: Arc<dyn ConsentStore>,
    /// The "now" of checks and of StreamGrants' `since` bound.
    clock: Clock,
    hub: Hub,
    metrics: Arc<Metrics>,
    limits: StreamLimits,
    /// One permit per open StreamGrants subscription.
    subscriptions: Arc<Semaphore>,
    /// Issue 17: outbound webhooks (the admin RPCs); `None`: those RPCs are UNIMPLEMENTED.
    outbound: Option<Arc<crate::outbound::Outbound>>,
    /// Answers the checks (the HTTP port's JSON checks use the same code, and, issue 16, the
    /// same `Checker` with the same check cache).
    checker: Arc<Checker>,
    /// issue 13: consent requests and the request budget.
    requests: Arc<ConsentRequests>,
    /// issue 13: whether StreamGrants' team filters let unattributed grants through.
    unattributed: UnattributedPolicy,
    /// Issue 13: ListCallable's pages.
    lists: CallingLists,
}

impl Api {
    pub fn new(
        store: Arc<dyn ConsentStore>,
        hub: Hub,
        metrics: Arc<Metrics>,
        limits: StreamLimits,
        clock: Clock,
    ) -> Self {
        Api {
            checker: Arc::new(Checker::new(store.clone(), clock, metrics.clone())),
            requests: Arc::new(ConsentRequests::new(
                store.clone(),
                clock,
                &AttributionConfig::default(),
                crate::config::DEFAULT_MAX_CLOCK_SKEW,
            )),
            unattributed: UnattributedPolicy::default(),
            lists: CallingLists::new(store.clone(), Default::default()),
            store,
            clock,
            hub,
            metrics,
            subscriptions: Arc::new(Semaphore::new(limits.max_subscriptions)),
            limits,
            outbound: None,
        }
    }

    /// issue 13: the consent requests and unattributed-reply policy in force (the defaults
    /// until this is called).
    pub fn with_attribution(
        mut self,
        requests: Arc<ConsentRequests>,
        unattributed: UnattributedPolicy,
    ) -> Self {
        self.requests = requests;
        self.unattributed = unattributed;
        self
    }

    /// Issue 17: serves the outbound webhook admin RPCs with `outbound`.
    pub fn with_outbound(mut self, outbound: Arc<crate::outbound::Outbound>) -> Self {
        self.outbound = Some(outbound);
        self
    }

    /// Issue 13: ListCallable answers from `lists` (built with the configured unattributed
    /// policy; without this call, the default policy).
    pub fn with_calling_lists(mut self, lists: CallingLists) -> Self {
        self.lists = lists;
        self
    }

    /// Issue 16: answers checks with `checker` (the one the HTTP port shares, with the
    /// replica's check cache) instead of an uncached one of its own.
    pub fn with_checker(mut self, checker: Arc<Checker>) -> Self {
        self.checker = checker;
        self
    }

    /// Counts a store failure of `op` and passes the error on.
    fn store_failed(&self, op: StoreOp) -> impl Fn(StoreError) -> ApiError + '_ {
        move |e| {
            if !matches!(e, StoreError::Cursor(_)) {
                self.metrics.store_error(op);
            }
            ApiError::Store(e)
        }
    }

    /// Refuses (and counts) a question about a business `caller` may not see.
    fn scope(
        &self,
        caller: &Caller,
        field: &'static str,
        business: &PhoneNumber,
    ) -> Result<(), ApiError> {
        Ok(self.checker.admit_business(caller, field, business)?)
    }

    async fn check_one(
        &self,
        caller: &Caller,
        req: &pb::CheckCallPermissionRequest,
    ) -> Result<(pb::CheckCallPermissionResponse, CheckAnswer), ApiError> {
        let need = match self
            .checker
            .freshness("at_least_as_fresh", &req.at_least_as_fresh)
        {
            Ok(need) => need,
            Err(e) => {
                self.metrics.check(CheckAnswer::InvalidArgument);
                return Err(e.into());
            }
        };
        let checked = self.checker.check(caller, query(req), &need).await?;
        let answer = CheckAnswer::State(checked.verdict.state);
        Ok((
            convert::check_response(&checked.pair, checked.verdict, req.include_evidence),
            answer,
        ))
    }

    async fn check_many(
        &self,
        caller: &Caller,
        req: &pb::CheckCallPermissionsRequest,
    ) -> Result<pb::CheckCallPermissionsResponse, ApiError> {
        let checks = &req.checks;
        if checks.len() > MAX_BATCH {
            return Err(ApiError::InvalidArgument(format!(
                "checks: {} pairs; at most {MAX_BATCH} per call",
                checks.len()
            )));
        }
        // issue 16: the batch's freshness and evidence flag apply to every pair; an item's
        // own would be ambiguous, so it is refused rather than ignored.
        if let Some(i) = checks
            .iter()
            .position(|c| !c.at_least_as_fresh.is_empty() || c.include_evidence)
        {
            return Err(ApiError::InvalidArgument(format!(
                "checks[{i}]: at_least_as_fresh and include_evidence are set on the batch \
                 request (CheckCallPermissionsRequest), not on its checks"
            )));
        }
        let need = self
            .checker
            .freshness("at_least_as_fresh", &req.at_least_as_fresh)?;
        let queries: Vec<Query<'_>> = checks.iter().map(query).collect();
        // Nothing answered: the store is down; the whole call is UNAVAILABLE.
        let results = self.checker.check_each(caller, &queries, &need).await?;
        let results = results
            .into_iter()
            .map(|r| pb::CheckResult {
                result: Some(match r {
                    Ok(c) => pb::check_result::Result::Answer(convert::check_response(
                        &c.pair,
                        c.verdict,
                        req.include_evidence,
                    )),
                    Err(e) => pb::check_result::Result::Error(pb::CheckError {
                        code: e.code() as i32,
                        message: e.to_string(),
                    }),
                }),
            })
            .collect();
        Ok(pb::CheckCallPermissionsResponse { results })
    }

    pub fn into_server(self) -> pb::consent_authority_server::ConsentAuthorityServer<Api> {
        pb::consent_authority_server::ConsentAuthorityServer::new(self)
    }

    fn start(&self, req: &pb::StreamGrantsRequest, now: DateTime<Utc>) -> Result<Start, ApiError> {
        if !req.resume_after.is_empty() {
            let c =
                Cursor::parse(&req.resume_after, self.hub.shards()).map_err(StoreError::from)?;
            return Ok(Start::After(c));
        }
        match &req.since {
            None => Ok(Start::Head),
            Some(ts) => {
                let since = from_timestamp(ts)
                    .ok_or_else(|| ApiError::InvalidArgument("since: invalid timestamp".into()))?;
                if since > now + MAX_SINCE_AHEAD {
                    return Err(ApiError::InvalidArgument(format!(
                        "since: {} is in the future (server time {}); events cannot be \
                         replayed from a time that has not come",
                        since.to_rfc3339(),
                        now.to_rfc3339()
                    )));
                }
                Ok(Start::Since(since))
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ConsentEvent, Status>> + Send>>;
/// Issue 14: the `ExportDecisions` stream.
type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportedDecision, Status>> + Send>>;

#[tonic::async_trait]
impl ConsentAuthority for Api {
    async fn register_consent_request(
        &self,
        request: Request<pb::RegisterConsentRequestRequest>,
    ) -> Result<Response<pb::RegisterConsentRequestResponse>, Status> {
        let caller = caller(&request)?;
        let request = consent_request(request.into_inner())?;
        self.scope(&caller, "business_number", &request.pair.business)?;
        let registered = self.requests.register(&request).await.map_err(|e| {
            if let RegisterError::Store(s) = &e {
                self.metrics.store_error(StoreOp::Record);
                tracing::warn!(error = %s, "registration not stored");
            }
            ApiError::from(e)
        })?;
        Ok(Response::new(convert::registered(
            &request.pair,
            &registered,
        )))
    }

    async fn can_request_consent(
        &self,
        request: Request<pb::CanRequestConsentRequest>,
    ) -> Result<Response<pb::CanRequestConsentResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let pair = pair(&req.business_number, &req.customer_number)?;
        self.scope(&caller, "business_number", &pair.business)?;
        let budget = self
            .requests
            .budget(&pair)
            .await
            .map_err(self.store_failed(StoreOp::Check))?;
        Ok(Response::new(convert::budget(Some(&pair), &budget)))
    }

    async fn check_call_permission(
        &self,
        request: Request<pb::CheckCallPermissionRequest>,
    ) -> Result<Response<pb::CheckCallPermissionResponse>, Status> {
        let started = Instant::now();
        let caller = caller(&request)?;
        let answer = self.check_one(&caller, request.get_ref()).await;
        let label = match &answer {
            Ok((_, label)) => Some(*label),
            Err(e) => e.check_answer(),
        };
        // The checker counted the answer; the latency is the RPC's.
        match label {
            Some(label) => self.metrics.single_check_latency(label, started.elapsed()),
            // A refusal (no caller, another business) is counted as a refusal, not an answer.
            None => self
                .metrics
                .check_latency(CheckRpc::Single, started.elapsed()),
        }
        Ok(Response::new(answer?.0))
    }

    async fn check_call_permissions(
        &self,
        request: Request<pb::CheckCallPermissionsRequest>,
    ) -> Result<Response<pb::CheckCallPermissionsResponse>, Status> {
        let started = Instant::now();
        let caller = caller(&request)?;
        let answer = self.check_many(&caller, request.get_ref()).await;
        if let Some(answer) = answer.as_ref().err().and_then(ApiError::check_answer) {
            self.metrics.check(answer);
        }
        self.metrics
            .check_latency(CheckRpc::Batch, started.elapsed());
        Ok(Response::new(answer?))
    }

    type StreamGrantsStream = EventStream;

    async fn stream_grants(
        &self,
        request: Request<pb::StreamGrantsRequest>,
    ) -> Result<Response<Self::StreamGrantsStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let mut businesses = req
            .business_numbers
            .iter()
            .map(|b| phone("business_numbers", b))
            .collect::<Result<HashSet<_>, _>>()?;
        // A client limited to some businesses asks for some of them or, with no filter, gets
        // all of them: never an empty filter, which would mean every business.
        if let Some(allowed) = caller.businesses() {
            for b in &businesses {
                self.scope(&caller, "business_numbers", b)?;
            }
            if businesses.is_empty() {
                businesses = allowed.clone();
            }
        }
        let filter = Filter {
            businesses,
            include_denials: req.include_denials,
            include_expiries: req.include_expiries,
            attribution: attribution_filter(&req)?,
            unattributed: self.unattributed,
        };
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "{} StreamGrants subscriptions are open on this replica (its limit); retry \
                 later or on another replica",
                    self.limits.max_subscriptions
                ))
            })?;
        let start = self.start(&req, self.clock.now())?;
        let sub = self
            .hub
            .subscribe(start, filter)
            .await
            .map_err(self.store_failed(StoreOp::Events))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (end_tx, end) = oneshot::channel();
        tokio::spawn(pump(
            sub,
            tx,
            end_tx,
            self.metrics.clone(),
            self.limits.stall_timeout,
            permit,
        ));
        Ok(Response::new(Box::pin(Delivery {
            items: rx,
            end: Some(end),
        })))
    }

    type ExportDecisionsStream = ExportStream;

    /// Issue 14: one store page at a time ([`export::Pager`]); a page is read when the client
    /// has taken the previous one (tonic's stream is pulled), so memory stays one page.
    async fn export_decisions(
        &self,
        request: Request<pb::ExportDecisionsRequest>,
    ) -> Result<Response<Self::ExportDecisionsStream>, Status> {
        let caller = caller(&request)?;
        let range = self.export_range(&caller, request.get_ref())?;
        let mut pager = export::Pager::new(self.store.clone(), range);
        // The first page before the answer: a store that is down is UNAVAILABLE at once.
        let first = pager
            .next_page()
            .await
            .map_err(self.store_failed(StoreOp::History))?
            .unwrap_or_default();
        let metrics = self.metrics.clone();
        let pages = futures_util::stream::unfold(
            (Some(first), Some(pager), metrics),
            |(first, pager, metrics)| async move {
                let mut pager = pager?;
                let page = match first {
                    Some(page) => Ok(Some(page)),
                    None => pager.next_page().await,
                };
                match page {
                    Ok(Some(page)) => Some((Ok(page), (None, Some(pager), metrics))),
                    Ok(None) => None,
                    Err(e) => {
                        metrics.store_error(StoreOp::History);
                        // The error ends the stream: no pager after it.
                        Some((Err(Status::from(ApiError::Store(e))), (None, None, metrics)))
                    }
                }
            },
        );
        let messages = pages.flat_map(|page| {
            let items: Vec<Result<pb::ExportedDecision, Status>> = match page {
                Ok(items) => items
                    .iter()
                    .map(|r| Ok(convert::exported_decision(r)))
                    .collect(),
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(items)
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn get_consent_history(
        &self,
        request: Request<pb::GetConsentHistoryRequest>,
    ) -> Result<Response<pb::GetConsentHistoryResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.get_ref();
        let pair = pair(&req.business_number, &req.customer_number)?;
        self.scope(&caller, "business_number", &pair.business)?;
        let size = match req.page_size {
            0 => DEFAULT_HISTORY_PAGE,
            n if n < 0 => {
                return Err(ApiError::InvalidArgument(format!(
                    "page_size: {n}; must not be negative"
                ))
                .into());
            }
            n => (n as usize).min(MAX_HISTORY_PAGE),
        };
        let start = page_start(&req.page_token)?;
        // Arrival order: pages stay stable while new decisions are appended.
        let page = self
            .store
            .history_page(&pair, start, size)
            .await
            .map_err(self.store_failed(StoreOp::History))?;
        Ok(Response::new(pb::GetConsentHistoryResponse {
            business_number: pair.business.to_string(),
            customer_number: pair.customer.to_string(),
            entries: page
                .entries
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let link = page.links.get(i).copied().flatten();
                    convert::chained_history_entry(e, link.as_ref(), (start + i) as u64)
                })
                .collect(),
            next_page_token: page.next.map(page_token).unwrap_or_default(),
        }))
    }

    // issue 17: outbound webhook administration (handlers in `webhooks.rs`).

    async fn create_webhook_subscription(
        &self,
        request: Request<pb::CreateWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        self.create_webhook(request).await
    }

    async fn list_webhook_subscriptions(
        &self,
        request: Request<pb::ListWebhookSubscriptionsRequest>,
    ) -> Result<Response<pb::ListWebhookSubscriptionsResponse>, Status> {
        self.list_webhooks(request).await
    }

    async fn disable_webhook_subscription(
        &self,
        request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        self.set_webhook_state(request, false).await
    }

    async fn enable_webhook_subscription(
        &self,
        request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        self.set_webhook_state(request, true).await
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::WebhookSubscriptionId>,
    ) -> Result<Response<pb::CreateWebhookSubscriptionResponse>, Status> {
        self.rotate_webhook_secret(request).await
    }

    async fn replay_webhook_subscription(
        &self,
        request: Request<pb::ReplayWebhookSubscriptionRequest>,
    ) -> Result<Response<pb::WebhookSubscription>, Status> {
        self.replay_webhook(request).await
    }

    async fn list_callable(
        &self,
        request: Request<pb::ListCallableRequest>,
    ) -> Result<Response<pb::ListCallableResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.list_page(&caller, request.get_ref()).await?,
        ))
    }
}

impl Api {
    /// Issue 14: the range an `ExportDecisions` request asks for, if `caller` may see it.
    fn export_range(
        &self,
        caller: &Caller,
        req: &pb::ExportDecisionsRequest,
    ) -> Result<RecordsRange, ApiError> {
        let business = phone("business_number", &req.business_number)?;
        self.scope(caller, "business_number", &business)?;
        let time = |field: &'static str, t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .and_then(from_timestamp)
                .ok_or_else(|| ApiError::InvalidArgument(format!("{field}: required timestamp")))
        };
        let (from, to) = (time("from", &req.from)?, time("to", &req.to)?);
        if from > to {
            return Err(ApiError::InvalidArgument(format!(
                "to: {} is before from {}",
                to.to_rfc3339(),
                from.to_rfc3339()
            )));
        }
        let by = match pb::ExportTimeField::try_from(req.by) {
            Ok(pb::ExportTimeField::Event) => TimeField::Event,
            Ok(pb::ExportTimeField::Received | pb::ExportTimeField::Unspecified) => {
                TimeField::Received
            }
            Err(_) => return Err(ApiError::InvalidArgument(format!("by: {} unknown", req.by))),
        };
        Ok(RecordsRange {
            business,
            by,
            from,
            to,
        })
    }

    /// Issue 13: one page of a calling list.
    async fn list_page(
        &self,
        caller: &Caller,
        req: &pb::ListCallableRequest,
    ) -> Result<pb::ListCallableResponse, ApiError> {
        let query = ListQuery::parse(
            &req.business_number,
            &req.team,
            &req.campaign,
            req.page_size.into(),
            &req.page_token,
            self.lists.shards(),
        )
        .map_err(ApiError::from)?;
        self.scope(caller, "business_number", &query.business)?;
        let page = self
            .lists
            .page(&query, self.clock.now())
            .await
            .map_err(|e| match e {
                ListError::Store(e) => self.store_failed(StoreOp::List)(e),
                other => ApiError::from(other),
            })?;
        Ok(convert::callable_page(&page))
    }
}

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Business(source) => ApiError::Phone {
                field: "business_number",
                source,
            },
            ListError::OtherBusiness(business) => ApiError::OtherBusiness {
                field: "business_number",
                business,
            },
            ListError::Store(e) => ApiError::Store(e),
            other @ (ListError::NegativePageSize(_) | ListError::PageToken(_)) => {
                ApiError::InvalidArgument(other.to_string())
            }
        }
    }
}

/// The opaque page token for history position `start`.
fn page_token(start: usize) -> String {
    format!("h1.{start}")
}

/// The history position a page token stands for (0 for none).
fn page_start(token: &str) -> Result<usize, ApiError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix("h1.")
        // u32: no history is that long, and the position stays a valid Redis index.
        .and_then(|n| n.parse::<u32>().ok())
        .map(|n| n as usize)
        .ok_or_else(|| ApiError::InvalidArgument("page_token: not a token this API gave".into()))
}

/// Feeds one StreamGrants client from its subscription until the client leaves, stalls, or the
/// subscription ends.
///
/// The cursor a client is told to resume from is the cursor of the last message the pump
/// handed to the client's stream, never one covering messages still queued in the
/// subscription: the closing status travels behind every message already handed over, so a
/// client that reads it has received everything that cursor covers.
async fn pump(
    mut sub: Subscription,
    tx: mpsc::Sender<pb::ConsentEvent>,
    end: oneshot::Sender<Status>,
    metrics: Arc<Metrics>,
    stall: Duration,
    _permit: OwnedSemaphorePermit,
) {
    metrics.stream_opened();
    let _open = scopeguard(|| metrics.stream_closed());
    let mut sent = sub.resume_cursor().clone();
    let resumable = |why: String, cursor: &Cursor| {
        let mut status = Status::unavailable(format!("{why}; resume with resume_after = {cursor}"));
        if let Ok(value) = cursor.to_string().parse() {
            status.metadata_mut().insert(RESUME_AFTER_KEY, value);
        }
        status
    };
    loop {
        let next = tokio::select! {
            // The client went away: stop reading for it.
            _ = tx.closed() => return,
            n = sub.next() => n,
        };
        let (msg, cursor, is_event) = match next {
            Ok(Item::Event(e, cursor)) => (convert::event(&e, &cursor), cursor, true),
            Ok(Item::Checkpoint(cursor)) => (convert::checkpoint(&cursor), cursor, false),
            Err(SubscriptionError::ShuttingDown) => {
                let _ = end.send(resumable("server shutting down".into(), &sent));
                return;
            }
            Err(SubscriptionError::Store(e)) => {
                if !matches!(e, StoreError::Cursor(_)) {
                    metrics.store_error(StoreOp::Events);
                }
                let _ = end.send(Status::from(ApiError::Store(e)));
                return;
            }
        };
        let handed = tokio::select! {
            r = tokio::time::timeout(stall, tx.send(msg)) => r,
            _ = sub.stopping() => {
                let _ = end.send(resumable("server shutting down".into(), &sent));
                return;
            }
        };
        match handed {
            Ok(Ok(())) => {
                sent = cursor;
                if is_event {
                    metrics.stream_event();
                }
            }
            Ok(Err(_)) => return, // the client left
            Err(_) => {
                metrics.stream_stalled();
                tracing::info!(
                    ?stall,
                    "StreamGrants client stopped reading; ending its stream"
                );
                let why = format!("client read nothing for {stall:?}");
                let _ = end.send(resumable(why, &sent));
                return;
            }
        }
    }
}

/// The response stream of StreamGrants: the pump's messages, then its closing status if any.
struct Delivery {
    items: mpsc::Receiver<pb::ConsentEvent>,
    end: Option<oneshot::Receiver<Status>>,
}

impl Stream for Delivery {
    type Item = Result<pb::ConsentEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.items.poll_recv(cx) {
            Poll::Ready(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
            Poll::Pending => return Poll::Pending,
            // The pump is done and every message was taken: the closing status, if any.
            Poll::Ready(None) => {}
        }
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(end).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(status) => {
                self.end = None;
                Poll::Ready(status.ok().map(Err))
            }
        }
    }
}

/// Runs `f` when dropped: keeps the open-streams gauge right however the pump task ends.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
