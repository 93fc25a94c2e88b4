//! Catch-up reads: pages of rows for subscribers whose cursor is older than
//! the replay ring, read through the feed's [`Reader`].
//!
//! Identical reads in flight are coalesced and their result kept for a
//! moment (moka's `try_get_with`), so a thousand clients resuming from the
//! same id cost one query. A page never reaches past the feed's head: rows
//! beyond it are not settled yet, and a client must not skip ahead of them.
//!
//! A changes feed catches up differently: its events are ordered by when
//! they were sent, not by a column, so a client behind the ring gets the
//! current state of every row stamped since its cursor's window start (or
//! of every row, for `0`), read between two polls, and then joins the ring
//! at the head of that moment (a marker frame moves its cursor there).

use super::reads::{Boundary, ReadSpan};
use super::{frame, Event, Feed};
use crate::cursor::{self, Cursor};
use crate::source::Row;
use futures::future::BoxFuture;
use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// How long a page may be reused. Reuse is always correct (a page says how
/// far it is complete); this only bounds how stale a reused page can be.
const PAGE_TTL: Duration = Duration::from_secs(2);
const MAX_PAGES: u64 = 1024;

/// Why a catch-up read failed, as the reader tells it: the feed only logs
/// it and tries again, so it needs no more than its message.
pub type ReadError = Box<dyn std::error::Error + Send + Sync>;

/// Reads a feed's rows for clients behind the ring: the database, or the
/// Redis stream or JetStream stream of a topic feed.
pub trait Reader: Send + Sync {
    /// At most `limit` rows with `after < id <= upto`, in id order.
    fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, ReadError>>;

    /// The rows of (`after`, `upto`] (at most `limit`) as the feed
    /// published them, from where its batches were relayed (a cluster's
    /// bus) when that still holds them without a hole; `None` when it does
    /// not, or keeps nothing.
    fn retained(&self, after: Cursor, upto: Cursor, limit: u32) -> BoxFuture<'_, Option<Vec<Row>>> {
        let _ = (after, upto, limit);
        Box::pin(async { None })
    }

    /// A changes feed's catch-up: every row stamped at or after `since_ms`
    /// as a change (tombstones first), or with `since_ms` 0 every live row;
    /// each row's JSON an envelope, its id left for the feed to set.
    fn changes(&self, since_ms: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>>;
}

/// A reader's answer that events after the cursor asked for are no longer
/// kept (a topic stream trimmed them): the client is told so with a
/// `reset` event, and goes on from `resume`, before the oldest event kept.
#[derive(Debug, thiserror::Error)]
#[error("events after this cursor are no longer kept")]
pub struct Expired {
    /// Every event up to here is gone.
    pub resume: Cursor,
}

/// What a client whose events are gone gets in their place: an event named
/// `reset`, so that `onmessage` handlers do not take it for one of the
/// feed's (a multi-feed stream names it after its feed, like the others).
const EXPIRED: &str = r#"{"op":"reset","reason":"events after the cursor are no longer kept"}"#;

/// What a changes feed's catch-up read.
#[derive(Debug, Default)]
pub struct CatchUpRows {
    /// The cursor is older than the tombstones kept: the client must start
    /// over, and `rows` is every live row.
    pub reset: bool,
    /// The rows, enveloped.
    pub rows: Vec<Row>,
    /// When the read was made, when known: where a cluster follower places
    /// it among its leader's polls.
    pub read: Option<ReadSpan>,
}

/// What a client that must start over gets first.
const RESET: &str = r#"{"op":"reset"}"#;

/// The row of [`RESET`], for every client: what comes before the current
/// state of every row when a client's cursor is older than the tombstones
/// kept.
pub fn reset_row() -> Row {
    Row {
        id: 0,
        json: Some(RESET.to_owned()),
        filters: Vec::new(),
        unless_filters: None,
        event: None,
    }
}

/// How long a cluster follower's catch-up waits for its leader's next
/// poll to show where the read falls among the polls.
const FOLLOWER_WAIT: Duration = Duration::from_secs(3);

/// How often a cluster follower reads a catch-up again when the leader
/// polled while it read.
const REREADS: u32 = 5;

/// Catch-ups of a changes feed start at whole seconds, so that clients that
/// left within one second share one read.
const CHANGES_ROUNDING_MS: i64 = 1000;

/// Rows after a cursor, framed.
#[derive(Debug)]
pub struct Page {
    /// Events in id order.
    pub events: Vec<Arc<Event>>,
    /// Every row up to here has been read: the reader's new position.
    pub complete_to: Cursor,
    /// Every event is for the reader whatever its position, and the page
    /// has no place to stop midway (a changes feed's catch-up: the state
    /// of every row at one moment, under the catch-up's own cursor).
    pub whole: bool,
}

pub(super) struct CatchUp {
    reader: Arc<dyn Reader>,
    pages: Cache<Cursor, Arc<Page>>,
}

impl CatchUp {
    pub(super) fn new(reader: Arc<dyn Reader>) -> CatchUp {
        CatchUp {
            reader,
            pages: Cache::builder()
                .max_capacity(MAX_PAGES)
                .time_to_live(PAGE_TTL)
                .build(),
        }
    }
}

