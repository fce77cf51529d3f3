//! The gRPC API (`callgate.v1.ConsentAuthority`): requests → domain questions → responses.
//!
//! Errors map to a gRPC `Status` in one place ([`ApiError`]). A store failure is always
//! `UNAVAILABLE`: a dialer can never read an error as "allowed".
//!
//! Every call has been admitted by [`auth::Guard`] (key and scope) before a handler runs; the
//! handlers then keep a client limited to some businesses to those businesses
//! ([`auth::Caller::may_see`]), before the store is read.

pub mod auth;
mod convert;

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

pub use convert::{from_timestamp, timestamp};

use crate::domain::{Pair, PhoneError, PhoneNumber, evaluate};
use crate::fanout::{Filter, Hub, Item, SubscriptionError};
use crate::metrics::{CheckAnswer, CheckRpc, Metrics, RefusalReason, StoreOp};
use crate::pb::{self, consent_authority_server::ConsentAuthority};
use crate::store::{ConsentStore, Cursor, CursorError, StoreError, cursor_at};
use auth::Caller;

/// Most pairs one CheckCallPermissions call may carry.
pub const MAX_BATCH: usize = 1000;
/// GetConsentHistory entries per page when the client asks for none.
pub const DEFAULT_HISTORY_PAGE: usize = 100;
/// Most GetConsentHistory entries per page (larger requests get this many). With every
/// evidence field bounded at the edge, a full page stays far below gRPC's 4 MiB default.
pub const MAX_HISTORY_PAGE: usize = 1000;
/// Items buffered per StreamGrants client before its pump waits (memory bound per stream).
const STREAM_BUFFER: usize = 64;

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

    fn code(&self) -> tonic::Code {
        match self {
            ApiError::OtherBusiness { .. } => tonic::Code::PermissionDenied,
            ApiError::NoCaller => tonic::Code::Unauthenticated,
            _ => tonic::Code::InvalidArgument,
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
        }
    }
}

fn phone(field: &'static str, raw: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(raw).map_err(|source| ApiError::Phone { field, source })
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
    hub: Hub,
    metrics: Arc<Metrics>,
}

impl Api {
    pub fn new(store: Arc<dyn ConsentStore>, hub: Hub, metrics: Arc<Metrics>) -> Self {
        Api {
            store,
            hub,
            metrics,
        }
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
        Err(ApiError::OtherBusiness {
            field,
            business: business.clone(),
        })
    }

    async fn check_one(
        &self,
        caller: &Caller,
        req: &pb::CheckCallPermissionRequest,
    ) -> Result<pb::CheckCallPermissionResponse, ApiError> {
        let pair = pair(&req.business_number, &req.customer_number)?;
        self.scope(caller, "business_number", &pair.business)?;
        let current = self
            .store
            .current(&pair)
            .await
            .map_err(self.store_failed(StoreOp::Check))?;
        let verdict = evaluate(current, Utc::now());
        self.metrics.check(CheckAnswer::State(verdict.state));
        Ok(convert::check_response(&pair, verdict))
    }

