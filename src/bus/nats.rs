//! The bus on NATS JetStream: a stream per prefix (`<prefix>_feeds`), in it
//! a subject per feed (`<prefix>.feed.<feed>`) that keeps about
//! [`RETAINED`] entries. The server takes an append only if the subject's
//! last entry is still the one the appender saw (its expected last subject
//! sequence); when another came first, the append is stale unless its key
//! is above that one's.

mod range;
mod reader;
mod url;

pub use reader::NatsReader;

use super::{Appended, Entry, Error, Key, Position, Stored, RETAINED};
use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectOptions, ServerAddr};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long a request other than a blocking read may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The client's own limit, above ours so that ours decides and names the
/// failure (a timeout, or a lost connection).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Publishes one append tries while other instances append before it.
const ATTEMPTS: usize = 5;

/// The header that carries an entry's key, to compare a refused append's
/// key with the one that won.
const KEY_HEADER: &str = "Rowcast-Key";

/// JetStream, reached on first use; feeds' readers share its connection.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server, without the credentials (they are in `options`): the
    /// client logs its address.
    addr: ServerAddr,
    /// Credentials, TLS, timeouts.
    options: ConnectOptions,
    /// The connection, made by the first request that needs it; the client
    /// reconnects by itself after that.
    link: OnceCell<Link>,
    /// Start of the subjects' names.
    prefix: String,
    /// The stream that holds every feed of the prefix.
    stream: String,
    /// Whether the stream is known to exist; cleared when a request finds
    /// it gone, so that the next one creates it again.
    ensured: AtomicBool,
    /// Per feed, the stream sequence of the last entry this instance saw on
    /// its subject: what the next append expects to follow.
    last: Mutex<HashMap<String, u64>>,
}

/// A connection and its JetStream context.
struct Link {
    /// For the connection's state and round trips.
    client: Client,
    /// For streams, publishes, consumers.
    js: jetstream::Context,
}

/// The last message of a feed's subject.
struct Last {
    /// Its stream sequence.
    seq: u64,
    /// Its key; `None` when it is not rowcast's.
    key: Option<Key>,
    /// Its entry.
    payload: bytes::Bytes,
}

/// An error of the NATS client, in rowcast's terms.
fn failed(what: &'static str, err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Nats {
        what,
        source: Box::new(err),
    }
}

