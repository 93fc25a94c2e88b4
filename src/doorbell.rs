//! The Postgres LISTEN/NOTIFY doorbell: a trigger on a feed's table rings
//! the `rowcast` channel once per statement, and the bell of every feed of
//! that table rings, so that its poller polls at once instead of waiting
//! out its interval.
//!
//! A notification is only a doorbell. Rows are always read by the normal
//! cursor query, so a lost, folded or late notification can never lose a
//! row; polling goes on at a slow fallback interval. One task holds one
//! dedicated connection for every bell, reconnects by itself after a
//! database restart, and rings every bell once on reconnect. It knows
//! tables and bells, nothing of feeds.

use crate::source::{Source, NOTIFY_CHANNEL};
use sqlx::postgres::PgListener;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often the listener checks which tables have the trigger while one
/// has it, so that removing it soon falls back to polling.
const TRIGGER_CHECK: Duration = Duration::from_secs(5);
/// How often it checks while no table has the trigger: installing one
/// takes effect within this, and a database where it was never installed
/// is asked rarely.
const TRIGGER_CHECK_ABSENT: Duration = Duration::from_secs(60);
/// The longest wait between attempts to reconnect the listener.
const MAX_RECONNECT: Duration = Duration::from_secs(10);

/// One poller's doorbell.
#[derive(Debug, Default)]
pub struct Bell {
    bell: Notify,
    /// Whether rings can be relied on: the listener is connected and the
    /// table has the trigger. The poller then backs off further when idle.
    live: AtomicBool,
}

impl Bell {
    /// Asks the poller to poll now. A ring while it is polling is kept, so
    /// a row committed during that poll is read by the next.
    pub fn ring(&self) {
        self.bell.notify_one();
    }

    /// Waits for a ring.
    pub async fn rung(&self) {
        self.bell.notified().await;
    }

    /// Forgets a ring that came while nobody waited.
    pub fn forget(&self) {
        use futures::FutureExt;
        let _ = self.bell.notified().now_or_never();
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }
}

/// A table whose changes ring bells.
#[derive(Debug, Clone)]
pub struct Table {
    /// The table as the catalog names it (`schema.table`): the
    /// notification's payload.
    pub name: String,
    /// The table, quoted for SQL: what the trigger check asks about.
    pub sql: String,
    /// The bell of each feed of the table, with the feed's name for logs.
    pub bells: Vec<(String, Arc<Bell>)>,
}

/// Listens for the doorbell of every table until `shutdown`.
pub async fn listen(url: String, source: Source, tables: Vec<Table>, shutdown: CancellationToken) {
    let by_name: HashMap<String, Vec<Arc<Bell>>> = tables
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.bells.iter().map(|(_, b)| b.clone()).collect(),
            )
        })
        .collect();
    let all: Vec<Arc<Bell>> = by_name.values().flatten().cloned().collect();
    let mut retry = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            connected = connect(&url) => connected,
            _ = shutdown.cancelled() => return,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(cause = %err, "NOTIFY listener cannot connect; retrying");
                set_live(&all, false);
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.cancelled() => return,
                }
                retry = (retry * 2).min(MAX_RECONNECT);
                continue;
            }
        };
        retry = Duration::from_millis(100);
        // Rings may have been missed while disconnected: poll once.
        let mut next_check = check_triggers(&source, &tables).await;
        ring(&all);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if let Some(bells) = by_name.get(notification.payload()) {
                            ring(bells);
                        }
                    }
                    // The connection dropped; the next call reconnects.
                    Ok(None) => {
                        tracing::warn!("NOTIFY listener lost its connection; reconnecting");
                        set_live(&all, false);
                        ring(&all);
                        next_check = tokio::time::Instant::now();
                    }
                    Err(err) => {
                        tracing::warn!(cause = %err, "NOTIFY listener failed; reconnecting");
                        set_live(&all, false);
                        break;
                    }
                },
                _ = tokio::time::sleep_until(next_check) => {
                    next_check = check_triggers(&source, &tables).await;
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}

fn ring(bells: &[Arc<Bell>]) {
    for bell in bells {
        bell.ring();
    }
}

fn set_live(bells: &[Arc<Bell>], live: bool) {
    for bell in bells {
        bell.set_live(live);
    }
}

/// Marks each bell live when its table has the trigger, logging changes;
/// returns when to check again.
async fn check_triggers(source: &Source, tables: &[Table]) -> tokio::time::Instant {
    let names: Vec<String> = tables.iter().map(|t| t.sql.clone()).collect();
    // The database is away: the poller reports it.
    let with_trigger: HashSet<String> = source.notify_triggers(&names).await.unwrap_or_default();
    for table in tables {
        let installed = with_trigger.contains(&table.sql);
        for (feed, bell) in &table.bells {
            if installed != bell.is_live() {
                if installed {
                    tracing::info!(%feed, table = %table.name, "NOTIFY doorbell on: polling at once on each notification");
                } else {
                    tracing::info!(%feed, table = %table.name, "NOTIFY doorbell off: polling only");
                    // Wake the poller from its long fallback wait.
                    bell.ring();
                }
            }
            bell.set_live(installed);
        }
    }
    let wait = match with_trigger.is_empty() {
        true => TRIGGER_CHECK_ABSENT,
        false => TRIGGER_CHECK,
    };
    tokio::time::Instant::now() + wait
}
