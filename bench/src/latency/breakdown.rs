//! Where the time of a delivery goes, per measured row.

use super::Written;
use crate::percentile;

/// Per measured row, in µs, sorted: the parts of a delivery's latency.
#[derive(Default)]
pub(super) struct Breakdown {
    /// The INSERT's round trip, commit included.
    insert: Vec<i64>,
    /// From the INSERT to the first client that got the row.
    first: Vec<i64>,
    /// From the first client that got the row to the last.
    spread: Vec<i64>,
}

impl Breakdown {
    /// Gathers each row's fastest and slowest client.
    pub(super) fn new(written: &[Written], logs: &[Vec<(i64, i64)>]) -> Breakdown {
        let mut fastest = vec![i64::MAX; written.len()];
        let mut slowest = vec![i64::MIN; written.len()];
        for &(id, latency) in logs.iter().flatten() {
            if let Ok(i) = written.binary_search_by_key(&id, |w| w.id) {
                fastest[i] = fastest[i].min(latency);
                slowest[i] = slowest[i].max(latency);
            }
        }
        let mut b = Breakdown::default();
        for (i, w) in written.iter().enumerate() {
            b.insert.push(w.committed_us - w.sent_us);
            if fastest[i] <= slowest[i] {
                b.first.push(fastest[i]);
                b.spread.push(slowest[i] - fastest[i]);
            }
        }
        for part in [&mut b.insert, &mut b.first, &mut b.spread] {
            part.sort_unstable();
        }
        b
    }
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |part: &[i64], p| percentile(part, p) as f64 / 1000.0;
        let parts = [
            ("INSERT", &self.insert),
            ("to first client", &self.first),
            ("first to last client", &self.spread),
        ];
        let mut sep = "p50/p99 ms per row:";
        for (name, part) in parts {
            write!(f, "{sep} {name} {:.1}/{:.1}", ms(part, 0.5), ms(part, 0.99))?;
            sep = ",";
        }
        Ok(())
    }
}
