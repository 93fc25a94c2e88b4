//! Messages between instances that nothing keeps: Redis pub/sub
//! (`<prefix>:chatter:<name>`) or a core NATS subject
//! (`<prefix>.chatter.<name>`). For state that each instance repeats now
//! and then, such as its presence members, where a message lost while a
//! connection is down is made good by the next one. Every instance hears
//! its own messages too.

use super::{Bus, Error};
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// How long connecting and subscribing may take.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Bus {
    /// Sends `message` to every instance listening to `name`.
    pub async fn say(&self, name: &str, message: Bytes) -> Result<(), Error> {
        match self {
            Bus::Redis(bus) => {
                let cmd = redis::cmd("PUBLISH")
                    .arg(bus.channel(name))
                    .arg(&message[..])
                    .clone();
                bus.query::<i64>(&cmd).await.map(|_| ())
            }
            Bus::Nats(bus) => bus.say(name, message).await,
        }
    }

    /// A listener to what instances say on `name`; it connects on first use.
    pub fn listen(&self, name: &str) -> Listener {
        Listener {
            bus: self.clone(),
            name: name.to_owned(),
            heard: None,
        }
    }
}

/// Hears what instances say on one name.
pub struct Listener {
    bus: Bus,
    name: String,
    heard: Option<futures::stream::BoxStream<'static, Bytes>>,
}

impl Listener {
    /// The next message. An error when the connection could not be made
    /// or was lost: the next call connects again.
    pub async fn next(&mut self) -> Result<Bytes, Error> {
        if self.heard.is_none() {
            let subscribe = subscribe(&self.bus, &self.name);
            let heard = tokio::time::timeout(SUBSCRIBE_TIMEOUT, subscribe)
                .await
                .map_err(|_| Error::Timeout(SUBSCRIBE_TIMEOUT))??;
            self.heard = Some(heard);
        }
        let heard = self.heard.as_mut().expect("just made");
        match heard.next().await {
            Some(message) => Ok(message),
            None => {
                self.heard = None;
                Err(Error::Lost)
            }
        }
    }
}

/// A subscription to `name`, as a stream of its messages.
async fn subscribe(
    bus: &Bus,
    name: &str,
) -> Result<futures::stream::BoxStream<'static, Bytes>, Error> {
    match bus {
        Bus::Redis(bus) => {
            let mut pubsub = bus.client.get_async_pubsub().await?;
            pubsub.subscribe(bus.channel(name)).await?;
            let messages = pubsub.into_on_message();
            Ok(messages
                .map(|m| Bytes::copy_from_slice(m.get_payload_bytes()))
                .boxed())
        }
        Bus::Nats(bus) => bus.listen(name).await,
    }
}
