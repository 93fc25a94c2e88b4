//! Gap judgement: which of the rows just read may be published, and which
//! must wait because an id below them may still commit.
//!
//! With concurrent writers, id 101 can become visible before id 100. The
//! poller publishes only the contiguous prefix after its cursor. At a gap it
//! holds the rest and notes what could still fill it (the writers the
//! database reports as active). A gap is settled when none of those writers
//! is alive *and* a grace window has passed (for writers that took their id
//! in an earlier transaction, which no database state reveals); the next
//! read then passes over what is still missing. A hard cap bounds holding.
//!
//! Pure logic over ids, with the clock passed in: the poller does the
//! database work. Imports nothing above it.

use crate::cursor::Cursor;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Settings of the gap judgement.
#[derive(Clone, Debug)]
pub struct GapPolicy {
    /// Hold rows after a gap until it settles; `false`: pass over gaps at
    /// once, the naive `id > last` poller (for measurement only).
    pub hold: bool,
    /// Difference between consecutive ids (the sequence's increment).
    pub step: i128,
    /// Whether the database can have concurrent writers (not SQLite).
    pub concurrent: bool,
    /// How long a gap stays open at least.
    pub grace: Duration,
    /// How long a gap may stay open at most.
    pub hold_cap: Duration,
}

/// The writers that could fill a gap, as the database reported them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Writers {
    /// Not asked yet.
    Pending,
    /// Transaction ids active when the gap was first seen.
    Known(HashSet<String>),
    /// The database cannot tell: only the grace window applies.
    Unknown,
}

/// Gaps seen at one moment: every missing id below `below` was allocated
/// before `seen_at`, so only writers active then (or grace-window writers)
/// can still fill it.
#[derive(Debug)]
struct Record {
    below: i128,
    seen_at: Instant,
    writers: Writers,
    settled: bool,
}

/// What the poller must ask the database before its next poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Which writers are active now: a new gap was just seen.
    Record,
    /// Whether the recorded writers are still alive: a gap's grace window
    /// has passed.
    Settle,
}

/// The judgement of one read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// How many of the rows read may be published now.
    pub emit: usize,
    /// The new cursor: the last row published, or `None` for unchanged.
    pub head: Option<Cursor>,
    /// Id ranges passed over, for the late-row detector.
    pub passed: Vec<(i128, i128)>,
    /// Gaps passed over because they were held past the cap, as the
    /// cursor before them and the row after them.
    pub capped: Vec<(Cursor, i128)>,
    /// Whether rows are being held back.
    pub holding: bool,
    /// A question for the database.
    pub probe: Option<Probe>,
}

enum Decision {
    Pass,
    PassCapped,
    Hold,
}

/// The open gaps of one feed.
#[derive(Debug)]
pub struct Gaps {
    policy: GapPolicy,
    records: Vec<Record>,
}

impl Gaps {
    pub fn new(policy: GapPolicy) -> Gaps {
        Gaps {
            policy,
            records: Vec::new(),
        }
    }

    /// When the oldest open gap was first seen.
    pub fn oldest(&self) -> Option<Instant> {
        self.records.iter().map(|r| r.seen_at).min()
    }

    /// Judges the `ids` of the rows read (in order, after `cursor`) at
    /// `now`. Rows above `watermark`, when there is one, are never
    /// published; gaps below it settle at once.
    pub fn judge(
        &mut self,
        cursor: Cursor,
        ids: &[i128],
        watermark: Option<i128>,
        now: Instant,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let mut prev = cursor;
        for (i, &id) in ids.iter().enumerate() {
            if watermark.is_some_and(|w| id > w) {
                verdict.holding = true;
                break;
            }
            if !self.contiguous(prev, id) {
                let missing = match prev {
                    // Below the first row ever seen: no lower end to track.
                    Cursor::Start => None,
                    Cursor::At(p) => Some((p + 1, id - 1)),
                };
                let below_watermark = watermark.is_some_and(|w| id <= w);
                let decision = if below_watermark {
                    Decision::Pass
                } else {
                    self.decide(id, ids, now, &mut verdict)
                };
                match decision {
                    Decision::Hold => {
                        verdict.holding = true;
                        break;
                    }
                    Decision::PassCapped => verdict.capped.push((prev, id)),
                    Decision::Pass => {}
                }
                verdict.passed.extend(missing);
            }
            prev = Cursor::At(id);
            verdict.emit = i + 1;
        }
        if verdict.emit > 0 {
            verdict.head = Some(prev);
        }
        self.records.retain(|r| Cursor::At(r.below) > prev);
        verdict
    }

    fn contiguous(&self, prev: Cursor, id: i128) -> bool {
        if !self.policy.hold || !self.policy.concurrent {
            return true;
        }
        match prev {
            Cursor::Start => false,
            Cursor::At(p) => id <= p.saturating_add(self.policy.step),
        }
    }

