//! The `staleness` scenario: how long after a denial is acknowledged by one replica (its 200
//! arrives) does *another* replica answer DENIED? This measures the bound B of replica-local
//! check answers (issue 16) from outside, under whatever load runs beside it.
//!
//! Each call uses a fresh customer of [`population::STALENESS_BUSINESS`]: it posts a permanent
//! grant to replica A, checks on replica B until B answers ALLOWED twice in a row (the second
//! answer is the one B keeps in memory, if it keeps any), posts a denial to A, notes when the
//! 200 arrived, then checks on B back to back. The latency recorded is the send time of the
//! first check that B answered DENIED, minus the 200's arrival: checks sent before it were
//! answered ALLOWED (counted as `stale_allowed`). A check sent after the first DENIED that is
//! answered ALLOWED again is an error (`allowed_again`): an answer may lag, never go back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::grpc::Client;
use crate::http::WebhookClient;
use crate::population::{self, Kind};
use crate::report::Tally;
use crate::runner::{Step, Worker};
use callgate::pb;

/// Longest wait for replica B to show a state; longer is an error.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Checks on B after the first DENIED, to catch an answer that goes back to ALLOWED.
const CONFIRM_CHECKS: usize = 20;

/// Posts to replica A, checks on replica B.
pub struct StalenessWorker {
    pub writer: WebhookClient,
    pub reader: Client,
    /// Number of the next customer, shared by all workers.
    pub next: Arc<AtomicU64>,
    /// Makes message ids unique across runs against the same service.
    pub run_id: u64,
}

enum Seen {
    Allowed,
    Denied,
}

impl StalenessWorker {
    async fn check(&mut self, customer: &str) -> Result<Seen, String> {
        let answer = self
            .reader
            .check_call_permission(pb::CheckCallPermissionRequest {
                business_number: population::STALENESS_BUSINESS.to_owned(),
                customer_number: customer.to_owned(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        if answer.allowed {
            Ok(Seen::Allowed)
        } else if answer.state == pb::ConsentState::Denied as i32 {
            Ok(Seen::Denied)
        } else {
            // Not yet granted on B (the grant's event is on its way): keep asking.
            Err(String::new())
        }
    }

    async fn post(&self, customer: &str, id: &str, kind: Kind) -> Result<(), String> {
        let body = population::webhook_body(
            population::STALENESS_BUSINESS,
            customer,
            id,
            kind,
            chrono::Utc::now(),
        );
        self.writer.post(body).await
    }

    async fn run_one(&mut self, tally: &mut Tally) -> Result<Duration, String> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let customer = population::staleness_customer(n);
        let id = format!("bench-staleness-{}-{n}", self.run_id);
        self.post(&customer, &format!("{id}-grant"), Kind::Permanent)
            .await?;
        // B answers ALLOWED twice in a row: it has the grant, and has had the chance to keep it.
        let deadline = Instant::now() + STATE_TIMEOUT;
        let mut allowed_in_a_row = 0;
        while allowed_in_a_row < 2 {
            if Instant::now() > deadline {
                return Err(format!("replica B never answered ALLOWED for {customer}"));
            }
            match self.check(&customer).await {
                Ok(Seen::Allowed) => allowed_in_a_row += 1,
                Ok(Seen::Denied) => return Err(format!("{customer} DENIED before the denial")),
                Err(e) if e.is_empty() => allowed_in_a_row = 0,
                Err(e) => return Err(e),
            }
        }
        // The denial carries a later event time than the grant.
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.post(&customer, &format!("{id}-deny"), Kind::Denied)
            .await?;
        let acked = Instant::now();
        let deadline = acked + STATE_TIMEOUT;
        let first_denied = loop {
            let sent = Instant::now();
            if sent > deadline {
                return Err(format!(
                    "replica B still ALLOWED {customer} 5 s after the 200"
                ));
            }
            match self.check(&customer).await {
                Ok(Seen::Denied) => break sent,
                Ok(Seen::Allowed) => tally.count("stale_allowed", 1),
                Err(e) if e.is_empty() => {}
                Err(e) => return Err(e),
            }
        };
        for _ in 0..CONFIRM_CHECKS {
            if let Ok(Seen::Allowed) = self.check(&customer).await {
                tally.count("allowed_again", 1);
                return Err(format!("{customer} ALLOWED again after DENIED"));
            }
        }
        Ok(first_denied.saturating_duration_since(acked))
    }
}

impl Worker for StalenessWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        match self.run_one(tally).await {
            Ok(lag) => {
                tally.count("denials", 1);
                Step::Timed(lag)
            }
            Err(e) => {
                tally.error(e);
                Step::Sent
            }
        }
    }
}
