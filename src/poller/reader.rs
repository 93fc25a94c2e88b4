//! A feed's catch-up reads from its table, for clients behind the replay
//! ring, counted with the poller's queries.

use super::{changes, Health};
use crate::cursor::Cursor;
use crate::feed::{CatchUpRows, ReadError, Reader};
use crate::source::{ChangesQuery, FeedQuery, Row, Source};
use futures::future::BoxFuture;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A feed's catch-up reads from its table, counted with the poller's.
pub struct TableReader {
    pub source: Source,
    pub query: FeedQuery,
    /// A changes feed's SQL.
    pub changes: Option<ChangesQuery>,
    /// The feed's settings.
    pub tuning: crate::config::Tuned,
    pub health: Arc<Health>,
    /// A changes catch-up notes when it began by the database's clock (a
    /// cluster follower places it among its leader's polls by it).
    pub clock: bool,
}

impl Reader for TableReader {
    fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, ReadError>> {
        Box::pin(async move {
            let rows = self.source.read(&self.query, after, upto, limit).await;
            let counters = &self.health.counters;
            counters.query(&rows);
            counters.catch_up_queries.fetch_add(1, Ordering::Relaxed);
            Ok(rows?)
        })
    }

    fn changes(&self, since_ms: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>> {
        Box::pin(async move {
            let Some(changes) = &self.changes else {
                return Ok(CatchUpRows::default());
            };
            let before = self.health.counters.queries.load(Ordering::Relaxed);
            let rows = changes::catch_up(
                &self.source,
                &self.query,
                changes,
                since_ms,
                self.tuning.delete_retention,
                self.tuning.batch_size,
                &self.health,
                self.clock,
            )
            .await;
            let counters = &self.health.counters;
            let read = counters.queries.load(Ordering::Relaxed) - before;
            counters.catch_up_queries.fetch_add(read, Ordering::Relaxed);
            Ok(rows?)
        })
    }
}
