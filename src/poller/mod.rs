//! Pollers: one task per feed that reads new rows in cursor order and
//! publishes them on the feed. A poller owns what only it knows — the gaps
//! it holds rows behind, its doorbell, whether the database answers, its
//! counters — and shows them to the rest as a read-only [`Health`].
//! An append feed's poller is here; a changes feed's, which re-reads a
//! window of recently stamped rows instead of following an id, is in
//! `changes`; `reader` reads for clients behind the replay ring; `health`
//! holds what the poller shows.
//!
//! One query per poll, whatever the number of clients. While rows flow the
//! poller reads again at once (a full batch) or after the shortest interval;
//! when idle it backs off to the longest. Rows after a gap in the ids are
//! held back until the gap settles (`gap`), so that a row that
//! commits out of id order is never skipped. A failing database is retried
//! with backoff, forever, from the same cursor: an outage delays rows, never
//! loses them, and never stops the process.

mod changes;
mod health;
mod reader;

pub use changes::{
    catch_up as changes_catch_up, starting_head as changes_head, ChangesSetup, Primed,
};
pub use health::{Counters, Health};
pub use reader::TableReader;

use crate::config::{FeedConfig, GapHandling};
use crate::cursor::Cursor;
use crate::feed::Feed;
use crate::gap::{GapPolicy, Gaps, PassedOver, Probe};
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

/// What a poller starts with, by the feed's mode.
pub enum Setup {
    /// An append feed: what the database tells about gaps in its ids.
    Append(GapSetup),
    /// A changes feed.
    Changes(Box<ChangesSetup>),
}

impl Setup {
    /// What the database tells about gaps in an append feed's ids.
    pub fn gaps(&self) -> Option<&GapSetup> {
        match self {
            Setup::Append(gaps) => Some(gaps),
            Setup::Changes(_) => None,
        }
    }
}

/// The wait after a poll that found nothing, doubled from `interval` up to
/// the longest: with a working doorbell, idle polls are only a fallback.
fn idle_interval(
    interval: Duration,
    tuning: &crate::config::Tuned,
    doorbell_live: bool,
) -> Duration {
    let longest = match doorbell_live {
        true => tuning.notify_interval,
        false => tuning.max_poll_interval,
    };
    (interval * 2).min(longest)
}

/// A feed's poller, of either mode.
enum Polling {
    Append(Box<Poller>),
    Changes(Box<changes::ChangesPoller>),
}

impl Polling {
    async fn poll(&mut self, counters: &Counters) -> Result<Duration, source::Error> {
        counters.polls.fetch_add(1, Ordering::Relaxed);
        match self {
            Polling::Append(poller) => poller.poll().await,
            Polling::Changes(poller) => poller.poll().await,
        }
    }
}

