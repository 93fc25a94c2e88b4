//! Presence: who is connected to each scope of a feed (the feed and a
//! stream's filter, e.g. room 5), told by the streams themselves.
//!
//! A stream with a member key holds a [`Seat`] while it is open; a key
//! joins with its first seat in a scope and leaves once its last seat has
//! been gone for the grace, so a reload or a reconnect is neither a leave
//! nor a join. Each join and leave is a change with a number, framed once
//! and kept in its scope's log; a [`Watch`] gives a new watcher the
//! members (or the changes after its cursor) and then every later change,
//! with nothing between. Idle scopes cost no timer: one task per feed
//! waits for the next leave that is due. Knows no sockets: a stream's
//! closing is its seat's drop.

mod json;
mod remote;
mod share;

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use json::Cursor;
pub use remote::{Heard, Said};
pub use share::share;

/// A run's changes are numbered from a random multiple of 2^40: 2^40
/// changes before they reach the next run's, 2^23 runs to draw from.
const RUN_SHIFT: u32 = 40;
const RUN_MASK: u64 = (1 << 23) - 1;

/// Changes a scope keeps for watchers that resume from a cursor; one
/// further back gets the members instead.
const LOG: usize = 1024;

/// A scope: the filter of the streams it gathers, each column's values
/// sorted, the columns in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Scope(Box<[(usize, Box<[String]>)]>);

impl Scope {
    /// The scope of streams with `filter`.
    pub fn of(filter: &crate::feed::Filter) -> Scope {
        let mut columns: Vec<(usize, Box<[String]>)> = filter
            .columns()
            .map(|(column, values)| (column, values.into()))
            .collect();
        columns.sort();
        Scope(columns.into())
    }
}

/// A feed's presence: its scopes and their members.
pub struct Presence {
    /// How long a member's last connection may be gone before it leaves.
    grace: Duration,
    state: Mutex<State>,
    /// Rings the leave task when a leave is scheduled.
    wake: Notify,
    /// Where this instance's own joins and leaves go, when other instances
    /// share the feed's presence.
    said: std::sync::OnceLock<mpsc::UnboundedSender<Said>>,
    /// Joins since start, for `/metrics`.
    pub joins: AtomicU64,
    /// Leaves since start, for `/metrics`.
    pub leaves: AtomicU64,
}

struct State {
    rooms: HashMap<Scope, Room>,
    /// The number of the latest change, in any scope. Its top bits are
    /// random per run, so that a cursor of an earlier run or of another
    /// instance falls outside every scope's log here.
    latest: u64,
    /// Members whose last connection is gone, by when they leave.
    leaving: BTreeMap<(Instant, u64), (Scope, Arc<str>)>,
    /// Tells entries of `leaving` apart.
    next_leave: u64,
    /// Each other instance sharing the feed's presence: when it was last
    /// heard, and the members it has.
    instances: HashMap<u64, remote::Instance>,
}

/// One scope.
struct Room {
    /// The members, by key.
    members: BTreeMap<Arc<str>, Member>,
    /// The latest changes, oldest first: every change numbered above
    /// `floor`.
    log: VecDeque<Change>,
    floor: u64,
    /// The number of the scope's latest change, for its watchers.
    changed: watch::Sender<u64>,
}

/// A key in a scope, here or on other instances.
struct Member {
    /// Its open streams on this instance.
    connections: usize,
    /// When it joined.
    since: SystemTime,
    /// What its entry shows besides the key (the first connection's).
    meta: serde_json::Value,
    /// Its entry in `leaving`, while its last connection here is gone.
    leaving: Option<(Instant, u64)>,
    /// Its open streams on each other instance that has it, by instance.
    remote: BTreeMap<u64, usize>,
}

impl Member {
    /// A member that no instance has a stream of yet.
    fn new(since: SystemTime, meta: serde_json::Value) -> Member {
        Member {
            connections: 0,
            since,
            meta,
            leaving: None,
            remote: BTreeMap::new(),
        }
    }

    /// Whether this instance has the member (connected, or in its grace).
    fn is_here(&self) -> bool {
        self.connections > 0 || self.leaving.is_some()
    }

    /// Whether some instance has it.
    fn is_anywhere(&self) -> bool {
        self.is_here() || !self.remote.is_empty()
    }
}

/// A join or a leave, framed.
struct Change {
    number: u64,
    frame: Bytes,
}

