//! Hubs: one per feed. A hub frames each new row into SSE bytes once, keeps
//! the most recent events in a replay ring, caches the feed's latest cursor,
//! and broadcasts batches to every subscriber.
//!
//! The poller is the only writer. A hub never queries the database for a
//! live client; only [`catchup`] does, for clients behind the ring, and
//! coalesces identical reads so that a reconnect storm costs a few queries.

mod catchup;
mod fanout;
pub(crate) mod filter;
mod subscriber;

pub use fanout::{Back, Direct};
pub use filter::Filter;
pub use subscriber::{Delivery, Subscriber};

use crate::config::FeedConfig;
use crate::cursor::Cursor;
use crate::source::{FeedQuery, GapSetup, Row, Source};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// One row, framed.
#[derive(Debug)]
pub struct Event {
    /// The row id.
    pub id: i128,
    /// The complete single-feed SSE frame (`id:`, optional `event:`, `data:`).
    pub frame: Bytes,
    /// The row's JSON, a slice of `frame`.
    pub data: Bytes,
    /// Filter column values as text, in the feed's filter order.
    pub filters: Box<[Option<Box<str>>]>,
    /// A row that committed after its gap was passed over: delivered out of
    /// order, without an `id:` so that no client's cursor moves back.
    pub late: bool,
}

/// Events published by one poll, framed into one buffer.
#[derive(Debug)]
pub struct Batch {
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
    /// Every event's frame, back to back: what a subscriber that wants them
    /// all writes in one go.
    pub frames: Bytes,
    /// The poller's cursor after this batch (may pass ids that the feed's
    /// row condition excluded).
    pub head: Cursor,
    /// Late rows, for every subscriber whatever its position.
    pub late: bool,
}

/// A feed's shared state: configuration, queries and the fan-out.
pub struct Hub {
    /// The feed's configuration.
    pub config: FeedConfig,
    /// The feed's checked columns and SQL.
    pub query: FeedQuery,
    /// What the database can tell about gaps in the feed's ids.
    pub gap_setup: GapSetup,
    source: Source,
    state: Mutex<State>,
    sender: broadcast::Sender<Arc<Batch>>,
    /// Writes batches straight to the sockets of caught-up streams.
    fanout: fanout::Fanout,
    clients: AtomicUsize,
    catch_up: catchup::CatchUp,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Rung by the Postgres NOTIFY listener when the table changes.
    pub doorbell: crate::doorbell::Doorbell,
    /// The sent column holding a row's time, for `/feeds`.
    timestamp_column: Option<String>,
}

/// What a feed has done since start-up.
#[derive(Debug, Default)]
pub struct Counters {
    /// Queries of the feed's table: polls, catch-up reads and gap checks.
    pub queries: AtomicU64,
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

struct State {
    /// Recent events in id order, at most `config.tuning.ring_size`.
    ring: VecDeque<Arc<Event>>,
    /// Every event after this cursor is in the ring.
    floor: Cursor,
    /// The poller's cursor: every row up to here has been published.
    head: Cursor,
    /// When `head` last moved forward with a row.
    head_at: Option<SystemTime>,
    /// Why the poller is failing, if it is.
    failure: Option<String>,
    /// The latest row's `timestamp_column`, as the database rendered it.
    head_row_time: Option<serde_json::Value>,
    /// Since when rows are held back behind a gap, if they are.
    holding_since: Option<std::time::Instant>,
}

/// Where a joining subscriber starts.
pub(crate) enum Joined {
    /// The ring holds everything after the cursor: replay `backlog`, then
    /// follow the broadcast.
    Live {
        receiver: broadcast::Receiver<Arc<Batch>>,
        backlog: Vec<Arc<Event>>,
    },
    /// The cursor is older than the ring: read from the database first.
    Behind,
}

impl Hub {
    /// A hub whose poller starts at `head`. A subscriber that falls more
    /// than `client_buffer` batches behind is caught up from the ring or the
    /// database instead of the broadcast.
    pub fn new(
        config: FeedConfig,
        query: FeedQuery,
        gap_setup: GapSetup,
        source: Source,
        head: Cursor,
        client_buffer: usize,
    ) -> Hub {
        let timestamp_column = time_column(config.timestamp_column.as_deref(), &query.columns);
        match &timestamp_column {
            Some(column) => {
                tracing::info!(feed = %config.name, %column, "`latest_row_at` in /feeds is the latest row's value of this column")
            }
            None => {
                tracing::info!(feed = %config.name, "no sent column looks like a row's time: `latest_row_at` in /feeds stays null; set `timestamp_column` to name one")
            }
        }
        Hub {
            catch_up: catchup::CatchUp::new(),
            config,
            query,
            gap_setup,
            source,
            state: Mutex::new(State {
                ring: VecDeque::new(),
                floor: head,
                head,
                head_at: None,
                failure: None,
                head_row_time: None,
                holding_since: None,
            }),
            sender: broadcast::channel(client_buffer).0,
            fanout: fanout::Fanout::new(),
            clients: AtomicUsize::new(0),
            counters: Counters::default(),
            doorbell: Default::default(),
            timestamp_column,
        }
    }

