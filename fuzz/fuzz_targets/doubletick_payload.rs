//! DoubleTick webhook bodies: any bytes are refused or parsed, never a panic; a parsed decision
//! carries the hash of exactly the bytes it came from.
#![no_main]

use std::time::Duration;

use callgate::domain::{DateRules, Source};
use callgate::ingest::{IngestContext, body_sha256, doubletick};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let ctx = IngestContext {
        dates: DateRules {
            temporary_window: Duration::from_secs(7 * 24 * 3600),
            max_clock_skew: Duration::from_secs(120),
        },
    };
    let arrival = chrono::DateTime::from_timestamp(1_768_473_005, 0).unwrap();
    if let Ok(decision) = doubletick::parse(body, &ctx, arrival) {
        assert_eq!(decision.evidence.source, Source::DoubleTick);
        assert_eq!(decision.evidence.body_sha256, body_sha256(body));
    }
});
