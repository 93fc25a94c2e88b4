//! A changes feed's reads of its window, its tombstones and its snapshot,
//! page by page: for its polls and for clients' catch-ups.

use super::{change_row, envelope, key_only, millis};
use crate::feed::{CatchUpRows, ReadSpan};
use crate::poller::Health;
use crate::source::horizon;
use crate::source::{self, Change, ChangesQuery, Source};
use std::time::{Duration, SystemTime};

/// Every page of a keyset-paged read, each page asked for with the last
/// row of the one before (none for the first).
async fn all_pages<F, Fut>(
    batch: u32,
    health: &Health,
    mut page: F,
) -> Result<Vec<Change>, source::Error>
where
    F: FnMut(Option<Change>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Change>, source::Error>>,
{
    let mut rows: Vec<Change> = Vec::new();
    loop {
        let read = page(rows.last().cloned()).await;
        health.counters.query(&read);
        let read = read?;
        let full = read.len() == batch as usize;
        rows.extend(read);
        if !full {
            return Ok(rows);
        }
    }
}

/// Every page of the rows stamped at or after `since`.
pub(super) async fn read_window(
    source: &Source,
    query: &ChangesQuery,
    since: i64,
    batch: u32,
    health: &Health,
) -> Result<Vec<Change>, source::Error> {
    all_pages(batch, health, |last| async move {
        let after = last.as_ref().map(|r| (r.stamp.as_str(), r.id));
        source.read_window(query, since, after, batch).await
    })
    .await
}

/// Every page of the feed's tombstones stamped at or after `since`.
pub(super) async fn read_all_tombstones(
    source: &Source,
    query: &ChangesQuery,
    since: i64,
    batch: u32,
    health: &Health,
) -> Result<Vec<Change>, source::Error> {
    if !query.reads_tombstones() {
        return Ok(Vec::new());
    }
    all_pages(batch, health, |last| async move {
        // A tombstone's stamp is its own id.
        let after = last.and_then(|t| t.stamp.parse().ok()).unwrap_or(0);
        source.read_tombstones(query, since, after, batch).await
    })
    .await
}

/// A changes feed's catch-up: see [`crate::feed::Reader::changes`].
#[allow(clippy::too_many_arguments)]
pub async fn catch_up(
    source: &Source,
    feed_query: &source::FeedQuery,
    query: &ChangesQuery,
    since: i64,
    retention: Duration,
    batch: u32,
    health: &Health,
    clock: bool,
) -> Result<CatchUpRows, source::Error> {
    let began_us = match clock {
        true => {
            let began = horizon::clock_us(source).await;
            health.counters.query(&began);
            Some(began?)
        }
        false => None,
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, millis);
    // Xmin mode's cursors hold transaction ids, which say nothing of time.
    let reset =
        since != 0 && !query.xmin && query.reads_tombstones() && since < now - millis(retention);
    if since == 0 || reset {
        let live = all_pages(batch, health, |last| async move {
            let after = last.map_or(i128::MIN, |r| r.id);
            source.read_snapshot(query, after, batch).await
        })
        .await?;
        let rows = live
            .into_iter()
            .filter_map(|row| Some(change_row(envelope("insert", &row.json?), row.filters)))
            .collect();
        let read = read_span(source, began_us, health).await?;
        return Ok(CatchUpRows { reset, rows, read });
    }
    let mut rows = Vec::new();
    for tomb in read_all_tombstones(source, query, since, batch, health).await? {
        let row = tomb
            .json
            .unwrap_or_else(|| key_only(&feed_query.id_column, tomb.id));
        rows.push(change_row(envelope("delete", &row), tomb.filters));
    }
    for row in read_window(source, query, since, batch, health).await? {
        let Some(json) = row.json else { continue };
        let op = if row.deleted { "delete" } else { "update" };
        rows.push(change_row(envelope(op, &json), row.filters));
    }
    let read = read_span(source, began_us, health).await?;
    Ok(CatchUpRows {
        reset: false,
        rows,
        read,
    })
}

/// The span of a read that began at `began_us`, ending now.
async fn read_span(
    source: &Source,
    began_us: Option<i64>,
    health: &Health,
) -> Result<Option<ReadSpan>, source::Error> {
    let Some(began_us) = began_us else {
        return Ok(None);
    };
    let ended = horizon::clock_us(source).await;
    health.counters.query(&ended);
    Ok(Some(ReadSpan {
        began_us,
        ended_us: ended?,
    }))
}