    /// The feed's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated
        // in a way that matters more than stopping the feed would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The poller's cursor and when a row last moved it.
    pub fn head(&self) -> (Cursor, Option<SystemTime>) {
        let state = self.state();
        (state.head, state.head_at)
    }

    /// The latest row's time, as its `timestamp_column` holds it.
    pub fn head_row_time(&self) -> Option<serde_json::Value> {
        self.state().head_row_time.clone()
    }

    /// Reads the time column out of the latest event's JSON: one parse per
    /// poll, not per row.
    fn row_time(&self, event: Option<&Arc<Event>>) -> Option<serde_json::Value> {
        let (column, event) = (self.timestamp_column.as_ref()?, event?);
        let mut row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&event.data).ok()?;
        row.remove(column)
    }

    /// Connected subscribers.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Why the poller is failing, or `None` when its last poll succeeded.
    pub fn failure(&self) -> Option<String> {
        self.state().failure.clone()
    }

    /// Since when rows are held back behind a gap, if they are.
    pub fn holding_since(&self) -> Option<std::time::Instant> {
        self.state().holding_since
    }

    /// Records whether rows are held back behind a gap.
    pub fn set_holding_since(&self, since: Option<std::time::Instant>) {
        self.state().holding_since = since;
    }

    /// Records the outcome of a poll.
    pub fn set_failure(&self, failure: Option<String>) {
        self.state().failure = failure;
    }

    /// Frames rows into events, once, for everyone.
    pub fn frame(&self, rows: Vec<Row>, late: bool) -> (Vec<Arc<Event>>, Bytes) {
        let event_name = self.config.event.as_deref();
        let mut buf = BytesMut::new();
        let mut spans = Vec::with_capacity(rows.len());
        for row in rows {
            let Some(json) = row.json else { continue };
            let start = buf.len();
            let id = (!late).then(|| row.id.to_string());
            crate::sse::put_event(&mut buf, id.as_deref(), event_name, json.as_bytes());
            // `data: <json>\n\n` ends the frame.
            let data_end = buf.len() - 2;
            let data_start = data_end - json.len();
            spans.push((row.id, start, data_start, data_end, row.filters));
        }
        let frames = buf.freeze();
        let events = spans
            .into_iter()
            .map(|(id, start, data_start, data_end, filters)| {
                Arc::new(Event {
                    id,
                    frame: frames.slice(start..data_end + 2),
                    data: frames.slice(data_start..data_end),
                    filters: filters
                        .into_iter()
                        .map(|v| v.map(String::into_boxed_str))
                        .collect(),
                    late,
                })
            })
            .collect();
        (events, frames)
    }

    /// Publishes the rows of one poll and moves the head to `head`.
    pub fn publish(&self, rows: Vec<Row>, head: Cursor) {
        let (events, frames) = self.frame(rows, false);
        self.counters
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let row_time = self.row_time(events.last());
        let mut state = self.state();
        if !events.is_empty() {
            state.head_at = Some(SystemTime::now());
            state.head_row_time = row_time;
        }
        state.head = head;
        state.ring.extend(events.iter().cloned());
        while state.ring.len() > self.config.tuning.ring_size {
            if let Some(evicted) = state.ring.pop_front() {
                state.floor = Cursor::At(evicted.id);
            }
        }
        if state.ring.is_empty() {
            state.floor = head;
        }
        // Sent under the lock so that a joining subscriber sees each batch
        // either in the ring or on its receiver, never both or neither.
        self.send(Arc::new(Batch {
            events,
            frames,
            head,
            late: false,
        }));
    }

    /// Sends a batch to the subscribers and the direct fan-out. Errors only
    /// mean that nobody is listening.
    fn send(&self, batch: Arc<Batch>) {
        let _ = self.fanout.send(fanout::Message::Batch(batch.clone()));
        let _ = self.sender.send(batch);
    }

    /// Publishes rows that committed after their gap was passed over, to the
    /// clients connected now. They stay out of the ring (it is in id order);
    /// a client that later resumes from before them gets them only when its
    /// cursor is older than the ring and it reads from the database.
    pub fn publish_late(&self, rows: Vec<Row>) {
        let (events, frames) = self.frame(rows, true);
        self.counters
            .late_rows
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let state = self.state();
        self.send(Arc::new(Batch {
            events,
            frames,
            head: state.head,
            late: true,
        }));
    }