impl Presence {
    /// A feed's presence, whose members leave `grace` after their last
    /// connection closed.
    pub fn new(grace: Duration) -> Arc<Presence> {
        use std::hash::{BuildHasher, Hasher};
        let run = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Arc::new(Presence {
            grace,
            state: Mutex::new(State {
                rooms: HashMap::new(),
                latest: (run & RUN_MASK) << RUN_SHIFT,
                leaving: BTreeMap::new(),
                next_leave: 0,
                instances: HashMap::new(),
            }),
            said: std::sync::OnceLock::new(),
            wake: Notify::new(),
            joins: AtomicU64::new(0),
            leaves: AtomicU64::new(0),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seats `key` in `scope` until the seat is dropped: its first seat
    /// there is a join (with `meta`), and a seat taken within the grace of
    /// its last one's end is neither a leave nor a join.
    pub fn connect(self: &Arc<Self>, scope: &Scope, key: &str, meta: serde_json::Value) -> Seat {
        let mut state = self.state();
        let State {
            rooms,
            latest,
            leaving,
            ..
        } = &mut *state;
        let room = Room::of(rooms, scope, *latest);
        let (key, member) = room.member(key, SystemTime::now(), &meta);
        let (was_here, was_anywhere) = (member.is_here(), member.is_anywhere());
        member.connections += 1;
        if let Some(entry) = member.leaving.take() {
            leaving.remove(&entry);
        }
        let since = member.since;
        if !was_anywhere {
            room.joined(&key, latest, &self.joins);
        }
        if !was_here {
            self.say(Said::Join {
                scope: scope.clone(),
                key: key.to_string(),
                meta,
                since,
            });
        }
        Seat {
            presence: self.clone(),
            scope: scope.clone(),
            key,
        }
    }

    /// A seat's end: the member leaves after the grace, unless it is
    /// seated again meanwhile.
    fn disconnect(&self, scope: &Scope, key: &Arc<str>) {
        let mut state = self.state();
        let State {
            rooms,
            leaving,
            next_leave,
            ..
        } = &mut *state;
        let Some(member) = rooms.get_mut(scope).and_then(|r| r.members.get_mut(key)) else {
            return;
        };
        member.connections -= 1;
        if member.connections > 0 {
            return;
        }
        let entry = (Instant::now() + self.grace, *next_leave);
        *next_leave += 1;
        member.leaving = Some(entry);
        leaving.insert(entry, (scope.clone(), key.clone()));
        drop(state);
        self.wake.notify_one();
    }

    /// Follows `scope` from `after` (a cursor of this scope that the
    /// watcher has everything up to), or from its members when `after` is
    /// `None` or older than the scope's log. Returns what to send first
    /// and the watch for every later change.
    pub fn watch(self: &Arc<Self>, scope: &Scope, after: Option<Cursor>) -> (Bytes, Watch) {
        let mut state = self.state();
        let latest = state.latest;
        let room = Room::of(&mut state.rooms, scope, latest);
        let changed = room.changed.subscribe();
        let mut seen = after.map_or(0, |c| c.0);
        let first = room.since(&mut seen, latest);
        drop(state);
        let watch = Watch {
            presence: self.clone(),
            scope: scope.clone(),
            changed,
            seen,
        };
        (first, watch)
    }

    /// `scope`'s members and the cursor they are current at, as
    /// `GET /presence/{feed}` answers.
    pub fn members(&self, scope: &Scope) -> serde_json::Value {
        let state = self.state();
        let members = state.rooms.get(scope).map_or(Vec::new(), Room::entries);
        json::listing(members, state.latest)
    }

    /// Members seated now, over every scope.
    pub fn member_count(&self) -> usize {
        self.state().rooms.values().map(|r| r.members.len()).sum()
    }

    /// Runs the leaves that come due, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let due = self.state().leaving.keys().next().map(|(at, _)| *at);
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = tokio::time::sleep_until(due.unwrap_or(far)) => self.expire(Instant::now()),
                _ = self.wake.notified() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Removes the members whose leave is due by `now`.
    fn expire(&self, now: Instant) {
        let mut state = self.state();
        let State {
            rooms,
            latest,
            leaving,
            ..
        } = &mut *state;
        while let Some(entry) = leaving.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (at, (scope, key)) = entry.remove_entry();
            let Some(room) = rooms.get_mut(&scope) else {
                continue;
            };
            let Some(member) = room.members.get_mut(&key) else {
                continue;
            };
            if member.leaving != Some(at) {
                continue;
            }
            member.leaving = None;
            self.say(Said::Leave {
                scope: scope.clone(),
                key: key.to_string(),
            });
            room.settle(&key, latest, &self.leaves);
            if room.is_unused() {
                rooms.remove(&scope);
            }
        }
    }

    /// Sends this instance's join or leave to the instances that share
    /// the feed's presence, if any.
    fn say(&self, said: Said) {
        if let Some(to) = self.said.get() {
            let _ = to.send(said);
        }
    }

    /// This instance's joins and leaves from now on, for sharing with
    /// other instances; once.
    pub fn share(&self) -> Option<mpsc::UnboundedReceiver<Said>> {
        let (to, from) = mpsc::unbounded_channel();
        self.said.set(to).ok().map(|()| from)
    }

    /// The members this instance has, with their streams here, for other
    /// instances.
    pub fn here(&self) -> Vec<Heard> {
        let state = self.state();
        let mut here = Vec::new();
        for (scope, room) in &state.rooms {
            for (key, member) in room.members.iter().filter(|(_, m)| m.is_here()) {
                here.push(Heard {
                    scope: scope.clone(),
                    key: key.to_string(),
                    meta: member.meta.clone(),
                    since: member.since,
                    connections: member.connections,
                });
            }
        }
        here
    }
}

impl Room {
    /// The room of `scope`, made (its log complete after `latest`) if new.
    fn of<'a>(rooms: &'a mut HashMap<Scope, Room>, scope: &Scope, latest: u64) -> &'a mut Room {
        rooms.entry(scope.clone()).or_insert_with(|| Room {
            members: BTreeMap::new(),
            log: VecDeque::new(),
            floor: latest,
            changed: watch::Sender::new(latest),
        })
    }

