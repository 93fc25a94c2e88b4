//! The poller of a changes feed: every insert, update and delete of a
//! table, as each row's latest state, from SELECT alone.
//!
//! A row's stamp is taken before it becomes visible, and may be taken by
//! the application's clock at whole seconds, so reading `stamp > last`
//! loses changes that commit late. Each poll instead samples the writer
//! horizon (`source::horizon`) and re-reads every row stamped since
//! `min(previous horizon, this horizon) − clock_skew`; a row goes out when
//! its JSON differs from what was last sent for its id. The map of what was
//! sent keeps only the rows of the last read, so memory follows the
//! changes in the window, not the table. Nothing waits for the horizon: a
//! change goes out on the first poll that sees it.
//!
//! Events are numbered in the order they are sent; each carries the
//! window start of its poll, from which a client beyond the replay ring
//! resumes (see `feed::catchup`).

mod reads;

use super::Health;
use crate::cursor::{self, Cursor};
use crate::feed::{Feed, ReadSpan};
use crate::source::horizon::{self, Horizon, Sample};
use crate::source::{self, Change, ChangesQuery, Row, Source};
pub use reads::catch_up;
use reads::{read_all_tombstones, read_window};
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far the head's window start may lag before an empty poll moves it:
/// a client resuming elsewhere reads from there.
const HEAD_STEP_MS: i64 = 1000;
/// How often transactions older than `max_txn_age` are warned of.
const OLD_TXN_WARNING: Duration = Duration::from_secs(60);

/// What a changes feed's poller starts with, found at start-up.
pub struct ChangesSetup {
    /// The feed's changes SQL.
    pub query: ChangesQuery,
    /// How the horizon is sampled.
    pub horizon: Horizon,
    /// The horizon at start-up.
    pub first: Sample,
    /// The greatest id at start-up: rows above it first seen are inserts.
    pub max_id: Cursor,
    /// What the window held at start-up, which no client is sent: a
    /// client that was there before comes back with a cursor, and reads
    /// the table from it. Empty for a cluster leader's term, which sends
    /// the window from its head again.
    pub primed: Primed,
    /// For a cluster leader, when its term began by the database's clock
    /// (µs since 1970; see [`TERM_SHIFT`]).
    pub term_began_us: Option<i64>,
}

/// A cluster leader numbers its events from its start in ms, shifted by
/// this much: above every number an earlier leader gave (unless it sent
/// more than a million events per ms), even those that never reached the
/// bus, so that no number means two events. It sends the window from its
/// head again first, so a client resuming from one of those numbers misses
/// nothing.
const TERM_SHIFT: u32 = 20;

impl ChangesSetup {
    /// What a cluster leader's term of `feed` starts with: its horizon
    /// sampled afresh, and nothing primed (the term sends the window from
    /// the feed's head again).
    pub async fn for_term(
        source: &Source,
        feed: &Feed,
        query: ChangesQuery,
    ) -> Result<ChangesSetup, source::Error> {
        let mut horizon = match query.xmin {
            true => Horizon::PgXmin,
            false => Horizon::choose(source, feed.name()).await?.horizon,
        };
        let first = horizon
            .sample(source, feed.config.tuning.max_txn_age)
            .await?;
        Ok(ChangesSetup {
            max_id: source.max_id(&feed.query).await?,
            term_began_us: Some(horizon::clock_us(source).await?),
            primed: Primed::default(),
            query,
            horizon,
            first,
        })
    }
}

/// A read's rows and tombstones, as the poller remembers them.
#[derive(Debug, Default)]
pub struct Primed {
    sent: HashMap<i128, Sent>,
    tombstones: HashSet<i128>,
}

impl Primed {
    /// Reads the window from `since`.
    pub async fn read(
        source: &Source,
        query: &ChangesQuery,
        since: i64,
        batch: u32,
        health: &Health,
    ) -> Result<Primed, source::Error> {
        let tombstones = read_all_tombstones(source, query, since, batch, health).await?;
        let rows = read_window(source, query, since, batch, health).await?;
        Ok(Primed {
            sent: rows.into_iter().map(|r| (r.id, Sent::of(r))).collect(),
            tombstones: tombstones
                .iter()
                .filter_map(|t| t.stamp.parse().ok())
                .collect(),
        })
    }
}

