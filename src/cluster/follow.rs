//! A follower: applies the bus's entries to its own feed, in order. An
//! entry that starts past the feed's head shows that entries are missing
//! (the bus lost or trimmed them, or the leader appended none while the bus
//! was down): that span is read from the database first, so a missing
//! entry delays rows, never skips them. Entries at or below the head (a
//! second leader's, or this instance's own) change nothing.
//!
//! A changes feed's events are numbered by its leader, in a run (epoch)
//! that a new leader keeps and numbers above. An entry after a hole, or of
//! another run (the first this instance sees, or a leader's after the bus
//! lost every entry), starts the feed over: the clients connected get the
//! current state of every row changed since the feed's head, read from the
//! database, and entries from polls that ended before that read began are
//! passed over, since the read saw all they hold. Entries from a poll that
//! read meanwhile are applied: one may bring a row's previous state once
//! more after its current one (never a loss; the leader's next change of
//! the row brings it back). Only a bus that lost entries leads here.

use super::{Member, Membership, Plan};
use crate::bus::{now_ms, Bus, Entry, Position, Stored};
use crate::cursor::{self, Cursor};
use crate::feed::Feed;
use crate::poller::{self, Health};
use crate::source::{self, ChangesQuery, Row, Source};
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
    /// A changes feed's SQL.
    changes: Option<ChangesQuery>,
    /// A changes feed's entries from polls that ended before this (µs, by
    /// the database's clock) are held by a read that started the feed over.
    covered_before_us: Option<i64>,
    /// Nothing applied or polled yet: the feed's clients came live, or
    /// caught up from the database, and have nothing of an earlier run to
    /// make up for.
    pub fresh: bool,
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
            changes: match &member.plan {
                Plan::Changes(changes) => Some(changes.clone()),
                Plan::Append(_) => None,
            },
            covered_before_us: None,
            fresh: true,
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
            self.apply_retrying(&Entry::marker(entry.head, entry.epoch), shutdown)
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
    async fn apply_retrying(&mut self, entry: &Entry, shutdown: &CancellationToken) {
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

    async fn apply(&mut self, entry: &Entry) -> Result<(), source::Error> {
        if self.changes.is_some() {
            return self.apply_change(entry).await;
        }
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

    /// Applies a changes feed's entry: its events keep the leader's numbers.
    async fn apply_change(&mut self, entry: &Entry) -> Result<(), source::Error> {
        let (head, _) = self.feed.head();
        let same_run = entry.epoch == self.feed.epoch();
        if same_run && entry.head <= head {
            return Ok(());
        }
        if !same_run || entry.from > head {
            self.start_over(entry, head).await?;
        }
        let (head, _) = self.feed.head();
        let covered = matches!((self.covered_before_us, entry.read), (Some(began), Some(read)) if read.ended_us < began);
        let rows: Vec<Row> = match covered {
            true => Vec::new(),
            false => (entry.rows.iter())
                .filter(|row| Cursor::At(row.id) > head)
                .cloned()
                .collect(),
        };
        let events = self.feed.publish_read(rows, entry.head, entry.read);
        (self.health.counters.events).fetch_add(events as u64, Ordering::Relaxed);
        self.fresh = false;
        Ok(())
    }

    /// Starts a changes feed over before `entry`: the clients connected get
    /// the current state of every row changed since the window of `head`,
    /// and the feed takes the entry's run and place.
    async fn start_over(&mut self, entry: &Entry, head: Cursor) -> Result<(), source::Error> {
        let Some(changes) = &self.changes else {
            return Ok(());
        };
        if std::mem::take(&mut self.fresh) {
            if let Some(epoch) = entry.epoch {
                self.feed.adopt_epoch(epoch);
            }
            self.feed.resync(Vec::new(), entry.from);
            return Ok(());
        }
        tracing::info!(feed = %self.feed.name(), from = %self.feed.cursor_text(head), "the bus misses entries or starts a new run; reading the changes since the feed's head from the database");
        self.membership.filled.fetch_add(1, Ordering::Relaxed);
        let (_, since) = cursor::unchange(head);
        let tuning = &self.feed.config.tuning;
        let read = poller::changes_catch_up(
            &self.source,
            &self.feed.query,
            changes,
            since,
            tuning.delete_retention,
            tuning.batch_size,
            &self.health,
            true,
        )
        .await?;
        if let Some(epoch) = entry.epoch {
            self.feed.adopt_epoch(epoch);
        }
        let reset = read.reset.then(crate::feed::reset_row);
        let rows = reset.into_iter().chain(read.rows).collect();
        let events = self.feed.resync(rows, entry.from);
        (self.health.counters.events).fetch_add(events as u64, Ordering::Relaxed);
        self.covered_before_us = read.read.map(|r| r.began_us);
        Ok(())
    }
}
