//! Catch-up reads: pages of rows for subscribers whose cursor is older than
//! the replay ring.
//!
//! Identical reads in flight are coalesced and their result kept for a
//! moment (moka's `try_get_with`), so a thousand clients resuming from the
//! same id cost one query. A page never reaches past the hub's head: rows
//! beyond it are not settled yet, and a client must not skip ahead of them.

use super::{Event, Hub};
use crate::cursor::Cursor;
use crate::source;
use moka::future::Cache;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long a page may be reused. Reuse is always correct (a page says how
/// far it is complete); this only bounds how stale a reused page can be.
const PAGE_TTL: Duration = Duration::from_secs(2);
const MAX_PAGES: u64 = 1024;

/// Rows after a cursor, framed.
#[derive(Debug)]
pub struct Page {
    /// Events in id order.
    pub events: Vec<Arc<Event>>,
    /// Every row up to here has been read: the reader's new position.
    pub complete_to: Cursor,
}

pub(super) struct CatchUp {
    pages: Cache<Cursor, Arc<Page>>,
}

impl CatchUp {
    pub(super) fn new() -> CatchUp {
        CatchUp {
            pages: Cache::builder()
                .max_capacity(MAX_PAGES)
                .time_to_live(PAGE_TTL)
                .build(),
        }
    }
}

impl Hub {
    /// The page of rows just after `after`, from the database or from a
    /// read another subscriber started.
    pub(crate) async fn catch_up(&self, after: Cursor) -> Result<Arc<Page>, Arc<source::Error>> {
        self.catch_up
            .pages
            .try_get_with(after, async {
                let (upto, _) = self.head();
                let limit = self.config.tuning.batch_size;
                let rows = self.source.read(&self.query, after, upto, limit).await;
                self.counters.query(&rows);
                self.counters
                    .catch_up_queries
                    .fetch_add(1, Ordering::Relaxed);
                let rows = rows?;
                let complete_to = match rows.last() {
                    Some(last) if rows.len() == limit as usize => Cursor::At(last.id),
                    _ => upto.max(after),
                };
                let (events, _) = self.frame(rows, false);
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
