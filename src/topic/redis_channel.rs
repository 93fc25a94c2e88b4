//! A feed of a Redis pub/sub channel (`SUBSCRIBE`, or `PSUBSCRIBE` for a
//! pattern with `*`): live only. Pub/sub keeps nothing, so its events
//! carry no id and a reconnecting client starts live; a message published
//! while the task is disconnected is gone, as it is for every subscriber
//! of Redis pub/sub.

use super::{Decoder, Error, Prepared, FIRST_RETRY};
use crate::config::{FeedConfig, Topic};
use crate::cursor::{Cursor, Style};
use crate::feed::{CatchUpRows, Feed, ReadError, Reader};
use crate::poller::Health;
use crate::source::Row;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A Redis channel feed's task.
pub struct Follow {
    /// Opens connections to the feed's Redis.
    client: redis::Client,
    /// The channel, or a pattern.
    channel: String,
    /// Makes rows of messages.
    decoder: Arc<Decoder>,
    /// The URL without its password, for messages.
    url: String,
}

pub(super) fn prepare(
    feed: &FeedConfig,
    topic: &Topic,
    channel: &str,
    decoder: Arc<Decoder>,
) -> Result<Prepared, Error> {
    let url = crate::source::redact(&topic.url);
    let client = redis::Client::open(topic.url.as_str()).map_err(|err| Error::Url {
        feed: feed.name.clone(),
        url: url.clone(),
        problem: err.to_string(),
    })?;
    tracing::info!(feed = %feed.name, %channel, redis = %url, "following a Redis channel (live only: its events carry no id)");
    Ok(Prepared {
        style: Style::Live,
        head: Cursor::Start,
        reader: Arc::new(Unkept),
        follow: super::Follow::RedisChannel(Follow {
            client,
            channel: channel.to_owned(),
            decoder,
            url,
        }),
    })
}

impl Follow {
    pub(super) fn describe(&self) -> String {
        format!("redis channel `{}` at {}", self.channel, self.url)
    }

    /// A subscribed connection's messages.
    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, Error> {
        let mut pubsub = super::within(async { Ok(self.client.get_async_pubsub().await?) }).await?;
        super::within(async {
            match self.channel.contains('*') {
                true => pubsub.psubscribe(&self.channel).await?,
                false => pubsub.subscribe(&self.channel).await?,
            }
            Ok(())
        })
        .await?;
        Ok(pubsub.into_on_message())
    }

    pub(super) async fn run(
        self,
        feed: Arc<Feed>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) {
        let mut retry = FIRST_RETRY;
        // A live feed's cursor only orders its events inside the server.
        let mut number = match feed.head().0 {
            Cursor::At(n) => n,
            Cursor::Start => 0,
        };
        loop {
            let subscribed = tokio::select! {
                subscribed = self.subscribe() => subscribed,
                _ = shutdown.cancelled() => return,
            };
            let mut messages = match subscribed {
                Ok(messages) => messages,
                Err(err) => {
                    if !super::failed(&feed, &health, "Redis", &err, &mut retry, &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            health.answers(feed.name(), "Redis");
            retry = FIRST_RETRY;
            loop {
                let message = tokio::select! {
                    message = messages.next() => message,
                    _ = shutdown.cancelled() => return,
                };
                let Some(message) = message else { break };
                number += 1;
                let made = self.decoder.row(number, message.get_payload_bytes());
                let rows: Vec<Row> = super::decoded(&feed, &health, made).into_iter().collect();
                super::publish(&feed, &health, rows, Cursor::At(number));
            }
            // The stream ends when the connection does.
            if !super::failed(
                &feed,
                &health,
                "Redis",
                &Error::Closed,
                &mut retry,
                &shutdown,
            )
            .await
            {
                return;
            }
        }
    }
}

/// The reader of a feed that keeps no history: never asked, since a client
/// behind a live feed's ring is ended rather than caught up.
pub(super) struct Unkept;

impl Reader for Unkept {
    fn read(&self, _: Cursor, _: Cursor, _: u32) -> BoxFuture<'_, Result<Vec<Row>, ReadError>> {
        Box::pin(async { Err("a live feed keeps no events to catch up from".into()) })
    }

    fn changes(&self, _: i64) -> BoxFuture<'_, Result<CatchUpRows, ReadError>> {
        Box::pin(async { Ok(CatchUpRows::default()) })
    }
}
