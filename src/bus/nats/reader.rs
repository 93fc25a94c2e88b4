//! Reads one feed's subject in order, through an ephemeral pull consumer
//! that starts after the reader's position.

use super::{failed, NatsBus, RESPONSE_TIMEOUT};
use crate::bus::{Entry, Error, Position, Stored};
use async_nats::datetime::DateTime;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::context::RequestError;
use async_nats::jetstream::stream;
use async_nats::jetstream::{self, ErrorCode};
use futures::{FutureExt, StreamExt};
use std::time::Duration;
use tokio::time::Instant;

/// Entries one read takes at most.
const READ_COUNT: usize = 512;

/// How long one pull request waits at the server before the client renews
/// it.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// How often an idle server says the consumer still serves us; two missed
/// and the client reports it, so a dead consumer does not look idle.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How long the server keeps a consumer nobody pulls from: readers that
/// are dropped leave theirs behind.
const INACTIVE: Duration = Duration::from_secs(30);

/// Reads one feed's subject.
pub struct NatsReader {
    /// For the stream and the connection.
    bus: NatsBus,
    /// The feed whose subject this reads.
    feed: String,
    /// The consumer being read, once made (boxed: the client's state is
    /// large and a reader is mostly idle).
    live: Option<Box<Live>>,
    /// The stream's creation time as last seen: another one means it was
    /// deleted and made again, its sequences started over.
    created: Option<DateTime>,
}

/// A consumer and how far it got.
struct Live {
    /// Its deliveries, which the client pulls ahead of our reads.
    messages: pull::Stream,
    /// The stream sequence it goes on after.
    at: u64,
    /// The consumer sequence of its last delivery: the next one follows it
    /// unless a delivery was lost.
    delivered: u64,
}

/// What a consumer gave within a read.
enum Took {
    Entries(Vec<Stored>),
    /// Nothing before the deadline.
    Idle,
    /// It cannot go on; the entries it gave before are good.
    Broken(Error, Vec<Stored>),
}

/// Whether `err` says the stream does not exist.
fn stream_missing(err: &RequestError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

impl NatsReader {
    pub(super) fn new(bus: NatsBus, feed: &str) -> NatsReader {
        NatsReader {
            bus,
            feed: feed.to_owned(),
            live: None,
            created: None,
        }
    }

    pub async fn read(&mut self, after: Position, wait: Duration) -> Result<Vec<Stored>, Error> {
        let after = match after {
            Position::Nats(seq) => seq,
            Position::Origin | Position::Redis(_) => 0,
        };
        // A lost connection fails the read at once, as an append does.
        self.bus.link().await?;
        let deadline = Instant::now() + wait;
        let mut retried = false;
        loop {
            let live = match self.live.take() {
                Some(live) if live.at == after => live,
                _ => Box::new(self.open(after).await?),
            };
            let live = self.live.insert(live);
            match take(live, deadline).await {
                Took::Entries(entries) => return Ok(entries),
                Took::Idle => {
                    self.check(after).await?;
                    return Ok(Vec::new());
                }
                Took::Broken(err, entries) => {
                    self.live = None;
                    if !entries.is_empty() {
                        return Ok(entries);
                    }
                    // Once more on a new consumer: a deleted stream deletes
                    // its consumers, and the next entry may be there already.
                    if retried || Instant::now() >= deadline {
                        return Err(err);
                    }
                    retried = true;
                }
            }
        }
    }

    /// The stream's state, creating the stream if it is gone (a follower
    /// may start before any leader).
    async fn info(&self) -> Result<stream::Info, Error> {
        let mut missing = false;
        loop {
            let stream = self.bus.stream().await?;
            match self
                .bus
                .bounded(RESPONSE_TIMEOUT, stream.get_info())
                .await?
            {
                Ok(info) => return Ok(info),
                Err(err) if !missing && stream_missing(&err) => {
                    missing = true;
                    self.bus.lost_stream();
                }
                Err(err) => return Err(failed("stream", err)),
            }
        }
    }

    /// A consumer of the feed's entries after `after`, or of all of them
    /// when the stream is not the one `after` was in.
    async fn open(&mut self, after: u64) -> Result<Live, Error> {
        let subject = self.bus.subject(&self.feed)?;
        let info = self.info().await?;
        let replaced = self.created.is_some_and(|created| created != info.created)
            || info.state.last_sequence < after;
        self.created = Some(info.created);
        let from = if replaced { 0 } else { after };
        let config = pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ack_policy: AckPolicy::None,
            filter_subject: subject,
            inactive_threshold: INACTIVE,
            memory_storage: true,
            ..Default::default()
        };
        let stream = self.bus.stream().await?;
        let consumer = self
            .bus
            .bounded(RESPONSE_TIMEOUT, stream.create_consumer(config))
            .await?
            .map_err(|err| failed("consumer", err))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(READ_COUNT)
            .expires(PULL_EXPIRES)
            .heartbeat(HEARTBEAT)
            .messages();
        let messages = self
            .bus
            .bounded(RESPONSE_TIMEOUT, messages)
            .await?
            .map_err(|err| failed("consumer", err))?;
        Ok(Live {
            messages,
            // Where the caller is, even when it starts over: its next read
            // goes on with this consumer.
            at: after,
            delivered: 0,
        })
    }

    /// After a read found nothing: whether the stream is still the one the
    /// consumer reads. One deleted and made again takes the consumer with
    /// it, and a server restarted without storage keeps no sequences.
    async fn check(&mut self, after: u64) -> Result<(), Error> {
        let info = self.info().await.inspect_err(|_| self.live = None)?;
        if self.created != Some(info.created) || info.state.last_sequence < after {
            self.live = None;
        }
        Ok(())
    }
}

/// The entries `live` has for us: waits until `deadline` for the first,
/// then takes those the server says follow it (they are on their way), up
/// to [`READ_COUNT`].
async fn take(live: &mut Live, deadline: Instant) -> Took {
    let Ok(first) = tokio::time::timeout_at(deadline, live.messages.next()).await else {
        return Took::Idle;
    };
    let mut entries = Vec::new();
    let mut next = Some(first);
    while let Some(delivery) = next {
        let message = match delivery {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Took::Broken(failed("read", err), entries),
            None => {
                let ended = "the consumer's deliveries ended".into();
                return Took::Broken(nats("read", ended), entries);
            }
        };
        let (seq, delivered, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence, info.pending),
            Err(err) => return Took::Broken(nats("read", err), entries),
        };
        if delivered != live.delivered + 1 {
            let lost = format!("a delivery was lost after stream sequence {}", live.at);
            return Took::Broken(nats("read", lost.into()), entries);
        }
        live.delivered = delivered;
        live.at = seq;
        entries.push(Stored {
            position: Position::Nats(seq),
            entry: Entry::decode(&message.payload),
        });
        if entries.len() >= READ_COUNT {
            break;
        }
        next = if pending > 0 {
            // Late, they are left to the next read.
            tokio::time::timeout(RESPONSE_TIMEOUT, live.messages.next())
                .await
                .ok()
        } else {
            live.messages.next().now_or_never()
        };
    }
    Took::Entries(entries)
}

fn nats(what: &'static str, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Nats { what, source }
}
