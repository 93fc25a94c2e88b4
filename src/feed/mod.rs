//! Feeds: one per configured feed. A feed frames each published row into
//! SSE bytes once, keeps the most recent events in a replay ring and the
//! latest cursor, and broadcasts each batch to its subscribers (and to the
//! [`Sink`] that writes caught-up streams' sockets).
//!
//! Its poller is its only writer. A feed never queries the database for a
//! live client; only `catchup` does, through the [`Reader`] it was given,
//! for clients behind the ring, coalescing identical reads so that a
//! reconnect storm costs a few queries. It knows nothing of sockets, of the
//! poller's health or of the doorbell.

mod catchup;
pub(crate) mod filter;
mod frame;
mod reads;
mod ring;
mod subscriber;

pub use catchup::{reset_row, CatchUpRows, Expired, Page, ReadError, Reader};
pub use filter::Filter;
pub use frame::{after, Batch, Event};
pub use reads::ReadSpan;
pub use subscriber::{Delivery, Subscriber};

use crate::config::{FeedConfig, Mode};
use crate::cursor::{Cursor, IdRange, Style};
use crate::source::{FeedQuery, Row};
use ring::Ring;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;
use tokio::sync::broadcast;

/// Where each batch goes besides the subscribers, in the order the feed
/// publishes them: the fan-out that writes caught-up streams.
pub trait Sink: Send + Sync {
    /// Takes a batch, while the feed holds its lock (so that a stream
    /// joining meanwhile sees it either in its backlog or here).
    fn batch(&self, batch: &Arc<Batch>);
}

/// A feed's shared state: what it is, its ring and head, its subscribers.
pub struct Feed {
    /// The feed's configuration.
    pub config: FeedConfig,
    /// The feed's checked columns and SQL.
    pub query: FeedQuery,
    state: Mutex<State>,
    sender: broadcast::Sender<Arc<Batch>>,
    /// Takes every batch besides the subscribers, once set.
    sink: OnceLock<Arc<dyn Sink>>,
    clients: AtomicUsize,
    catch_up: catchup::CatchUp,
    /// The sent column holding a row's time, for `/feeds`.
    timestamp_column: Option<String>,
    /// How the feed's cursors read and print (a changes feed's run is in
    /// `epoch`).
    style: Style,
    /// The run a changes feed's cursors name: this process's, or in a
    /// cluster the one its leader numbers events in.
    epoch: AtomicU32,
    /// A cluster follower's feed: its batches come from the leader's polls,
    /// which a catch-up read does not take turns with (see `catchup`).
    following: AtomicBool,
    /// When the polls behind recent batches read the table.
    reads: reads::Reads,
    /// Held by each poll from its read to its publish, and by each catch-up
    /// read of a changes feed: such a read then sees everything that the
    /// events before the head saw, and nothing older than what follows it.
    pub(crate) poll_lock: tokio::sync::Mutex<()>,
}

struct State {
    /// Recent events, in id order.
    ring: Ring,
    /// The poller's cursor: every row up to here has been published.
    head: Cursor,
    /// When `head` last moved forward with a row.
    head_at: Option<SystemTime>,
    /// The latest row's `timestamp_column`, as the database rendered it.
    head_row_time: Option<serde_json::Value>,
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

impl Feed {
    /// A feed whose poller starts at `head`. A subscriber that falls more
    /// than `client_buffer` batches behind is caught up from the ring or
    /// `reader` instead of the broadcast.
    pub fn new(
        config: FeedConfig,
        query: FeedQuery,
        reader: Arc<dyn Reader>,
        head: Cursor,
        client_buffer: usize,
    ) -> Feed {
        let style = style_of(&config, &query);
        Feed::with_style(config, query, reader, head, client_buffer, style)
    }

