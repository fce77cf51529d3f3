//! Secrets (webhook tokens, app secrets, the Redis URL's password) that must never reach a log.

use std::fmt;

/// A secret string (webhook token, app secret, verify token). Prints as `[redacted]`, and
/// deliberately has no `PartialEq`: compare through the functions of this module.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself. Call only to use it, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Splits a comma-separated list (as in `CALLGATE_WEBHOOK_TOKENS`), trimming each secret and
    /// dropping empty ones, so `"a, b,"` is two secrets.
    pub fn parse_list(raw: &str) -> Vec<Secret> {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .collect()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
