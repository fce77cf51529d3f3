//! The `subscribers` scenario: what many open StreamGrants streams cost the service.
//!
//! Opens `--count` subscriptions (spread over `--connections` HTTP/2 connections, since a
//! server accepts a bounded number of streams per connection), posts `--events` grants for a
//! business of its own, and waits until every subscriber has received every one of them. With
//! `--pid` it reads the service's resident memory (`VmRSS`, and the peak `VmHWM`) from
//! `/proc/<pid>/status` before the streams open and once all events are delivered, so the figure
//! is the service's memory with that many subscribers, not the client's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::BenchError;
use crate::grpc::Client;
use crate::http::WebhookClient;
use crate::population::{self, Kind};
use callgate::pb;

/// The business the scenario posts for, outside the population and the other scenarios.
pub const SUBSCRIBERS_BUSINESS: &str = "+919200000000";

/// Resident and peak memory of a process, in KiB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid` (Linux only).
pub fn memory_of(pid: u32) -> Result<Memory, BenchError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| BenchError::Invalid(format!("cannot read /proc/{pid}/status: {e}")))?;
    parse_status(&status)
        .ok_or_else(|| BenchError::Invalid(format!("/proc/{pid}/status has no VmRSS/VmHWM lines")))
}

fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// What a run observed.
#[derive(Debug)]
pub struct Outcome {
    pub subscribers: usize,
    pub events: u64,
    /// Events received, over all subscribers (want `subscribers * events`).
    pub delivered: u64,
    /// From the first post to the last subscriber's last event.
    pub fan_out: Duration,
    pub before: Option<Memory>,
    pub after: Option<Memory>,
}

/// Opens the subscriptions, posts the grants and waits (bounded by `limit`) for every delivery.
pub async fn run(
    clients: Vec<Client>,
    webhooks: WebhookClient,
    count: usize,
    events: u64,
    pid: Option<u32>,
    limit: Duration,
) -> Result<Outcome, BenchError> {
    let before = pid.map(memory_of).transpose()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let last = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let mut client = clients[i % clients.len()].clone();
        let mut stream = client
            .stream_grants(pb::StreamGrantsRequest {
                business_numbers: vec![SUBSCRIBERS_BUSINESS.to_owned()],
                ..Default::default()
            })
            .await
            .map_err(BenchError::Subscribe)?
            .into_inner();
        let (delivered, last) = (delivered.clone(), last.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = 0;
            while mine < events {
                match stream.message().await {
                    Ok(Some(e)) if e.kind == pb::EventKind::Granted as i32 => {
                        mine += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Some(_)) => {} // checkpoints
                    _ => return,
                }
            }
            let now = Instant::now();
            let mut last = last.lock().expect("lock poisoned");
            *last = Some(last.map_or(now, |l: Instant| l.max(now)));
        }));
    }
    let start = Instant::now();
    let run = crate::run_id();
    let now = chrono::Utc::now();
    for n in 0..events {
        let body = population::webhook_body(
            SUBSCRIBERS_BUSINESS,
            &population::propagation_customer(n),
            &format!("subs-{run}-{n}"),
            Kind::Permanent,
            now,
        );
        webhooks.post(body).await.map_err(BenchError::Invalid)?;
    }
    let all = futures_all(tasks);
    let complete = tokio::time::timeout(limit, all).await.is_ok();
    let fan_out = last
        .lock()
        .expect("lock poisoned")
        .map_or(start.elapsed(), |l| l - start);
    let after = pid.map(memory_of).transpose()?;
    let delivered = delivered.load(Ordering::Relaxed);
    if !complete {
        tracing::warn!(
            delivered,
            "not every subscriber received every event in time"
        );
    }
    Ok(Outcome {
        subscribers: count,
        events,
        delivered,
        fan_out,
        before,
        after,
    })
}

async fn futures_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_memory_lines_are_read() {
        let status = "Name:\tcallgate\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 40960,
                hwm_kib: 51234
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }
}
