//! The JSON checks for REST-only dialers: `POST /v1/check` and `POST /v1/check-batch`.
//!
//! Authenticated like the gRPC API: `Authorization: Bearer <key>` of a client with the `check`
//! scope ([`ApiAuth::admit_scope`](crate::grpc_api::auth::ApiAuth::admit_scope)); a client
//! limited to some businesses gets 403 for a single check of another business, and that pair's
//! error (code 7) in place in a batch. The checks themselves are the shared
//! [`Checker`](crate::checks::Checker)'s, the same code the gRPC calls run.
//!
//! A batch holds up to [`MAX_BATCH_CHECKS`](super::MAX_BATCH_CHECKS) checks in a body of at most [`MAX_BATCH_BODY`],
//! and memory stays bounded by those whatever the batch:
//! - the body is refused (413) above its cap before or while it is read, and parsed in one pass
//!   (no JSON tree); a shape error (400/422) or one check too many (422) is answered before
//!   anything is checked;
//! - checks go to the store [`CHUNK`] pairs at a time (one `current_each` each), and each
//!   chunk's results are written to the response as soon as they are answered (chunked
//!   transfer encoding): the next chunk is checked only when the connection has taken the
//!   previous one, so a slow reader holds at most one chunk of answers;
//! - at most [`MAX_BATCHES_IN_FLIGHT`] batches run at once on a replica (more: 429).
//!
//! The first chunk is checked before the response head is sent, so a store that is down gets
//! a 503 and no results. If the store fails later, after the 200 went out, the chunk it failed
//! and every remaining check are answered with an error of code 14 (UNAVAILABLE) in place,
//! never an answer, and the store is not asked again for this batch; a store that fails only
//! some pairs (one Redis Cluster master) fails only those, as in the gRPC batch.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::HttpState;
use super::api_error::CheckApiError;
use super::body;
use super::check_json::{
    self, BatchRequest, CheckRequest, MAX_BATCH_BODY, MAX_CHECK_BODY, RESULT_SEPARATOR,
    RESULTS_CLOSE, RESULTS_OPEN,
};
use super::reply::{Reply, boxed, json_response};
use crate::check_cache::Freshness;
use crate::checks::{Checker, Query};
use crate::grpc_api::auth::{Caller, Scope};
use crate::grpc_api::convert::check_response;
use crate::metrics::{ApiOutcome, UNAUTHENTICATED_CLIENT};
use crate::store::StoreError;

/// Pairs per store read in a batch (and results per chunk of the response).
pub const CHUNK: usize = 1000;
/// Most batches answered at once on one replica.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// About the size of one answer with its evidence, to size a chunk's buffer once.
const ANSWER_BYTES: usize = 512;

/// The caller the request's `Authorization: Bearer <key>` identifies, if it may check.
fn admit(state: &HttpState, req: &Request<Incoming>) -> Result<Caller, CheckApiError> {
    let presented: Vec<&[u8]> = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    state
        .auth
        .current()
        .admit_scope(Scope::Check, &presented)
        .map_err(|(client, refusal)| {
            let name = client.as_deref().unwrap_or(UNAUTHENTICATED_CLIENT);
            state.metrics.api_refusal(name, refusal.reason());
            tracing::info!(
                client = name,
                reason = refusal.reason().label(),
                "api call refused"
            );
            CheckApiError::Refused { client, refusal }
        })
}

