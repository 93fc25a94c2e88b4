//! The direct fan-out, the one owner of the sockets of event streams it is
//! handed: a feed's fan-out tasks, one per core, write each batch straight
//! into the sockets of the single-feed streams that are caught up, instead
//! of waking a task per client. An unfiltered client gets the batch's
//! frames, built once, in one `sendmsg`; a filtered one the frames its
//! filter passes. [`stream`] writes a stream on a socket of its own while
//! the tasks do not hold it, [`wire`] the chunks both write.
//!
//! A task never waits on a client. A socket that cannot take a whole
//! chunk at once is handed back to its stream's own task, with its position
//! and whatever part of the chunk is unwritten; that task finishes the
//! chunk and catches the client up from the ring or the database, like any
//! client that fell behind. Joins, batches and leaves reach a task through
//! one queue, in the order the feed saw them, so a joining stream gets the
//! ring's backlog and then every later batch, with nothing between.

use crate::cursor::Cursor;
use crate::feed::{Batch, Event, Feed, Filter, Sink};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub mod stream;
pub mod wire;
mod write;

use write::{deliver, join, keep_alive_round};

/// A feed's direct fan-out: one task per core, each writing its share of
/// the streams, so that a batch reaches every client on all cores at once.
pub struct Fanout {
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

enum Message {
    Batch(Arc<Batch>),
    /// A stream and the ring's events after its position.
    Join(Box<Direct>, Vec<Arc<Event>>),
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
    /// Batches of its task written to it (or passed over): the number of
    /// the next one it needs.
    seen: u64,
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
            seen: 0,
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
    /// The fan-out of `feed`, which sends it every batch from now on.
    pub fn of(feed: &Feed) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout::new());
        feed.attach(fanout.clone());
        fanout
    }

    fn new() -> Fanout {
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

    /// A number no other stream of this feed has.
    pub fn stream_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Streams written by the tasks now.
    pub fn streams(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.streams.load(Ordering::Relaxed))
            .sum()
    }

    /// Hands a stream to the fan-out at its position, or gives it back
    /// when the feed's ring does not reach back that far or the fan-out is
    /// not running.
    pub fn go_direct(&self, feed: &Feed, direct: Direct) -> Result<(), Direct> {
        feed.join_sink(direct.position, |backlog| {
            let Some(backlog) = backlog else {
                return Err(direct);
            };
            match self.send(Message::Join(Box::new(direct), backlog)) {
                Ok(()) => Ok(()),
                Err(Message::Join(direct, _)) => Err(*direct),
                Err(_) => unreachable!("a refused message comes back as it was sent"),
            }
        })
    }

    /// Takes a stream out of the fan-out; returns once the fan-out will
    /// write to it no more.
    pub async fn leave(&self, id: u64) {
        let (done, left) = oneshot::channel();
        if self.send(Message::Leave(id, done)).is_ok() {
            // An error means the fan-out has stopped: it writes no more.
            let _ = left.await;
        }
    }

    /// Runs the fan-out until `shutdown`: a task per core.
    pub async fn run(self: Arc<Self>, keep_alive: Duration, shutdown: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for shard in 0..self.shards.len() {
            let (fanout, shutdown) = (self.clone(), shutdown.clone());
            tasks.spawn(async move { fanout.run_shard(shard, keep_alive, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Queues a message for the task it concerns (a batch: all of them);
    /// gives it back when that task is not running.
    fn send(&self, message: Message) -> Result<(), Message> {
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

    /// Runs task `shard` until `shutdown` or until the feed is gone. Only
    /// the first call for a shard runs; a second returns at once.
    async fn run_shard(&self, shard: usize, keep_alive: Duration, shutdown: CancellationToken) {
        let shard = &self.shards[shard];
        let taken = shard.inbox.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut inbox) = taken else { return };
        let mut streams = Streams::default();
        // A stream quiet for a whole round gets a keep-alive in the next:
        // quiet streams hear something at least every `keep_alive`.
        let mut rounds = tokio::time::interval((keep_alive / 2).max(Duration::from_millis(1)));
        rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = inbox.recv() => match message {
                    Some(message) => streams.take(message),
                    None => break,
                },
                _ = rounds.tick() => streams.keep_alive(),
                _ = shutdown.cancelled() => break,
            }
            // Until every stream has every batch: batches that come in
            // meanwhile join the pass, so no stream waits a whole pass
            // for them, and a stream behind by several gets them in one
            // write.
            while streams.unsent() {
                streams.write_all(&mut inbox).await;
                if shutdown.is_cancelled() {
                    return;
                }
            }
            shard.streams.store(streams.live(), Ordering::Relaxed);
        }
    }
}

impl Sink for Fanout {
    fn batch(&self, batch: &Arc<Batch>) {
        let _ = self.send(Message::Batch(batch.clone()));
    }
}

/// The streams one task writes, and the batches not all of them have yet.
#[derive(Default)]
struct Streams {
    /// The streams; `None` where one left during a pass.
    slots: Vec<Option<Direct>>,
    /// Where each stream id is in `slots`.
    index: HashMap<u64, usize>,
    /// Batches some stream has not had, in order; the first is number
    /// `first`.
    batches: Vec<Arc<Batch>>,
    first: u64,
    /// Batches received so far: the number the next one gets.
    received: u64,
}

impl Streams {
    /// Takes a message from the feed, in queue order.
    fn take(&mut self, message: Message) {
        match message {
            Message::Batch(batch) => {
                self.batches.push(batch);
                self.received += 1;
            }
            // The ring's backlog holds every batch received before the
            // join: the feed's lock put the join after them in the queue.
            Message::Join(mut direct, backlog) => {
                direct.seen = self.received;
                if join(&mut direct, &backlog) {
                    self.index.insert(direct.id, self.slots.len());
                    self.slots.push(Some(*direct));
                }
            }
            Message::Leave(id, done) => {
                if let Some(slot) = self.index.remove(&id) {
                    self.slots[slot] = None;
                }
                let _ = done.send(());
            }
        }
    }

    /// Streams being written.
    fn live(&self) -> usize {
        self.index.len()
    }

    /// Whether some stream has not had every batch.
    fn unsent(&self) -> bool {
        !self.batches.is_empty()
    }

    /// One pass over the streams, writing each the batches it has not had.
    /// Between slices it takes what has come in `inbox` (and lets other
    /// tasks run), so later streams get new batches in this same pass.
    async fn write_all(&mut self, inbox: &mut mpsc::UnboundedReceiver<Message>) {
        const SLICE: usize = 256;
        let mut slot = 0;
        while slot < self.slots.len() {
            let end = (slot + SLICE).min(self.slots.len());
            for entry in &mut self.slots[slot..end] {
                let Some(direct) = entry else { continue };
                if direct.seen == self.received {
                    continue;
                }
                let new = &self.batches[(direct.seen - self.first) as usize..];
                if deliver(direct, new) {
                    direct.seen = self.received;
                } else {
                    self.index.remove(&direct.id);
                    *entry = None;
                }
            }
            slot = end;
            if slot < self.slots.len() {
                tokio::task::yield_now().await;
            }
            while let Ok(message) = inbox.try_recv() {
                self.take(message);
            }
        }
        self.compact();
    }

    /// Drops the streams that left and the batches every stream has had.
    fn compact(&mut self) {
        if self.index.len() < self.slots.len() {
            self.slots.retain(Option::is_some);
            self.index.clear();
            for (slot, direct) in self.slots.iter().flatten().enumerate() {
                self.index.insert(direct.id, slot);
            }
        }
        let oldest = (self.slots.iter().flatten())
            .map(|d| d.seen)
            .min()
            .unwrap_or(self.received);
        self.batches.drain(..(oldest - self.first) as usize);
        self.first = oldest;
    }

    /// A keep-alive round.
    fn keep_alive(&mut self) {
        for entry in &mut self.slots {
            if let Some(direct) = entry {
                if !keep_alive_round(direct) {
                    self.index.remove(&direct.id);
                    *entry = None;
                }
            }
        }
        self.compact();
    }
}
