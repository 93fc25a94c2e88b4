//! One open event stream: what it writes next, and how it is written.
//!
//! A stream on a connection of its own ([`EventStream::write_to`]) writes
//! its chunked body straight to the socket, and while a single-feed stream
//! is caught up it leaves the writing to its feed's direct fan-out and only
//! waits: for the client to leave, for shutdown or token expiry, or for the
//! fan-out to hand it back. Any other stream is a body hyper writes
//! ([`EventStream::into_body`]). Either way a stream never skips a row: it
//! follows its subscribers, which rejoin from their own position.

use super::{wire, Back, Direct, Fanout};
use crate::cursor::{self, Cursor};
use crate::feed::{Delivery, Feed, Filter, Subscriber};
use crate::presence::{Seat, Watch};
use crate::sse;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use std::convert::Infallible;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::sync::WaitForCancellationFutureOwned;

/// The expiry of a stream without a token: about a year, within tokio's
/// timer range.
const NEVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Where a stream's events come from.
enum Deliveries {
    /// One feed: its subscriber, which can leave the writing to the direct
    /// fan-out and resume where the fan-out left off.
    One(Subscriber),
    /// Several feeds, merged.
    Many(BoxStream<'static, (usize, Delivery, Cursor)>),
}

impl Deliveries {
    /// The next delivery, its feed, and that feed's position after it.
    /// Cancel-safe.
    async fn next(&mut self) -> Option<(usize, Delivery, Cursor)> {
        match self {
            Deliveries::One(sub) => next_of(sub).await.map(|(d, p)| (0, d, p)),
            Deliveries::Many(merged) => merged.next().await,
        }
    }
}

/// A subscriber's next delivery and its position after it. Cancel-safe.
async fn next_of(sub: &mut Subscriber) -> Option<(Delivery, Cursor)> {
    let delivery = sub.next().await?;
    Some((delivery, sub.position()))
}

/// The state of one open stream.
pub struct EventStream {
    /// Bytes to send before any event.
    opening: Option<Bytes>,
    feeds: Vec<(Arc<Feed>, Filter)>,
    /// The single feed's fan-out, which may write the stream while it is
    /// caught up; `None` for several feeds.
    fanout: Option<Arc<Fanout>>,
    /// Each feed's position as the client will know it.
    positions: Vec<Cursor>,
    deliveries: Deliveries,
    /// Whether events are named after their feed with composite ids.
    multi: bool,
    pace: Pace,
    /// Fires when the server stops.
    stopping: CancellationToken,
    /// Fires at shutdown. Made once per stream: a new waiter per event
    /// would take the token's lock once per client per event.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires when a keep-alive may be due. Moved only when it fires, not on
    /// every write: the deadline is counted from `last_write`.
    keep_alive: Pin<Box<Sleep>>,
    last_write: Instant,
    /// Fires when the client's token expires.
    expires: Pin<Box<Sleep>>,
    /// Held until the stream ends (its place under the server's limits).
    _held: Box<dyn std::any::Any + Send + Sync>,
    /// Its member's place in the feed's presence, given up when the
    /// stream ends.
    _seat: Option<Seat>,
    /// Its scope's presence changes, when it asked for them.
    watch: Option<Watch>,
    /// A member's connection: how long writes may go unanswered.
    silence: Option<Duration>,
}

/// How a stream writes: the server's settings for every stream.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Interval of keep-alive comments on a quiet stream.
    pub keep_alive: Duration,
    /// Reconnect delay sent in `retry:`.
    pub retry: Duration,
    /// A write that makes no progress for this long ends the stream.
    pub send_timeout: Duration,
}

/// What woke a stream.
enum Wake {
    Shutdown,
    Delivery(Option<(usize, Delivery, Cursor)>),
    Presence(Bytes),
    KeepAlive,
}

/// How a stream left the direct fan-out.
enum Left {
    /// It was not handed over: the ring does not reach back to it, or it
    /// is not a plain single-feed stream.
    NotTaken,
    /// Handed back behind, with any unwritten part of a chunk written.
    Behind,
    /// The stream is over (shutdown or token expiry): end the body.
    Ended,
    /// The client is gone.
    Gone,
}

/// One feed of a stream: which, for whom, from where.
pub struct Wanted {
    pub feed: Arc<Feed>,
    /// The feed's fan-out.
    pub fanout: Arc<Fanout>,
    /// The rows this client may see.
    pub filter: Filter,
    /// The client's cursor; `None`: live from now.
    pub after: Option<Cursor>,
}

/// A stream's part in its feed's presence.
pub struct Attending {
    /// Its member's place in the scope, while the stream is open; `None`
    /// for a watcher without a key.
    pub seat: Option<Seat>,
    /// Its scope's changes, after the frames to send first; `None` when
    /// the stream did not ask for them.
    pub watch: Option<(Bytes, Watch)>,
    /// How long the connection may leave writes unanswered before it
    /// counts as gone (a client that vanished without a FIN).
    pub silence: Duration,
}