/// `POST /v1/check`: one pair, one answer.
pub(super) async fn check(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Reply, CheckApiError> {
    let caller = admit(state, &req)?;
    let body = body::read_json(req, MAX_CHECK_BODY, state.limits.body_timeout).await?;
    let (request, options) = check_json::parse_check(&body)?;
    let need = state
        .checker
        .freshness("at_least_as_fresh", &options.at_least_as_fresh)?;
    let checked = state.checker.check(&caller, request.query(), &need).await?;
    let answer = check_json::answer(check_response(
        &checked.pair,
        checked.verdict,
        options.include_evidence,
    ));
    Ok(Reply::api(
        ApiOutcome::Answered,
        boxed(json_response(StatusCode::OK, &answer)),
    ))
}

/// `POST /v1/check-batch`: up to [`MAX_BATCH_CHECKS`](super::MAX_BATCH_CHECKS) pairs, answered in order, streamed.
pub(super) async fn check_batch(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Reply, CheckApiError> {
    let caller = admit(state, &req)?;
    let permit = state
        .batches
        .clone()
        .try_acquire_owned()
        .map_err(|_| CheckApiError::Busy(MAX_BATCHES_IN_FLIGHT))?;
    let body = body::read_json(req, MAX_BATCH_BODY, state.limits.body_timeout).await?;
    let BatchRequest { checks, options } = check_json::parse_batch(&body)?;
    drop(body);
    let need = state
        .checker
        .freshness("at_least_as_fresh", &options.at_least_as_fresh)?;
    tracing::debug!(checks = checks.len(), "check batch");
    let mut batch = Batch {
        checker: state.checker.clone(),
        caller,
        need,
        include_evidence: options.include_evidence,
        checks: checks.into_iter(),
        written: 0,
        failed: None,
        closed: false,
        _permit: permit,
    };
    // The first chunk before the head: a store that is down gets a 503, not a 200 of errors.
    let first = batch.next_chunk(true).await.map_err(|e| {
        state.checker.count_unavailable(1);
        CheckApiError::Store(e)
    })?;
    let span = tracing::Span::current();
    let rest = futures_util::stream::unfold(batch, move |mut batch| {
        let span = span.clone();
        async move {
            let chunk = batch.next_chunk(false).await.ok().flatten()?;
            Some((chunk, batch))
        }
        .instrument(span)
    });
    let frames = futures_util::stream::iter(first)
        .chain(rest)
        .map(|chunk| Ok::<_, super::reply::BoxError>(Frame::data(chunk)));
    let mut res = http::Response::new(StreamBody::new(frames).boxed_unsync());
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(Reply::api(ApiOutcome::Answered, res))
}

/// A batch being answered, one chunk of the response at a time.
struct Batch {
    checker: Arc<Checker>,
    caller: Caller,
    /// Issue 16: how fresh every answer must be, and whether answers carry evidence.
    need: Freshness,
    include_evidence: bool,
    /// The checks not yet answered (each one's strings are freed as it is taken).
    checks: std::vec::IntoIter<CheckRequest>,
    /// Results written so far.
    written: usize,
    /// Set once the store failed a whole chunk: the rest is answered UNAVAILABLE without
    /// asking it again.
    failed: Option<StoreError>,
    /// The closing `]}` was written.
    closed: bool,
    /// This batch's place among [`MAX_BATCHES_IN_FLIGHT`], released when the response ends.
    _permit: OwnedSemaphorePermit,
}

impl Batch {
    /// The next piece of the answer: the opening (with the first chunk), a chunk of results,
    /// the closing (with the last chunk); `None` once closed. `Err` only for the first chunk,
    /// when the store answered none of its pairs.
    async fn next_chunk(&mut self, first: bool) -> Result<Option<Bytes>, StoreError> {
        if self.closed {
            return Ok(None);
        }
        let chunk: Vec<CheckRequest> = self.checks.by_ref().take(CHUNK).collect();
        let mut out = Vec::with_capacity(chunk.len() * ANSWER_BYTES + RESULTS_OPEN.len() + 2);
        if first {
            out.extend_from_slice(RESULTS_OPEN);
        }
        let results = match &self.failed {
            Some(e) => Err(e.clone()),
            None if chunk.is_empty() => Ok(Vec::new()),
            None => {
                let queries: Vec<Query<'_>> = chunk.iter().map(CheckRequest::query).collect();
                self.checker
                    .check_each(&self.caller, &queries, &self.need)
                    .await
            }
        };
        match results {
            Ok(results) => {
                for result in results {
                    let item = match result {
                        Ok(c) => check_json::item_answer(check_response(
                            &c.pair,
                            c.verdict,
                            self.include_evidence,
                        )),
                        Err(e) => check_json::item_error(e.code(), &e.to_string()),
                    };
                    self.write(&mut out, &item);
                }
            }
            Err(e) if first => return Err(e),
            Err(e) => {
                if self.failed.is_none() {
                    tracing::warn!(
                        error = %e,
                        answered = self.written,
                        "store failed during a check batch; the remaining checks are answered \
                         UNAVAILABLE"
                    );
                }
                self.checker.count_unavailable(chunk.len());
                let message = format!(
                    "not checked: the store failed during this batch ({e}); retry this pair"
                );
                let item = check_json::item_error(tonic::Code::Unavailable, &message);
                for _ in &chunk {
                    self.write(&mut out, &item);
                }
                self.failed = Some(e);
            }
        }
        if self.checks.len() == 0 {
            out.extend_from_slice(RESULTS_CLOSE);
            self.closed = true;
        }
        Ok(Some(Bytes::from(out)))
    }

    fn write(&mut self, out: &mut Vec<u8>, item: &serde_json::Value) {
        if self.written > 0 {
            out.extend_from_slice(RESULT_SEPARATOR);
        }
        // Writing a `Value` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, item);
        self.written += 1;
    }
}