/// Reads one feed until `shutdown` fires.
pub async fn run(
    feed: Arc<Feed>,
    source: Source,
    setup: Setup,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    let config = feed.config.clone();
    let mut poller = match setup {
        Setup::Append(setup) => Polling::Append(Box::new(Poller::new(
            feed.clone(),
            source,
            setup,
            health.clone(),
        ))),
        Setup::Changes(setup) => Polling::Changes(Box::new(changes::ChangesPoller::new(
            feed.clone(),
            source,
            *setup,
            health.clone(),
        ))),
    };
    let mut retry = config.tuning.poll_interval;
    loop {
        let started = Instant::now();
        let wait = match poller.poll(&health.counters).await {
            Ok(wait) => {
                health.database_answers(&config.name);
                retry = config.tuning.poll_interval;
                wait
            }
            Err(err) => {
                health.database_failed(&err, &config.name);
                retry = (retry * 2).min(MAX_RETRY);
                retry
            }
        };
        if wait.is_zero() && !shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = health.bell.rung() => {
                // On a busy table every commit rings: rings that come
                // within the window of the last poll wait for its end and
                // are served by one poll.
                let window_end = started + config.tuning.notify_window;
                if Instant::now() < window_end {
                    tokio::select! {
                        _ = tokio::time::sleep_until(window_end.into()) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    // Rings of the window are all answered by this poll;
                    // one during the poll makes another.
                    health.bell.forget();
                }
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One feed's polling state.
struct Poller {
    feed: Arc<Feed>,
    source: Source,
    setup: GapSetup,
    health: Arc<Health>,
    gaps: Gaps,
    passed: PassedOver,
    /// The current wait between polls, between the configured bounds.
    interval: Duration,
    next_late_check: Instant,
}

impl Poller {
    fn new(feed: Arc<Feed>, source: Source, setup: GapSetup, health: Arc<Health>) -> Poller {
        let config = &feed.config;
        let gaps = Gaps::new(GapPolicy {
            hold: config.gaps == GapHandling::Hold,
            step: setup.step,
            concurrent: setup.concurrent,
            grace: config.tuning.gap_grace,
            hold_cap: config.tuning.hold_cap,
        });
        Poller {
            interval: config.tuning.poll_interval,
            next_late_check: Instant::now() + config.tuning.late_check_interval,
            gaps,
            passed: PassedOver::default(),
            source,
            setup,
            health,
            feed,
        }
    }

    /// Reads and publishes what it may; returns how long to wait before the
    /// next poll.
    async fn poll(&mut self) -> Result<Duration, source::Error> {
        let (feed, health) = (self.feed.clone(), self.health.clone());
        let config = &feed.config;
        let counters = &health.counters;
        // Read the watermark first: rows at or below it are committed, so
        // the read that follows sees them.
        let watermark = match &feed.query.watermark_sql {
            // No watermark yet means nothing is declared complete.
            Some(sql) => Some(self.source.watermark(sql).await?.unwrap_or(i128::MIN)),
            None => None,
        };
        let (cursor, _) = feed.head();
        let rows = self
            .read(cursor, Cursor::At(i128::MAX), config.tuning.batch_size)
            .await?;
        let now = Instant::now();
        let full = rows.len() == config.tuning.batch_size as usize;
        let ids: Vec<i128> = rows.iter().map(|r| r.id).collect();
        let verdict = self.gaps.judge(cursor, &ids, watermark, now);
        for (before, next) in &verdict.capped {
            counters.gaps_capped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(feed = %config.name, after = %before, next_row = %next, hold_cap = ?config.tuning.hold_cap,
                "a gap in the ids stayed open past hold_cap (a transaction left open?); passing over it");
        }
        counters
            .gaps_passed
            .fetch_add(verdict.passed.len() as u64, Ordering::Relaxed);
        self.passed.add(&verdict.passed, now);
        let emitted_all = verdict.emit == rows.len();
        let published = verdict.emit > 0;
        if let Some(head) = verdict.head {
            let mut rows = rows;
            rows.truncate(verdict.emit);
            let events = feed.publish(rows, head);
            counters.events.fetch_add(events as u64, Ordering::Relaxed);
        }
        match (verdict.holding, health.holding_since()) {
            (true, None) => health.set_holding_since(Some(self.gaps.oldest().unwrap_or(now))),
            (false, Some(_)) => health.set_holding_since(None),
            _ => {}
        }

        let settled = match verdict.probe {
            Some(Probe::Record) => {
                // The greatest id first, then the writers: every id below
                // it was allocated before the writers were listed.
                let top = self.source.max_id(&feed.query).await;
                counters.query(&top);
                let top = top?;
                let writers = self.writers().await?;
                tracing::debug!(feed = %config.name, %cursor, %top, writers = ?writers, "gap in the ids; holding the rows after it");
                self.gaps.record_writers(writers.as_ref(), top);
                false
            }
            Some(Probe::Settle) => {
                let writers = self.writers().await?;
                let settled = self.gaps.settle(writers.as_ref(), Instant::now());
                tracing::debug!(feed = %config.name, %cursor, writers = ?writers, settled, "gap past its grace window");
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
            self.interval = config.tuning.poll_interval;
            self.interval.min(HOLD_RECHECK)
        } else if published {
            self.interval = config.tuning.poll_interval;
            self.interval
        } else {
            self.interval = idle_interval(self.interval, &config.tuning, health.doorbell_live());
            self.interval
        })
    }

    async fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> Result<Vec<Row>, source::Error> {
        let result = self.source.read(&self.feed.query, after, upto, limit).await;
        self.health.counters.query(&result);
        result
    }

    /// The transactions that could fill a gap now, if the database tells.
    async fn writers(&self) -> Result<Option<HashSet<String>>, source::Error> {
        match &self.setup.writers_sql {
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
        self.next_late_check = now + self.feed.config.tuning.late_check_interval;
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
            tracing::warn!(feed = %self.feed.name(), ids = ?ids,
                "rows committed after their gap was passed over; delivering them late (raise gap_grace or set a watermark query)");
            self.passed.found(&ids);
            let events = self.feed.publish_late(late);
            (self.health.counters.late_rows).fetch_add(events as u64, Ordering::Relaxed);
        }
        Ok(())
    }
}
