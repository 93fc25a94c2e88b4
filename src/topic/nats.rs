//! A feed of a NATS subject. When a JetStream stream covers the subject
//! (asked at start-up), an ordered consumer reads it from the feed's head
//! and each message's stream sequence is its event id: resumable, and
//! caught up for clients behind the ring by an ephemeral consumer from
//! their sequence. Otherwise a core subscription reads it live only, like
//! a Redis channel. The client reconnects by itself; the task watches its
//! connection state so that `/healthz` shows an outage.

use super::{Decoder, Error, Prepared, FIRST_RETRY};
use crate::config::{FeedConfig, Topic};
use crate::cursor::{Cursor, IdRange, Style};
use crate::feed::{CatchUpRows, Expired, Feed, ReadError, Reader};
use crate::poller::Health;
use crate::source::Row;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the task looks at the client's connection state.
const WATCH: Duration = Duration::from_millis(250);

/// How long a catch-up consumer outlives its last use, should its deletion
/// fail.
const CONSUMER_IDLE: Duration = Duration::from_secs(30);

/// A NATS subject feed's task.
pub struct Follow {
    /// The connection, which reconnects by itself.
    client: async_nats::Client,
    /// The subject followed.
    subject: String,
    /// Makes rows of messages.
    decoder: Arc<Decoder>,
    /// The JetStream stream that covers the subject, if one does.
    stream: Option<Arc<async_nats::jetstream::stream::Stream>>,
    /// The URL without its password, for messages.
    url: String,
}

pub(super) async fn prepare(
    feed: &FeedConfig,
    topic: &Topic,
    subject: &str,
    decoder: Arc<Decoder>,
    health: &Arc<Health>,
) -> Result<Prepared, Error> {
    let url = crate::source::redact(&topic.url);
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(super::ANSWER_WITHIN)
        .connect(topic.url.as_str())
        .await
        .map_err(|e| Error::nats("connect", e))?;
    let jetstream = async_nats::jetstream::new(client.clone());
    // No stream for the subject, or no JetStream at all: core NATS.
    let stream =
        match super::within(async { Ok(jetstream.stream_by_subject(subject).await) }).await? {
            Ok(name) => Some(
                jetstream
                    .get_stream(&name)
                    .await
                    .map_err(|e| Error::nats("stream info", e))?,
            ),
            Err(_) => None,
        };
    let (style, head, reader): (Style, Cursor, Arc<dyn Reader>) = match &stream {
        Some(stream) => {
            let name = &stream.cached_info().config.name;
            let last = stream.cached_info().state.last_sequence;
            tracing::info!(feed = %feed.name, %subject, nats = %url, stream = %name, head = last, "following a NATS subject through JetStream (resumable by sequence)");
            let head = match last {
                0 => Cursor::Start,
                last => Cursor::At(last.into()),
            };
            let reader = Arc::new(CatchUp {
                stream: Arc::new(stream.clone()),
                subject: subject.to_owned(),
                decoder: decoder.clone(),
                health: health.clone(),
            });
            (Style::Ids(IdRange::Unsigned), head, reader)
        }
        None => {
            tracing::info!(feed = %feed.name, %subject, nats = %url, "following a NATS subject (no JetStream stream covers it: live only, its events carry no id)");
            (
                Style::Live,
                Cursor::Start,
                Arc::new(super::redis_channel::Unkept),
            )
        }
    };
    Ok(Prepared {
        style,
        head,
        reader,
        follow: super::Follow::Nats(Follow {
            client,
            subject: subject.to_owned(),
            decoder,
            stream: stream.map(Arc::new),
            url,
        }),
    })
}

/// A JetStream message's stream sequence.
fn sequence(message: &async_nats::jetstream::Message) -> Result<u64, Error> {
    message
        .info()
        .map(|info| info.stream_sequence)
        .map_err(|e| Error::Nats {
            what: "message info",
            source: e,
        })
}

/// The sequence a reader after `cursor` starts at.
fn start(cursor: Cursor) -> DeliverPolicy {
    match cursor {
        Cursor::At(seq) if seq > 0 => DeliverPolicy::ByStartSequence {
            start_sequence: u64::try_from(seq + 1).unwrap_or(u64::MAX),
        },
        _ => DeliverPolicy::All,
    }
}

impl Follow {
    pub(super) fn describe(&self) -> String {
        format!("nats subject `{}` at {}", self.subject, self.url)
    }

    pub(super) async fn run(
        self,
        feed: Arc<Feed>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) {
        let mut retry = FIRST_RETRY;
        let mut number = match feed.head().0 {
            Cursor::At(n) => n,
            Cursor::Start => 0,
        };
        loop {
            let read = tokio::select! {
                read = self.follow(&feed, &health, &mut number, &mut retry) => read,
                _ = shutdown.cancelled() => return,
            };
            let err = match read {
                Ok(()) => Error::Closed,
                Err(err) => err,
            };
            if !super::failed(&feed, &health, "NATS", &err, &mut retry, &shutdown).await {
                return;
            }
        }
    }