/// The window start a feed whose horizon is `first` begins at.
pub fn starting_head(first: &Sample, skew: Duration) -> Cursor {
    cursor::change(1, first.horizon_ms - millis(skew))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One changes feed's polling state.
pub(super) struct ChangesPoller {
    feed: Arc<Feed>,
    source: Source,
    health: Arc<Health>,
    query: ChangesQuery,
    horizon: Horizon,
    /// The horizon of the previous poll.
    previous: i64,
    /// The number of the last event sent.
    seq: u64,
    /// The window start of the last head published.
    head_since: i64,
    /// When the last head was published: a cluster leader publishes at
    /// least every [`HEAD_STEP_MS`], so that followers can place their
    /// catch-up reads among its polls.
    head_published: Instant,
    /// The poller leads the feed in a cluster.
    clustered: bool,
    /// The greatest id seen: a row above it is an insert.
    max_id: i128,
    /// What was last sent for each row of the last read.
    sent: HashMap<i128, Sent>,
    /// Tombstones of the last read.
    tombstones: HashSet<i128>,
    interval: Duration,
    warned_old: Option<Instant>,
}

/// What was last sent for a row: about 40 bytes and its filter values.
#[derive(Debug, PartialEq, Eq)]
struct Sent {
    /// See [`state`].
    state: u64,
    /// Its filter values, to tell the clients it left.
    filters: Vec<Option<String>>,
}

impl Sent {
    fn of(change: Change) -> Sent {
        Sent {
            state: state(&change),
            filters: change.filters,
        }
    }
}

/// A row's state as the hash map keeps it: 0 for a row the feed does not
/// show (its condition excludes it).
fn state(change: &Change) -> u64 {
    let Some(json) = &change.json else { return 0 };
    let mut hasher = DefaultHasher::new();
    json.hash(&mut hasher);
    change.deleted.hash(&mut hasher);
    hasher.finish().max(1)
}

/// `{"op":…,"row":…}`.
pub(crate) fn envelope(op: &str, row: &str) -> String {
    format!(r#"{{"op":"{op}","row":{row}}}"#)
}

/// A row of `json` whose id the poller sets when it numbers it.
fn change_row(json: String, filters: Vec<Option<String>>) -> Row {
    Row {
        id: 0,
        json: Some(json),
        filters,
        unless_filters: None,
        event: None,
    }
}

/// The row a delete names when its last state is not known: its key.
fn key_only(id_column: &str, id: i128) -> String {
    let key = serde_json::to_string(id_column).unwrap_or_else(|_| "\"id\"".to_owned());
    format!("{{{key}:{id}}}")
}

impl ChangesPoller {
    pub(super) fn new(
        feed: Arc<Feed>,
        source: Source,
        setup: ChangesSetup,
        health: Arc<Health>,
    ) -> ChangesPoller {
        let (head_seq, head_since) = cursor::unchange(feed.head().0);
        let skew = millis(setup.query.skew(feed.config.tuning.clock_skew));
        let seq = match setup.term_began_us {
            Some(began) => head_seq.max(u64::try_from(began / 1000).unwrap_or(0) << TERM_SHIFT),
            None => 1,
        };
        ChangesPoller {
            interval: feed.config.tuning.poll_interval,
            // The first read starts at the head's window or before.
            previous: setup.first.horizon_ms.min(head_since + skew),
            seq,
            head_since,
            head_published: Instant::now(),
            clustered: setup.term_began_us.is_some(),
            max_id: match setup.max_id {
                Cursor::At(id) => id,
                Cursor::Start => i128::MIN,
            },
            sent: setup.primed.sent,
            tombstones: setup.primed.tombstones,
            query: setup.query,
            horizon: setup.horizon,
            warned_old: None,
            source,
            health,
            feed,
        }
    }

    /// Reads the window and publishes what changed; returns how long to
    /// wait before the next poll.
    pub(super) async fn poll(&mut self) -> Result<Duration, source::Error> {
        let feed = self.feed.clone();
        let _poll = feed.poll_lock.lock().await;
        let tuning = &feed.config.tuning;
        let health = self.health.clone();
        let counters = &health.counters;
        let sample = self.horizon.sample(&self.source, tuning.max_txn_age).await;
        counters.query(&sample);
        let sample = sample?;
        self.warn_old(&sample);
        let since =
            self.previous.min(sample.horizon_ms) - millis(self.query.skew(tuning.clock_skew));

        let reading = Instant::now();
        let tombstones = read_all_tombstones(
            &self.source,
            &self.query,
            since,
            tuning.batch_size,
            &self.health,
        )
        .await?;
        let rows = read_window(
            &self.source,
            &self.query,
            since,
            tuning.batch_size,
            &self.health,
        )
        .await?;
        // Followers place their catch-up reads among the leader's polls.
        let read = match self.clustered {
            true => {
                let clock = horizon::clock_us(&self.source).await;
                counters.query(&clock);
                let ended_us = clock?;
                let took = i64::try_from(reading.elapsed().as_micros()).unwrap_or(i64::MAX);
                Some(ReadSpan {
                    began_us: ended_us.saturating_sub(took),
                    ended_us,
                })
            }
            false => None,
        };
        // Only a horizon sampled before a read that succeeded bounds the
        // stamps of what commits after it.
        self.previous = sample.horizon_ms;
        counters
            .window_rows
            .store(rows.len() as u64, Ordering::Relaxed);
        let reach = u64::try_from(sample.now_ms - since).unwrap_or(0);
        counters.window_ms.store(reach, Ordering::Relaxed);

        let mut out: Vec<Row> = Vec::new();
        let mut left: Vec<Row> = Vec::new();
        let mut tomb_ids = HashSet::with_capacity(tombstones.len());
        for tomb in tombstones {
            let Ok(tomb_id) = tomb.stamp.parse::<i128>() else {
                continue;
            };
            tomb_ids.insert(tomb_id);
            if self.tombstones.contains(&tomb_id) {
                continue;
            }
            // The client drops the row: whatever comes next for its id is new.
            self.sent.remove(&tomb.id);
            let row = tomb
                .json
                .unwrap_or_else(|| key_only(&feed.query.id_column, tomb.id));
            out.push(change_row(envelope("delete", &row), tomb.filters));
        }
        self.tombstones = tomb_ids;

        let mut sent = HashMap::with_capacity(rows.len());
        for row in rows {
            let now = state(&row);
            let before = self.sent.remove(&row.id);
            let id = row.id;
            if before.as_ref().is_some_and(|b| b.state == now) {
                sent.insert(id, Sent::of(row));
                continue;
            }
            let inserted = id > self.max_id;
            self.max_id = self.max_id.max(id);
            let filters = row.filters.clone();
            match (&row.json, row.deleted) {
                // Out of the feed's condition: a delete for whoever had it.
                (None, _) if before.as_ref().is_some_and(|b| b.state != 0) => {
                    let key = key_only(&feed.query.id_column, id);
                    out.push(change_row(envelope("delete", &key), filters));
                }
                (None, _) => {}
                (Some(json), true) => out.push(change_row(envelope("delete", json), filters)),
                (Some(json), false) => {
                    let op = match inserted && before.is_none() {
                        true => "insert",
                        false => "update",
                    };
                    out.push(change_row(envelope(op, json), filters.clone()));
                    // Clients whose filter the old values passed and the new
                    // ones do not see the row leave their view.
                    if let Some(before) = before.filter(|b| b.state != 0 && b.filters != filters) {
                        left.push(Row {
                            unless_filters: Some(filters),
                            ..change_row(envelope("delete", json), before.filters)
                        });
                    }
                }
            }
            sent.insert(id, Sent::of(row));
        }
        self.sent = sent;
        out.extend(left);

        let published = !out.is_empty();
        let rows: Vec<Row> = out
            .into_iter()
            .map(|row| {
                self.seq += 1;
                let Cursor::At(id) = cursor::change(self.seq, since) else {
                    unreachable!("a changes cursor is a number")
                };
                Row { id, ..row }
            })
            .collect();
        let step = Duration::from_millis(HEAD_STEP_MS as u64);
        if published
            || since - self.head_since >= HEAD_STEP_MS
            || (self.clustered && self.head_published.elapsed() >= step)
        {
            self.head_since = since;
            self.head_published = Instant::now();
            if self.clustered && !published {
                // A head of its own, which the bus takes only above the last.
                self.seq += 1;
            }
            let head = cursor::change(self.seq, since);
            let events = feed.publish_read(rows, head, read);
            counters.events.fetch_add(events as u64, Ordering::Relaxed);
        }
        self.interval = match published {
            true => tuning.poll_interval,
            false => super::idle_interval(self.interval, tuning, self.health.doorbell_live()),
        };
        Ok(self.interval)
    }

    fn warn_old(&mut self, sample: &Sample) {
        let counters = &self.health.counters;
        counters
            .old_transactions
            .store(sample.too_old, Ordering::Relaxed);
        if sample.too_old == 0 {
            return;
        }
        if self
            .warned_old
            .is_none_or(|at| at.elapsed() >= OLD_TXN_WARNING)
        {
            self.warned_old = Some(Instant::now());
            tracing::warn!(feed = %self.feed.name(), open = sample.too_old, max_txn_age = ?self.feed.config.tuning.max_txn_age,
                "transactions open longer than max_txn_age no longer hold back the window; a change they commit with an older stamp may be missed");
        }
    }
}
