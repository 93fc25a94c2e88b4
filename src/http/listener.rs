//! The listener: accepts connections and reads each one's first request
//! head. `GET /events…` over HTTP/1.1 is answered here, on the socket
//! itself, so that the stream can be written by its feed's direct fan-out;
//! everything else, and every later request on a connection, goes to
//! hyper with the bytes already read put back in front.
//!
//! Both ways run the same router, so routing, auth, CORS and errors are
//! decided in one place. No client can hold a connection it does not use:
//! a head must arrive within `header_timeout`, a kept-alive connection
//! waits at most `idle_timeout` for its next request, a write that makes
//! no progress for `send_timeout` ends the connection, and past
//! `max_clients` the connection idle longest makes room
//! ([`super::connections`]). Nothing here holds a connection open past
//! shutdown.

use super::connections::{Busy, Connection, Connections};
use super::events::{OwnSocket, PendingStream};
use super::head::{self, Framing, Head, MAX_HEAD};
use crate::fanout::stream::EventStream;
use crate::fanout::wire;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// How the listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// From accepting a connection to its first whole request head.
    pub header_timeout: Duration,
    /// A kept-alive connection's wait for its next request head.
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress.
    pub send_timeout: Duration,
    /// Whether event streams are answered on the socket, for the fan-out
    /// to write; `false`: hyper serves every request, streams included.
    pub direct_fanout: bool,
}

/// The listen backlog used when the kernel's cap cannot be read.
const DEFAULT_BACKLOG: u32 = 4096;

/// Binds `address` with a listen backlog as deep as the kernel allows
/// (`net.core.somaxconn`), so that a reconnect storm's connections wait
/// for the accept loop instead of being dropped; returns the backlog too.
pub fn bind(address: SocketAddr) -> io::Result<(TcpListener, u32)> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    let backlog = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(DEFAULT_BACKLOG);
    Ok((socket.listen(backlog)?, backlog))
}

