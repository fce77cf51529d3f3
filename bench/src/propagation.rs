//! The `propagation` scenario: how long after a webhook is acknowledged (its 200 arrives) does a
//! StreamGrants subscriber see the grant?
//!
//! One subscriber follows [`population::PROPAGATION_BUSINESS`] only. Each worker registers a
//! waiter under a fresh message id, posts the grant, notes when the 200 arrived, and waits for
//! the subscriber to hand over the instant it received the matching event (matched on the
//! evidence's message id). The latency recorded is event minus acknowledgement; an event that
//! arrives before the 200 is recorded as 0 and counted as `early`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::http::WebhookClient;
use crate::population::{self, Kind};
use crate::report::Tally;
use crate::runner::{Step, Worker};
use callgate::pb;

/// Longest wait for an event after its webhook was acknowledged; longer is an error.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Workers waiting for an event, by message id.
pub type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Opens the StreamGrants subscription and spawns the task that hands events to their waiters.
/// Returns once the server has accepted the subscription.
pub async fn subscribe(
    mut client: crate::grpc::Client,
    waiters: Waiters,
) -> Result<tokio::task::JoinHandle<()>, tonic::Status> {
    let mut stream = client
        .stream_grants(pb::StreamGrantsRequest {
            business_numbers: vec![population::PROPAGATION_BUSINESS.to_owned()],
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let at = Instant::now();
                    let Some(evidence) = &event.evidence else {
                        continue; // a checkpoint
                    };
                    let waiter = waiters
                        .lock()
                        .expect("waiters lock poisoned")
                        .remove(&evidence.message_id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(at);
                    }
                }
                Ok(None) => {
                    tracing::warn!("StreamGrants ended");
                    return;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "StreamGrants failed");
                    return;
                }
            }
        }
    }))
}

/// Posts one grant and waits for its event.
pub struct PropagationWorker {
    pub client: WebhookClient,
    pub waiters: Waiters,
    /// Number of the next webhook, shared by all workers.
    pub next: Arc<AtomicU64>,
    /// Makes message ids unique across runs against the same service.
    pub run_id: u64,
}

impl PropagationWorker {
    fn forget(&self, id: &str) {
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .remove(id);
    }
}

impl Worker for PropagationWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("bench-propagation-{}-{n}", self.run_id);
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock poisoned")
            .insert(id.clone(), tx);
        let body = population::webhook_body(
            population::PROPAGATION_BUSINESS,
            &population::propagation_customer(n),
            &id,
            Kind::Permanent,
            chrono::Utc::now(),
        );
        if let Err(e) = self.client.post(body).await {
            self.forget(&id);
            tally.error(e);
            return Step::Sent;
        }
        let acked = Instant::now();
        match tokio::time::timeout(EVENT_TIMEOUT, rx).await {
            Ok(Ok(event)) => {
                if event < acked {
                    tally.count("early", 1);
                }
                tally.count("received", 1);
                Step::Timed(event.saturating_duration_since(acked))
            }
            Ok(Err(_)) | Err(_) => {
                self.forget(&id);
                tally.error(format!(
                    "no event for {id} within {EVENT_TIMEOUT:?} of its 200"
                ));
                Step::Sent
            }
        }
    }
}
