//! A feed of a Redis stream: its task reads new entries with `XREAD BLOCK`
//! on a connection of its own, after the feed's head, and each entry's id
//! is its event id; clients behind the ring are caught up with `XRANGE`
//! from their id (exclusive) on a shared connection. After an outage the
//! task reads on from the head, so an entry added meanwhile is not lost.

use super::{Decoder, Error, Prepared, ANSWER_WITHIN, FIRST_RETRY};
use crate::config::{FeedConfig, Topic};
use crate::cursor::{self, Cursor, Style};
use crate::feed::{CatchUpRows, Expired, Feed, ReadError, Reader};
use crate::poller::Health;
use crate::source::Row;
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// How long one `XREAD` blocks: also how soon a quiet feed notices that
/// Redis went away.
const BLOCK: Duration = Duration::from_secs(1);

/// Entries one read takes at most.
const READ_COUNT: usize = 512;

/// Entries as Redis returns them: id, then fields and values in turn.
type Entries = Vec<(String, Vec<Vec<u8>>)>;

/// The stream of one feed on one Redis.
struct Stream {
    /// Opens connections to the feed's Redis.
    client: redis::Client,
    /// The stream's key.
    key: String,
    /// The entry field that holds the payload.
    field: String,
    /// Makes rows of entries.
    decoder: Arc<Decoder>,
    /// The URL without its password, for messages.
    url: String,
    /// The connection of catch-up reads, opened on first use and again
    /// after it fails.
    shared: Mutex<Option<MultiplexedConnection>>,
}

/// A Redis stream feed's task.
pub struct Follow {
    /// What it reads (shared with the catch-up reads).
    stream: Arc<Stream>,
}

/// Opens a connection whose commands time out after `response`.
async fn open(client: &redis::Client, response: Duration) -> Result<MultiplexedConnection, Error> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(ANSWER_WITHIN))
        .set_response_timeout(Some(response));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The cursor of entry id `id`, as Redis prints it.
fn cursor_of(id: &str) -> Result<Cursor, Error> {
    cursor::parse_stream_id(id).ok_or_else(|| Error::BadId(id.to_owned()))
}

pub(super) async fn prepare(
    feed: &FeedConfig,
    topic: &Topic,
    key: &str,
    field: &str,
    decoder: Arc<Decoder>,
    health: &Arc<Health>,
) -> Result<Prepared, Error> {
    let client = redis::Client::open(topic.url.as_str()).map_err(|err| Error::Url {
        feed: feed.name.clone(),
        url: crate::source::redact(&topic.url),
        problem: err.to_string(),
    })?;
    let stream = Arc::new(Stream {
        client,
        key: key.to_owned(),
        field: field.to_owned(),
        decoder,
        url: crate::source::redact(&topic.url),
        shared: Mutex::default(),
    });
    let last: Entries = stream
        .query(
            redis::cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
    let head = match last.first() {
        Some((id, _)) => cursor_of(id)?,
        None => Cursor::Start,
    };
    tracing::info!(feed = %feed.name, stream = %key, redis = %stream.url, head = %Style::RedisStream.format(head), "following a Redis stream");
    Ok(Prepared {
        style: Style::RedisStream,
        head,
        reader: Arc::new(CatchUp {
            stream: stream.clone(),
            health: health.clone(),
        }),
        follow: super::Follow::RedisStream(Follow { stream }),
    })
}

impl Stream {
    /// Runs `cmd` on the shared connection; a failure drops it, so the next
    /// command connects again.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let mut slot = self.shared.lock().await;
        let mut connection = match &*slot {
            Some(connection) => connection.clone(),
            None => slot
                .insert(open(&self.client, ANSWER_WITHIN).await?)
                .clone(),
        };
        drop(slot);
        let result = cmd.query_async(&mut connection).await;
        if result.is_err() {
            *self.shared.lock().await = None;
        }
        Ok(result?)
    }

    /// The rows of `entries`, an entry that makes no event as a row
    /// without JSON (it still moves a reader past it); with `health`, such
    /// an entry is counted and logged.
    fn rows(&self, feed: Option<(&Feed, &Health)>, entries: Entries) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::with_capacity(entries.len());
        for (id, flat) in entries {
            let Cursor::At(at) = cursor_of(&id)? else {
                continue;
            };
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((name, value));
            }
            let made = self.decoder.entry(at, &fields, &self.field);
            let row = match feed {
                Some((feed, health)) => super::decoded(feed, health, made),
                None => made.ok(),
            };
            rows.push(row.unwrap_or(Row {
                id: at,
                json: None,
                filters: Vec::new(),
                unless_filters: None,
                event: None,
            }));
        }
        Ok(rows)
    }
}

impl Follow {
    pub(super) fn describe(&self) -> String {
        format!("redis stream `{}` at {}", self.stream.key, self.stream.url)
    }

