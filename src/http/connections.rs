//! The connections the listener holds, and room for new ones.
//!
//! Every connection is an open file, and a process may hold only so many.
//! Past `max_clients`, a new connection takes the place of the one that has
//! been idle longest — waiting for its first request head, or kept alive
//! between requests — so that silent or abandoned connections can never
//! keep a fresh client (a stream, `/healthz`) out. A connection that is
//! busy (a request in progress, an open stream) is never closed to make
//! room; with no idle one to close, the new connection is refused.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The open connections, with a cap.
#[derive(Debug)]
pub struct Connections {
    /// Most connections held at once.
    max: usize,
    registry: Mutex<Registry>,
    /// Idle connections closed to make room for new ones.
    pub evicted: AtomicU64,
    /// New connections refused because every held one was busy.
    pub refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Registry {
    /// Connections held, evicted ones not counted.
    open: usize,
    /// The next connection's id and the next idle turn's key, in one
    /// increasing sequence so that keys order idle turns by age.
    next: u64,
    /// Each held connection: its idle turn's key while idle, and how many
    /// requests it is busy with.
    held: HashMap<u64, Held>,
    /// Idle connections by when they became idle, the oldest first.
    idle: BTreeMap<u64, u64>,
}

#[derive(Debug)]
struct Held {
    idle_key: Option<u64>,
    busy: usize,
    evict: Arc<Notify>,
}

impl Registry {
    fn key(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// One held connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Connection {
    connections: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
}

/// Marks a connection busy until dropped.
#[derive(Debug)]
pub struct Busy {
    connections: Arc<Connections>,
    id: u64,
}

impl Connections {
    /// Room for `max` connections (at least one).
    pub fn new(max: usize) -> Connections {
        Connections {
            max: max.max(1),
            registry: Mutex::default(),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.registry().open
    }

    /// The most connections held at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a place for a connection just accepted, idle until its first
    /// request: a free one, or the place of the connection idle longest,
    /// which is told to close. `None` when every held connection is busy.
    pub fn admit(self: &Arc<Self>) -> Option<Connection> {
        let mut registry = self.registry();
        if registry.open >= self.max {
            let (_, oldest) = registry.idle.pop_first()?;
            if let Some(held) = registry.held.remove(&oldest) {
                held.evict.notify_one();
            }
            registry.open -= 1;
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let (id, idle_key) = (registry.key(), registry.key());
        let evict = Arc::new(Notify::new());
        registry.held.insert(
            id,
            Held {
                idle_key: Some(idle_key),
                busy: 0,
                evict: evict.clone(),
            },
        );
        registry.idle.insert(idle_key, id);
        registry.open += 1;
        drop(registry);
        Some(Connection {
            connections: self.clone(),
            id,
            evict,
        })
    }
}

impl Connection {
    /// Completes when the connection was closed to make room for a new
    /// one: its owner drops it then. Only ever while it is idle.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }

    /// Marks the connection busy (a request, a stream) until the guard is
    /// dropped.
    pub fn busy(&self) -> Busy {
        let mut registry = self.connections.registry();
        let registry = &mut *registry;
        if let Some(held) = registry.held.get_mut(&self.id) {
            held.busy += 1;
            if let Some(key) = held.idle_key.take() {
                registry.idle.remove(&key);
            }
        }
        Busy {
            connections: self.connections.clone(),
            id: self.id,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut registry = self.connections.registry();
        let key = registry.key();
        let registry = &mut *registry;
        let Some(held) = registry.held.get_mut(&self.id) else {
            return;
        };
        held.busy = held.busy.saturating_sub(1);
        if held.busy == 0 {
            held.idle_key = Some(key);
            registry.idle.insert(key, self.id);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut registry = self.connections.registry();
        // An evicted connection gave its place up already.
        if let Some(held) = registry.held.remove(&self.id) {
            if let Some(key) = held.idle_key {
                registry.idle.remove(&key);
            }
            registry.open -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn was_evicted(connection: &Connection) -> bool {
        tokio::time::timeout(Duration::from_millis(10), connection.evicted())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_new_connection_takes_the_place_of_the_one_idle_longest() {
        let connections = Arc::new(Connections::new(3));
        let first = connections.admit().unwrap();
        let second = connections.admit().unwrap();
        let third = connections.admit().unwrap();
        assert_eq!(connections.open(), 3);
        // The first becomes busy and idle again: now the second is oldest.
        drop(first.busy());
        let fourth = connections.admit().unwrap();
        assert!(was_evicted(&second).await);
        assert!(!was_evicted(&first).await);
        assert!(!was_evicted(&third).await);
        assert_eq!(connections.open(), 3);
        assert_eq!(connections.evicted.load(Ordering::Relaxed), 1);
        // The evicted one's drop gives nothing back twice.
        drop(second);
        assert_eq!(connections.open(), 3);
        drop(fourth);
        assert_eq!(connections.open(), 2);
        drop((first, third));
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn busy_connections_are_never_closed_to_make_room() {
        let connections = Arc::new(Connections::new(2));
        let streaming = connections.admit().unwrap();
        let _stream = streaming.busy();
        let polling = connections.admit().unwrap();
        let request = polling.busy();
        assert!(connections.admit().is_none());
        assert!(!was_evicted(&streaming).await);
        assert!(!was_evicted(&polling).await);
        // Once its request is answered the poller idles, and may make room.
        drop(request);
        let newcomer = connections.admit().unwrap();
        assert!(was_evicted(&polling).await);
        assert!(!was_evicted(&streaming).await);
        drop(newcomer);
        assert_eq!(connections.open(), 1);
    }
}
