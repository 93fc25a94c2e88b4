//! The clients of a latency measurement, read as cheaply as the benchmark
//! can so that they take as little as possible of the CPU they share with
//! rowcast and the database: a few threads, each waiting on its share of the
//! connections with one `epoll` (mio) and reading whichever are ready, with
//! the fan-out benchmark's parser. No async runtime, no task per client.

use crate::fanout::stream::{Line, Parser, ReadyOn};
use crate::now_us;
use anyhow::{bail, Context as _};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What a client got: (row id, latency in µs) of each event, in arrival
/// order, or why its stream failed.
pub type Received = anyhow::Result<Vec<(i64, i64)>>;

/// The connected clients, until [`Readers::finish`].
pub struct Readers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Vec<Received>>>,
}

/// Counters every thread adds to, read while rows go in.
struct Shared {
    /// Clients placed in the feed (their `retry:` line arrived).
    ready: AtomicUsize,
    /// Clients whose connection or request failed, or whose stream ended.
    failed: AtomicUsize,
    /// Rows received by every client together.
    received: AtomicUsize,
    stop: AtomicBool,
}

/// How long a thread waits for readiness before it looks at `stop`.
const WAKE_EVERY: Duration = Duration::from_millis(20);

impl Readers {
    /// Opens `clients` streams of `GET path` on `threads` threads, each
    /// expecting room for `rows` events.
    pub fn start(
        addr: SocketAddr,
        path: &str,
        clients: usize,
        threads: usize,
        rows: usize,
    ) -> anyhow::Result<Readers> {
        let shared = Arc::new(Shared {
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            received: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        let threads = threads.clamp(1, clients.max(1));
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            // Clients t, t + threads, …: the shares differ by one at most.
            let share = (clients + threads - 1 - t) / threads;
            let shared = shared.clone();
            let request = request.clone();
            let handle = std::thread::Builder::new()
                .name(format!("reader-{t}"))
                .spawn(move || read_share(addr, &request, share, rows, &shared))
                .context("cannot start a reader thread")?;
            handles.push(handle);
        }
        Ok(Readers {
            shared,
            threads: handles,
        })
    }

    /// Clients placed in the feed so far.
    pub fn ready(&self) -> usize {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Clients that failed so far.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Rows received so far, over all clients.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Ends every stream; what each client got, in the order they were
    /// opened within each thread, thread after thread.
    pub fn finish(mut self) -> Vec<Received> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for thread in std::mem::take(&mut self.threads) {
            match thread.join() {
                Ok(received) => all.extend(received),
                Err(_) => all.push(Err(anyhow::anyhow!("a reader thread panicked"))),
            }
        }
        all
    }
}

/// A measurement that fails midway stops its readers all the same.
impl Drop for Readers {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// One client: its socket, its parser and what it got.
struct Client {
    /// None once the stream failed (or never opened).
    stream: Option<TcpStream>,
    parser: Parser,
    ready: bool,
    events: Vec<(i64, i64)>,
    /// Why the stream failed.
    error: Option<anyhow::Error>,
}

/// Connects `share` clients, then reads them until `stop`.
fn read_share(
    addr: SocketAddr,
    request: &str,
    share: usize,
    rows: usize,
    shared: &Shared,
) -> Vec<Received> {
    let mut poll = match Poll::new() {
        Ok(poll) => poll,
        Err(err) => {
            shared.failed.fetch_add(share, Ordering::Relaxed);
            return (0..share)
                .map(|_| Err(anyhow::anyhow!("no epoll: {err}")))
                .collect();
        }
    };
    let mut clients: Vec<Client> = Vec::with_capacity(share);
    for n in 0..share {
        let mut client = Client {
            stream: None,
            parser: Parser::new(ReadyOn::Retry),
            ready: false,
            events: Vec::with_capacity(rows),
            error: None,
        };
        let opened = connect(addr, request).and_then(|mut stream| {
            poll.registry()
                .register(&mut stream, Token(n), Interest::READABLE)?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => client.stream = Some(stream),
            Err(err) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                client.error = Some(err);
            }
        }
        clients.push(client);
    }

    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0; 64 * 1024];
    while !shared.stop.load(Ordering::Relaxed) {
        if let Err(err) = poll.poll(&mut events, Some(WAKE_EVERY)) {
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            for client in clients.iter_mut().filter(|c| c.error.is_none()) {
                client.error = Some(anyhow::anyhow!("epoll failed: {err}"));
            }
            break;
        }
        for event in &events {
            let client = &mut clients[event.token().0];
            if let Err(err) = client.read(&mut buf, shared) {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(mut stream) = client.stream.take() {
                    let _ = poll.registry().deregister(&mut stream);
                }
                client.error = Some(err);
            }
        }
    }
    clients
        .into_iter()
        .map(|c| match c.error {
            Some(err) => Err(err),
            None => Ok(c.events),
        })
        .collect()
}

/// A connected, non-blocking socket that has sent the request.
fn connect(addr: SocketAddr, request: &str) -> anyhow::Result<TcpStream> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30))
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.write_all(request.as_bytes())?;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream))
}

impl Client {
    /// Reads everything the socket holds. A read that does not fill the
    /// buffer emptied the socket: the next byte to arrive raises a new edge,
    /// so the read that would only say "nothing more" is skipped.
    fn read(&mut self, buf: &mut [u8], shared: &Shared) -> anyhow::Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        loop {
            let n = match stream.read(buf) {
                Ok(0) => bail!("rowcast closed the stream"),
                Ok(n) => n,
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            };
            // Everything in one read arrived at the same moment.
            let now = now_us();
            let (ready, events) = (&mut self.ready, &mut self.events);
            let drained = n < buf.len();
            self.parser.push(&buf[..n], &mut |line| {
                match line {
                    Line::Row { id, sent_at_us } => {
                        events.push((id, now - sent_at_us));
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Line::Ready if !*ready => {
                        *ready = true;
                        shared.ready.fetch_add(1, Ordering::Relaxed);
                    }
                    Line::Ready | Line::Other => {}
                }
                Ok(())
            })?;
            if drained {
                return Ok(());
            }
        }
    }
}