    /// A feed like [`Feed::new`] whose cursors read and print as `style`
    /// says: a feed whose ids are not a table's.
    pub fn with_style(
        config: FeedConfig,
        query: FeedQuery,
        reader: Arc<dyn Reader>,
        head: Cursor,
        client_buffer: usize,
        style: Style,
    ) -> Feed {
        let timestamp_column = time_column(config.timestamp_column.as_deref(), &query.columns);
        match &timestamp_column {
            Some(column) => {
                tracing::info!(feed = %config.name, %column, "`latest_row_at` in /feeds is the latest row's value of this column")
            }
            // A feed without columns (a topic's) has no such column to name.
            None if query.columns.is_empty() => {}
            None => {
                tracing::info!(feed = %config.name, "no sent column looks like a row's time: `latest_row_at` in /feeds stays null; set `timestamp_column` to name one")
            }
        }
        let epoch = match style {
            Style::Changes { epoch } => epoch,
            _ => 0,
        };
        Feed {
            style,
            epoch: AtomicU32::new(epoch),
            following: AtomicBool::new(false),
            reads: reads::Reads::default(),
            poll_lock: tokio::sync::Mutex::new(()),
            catch_up: catchup::CatchUp::new(reader),
            state: Mutex::new(State {
                ring: Ring::new(config.tuning.ring_size, head),
                head,
                head_at: None,
                head_row_time: None,
            }),
            config,
            query,
            sender: broadcast::channel(client_buffer).0,
            sink: OnceLock::new(),
            clients: AtomicUsize::new(0),
            timestamp_column,
        }
    }

    /// The feed's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How the feed's cursors read and print.
    pub fn style(&self) -> Style {
        match self.style {
            Style::Changes { .. } => Style::Changes {
                epoch: self.epoch.load(Ordering::Relaxed),
            },
            style => style,
        }
    }

    /// A cursor as clients get it.
    pub fn cursor_text(&self, cursor: Cursor) -> String {
        self.style().format(cursor)
    }

    /// The run a changes feed numbers its events in; `None` for other feeds.
    pub fn epoch(&self) -> Option<u32> {
        self.is_changes()
            .then(|| self.epoch.load(Ordering::Relaxed))
    }

    /// Numbers a changes feed's events from now on in the run `epoch`: a
    /// cluster follower takes its leader's.
    pub fn adopt_epoch(&self, epoch: u32) {
        self.epoch.store(epoch, Ordering::Relaxed);
    }