    /// The first `most` events after `after` in the ring that `keep` lets
    /// through, or `None` when the ring does not reach back that far.
    pub fn ring_after(
        &self,
        after: Cursor,
        most: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> Option<Vec<Arc<Event>>> {
        let state = self.state();
        if after < state.floor {
            return None;
        }
        let first_new = state.ring.partition_point(|e| Cursor::At(e.id) <= after);
        let kept = state.ring.range(first_new..).filter(|e| keep(e));
        Some(kept.take(most).cloned().collect())
    }

    /// Joins the fan-out just after `after`.
    pub(crate) fn join(&self, after: Cursor) -> Joined {
        let state = self.state();
        if after < state.floor {
            return Joined::Behind;
        }
        let first_new = state.ring.partition_point(|e| Cursor::At(e.id) <= after);
        Joined::Live {
            receiver: self.sender.subscribe(),
            backlog: state.ring.range(first_new..).cloned().collect(),
        }
    }

    /// Hands a stream to the direct fan-out at its position, or gives it
    /// back when the ring does not reach back that far or the fan-out is
    /// not running.
    pub fn go_direct(&self, direct: Direct) -> Result<(), Direct> {
        let state = self.state();
        if direct.position < state.floor {
            return Err(direct);
        }
        let first_new = state
            .ring
            .partition_point(|e| Cursor::At(e.id) <= direct.position);
        let backlog = state.ring.range(first_new..).cloned().collect();
        match (self.fanout).send(fanout::Message::Join(Box::new(direct), backlog)) {
            Ok(()) => Ok(()),
            Err(fanout::Message::Join(direct, _)) => Err(*direct),
            Err(_) => unreachable!("a refused message comes back as it was sent"),
        }
    }

    /// Takes a stream out of the direct fan-out; returns once the fan-out
    /// will write to it no more.
    pub async fn leave_direct(&self, id: u64) {
        let (done, left) = tokio::sync::oneshot::channel();
        if self.fanout.send(fanout::Message::Leave(id, done)).is_ok() {
            // An error means the fan-out has stopped: it writes no more.
            let _ = left.await;
        }
    }

    /// Runs the feed's direct fan-out until `shutdown`: a task per core.
    pub async fn run_fanout(
        self: Arc<Self>,
        keep_alive: std::time::Duration,
        shutdown: CancellationToken,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for shard in 0..self.fanout.shards() {
            let (hub, shutdown) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { hub.fanout.run(shard, keep_alive, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Streams the direct fan-out writes now.
    pub fn direct_streams(&self) -> usize {
        self.fanout.streams()
    }

    /// A number no other stream of this feed has.
    pub fn stream_id(&self) -> u64 {
        self.fanout.stream_id()
    }

    /// A subscriber starting after `after`, or live from now.
    pub fn subscribe(self: &Arc<Self>, after: Option<Cursor>) -> Subscriber {
        Subscriber::new(self.clone(), after)
    }
}

/// Name endings of columns that hold a time, as applications spell them
/// (`created_at`, `received_ts`, `comment_date`, `start_time`).
const TIME_SUFFIXES: [&str; 4] = ["_at", "_ts", "_date", "_time"];

/// Words of a column name that say when a row came to be.
const ARRIVAL_WORDS: [&str; 3] = ["created", "inserted", "received"];

/// The sent column reported as the latest row's time: the configured one;
/// else `created_at`, then `inserted_at`; else the first column named like
/// a time (see [`TIME_SUFFIXES`], any case) with a word that says when the
/// row came to be (`received_ts`; see [`ARRIVAL_WORDS`]); else the first
/// column named like a time but a deletion's, which most rows leave empty
/// (`comment_date`, `updated_at`).
pub fn time_column(configured: Option<&str>, columns: &[String]) -> Option<String> {
    if let Some(column) = configured {
        return Some(column.to_owned());
    }
    let lower: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
    let timed = |i: &usize| TIME_SUFFIXES.iter().any(|s| lower[*i].ends_with(s));
    let arrival = |i: &usize| {
        lower[*i]
            .split('_')
            .any(|word| ARRIVAL_WORDS.contains(&word))
    };
    let deletion = |i: &usize| lower[*i].starts_with("deleted");
    let chosen = ["created_at", "inserted_at"]
        .iter()
        .find_map(|name| lower.iter().position(|c| c == name))
        .or_else(|| (0..lower.len()).filter(timed).find(arrival))
        .or_else(|| (0..lower.len()).filter(timed).find(|i| !deletion(i)))?;
    columns.get(chosen).cloned()
}

#[cfg(test)]
mod tests;
