//! The cluster bus: where a feed's leader appends each batch it publishes
//! and every other instance reads them, so that one instance polls the
//! database per feed whatever the number of instances. A Redis stream or a
//! NATS JetStream subject per feed, reached with their own well-kept
//! clients; this module knows entries and keys, not feeds or clients.
//!
//! An entry's key is the cursor it ends at ([`Key`]): the bus refuses a key
//! not above the last one (Redis `XADD` with an explicit id; JetStream's
//! expected last sequence), so two instances that both think they lead
//! for a moment cannot append the same span twice.

mod chatter;
mod entry;
mod nats;
mod redis;

pub use chatter::Listener;
pub use entry::{now_ms, Entry, Key, Malformed};

use std::time::Duration;

/// Entries a feed's stream keeps (about): enough for followers that lag
/// and for clients behind the ring, not a history.
pub const RETAINED: u64 = 10_000;

/// Why the bus did not answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bus `{url}`: {problem}")]
    Url { url: String, problem: String },
    #[error("bus (Redis): {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("bus (NATS): {what}: {source}")]
    Nats {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("bus: no answer within {0:?}")]
    Timeout(Duration),
    #[error("bus: the connection was lost")]
    Lost,
}

/// A bus URL as logs and errors show it: a password, or a bare token
/// (`nats://s3cret@host`), hidden.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(end), Some(at)) if at > end && !url[end + 3..at].contains(':') => {
            format!("{}***{}", &url[..end + 3], &url[at..])
        }
        _ => crate::source::redact(url),
    }
}

/// A connection to the bus, shared by the feeds of an instance.
#[derive(Clone)]
pub enum Bus {
    Redis(redis::RedisBus),
    Nats(nats::NatsBus),
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The entry is on the bus.
    Added,
    /// The bus holds an entry at or above this key already (another
    /// leader's): this one is not needed.
    Stale,
}

/// Where a reader is in a feed's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Before every entry.
    Origin,
    /// Just after the Redis entry of this key.
    Redis(Key),
    /// Just after the JetStream message of this stream sequence.
    Nats(u64),
}

/// An entry read from the bus, and where it was.
#[derive(Debug)]
pub struct Stored {
    /// Where a reader that took it goes on from.
    pub position: Position,
    /// The entry, or why it could not be read (it is passed over; the next
    /// entry's span shows what it held).
    pub entry: Result<Entry, Malformed>,
}

impl Bus {
    /// The bus at `url` (`redis://`, `rediss://`, `nats://`, `tls://`),
    /// its streams' names starting with `prefix`. Connects lazily: a bus
    /// that is down at start-up is retried like one that goes down later.
    pub async fn connect(url: &str, prefix: &str) -> Result<Bus, Error> {
        let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
        match scheme {
            "redis" | "rediss" | "redis+unix" | "unix" => {
                Ok(Bus::Redis(redis::RedisBus::new(url, prefix)?))
            }
            "nats" | "tls" | "ws" | "wss" => Ok(Bus::Nats(nats::NatsBus::new(url, prefix).await?)),
            _ => Err(Error::Url {
                url: redact(url),
                problem: "unknown scheme; use redis://, rediss://, nats:// or tls://".to_owned(),
            }),
        }
    }

    /// `redis` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Bus::Redis(_) => "redis",
            Bus::Nats(_) => "nats",
        }
    }

    /// Appends `entry` to `feed`'s stream at `key`.
    pub async fn append(&self, feed: &str, key: Key, entry: &Entry) -> Result<Appended, Error> {
        match self {
            Bus::Redis(bus) => bus.append(feed, key, &entry.encode()).await,
            Bus::Nats(bus) => bus.append(feed, key, &entry.encode()).await,
        }
    }

    /// The last entry of `feed`'s stream, if it has one.
    pub async fn last(&self, feed: &str) -> Result<Option<Stored>, Error> {
        match self {
            Bus::Redis(bus) => bus.last(feed).await,
            Bus::Nats(bus) => bus.last(feed).await,
        }
    }

    /// Up to `count` entries of `feed` with keys above `after` (from the
    /// first when `None`), in order.
    pub async fn range(
        &self,
        feed: &str,
        after: Option<Key>,
        count: usize,
    ) -> Result<Vec<Stored>, Error> {
        match self {
            Bus::Redis(bus) => bus.range(feed, after, count).await,
            Bus::Nats(bus) => bus.range(feed, after, count).await,
        }
    }

    /// A reader of `feed`'s stream, on a connection of its own (it blocks).
    pub fn reader(&self, feed: &str) -> Reader {
        match self {
            Bus::Redis(bus) => Reader::Redis(Box::new(bus.reader(feed))),
            Bus::Nats(bus) => Reader::Nats(bus.reader(feed)),
        }
    }

    /// Whether the bus answers.
    pub async fn ping(&self) -> Result<(), Error> {
        match self {
            Bus::Redis(bus) => bus.ping().await,
            Bus::Nats(bus) => bus.ping().await,
        }
    }
}

/// Reads one feed's stream in order.
pub enum Reader {
    Redis(Box<redis::RedisReader>),
    Nats(nats::NatsReader),
}

impl Reader {
    /// The entries after `after`, waiting up to `wait` for one; none when
    /// the wait ends first.
    pub async fn read(&mut self, after: Position, wait: Duration) -> Result<Vec<Stored>, Error> {
        match self {
            Reader::Redis(reader) => reader.read(after, wait).await,
            Reader::Nats(reader) => reader.read(after, wait).await,
        }
    }
}
