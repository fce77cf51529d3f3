//! What a scenario saw, printed as one line of text or one JSON object per scenario.

use std::time::Duration;

use serde_json::json;

use crate::runner::Measured;

/// How many distinct error messages are kept for printing.
const ERROR_SAMPLES: usize = 5;

/// Counts of what the answers said, plus errors. Labels are few and static ("allowed",
/// "denied", ...), so a small vector beats a map.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    counts: Vec<(&'static str, u64)>,
    /// Units of work done, when a request carries more than one (pairs of a batch).
    pub items: u64,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

impl Tally {
    pub fn count(&mut self, label: &'static str, n: u64) {
        match self.counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += n,
            None => self.counts.push((label, n)),
        }
    }

    pub fn get(&self, label: &str) -> u64 {
        self.counts
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, c)| *c)
    }

    /// Counts one error and keeps its message if it is new and there is room.
    pub fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&message) {
            self.error_samples.push(message);
        }
    }

    pub fn merge(&mut self, other: Tally) {
        for (label, n) in other.counts {
            self.count(label, n);
        }
        self.items += other.items;
        self.errors += other.errors;
        for m in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&m) {
                self.error_samples.push(m);
            }
        }
    }
}

/// One scenario's result.
#[derive(Debug)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub concurrency: usize,
    /// HTTP/2 channels (gRPC scenarios only).
    pub connections: Option<usize>,
    pub measured: Measured,
}

fn ms(micros: u64) -> String {
    format!("{:.3}ms", micros as f64 / 1000.0)
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// The percentiles every report carries, with their names.
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];

impl Report {
    pub fn requests(&self) -> u64 {
        self.measured.latency.count()
    }

    /// Requests per second over the measured window.
    pub fn throughput(&self) -> f64 {
        per_sec(self.requests(), self.measured.elapsed)
    }

    pub fn quantile(&self, q: f64) -> u64 {
        self.measured.latency.quantile(q)
    }

    pub fn errors(&self) -> u64 {
        self.measured.tally.errors
    }

    /// One line: what ran, how fast, latency percentiles, errors, answer counts.
    pub fn text(&self) -> String {
        let m = &self.measured;
        let mut line = format!(
            "{:<12} target={} concurrency={}",
            self.scenario, self.target, self.concurrency
        );
        if let Some(c) = self.connections {
            line += &format!(" connections={c}");
        }
        line += &format!(
            " requests={} in {:.2}s {:.1} req/s",
            self.requests(),
            m.elapsed.as_secs_f64(),
            self.throughput()
        );
        if m.tally.items > 0 {
            line += &format!(" ({:.1} items/s)", per_sec(m.tally.items, m.elapsed));
        }
        for (name, q) in QUANTILES {
            line += &format!(" {name}={}", ms(self.quantile(q)));
        }
        line += &format!(" max={} errors={}", ms(m.latency.max()), m.tally.errors);
        for (label, n) in &m.tally.counts {
            line += &format!(" {label}={n}");
        }
        line
    }

    /// The same as [`Report::text`], as a JSON object; latencies in microseconds.
    pub fn json(&self) -> serde_json::Value {
        let m = &self.measured;
        let mut v = json!({
            "scenario": self.scenario,
            "target": self.target,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "requests": self.requests(),
            "elapsed_secs": m.elapsed.as_secs_f64(),
            "requests_per_sec": self.throughput(),
            "items": m.tally.items,
            "items_per_sec": per_sec(m.tally.items, m.elapsed),
            "latency_us": {
                "min": m.latency.min(),
                "mean": m.latency.mean(),
                "max": m.latency.max(),
            },
            "errors": m.tally.errors,
            "error_samples": m.tally.error_samples,
            "counts": m.tally.counts.iter().map(|(l, n)| (l.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
        });
        for (name, q) in QUANTILES {
            v["latency_us"][name] = self.quantile(q).into();
        }
        v
    }
}

/// How a target compares with the floor measured with the same parameters.
pub struct Ratio<'a> {
    pub target: &'a Report,
    pub floor: &'a Report,
}

impl Ratio<'_> {
    fn ratio(a: f64, b: f64) -> f64 {
        if b == 0.0 { f64::NAN } else { a / b }
    }

    fn delta(&self, q: f64) -> (i64, f64) {
        let (t, f) = (self.target.quantile(q), self.floor.quantile(q));
        (t as i64 - f as i64, Self::ratio(t as f64, f as f64))
    }

    /// `ratio check/floor throughput=0.41x p50=+0.210ms (2.3x) p99=+0.800ms (1.9x)`
    pub fn text(&self) -> String {
        let mut line = format!(
            "{:<12} {}/{} throughput={:.2}x",
            "ratio",
            self.target.scenario,
            self.floor.scenario,
            Self::ratio(self.target.throughput(), self.floor.throughput())
        );
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            let (d, r) = self.delta(q);
            line += &format!(" {name}={:+.3}ms ({r:.2}x)", d as f64 / 1000.0);
        }
        line
    }

    pub fn json(&self) -> serde_json::Value {
        let (p50_delta, p50_ratio) = self.delta(0.5);
        let (p99_delta, p99_ratio) = self.delta(0.99);
        json!({
            "scenario": "ratio",
            "target": self.target.scenario,
            "floor": self.floor.scenario,
            "throughput_ratio": Self::ratio(self.target.throughput(), self.floor.throughput()),
            "p50_delta_us": p50_delta,
            "p50_ratio": p50_ratio,
            "p99_delta_us": p99_delta,
            "p99_ratio": p99_ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_merge_counts_and_keep_few_distinct_errors() {
        let mut a = Tally::default();
        a.count("allowed", 2);
        a.error("boom".into());
        let mut b = Tally::default();
        b.count("allowed", 3);
        b.count("denied", 1);
        for i in 0..10 {
            b.error(format!("e{i}"));
        }
        b.error("boom".into());
        a.merge(b);
        assert_eq!((a.get("allowed"), a.get("denied"), a.get("x")), (5, 1, 0));
        assert_eq!(a.errors, 12);
        assert_eq!(a.error_samples.len(), ERROR_SAMPLES);
        assert_eq!(a.error_samples[0], "boom");
    }

    #[test]
    fn a_report_line_names_every_figure() {
        let mut measured = Measured {
            elapsed: Duration::from_secs(2),
            ..Measured::default()
        };
        // Values below 256 µs are recorded exactly.
        for v in 1..=200 {
            measured.latency.record_micros(v);
        }
        measured.tally.count("allowed", 200);
        let r = Report {
            scenario: "check".into(),
            target: "127.0.0.1:1".into(),
            concurrency: 8,
            connections: Some(2),
            measured,
        };
        let line = r.text();
        for part in [
            "check",
            "concurrency=8",
            "connections=2",
            "requests=200",
            "100.0 req/s",
            "p50=0.100ms",
            "p99.9=0.200ms",
            "max=0.200ms",
            "errors=0",
            "allowed=200",
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
        assert_eq!(r.json()["latency_us"]["p90"], 180);
        let ratio = Ratio {
            target: &r,
            floor: &r,
        };
        assert!(
            ratio
                .text()
                .contains("throughput=1.00x p50=+0.000ms (1.00x)")
        );
    }
}