    async fn check_many(
        &self,
        caller: &Caller,
        checks: &[pb::CheckCallPermissionRequest],
    ) -> Result<pb::CheckCallPermissionsResponse, ApiError> {
        if checks.len() > MAX_BATCH {
            return Err(ApiError::InvalidArgument(format!(
                "checks: {} pairs; at most {MAX_BATCH} per call",
                checks.len()
            )));
        }
        let parsed: Vec<Result<Pair, ApiError>> = checks
            .iter()
            .map(|c| {
                let pair = pair(&c.business_number, &c.customer_number)?;
                self.scope(caller, "business_number", &pair.business)?;
                Ok(pair)
            })
            .collect();
        let valid: Vec<Pair> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let currents = self.store.current_each(&valid).await;
        // Nothing answered: the store is down; the whole call is UNAVAILABLE.
        if let Some(Err(e)) = currents.first()
            && currents.iter().all(Result::is_err)
        {
            return Err(self.store_failed(StoreOp::Check)(e.clone()));
        }
        let mut currents = currents.into_iter();
        let now = Utc::now();
        let results = parsed
            .into_iter()
            .map(|p| {
                let result = match p {
                    Ok(pair) => match currents.next() {
                        Some(Ok(current)) => {
                            let verdict = evaluate(current, now);
                            self.metrics.check(CheckAnswer::State(verdict.state));
                            pb::check_result::Result::Answer(convert::check_response(
                                &pair, verdict,
                            ))
                        }
                        // This pair's part of the store failed (on a cluster, one master):
                        // its own UNAVAILABLE, never an answer.
                        Some(Err(e)) => {
                            self.metrics.store_error(StoreOp::Check);
                            self.metrics.check(CheckAnswer::Unavailable);
                            pb::check_result::Result::Error(pb::CheckError {
                                code: tonic::Code::Unavailable as i32,
                                message: e.to_string(),
                            })
                        }
                        None => {
                            self.metrics.check(CheckAnswer::Unavailable);
                            pb::check_result::Result::Error(pb::CheckError {
                                code: tonic::Code::Unavailable as i32,
                                message: "store gave no answer for this pair".into(),
                            })
                        }
                    },
                    Err(e) => {
                        if let Some(answer) = e.check_answer() {
                            self.metrics.check(answer);
                        }
                        pb::check_result::Result::Error(pb::CheckError {
                            code: e.code() as i32,
                            message: e.to_string(),
                        })
                    }
                };
                pb::CheckResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(pb::CheckCallPermissionsResponse { results })
    }

    pub fn into_server(self) -> pb::consent_authority_server::ConsentAuthorityServer<Api> {
        pb::consent_authority_server::ConsentAuthorityServer::new(self)
    }

    fn start_cursor(&self, req: &pb::StreamGrantsRequest) -> Result<Option<Cursor>, ApiError> {
        let shards = self.hub.shards();
        if !req.resume_after.is_empty() {
            let c = Cursor::parse(&req.resume_after, shards).map_err(StoreError::from)?;
            return Ok(Some(c));
        }
        match &req.since {
            None => Ok(None),
            Some(ts) => {
                let since = from_timestamp(ts)
                    .ok_or_else(|| ApiError::InvalidArgument("since: invalid timestamp".into()))?;
                Ok(Some(cursor_at(shards, since)))
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ConsentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ConsentAuthority for Api {
    async fn check_call_permission(
        &self,
        request: Request<pb::CheckCallPermissionRequest>,
    ) -> Result<Response<pb::CheckCallPermissionResponse>, Status> {
        let started = Instant::now();
        let caller = caller(&request)?;
        let answer = self.check_one(&caller, request.get_ref()).await;
        if let Some(answer) = answer.as_ref().err().and_then(ApiError::check_answer) {
            self.metrics.check(answer);
        }
        self.metrics
            .check_latency(CheckRpc::Single, started.elapsed());
        Ok(Response::new(answer?))
    }

    async fn check_call_permissions(
        &self,
        request: Request<pb::CheckCallPermissionsRequest>,
    ) -> Result<Response<pb::CheckCallPermissionsResponse>, Status> {
        let started = Instant::now();
        let caller = caller(&request)?;
        let answer = self.check_many(&caller, &request.get_ref().checks).await;
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
        };
        let start = self.start_cursor(&req)?;
        let mut sub = self
            .hub
            .subscribe(start, filter)
            .await
            .map_err(self.store_failed(StoreOp::Events))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.stream_opened();
            let _open = scopeguard(|| metrics.stream_closed());
            loop {
                let next = tokio::select! {
                    // The client went away: stop reading for it.
                    _ = tx.closed() => return,
                    n = sub.next() => n,
                };
                let msg = match next {
                    Ok(Item::Event(e, cursor)) => {
                        metrics.stream_event();
                        Ok(convert::event(&e, &cursor))
                    }
                    Ok(Item::Checkpoint(cursor)) => Ok(convert::checkpoint(&cursor)),
                    Err(SubscriptionError::ShuttingDown) => Err(Status::unavailable(format!(
                        "server shutting down; resume with resume_after = {}",
                        sub.cursor()
                    ))),
                    Err(SubscriptionError::Store(e)) => {
                        if !matches!(e, StoreError::Cursor(_)) {
                            metrics.store_error(StoreOp::Events);
                        }
                        Err(Status::from(ApiError::Store(e)))
                    }
                };
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
            entries: page.entries.iter().map(convert::history_entry).collect(),
            next_page_token: page.next.map(page_token).unwrap_or_default(),
        }))
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