/// Serves `app` on `listener` until `shutdown`, then waits for the open
/// connections to end (streams end at shutdown by themselves). Dropping
/// the future closes those still open.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Arc<Connections>,
    listening: Listening,
    shutdown: CancellationToken,
) {
    // A set that aborts its tasks when dropped: a caller that stops
    // waiting closes every connection left.
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // Forget the connections that ended.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Some(held) = connections.admit() else {
                    // Every connection held is busy: this one cannot be.
                    connections
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                };
                let shutdown = shutdown.clone();
                tasks.spawn(connection(
                    socket,
                    peer,
                    app.clone(),
                    held,
                    listening,
                    shutdown,
                ));
            }
            Err(err) if is_connection_error(&err) => {}
            Err(err) => {
                // Most likely out of open files: wait for some to close.
                tracing::error!(cause = %err, "cannot accept connections");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn connection(
    mut socket: TcpStream,
    peer: SocketAddr,
    app: Router,
    held: Connection,
    listening: Listening,
    shutdown: CancellationToken,
) {
    // Events go out as soon as they are written.
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let read = tokio::select! {
        read = tokio::time::timeout(listening.header_timeout, read_head(&mut socket, &mut buf)) => read,
        _ = held.evicted() => return,
        _ = shutdown.cancelled() => return,
    };
    // Boxed: a task's size is that of its largest state, and an idle
    // stream should not carry the states of the other ways a connection
    // can go.
    match read {
        Ok(Ok(Head::Events(request))) if listening.direct_fanout => {
            let busy = held.busy();
            drop(buf);
            events(socket, peer, request, app, listening.send_timeout, busy).await
        }
        Ok(Ok(Head::Other | Head::Events(_))) => {
            Box::pin(hyper(
                socket,
                buf.freeze(),
                peer,
                app,
                held,
                listening,
                shutdown,
            ))
            .await
        }
        Ok(Ok(Head::Refused(error))) => {
            let _busy = held.busy();
            Box::pin(answer_whole(
                &socket,
                error.into_response(),
                listening.send_timeout,
            ))
            .await
        }
        // Closed, failed or too slow before a whole head arrived.
        Ok(Ok(Head::Partial)) | Ok(Err(_)) | Err(_) => {}
    }
}

/// Reads until the first request head is complete or refused.
async fn read_head(socket: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Head> {
    loop {
        if socket.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        match head::parse(buf) {
            Head::Partial => {}
            head => return Ok(head),
        }
    }
}

/// Answers an event stream request on the socket itself.
async fn events(
    socket: TcpStream,
    peer: SocketAddr,
    mut request: Request<Body>,
    app: Router,
    send_timeout: Duration,
    _busy: Busy,
) {
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(OwnSocket);
    let socket = Arc::new(socket);
    let Some(stream) = Box::pin(answer(&socket, request, app, send_timeout)).await else {
        return;
    };
    stream.write_to(socket).await;
}

/// Runs the router for an event stream request and writes the response
/// head. `Some` with the stream to write after it; `None` when the answer
/// was an error, written whole.
async fn answer(
    socket: &TcpStream,
    request: Request<Body>,
    app: Router,
    send_timeout: Duration,
) -> Option<EventStream> {
    let Ok(mut response) = app.oneshot(request).await;
    let stream = response
        .extensions_mut()
        .remove::<PendingStream>()
        .and_then(|pending| pending.take());
    let Some(stream) = stream else {
        // An error: answered whole, and the connection closed.
        answer_whole(socket, response, send_timeout).await;
        return None;
    };
    let head = head::response(response.status(), response.headers(), Framing::Chunked);
    let written = wire::write_all(socket, &mut [IoSlice::new(&head)], send_timeout).await;
    written.ok().map(|()| stream)
}

/// How long a closing connection goes on reading what the client still
/// sends, at most.
const LINGER: Duration = Duration::from_secs(2);

/// Writes a whole answer, then the connection closes.
async fn answer_whole(socket: &TcpStream, response: Response<Body>, send_timeout: Duration) {
    let (parts, body) = response.into_parts();
    // Answers written here are the router's small JSON bodies.
    let body = axum::body::to_bytes(body, MAX_HEAD)
        .await
        .unwrap_or_default();
    let head = head::response(parts.status, &parts.headers, Framing::Close(body.len()));
    let mut parts = [IoSlice::new(&head), IoSlice::new(&body)];
    if wire::write_all(socket, &mut parts, send_timeout)
        .await
        .is_err()
    {
        return;
    }
    // Closing with unread bytes (the rest of a head too large to take)
    // makes the kernel reset the connection, and the client may lose the
    // answer: say that nothing more comes, and drain what the client
    // still sends, as nginx's lingering close does.
    let _ = socket2::SockRef::from(socket).shutdown(std::net::Shutdown::Write);
    let _ = tokio::time::timeout(LINGER, wire::closed(socket)).await;
}

/// Serves the connection with hyper, from the bytes already read on.
async fn hyper(
    socket: TcpStream,
    read: Bytes,
    peer: SocketAddr,
    app: Router,
    held: Connection,
    listening: Listening,
    shutdown: CancellationToken,
) {
    let held = Arc::new(held);
    let service = {
        let held = held.clone();
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            // Busy from the request until its answer is written.
            let busy = held.busy();
            let app = app.clone();
            async move {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let Ok(response) = app.oneshot(request).await;
                Ok::<_, Infallible>(response.map(|body| Answer { body, _busy: busy }))
            }
        })
    };
    let io = TokioIo::new(Rewind {
        read,
        socket,
        send_timeout: listening.send_timeout,
        stalled: None,
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Counted from the end of the previous answer: it bounds both an
        // idle kept-alive connection and a request head sent slowly.
        .header_read_timeout(listening.idle_timeout)
        .max_buf_size(MAX_HEAD);
    let mut served = pin!(builder.serve_connection(io, service));
    let mut stopping = pin!(shutdown.cancelled());
    let mut evicted = pin!(held.evicted());
    loop {
        tokio::select! {
            _ = served.as_mut() => break,
            _ = &mut stopping => served.as_mut().graceful_shutdown(),
            _ = &mut evicted => break,
        }
    }
}

/// A response body that keeps its connection marked busy until hyper has
/// written it all (or dropped it).
struct Answer {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A socket with bytes already read from it put back in front, whose
/// writes fail once the client has taken nothing for `send_timeout`.
struct Rewind {
    read: Bytes,
    socket: TcpStream,
    send_timeout: Duration,
    /// Fires when a write that waits for the client has waited too long.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Rewind {
    /// Passes a write's outcome on, failing a write that has waited for
    /// the client past the send timeout.
    fn progress(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let deadline = tokio::time::Instant::now() + self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(io::ErrorKind::TimedOut.into()))
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write(cx, buf);
        self.progress(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        self.progress(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}
