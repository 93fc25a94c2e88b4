//! Direct fan-out: one task per feed writes each batch straight into the
//! sockets of the single-feed streams that are caught up, instead of waking
//! a task per client. An unfiltered client gets the batch's frames, built
//! once, in one `writev`; a filtered one the frames its filter passes.
//!
//! The task never waits on a client. A socket that cannot take a whole
//! chunk at once is handed back to its stream's own task, with its position
//! and whatever part of the chunk is unwritten; that task finishes the
//! chunk and catches the client up from the ring or the database, like any
//! client that fell behind. Joins, batches and leaves reach the task through
//! one queue, in the order the hub saw them, so a joining stream gets the
//! ring's backlog and then every later batch, with nothing between.

use super::{Batch, Event, Filter};
use crate::cursor::Cursor;
use crate::wire::{self, ChunkHeader, Written};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Vectored writes longer than this are copied into one buffer first.
const MAX_PARTS: usize = 64;

/// A feed's direct fan-out: the queue to its task and what it carries.
pub(super) struct Fanout {
    queue: mpsc::UnboundedSender<Message>,
    /// The task's end of the queue, until the task starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// Streams written by the task now.
    pub(super) streams: AtomicUsize,
    /// The next stream id.
    pub(super) ids: AtomicU64,
}

pub(super) enum Message {
    Batch(Arc<Batch>),
    /// A stream and the ring's events after its position.
    Join(Direct, Vec<Arc<Event>>),
    /// A stream that ends; the task answers once it no longer holds it.
    Leave(u64, oneshot::Sender<()>),
}

/// A stream for the fan-out task to write.
pub struct Direct {
    /// Unique among the feed's streams.
    pub id: u64,
    /// The client's connection, in the middle of a chunked body.
    pub socket: Arc<TcpStream>,
    /// The rows this client may see.
    pub filter: Filter,
    /// Every row up to here has been written to the client or passed over.
    pub position: Cursor,
    /// Where the stream goes when the task lets go of it.
    back: Option<oneshot::Sender<Back>>,
    /// Written to since the last keep-alive round.
    wrote: bool,
}

impl Direct {
    /// A stream for the fan-out, and where it comes back when the task
    /// lets go of it (closed without a message when it left or the task
    /// ended).
    pub fn new(
        id: u64,
        socket: Arc<TcpStream>,
        filter: Filter,
        position: Cursor,
    ) -> (Direct, oneshot::Receiver<Back>) {
        let (back, returned) = oneshot::channel();
        let direct = Direct {
            id,
            socket,
            filter,
            position,
            back: Some(back),
            wrote: true,
        };
        (direct, returned)
    }
}

/// Why the fan-out let go of a stream.
#[derive(Debug)]
pub enum Back {
    /// The client's socket could not take a whole chunk. Everything up to
    /// `position` is written or in `pending`, which must be written first.
    Behind {
        position: Cursor,
        pending: Option<Bytes>,
    },
    /// Writing failed: the client is gone.
    Gone,
}

impl Fanout {
    pub(super) fn new() -> Fanout {
        let (queue, inbox) = mpsc::unbounded_channel();
        Fanout {
            queue,
            inbox: Mutex::new(Some(inbox)),
            streams: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
        }
    }

    /// Queues a message; gives it back when the task is not running.
    pub(super) fn send(&self, message: Message) -> Result<(), Message> {
        self.queue.send(message).map_err(|e| e.0)
    }

    /// Runs the task until `shutdown` or until the hub is gone. Only the
    /// first call runs; a second returns at once.
    pub(super) async fn run(&self, keep_alive: Duration, shutdown: CancellationToken) {
        let taken = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut inbox) = taken else { return };
        let mut streams: HashMap<u64, Direct> = HashMap::new();
        // A stream quiet for a whole round gets a keep-alive in the next:
        // quiet streams hear something at least every `keep_alive`.
        let mut rounds = tokio::time::interval(keep_alive / 2);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = inbox.recv() => match message {
                    Some(Message::Batch(batch)) => streams.retain(|_, d| deliver_batch(d, &batch)),
                    Some(Message::Join(mut direct, backlog)) => {
                        if deliver_events(&mut direct, &backlog, false) {
                            streams.insert(direct.id, direct);
                        }
                    }
                    Some(Message::Leave(id, done)) => {
                        streams.remove(&id);
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = rounds.tick() => streams.retain(|_, d| keep_alive_round(d)),
                _ = shutdown.cancelled() => break,
            }
            self.streams.store(streams.len(), Ordering::Relaxed);
        }
    }
}

