//! The gRPC API (`callgate.v1.ConsentAuthority`): requests → domain questions → responses.
//!
//! Errors map to a gRPC `Status` in one place ([`ApiError`]). A store failure is always
//! `UNAVAILABLE`: a dialer can never read an error as "allowed".

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
use crate::metrics::{CheckAnswer, CheckRpc, Metrics, StoreOp};
use crate::pb::{self, consent_authority_server::ConsentAuthority};
use crate::store::{ConsentStore, Cursor, CursorError, StoreError, cursor_at};

/// Most pairs one CheckCallPermissions call may carry.
pub const MAX_BATCH: usize = 1000;
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
}

impl ApiError {
    fn check_answer(&self) -> CheckAnswer {
        match self {
            ApiError::Store(StoreError::Cursor(_)) => CheckAnswer::InvalidArgument,
            ApiError::Store(_) => CheckAnswer::Unavailable,
            _ => CheckAnswer::InvalidArgument,
        }
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match &e {
            ApiError::Phone { .. } | ApiError::InvalidArgument(_) => {
                Status::invalid_argument(e.to_string())
            }
            ApiError::Store(StoreError::Cursor(CursorError::OutOfRange { .. })) => {
                Status::out_of_range(e.to_string())
            }
            ApiError::Store(StoreError::Cursor(_)) => Status::invalid_argument(e.to_string()),
            ApiError::Store(_) => {
                tracing::warn!(error = %e, "store error answered as UNAVAILABLE");
                Status::unavailable(e.to_string())
            }
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

    async fn check_one(
        &self,
        req: &pb::CheckCallPermissionRequest,
    ) -> Result<(pb::CheckCallPermissionResponse, CheckAnswer), ApiError> {
        let pair = pair(&req.business_number, &req.customer_number)?;
        let current = self
            .store
            .current(&pair)
            .await
            .map_err(self.store_failed(StoreOp::Check))?;
        let verdict = evaluate(current, Utc::now());
        let answer = CheckAnswer::State(verdict.state);
        Ok((convert::check_response(&pair, verdict), answer))
    }

    async fn check_many(
        &self,
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
            .map(|c| pair(&c.business_number, &c.customer_number))
            .collect();
        let valid: Vec<Pair> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .cloned()
            .collect();
        let mut currents = self
            .store
            .current_many(&valid)
            .await
            .map_err(self.store_failed(StoreOp::Check))?
            .into_iter();
        let now = Utc::now();
        let results = parsed
            .into_iter()
            .map(|p| {
                let result = match p {
                    Ok(pair) => {
                        let verdict = evaluate(currents.next().flatten(), now);
                        self.metrics.check(CheckAnswer::State(verdict.state));
                        pb::check_result::Result::Answer(convert::check_response(&pair, verdict))
                    }
                    Err(e) => {
                        self.metrics.check(CheckAnswer::InvalidArgument);
                        pb::check_result::Result::Error(pb::CheckError {
                            code: tonic::Code::InvalidArgument as i32,
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
        let answer = self.check_one(request.get_ref()).await;
        let label = match &answer {
            Ok((_, label)) => *label,
            Err(e) => e.check_answer(),
        };
        self.metrics.check(label);
        self.metrics.single_check_latency(label, started.elapsed());
        Ok(Response::new(answer?.0))
    }

    async fn check_call_permissions(
        &self,
        request: Request<pb::CheckCallPermissionsRequest>,
    ) -> Result<Response<pb::CheckCallPermissionsResponse>, Status> {
        let started = Instant::now();
        let answer = self.check_many(&request.get_ref().checks).await;
        if let Err(e) = &answer {
            self.metrics.check(e.check_answer());
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
        let req = request.into_inner();
        let businesses = req
            .business_numbers
            .iter()
            .map(|b| phone("business_numbers", b))
            .collect::<Result<HashSet<_>, _>>()?;
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
        let req = request.get_ref();
        let pair = pair(&req.business_number, &req.customer_number)?;
        let mut entries = self
            .store
            .history(&pair)
            .await
            .map_err(self.store_failed(StoreOp::History))?;
        // Oldest decision first; decisions made at the same instant in arrival order.
        entries.sort_by_key(|h| h.decision.decided_at);
        Ok(Response::new(pb::GetConsentHistoryResponse {
            business_number: pair.business.to_string(),
            customer_number: pair.customer.to_string(),
            entries: entries.iter().map(convert::history_entry).collect(),
        }))
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
