//! When the polls behind a feed's recent batches read the table, by the
//! database's clock: what lets a cluster follower place a catch-up read
//! among its leader's batches. A batch whose poll read before the catch-up
//! saw nothing newer than it did, one that read after it nothing older; one
//! that read meanwhile could have seen either, so such a catch-up is read
//! again.

use crate::cursor::Cursor;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Batches remembered: more than a catch-up read lasts in polls.
const KEPT: usize = 1024;

/// When a read of the table began and ended, in µs since 1970 by the
/// database's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSpan {
    pub began_us: i64,
    pub ended_us: i64,
}

impl ReadSpan {
    fn overlaps(&self, other: &ReadSpan) -> bool {
        self.began_us <= other.ended_us && other.began_us <= self.ended_us
    }
}

/// Where a catch-up read falls among the polls.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Boundary {
    /// After the polls up to this head, before the next.
    At(Cursor),
    /// A poll read while it did.
    Overlapped,
    /// No poll came to tell, or those remembered do not reach back.
    Unknown,
}

/// The reads of recent polls, each with the head before its batch.
pub(super) struct Reads {
    recent: Mutex<VecDeque<(ReadSpan, Cursor)>>,
    /// When the latest poll began its read.
    latest: watch::Sender<i64>,
}

impl Default for Reads {
    fn default() -> Reads {
        Reads {
            recent: Mutex::new(VecDeque::new()),
            latest: watch::channel(i64::MIN).0,
        }
    }
}

impl Reads {
    /// A batch after `after`, whose poll read during `read`.
    pub(super) fn record(&self, read: ReadSpan, after: Cursor) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back((read, after));
        drop(recent);
        self.latest.send_replace(read.began_us);
    }

    /// Where a catch-up that read during `read` joins the batches: the
    /// head before the first poll that read after it, once a poll that
    /// began after it shows that none is still to come (waiting up to
    /// `wait` for one).
    pub(super) async fn boundary(&self, read: ReadSpan, wait: Duration) -> Boundary {
        let mut latest = self.latest.subscribe();
        let came = tokio::time::timeout(wait, latest.wait_for(|began| *began > read.ended_us));
        if !matches!(came.await, Ok(Ok(_))) {
            return Boundary::Unknown;
        }
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.iter().any(|(poll, _)| poll.overlaps(&read)) {
            return Boundary::Overlapped;
        }
        let first = recent.partition_point(|(poll, _)| poll.ended_us < read.began_us);
        if first == 0 && recent.len() == KEPT {
            return Boundary::Unknown;
        }
        recent
            .get(first)
            .map_or(Boundary::Unknown, |(_, after)| Boundary::At(*after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(began_us: i64, ended_us: i64) -> ReadSpan {
        ReadSpan { began_us, ended_us }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_between_two_polls_joins_before_the_second() {
        let reads = Reads::default();
        reads.record(span(10, 12), Cursor::At(1));
        reads.record(span(20, 22), Cursor::At(2));
        reads.record(span(30, 32), Cursor::At(3));
        let wait = Duration::ZERO;
        assert_eq!(
            reads.boundary(span(14, 18), wait).await,
            Boundary::At(Cursor::At(2))
        );
        assert_eq!(
            reads.boundary(span(5, 8), wait).await,
            Boundary::At(Cursor::At(1))
        );
        assert_eq!(
            reads.boundary(span(23, 29), wait).await,
            Boundary::At(Cursor::At(3))
        );
        // Read while a poll did: either could have seen the newer state.
        assert_eq!(
            reads.boundary(span(11, 15), wait).await,
            Boundary::Overlapped
        );
        assert_eq!(
            reads.boundary(span(15, 20), wait).await,
            Boundary::Overlapped
        );
        // No poll began after it yet: it waits for one, then gives up.
        let late = reads.boundary(span(31, 35), Duration::from_secs(1)).await;
        assert_eq!(late, Boundary::Unknown);
    }

    #[tokio::test(start_paused = true)]
    async fn a_boundary_waits_for_a_poll_that_began_after_the_read() {
        let reads = std::sync::Arc::new(Reads::default());
        reads.record(span(10, 12), Cursor::At(1));
        let later = reads.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.record(span(50, 55), Cursor::At(7));
        });
        let read = span(40, 45);
        let boundary = reads.boundary(read, Duration::from_secs(1)).await;
        assert_eq!(boundary, Boundary::At(Cursor::At(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_boundary_older_than_what_is_remembered_is_not_guessed() {
        let reads = Reads::default();
        for i in 0..KEPT as i64 + 5 {
            reads.record(span(100 + 2 * i, 100 + 2 * i), Cursor::At(i.into()));
        }
        let wait = Duration::ZERO;
        assert_eq!(reads.boundary(span(0, 1), wait).await, Boundary::Unknown);
        assert_eq!(
            reads.boundary(span(111, 111), wait).await,
            Boundary::At(Cursor::At(6))
        );
    }
}
