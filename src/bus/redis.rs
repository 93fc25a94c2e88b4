//! The bus on Redis: a stream per feed (`<prefix>:<feed>`), entry ids the
//! entries' keys, trimmed to about [`RETAINED`] entries.

use super::{Appended, Entry, Error, Key, Position, Stored, RETAINED};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// How long a command other than a blocking read may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Entries one read takes at most.
const READ_COUNT: usize = 512;

/// Redis, for appends and single reads; blocking reads have connections of
/// their own ([`RedisReader`]).
#[derive(Clone)]
pub struct RedisBus {
    pub(super) client: Arc<redis::Client>,
    prefix: Arc<str>,
    /// The shared connection, opened on first use and again after it fails.
    connection: Arc<Mutex<Option<MultiplexedConnection>>>,
}

/// Opens a connection whose commands time out after `response`.
async fn open(client: &redis::Client, response: Duration) -> Result<MultiplexedConnection, Error> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

fn stored(id: String, fields: Vec<Vec<u8>>) -> Stored {
    let key = id.parse::<Key>();
    // Fields come as `e <entry>`.
    let entry = match (&key, fields.get(1)) {
        (Ok(_), Some(bytes)) => Entry::decode(bytes),
        (Err(err), _) => Err(err.clone()),
        (_, None) => Err(super::Malformed(format!("entry {id} has no `e` field"))),
    };
    Stored {
        // An id that is not a key is passed over by reading after it.
        position: Position::Redis(key.unwrap_or(Key {
            major: u64::MAX,
            minor: u64::MAX,
        })),
        entry,
    }
}

impl RedisBus {
    pub fn new(url: &str, prefix: &str) -> Result<RedisBus, Error> {
        let client = redis::Client::open(url).map_err(|err| Error::Url {
            url: super::redact(url),
            problem: err.to_string(),
        })?;
        Ok(RedisBus {
            client: Arc::new(client),
            prefix: prefix.into(),
            connection: Arc::default(),
        })
    }

    fn stream(&self, feed: &str) -> String {
        format!("{}:{feed}", self.prefix)
    }

    /// The pub/sub channel of what instances say on `name`.
    pub(super) fn channel(&self, name: &str) -> String {
        format!("{}:chatter:{name}", self.prefix)
    }

    /// Runs `cmd` on the shared connection; a failure drops it, so the next
    /// command connects again.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let mut slot = self.connection.lock().await;
        let mut connection = match &*slot {
            Some(connection) => connection.clone(),
            None => {
                let connection = open(&self.client, RESPONSE_TIMEOUT).await?;
                *slot = Some(connection.clone());
                connection
            }
        };
        drop(slot);
        let result = cmd.query_async(&mut connection).await;
        if let Err(err) = &result {
            if err.is_io_error() || err.is_connection_dropped() || err.is_timeout() {
                *self.connection.lock().await = None;
            }
        }
        Ok(result?)
    }

    pub async fn append(&self, feed: &str, key: Key, bytes: &[u8]) -> Result<Appended, Error> {
        let cmd = redis::cmd("XADD")
            .arg(self.stream(feed))
            .arg("MAXLEN")
            .arg("~")
            .arg(RETAINED)
            .arg(key.to_string())
            .arg("e")
            .arg(bytes)
            .clone();
        match self.query::<String>(&cmd).await {
            Ok(_) => Ok(Appended::Added),
            // "The ID specified in XADD is equal or smaller than the target
            // stream top item"
            Err(Error::Redis(err))
                if err.detail().is_some_and(|d| d.contains("equal or smaller")) =>
            {
                Ok(Appended::Stale)
            }
            Err(err) => Err(err),
        }
    }

    pub async fn last(&self, feed: &str) -> Result<Option<Stored>, Error> {
        let cmd = redis::cmd("XREVRANGE")
            .arg(self.stream(feed))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .clone();
        let entries: Vec<(String, Vec<Vec<u8>>)> = self.query(&cmd).await?;
        Ok(entries
            .into_iter()
            .next()
            .map(|(id, fields)| stored(id, fields)))
    }

    /// Up to `count` entries with keys above `after` (from the first when
    /// `None`), in order.
    pub async fn range(
        &self,
        feed: &str,
        after: Option<Key>,
        count: usize,
    ) -> Result<Vec<Stored>, Error> {
        let start = after.map_or("-".to_owned(), |key| format!("({key}"));
        let cmd = redis::cmd("XRANGE")
            .arg(self.stream(feed))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .clone();
        let entries: Vec<(String, Vec<Vec<u8>>)> = self.query(&cmd).await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| stored(id, fields))
            .collect())
    }

    pub fn reader(&self, feed: &str) -> RedisReader {
        RedisReader {
            client: self.client.clone(),
            stream: self.stream(feed),
            connection: None,
        }
    }

    pub async fn ping(&self) -> Result<(), Error> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }
}

/// Reads one feed's stream with `XREAD BLOCK`, on a connection of its own.
pub struct RedisReader {
    client: Arc<redis::Client>,
    stream: String,
    connection: Option<MultiplexedConnection>,
}

type ReadReply = Option<Vec<(String, Vec<(String, Vec<Vec<u8>>)>)>>;

impl RedisReader {
    pub async fn read(&mut self, after: Position, wait: Duration) -> Result<Vec<Stored>, Error> {
        let after = match after {
            Position::Redis(key) => key.to_string(),
            _ => "0-0".to_owned(),
        };
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => self
                .connection
                .insert(open(&self.client, wait + RESPONSE_TIMEOUT).await?),
        };
        let reply: Result<ReadReply, _> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(after)
            .query_async(connection)
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                self.connection = None;
                return Err(err.into());
            }
        };
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| stored(id, fields))
            .collect())
    }
}
