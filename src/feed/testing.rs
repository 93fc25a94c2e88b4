//! A feed built in memory, for unit tests here and in `http`: no database
//! behind it, and a reader that is never asked.

use super::{Feed, FeedQuery, Reader, Row};
use crate::config::{Config, ServeArgs};
use crate::cursor::Cursor;
use crate::source::{query::Dialect, Table};
use futures::future::BoxFuture;
use std::sync::Arc;

/// Batches a subscriber may fall behind the broadcast.
pub const BUFFER: usize = 16;

/// A reader for feeds whose clients never fall behind the ring.
struct Unread;

impl Reader for Unread {
    fn read(
        &self,
        _: Cursor,
        _: Cursor,
        _: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, crate::feed::ReadError>> {
        panic!("these tests read nothing from a database")
    }

    fn changes(
        &self,
        _: i64,
    ) -> BoxFuture<'_, Result<crate::feed::CatchUpRows, crate::feed::ReadError>> {
        panic!("these tests read nothing from a database")
    }
}

pub fn feed(ring_size: usize, head: Cursor) -> Arc<Feed> {
    let mut args = ServeArgs::default();
    args.server.database_url = Some("sqlite::memory:".into());
    args.feed.table = Some("messages".into());
    args.feed.filter_columns = Some(vec!["room_id".into()]);
    let mut config = Config::merge(&args, Default::default())
        .unwrap()
        .feeds
        .remove(0);
    config.tuning.ring_size = ring_size;
    let table = Table {
        display: "messages".into(),
        columns: vec!["id".into(), "room_id".into()],
        id_column: "id".into(),
        unsigned: false,
        txid_column: None,
    };
    let query = FeedQuery::new(Dialect::Sqlite, &config, &table, &table.columns).unwrap();
    Arc::new(Feed::new(config, query, Arc::new(Unread), head, BUFFER))
}