    /// Whether the gap just before `id` may be passed over now; if not,
    /// notes what to ask the database.
    fn decide(&mut self, id: i128, ids: &[i128], now: Instant, verdict: &mut Verdict) -> Decision {
        let policy = &self.policy;
        let Some(record) = self.records.iter_mut().find(|r| id <= r.below) else {
            self.records.push(Record {
                below: ids.last().copied().unwrap_or(id),
                seen_at: now,
                writers: Writers::Pending,
                settled: false,
            });
            verdict.probe = Some(Probe::Record);
            return Decision::Hold;
        };
        if record.settled {
            return Decision::Pass;
        }
        let open = now.saturating_duration_since(record.seen_at);
        if open >= policy.hold_cap {
            record.settled = true;
            return Decision::PassCapped;
        }
        if open >= policy.grace {
            verdict.probe = Some(match record.writers {
                Writers::Pending => Probe::Record,
                _ => Probe::Settle,
            });
        }
        Decision::Hold
    }

    /// Records the writers active now for gaps that have none yet; `None`
    /// when the database cannot tell. `top`, the greatest id visible just
    /// before they were listed, widens those gaps' reach: every id below it
    /// was allocated before the list was taken, so the same writers cover
    /// gaps past the rows read so far (one settling then releases a whole
    /// backlog, not one batch).
    pub fn record_writers(&mut self, active: Option<&HashSet<String>>, top: Cursor) {
        for record in self
            .records
            .iter_mut()
            .filter(|r| r.writers == Writers::Pending)
        {
            record.writers = match active {
                Some(active) => Writers::Known(active.clone()),
                None => Writers::Unknown,
            };
            if let Cursor::At(top) = top {
                record.below = record.below.max(top);
            }
        }
    }

    /// Settles every gap past its grace window none of whose writers is in
    /// `alive` (`None`: the database cannot tell, so time alone decides).
    /// The next read then passes over what is still missing. Returns
    /// whether any gap settled.
    pub fn settle(&mut self, alive: Option<&HashSet<String>>, now: Instant) -> bool {
        let grace = self.policy.grace;
        let mut any = false;
        for record in &mut self.records {
            if record.settled || now.saturating_duration_since(record.seen_at) < grace {
                continue;
            }
            record.settled = match (&record.writers, alive) {
                (Writers::Known(writers), Some(alive)) => writers.is_disjoint(alive),
                (Writers::Pending, _) => false,
                _ => true,
            };
            any |= record.settled;
        }
        any
    }
}

/// Ids passed over recently, re-checked now and then for rows that appear
/// anyway.
#[derive(Debug, Default)]
pub struct PassedOver {
    ranges: VecDeque<(i128, i128, Instant)>,
}

/// The most ranges remembered; older ones are forgotten first.
const MAX_PASSED_RANGES: usize = 10_000;

impl PassedOver {
    pub fn add(&mut self, ranges: &[(i128, i128)], now: Instant) {
        for &(low, high) in ranges {
            if low <= high {
                self.ranges.push_back((low, high, now));
            }
        }
        while self.ranges.len() > MAX_PASSED_RANGES {
            self.ranges.pop_front();
        }
    }

    /// Forgets ranges passed over before `now - window` and returns the rest.
    pub fn current(&mut self, window: Duration, now: Instant) -> Vec<(i128, i128)> {
        while self
            .ranges
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.2) > window)
        {
            self.ranges.pop_front();
        }
        self.ranges.iter().map(|&(l, h, _)| (l, h)).collect()
    }

    /// The current ranges in spans of at most `span` ids (a wider range
    /// alone), so that one query can check many nearby gaps.
    pub fn spans(ranges: &[(i128, i128)], span: i128) -> Vec<(i128, i128)> {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        let mut spans: Vec<(i128, i128)> = Vec::new();
        for (low, high) in sorted {
            match spans.last_mut() {
                Some(last) if high - last.0 < span => last.1 = last.1.max(high),
                _ => spans.push((low, high)),
            }
        }
        spans
    }

    /// Removes ids that turned up, so that each late row is delivered once.
    pub fn found(&mut self, ids: &[i128]) {
        let mut kept = VecDeque::with_capacity(self.ranges.len());
        for (low, high, at) in self.ranges.drain(..) {
            let mut start = low;
            for &id in ids.iter().filter(|&&id| id >= low && id <= high) {
                if start < id {
                    kept.push_back((start, id - 1, at));
                }
                start = id + 1;
            }
            if start <= high {
                kept.push_back((start, high, at));
            }
        }
        self.ranges = kept;
    }
}

#[cfg(test)]
mod tests;
