//! The Postgres LISTEN/NOTIFY doorbell: a trigger on a feed's table rings
//! the `rowcast` channel once per statement, and the feed's poller polls at
//! once instead of waiting out its interval.
//!
//! A notification is only a doorbell. Rows are always read by the normal
//! cursor query, so a lost, folded or late notification can never lose a
//! row; polling goes on at a slow fallback interval. One task holds one
//! dedicated connection for every feed, reconnects by itself after a
//! database restart, and rings every feed once on reconnect.

use crate::config::Notify as NotifyMode;
use crate::hub::Hub;
use crate::source::{Source, NOTIFY_CHANNEL};
use sqlx::postgres::PgListener;
use std::collections::HashMap;
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

/// One feed's doorbell.
#[derive(Debug, Default)]
pub struct Doorbell {
    bell: Notify,
    /// Whether rings can be relied on: the listener is connected and the
    /// table has the trigger. The poller then backs off further when idle.
    live: AtomicBool,
}

impl Doorbell {
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

/// Whether any feed may use the doorbell: Postgres, and not turned off.
pub fn wanted(source: &Source, hubs: &[Arc<Hub>]) -> bool {
    matches!(source, Source::Postgres(_)) && hubs.iter().any(|h| h.config.notify != NotifyMode::Off)
}

/// Listens for the doorbell of every feed that wants it until `shutdown`.
pub async fn listen(url: String, source: Source, hubs: Vec<Arc<Hub>>, shutdown: CancellationToken) {
    let mut by_table: HashMap<String, Vec<Arc<Hub>>> = HashMap::new();
    for hub in hubs
        .into_iter()
        .filter(|h| h.config.notify != NotifyMode::Off)
    {
        by_table
            .entry(hub.query.table.clone())
            .or_default()
            .push(hub);
    }
    let all: Vec<Arc<Hub>> = by_table.values().flatten().cloned().collect();
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
        let mut next_check = check_triggers(&source, &all).await;
        ring(&all);
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        if let Some(hubs) = by_table.get(notification.payload()) {
                            ring(hubs);
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
                    next_check = check_triggers(&source, &all).await;
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

fn ring(hubs: &[Arc<Hub>]) {
    for hub in hubs {
        hub.doorbell.ring();
    }
}

fn set_live(hubs: &[Arc<Hub>], live: bool) {
    for hub in hubs {
        hub.doorbell.set_live(live);
    }
}

/// Marks each feed live when its table has the trigger, logging changes;
/// returns when to check again.
async fn check_triggers(source: &Source, hubs: &[Arc<Hub>]) -> tokio::time::Instant {
    let tables: Vec<String> = hubs.iter().map(|h| h.query.table_sql.clone()).collect();
    // The database is away: the poller reports it.
    let with_trigger = source.notify_triggers(&tables).await.unwrap_or_default();
    for hub in hubs {
        let installed = with_trigger.contains(&hub.query.table_sql);
        if installed != hub.doorbell.is_live() {
            if installed {
                tracing::info!(feed = %hub.name(), table = %hub.query.table, "NOTIFY doorbell on: polling at once on each notification");
            } else {
                tracing::info!(feed = %hub.name(), table = %hub.query.table, "NOTIFY doorbell off: polling only");
                // Wake the poller from its long fallback wait.
                hub.doorbell.ring();
            }
        }
        hub.doorbell.set_live(installed);
    }
    let wait = match with_trigger.is_empty() {
        true => TRIGGER_CHECK_ABSENT,
        false => TRIGGER_CHECK,
    };
    tokio::time::Instant::now() + wait
}
