//! The gRPC scenarios: `check` (CheckCallPermission) and `batch` (CheckCallPermissions), with
//! random pairs of the population, every answer checked against the pair's known kind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tonic::transport::{Channel, Endpoint};

use crate::BenchError;
use crate::floor;
use crate::population::{self, Rng};
use crate::report::Tally;
use crate::runner::{Step, Worker};
use std::sync::OnceLock;

use callgate::cli::BearerToken;
use callgate::pb::{self, ConsentState, consent_authority_client::ConsentAuthorityClient};
use tonic::service::interceptor::InterceptedService;

/// A ConsentAuthority client that sends callgate's API key (if one was given) with every call.
pub type Client = ConsentAuthorityClient<InterceptedService<Channel, BearerToken>>;

/// The API key every gRPC connection of this run sends (`--api-key`); set once by `run`.
static API_KEY: OnceLock<Option<String>> = OnceLock::new();

/// Sets the API key for every connection this run opens. Later calls change nothing.
pub fn use_api_key(key: Option<String>) {
    let _ = API_KEY.set(key);
}

/// Opens `n` HTTP/2 connections to `addr`, each its own channel.
pub async fn connect(addr: SocketAddr, n: usize) -> Result<Vec<Client>, BenchError> {
    let key = API_KEY.get().and_then(|k| k.as_deref());
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| BenchError::Connect { addr, source })?
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| BenchError::Connect { addr, source })?;
        let token = BearerToken::new(key).map_err(|e| BenchError::ApiKey(e.to_string()))?;
        clients.push(
            ConsentAuthorityClient::with_interceptor(channel, token)
                .max_decoding_message_size(64 << 20),
        );
    }
    Ok(clients)
}

/// Spreads requests over the connections, round-robin across all workers.
#[derive(Clone)]
pub struct Connections {
    clients: Vec<Client>,
    next: Arc<AtomicUsize>,
}

impl Connections {
    pub fn new(clients: Vec<Client>) -> Self {
        Connections {
            clients,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn pick(&mut self) -> &mut Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &mut self.clients[i]
    }
}

fn request(i: u64) -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        business_number: population::business(i),
        customer_number: population::customer(i),
        ..Default::default()
    }
}

/// A single check of pair `i`, with the evidence if `evidence` (callgate leaves it out unless
/// asked; the floor always sends it).
fn single(i: u64, evidence: bool) -> pb::CheckCallPermissionRequest {
    pb::CheckCallPermissionRequest {
        include_evidence: evidence,
        ..request(i)
    }
}

/// Checks one answer for pair `i` and counts it, or counts an error naming the pair.
///
/// The floor's answers (evidence source [`floor::SOURCE`]) are constant, so they are counted as
/// `floor` and not checked.
pub fn verify(i: u64, answer: &pb::CheckCallPermissionResponse, tally: &mut Tally) {
    if answer
        .evidence
        .as_ref()
        .is_some_and(|e| e.source == floor::SOURCE)
    {
        tally.count("floor", 1);
        return;
    }
    let want = population::kind(i).expected_state();
    let want_allowed = matches!(
        want,
        ConsentState::GrantedPermanent | ConsentState::GrantedTemporary
    );
    if answer.state != want as i32 || answer.allowed != want_allowed {
        let got = ConsentState::try_from(answer.state).map_or("UNKNOWN", |s| s.as_str_name());
        tally.error(format!(
            "pair {i} ({}, {}): expected {} allowed={want_allowed}, got {got} allowed={}",
            population::business(i),
            population::customer(i),
            want.as_str_name(),
            answer.allowed,
        ));
        return;
    }
    tally.count(
        match want {
            ConsentState::Denied => "denied",
            ConsentState::NoConsent => "no_consent",
            _ => "allowed",
        },
        1,
    );
}

