//! The consent domain: plain, synchronous Rust with no I/O, no wire formats, no storage.
//!
//! Edges (webhook parsers, the gRPC layer, the stores) convert into and out of these types; the
//! rules in [`rules`] are the single source of truth for what a decision means.

pub mod attribution;
pub mod decision;
pub mod event;
pub mod phone;
pub mod rules;

pub use attribution::{
    Attribution, AttributionFilter, Budget, ConsentRequest, LateAttribution, LimitUse,
    RequestFieldError, RequestLimit, UnattributedPolicy,
};
pub use decision::{Choice, Decision, Evidence, Pair, Source, to_millis_precision};
pub use event::{ConsentEvent, EventKind, HistoryEntry, HistoryOutcome};
pub use phone::{PhoneError, PhoneNumber};
pub use rules::{
    Arbitration, ConsentState, DateRules, Redelivery, Verdict, arbitrate, decide, evaluate,
    ordering_time, redelivery, temporary_expiry,
};
