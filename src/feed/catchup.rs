//! Catch-up reads: pages of rows for subscribers whose cursor is older than
//! the replay ring, read through the feed's [`Reader`].
//!
//! Identical reads in flight are coalesced and their result kept for a
//! moment (moka's `try_get_with`), so a thousand clients resuming from the
//! same id cost one query. A page never reaches past the feed's head: rows
//! beyond it are not settled yet, and a client must not skip ahead of them.

use super::{frame, Event, Feed};
use crate::cursor::Cursor;
use crate::source::{self, Row};
use futures::future::BoxFuture;
use moka::future::Cache;
use std::sync::Arc;
use std::time::Duration;

/// How long a page may be reused. Reuse is always correct (a page says how
/// far it is complete); this only bounds how stale a reused page can be.
const PAGE_TTL: Duration = Duration::from_secs(2);
const MAX_PAGES: u64 = 1024;

/// Reads a feed's rows for clients behind the ring: the database, for a
/// running server.
pub trait Reader: Send + Sync {
    /// At most `limit` rows with `after < id <= upto`, in id order.
    fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, source::Error>>;
}

/// Rows after a cursor, framed.
#[derive(Debug)]
pub struct Page {
    /// Events in id order.
    pub events: Vec<Arc<Event>>,
    /// Every row up to here has been read: the reader's new position.
    pub complete_to: Cursor,
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
    pub(crate) async fn catch_up(&self, after: Cursor) -> Result<Arc<Page>, Arc<source::Error>> {
        self.catch_up
            .pages
            .try_get_with(after, async {
                let (upto, _) = self.head();
                let limit = self.config.tuning.batch_size;
                let rows = self.catch_up.reader.read(after, upto, limit).await?;
                let complete_to = match rows.last() {
                    Some(last) if rows.len() == limit as usize => Cursor::At(last.id),
                    _ => upto.max(after),
                };
                let (events, _) = frame::frame(rows, self.config.event.as_deref(), false);
                Ok(Arc::new(Page {
                    events,
                    complete_to,
                }))
            })
            .await
    }

    /// Drops a reused page that no longer helps its reader.
    pub(crate) async fn forget_page(&self, after: Cursor) {
        self.catch_up.pages.invalidate(&after).await;
    }
}