/// How a stream starts and ends.
pub struct Opening {
    /// Events named after their feed, with composite ids.
    pub multi: bool,
    /// Send the client its starting position.
    pub announce: bool,
    /// The token's remaining life: the stream ends then, and the client
    /// reconnects with a fresh token and resumes by Last-Event-ID.
    pub expires: Option<std::time::Duration>,
    /// Held until the stream ends (its place under the server's limits).
    pub held: Box<dyn std::any::Any + Send + Sync>,
    /// How it writes.
    pub pace: Pace,
    /// Ends the stream when cancelled (the server stops).
    pub stopping: CancellationToken,
    /// Its part in the feed's presence, if any.
    pub presence: Option<Attending>,
}

impl EventStream {
    /// A stream of `feeds`, each followed from its cursor.
    pub fn new(feeds: Vec<Wanted>, opening: Opening) -> EventStream {
        let Opening {
            multi,
            announce,
            expires,
            held,
            pace,
            stopping,
            presence,
        } = opening;
        let subscribers: Vec<Subscriber> =
            feeds.iter().map(|w| w.feed.subscribe(w.after)).collect();
        let positions: Vec<Cursor> = subscribers.iter().map(Subscriber::position).collect();
        let fanout = match &feeds[..] {
            [one] if !multi => Some(one.fanout.clone()),
            _ => None,
        };
        let feeds: Vec<(Arc<Feed>, Filter)> =
            feeds.into_iter().map(|w| (w.feed, w.filter)).collect();
        let mut first = BytesMut::new();
        first.extend_from_slice(&sse::retry(pace.retry));
        if announce {
            let id = if multi {
                composite(&feeds, &positions)
            } else {
                subscribers[0].feed().cursor_text(positions[0])
            };
            // Live-only feeds alone have no position to announce.
            if !id.is_empty() {
                first.extend_from_slice(&sse::position(&id));
            }
        }
        let (seat, watch, silence) = match presence {
            Some(Attending {
                seat,
                watch,
                silence,
            }) => {
                let watch = watch.map(|(frames, watch)| {
                    first.extend_from_slice(&frames);
                    watch
                });
                // Only a member's connection needs watching for silence.
                let silence = seat.is_some().then_some(silence);
                (seat, watch, silence)
            }
            None => (None, None, None),
        };
        let mut subscribers = subscribers;
        let deliveries = match subscribers.len() {
            1 => Deliveries::One(subscribers.remove(0)),
            _ => Deliveries::Many(
                stream::select_all(subscribers.into_iter().enumerate().map(|(i, sub)| {
                    stream::unfold(sub, move |mut sub| async move {
                        let (delivery, position) = next_of(&mut sub).await?;
                        Some(((i, delivery, position), sub))
                    })
                    .boxed()
                }))
                .boxed(),
            ),
        };
        let now = Instant::now();
        EventStream {
            opening: Some(first.freeze()),
            feeds,
            positions,
            deliveries,
            multi,
            fanout,
            shutdown: Box::pin(stopping.clone().cancelled_owned()),
            stopping,
            pace,
            keep_alive: Box::pin(tokio::time::sleep_until(now + pace.keep_alive)),
            last_write: now,
            expires: Box::pin(tokio::time::sleep_until(now + expires.unwrap_or(NEVER))),
            _held: held,
            _seat: seat,
            watch,
            silence,
        }
    }

    /// The stream as a body for hyper to write.
    pub fn into_body(self) -> Body {
        Body::from_stream(stream::unfold(self, |mut state| async move {
            let chunk = state.next_chunk().await?;
            Some((Ok::<_, Infallible>(chunk), state))
        }))
    }

    /// Writes the stream as a chunked body to `socket`, whose response head
    /// is written, until the stream ends or the client leaves.
    pub async fn write_to(mut self, socket: Arc<TcpStream>) {
        if let Some(silence) = self.silence {
            // A client that vanished without a FIN leaves its keep-alives
            // unanswered: the kernel ends the connection after `silence`.
            let _ = socket2::SockRef::from(&*socket).set_tcp_user_timeout(Some(silence));
        }
        let ended = loop {
            if self.opening.is_none() {
                match self.leave_to_fanout(&socket).await {
                    Left::NotTaken | Left::Behind => {}
                    Left::Ended => break true,
                    Left::Gone => break false,
                }
            }
            let chunk = tokio::select! {
                chunk = self.next_chunk() => chunk,
                _ = wire::closed(&socket) => break false,
            };
            let Some(chunk) = chunk else { break true };
            let written = tokio::select! {
                biased;
                written = wire::write_chunk(&socket, &chunk, self.pace.send_timeout) => written.is_ok(),
                _ = self.stopping.cancelled() => false,
            };
            if !written {
                break false;
            }
        };
        if ended {
            let _ = wire::write_all(
                &socket,
                &mut [IoSlice::new(wire::LAST_CHUNK)],
                self.pace.send_timeout,
            )
            .await;
        }
    }