/// Whether `name` can be one token of a subject and part of a stream name:
/// no `.` (a separator), `*` or `>` (wildcards), space or path separators.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl NatsBus {
    pub async fn new(url: &str, prefix: &str) -> Result<NatsBus, Error> {
        if !is_token(prefix) {
            return Err(Error::Url {
                url: super::redact(url),
                problem: format!(
                    "prefix `{prefix}`: a NATS subject token is letters, digits, `_`, `-`"
                ),
            });
        }
        let (addr, options) = url::options(url, RESPONSE_TIMEOUT, CLIENT_TIMEOUT)?;
        Ok(NatsBus {
            inner: Arc::new(Inner {
                addr,
                options,
                link: OnceCell::new(),
                prefix: prefix.to_owned(),
                stream: format!("{prefix}_feeds"),
                ensured: AtomicBool::new(false),
                last: Mutex::default(),
            }),
        })
    }

    /// The connection, made now if it is not yet. A lost one fails at once
    /// rather than queue requests that would go out after the caller gave
    /// up on them.
    async fn link(&self) -> Result<&Link, Error> {
        let inner = &self.inner;
        let link = inner
            .link
            .get_or_try_init(|| async {
                let connect = inner.options.clone().connect(inner.addr.clone());
                let client = tokio::time::timeout(RESPONSE_TIMEOUT * 2, connect)
                    .await
                    .map_err(|_| Error::Timeout(RESPONSE_TIMEOUT * 2))?
                    .map_err(|err| failed("connect", err))?;
                let js = jetstream::ContextBuilder::new()
                    .timeout(CLIENT_TIMEOUT)
                    .build(client.clone());
                Ok::<_, Error>(Link { client, js })
            })
            .await?;
        if link.client.connection_state() == State::Disconnected {
            return Err(Error::Nats {
                what: "connect",
                source: "connection lost; reconnecting".into(),
            });
        }
        Ok(link)
    }

    /// Runs `request`, bounded by `limit`.
    async fn bounded<T>(
        &self,
        limit: Duration,
        request: impl Future<Output = T>,
    ) -> Result<T, Error> {
        let result = tokio::time::timeout(limit, request).await;
        match result {
            Ok(value) => Ok(value),
            Err(_) => match self.link().await {
                Ok(_) => Err(Error::Timeout(limit)),
                Err(lost) => Err(lost),
            },
        }
    }

    fn subject(&self, feed: &str) -> Result<String, Error> {
        self.subject_of("feed", feed)
    }

    /// The subject `<prefix>.<kind>.<name>`, when `name` can be a token.
    fn subject_of(&self, kind: &str, name: &str) -> Result<String, Error> {
        if !is_token(name) {
            return Err(Error::Nats {
                what: "subject",
                source: format!("{kind} `{name}` cannot be a subject token").into(),
            });
        }
        Ok(format!("{}.{kind}.{name}", self.inner.prefix))
    }

    /// The stream, created if it does not exist (with settings of our
    /// choice; one made by an operator keeps theirs).
    async fn stream(&self) -> Result<stream::Stream<()>, Error> {
        let js = &self.link().await?.js;
        let name = &self.inner.stream;
        if !self.inner.ensured.load(Ordering::Acquire) {
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.feed.>", self.inner.prefix)],
                storage: StorageType::File,
                max_messages_per_subject: RETAINED as i64,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            let created = self
                .bounded(RESPONSE_TIMEOUT, js.get_or_create_stream(config))
                .await?;
            if let Err(err) = created {
                // Another instance may have created it between our look and
                // our create, with settings of its own.
                let found = self.bounded(RESPONSE_TIMEOUT, js.get_stream(name)).await?;
                found.map_err(|_| failed("stream", err))?;
            }
            self.inner.ensured.store(true, Ordering::Release);
        }
        js.get_stream_no_info(name)
            .await
            .map_err(|err| failed("stream", err))
    }

    /// Forgets the stream, after a request found it gone: the next request
    /// creates it again, and appends look for the subjects' last entries
    /// (the sequences known were the old stream's).
    fn lost_stream(&self) {
        self.inner.ensured.store(false, Ordering::Release);
        if let Ok(mut last) = self.inner.last.lock() {
            last.clear();
        }
    }

    fn remember(&self, feed: &str, seq: u64) {
        if let Ok(mut last) = self.inner.last.lock() {
            last.insert(feed.to_owned(), seq);
        }
    }

    fn known(&self, feed: &str) -> Option<u64> {
        self.inner.last.lock().ok()?.get(feed).copied()
    }

    /// The last message on `subject`, if there is one.
    async fn last_message(&self, subject: &str) -> Result<Option<Last>, Error> {
        for attempt in 0..2 {
            let stream = self.stream().await?;
            let get = stream.get_last_raw_message_by_subject(subject);
            let err = match self.bounded(RESPONSE_TIMEOUT, get).await? {
                Ok(message) => {
                    let key = message.headers.get(KEY_HEADER);
                    return Ok(Some(Last {
                        seq: message.sequence,
                        key: key.and_then(|k| k.as_str().parse().ok()),
                        payload: message.payload,
                    }));
                }
                Err(err) => err,
            };
            match err.kind() {
                LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                LastRawMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND && attempt == 0 =>
                {
                    self.lost_stream();
                }
                _ => return Err(failed("last", err)),
            }
        }
        Err(Error::Nats {
            what: "last",
            source: "the stream went away again".into(),
        })
    }

    pub async fn append(&self, feed: &str, key: Key, bytes: &[u8]) -> Result<Appended, Error> {
        let subject = self.subject(feed)?;
        let payload = bytes::Bytes::copy_from_slice(bytes);
        let mut expected = match self.known(feed) {
            Some(seq) => seq,
            None => match self.last_message(&subject).await? {
                Some(last) if last.key.is_some_and(|k| k >= key) => {
                    self.remember(feed, last.seq);
                    return Ok(Appended::Stale);
                }
                Some(last) => last.seq,
                None => 0,
            },
        };
        let mut missing = false;
        for _ in 0..ATTEMPTS {
            self.stream().await?;
            let js = &self.link().await?.js;
            let publish = PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("{}.{feed}.{key}", self.inner.prefix))
                .header(KEY_HEADER, key.to_string())
                .expected_last_subject_sequence(expected);
            let sent = async { js.send_publish(subject.clone(), publish).await?.await };
            match self.bounded(RESPONSE_TIMEOUT, sent).await? {
                // Another instance appended this very key a moment ago.
                Ok(ack) if ack.duplicate => return Ok(Appended::Stale),
                Ok(ack) => {
                    self.remember(feed, ack.sequence);
                    return Ok(Appended::Added);
                }
                Err(err) => match err.kind() {
                    PublishErrorKind::WrongLastSequence => {}
                    // Deleted, or lost by a server restarted without storage.
                    PublishErrorKind::StreamNotFound if !missing => {
                        missing = true;
                        self.lost_stream();
                    }
                    // Again, with the stream there: it does not take the
                    // feed's subject (made by hand with other subjects).
                    _ => return Err(failed("publish", err)),
                },
            }
            // Something else is last now: another leader's entry, or none
            // in a stream made again.
            match self.last_message(&subject).await? {
                Some(last) if last.key.is_some_and(|k| k >= key) => {
                    self.remember(feed, last.seq);
                    return Ok(Appended::Stale);
                }
                Some(last) => expected = last.seq,
                None => expected = 0,
            }
        }
        Err(Error::Nats {
            what: "publish",
            source: format!("feed `{feed}`: other appends kept coming first").into(),
        })
    }

    pub async fn last(&self, feed: &str) -> Result<Option<Stored>, Error> {
        let subject = self.subject(feed)?;
        Ok(self.last_message(&subject).await?.map(|last| Stored {
            position: Position::Nats(last.seq),
            entry: Entry::decode(&last.payload),
        }))
    }

    pub fn reader(&self, feed: &str) -> NatsReader {
        NatsReader::new(self.clone(), feed)
    }

    /// Asks JetStream for the account's state: the server answers, and so
    /// does JetStream. Read as plain JSON, so that a server of another
    /// version than the client's types does not fail it.
    /// Publishes `message` on the core subject of what instances say on
    /// `name`.
    pub async fn say(&self, name: &str, message: bytes::Bytes) -> Result<(), Error> {
        let subject = self.subject_of("chatter", name)?;
        let client = &self.link().await?.client;
        let sent = self.bounded(RESPONSE_TIMEOUT, client.publish(subject, message));
        sent.await?.map_err(|err| failed("publish", err))
    }

    /// What instances say on `name`, from a subscription of its own.
    pub async fn listen(
        &self,
        name: &str,
    ) -> Result<futures::stream::BoxStream<'static, bytes::Bytes>, Error> {
        use futures::StreamExt;
        let subject = self.subject_of("chatter", name)?;
        let client = &self.link().await?.client;
        let subscriber = client
            .subscribe(subject)
            .await
            .map_err(|err| failed("subscribe", err))?;
        Ok(subscriber.map(|m| m.payload).boxed())
    }

    pub async fn ping(&self) -> Result<(), Error> {
        let js = &self.link().await?.js;
        let empty = serde_json::json!({});
        let info = js.request::<_, _, serde_json::Value>("INFO", &empty);
        let info = self.bounded(RESPONSE_TIMEOUT, info).await?;
        let info = info.map_err(|err| failed("ping", err))?;
        match info.get("error") {
            Some(error) => Err(Error::Nats {
                what: "ping",
                source: format!("JetStream: {error}").into(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_make_subjects() {
        assert!(is_token("orders_2-b"));
        for name in ["", "a.b", "a*", ">", "a b", "a/b", "é"] {
            assert!(!is_token(name), "{name:?}");
        }
    }
}
