//! Ingestion: webhook bodies in, domain decisions out. Only this module knows the senders'
//! wire formats.

pub mod doubletick;
pub mod payload;

use std::time::Duration;

use sha2::{Digest, Sha256};

pub use payload::PayloadError;

/// What the parsers need to know beyond the body.
#[derive(Debug, Clone)]
pub struct IngestContext {
    /// Length of a temporary grant when the sender gives no expiry.
    pub temporary_grant: Duration,
}

/// Hex SHA-256 of a raw body, kept with each decision as evidence.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}