    /// Hands a caught-up single-feed stream to its feed's direct fan-out and
    /// waits until it comes back or the stream ends.
    async fn leave_to_fanout(&mut self, socket: &Arc<TcpStream>) -> Left {
        let (Deliveries::One(sub), Some(fanout), None) =
            (&mut self.deliveries, &self.fanout, &self.watch)
        else {
            // Presence changes are written by the stream's own task.
            return Left::NotTaken;
        };
        let id = fanout.stream_id();
        let filter = self.feeds[0].1.clone();
        let (direct, mut back) = Direct::new(id, socket.clone(), filter, sub.position());
        if fanout.go_direct(sub.feed(), direct).is_err() {
            return Left::NotTaken;
        }
        sub.detach();
        let returned = tokio::select! {
            back = &mut back => back.ok(),
            _ = wire::closed(socket) => {
                fanout.leave(id).await;
                return Left::Gone;
            }
            _ = &mut self.expires => None,
            _ = &mut self.shutdown => None,
        };
        let (left, back) = match returned {
            Some(back) => (Left::Behind, back),
            // Expired, shut down, or the fan-out stopped (shutdown): take
            // the stream out and finish any chunk it left half written.
            None => {
                fanout.leave(id).await;
                match back.try_recv() {
                    Ok(back) => (Left::Ended, back),
                    Err(_) => return Left::Ended,
                }
            }
        };
        match back {
            Back::Gone => Left::Gone,
            Back::Behind { position, pending } => {
                if let Some(pending) = pending {
                    let mut parts = [IoSlice::new(&pending)];
                    let written = tokio::select! {
                        biased;
                        written = wire::write_all(socket, &mut parts, self.pace.send_timeout) => written.is_ok(),
                        _ = self.stopping.cancelled() => false,
                    };
                    if !written {
                        return Left::Gone;
                    }
                }
                sub.resume_at(position);
                self.positions[0] = position;
                self.last_write = Instant::now();
                left
            }
        }
    }

    /// The next bytes to write, or `None` to end the stream (shutdown).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            self.last_write = Instant::now();
            return Some(opening);
        }
        loop {
            // Deliveries first: checking the shutdown token takes a lock,
            // and a busy stream reaches the shutdown branch within a batch.
            let wake = tokio::select! {
                biased;
                item = self.deliveries.next() => Wake::Delivery(item),
                frames = next_presence(&mut self.watch) => Wake::Presence(frames),
                _ = &mut self.keep_alive => Wake::KeepAlive,
                _ = &mut self.expires => Wake::Shutdown,
                _ = &mut self.shutdown => Wake::Shutdown,
            };
            match wake {
                Wake::Shutdown | Wake::Delivery(None) => return None,
                Wake::Presence(frames) => {
                    self.last_write = Instant::now();
                    return Some(frames);
                }
                Wake::Delivery(Some((feed, delivery, position))) => {
                    let chunk = self.frame(feed, &delivery);
                    self.positions[feed] = position;
                    if chunk.is_some() {
                        self.last_write = Instant::now();
                        return chunk;
                    }
                }
                // Counted from the last write, so that a client whose filter
                // drops every row of a busy feed still gets its keep-alives.
                Wake::KeepAlive => {
                    let interval = self.pace.keep_alive;
                    let now = Instant::now();
                    let due = self.last_write + interval;
                    if now < due {
                        self.keep_alive.as_mut().reset(due);
                        continue;
                    }
                    self.keep_alive.as_mut().reset(now + interval);
                    self.last_write = now;
                    return Some(Bytes::from_static(sse::KEEP_ALIVE));
                }
            }
        }
    }

    /// The bytes of a delivery for this client, or `None` when its filter
    /// lets nothing through.
    fn frame(&mut self, feed: usize, delivery: &Delivery) -> Option<Bytes> {
        let filter = &self.feeds[feed].1;
        if !self.multi && filter.is_empty() {
            if let Delivery::Batch(batch) = delivery {
                return Some(batch.frames.clone());
            }
        }
        let mut buf = BytesMut::new();
        for event in delivery.events() {
            if !event.passes(filter) {
                continue;
            }
            if self.multi {
                let name = Some(self.feeds[feed].0.name());
                // A live-only feed's events move no cursor, as late rows.
                if event.late || !self.feeds[feed].0.style().resumable() {
                    sse::put_event(&mut buf, None, name, &event.data);
                    continue;
                }
                self.positions[feed] = Cursor::At(event.id);
                let id = composite(&self.feeds, &self.positions);
                match event.data.is_empty() {
                    true => buf.extend_from_slice(&sse::position(&id)),
                    false => sse::put_event(&mut buf, Some(&id), name, &event.data),
                }
            } else {
                buf.extend_from_slice(&event.frame);
            }
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

/// The frames of a watched scope's next changes; never, without a watch.
/// Cancel-safe.
async fn next_presence(watch: &mut Option<Watch>) -> Bytes {
    match watch {
        Some(watch) => watch.next().await,
        None => std::future::pending().await,
    }
}

/// The composite id of several feeds' positions; live-only feeds have
/// none to give.
fn composite(feeds: &[(Arc<Feed>, Filter)], positions: &[Cursor]) -> String {
    cursor::format_composite(
        feeds
            .iter()
            .zip(positions)
            .filter(|((feed, _), _)| feed.style().resumable())
            .map(|((feed, _), position)| (feed.name(), feed.cursor_text(*position))),
    )
}
