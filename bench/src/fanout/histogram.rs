//! Latencies of millions of deliveries in a few hundred KiB: counts in
//! log-linear buckets of µs, each within 1.6 % of the values it holds,
//! shared by every client without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket `i < 128` holds exactly `i` µs; above, 64 buckets per power of two.
const SUB_BUCKETS: u64 = 64;
/// Enough buckets for 2^40 µs (12 days).
const BUCKETS: usize = 64 * 40;
/// Copies of the counts: clients on different threads mostly count into
/// different copies, rather than all into the same cache line.
const STRIPES: usize = 8;

/// Counts of latencies, each in its µs bucket.
pub struct Histogram {
    /// `STRIPES` runs of `BUCKETS` counts.
    counts: Vec<AtomicU64>,
    /// The largest value recorded, exactly.
    max: AtomicU64,
}

/// The latencies of a window, in µs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: (0..BUCKETS * STRIPES).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    /// Counts one value; `stripe` spreads writers over the copies.
    pub fn record(&self, stripe: usize, us: u64) {
        let at = (stripe % STRIPES) * BUCKETS + index(us);
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        if us > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(us, Ordering::Relaxed);
        }
    }

    /// Forgets every value (between windows, while nothing is recorded).
    pub fn clear(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
        self.max.store(0, Ordering::Relaxed);
    }

    /// p50, p99 and max of what was recorded; a percentile is the upper end
    /// of its bucket (at most the max).
    pub fn percentiles(&self) -> Percentiles {
        let mut merged = vec![0u64; BUCKETS];
        for (at, count) in self.counts.iter().enumerate() {
            merged[at % BUCKETS] += count.load(Ordering::Relaxed);
        }
        let count: u64 = merged.iter().sum();
        let max = self.max.load(Ordering::Relaxed);
        let rank = |p: f64| ((p * count as f64).ceil() as u64).max(1);
        let at_rank = |wanted: u64| {
            let mut seen = 0;
            for (i, &n) in merged.iter().enumerate() {
                seen += n;
                if seen >= wanted {
                    return upper(i).min(max);
                }
            }
            max
        };
        if count == 0 {
            return Percentiles::default();
        }
        Percentiles {
            p50: at_rank(rank(0.50)),
            p99: at_rank(rank(0.99)),
            max,
        }
    }
}

/// The bucket of a value.
fn index(us: u64) -> usize {
    if us < 2 * SUB_BUCKETS {
        return us as usize;
    }
    // `us >> shift` is in 64..128.
    let shift = 63 - us.leading_zeros() as u64 - 6;
    ((SUB_BUCKETS * shift + (us >> shift)) as usize).min(BUCKETS - 1)
}

/// The largest value of a bucket.
fn upper(index: usize) -> u64 {
    let index = index as u64;
    if index < 2 * SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let mantissa = index - SUB_BUCKETS * shift;
    ((mantissa + 1) << shift) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values() {
        for us in [
            0, 1, 127, 128, 129, 255, 256, 1000, 12_345, 250_000, 9_999_999,
        ] {
            let i = index(us);
            assert!(upper(i) >= us, "{us} above bucket {i}");
            assert!(i == 0 || upper(i - 1) < us, "{us} belongs below bucket {i}");
            assert!(upper(i) - us <= us / 60, "bucket {i} too wide for {us}");
        }
    }

    #[test]
    fn percentiles_of_a_spread() {
        let h = Histogram::new();
        for us in 1..=1000 {
            h.record(us as usize, us);
        }
        let p = h.percentiles();
        assert!((495..=510).contains(&p.p50), "{p:?}");
        assert!((985..=1000).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 1000);
    }
}
