//! Pollers: one task per feed that reads new rows in cursor order and hands
//! them to the feed's hub.
//!
//! One query per poll, whatever the number of clients. While rows flow the
//! poller reads again at once (a full batch) or after the shortest interval;
//! when idle it backs off to the longest. A failing database is retried with
//! backoff, forever, from the same cursor: an outage delays rows, never
//! loses them, and never stops the process.

use crate::cursor::Cursor;
use crate::hub::Hub;
use crate::source::Source;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between retries while the database fails.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Reads one feed until `shutdown` fires.
pub async fn run(hub: Arc<Hub>, source: Source, shutdown: CancellationToken) {
    let feed = hub.config.clone();
    let mut interval = feed.poll_interval;
    let mut retry = feed.poll_interval;
    loop {
        let (cursor, _) = hub.head();
        let result = source
            .read(&hub.query, cursor, Cursor::At(i128::MAX), feed.batch_size)
            .await;
        hub.counters.query(&result);
        let wait = match result {
            Ok(rows) => {
                if hub.failure().is_some() {
                    tracing::info!(feed = %feed.name, %cursor, "database answers again; resuming");
                    hub.set_failure(None);
                }
                retry = feed.poll_interval;
                let full = rows.len() == feed.batch_size as usize;
                match rows.last() {
                    Some(last) => {
                        let head = Cursor::At(last.id);
                        hub.publish(rows, head);
                        interval = feed.poll_interval;
                        if full {
                            // A backlog: drain it without waiting.
                            continue;
                        }
                    }
                    None => interval = (interval * 2).min(feed.max_poll_interval),
                }
                interval
            }
            Err(err) => {
                if hub.failure().is_none() {
                    tracing::warn!(feed = %feed.name, %cursor, cause = %err, "poll failed; retrying with backoff");
                } else {
                    tracing::debug!(feed = %feed.name, cause = %err, "poll failed again");
                }
                hub.set_failure(Some(err.to_string()));
                retry = (retry * 2).min(MAX_RETRY);
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
