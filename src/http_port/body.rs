//! Reading a JSON request body within its limits: the content type, a size cap (checked
//! against `Content-Length` before reading, and while reading) and a deadline. Each route picks
//! its cap (a webhook [`MAX_BODY`](super::MAX_BODY), a check batch
//! [`MAX_BATCH_BODY`](super::check_json::MAX_BATCH_BODY)); the refusals are the same.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("body was not received in time")]
    Timeout,
    #[error("could not read the body: {0}")]
    Read(String),
}

/// Checks the content type and reads at most `cap` bytes of body within `timeout`.
pub(super) async fn read_json(
    req: Request<Incoming>,
    cap: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge(cap));
    }
    if !is_json {
        return Err(BodyError::UnsupportedMediaType);
    }
    let body = Limited::new(req.into_body(), cap);
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(cap)),
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}
