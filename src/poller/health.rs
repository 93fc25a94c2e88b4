//! What a feed's poller shows the rest of the server: its counters, and
//! whether its database answers and its rows are held behind a gap. Written
//! by the poller (or, clustered, by the feed's follower) only.

use crate::doorbell::Bell;
use crate::source;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What a feed has done since start-up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Queries of the feed's table: polls, catch-up reads and gap checks.
    pub queries: AtomicU64,
    /// Polls, each one or more of those queries.
    pub polls: AtomicU64,
    /// Of those, catch-up reads for clients behind the ring.
    pub catch_up_queries: AtomicU64,
    /// Queries that failed.
    pub errors: AtomicU64,
    /// Events published (rows that passed the feed's condition).
    pub events: AtomicU64,
    /// Gaps in the ids passed over after they settled.
    pub gaps_passed: AtomicU64,
    /// Gaps passed over because they were held past the hold cap.
    pub gaps_capped: AtomicU64,
    /// Rows that committed after their gap was passed over.
    pub late_rows: AtomicU64,
    /// Changes mode: transactions open longer than `max_txn_age` at the
    /// last poll, left out of the horizon.
    pub old_transactions: AtomicU64,
    /// Changes mode: rows the last poll re-read.
    pub window_rows: AtomicU64,
    /// Changes mode: how far back the last poll read, in ms.
    pub window_ms: AtomicU64,
    /// Feeds of Redis and NATS: messages passed over because their payload
    /// is not JSON (or, with `format = "laravel"`, not a broadcast).
    pub skipped: AtomicU64,
}

impl Counters {
    /// Counts one query and its outcome.
    pub fn query<T, E>(&self, result: &Result<T, E>) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a feed's poller is doing, for `/healthz`, `/metrics` and `/feeds`:
/// written by the poller only.
#[derive(Debug, Default)]
pub struct Health {
    /// Why the poller is failing, if it is.
    failure: Mutex<Option<String>>,
    /// Since when rows are held back behind a gap, if they are.
    holding_since: Mutex<Option<Instant>>,
    /// What the feed has done since start-up.
    pub counters: Counters,
    /// Rung by the Postgres NOTIFY listener when the table changes.
    pub(crate) bell: Arc<Bell>,
}

impl Health {
    /// Why the poller is failing, or `None` when its last poll succeeded.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    /// Since when rows are held back behind a gap, if they are.
    pub fn holding_since(&self) -> Option<Instant> {
        *lock(&self.holding_since)
    }

    /// Whether the NOTIFY doorbell works for the feed.
    pub fn doorbell_live(&self) -> bool {
        self.bell.is_live()
    }

    /// Notes that the database answered; says so once after a failure.
    pub(crate) fn database_answers(&self, feed: &str) {
        self.answers(feed, "database");
    }

    /// Notes that a query of the feed failed: logged once per outage, and
    /// shown in `/healthz` by its class, not its detail.
    pub(crate) fn database_failed(&self, err: &source::Error, feed: &str) {
        let mut failure = lock(&self.failure);
        match (failure.is_none(), err.is_transient()) {
            (true, true) => {
                tracing::warn!(feed, cause = %err, "database unavailable; retrying with backoff")
            }
            (true, false) => {
                tracing::error!(feed, cause = %err, "query failed; retrying with backoff")
            }
            (false, _) => tracing::debug!(feed, cause = %err, "query failed again"),
        }
        *failure = Some(
            match err.is_transient() {
                true => "database unavailable",
                false => "query failed; see the server log",
            }
            .to_owned(),
        );
    }

    /// Notes that what the feed reads (`what`: its database, Redis, NATS)
    /// answered; says so once after a failure.
    pub(crate) fn answers(&self, feed: &str, what: &str) {
        let mut failure = lock(&self.failure);
        if failure.take().is_some() {
            tracing::info!(feed, "{what} answers again; resuming");
        }
    }

    /// Notes that reading the feed failed: logged once per outage (a
    /// transient failure as a warning), and shown in `/healthz` as `class`,
    /// never its detail.
    pub(crate) fn failed(
        &self,
        feed: &str,
        class: &str,
        cause: &dyn std::fmt::Display,
        transient: bool,
    ) {
        let mut failure = lock(&self.failure);
        match (failure.is_none(), transient) {
            (true, true) => tracing::warn!(feed, %cause, "{class}; retrying with backoff"),
            (true, false) => tracing::error!(feed, %cause, "{class}; retrying with backoff"),
            (false, _) => tracing::debug!(feed, %cause, "failed again"),
        }
        *failure = Some(class.to_owned());
    }

    pub(super) fn set_holding_since(&self, since: Option<Instant>) {
        *lock(&self.holding_since) = since;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
