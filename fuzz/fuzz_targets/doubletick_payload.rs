//! DoubleTick webhook bodies: any bytes are refused or parsed, never a panic; a parsed decision
//! carries the hash of exactly the bytes it came from.
#![no_main]

use std::time::Duration;

use callgate::domain::Source;
use callgate::ingest::{IngestContext, body_sha256, doubletick};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let ctx = IngestContext {
        temporary_grant: Duration::from_secs(7 * 24 * 3600),
    };
    if let Ok(decision) = doubletick::parse(body, &ctx) {
        assert_eq!(decision.evidence.source, Source::DoubleTick);
        assert_eq!(decision.evidence.body_sha256, body_sha256(body));
    }
});
