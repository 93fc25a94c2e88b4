//! A crowd of Server-Sent Events subscribers on one server: one tokio task
//! per connection, connected a few hundred at a time so the server's listen
//! backlog never overflows, each from a source address among 127.0.0.1–8 so
//! more connections fit than one address has ports. Their counts live in
//! shared [`Slot`]s, their latencies in one [`Histogram`], so a window is
//! measured by reading them before and after.

use super::histogram::Histogram;
use super::stream::{Gaps, Line, Parser, ReadyOn, Slot, State};
use crate::now_us;
use anyhow::bail;
use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

/// Source addresses the clients spread over.
const SOURCES: usize = 8;
/// How long a client may take to connect and be placed in the feed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

thread_local! {
    /// The read buffer of every client on this thread: a client keeps no
    /// buffer of its own while it waits.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

/// Where and how the clients subscribe.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub addr: SocketAddr,
    /// The path of the GET, with its query.
    pub path: String,
    pub ready_on: ReadyOn,
}

/// Where client `i` starts: the id before the first row it must get, and
/// the `Last-Event-ID` it sends, if any.
pub type Start = (i64, Option<i64>);

/// The connected clients; dropping it ends every stream.
pub struct Crowd {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    slots: Vec<Slot>,
    histogram: Histogram,
    /// The first error of a connect and of a stream, for the report.
    errors: Mutex<(Option<String>, Option<String>)>,
}

/// A client's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    received: u64,
    missing: i64,
    duplicated: u64,
    out_of_order: u64,
}

/// Whether the clients got the rows of a window exactly once, in order.
#[derive(Debug, Clone, Default)]
pub struct Check {
    /// Rows received by all clients.
    pub received: u64,
    /// Rows a client should have had and did not (passed over, or not come
    /// by the end).
    pub missing: i64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Clients with any of the above.
    pub wrong_clients: usize,
    /// Streams that ended or broke after they were ready.
    pub ended: usize,
    /// The first reason a stream ended.
    pub ended_why: Option<String>,
}

impl Check {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.ended == 0
    }
}

