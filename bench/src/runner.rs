//! The closed loop: `concurrency` workers each send one request, await it, record its latency,
//! and repeat, until the request budget or the time budget runs out, whichever comes first.
//!
//! Requests started during the warm-up are not counted. The measured window starts when the
//! warm-up ends and stops when the last worker finishes; throughput is measured requests over
//! that window.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::histogram::Histogram;
use crate::report::Tally;

/// How long and how much to run.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Requests in flight at once (number of workers).
    pub concurrency: usize,
    /// Most measured requests.
    pub requests: u64,
    /// Longest measured time (after the warm-up).
    pub duration: Duration,
    /// Time spent before measuring.
    pub warmup: Duration,
}

/// What one [`Worker::call`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent a request and got its answer; the runner records the whole call's duration.
    Sent,
    /// Sent a request; record this latency instead (the scenario times one part of the call).
    Timed(Duration),
    /// Sent nothing: there is no work left (a finite job such as `preload`). The worker stops.
    Exhausted,
}

/// One closed-loop worker. `call` sends one request and awaits its answer, recording what it
/// saw into `tally` (answer counts, errors; an error is still a [`Step::Sent`]).
pub trait Worker: Send + 'static {
    fn call(&mut self, tally: &mut Tally) -> impl Future<Output = Step> + Send;
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Measured {
    pub latency: Histogram,
    pub tally: Tally,
    /// The measured window.
    pub elapsed: Duration,
}

impl Measured {
    /// Adds another run of the same scenario (rounds): latencies, counts and measured time.
    pub fn add(&mut self, other: Measured) {
        self.latency.merge(&other.latency);
        self.tally.merge(other.tally);
        self.elapsed += other.elapsed;
    }
}

/// Runs `workers` (one per unit of concurrency) within `bounds`.
pub async fn run<W: Worker>(bounds: Bounds, workers: Vec<W>) -> Measured {
    let start = Instant::now();
    let measure_from = start + bounds.warmup;
    let deadline = measure_from + bounds.duration;
    let issued = Arc::new(AtomicU64::new(0));

    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            let issued = issued.clone();
            let budget = bounds.requests;
            tokio::spawn(async move {
                let mut latency = Histogram::default();
                let mut tally = Tally::default();
                let mut scratch = Tally::default();
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let measuring = t0 >= measure_from;
                    if measuring && issued.fetch_add(1, Ordering::Relaxed) >= budget {
                        break;
                    }
                    let into = if measuring { &mut tally } else { &mut scratch };
                    let took = match worker.call(into).await {
                        Step::Exhausted => break,
                        Step::Sent => t0.elapsed(),
                        Step::Timed(d) => d,
                    };
                    if measuring {
                        latency.record(took);
                    }
                }
                (latency, tally)
            })
        })
        .collect();

    let mut measured = Measured::default();
    for task in tasks {
        match task.await {
            Ok((latency, tally)) => {
                measured.latency.merge(&latency);
                measured.tally.merge(tally);
            }
            Err(e) => measured.tally.error(format!("worker task failed: {e}")),
        }
    }
    measured.elapsed = Instant::now().saturating_duration_since(measure_from);
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleeper {
        left: Option<u64>,
    }

    impl Worker for Sleeper {
        async fn call(&mut self, tally: &mut Tally) -> Step {
            if let Some(left) = &mut self.left {
                if *left == 0 {
                    return Step::Exhausted;
                }
                *left -= 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            tally.count("ok", 1);
            Step::Sent
        }
    }

    fn bounds(requests: u64, duration_ms: u64) -> Bounds {
        Bounds {
            concurrency: 4,
            requests,
            duration: Duration::from_millis(duration_ms),
            warmup: Duration::ZERO,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_budget_stops_a_run() {
        let workers = (0..4).map(|_| Sleeper { left: None }).collect();
        let m = run(bounds(100, 60_000), workers).await;
        assert_eq!(m.latency.count(), 100);
        assert_eq!(m.tally.get("ok"), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_budget_stops_a_run() {
        let workers = (0..4).map(|_| Sleeper { left: None }).collect();
        let m = run(bounds(u64::MAX, 50), workers).await;
        // 4 workers, 1 ms each, 50 ms: about 200 requests (one more per worker at the edge).
        assert!(
            (196..=204).contains(&m.latency.count()),
            "{}",
            m.latency.count()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn workers_out_of_work_stop_early() {
        let workers = (0..4).map(|_| Sleeper { left: Some(5) }).collect();
        let m = run(bounds(u64::MAX, 60_000), workers).await;
        assert_eq!(m.latency.count(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn rounds_add_up() {
        let mut total = Measured::default();
        for _ in 0..3 {
            let workers = (0..4).map(|_| Sleeper { left: None }).collect();
            total.add(run(bounds(40, 60_000), workers).await);
        }
        assert_eq!(total.latency.count(), 120);
        assert_eq!(total.tally.get("ok"), 120);
        // 40 requests over 4 workers at 1 ms each: 10 ms a round.
        assert_eq!(total.elapsed, Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_warmup_is_not_counted() {
        let workers = (0..4).map(|_| Sleeper { left: None }).collect();
        let mut b = bounds(u64::MAX, 20);
        b.warmup = Duration::from_millis(30);
        let m = run(b, workers).await;
        assert!(m.latency.count() <= 4 * 21, "{}", m.latency.count());
        assert_eq!(m.tally.get("ok"), m.latency.count());
    }
}
