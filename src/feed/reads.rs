//! When the polls behind a feed's recent batches ended, by the database's
//! clock: what lets a cluster follower place a catch-up read among the
//! leader's batches. A batch whose poll ended before such a read began saw
//! nothing newer than the read did; one whose poll ended later may have.

use crate::cursor::Cursor;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// Batches remembered: more than a catch-up read lasts in polls.
const KEPT: usize = 1024;

/// The ends of recent polls, each with the head before its batch.
pub(super) struct Reads {
    recent: Mutex<VecDeque<(i64, Cursor)>>,
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
    /// A batch after `after`, whose poll ended at `ended_us`.
    pub(super) fn record(&self, ended_us: i64, after: Cursor) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back((ended_us, after));
        drop(recent);
        self.latest.send_replace(ended_us);
    }

    /// The head before the first batch whose poll ended at or after
    /// `began_us`, waiting up to `wait` for such a batch; `None` when none
    /// came, or the batches remembered do not reach back to it.
    pub(super) async fn boundary(&self, began_us: i64, wait: Duration) -> Option<Cursor> {
        let mut latest = self.latest.subscribe();
        tokio::time::timeout(wait, latest.wait_for(|ended| *ended >= began_us))
            .await
            .ok()?
            .ok()?;
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let first = recent.partition_point(|(ended, _)| *ended < began_us);
        // Every remembered poll ended after the read began: the boundary
        // is older than what is remembered.
        (first > 0 || recent.len() < KEPT)
            .then(|| recent.get(first).map(|(_, after)| *after))
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_boundary_is_the_head_before_the_first_poll_that_ended_after_the_read_began() {
        let reads = Reads::default();
        reads.record(10, Cursor::At(1));
        reads.record(20, Cursor::At(2));
        reads.record(30, Cursor::At(3));
        assert_eq!(
            reads.boundary(15, Duration::ZERO).await,
            Some(Cursor::At(2))
        );
        assert_eq!(
            reads.boundary(20, Duration::ZERO).await,
            Some(Cursor::At(2))
        );
        assert_eq!(reads.boundary(5, Duration::ZERO).await, Some(Cursor::At(1)));
        // None yet: it waits for one, then gives up.
        assert_eq!(reads.boundary(31, Duration::from_secs(1)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_boundary_waits_for_the_poll_that_shows_it() {
        let reads = std::sync::Arc::new(Reads::default());
        reads.record(10, Cursor::At(1));
        let later = reads.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            later.record(50, Cursor::At(7));
        });
        assert_eq!(
            reads.boundary(40, Duration::from_secs(1)).await,
            Some(Cursor::At(7))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_boundary_older_than_what_is_remembered_is_not_guessed() {
        let reads = Reads::default();
        for i in 0..KEPT as i64 + 5 {
            reads.record(100 + i, Cursor::At(i.into()));
        }
        assert_eq!(reads.boundary(0, Duration::ZERO).await, None);
        assert_eq!(
            reads.boundary(106, Duration::ZERO).await,
            Some(Cursor::At(6))
        );
    }
}
