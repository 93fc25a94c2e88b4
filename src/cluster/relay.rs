//! A leader's relay: appends each batch its feed publishes to the bus, in
//! order, one entry per batch whatever the number of clients. While the
//! bus is down the leader goes on polling and serving its own clients; when
//! the bus returns it appends a marker at its head, and followers read the
//! rows of the batches the bus missed from the database. Late rows (which
//! no span holds) that could not be appended are kept and appended after
//! that marker.

use super::Membership;
use crate::bus::{Appended, Bus, Entry};
use crate::cursor::Cursor;
use crate::feed::{Batch, Feed};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

/// How long an append may take before the bus counts as down.
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a relay whose bus is down tries it again.
const RETRY: Duration = Duration::from_millis(500);

/// Late batches kept while the bus is down; older ones beyond are dropped,
/// with a warning.
const MAX_HELD: usize = 1024;

/// Appends `batches` of `feed` to the bus until `stop` fires.
pub async fn run(
    feed: Arc<Feed>,
    bus: Bus,
    mut batches: broadcast::Receiver<Arc<Batch>>,
    membership: Arc<Membership>,
    stop: CancellationToken,
) {
    let style = feed.style();
    // Late batches at the current head, numbered after it.
    let mut late = (Cursor::Start, 0u64);
    // The head the bus has not got to yet, while it is down.
    let mut missing: Option<Cursor> = None;
    // Late batches the bus has not got, while it is down.
    let mut held: VecDeque<Entry> = VecDeque::new();
    let mut retry = tokio::time::interval(RETRY);
    loop {
        let (entry, retrying) = tokio::select! {
            batch = batches.recv() => match batch {
                Ok(batch) => (Entry::of(&batch, feed.epoch()), false),
                // The bus fell behind the feed: followers read what it
                // missed from the database once the next entry shows it.
                Err(RecvError::Lagged(_)) => {
                    missing = Some(feed.head().0);
                    continue;
                }
                Err(RecvError::Closed) => return,
            },
            _ = retry.tick(), if missing.is_some() => match missing {
                Some(head) => (Entry::marker(head, feed.epoch()), true),
                None => continue,
            },
            _ = stop.cancelled() => return,
        };
        let number = match entry.late {
            true if late.0 == entry.head => late.1 + 1,
            true => 1,
            false => 0,
        };
        if entry.late {
            late = (entry.head, number);
        }
        if missing.is_some() && !retrying {
            // Only a marker retries a bus that is down.
            missing = Some(entry.head);
            if entry.late {
                hold(&mut held, entry, feed.name());
            }
            continue;
        }
        let Some(key) = entry.key(style, number) else {
            // A feed before its first row, or late rows that no key can
            // place: followers find the rows in the next span.
            missing = None;
            continue;
        };
        if !append(&bus, &feed, &membership, key, &entry).await {
            missing = Some(feed.head().0.max(entry.head));
            if entry.late {
                hold(&mut held, entry, feed.name());
            }
            continue;
        }
        missing = None;
        // Back on the bus: the late rows it missed go after the marker, at
        // the head it moved followers to.
        while let Some(mut entry) = held.pop_front() {
            let head = feed.head().0;
            let number = if late.0 == head { late.1 + 1 } else { 1 };
            entry.head = head;
            entry.from = head;
            let Some(key) = entry.key(style, number) else {
                continue;
            };
            late = (head, number);
            if !append(&bus, &feed, &membership, key, &entry).await {
                held.push_front(entry);
                missing = Some(head);
                break;
            }
        }
    }
}

/// Keeps a late batch that the bus did not get, for when it returns.
fn hold(held: &mut VecDeque<Entry>, entry: Entry, feed: &str) {
    if held.len() == MAX_HELD {
        held.pop_front();
        tracing::warn!(feed, "the bus has been down through {MAX_HELD} late batches; followers will not get the oldest");
    }
    held.push_back(entry);
}

/// Appends `entry` at `key`, within [`APPEND_TIMEOUT`]; whether the bus
/// holds it now (`false`: it failed, and the feed says so).
async fn append(
    bus: &Bus,
    feed: &Feed,
    membership: &Membership,
    key: crate::bus::Key,
    entry: &Entry,
) -> bool {
    let appended =
        match tokio::time::timeout(APPEND_TIMEOUT, bus.append(feed.name(), key, entry)).await {
            Ok(result) => result,
            Err(_) => Err(crate::bus::Error::Timeout(APPEND_TIMEOUT)),
        };
    membership.bus_result(feed.name(), &appended);
    match appended {
        Ok(Appended::Added) => {
            membership.appended.fetch_add(1, Ordering::Relaxed);
            true
        }
        // Another leader got there first: followers take the rows from
        // its entry, or from this leader's next, whose span shows them.
        Ok(Appended::Stale) => {
            tracing::debug!(feed = %feed.name(), %key, "the bus holds this span already");
            true
        }
        Err(_) => false,
    }
}