    /// The member `key`, added with `since` and `meta` (and no stream yet)
    /// if new, and its key as the room holds it.
    fn member(
        &mut self,
        key: &str,
        since: SystemTime,
        meta: &serde_json::Value,
    ) -> (Arc<str>, &mut Member) {
        let key: Arc<str> = match self.members.get_key_value(key) {
            Some((key, _)) => key.clone(),
            None => key.into(),
        };
        let member =
            (self.members.entry(key.clone())).or_insert_with(|| Member::new(since, meta.clone()));
        (key, member)
    }

    /// The join of `key`, which no instance had a stream of until now.
    fn joined(&mut self, key: &Arc<str>, latest: &mut u64, joins: &AtomicU64) {
        let Some(member) = self.members.get(key) else {
            return;
        };
        let frame = json::change("join", key, &member.meta, *latest + 1);
        self.push(latest, frame);
        joins.fetch_add(1, Ordering::Relaxed);
    }

    /// Numbers a change `latest + 1`, keeps it and tells the watchers.
    fn push(&mut self, latest: &mut u64, frame: Bytes) {
        *latest += 1;
        self.log.push_back(Change {
            number: *latest,
            frame,
        });
        if self.log.len() > LOG {
            if let Some(oldest) = self.log.pop_front() {
                self.floor = oldest.number;
            }
        }
        self.changed.send_replace(*latest);
    }

    /// Removes `key` when no instance has it any more, with its leave.
    fn settle(&mut self, key: &Arc<str>, latest: &mut u64, leaves: &AtomicU64) {
        let Some(member) = self.members.get(key) else {
            return;
        };
        if member.is_anywhere() {
            return;
        }
        let member = self.members.remove(key).expect("just found");
        self.push(
            latest,
            json::change("leave", key, &member.meta, *latest + 1),
        );
        leaves.fetch_add(1, Ordering::Relaxed);
    }

    /// What a watcher that has everything up to `seen` is missing, and
    /// moves `seen` to `latest`: the changes after it, or the members
    /// when the log does not reach back that far.
    fn since(&self, seen: &mut u64, latest: u64) -> Bytes {
        let out = if *seen < self.floor || *seen > latest {
            json::sync(self.entries(), latest)
        } else {
            let mut buf = BytesMut::new();
            for change in self.log.iter().filter(|c| c.number > *seen) {
                buf.extend_from_slice(&change.frame);
            }
            buf.freeze()
        };
        *seen = latest;
        out
    }

    /// The members as entries, by key.
    fn entries(&self) -> Vec<serde_json::Value> {
        (self.members.iter())
            .map(|(key, m)| {
                let connections = m.connections + m.remote.values().sum::<usize>();
                json::member(key, connections, m.since, &m.meta)
            })
            .collect()
    }

    /// Whether nobody is in the scope or watches it.
    fn is_unused(&self) -> bool {
        self.members.is_empty() && self.changed.receiver_count() == 0
    }
}

/// A key's place in a scope, for as long as one of its streams is open.
pub struct Seat {
    presence: Arc<Presence>,
    scope: Scope,
    key: Arc<str>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.presence.disconnect(&self.scope, &self.key);
    }
}

/// A watcher of one scope's changes.
pub struct Watch {
    presence: Arc<Presence>,
    scope: Scope,
    changed: watch::Receiver<u64>,
    /// The watcher has every change up to this number.
    seen: u64,
}

impl Watch {
    /// The frames of the next changes. Cancel-safe.
    pub async fn next(&mut self) -> Bytes {
        loop {
            if self.changed.changed().await.is_err() {
                // The scope is kept while it has watchers: not reached.
                std::future::pending::<()>().await;
            }
            let state = self.presence.state();
            let Some(room) = state.rooms.get(&self.scope) else {
                continue;
            };
            let frames = room.since(&mut self.seen, state.latest);
            if !frames.is_empty() {
                return frames;
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut state = self.presence.state();
        // This watch's receiver is still counted.
        let unused = state
            .rooms
            .get(&self.scope)
            .is_some_and(|r| r.members.is_empty() && r.changed.receiver_count() <= 1);
        if unused {
            state.rooms.remove(&self.scope);
        }
    }
}

#[cfg(test)]
mod tests;
