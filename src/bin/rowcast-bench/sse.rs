//! A Server-Sent Events client that holds one stream open and records each
//! event's latency.

use crate::http::find;
use crate::now_us;
use anyhow::{bail, Context as _};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// line. Cheap enough to run a thousand on two cores.
pub struct Client {
    pub addr: SocketAddr,
    pub path: String,
    /// Fired at the `retry:` line: rowcast has placed the client in the feed.
    pub ready: Option<oneshot::Sender<()>>,
    /// Rows received by every client together.
    pub received: Arc<AtomicUsize>,
    /// (row id, latency in µs) of each event, in arrival order.
    pub events: Vec<(i64, i64)>,
}

/// A row as the benchmark reads it from an event's `data:`.
#[derive(Deserialize)]
struct Row {
    id: i64,
    sent_at_us: i64,
}

impl Client {
    /// Reads until `stop`; returns what arrived.
    pub async fn run(mut self, stop: CancellationToken) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.path, self.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut body = HttpBody::default();
        let mut buf = vec![0; 8192];
        loop {
            let n = tokio::select! {
                n = stream.read(&mut buf) => n?,
                _ = stop.cancelled() => return Ok(self.events),
            };
            if n == 0 {
                bail!("rowcast closed the stream");
            }
            // Everything in one read arrived at the same moment.
            let now = now_us();
            body.push(&buf[..n], |line| self.line(line, now))?;
        }
    }

    fn line(&mut self, line: &[u8], now: i64) -> anyhow::Result<()> {
        if line.starts_with(b"retry:") {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(());
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let row: Row = serde_json::from_slice(data).context("an event's data is not a row")?;
            self.events.push((row.id, now - row.sent_at_us));
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Turns the bytes of an HTTP/1.1 response into the lines of its body,
/// undoing the chunked transfer encoding that a stream is sent with.
#[derive(Default)]
struct HttpBody {
    /// Received bytes not decoded yet.
    raw: Vec<u8>,
    /// The start of a body line whose end has not arrived.
    partial: Vec<u8>,
    state: BodyState,
}

#[derive(Default, Clone, Copy)]
enum BodyState {
    /// Reading the status line and headers.
    #[default]
    Head,
    /// The body is not chunked: every byte is body.
    Plain,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes left.
    ChunkData(usize),
    /// Expecting the CRLF after a chunk.
    ChunkEnd,
}

impl HttpBody {
    fn push(
        &mut self,
        bytes: &[u8],
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.raw.extend_from_slice(bytes);
        let raw = std::mem::take(&mut self.raw);
        let mut at = 0;
        while at < raw.len() {
            let rest = &raw[at..];
            match self.state {
                BodyState::Head => {
                    let Some(end) = find(rest, b"\r\n\r\n") else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
                    if !head.starts_with("http/1.1 200 ") {
                        bail!("rowcast answered {}", head.lines().next().unwrap_or(""));
                    }
                    let chunked = head
                        .lines()
                        .any(|h| h.starts_with("transfer-encoding:") && h.contains("chunked"));
                    self.state = if chunked {
                        BodyState::ChunkSize
                    } else {
                        BodyState::Plain
                    };
                    at += end + 4;
                }
                BodyState::Plain => {
                    split_lines(&mut self.partial, rest, &mut on_line)?;
                    at = raw.len();
                }
                BodyState::ChunkSize => {
                    let Some(end) = find(rest, b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&rest[..end])?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    if size == 0 {
                        bail!("rowcast ended the stream");
                    }
                    self.state = BodyState::ChunkData(size);
                    at += end + 2;
                }
                BodyState::ChunkData(left) => {
                    let take = left.min(rest.len());
                    split_lines(&mut self.partial, &rest[..take], &mut on_line)?;
                    self.state = match left - take {
                        0 => BodyState::ChunkEnd,
                        left => BodyState::ChunkData(left),
                    };
                    at += take;
                }
                BodyState::ChunkEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if !rest.starts_with(b"\r\n") {
                        bail!("a chunk does not end with CRLF");
                    }
                    self.state = BodyState::ChunkSize;
                    at += 2;
                }
            }
        }
        self.raw = raw;
        self.raw.drain(..at);
        Ok(())
    }
}

/// Calls `on_line` for each complete line of `bytes`, after the start kept
/// in `partial`; keeps the incomplete end there.
fn split_lines(
    partial: &mut Vec<u8>,
    mut bytes: &[u8],
    on_line: &mut impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
        let line = if partial.is_empty() {
            &bytes[..nl]
        } else {
            partial.extend_from_slice(&bytes[..nl]);
            &partial[..]
        };
        on_line(line.strip_suffix(b"\r").unwrap_or(line))?;
        partial.clear();
        bytes = &bytes[nl + 1..];
    }
    partial.extend_from_slice(bytes);
    Ok(())
}