fn status_error(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// One CheckCallPermission per call, for a random pair.
pub struct CheckWorker {
    pub connections: Connections,
    pub rng: Rng,
    pub population: u64,
    /// Ask for the evidence (`include_evidence`).
    pub evidence: bool,
}

impl Worker for CheckWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        let i = self.rng.below(self.population);
        match self
            .connections
            .pick()
            .check_call_permission(single(i, self.evidence))
            .await
        {
            Ok(answer) => verify(i, answer.get_ref(), tally),
            Err(status) => tally.error(status_error(&status)),
        }
        Step::Sent
    }
}

/// One CheckCallPermissions of `size` random pairs per call.
pub struct BatchWorker {
    pub connections: Connections,
    pub rng: Rng,
    pub population: u64,
    pub size: usize,
    /// Ask for the evidence (`include_evidence`, for the whole batch).
    pub evidence: bool,
}

impl Worker for BatchWorker {
    async fn call(&mut self, tally: &mut Tally) -> Step {
        let pairs: Vec<u64> = (0..self.size)
            .map(|_| self.rng.below(self.population))
            .collect();
        let checks = pairs.iter().map(|&i| request(i)).collect();
        let answer = self
            .connections
            .pick()
            .check_call_permissions(pb::CheckCallPermissionsRequest {
                checks,
                include_evidence: self.evidence,
                ..Default::default()
            })
            .await;
        let results = match answer {
            Ok(a) => a.into_inner().results,
            Err(status) => {
                tally.error(status_error(&status));
                return Step::Sent;
            }
        };
        if results.len() != pairs.len() {
            tally.error(format!(
                "{} results for {} pairs",
                results.len(),
                pairs.len()
            ));
            return Step::Sent;
        }
        tally.items += pairs.len() as u64;
        for (i, r) in pairs.into_iter().zip(results) {
            match r.result {
                Some(pb::check_result::Result::Answer(a)) => verify(i, &a, tally),
                Some(pb::check_result::Result::Error(e)) => {
                    tally.error(format!("pair {i}: code {} {}", e.code, e.message))
                }
                None => tally.error(format!("pair {i}: empty result")),
            }
        }
        Step::Sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callgate::pb::Evidence;

    fn answer(state: ConsentState, allowed: bool) -> pb::CheckCallPermissionResponse {
        pb::CheckCallPermissionResponse {
            allowed,
            state: state as i32,
            ..Default::default()
        }
    }

    fn index_of(k: population::Kind) -> u64 {
        (0..).find(|&i| population::kind(i) == k).unwrap()
    }

    #[test]
    fn right_answers_are_counted_and_wrong_ones_are_errors() {
        use population::Kind::*;
        let mut t = Tally::default();
        verify(
            index_of(Permanent),
            &answer(ConsentState::GrantedPermanent, true),
            &mut t,
        );
        verify(
            index_of(Temporary),
            &answer(ConsentState::GrantedTemporary, true),
            &mut t,
        );
        verify(
            index_of(Denied),
            &answer(ConsentState::Denied, false),
            &mut t,
        );
        verify(
            index_of(Unknown),
            &answer(ConsentState::NoConsent, false),
            &mut t,
        );
        assert_eq!(
            (t.get("allowed"), t.get("denied"), t.get("no_consent")),
            (2, 1, 1)
        );
        assert_eq!(t.errors, 0);

        // A denied pair answered "allowed", and a right state with a wrong `allowed`.
        verify(
            index_of(Denied),
            &answer(ConsentState::GrantedPermanent, true),
            &mut t,
        );
        verify(
            index_of(Permanent),
            &answer(ConsentState::GrantedPermanent, false),
            &mut t,
        );
        assert_eq!(t.errors, 2);
        assert!(t.error_samples[0].contains("expected CONSENT_STATE_DENIED"));
    }

    #[test]
    fn floor_answers_are_counted_apart() {
        let mut t = Tally::default();
        let mut a = answer(ConsentState::GrantedPermanent, true);
        a.evidence = Some(Evidence {
            source: floor::SOURCE.into(),
            ..Default::default()
        });
        verify(index_of(population::Kind::Denied), &a, &mut t);
        assert_eq!((t.get("floor"), t.errors), (1, 0));
    }
}
