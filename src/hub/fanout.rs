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
use bytes::Bytes;
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

/// Most queued batches written to a client in one go.
const MAX_BATCHES: usize = 64;

/// A feed's direct fan-out: one task per core, each writing its share of
/// the streams, so that a batch reaches every client on all cores at once.
pub(super) struct Fanout {
    shards: Vec<Shard>,
    /// The next stream id.
    ids: AtomicU64,
}

/// One fan-out task's queue and what it carries.
struct Shard {
    queue: mpsc::UnboundedSender<Message>,
    /// The task's end of the queue, until the task starts.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// Streams written by the task now.
    streams: AtomicUsize,
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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shards = (0..cores)
            .map(|_| {
                let (queue, inbox) = mpsc::unbounded_channel();
                Shard {
                    queue,
                    inbox: Mutex::new(Some(inbox)),
                    streams: AtomicUsize::new(0),
                }
            })
            .collect();
        Fanout {
            shards,
            ids: AtomicU64::new(0),
        }
    }

    /// How many tasks share the streams.
    pub(super) fn shards(&self) -> usize {
        self.shards.len()
    }

    /// A number no other stream of this feed has.
    pub(super) fn stream_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Streams written by the tasks now.
    pub(super) fn streams(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.streams.load(Ordering::Relaxed))
            .sum()
    }

    /// Queues a message for the task it concerns (a batch: all of them);
    /// gives it back when that task is not running.
    pub(super) fn send(&self, message: Message) -> Result<(), Message> {
        let shard = |id: u64| &self.shards[(id % self.shards.len() as u64) as usize];
        match message {
            Message::Batch(batch) => {
                for shard in &self.shards {
                    let _ = shard.queue.send(Message::Batch(batch.clone()));
                }
                Ok(())
            }
            Message::Join(ref direct, _) => shard(direct.id).queue.send(message).map_err(|e| e.0),
            Message::Leave(id, _) => shard(id).queue.send(message).map_err(|e| e.0),
        }
    }

    /// Runs task `shard` until `shutdown` or until the hub is gone. Only
    /// the first call for a shard runs; a second returns at once.
    pub(super) async fn run(
        &self,
        shard: usize,
        keep_alive: Duration,
        shutdown: CancellationToken,
    ) {
        let shard = &self.shards[shard];
        let taken = shard.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut inbox) = taken else { return };
        let mut streams: HashMap<u64, Direct> = HashMap::new();
        // A stream quiet for a whole round gets a keep-alive in the next:
        // quiet streams hear something at least every `keep_alive`.
        let mut rounds = tokio::time::interval(keep_alive / 2);
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut held = None;
        loop {
            let message = match held.take() {
                Some(message) => Some(message),
                None => tokio::select! {
                    biased;
                    message = inbox.recv() => message,
                    _ = rounds.tick() => {
                        streams.retain(|_, d| keep_alive_round(d));
                        continue;
                    }
                    _ = shutdown.cancelled() => break,
                },
            };
            match message {
                Some(Message::Batch(batch)) => {
                    // Batches that queued up while the last ones were being
                    // written go out together: one write per client for all.
                    let mut batches = vec![batch];
                    while batches.len() < MAX_BATCHES {
                        match inbox.try_recv() {
                            Ok(Message::Batch(batch)) => batches.push(batch),
                            Ok(other) => {
                                held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    streams.retain(|_, d| deliver(d, &batches));
                }
                Some(Message::Join(mut direct, backlog)) => {
                    if join(&mut direct, &backlog) {
                        streams.insert(direct.id, direct);
                    }
                }
                Some(Message::Leave(id, done)) => {
                    streams.remove(&id);
                    let _ = done.send(());
                }
                None => break,
            }
            shard.streams.store(streams.len(), Ordering::Relaxed);
        }
    }
}

/// Writes to a client, as one chunk, what `batches` hold that is new to it
/// and passes its filter. `false` when the task let go of the stream.
fn deliver(direct: &mut Direct, batches: &[Arc<Batch>]) -> bool {
    let whole = |batch: &Batch, position: Cursor| {
        !batch.late
            && direct.filter.is_empty()
            && (batch.events.first()).is_some_and(|first| Cursor::At(first.id) > position)
    };
    // The common case, one batch all new to an unfiltered client, is its
    // shared frames as they are.
    if let [batch] = batches {
        if whole(batch, direct.position) {
            let header = ChunkHeader::new(batch.frames.len());
            let mut parts = [
                IoSlice::new(header.as_bytes()),
                IoSlice::new(&batch.frames),
                IoSlice::new(wire::CHUNK_END),
            ];
            let position = direct.position.max(batch.head);
            return write(direct, &mut parts, position);
        }
    }
    let mut frames: Vec<&[u8]> = Vec::new();
    let mut position = direct.position;
    for batch in batches {
        if whole(batch, position) {
            frames.push(&batch.frames);
        } else {
            // Late events have no id and are new to everyone.
            let first = match batch.late {
                true => 0,
                false => (batch.events).partition_point(|e| Cursor::At(e.id) <= position),
            };
            frames.extend(
                batch.events[first..]
                    .iter()
                    .filter(|e| direct.filter.matches(&e.filters))
                    .map(|e| &e.frame[..]),
            );
        }
        if !batch.late {
            position = position.max(batch.head);
        }
    }
    write_frames(direct, &frames, position)
}

/// Writes a joining stream the ring's events after its position that pass
/// its filter. `false` when the task let go of the stream.
fn join(direct: &mut Direct, backlog: &[Arc<Event>]) -> bool {
    let first = backlog.partition_point(|e| Cursor::At(e.id) <= direct.position);
    let frames: Vec<&[u8]> = backlog[first..]
        .iter()
        .filter(|e| direct.filter.matches(&e.filters))
        .map(|e| &e.frame[..])
        .collect();
    let position = match backlog.last() {
        Some(last) => direct.position.max(Cursor::At(last.id)),
        None => direct.position,
    };
    write_frames(direct, &frames, position)
}

/// Writes `frames` as one chunk, which moves the client to `position`.
fn write_frames(direct: &mut Direct, frames: &[&[u8]], position: Cursor) -> bool {
    if frames.is_empty() {
        direct.position = position;
        return true;
    }
    let len = frames.iter().map(|f| f.len()).sum();
    let header = ChunkHeader::new(len);
    let joined: Vec<u8>;
    let mut parts = Vec::with_capacity(frames.len().min(MAX_PARTS) + 2);
    parts.push(IoSlice::new(header.as_bytes()));
    if frames.len() > MAX_PARTS {
        joined = frames.concat();
        parts.push(IoSlice::new(&joined));
    } else {
        parts.extend(frames.iter().map(|f| IoSlice::new(f)));
    }
    parts.push(IoSlice::new(wire::CHUNK_END));
    write(direct, &mut parts, position)
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
            direct.position = position;
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