    /// Marks the feed as following a cluster leader, or not.
    pub fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Relaxed);
    }

    fn is_following(&self) -> bool {
        self.following.load(Ordering::Relaxed)
    }

    /// Whether the feed follows every change (not only new rows).
    pub fn is_changes(&self) -> bool {
        matches!(self.style, Style::Changes { .. })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated
        // in a way that matters more than stopping the feed would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends every batch from now on to `sink` too; only the first call
    /// takes effect.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        let _ = self.sink.set(sink);
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
        if self.is_changes() {
            // `{"op":…,"row":{…}}`
            let serde_json::Value::Object(inner) = row.remove("row")? else {
                return None;
            };
            row = inner;
        }
        row.remove(column)
    }

    /// Connected subscribers.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    /// Publishes the rows of one poll and moves the head to `head`;
    /// returns how many events that made (rows the feed's condition
    /// excluded make none).
    pub fn publish(&self, rows: Vec<Row>, head: Cursor) -> usize {
        self.publish_read(rows, head, None)
    }

    /// Publishes like [`Feed::publish`] the rows of a changes poll that
    /// read the table during `read`, when known.
    pub fn publish_read(&self, rows: Vec<Row>, head: Cursor, read: Option<ReadSpan>) -> usize {
        let (events, frames) =
            frame::frame(rows, self.config.event.as_deref(), false, self.style());
        let published = events.len();
        let row_time = self.row_time(events.last());
        let mut state = self.state();
        if !events.is_empty() {
            state.head_at = Some(SystemTime::now());
            state.head_row_time = row_time;
        }
        let after = std::mem::replace(&mut state.head, head);
        state.ring.extend(&events, head);
        if let Some(read) = read {
            self.reads.record(read, after);
        }
        // Sent under the lock so that a joining subscriber sees each batch
        // either in the ring or on its receiver, never both or neither.
        self.send(Arc::new(Batch {
            events,
            frames,
            after,
            head,
            late: false,
            read,
        }));
        published
    }

    /// Starts a cluster follower's changes feed over at `head`, when the
    /// batches before it are not to be had: `rows`, the current state of
    /// every row its clients may have missed, go to the clients connected
    /// now without ids, and the ring starts again at `head`, so that a
    /// client resuming from before it reads the table. Returns how many
    /// events that made.
    pub fn resync(&self, rows: Vec<Row>, head: Cursor) -> usize {
        let (events, frames) = frame::frame(rows, self.config.event.as_deref(), true, self.style());
        let published = events.len();
        let mut state = self.state();
        state.ring = Ring::new(self.config.tuning.ring_size, head);
        let after = std::mem::replace(&mut state.head, head);
        self.send(Arc::new(Batch {
            events,
            frames,
            after,
            head,
            late: true,
            read: None,
        }));
        published
    }

    /// Sends a batch to the subscribers and the sink. Errors only mean that
    /// nobody is listening.
    fn send(&self, batch: Arc<Batch>) {
        if let Some(sink) = self.sink.get() {
            sink.batch(&batch);
        }
        let _ = self.sender.send(batch);
    }

    /// Publishes rows that committed after their gap was passed over, to the
    /// clients connected now; returns how many events that made. They stay
    /// out of the ring (it is in id order); a client that later resumes
    /// from before them gets them only when its cursor is older than the
    /// ring and it reads from the database.
    pub fn publish_late(&self, rows: Vec<Row>) -> usize {
        let (events, frames) = frame::frame(rows, self.config.event.as_deref(), true, self.style());
        let published = events.len();
        let state = self.state();
        self.send(Arc::new(Batch {
            events,
            frames,
            after: state.head,
            head: state.head,
            late: true,
            read: None,
        }));
        published
    }

    /// Every batch the feed publishes from now on, as the subscribers get
    /// them: what a cluster leader appends to the bus.
    pub fn batches(&self) -> broadcast::Receiver<Arc<Batch>> {
        self.sender.subscribe()
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
        let kept = state.ring.after(after)?.filter(|e| keep(e));
        Some(kept.take(most).cloned().collect())
    }

    /// Joins the broadcast just after `after`.
    pub(crate) fn join(&self, after: Cursor) -> Joined {
        let state = self.state();
        let backlog: Option<Vec<Arc<Event>>> =
            state.ring.after(after).map(|b| b.cloned().collect());
        match backlog {
            Some(backlog) => Joined::Live {
                receiver: self.sender.subscribe(),
                backlog,
            },
            None => Joined::Behind,
        }
    }

    /// Runs `join` with the ring's events after `position` (`None` when the
    /// ring does not reach back that far) while holding the feed's lock: a
    /// batch published meanwhile reaches the sink only after `join` is
    /// done, so a stream handed to the sink there misses nothing.
    pub fn join_sink<T>(
        &self,
        position: Cursor,
        join: impl FnOnce(Option<Vec<Arc<Event>>>) -> T,
    ) -> T {
        let state = self.state();
        join(state.ring.after(position).map(|b| b.cloned().collect()))
    }

    /// A subscriber starting after `after`, or live from now.
    pub fn subscribe(self: &Arc<Self>, after: Option<Cursor>) -> Subscriber {
        Subscriber::new(self.clone(), after)
    }
}

/// How a feed's cursors read and print, by its mode and cursor column. A
/// changes feed's cursors name this server run.
pub fn style_of(config: &FeedConfig, query: &FeedQuery) -> Style {
    match (config.mode, &query.txid_column, query.unsigned) {
        (Mode::Changes, _, _) => Style::Changes { epoch: run_epoch() },
        (Mode::Append, Some(_), _) => Style::Ids(IdRange::Packed),
        (Mode::Append, None, true) => Style::Ids(IdRange::Unsigned),
        (Mode::Append, None, false) => Style::Ids(IdRange::Signed),
    }
}

/// A number for this server run of a feed, in its changes cursors: another
/// run's numbers are not this one's.
fn run_epoch() -> u32 {
    use std::hash::BuildHasher;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // RandomState is seeded afresh in every process.
    std::collections::hash_map::RandomState::new().hash_one(now) as u32
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
fn time_column(configured: Option<&str>, columns: &[String]) -> Option<String> {
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
pub(crate) mod testing;
#[cfg(test)]
mod tests;
