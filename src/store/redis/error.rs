//! redis-rs errors to [`StoreError`]s, in one place: a timeout is `Timeout`, a value the store
//! cannot read (a script's `CORRUPT …` reply, an unparsable reply) is `Corrupt`, anything else
//! `Unavailable`. Never a value.

use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::store::StoreError;

/// Maps a redis-rs error to a store error. Never to a value.
pub(super) fn map_error(e: RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        return StoreError::Timeout(timeout);
    }
    // The scripts answer `CORRUPT …` when a stored value has no readable header.
    if has_code(&e, "CORRUPT") {
        return StoreError::Corrupt(e.to_string());
    }
    match e.kind() {
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// True if the error, or any command's error in a failed pipeline or transaction, has `code`.
fn has_code(e: &RedisError, code: &str) -> bool {
    e.code() == Some(code)
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, err)| err.code() == code))
}

/// True for an error the server answered (`ERR …`, `NOPERM …`), as opposed to a connection
/// failure, a timeout or a cluster redirection.
pub(super) fn is_reply_error(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError | ServerErrorKind::NoPerm)
    )
}

/// `CONFIG GET` refused (disabled or renamed, as on some managed Redis offerings): the policy
/// cannot be verified, and callgate refuses to run on an unverified one.
pub(super) fn unverifiable_policy(e: &RedisError) -> StoreError {
    StoreError::Misconfigured(format!(
        "cannot verify maxmemory-policy (CONFIG GET failed: {e}); callgate needs noeviction, \
         because an evicted denial would read as no consent"
    ))
}

/// Redis lost the scripts (it restarted, or `SCRIPT FLUSH`): load them and try again.
pub(super) fn is_noscript(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) || has_code(e, "NOSCRIPT")
}

/// A reply of another shape than the command answers: never read as a value.
pub(super) fn corrupt_reply(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unexpected reply to {what}"))
}
