//! A fixed-size log-linear latency histogram, in microseconds.
//!
//! Values below [`LINEAR`] µs each get their own bucket (exact). Above that, every power of two
//! is split into [`HALF`] equal buckets, so a bucket is at most 1/128 of its lower bound wide and
//! a reported percentile (the bucket's midpoint) is within 0.4% of the true value. Values above
//! [`MAX_MICROS`] (about 71 minutes) are clamped into the last bucket; `max` stays exact.
//!
//! Recording is an index computation and an increment, so each worker keeps its own histogram
//! and they are merged at the end; no locks on the hot path.

use std::time::Duration;

/// Bits of precision: values below `2^SUB_BITS` are exact.
const SUB_BITS: u32 = 8;
/// Values below this many microseconds have one bucket each.
pub const LINEAR: u64 = 1 << SUB_BITS;
/// Buckets per power of two above [`LINEAR`].
pub const HALF: u64 = LINEAR / 2;
/// Largest value told apart from larger ones: 2^32 - 1 µs.
pub const MAX_MICROS: u64 = (1 << 32) - 1;
/// Number of buckets needed to reach [`MAX_MICROS`].
const BUCKETS: usize = index(MAX_MICROS) + 1;

/// The bucket of a value (µs).
const fn index(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // floor(log2 v) >= SUB_BITS
    let shift = exp - (SUB_BITS - 1);
    let sub = v >> shift; // in [HALF, LINEAR)
    (shift as u64 * HALF + sub) as usize
}

/// The lowest value and width of a bucket.
const fn bucket(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < LINEAR {
        return (i, 1);
    }
    let shift = i / HALF - 1;
    let sub = i % HALF + HALF;
    (sub << shift, 1 << shift)
}

/// Latency distribution of one scenario.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min())
            .field("max", &self.max)
            .finish()
    }
}

impl Histogram {
    /// Records one value in microseconds.
    pub fn record_micros(&mut self, v: u64) {
        self.counts[index(v.min(MAX_MICROS))] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Records one duration, truncated to whole microseconds.
    pub fn record(&mut self, d: Duration) {
        self.record_micros(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Adds every value recorded in `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    /// Largest value recorded, exact.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Arithmetic mean in microseconds (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// The value at quantile `q` (0.5 = median, 0.999 = p99.9), in microseconds: the midpoint of
    /// the bucket holding the `ceil(q * count)`-th smallest value, kept within [min, max].
    /// Returns 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, width) = bucket(i);
                return (low + (width - 1) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps_or_overlaps() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (low, width) = bucket(i);
            assert_eq!(low, expected_low, "bucket {i}");
            assert_eq!(index(low), i);
            assert_eq!(index(low + width - 1), i);
            expected_low = low + width;
        }
        assert_eq!(expected_low, MAX_MICROS + 1);
    }

    #[test]
    fn every_bucket_is_narrow_relative_to_its_values() {
        for i in LINEAR as usize..BUCKETS {
            let (low, width) = bucket(i);
            assert!(width * HALF <= low, "bucket {i}: {low}+{width}");
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record_micros(v);
        }
        assert_eq!(h.quantile(0.5), 50);
        assert_eq!(h.quantile(0.9), 90);
        assert_eq!(h.quantile(0.99), 99);
        assert_eq!(h.quantile(1.0), 100);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), 100);
        assert!((h.mean() - 50.5).abs() < 1e-9);
    }

    #[test]
    fn quantiles_of_a_wide_range_are_within_half_a_percent() {
        // 1 µs .. 1 s in uniform steps: the exact q-quantile is known.
        let mut h = Histogram::default();
        let n = 1_000_000u64;
        for v in 1..=n {
            h.record_micros(v);
        }
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999] {
            let exact = (q * n as f64).ceil();
            let got = h.quantile(q) as f64;
            let err = (got - exact).abs() / exact;
            assert!(err < 0.005, "q={q}: got {got}, exact {exact}, err {err}");
        }
    }

    #[test]
    fn quantiles_of_a_skewed_distribution() {
        // 99% fast (200 µs), 1% slow (50 ms): p99 is fast, p99.9 is slow.
        let mut h = Histogram::default();
        for _ in 0..9_900 {
            h.record_micros(200);
        }
        for _ in 0..100 {
            h.record_micros(50_000);
        }
        assert_eq!(h.quantile(0.5), 200);
        assert_eq!(h.quantile(0.99), 200);
        let p999 = h.quantile(0.999) as f64;
        assert!((p999 - 50_000.0).abs() / 50_000.0 < 0.005, "{p999}");
    }

    #[test]
    fn merging_equals_recording_into_one() {
        let (mut a, mut b, mut both) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for v in (0..50_000u64).map(|i| i * 37 % 20_011) {
            if v % 3 == 0 {
                a.record_micros(v);
            } else {
                b.record_micros(v);
            }
            both.record_micros(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), both.count());
        assert_eq!(a.min(), both.min());
        assert_eq!(a.max(), both.max());
        for q in [0.1, 0.5, 0.9, 0.99, 0.999] {
            assert_eq!(a.quantile(q), both.quantile(q));
        }
    }

    #[test]
    fn huge_values_are_clamped_but_max_is_exact() {
        let mut h = Histogram::default();
        h.record(Duration::from_secs(10 * 3600));
        assert_eq!(h.max(), 36_000_000_000);
        assert_eq!(h.count(), 1);
        assert_eq!(h.quantile(0.5), h.max());
    }

    #[test]
    fn an_empty_histogram_reports_zeros() {
        let h = Histogram::default();
        assert_eq!(
            (h.quantile(0.99), h.min(), h.max(), h.mean()),
            (0, 0, 0, 0.0)
        );
    }
}
