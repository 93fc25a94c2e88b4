//! Several instances, one database load: per feed, the instance that holds
//! the feed's database lock ([`LeaderLock`]) polls it and appends each
//! batch to the bus (`relay`); every other instance applies the bus's
//! entries to its own feed (`follow`) and fans them out. When the leader
//! dies, its lock is released by the database and a follower takes over
//! from the bus's last entry, with the same gap-free rules.
//!
//! This module decides who polls; it never frames rows nor talks to
//! clients, and a feed's cursors mean the same on every instance.

mod catchup;
mod follow;
mod relay;

pub use catchup::BusFirst;

use crate::bus::Bus;
use crate::feed::Feed;
use crate::poller::{self, ChangesSetup, Health, Setup};
use crate::source::{ChangesQuery, GapSetup, LeaderLock, Source};
use follow::Follower;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a follower tries the lock, and a leader checks it still holds
/// it: with the database releasing a dead leader's lock at once, the feed
/// changes hands within about this long.
const LOCK_INTERVAL: Duration = Duration::from_millis(500);

/// The longest wait between retries while the bus fails.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What a feed's instance is to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// No bus: it polls the feed itself.
    Standalone = 0,
    /// It applies the bus's entries.
    Follower = 1,
    /// It polls and appends to the bus.
    Leader = 2,
}

impl Role {
    /// The role as `/healthz` and `/metrics` name it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Follower => "follower",
            Role::Leader => "leader",
        }
    }
}

/// A feed's place in the cluster, for `/healthz` and `/metrics`: written
/// by the feed's cluster task only.
#[derive(Debug, Default)]
pub struct Membership {
    role: AtomicU8,
    /// Why the bus fails, if it does.
    bus_failure: Mutex<Option<String>>,
    /// Times this instance took the lead of the feed or gave it up.
    pub leader_changes: AtomicU64,
    /// Entries this instance appended to the bus.
    pub appended: AtomicU64,
    /// Entries this instance applied from the bus.
    pub applied: AtomicU64,
    /// Spans of the feed read from the database because the bus had not
    /// got them (lost, trimmed, or appended while it was down).
    pub filled: AtomicU64,
    /// How long the last entry applied took from its append to here, in ms.
    pub lag_ms: AtomicI64,
}