impl Crowd {
    /// Opens `count` streams, `parallel` connecting at a time, and waits
    /// until each is ready or has failed.
    pub async fn connect(
        sub: &Subscription,
        count: usize,
        parallel: usize,
        start: impl Fn(usize) -> Start,
    ) -> Crowd {
        let shared = Arc::new(Shared {
            slots: (0..count).map(|_| Slot::default()).collect(),
            histogram: Histogram::new(),
            errors: Mutex::new((None, None)),
        });
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let (after, last_event_id) = start(i);
            shared.slots[i].last_id.store(after, Ordering::Relaxed);
            let resume =
                last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
                sub.path, sub.addr
            );
            let client = Client {
                shared: shared.clone(),
                index: i,
                addr: sub.addr,
                ready_on: sub.ready_on,
            };
            tasks.push(tokio::spawn(client.run(request, gate.clone())));
        }
        let crowd = Crowd { shared, tasks };
        while crowd.count(State::Connecting) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crowd
    }

    /// Clients in `state`.
    pub fn count(&self, state: State) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| s.state() == state)
            .count()
    }

    pub fn len(&self) -> usize {
        self.shared.slots.len()
    }

    /// The first connect error, if any.
    pub fn connect_error(&self) -> Option<String> {
        self.errors().0
    }

    fn errors(&self) -> (Option<String>, Option<String>) {
        self.shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// Forgets the latencies so far: a window starts.
    pub fn clear_latencies(&self) {
        self.shared.histogram.clear();
    }

    pub fn histogram(&self) -> &Histogram {
        &self.shared.histogram
    }

    /// Every client's counters now.
    pub fn counts(&self) -> Vec<Counts> {
        self.shared
            .slots
            .iter()
            .map(|s| Counts {
                received: s.received.load(Ordering::Relaxed),
                missing: s.missing.load(Ordering::Relaxed),
                duplicated: s.duplicated.load(Ordering::Relaxed),
                out_of_order: s.out_of_order.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Whether every ready client has had row `last`.
    pub fn caught_up(&self, last: i64) -> bool {
        self.shared
            .slots
            .iter()
            .filter(|s| s.state() == State::Ready)
            .all(|s| s.last_id.load(Ordering::Relaxed) >= last)
    }

    /// Waits until every ready client has had row `last`, or `deadline`;
    /// returns whether they all have.
    pub async fn wait_caught_up(&self, last: i64, deadline: Instant) -> bool {
        loop {
            if self.caught_up(last) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the clients got since `before`, when every row up to `last`
    /// should have come: each client that was ever ready, whatever became of
    /// it since, must have every row after its start exactly once, in order.
    pub fn check(&self, before: &[Counts], last: i64) -> Check {
        let mut check = Check {
            ended_why: self.errors().1,
            ..Check::default()
        };
        for (slot, before) in self.shared.slots.iter().zip(before) {
            let state = slot.state();
            if matches!(state, State::Connecting | State::ConnectFailed) {
                continue;
            }
            let tail = (last - slot.last_id.load(Ordering::Relaxed)).max(0);
            let missing = slot.missing.load(Ordering::Relaxed) - before.missing + tail;
            let duplicated = slot.duplicated.load(Ordering::Relaxed) - before.duplicated;
            let out_of_order = slot.out_of_order.load(Ordering::Relaxed) - before.out_of_order;
            check.received += slot.received.load(Ordering::Relaxed) - before.received;
            check.missing += missing;
            check.duplicated += duplicated;
            check.out_of_order += out_of_order;
            check.wrong_clients +=
                usize::from(missing != 0 || duplicated != 0 || out_of_order != 0);
            check.ended += usize::from(state == State::Ended);
        }
        check
    }

    /// Ends every stream and waits until their sockets are closed.
    pub async fn close(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One subscriber.
struct Client {
    shared: Arc<Shared>,
    index: usize,
    addr: SocketAddr,
    ready_on: ReadyOn,
}

impl Client {
    async fn run(self, request: String, gate: Arc<Semaphore>) {
        let Ok(permit) = gate.acquire_owned().await else {
            return;
        };
        let slot = &self.shared.slots[self.index];
        let outcome = self.follow(&request, permit).await;
        let err = match outcome {
            Err(err) => err,
            Ok(never) => match never {},
        };
        let connecting = slot.state() == State::Connecting;
        slot.set(if connecting {
            State::ConnectFailed
        } else {
            State::Ended
        });
        if let Ok(mut errors) = self.shared.errors.lock() {
            let first = if connecting {
                &mut errors.0
            } else {
                &mut errors.1
            };
            first.get_or_insert_with(|| format!("{err:#}"));
        }
    }

    /// Connects, subscribes and reads until the stream fails.
    async fn follow(
        &self,
        request: &str,
        permit: OwnedSemaphorePermit,
    ) -> anyhow::Result<std::convert::Infallible> {
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let stream = tokio::time::timeout_at(deadline, self.open(request))
            .await
            .map_err(|_| anyhow::anyhow!("no connection within {CONNECT_TIMEOUT:?}"))??;
        let mut permit = Some(permit);
        let slot = &self.shared.slots[self.index];
        let histogram = &self.shared.histogram;
        let mut parser = Parser::new(self.ready_on);
        let mut gaps = Gaps::default();
        loop {
            if permit.is_some() {
                if tokio::time::timeout_at(deadline, stream.readable())
                    .await
                    .is_err()
                {
                    bail!("not placed in the feed within {CONNECT_TIMEOUT:?}");
                }
            } else {
                stream.readable().await?;
            }
            let mut ready = false;
            READ_BUF.with_borrow_mut(|buf| -> anyhow::Result<()> {
                let n = match stream.try_read(buf) {
                    Ok(0) => bail!("the server closed the stream"),
                    Ok(n) => n,
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                    Err(err) => return Err(err.into()),
                };
                // Everything in one read arrived at the same moment.
                let now = now_us();
                parser.push(&buf[..n], &mut |line| {
                    match line {
                        Line::Row { id, sent_at_us } => {
                            gaps.see(slot, id);
                            histogram.record(self.index, (now - sent_at_us).max(0) as u64);
                        }
                        Line::Ready => ready = true,
                        Line::Other => {}
                    }
                    Ok(())
                })
            })?;
            if ready && permit.take().is_some() {
                slot.set(State::Ready);
            }
        }
    }

    async fn open(&self, request: &str) -> anyhow::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        let source = Ipv4Addr::new(127, 0, 0, 1 + (self.index % SOURCES) as u8);
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
        let mut stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        Ok(stream)
    }
}
