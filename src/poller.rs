//! Pollers: one task per feed that reads new rows in cursor order and hands
//! them to the feed's hub.
//!
//! One query per poll, whatever the number of clients. While rows flow the
//! poller reads again at once (a full batch) or after the shortest interval;
//! when idle it backs off to the longest. Rows after a gap in the ids are
//! held back until the gap settles ([`crate::gap`]), so that a row that
//! commits out of id order is never skipped. A failing database is retried
//! with backoff, forever, from the same cursor: an outage delays rows, never
//! loses them, and never stops the process.

use crate::config::FeedConfig;
use crate::config::GapHandling;
use crate::cursor::Cursor;
use crate::gap::{GapPolicy, Gaps, PassedOver, Probe};
use crate::hub::Hub;
use crate::source::{self, FeedQuery, GapSetup, Row, Source};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest wait between retries while the database fails.
const MAX_RETRY: Duration = Duration::from_secs(10);
/// How long ids that were passed over are re-checked for late rows.
const LATE_WINDOW: Duration = Duration::from_secs(300);
/// The longest wait between polls while rows are held behind a gap.
const HOLD_RECHECK: Duration = Duration::from_millis(100);
/// The widest id span one late-row check reads.
const LATE_SPAN: i128 = 1000;

/// The cursor a feed starts at: its greatest id, once every id below it
/// that may still commit has had the chance to (the same settling as a gap),
/// so that clients resuming after a restart miss nothing.
pub async fn starting_head(
    source: &Source,
    feed: &FeedConfig,
    query: &FeedQuery,
    setup: &GapSetup,
) -> Result<Cursor, source::Error> {
    let head = source.max_id(query).await?;
    if !setup.concurrent || feed.gaps == GapHandling::Ignore || head == Cursor::Start {
        return Ok(head);
    }
    let started = Instant::now();
    let writers = match &setup.writers_sql {
        Some(sql) => source.writers(sql).await?,
        None => None,
    };
    if writers.as_ref().is_some_and(|w| !w.is_empty()) {
        tracing::info!(feed = %feed.name, open = writers.as_ref().map_or(0, HashSet::len), "waiting for open write transactions before serving");
    }
    loop {
        let waited = started.elapsed();
        if waited >= feed.tuning.hold_cap {
            tracing::warn!(feed = %feed.name, waited = ?waited, "write transactions still open at start-up after hold_cap; starting anyway");
            break;
        }
        if waited >= feed.tuning.gap_grace {
            match (&writers, &setup.writers_sql) {
                (Some(before), Some(sql)) => match source.writers(sql).await? {
                    Some(now) if !before.is_disjoint(&now) => {}
                    _ => break,
                },
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(50).min(feed.tuning.gap_grace)).await;
    }
    Ok(head)
}

/// Reads one feed until `shutdown` fires.
pub async fn run(hub: Arc<Hub>, source: Source, shutdown: CancellationToken) {
    let feed = hub.config.clone();
    let mut poller = Poller::new(hub.clone(), source);
    let mut retry = feed.tuning.poll_interval;
    loop {
        let started = Instant::now();
        let wait = match poller.poll().await {
            Ok(wait) => {
                if hub.failure().is_some() {
                    tracing::info!(feed = %feed.name, cursor = %hub.head().0, "database answers again; resuming");
                    hub.set_failure(None);
                }
                retry = feed.tuning.poll_interval;
                wait
            }
            Err(err) => {
                let first = hub.failure().is_none();
                match (first, err.is_transient()) {
                    (true, true) => {
                        tracing::warn!(feed = %feed.name, cursor = %hub.head().0, cause = %err, "database unavailable; retrying with backoff")
                    }
                    (true, false) => {
                        tracing::error!(feed = %feed.name, cause = %err, "poll failed; retrying with backoff")
                    }
                    (false, _) => {
                        tracing::debug!(feed = %feed.name, cause = %err, "poll failed again")
                    }
                }
                // /healthz shows this: the class of failure, not the detail.
                hub.set_failure(Some(
                    if err.is_transient() {
                        "database unavailable"
                    } else {
                        "query failed; see the server log"
                    }
                    .to_owned(),
                ));
                retry = (retry * 2).min(MAX_RETRY);
                retry
            }
        };
        if wait.is_zero() && !shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = hub.doorbell.rung() => {
                // On a busy table every commit rings: rings that come
                // within the window of the last poll wait for its end and
                // are served by one poll.
                let window_end = started + feed.tuning.notify_window;
                if Instant::now() < window_end {
                    tokio::select! {
                        _ = tokio::time::sleep_until(window_end.into()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    // Rings of the window are all answered by this poll;
                    // one during the poll makes another.
                    hub.doorbell.forget();
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One feed's polling state.
struct Poller {
    hub: Arc<Hub>,
    source: Source,
    gaps: Gaps,
    passed: PassedOver,
    /// The current wait between polls, between the configured bounds.
    interval: Duration,
    next_late_check: Instant,
}

impl Poller {
    fn new(hub: Arc<Hub>, source: Source) -> Poller {
        let feed = &hub.config;
        let gaps = Gaps::new(GapPolicy {
            hold: feed.gaps == GapHandling::Hold,
            step: hub.gap_setup.step,
            concurrent: hub.gap_setup.concurrent,
            grace: feed.tuning.gap_grace,
            hold_cap: feed.tuning.hold_cap,
        });
        Poller {
            interval: feed.tuning.poll_interval,
            next_late_check: Instant::now() + feed.tuning.late_check_interval,
            gaps,
            passed: PassedOver::default(),
            source,
            hub,
        }
    }

    /// Reads and publishes what it may; returns how long to wait before the
    /// next poll.
    async fn poll(&mut self) -> Result<Duration, source::Error> {
        let hub = self.hub.clone();
        let feed = &hub.config;
        // Read the watermark first: rows at or below it are committed, so
        // the read that follows sees them.
        let watermark = match &hub.query.watermark_sql {
            // No watermark yet means nothing is declared complete.
            Some(sql) => Some(self.source.watermark(sql).await?.unwrap_or(i128::MIN)),
            None => None,
        };
        let (cursor, _) = hub.head();
        let rows = self
            .read(cursor, Cursor::At(i128::MAX), feed.tuning.batch_size)
            .await?;
        let now = Instant::now();
        let full = rows.len() == feed.tuning.batch_size as usize;
        let ids: Vec<i128> = rows.iter().map(|r| r.id).collect();
        let verdict = self.gaps.judge(cursor, &ids, watermark, now);
        for (before, next) in &verdict.capped {
            hub.counters.gaps_capped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(feed = %feed.name, after = %before, next_row = %next, hold_cap = ?feed.tuning.hold_cap,
                "a gap in the ids stayed open past hold_cap (a transaction left open?); passing over it");
        }
        hub.counters
            .gaps_passed
            .fetch_add(verdict.passed.len() as u64, Ordering::Relaxed);
        self.passed.add(&verdict.passed, now);
        let emitted_all = verdict.emit == rows.len();
        let published = verdict.emit > 0;
        if let Some(head) = verdict.head {
            let mut rows = rows;
            rows.truncate(verdict.emit);
            hub.publish(rows, head);
        }
        match (verdict.holding, hub.holding_since()) {
            (true, None) => hub.set_holding_since(Some(self.gaps.oldest().unwrap_or(now))),
            (false, Some(_)) => hub.set_holding_since(None),
            _ => {}
        }

        let settled = match verdict.probe {
            Some(Probe::Record) => {
                // The greatest id first, then the writers: every id below
                // it was allocated before the writers were listed.
                let top = self.source.max_id(&hub.query).await;
                hub.counters.query(&top);
                let top = top?;
                let writers = self.writers().await?;
                tracing::debug!(feed = %feed.name, %cursor, %top, writers = ?writers, "gap in the ids; holding the rows after it");
                self.gaps.record_writers(writers.as_ref(), top);
                false
            }
            Some(Probe::Settle) => {
                let writers = self.writers().await?;
                let settled = self.gaps.settle(writers.as_ref(), Instant::now());
                tracing::debug!(feed = %feed.name, %cursor, writers = ?writers, settled, "gap past its grace window");
                settled
            }
            None => false,
        };
        self.check_late().await?;

        Ok(if settled || (full && emitted_all) {
            // Re-read the settled gap, or drain a backlog, at once.
            Duration::ZERO
        } else if verdict.holding {
            // The gap may fill at any moment; no notification says when.
            self.interval = feed.tuning.poll_interval;
            self.interval.min(HOLD_RECHECK)
        } else if published {
            self.interval = feed.tuning.poll_interval;
            self.interval
        } else {
            // With a working doorbell, idle polls are only a fallback.
            let longest = if hub.doorbell.is_live() {
                feed.tuning.notify_interval
            } else {
                feed.tuning.max_poll_interval
            };
            self.interval = (self.interval * 2).min(longest);
            self.interval
        })
    }

    async fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> Result<Vec<Row>, source::Error> {
        let result = self.source.read(&self.hub.query, after, upto, limit).await;
        self.hub.counters.query(&result);
        result
    }

    /// The transactions that could fill a gap now, if the database tells.
    async fn writers(&self) -> Result<Option<HashSet<String>>, source::Error> {
        match &self.hub.gap_setup.writers_sql {
            Some(sql) => self.source.writers(sql).await,
            None => Ok(None),
        }
    }

    /// Re-reads recently passed-over ids, now and then; a row found there
    /// committed later than its gap could wait, and is delivered late
    /// rather than lost.
    async fn check_late(&mut self) -> Result<(), source::Error> {
        let now = Instant::now();
        if now < self.next_late_check {
            return Ok(());
        }
        self.next_late_check = now + self.hub.config.tuning.late_check_interval;
        let mut ranges = self.passed.current(LATE_WINDOW, now);
        // Sorted, so that each row read is checked by a binary search.
        ranges.sort_unstable();
        for (low, high) in PassedOver::spans(&ranges, LATE_SPAN) {
            let limit = u32::try_from(high - low + 1)
                .unwrap_or(u32::MAX)
                .min(LATE_SPAN as u32);
            let rows = self
                .read(Cursor::At(low - 1), Cursor::At(high), limit)
                .await?;
            let late: Vec<Row> = rows
                .into_iter()
                .filter(|row| {
                    let i = ranges.partition_point(|&(low, _)| low <= row.id);
                    i > 0 && row.id <= ranges[i - 1].1
                })
                .collect();
            if late.is_empty() {
                continue;
            }
            let ids: Vec<i128> = late.iter().map(|r| r.id).collect();
            tracing::warn!(feed = %self.hub.config.name, ids = ?ids,
                "rows committed after their gap was passed over; delivering them late (raise gap_grace or set a watermark query)");
            self.passed.found(&ids);
            self.hub.publish_late(late);
        }
        Ok(())
    }
}
