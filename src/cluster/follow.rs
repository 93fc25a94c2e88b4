//! A follower: applies the bus's entries to its own feed, in order. An
//! entry that starts past the feed's head shows that entries are missing
//! (the bus lost or trimmed them, or the leader appended none while the bus
//! was down): that span is read from the database first, so a missing
//! entry delays rows, never skips them. Entries at or below the head (a
//! second leader's, or this instance's own) change nothing.

use super::{Member, Membership};
use crate::bus::{now_ms, Bus, Entry, Position, Stored};
use crate::cursor::Cursor;
use crate::feed::Feed;
use crate::poller::Health;
use crate::source::{self, Row, Source};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between retries of an entry whose span cannot be read.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// One feed's follower.
pub struct Follower {
    feed: Arc<Feed>,
    source: Source,
    health: Arc<Health>,
    membership: Arc<Membership>,
    /// Where it reads the bus from next.
    pub position: Position,
}

impl Follower {
    pub fn new(member: &Member) -> Follower {
        Follower {
            feed: member.feed.clone(),
            source: member.source.clone(),
            health: member.health.clone(),
            membership: member.membership.clone(),
            position: Position::Origin,
        }
    }

    /// Starts at the bus's last entry (reading what comes before it and
    /// after the feed's head from the database), or at the bus's first
    /// entry when it cannot tell.
    pub async fn start(&mut self, bus: &Bus, shutdown: &CancellationToken) {
        let last = bus.last(self.feed.name()).await;
        self.membership.bus_result(self.feed.name(), &last);
        let Ok(Some(Stored { position, entry })) = last else {
            return;
        };
        self.position = position;
        if let Ok(entry) = entry {
            self.apply_retrying(&Entry::marker(entry.head), shutdown)
                .await;
        }
    }

    /// Applies entries read from the bus, in order, retrying one whose span
    /// cannot be read until it can (or `shutdown` fires).
    pub async fn apply_all(&mut self, stored: Vec<Stored>, shutdown: &CancellationToken) {
        for Stored { position, entry } in stored {
            match entry {
                Ok(entry) => {
                    self.membership
                        .lag_ms
                        .store(now_ms() - entry.at_ms, Ordering::Relaxed);
                    self.apply_retrying(&entry, shutdown).await;
                    self.membership.applied.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::warn!(feed = %self.feed.name(), cause = %err, "passing over a bus entry that cannot be read")
                }
            }
            if shutdown.is_cancelled() {
                return;
            }
            self.position = position;
        }
    }

    /// Applies one entry, retrying while its span cannot be read.
    async fn apply_retrying(&self, entry: &Entry, shutdown: &CancellationToken) {
        let mut retry = Duration::from_millis(100);
        loop {
            match self.apply(entry).await {
                Ok(()) => return self.health.database_answers(self.feed.name()),
                Err(err) => {
                    self.health.database_failed(&err, self.feed.name());
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn apply(&self, entry: &Entry) -> Result<(), source::Error> {
        let counters = &self.health.counters;
        if entry.late {
            let events = self.feed.publish_late(entry.rows.clone());
            counters
                .late_rows
                .fetch_add(events as u64, Ordering::Relaxed);
            return Ok(());
        }
        let (head, _) = self.feed.head();
        if entry.head <= head {
            return Ok(());
        }
        if entry.from > head {
            self.fill(head, entry.from).await?;
        }
        let (head, _) = self.feed.head();
        let rows: Vec<Row> = (entry.rows.iter())
            .filter(|row| Cursor::At(row.id) > head)
            .cloned()
            .collect();
        let events = self.feed.publish(rows, entry.head);
        counters.events.fetch_add(events as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads and publishes the rows of (`after`, `upto`] from the database:
    /// a span that leaders published but the bus does not hold.
    async fn fill(&self, mut after: Cursor, upto: Cursor) -> Result<(), source::Error> {
        tracing::info!(feed = %self.feed.name(), %after, %upto, "the bus misses entries; reading their rows from the database");
        self.membership.filled.fetch_add(1, Ordering::Relaxed);
        let batch = self.feed.config.tuning.batch_size;
        loop {
            let rows = self.source.read(&self.feed.query, after, upto, batch).await;
            self.health.counters.query(&rows);
            let rows = rows?;
            let full = rows.len() == batch as usize;
            let Some(last) = rows.last().map(|row| Cursor::At(row.id)) else {
                break;
            };
            let events = self.feed.publish(rows, last);
            (self.health.counters.events).fetch_add(events as u64, Ordering::Relaxed);
            after = last;
            if !full {
                break;
            }
        }
        // Ids up to `upto` that no row has: the leader passed over them.
        if after < upto {
            self.feed.publish(Vec::new(), upto);
        }
        Ok(())
    }
}
