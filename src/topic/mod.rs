//! Topics: feeds whose events come from Redis or NATS instead of a table.
//! One reading task per feed, whatever the number of clients, publishes
//! each message on its feed as a table feed's poller publishes rows; the
//! feed frames, rings and fans them out without knowing where they came
//! from.
//!
//! One file per kind: `redis_stream` (`XREAD BLOCK`, resumable by entry
//! id, caught up with `XRANGE`), `redis_channel` (pub/sub, live only) and
//! `nats` (a JetStream consumer when a stream covers the subject,
//! resumable by sequence; core subscribe, live only, otherwise);
//! `payload` turns a message into a row. A task whose server goes away
//! shows the feed as failing, retries with backoff and resumes from the
//! feed's head, so a resumable topic loses nothing. This module never
//! touches the database, and never logs a URL with its password.

mod nats;
mod payload;
mod redis_channel;
mod redis_stream;

pub use payload::{Decoder, Skip};

use crate::config::{FeedConfig, Topic, TopicKind};
use crate::cursor::{Cursor, Style};
use crate::feed::{Feed, Reader};
use crate::poller::Health;
use crate::source::Row;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The longest wait between retries while Redis or NATS fails.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// The first wait after a failure.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// How long connecting, and any command but a blocking read, may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Why Redis or NATS did not answer as asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("feed `{feed}`: `url`: `{url}`: {problem}")]
    Url {
        feed: String,
        url: String,
        problem: String,
    },
    #[error("feed `{feed}`: cannot reach {what} at {url}: {cause}")]
    Connect {
        feed: String,
        what: &'static str,
        url: String,
        cause: Box<Error>,
    },
    #[error("Redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("NATS: {what}: {source}")]
    Nats {
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed")]
    Closed,
    #[error("Redis returned `{0}` as a stream entry id")]
    BadId(String),
}

impl Error {
    /// A NATS failure of `what`.
    fn nats(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Nats {
            what,
            source: Box::new(source),
        }
    }

    /// Whether retrying later may succeed (the server is down or busy), as
    /// opposed to a refusal that will not change by itself (a wrong type of
    /// key, bad credentials).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                    || err.is_unrecoverable_error()
            }
            Error::Url { .. } => false,
            _ => true,
        }
    }
}

/// A topic feed connected at start-up, ready to follow.
pub struct Prepared {
    /// How the feed's cursors read and print: Redis stream ids, JetStream
    /// sequences, or none (live only).
    pub style: Style,
    /// Where the feed starts: the last message there now.
    pub head: Cursor,
    /// Catch-up reads for clients behind the ring.
    pub reader: Arc<dyn Reader>,
    /// What the feed's task reads.
    pub follow: Follow,
}

/// What a topic feed's task reads.
pub enum Follow {
    /// A Redis stream, by entry id.
    RedisStream(redis_stream::Follow),
    /// A Redis channel or pattern, live.
    RedisChannel(redis_channel::Follow),
    /// A NATS subject, through JetStream or live.
    Nats(nats::Follow),
}

impl Follow {
    /// What it reads, for people (`redis stream orders`), never with a
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Follow::RedisStream(f) => f.describe(),
            Follow::RedisChannel(f) => f.describe(),
            Follow::Nats(f) => f.describe(),
        }
    }
}

/// Connects to `feed`'s topic and finds where it starts.
pub async fn prepare(
    feed: &FeedConfig,
    topic: &Topic,
    health: &Arc<Health>,
) -> Result<Prepared, Error> {
    let decoder = Arc::new(Decoder {
        format: topic.format,
        filter_columns: feed.filter_columns.clone(),
    });
    let reached = |what: &'static str| {
        let (feed, url) = (feed.name.clone(), crate::source::redact(&topic.url));
        move |cause| Error::Connect {
            feed,
            what,
            url,
            cause: Box::new(cause),
        }
    };
    match &topic.kind {
        TopicKind::RedisStream { stream, field } => {
            redis_stream::prepare(feed, topic, stream, field, decoder, health)
                .await
                .map_err(reached("Redis"))
        }
        TopicKind::RedisChannel { channel } => {
            redis_channel::prepare(feed, topic, channel, decoder)
        }
        TopicKind::Nats { subject } => nats::prepare(feed, topic, subject, decoder, health)
            .await
            .map_err(reached("NATS")),
    }
}

/// Follows one topic feed until `shutdown` fires.
pub async fn run(
    feed: Arc<Feed>,
    follow: Follow,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    match follow {
        Follow::RedisStream(f) => f.run(feed, health, shutdown).await,
        Follow::RedisChannel(f) => f.run(feed, health, shutdown).await,
        Follow::Nats(f) => f.run(feed, health, shutdown).await,
    }
}

/// The row of one message, or `None` when it makes no event: then it is
/// counted and logged, and the feed goes on.
fn decoded(feed: &Feed, health: &Health, made: Result<Row, Skip>) -> Option<Row> {
    match made {
        Ok(row) => Some(row),
        Err(skip) => {
            health.counters.skipped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(feed = %feed.name(), cause = %skip, "message passed over");
            None
        }
    }
}

/// Publishes `rows` read up to `head` and counts them.
fn publish(feed: &Feed, health: &Health, rows: Vec<Row>, head: Cursor) {
    let events = feed.publish(rows, head);
    (health.counters.events).fetch_add(events as u64, Ordering::Relaxed);
}

/// Notes a failure of `what` (`Redis`, `NATS`) and waits out `retry`, which
/// doubles; `false` when shutdown came first.
async fn failed(
    feed: &Feed,
    health: &Health,
    what: &str,
    err: &Error,
    retry: &mut Duration,
    shutdown: &CancellationToken,
) -> bool {
    health.counters.errors.fetch_add(1, Ordering::Relaxed);
    let class = match err.is_transient() {
        true => format!("{what} unavailable"),
        false => format!("{what} refused; see the server log"),
    };
    health.failed(feed.name(), &class, err, err.is_transient());
    let wait = *retry;
    *retry = (*retry * 2).min(MAX_RETRY);
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// `future`, or [`Error::Timeout`] after [`ANSWER_WITHIN`].
async fn within<T>(
    future: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(ANSWER_WITHIN, future)
        .await
        .unwrap_or(Err(Error::Timeout(ANSWER_WITHIN)))
}