impl Membership {
    /// The instance's role for the feed.
    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Relaxed) {
            1 => Role::Follower,
            2 => Role::Leader,
            _ => Role::Standalone,
        }
    }

    fn set_role(&self, role: Role) {
        let before = self.role.swap(role as u8, Ordering::Relaxed);
        if before == Role::Leader as u8 || role == Role::Leader {
            self.leader_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Why the bus fails, or `None` when its last use succeeded.
    pub fn bus_failure(&self) -> Option<String> {
        lock(&self.bus_failure).clone()
    }

    fn bus_result<T>(&self, feed: &str, result: &Result<T, crate::bus::Error>) {
        let mut failure = lock(&self.bus_failure);
        match (result, failure.is_some()) {
            (Ok(_), true) => {
                tracing::info!(feed, "bus answers again");
                *failure = None;
            }
            (Err(err), false) => {
                tracing::warn!(feed, cause = %err, "bus unavailable; open streams stay, rows wait");
                *failure = Some("bus unavailable".to_owned());
            }
            _ => {}
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a leader polls a feed with, by its mode.
#[derive(Clone)]
pub enum Plan {
    /// An append feed: what the database tells about gaps in its ids.
    Append(GapSetup),
    /// A changes feed: its SQL (each term samples its horizon afresh).
    Changes(ChangesQuery),
}

/// What one feed's cluster task works with.
pub struct Member {
    pub feed: Arc<Feed>,
    pub source: Source,
    pub plan: Plan,
    pub health: Arc<Health>,
    pub membership: Arc<Membership>,
    pub bus: Bus,
    /// The cluster's prefix, part of the lock's name.
    pub prefix: String,
}

/// Follows or leads one feed until `shutdown` fires.
pub async fn run(member: Member, shutdown: CancellationToken) {
    let Some(mut lock) = LeaderLock::new(&member.source, &member.prefix, member.feed.name()) else {
        unreachable!("SQLite feeds are not clustered");
    };
    let mut follower = Follower::new(&member);
    member.membership.set_role(Role::Follower);
    member.feed.set_following(true);
    follower.start(&member.bus, &shutdown).await;
    let mut reader = member.bus.reader(member.feed.name());
    let mut next_try = Instant::now();
    let mut retry = LOCK_INTERVAL;
    loop {
        // Follow until the lock is ours.
        tokio::select! {
            read = reader.read(follower.position, LOCK_INTERVAL) => {
                member.membership.bus_result(member.feed.name(), &read);
                match read {
                    Ok(entries) => {
                        retry = LOCK_INTERVAL;
                        follower.apply_all(entries, &shutdown).await;
                    }
                    Err(_) => {
                        tokio::select! {
                            _ = tokio::time::sleep(retry) => {}
                            _ = shutdown.cancelled() => return,
                        }
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                }
            }
            _ = shutdown.cancelled() => return,
        }
        if Instant::now() < next_try {
            continue;
        }
        next_try = Instant::now() + LOCK_INTERVAL;
        match lock.try_acquire().await {
            Ok(taken) => {
                member.health.database_answers(member.feed.name());
                if !taken {
                    continue;
                }
            }
            Err(err) => {
                // No leader can poll while the database is down: as with
                // one instance, the feed says so and waits.
                member.health.database_failed(&err, member.feed.name());
                continue;
            }
        }
        // Lead: first everything the bus holds, then poll from there.
        drain(&member, &mut follower, &mut reader, &shutdown).await;
        match setup(&member).await {
            Ok(setup) => {
                tracing::info!(feed = %member.feed.name(), cursor = %member.feed.cursor_text(member.feed.head().0), "leading the feed: polling the database and appending to the bus");
                member.membership.set_role(Role::Leader);
                member.feed.set_following(false);
                follower.fresh = false;
                lead(&member, setup, &mut lock, &shutdown).await;
                tracing::warn!(feed = %member.feed.name(), "lost the feed's lock; following the bus");
            }
            Err(err) => member.health.database_failed(&err, member.feed.name()),
        }
        lock.release();
        if shutdown.is_cancelled() {
            return;
        }
        member.membership.set_role(Role::Follower);
        member.feed.set_following(true);
        next_try = Instant::now() + LOCK_INTERVAL;
    }
}

/// Applies every entry the bus holds past the follower's position.
async fn drain(
    member: &Member,
    follower: &mut Follower,
    reader: &mut crate::bus::Reader,
    shutdown: &CancellationToken,
) {
    loop {
        let read = reader
            .read(follower.position, Duration::from_millis(1))
            .await;
        member.membership.bus_result(member.feed.name(), &read);
        match read {
            Ok(entries) if !entries.is_empty() => follower.apply_all(entries, shutdown).await,
            // Nothing more, or a bus that is down: what the bus missed,
            // followers read from the database.
            _ => return,
        }
    }
}

/// What a term of leading the feed polls with.
async fn setup(member: &Member) -> Result<Setup, crate::source::Error> {
    Ok(match &member.plan {
        Plan::Append(gaps) => Setup::Append(gaps.clone()),
        Plan::Changes(changes) => Setup::Changes(Box::new(
            ChangesSetup::for_term(&member.source, &member.feed, changes.clone()).await?,
        )),
    })
}

/// Polls and relays while this instance holds the lock.
async fn lead(member: &Member, setup: Setup, lock: &mut LeaderLock, shutdown: &CancellationToken) {
    let term = shutdown.child_token();
    let batches = member.feed.batches();
    let relay = tokio::spawn(relay::run(
        member.feed.clone(),
        member.bus.clone(),
        batches,
        member.membership.clone(),
        term.clone(),
    ));
    let polling = tokio::spawn(poller::run(
        member.feed.clone(),
        member.source.clone(),
        setup,
        member.health.clone(),
        term.clone(),
    ));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(LOCK_INTERVAL) => {}
            _ = term.cancelled() => break,
        }
        if !lock.holds().await {
            break;
        }
    }
    term.cancel();
    let _ = polling.await;
    let _ = relay.await;
}
