//! A latency histogram cheap enough to leave on: two relaxed atomic additions per call (its
//! bucket, and the sum that Prometheus histograms report).
//!
//! Buckets are log-linear: exact below 16 µs, then 16 linear steps per power of two, so a
//! percentile is within about 6% of the true value, from 1 µs to about 12 days.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const SUB_BUCKETS: usize = 16;
const SUB_BITS: u32 = 4;
const MAX_POWER: u32 = 40;
const BUCKETS: usize = SUB_BUCKETS + (MAX_POWER - SUB_BITS + 1) as usize * SUB_BUCKETS;

#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

/// The histogram's buckets read as a Prometheus histogram's: how many values fall at or
/// below each bound (cumulative), how many in all, and their sum.
#[derive(Debug, Clone, PartialEq)]
pub struct Cumulative {
    pub at_or_below: Vec<u64>,
    pub count: u64,
    pub sum: Duration,
}

fn index(micros: u64) -> usize {
    if micros < SUB_BUCKETS as u64 {
        return micros as usize;
    }
    let power = 63 - micros.leading_zeros(); // >= SUB_BITS
    let shift = power - SUB_BITS;
    let sub = ((micros >> shift) as usize) - SUB_BUCKETS;
    (SUB_BUCKETS + (power - SUB_BITS) as usize * SUB_BUCKETS + sub).min(BUCKETS - 1)
}

/// The smallest value, in microseconds, that falls in a bucket.
fn lower_edge(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let step = (index - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (index - SUB_BUCKETS) % SUB_BUCKETS;
    ((SUB_BUCKETS + sub) as u64) << step
}

/// The middle of a bucket, in microseconds.
fn midpoint(index: usize) -> f64 {
    if index < SUB_BUCKETS {
        return index as f64;
    }
    let step = (index - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (index - SUB_BUCKETS) % SUB_BUCKETS;
    let width = (1u64 << step) as f64;
    (SUB_BUCKETS + sub) as f64 * width + width / 2.0
}

impl LatencyHistogram {
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[index(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The exact sum of the recorded latencies (to the microsecond).
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The latency below which `fraction` (0 to 1) of the recorded calls fall, if any were.
    pub fn percentile(&self, fraction: f64) -> Option<Duration> {
        merged_percentile(&[self], fraction)
    }
}

/// Several histograms (a pool's connections) read against `bounds` (ascending). A bucket
/// counts at or below a bound when every value it holds is, so a value less than a
/// bucket's width (about 6%) under a bound is counted under the next one: counts are never
/// over-stated, and `count` and `sum` are exact.
pub fn cumulative(histograms: &[&LatencyHistogram], bounds: &[Duration]) -> Cumulative {
    let mut at_or_below = vec![0u64; bounds.len()];
    let mut count = 0u64;
    let mut sum_micros = 0u64;
    for histogram in histograms {
        sum_micros = sum_micros.saturating_add(histogram.sum_micros.load(Ordering::Relaxed));
        for (i, bucket) in histogram.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            count += n;
            // The largest value the bucket holds (the last bucket holds everything above).
            let highest = match i + 1 < BUCKETS {
                true => Duration::from_micros(lower_edge(i + 1) - 1),
                false => Duration::MAX,
            };
            for (slot, bound) in at_or_below.iter_mut().zip(bounds) {
                if highest <= *bound {
                    *slot += n;
                }
            }
        }
    }
    Cumulative {
        at_or_below,
        count,
        sum: Duration::from_micros(sum_micros),
    }
}

/// A percentile over the calls recorded in several histograms (a pool's connections).
pub fn merged_percentile(histograms: &[&LatencyHistogram], fraction: f64) -> Option<Duration> {
    let mut counts = vec![0u64; BUCKETS];
    for histogram in histograms {
        for (sum, bucket) in counts.iter_mut().zip(histogram.buckets.iter()) {
            *sum += bucket.load(Ordering::Relaxed);
        }
    }
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * fraction).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(Duration::from_secs_f64(midpoint(i) / 1e6));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range_in_order() {
        let mut last = 0;
        for micros in [0u64, 1, 15, 16, 17, 31, 32, 100, 1_000, 1_000_000, u64::MAX] {
            let i = index(micros);
            assert!(i >= last, "{micros} went back to bucket {i}");
            assert!(i < BUCKETS);
            last = i;
        }
    }

    #[test]
    fn a_bucket_midpoint_is_within_seven_percent() {
        for micros in [20u64, 100, 999, 12_345, 4_000_000] {
            let estimate = midpoint(index(micros));
            let error = (estimate - micros as f64).abs() / micros as f64;
            assert!(error < 0.07, "{micros} µs read back as {estimate}");
        }
    }

    #[test]
    fn bucket_edges_follow_the_index() {
        for micros in [0u64, 15, 16, 17, 100, 999, 1_000, 123_456] {
            let i = index(micros);
            assert!(
                lower_edge(i) <= micros && micros < lower_edge(i + 1),
                "{micros}"
            );
        }
    }

    #[test]
    fn cumulative_counts_never_overstate_and_total_exactly() {
        let histogram = LatencyHistogram::default();
        for micros in [500u64, 900, 1_000, 4_000, 20_000] {
            histogram.record(Duration::from_micros(micros));
        }
        let bounds = [1, 5, 10].map(Duration::from_millis);
        let read = cumulative(&[&histogram], &bounds);
        assert_eq!(read.count, 5);
        assert_eq!(read.sum, Duration::from_micros(26_400));
        // 1000 µs shares its bucket (992..1024 µs) with values over 1 ms: it counts under 5 ms.
        assert_eq!(read.at_or_below, vec![2, 4, 4]);
    }

    #[test]
    fn percentiles_follow_the_recorded_calls() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.percentile(0.5), None);
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 100);
        let p50 = histogram.percentile(0.5).unwrap().as_secs_f64() * 1000.0;
        let p99 = histogram.percentile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((47.0..53.0).contains(&p50), "p50 {p50}");
        assert!((93.0..105.0).contains(&p99), "p99 {p99}");
    }
}
