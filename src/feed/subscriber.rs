//! A subscriber follows one feed from a cursor: replay from the ring or the
//! database, then the live broadcast, without a gap or a duplicate.
//!
//! A subscriber that falls behind the broadcast is never skipped ahead: it
//! rejoins from its own position, through the ring or the database.

use super::{after, Batch, Event, Feed, Joined};
use crate::cursor::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};

/// The next events for a subscriber.
#[derive(Debug)]
pub enum Delivery {
    /// A whole live batch, every event of it new to this subscriber: its
    /// `frames` can be written as they are.
    Batch(Arc<Batch>),
    /// Some events, in id order.
    Events(Vec<Arc<Event>>),
}

impl Delivery {
    /// The events delivered.
    pub fn events(&self) -> &[Arc<Event>] {
        match self {
            Delivery::Batch(batch) => &batch.events,
            Delivery::Events(events) => events,
        }
    }
}

/// One client's place in one feed.
pub struct Subscriber {
    feed: Arc<Feed>,
    /// Every row up to here has been delivered or passed over.
    position: Cursor,
    receiver: Option<Receiver<Arc<Batch>>>,
}

impl Subscriber {
    pub(super) fn new(feed: Arc<Feed>, after: Option<Cursor>) -> Subscriber {
        feed.clients.fetch_add(1, Ordering::Relaxed);
        let position = after.unwrap_or_else(|| feed.head().0);
        Subscriber {
            feed,
            position,
            receiver: None,
        }
    }

    /// The feed followed.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Every row up to here has been delivered or passed over.
    pub fn position(&self) -> Cursor {
        self.position
    }

    /// Stops following the broadcast, for a stream that the direct fan-out
    /// writes meanwhile.
    pub fn detach(&mut self) {
        self.receiver = None;
    }

    /// Follows the feed again from `position`, where the direct fan-out
    /// left the stream.
    pub fn resume_at(&mut self, position: Cursor) {
        self.receiver = None;
        self.position = position;
    }

    /// Waits for the next events after the position. `None` when the feed
    /// shuts down. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut retry = Duration::from_millis(250);
        loop {
            let Some(receiver) = &mut self.receiver else {
                match self.feed.join(self.position) {
                    Joined::Live { receiver, backlog } => {
                        self.receiver = Some(receiver);
                        if let Some(last) = backlog.last() {
                            self.position = Cursor::At(last.id);
                            return Some(Delivery::Events(backlog));
                        }
                    }
                    Joined::Behind if !self.feed.style().resumable() => {
                        // A live feed keeps no history to catch up from:
                        // end the stream, and the client reconnects live.
                        tracing::info!(feed = %self.feed.name(), "a client fell behind the ring of a live feed; ending its stream");
                        return None;
                    }
                    Joined::Behind => match self.feed.catch_up(self.position).await {
                        Ok(page) if page.complete_to <= self.position => {
                            // A reused page from before the ring moved on:
                            // read afresh rather than spin on it.
                            self.feed.forget_page(self.position).await;
                        }
                        Ok(page) => {
                            let after = self.position;
                            self.position = self.position.max(page.complete_to);
                            let events = match page.whole {
                                true => page.events.clone(),
                                false => newer(&page.events, after),
                            };
                            if !events.is_empty() {
                                return Some(Delivery::Events(events));
                            }
                        }
                        Err(err) => {
                            // Keep the stream: the client is better served by
                            // waiting here than by reconnecting in a loop.
                            tracing::warn!(feed = %self.feed.name(), cause = %err, "catch-up read failed; retrying");
                            tokio::time::sleep(retry).await;
                            retry = (retry * 2).min(Duration::from_secs(5));
                        }
                    },
                }
                continue;
            };
            match receiver.recv().await {
                Ok(batch) if batch.late => return Some(Delivery::Batch(batch)),
                Ok(batch) => {
                    let after = self.position;
                    self.position = self.position.max(batch.head);
                    match batch.events.first() {
                        Some(first) if Cursor::At(first.id) > after => {
                            return Some(Delivery::Batch(batch))
                        }
                        Some(_) => {
                            let events = newer(&batch.events, after);
                            if !events.is_empty() {
                                return Some(Delivery::Events(events));
                            }
                        }
                        None => {}
                    }
                }
                Err(RecvError::Lagged(_)) => self.receiver = None,
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

fn newer(events: &[Arc<Event>], cursor: Cursor) -> Vec<Arc<Event>> {
    after(events, cursor).to_vec()
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.feed.clients.fetch_sub(1, Ordering::Relaxed);
    }
}