    /// Reads until the subscription or the connection fails.
    async fn follow(
        &self,
        feed: &Feed,
        health: &Health,
        number: &mut i128,
        retry: &mut Duration,
    ) -> Result<(), Error> {
        let mut watch = tokio::time::interval(WATCH);
        let mut up = false;
        match &self.stream {
            Some(stream) => {
                let consumer = stream
                    .create_consumer(pull::OrderedConfig {
                        filter_subject: self.subject.clone(),
                        deliver_policy: start(feed.head().0),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| Error::nats("create consumer", e))?;
                let mut messages = consumer
                    .messages()
                    .await
                    .map_err(|e| Error::nats("consume", e))?;
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = watch.tick() => {
                            self.watch(feed, health, &mut up, retry)?;
                            continue;
                        }
                    };
                    let message = match message {
                        Some(message) => message.map_err(|e| Error::nats("consume", e))?,
                        None => return Ok(()),
                    };
                    let seq = sequence(&message)?;
                    if Cursor::At(seq.into()) <= feed.head().0 {
                        continue;
                    }
                    let made = self.decoder.row(seq.into(), &message.payload);
                    let rows = super::decoded(feed, health, made).into_iter().collect();
                    super::publish(feed, health, rows, Cursor::At(seq.into()));
                }
            }
            None => {
                let mut messages = self
                    .client
                    .subscribe(self.subject.clone())
                    .await
                    .map_err(|e| Error::nats("subscribe", e))?;
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = watch.tick() => {
                            self.watch(feed, health, &mut up, retry)?;
                            continue;
                        }
                    };
                    let Some(message) = message else {
                        return Ok(());
                    };
                    *number += 1;
                    let made = self.decoder.row(*number, &message.payload);
                    let rows = super::decoded(feed, health, made).into_iter().collect();
                    super::publish(feed, health, rows, Cursor::At(*number));
                }
            }
        }
    }

    /// Shows the connection's state in the feed's health: an error when it
    /// is lost, so that the caller starts again once it is back.
    fn watch(
        &self,
        feed: &Feed,
        health: &Health,
        up: &mut bool,
        retry: &mut Duration,
    ) -> Result<(), Error> {
        match self.client.connection_state() {
            State::Connected if !*up => {
                *up = true;
                *retry = FIRST_RETRY;
                health.answers(feed.name(), "NATS");
                Ok(())
            }
            State::Connected => Ok(()),
            State::Disconnected | State::Pending => Err(Error::Closed),
        }
    }
}

/// Catch-up reads of a JetStream feed: an ephemeral consumer from the
/// client's sequence, read once and deleted.
struct CatchUp {
    /// The JetStream stream that covers the subject.
    stream: Arc<async_nats::jetstream::stream::Stream>,
    /// The subject, which the catch-up consumer filters on.
    subject: String,
    /// Makes rows of messages.
    decoder: Arc<Decoder>,
    /// Where its reads are counted.
    health: Arc<Health>,
}

impl CatchUp {
    /// Up to where the stream has lost the subject's messages after
    /// `after`, if it may have. Limits take a stream's oldest messages
    /// first, so while the message at `after` is kept nothing after it is
    /// gone; once it is gone, the subject's messages before its oldest kept
    /// one count as gone (JetStream does not say which it took).
    async fn lost_after(&self, after: Cursor) -> Result<Option<Cursor>, Error> {
        let Cursor::At(after) = after else {
            return Ok(None);
        };
        let Ok(seq) = u64::try_from(after) else {
            return Ok(None);
        };
        if seq == 0 {
            return Ok(None);
        }
        let not_found = |err: &async_nats::jetstream::stream::RawMessageError| {
            err.kind() == LastRawMessageErrorKind::NoMessageFound
        };
        match self.stream.get_raw_message(seq).await {
            Ok(_) => return Ok(None),
            Err(err) if not_found(&err) => {}
            Err(err) => return Err(Error::nats("get message", err)),
        }
        let oldest = match self
            .stream
            .get_first_raw_message_by_subject(&self.subject, seq + 1)
            .await
        {
            Ok(message) => message.sequence - 1,
            Err(err) if not_found(&err) => {
                let info =
                    (self.stream.get_info().await).map_err(|e| Error::nats("stream info", e))?;
                info.state.last_sequence
            }
            Err(err) => return Err(Error::nats("get message", err)),
        };
        Ok((oldest > seq).then(|| Cursor::At(i128::from(oldest))))
    }

    async fn fetch(&self, after: Cursor, upto: Cursor, limit: u32) -> Result<Vec<Row>, Error> {
        if upto <= after {
            return Ok(Vec::new());
        }
        let consumer = self
            .stream
            .create_consumer(pull::Config {
                filter_subject: self.subject.clone(),
                deliver_policy: start(after),
                ack_policy: AckPolicy::None,
                inactive_threshold: CONSUMER_IDLE,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("create consumer", e))?;
        let mut batch = consumer
            .fetch()
            .max_messages(limit as usize)
            .messages()
            .await
            .map_err(|e| Error::nats("fetch", e))?;
        let mut rows = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|source| Error::Nats {
                what: "fetch",
                source,
            })?;
            let seq = i128::from(sequence(&message)?);
            if Cursor::At(seq) > upto {
                break;
            }
            rows.push(self.decoder.row(seq, &message.payload).unwrap_or(Row {
                id: seq,
                json: None,
                filters: Vec::new(),
                unless_filters: None,
                event: None,
            }));
        }
        let name = consumer.cached_info().name.clone();
        let _ = self.stream.delete_consumer(&name).await;
        Ok(rows)
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
            let lost = super::within(self.lost_after(after)).await;
            self.health.counters.query(&lost);
            if let Some(resume) = lost? {
                return Err(Box::new(Expired { resume }) as ReadError);
            }
            let rows = super::within(self.fetch(after, upto, limit)).await;
            let counters = &self.health.counters;
            counters.query(&rows);
            counters.catch_up_queries.fetch_add(1, Ordering::Relaxed);
            Ok(rows?)
        })
    }

    fn changes(&self, _since_ms: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>> {
        Box::pin(async { Ok(CatchUpRows::default()) })
    }
}