    pub(super) async fn run(
        self,
        feed: Arc<Feed>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) {
        let stream = &self.stream;
        let mut connection: Option<MultiplexedConnection> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let read = async {
                let connection = match &mut connection {
                    Some(connection) => connection,
                    None => connection.insert(open(&stream.client, BLOCK + ANSWER_WITHIN).await?),
                };
                let (after, _) = feed.head();
                let (ms, seq) = cursor::unstream_id(after);
                let reply: Option<Vec<(String, Entries)>> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .arg("BLOCK")
                    .arg(BLOCK.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&stream.key)
                    .arg(format!("{ms}-{seq}"))
                    .query_async(connection)
                    .await?;
                Ok::<_, Error>(
                    reply
                        .into_iter()
                        .flatten()
                        .flat_map(|(_, e)| e)
                        .collect::<Entries>(),
                )
            };
            let read = tokio::select! {
                read = read => read,
                _ = shutdown.cancelled() => return,
            };
            let rows = match read.and_then(|entries| stream.rows(Some((&feed, &health)), entries)) {
                Ok(rows) => rows,
                Err(err) => {
                    connection = None;
                    if !super::failed(&feed, &health, "Redis", &err, &mut retry, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            health.answers(feed.name(), "Redis");
            retry = FIRST_RETRY;
            // Entries that make no event still move the head past them.
            let Some(last) = rows.last().map(|r| r.id) else {
                continue;
            };
            super::publish(&feed, &health, rows, Cursor::At(last));
        }
    }
}

/// Catch-up reads of a Redis stream feed, counted as its queries.
struct CatchUp {
    /// What it reads.
    stream: Arc<Stream>,
    /// Where its reads are counted.
    health: Arc<Health>,
}

impl CatchUp {
    /// Up to where the stream has lost entries (trimmed or deleted), if it
    /// has: a client after an id below that may have missed some for good.
    /// Redis does not say which ids a trim took, so every id before the
    /// oldest kept counts as gone once any entry was taken.
    async fn deleted_up_to(&self) -> Result<Option<Cursor>, Error> {
        let info: Result<redis::Value, Error> = self
            .stream
            .query(redis::cmd("XINFO").arg("STREAM").arg(&self.stream.key))
            .await;
        self.health.counters.query(&info);
        let info = info?;
        let pairs: Vec<(&redis::Value, &redis::Value)> = match &info {
            redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
            redis::Value::Array(flat) => flat.chunks_exact(2).map(|p| (&p[0], &p[1])).collect(),
            _ => Vec::new(),
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| matches!(k, redis::Value::BulkString(b) if b == name.as_bytes()))
                .map(|(_, v)| *v)
        };
        let number = |name: &str| match field(name) {
            Some(redis::Value::Int(n)) => *n,
            _ => 0,
        };
        let id = |name: &str| match field(name) {
            Some(redis::Value::BulkString(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(cursor::parse_stream_id),
            _ => None,
        };
        let deleted = id("max-deleted-entry-id").filter(|gone| *gone != Cursor::At(0));
        let trimmed = match (number("entries-added") > number("length"), number("length")) {
            (false, _) => None,
            (true, 0) => id("last-generated-id"),
            (true, _) => id("recorded-first-entry-id").map(|first| match first {
                Cursor::At(first) => Cursor::At(first - 1),
                Cursor::Start => Cursor::Start,
            }),
        };
        Ok(deleted.max(trimmed))
    }
}

impl Reader for CatchUp {
    fn read(
        &self,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<Row>, ReadError>> {
        Box::pin(async move {
            let (ms, seq) = cursor::unstream_id(after);
            let (to_ms, to_seq) = cursor::unstream_id(upto);
            if upto <= after || upto == Cursor::Start {
                return Ok(Vec::new());
            }
            let start = match after {
                Cursor::Start => "-".to_owned(),
                _ => format!("({ms}-{seq}"),
            };
            if after != Cursor::Start {
                if let Some(gone) = self.deleted_up_to().await?.filter(|gone| *gone > after) {
                    return Err(Box::new(Expired { resume: gone }) as ReadError);
                }
            }
            let entries: Result<Entries, Error> = self
                .stream
                .query(
                    redis::cmd("XRANGE")
                        .arg(&self.stream.key)
                        .arg(start)
                        .arg(format!("{to_ms}-{to_seq}"))
                        .arg("COUNT")
                        .arg(limit),
                )
                .await;
            let counters = &self.health.counters;
            counters.query(&entries);
            counters.catch_up_queries.fetch_add(1, Ordering::Relaxed);
            Ok(self.stream.rows(None, entries?)?)
        })
    }

    fn changes(&self, _since_ms: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>> {
        Box::pin(async { Ok(CatchUpRows::default()) })
    }
}
