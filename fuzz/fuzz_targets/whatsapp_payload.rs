//! Meta Cloud API webhook bodies: any bytes are refused or parsed, never a panic; a refused JSON
//! object always names the field at fault.
#![no_main]

use std::time::Duration;

use callgate::domain::{DateRules, Source};
use callgate::ingest::{IngestContext, PayloadError, body_sha256, whatsapp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let ctx = IngestContext {
        dates: DateRules {
            temporary_window: Duration::from_secs(7 * 24 * 3600),
            max_clock_skew: Duration::from_secs(120),
        },
    };
    let arrival = chrono::DateTime::from_timestamp(1_768_473_005, 0).unwrap();
    match whatsapp::parse(body, &ctx, arrival) {
        Ok(decisions) => {
            for d in decisions {
                assert_eq!(d.evidence.source, Source::WhatsApp);
                assert_eq!(d.evidence.body_sha256, body_sha256(body));
            }
        }
        Err(PayloadError::InvalidJson(_) | PayloadError::NotAnObject) => {}
        Err(e) => assert!(e.field().is_some(), "{e}"),
    }
});