impl Feed {
    /// The page of rows just after `after`, read or from a read another
    /// subscriber started.
    pub(crate) async fn catch_up(&self, after: Cursor) -> Result<Arc<Page>, Arc<ReadError>> {
        if self.is_changes() {
            return self.catch_up_changes(after).await;
        }
        self.catch_up
            .pages
            .try_get_with(after, async {
                let (upto, _) = self.head();
                let limit = self.config.tuning.batch_size;
                match self.catch_up.reader.read(after, upto, limit).await {
                    Ok(rows) => Ok(Arc::new(self.page(rows, after, upto, limit))),
                    Err(err) => match err.downcast_ref::<Expired>() {
                        Some(expired) => Ok(Arc::new(self.expired(expired.resume))),
                        None => Err(err),
                    },
                }
            })
            .await
    }

    /// The page of a client whose events up to `resume` are gone: one
    /// `reset` event, for it whatever its filter, with `resume` as its id.
    fn expired(&self, resume: Cursor) -> Page {
        let Cursor::At(id) = resume else {
            unreachable!("events that are gone end at one")
        };
        let row = Row {
            id,
            json: Some(EXPIRED.to_owned()),
            event: Some("reset".to_owned()),
            ..reset_row()
        };
        let (events, _) = frame::frame(vec![row], None, false, self.style());
        Page {
            events: events.iter().map(|e| Arc::new(e.for_everyone())).collect(),
            complete_to: resume,
            whole: true,
        }
    }

    /// The page of `rows`, read after `after` up to `upto`, at most `limit`.
    fn page(&self, rows: Vec<Row>, after: Cursor, upto: Cursor, limit: u32) -> Page {
        let complete_to = match rows.last() {
            Some(last) if rows.len() == limit as usize => Cursor::At(last.id),
            _ => upto.max(after),
        };
        let (events, _) = frame::frame(rows, self.config.event.as_deref(), false, self.style());
        Page {
            events,
            complete_to,
            whole: false,
        }
    }

    /// A changes feed's events after `after`, as numbered, from where they
    /// were relayed (a cluster's bus), when it still holds them.
    async fn retained_changes(&self, after: Cursor) -> Option<Arc<Page>> {
        self.catch_up
            .pages
            .optionally_get_with(after, async {
                let (upto, _) = self.head();
                let limit = self.config.tuning.batch_size;
                let rows = self.catch_up.reader.retained(after, upto, limit).await?;
                Some(Arc::new(self.page(rows, after, upto, limit)))
            })
            .await
    }

    /// A changes feed's catch-up from `after`'s window start. Its events
    /// carry the catch-up's own cursor, so that a client that leaves midway
    /// starts it again; the last is a marker that moves the client to the
    /// head the read was made at.
    async fn catch_up_changes(&self, after: Cursor) -> Result<Arc<Page>, Arc<ReadError>> {
        let (seq, since) = cursor::unchange(after);
        // An event of this run that the bus still holds, with those after
        // it: exactly what the client missed.
        if seq != 0 {
            if let Some(page) = self.retained_changes(after).await {
                return Ok(page);
            }
        }
        let since = since - since.rem_euclid(CHANGES_ROUNDING_MS);
        let key = cursor::change(0, since);
        self.catch_up
            .pages
            .try_get_with(key, async {
                let mut rereads = 0;
                let (rows, head) = loop {
                    let (rows, head) = {
                        // Between two polls: the events up to the head saw
                        // no later state than this read, and those after it
                        // no earlier one.
                        let _poll = self.poll_lock.lock().await;
                        let rows = self.catch_up.reader.changes(since).await?;
                        (rows, self.head().0)
                    };
                    // A follower's batches come from its leader's polls,
                    // which do not take turns with this read: it joins them
                    // before the first poll that read after it, and reads
                    // again when one read meanwhile. Without a poll to
                    // tell, at the head.
                    let Some(read) = rows.read.filter(|_| self.is_following()) else {
                        break (rows, head);
                    };
                    match self.reads.boundary(read, FOLLOWER_WAIT).await {
                        Boundary::At(at) => break (rows, at),
                        Boundary::Overlapped if rereads < REREADS => rereads += 1,
                        _ => break (rows, head),
                    }
                };
                let reset_first = rows.reset;
                let Cursor::At(key_id) = key else {
                    unreachable!("a changes cursor is a number")
                };
                let reset = rows.reset.then(|| Row {
                    id: key_id,
                    ..reset_row()
                });
                let rows = reset
                    .into_iter()
                    .chain(rows.rows.into_iter().map(|row| Row { id: key_id, ..row }))
                    .collect();
                let style = self.style();
                let (mut events, _) =
                    frame::frame(rows, self.config.event.as_deref(), false, style);
                if let Some(first) = events.first_mut().filter(|_| reset_first) {
                    *first = Arc::new(first.for_everyone());
                }
                events.push(Arc::new(Event::marker(head, style)));
                Ok(Arc::new(Page {
                    events,
                    complete_to: head,
                    whole: true,
                }))
            })
            .await
    }

    /// Drops a reused page that no longer helps its reader.
    pub(crate) async fn forget_page(&self, after: Cursor) {
        self.catch_up.pages.invalidate(&after).await;
    }
}