/// Writes the part of a batch that is new to the client. `false` when the
/// task let go of the stream.
fn deliver_batch(direct: &mut Direct, batch: &Batch) -> bool {
    if batch.late {
        return deliver_events(direct, &batch.events, true);
    }
    let whole = direct.filter.is_empty()
        && batch
            .events
            .first()
            .is_some_and(|first| Cursor::At(first.id) > direct.position);
    let kept = if whole {
        let header = ChunkHeader::new(batch.frames.len());
        let mut parts = [
            IoSlice::new(header.as_bytes()),
            IoSlice::new(&batch.frames),
            IoSlice::new(wire::CHUNK_END),
        ];
        write(direct, &mut parts, batch.head)
    } else {
        deliver_events(direct, &batch.events, false)
    };
    direct.position = direct.position.max(batch.head);
    kept
}

/// Writes the events that are new to the client and pass its filter, as
/// one chunk. Late events are new to everyone.
fn deliver_events(direct: &mut Direct, events: &[Arc<Event>], late: bool) -> bool {
    let first = match late {
        true => 0,
        false => events.partition_point(|e| Cursor::At(e.id) <= direct.position),
    };
    let frames: Vec<&Bytes> = events[first..]
        .iter()
        .filter(|e| direct.filter.matches(&e.filters))
        .map(|e| &e.frame)
        .collect();
    let position = match (late, events.last()) {
        (false, Some(last)) => direct.position.max(Cursor::At(last.id)),
        _ => direct.position,
    };
    if frames.is_empty() {
        direct.position = position;
        return true;
    }
    let len = frames.iter().map(|f| f.len()).sum();
    let header = ChunkHeader::new(len);
    let joined;
    let mut parts = Vec::with_capacity(frames.len().min(MAX_PARTS) + 2);
    parts.push(IoSlice::new(header.as_bytes()));
    if frames.len() > MAX_PARTS {
        let mut buf = BytesMut::with_capacity(len);
        frames.iter().for_each(|f| buf.extend_from_slice(f));
        joined = buf.freeze();
        parts.push(IoSlice::new(&joined));
    } else {
        parts.extend(frames.iter().map(|f| IoSlice::new(f)));
    }
    parts.push(IoSlice::new(wire::CHUNK_END));
    let kept = write(direct, &mut parts, position);
    direct.position = position;
    kept
}

/// A keep-alive for a stream that was quiet for a whole round.
fn keep_alive_round(direct: &mut Direct) -> bool {
    if std::mem::take(&mut direct.wrote) {
        return true;
    }
    let header = ChunkHeader::new(crate::sse::KEEP_ALIVE.len());
    let mut parts = [
        IoSlice::new(header.as_bytes()),
        IoSlice::new(crate::sse::KEEP_ALIVE),
        IoSlice::new(wire::CHUNK_END),
    ];
    let position = direct.position;
    write(direct, &mut parts, position)
}

/// Writes one chunk, which moves the client to `position`. `false` when the
/// socket did not take all of it: the stream goes back to its task.
fn write(direct: &mut Direct, parts: &mut [IoSlice<'_>], position: Cursor) -> bool {
    let back = match wire::write_now(&direct.socket, parts) {
        Written::All => {
            direct.wrote = true;
            return true;
        }
        Written::Nothing => Back::Behind {
            position: direct.position,
            pending: None,
        },
        Written::Part(rest) => Back::Behind {
            position,
            pending: Some(rest),
        },
        Written::Failed => Back::Gone,
    };
    if let Some(to) = direct.back.take() {
        let _ = to.send(back);
    }
    false
}
