//! Catch-up reads of a clustered feed: a client behind an instance's ring
//! is caught up from the bus's retained entries when they reach back far
//! enough, and from the database otherwise, so that a reconnect storm on
//! many instances costs the database little more than on one. A changes
//! feed's events come back from the bus by their numbers, exactly as they
//! were sent.

use crate::bus::{Bus, Key};
use crate::cursor::{Cursor, Style};
use crate::feed::{CatchUpRows, ReadError, Reader};
use crate::source::Row;
use futures::future::BoxFuture;
use std::sync::Arc;

/// Entries read at once from the bus for one page.
const ENTRIES: usize = 256;

/// Reads pages from the bus first, then from `table`.
pub struct BusFirst {
    pub bus: Bus,
    pub feed: String,
    pub style: Style,
    /// The feed's reader of its table.
    pub table: Arc<dyn Reader>,
}

impl BusFirst {
    /// The rows of (`after`, `upto`] (at most `limit`) from the bus, when its
    /// entries cover that span without a hole; `None` when they do not.
    async fn read_bus(&self, after: Cursor, upto: Cursor, limit: u32) -> Option<Vec<Row>> {
        let mut rows = Vec::new();
        let mut position = after;
        let mut start = Key::last_at(after, self.style);
        while position < upto {
            let entries = match self.bus.range(&self.feed, start, ENTRIES).await {
                Ok(entries) => entries,
                Err(err) => {
                    tracing::debug!(feed = %self.feed, cause = %err, "catch-up from the bus failed; reading the table");
                    return None;
                }
            };
            if entries.is_empty() {
                tracing::debug!(feed = %self.feed, ?position, "the bus has no entries after the cursor; reading the table");
                return None;
            }
            for stored in entries {
                let Ok(entry) = stored.entry else {
                    tracing::debug!(feed = %self.feed, "an entry on the bus is unreadable; reading the table");
                    return None;
                };
                // The next read starts after this entry: its Redis id, or
                // the last key its head can have.
                start = match stored.position {
                    crate::bus::Position::Redis(key) => Some(key),
                    _ => Key::last_at(entry.head, self.style),
                };
                if entry.late || entry.head <= position {
                    continue;
                }
                // A hole before this entry: the database has what it lacks.
                if entry.from > position {
                    tracing::debug!(feed = %self.feed, ?position, from = ?entry.from, "the bus has a hole before the next entry; reading the table");
                    return None;
                }
                for row in entry.rows {
                    let at = Cursor::At(row.id);
                    if at > position && at <= upto {
                        rows.push(row);
                        if rows.len() == limit as usize {
                            return Some(rows);
                        }
                    }
                }
                position = entry.head;
                if position >= upto {
                    break;
                }
            }
        }
        Some(rows)
    }
}

impl Reader for BusFirst {
    fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, ReadError>> {
        Box::pin(async move {
            match self.read_bus(after, upto, limit).await {
                Some(rows) => Ok(rows),
                None => self.table.read(after, upto, limit).await,
            }
        })
    }

    fn retained(&self, after: Cursor, upto: Cursor, limit: u32) -> BoxFuture<'_, Option<Vec<Row>>> {
        Box::pin(self.read_bus(after, upto, limit))
    }

    fn changes(&self, since_ms: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>> {
        self.table.changes(since_ms)
    }
}
