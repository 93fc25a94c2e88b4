//! The listener: accepts connections and reads each one's first request
//! head. `GET /events…` over HTTP/1.1 is answered here, on the socket
//! itself, so that the stream can be written by its hub's direct fan-out;
//! everything else, and every later request on a connection, goes to
//! hyper with the bytes already read put back in front.
//!
//! Both ways run the same router, so routing, auth, CORS and errors are
//! decided in one place. Nothing here may hold a connection open past
//! shutdown.

use super::events::{OwnSocket, PendingStream};
use super::stream::EventStream;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, Response, Version};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// The longest request head read here; a longer one goes to hyper, which
/// answers it.
const MAX_HEAD: usize = 16 * 1024;

/// How long a client may take to send its first request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Most headers a request read here may have.
const MAX_HEADERS: usize = 64;

/// Serves `app` on `listener` until `shutdown`, then waits for the open
/// connections to end (streams end at shutdown by themselves).
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                connections.spawn(connection(socket, peer, app.clone(), shutdown.clone()));
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
    connections.close();
    connections.wait().await;
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
    shutdown: CancellationToken,
) {
    // Events go out as soon as they are written.
    let _ = socket.set_nodelay(true);
    let mut head = BytesMut::with_capacity(1024);
    let read = tokio::select! {
        read = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut socket, &mut head)) => read,
        _ = shutdown.cancelled() => return,
    };
    // Boxed: a task's size is that of its largest state, and an idle
    // stream should not carry the states of the other ways a connection
    // can go.
    match read {
        Ok(Ok(Some(request))) => {
            drop(head);
            events(socket, peer, request, app).await
        }
        Ok(Ok(None)) => Box::pin(hyper(socket, head.freeze(), peer, app, shutdown)).await,
        // Closed, failed or too slow before a whole head arrived.
        Ok(Err(_)) | Err(_) => {}
    }
}

/// Reads until the first request head is complete. `Some` when it is an
/// event stream request to answer here; `None` when hyper should have the
/// connection (anything else, or a head this reader does not take).
async fn read_head(
    socket: &mut TcpStream,
    head: &mut BytesMut,
) -> io::Result<Option<Request<Body>>> {
    loop {
        if socket.read_buf(head).await? == 0 {
            return match head.is_empty() {
                true => Err(io::ErrorKind::UnexpectedEof.into()),
                false => Ok(None),
            };
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(head) {
            Ok(httparse::Status::Complete(_)) => return Ok(event_request(&parsed)),
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            _ => return Ok(None),
        }
    }
}

/// The request as the router takes it, when it is an HTTP/1.1 `GET` of an
/// event stream without a body.
fn event_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let path = parsed.path?;
    let route = path.split('?').next()?;
    let wanted = parsed.method == Some("GET")
        && parsed.version == Some(1)
        && (route == "/events" || route.starts_with("/events/"));
    let has_body = parsed.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    });
    if !wanted || has_body {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    for header in parsed.headers.iter() {
        request = request.header(header.name, header.value);
    }
    // A head hyper would refuse goes to hyper, which says why.
    request.body(Body::empty()).ok()
}

/// Answers an event stream request on the socket itself.
async fn events(socket: TcpStream, peer: SocketAddr, mut request: Request<Body>, app: Router) {
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(OwnSocket);
    let socket = Arc::new(socket);
    let Some(stream) = Box::pin(answer(&socket, request, app)).await else {
        return;
    };
    stream.write_to(socket).await;
}

/// Runs the router for an event stream request and writes the response
/// head. `Some` with the stream to write after it; `None` when the answer
/// was an error, written whole.
async fn answer(socket: &TcpStream, request: Request<Body>, app: Router) -> Option<EventStream> {
    let Ok(mut response) = app.oneshot(request).await;
    let stream = response
        .extensions_mut()
        .remove::<PendingStream>()
        .and_then(|pending| pending.take());
    if stream.is_some() {
        let head = response_head(&response, "transfer-encoding: chunked\r\n");
        let written = crate::wire::write_all(socket, &mut [IoSlice::new(&head)]).await;
        return written.ok().and(stream);
    }
    // An error: answered whole, and the connection closed.
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let response = Response::from_parts(parts, ());
    let length = format!("content-length: {}\r\nconnection: close\r\n", body.len());
    let head = response_head(&response, &length);
    let mut parts = [IoSlice::new(&head), IoSlice::new(&body)];
    let _ = crate::wire::write_all(socket, &mut parts).await;
    None
}

/// The status line and headers of `response`, with `extra` header lines.
fn response_head<B>(response: &Response<B>, extra: &str) -> Vec<u8> {
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(extra.as_bytes());
    head.extend_from_slice(b"\r\n");
    head
}

/// Serves the connection with hyper, from the bytes already read on.
async fn hyper(
    socket: TcpStream,
    read: Bytes,
    peer: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
) {
    let service = app.map_request(move |mut request: Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.map(Body::new)
    });
    let io = TokioIo::new(Rewind { read, socket });
    let builder = http1::Builder::new();
    let mut served = pin!(builder.serve_connection(io, TowerToHyperService::new(service)));
    let mut stopping = pin!(shutdown.cancelled());
    loop {
        tokio::select! {
            _ = served.as_mut() => break,
            _ = &mut stopping => served.as_mut().graceful_shutdown(),
        }
    }
}

/// A socket with bytes already read from it put back in front.
struct Rewind {
    read: Bytes,
    socket: TcpStream,
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
        Pin::new(&mut self.socket).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.socket).poll_write_vectored(cx, bufs)
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
