//! Ingestion: webhook bodies in, domain decisions out. Only this module knows the senders'
//! wire formats (`doubletick`, `whatsapp`) and how senders prove who they are (`auth`).
//!
//! Everything here is pure: bytes and headers in, values or errors out. The HTTP layer
//! authenticates with [`auth`], then hands the raw body to a parser.

pub mod auth;
pub mod doubletick;
pub mod payload;
pub mod whatsapp;

use sha2::{Digest, Sha256};

pub use payload::{MAX_ID_BYTES, MAX_LABEL_BYTES, PayloadError};

use crate::domain::DateRules;

/// What the parsers need to know beyond the body.
#[derive(Debug, Clone)]
pub struct IngestContext {
    /// The temporary window and the clock skew a sender's dates are held to.
    pub dates: DateRules,
}

/// SHA-256 of a raw body, kept with each decision as evidence.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}
