//! A minimal keep-alive HTTP/1.1 client for short requests: a GET or a
//! POST, then an answer whose body has a `Content-Length` or is chunked. Cheap enough to
//! run a thousand on two cores, and nothing between the benchmark and the
//! server but the socket.

use anyhow::{bail, Context as _};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One connection to a server, opened at the first request and kept for the
/// next ones, as an application's HTTP client keeps it.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// Bytes read and not used yet.
    buf: Vec<u8>,
}

/// What the server answered.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Connection {
        Connection {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// GETs `path` on the open connection, or on a new one. A kept
    /// connection that the server closed meanwhile is opened again, once.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        let reused = self.stream.is_some();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr);
        match self.exchange(&request).await {
            Ok(response) => Ok(response),
            Err(_) if reused => {
                self.close();
                self.exchange(&request).await
            }
            Err(err) => Err(err),
        }
    }

    /// POSTs `body` to `path`. Never sent twice: a POST that fails is an error.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.exchange(&request).await
    }

    /// Drops the connection; the next request opens a new one.
    pub fn close(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    async fn exchange(&mut self, request: impl AsRef<[u8]>) -> anyhow::Result<Response> {
        let result = self.exchange_open(request.as_ref()).await;
        if !matches!(result, Ok((_, true))) {
            self.close();
        }
        result.map(|(response, _)| response)
    }

    /// The answer and whether the connection may be kept.
    async fn exchange_open(&mut self, request: &[u8]) -> anyhow::Result<(Response, bool)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        self.stream()?.write_all(request).await?;

        let end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
        self.buf.drain(..end + 4);
        let status: u16 = head
            .strip_prefix("http/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 answer: {:?}", first_line(&head)))?;
        let header = |name: &str| {
            head.lines()
                .skip(1)
                .filter_map(|line| line.split_once(':'))
                .find(|(n, _)| n.trim() == name)
                .map(|(_, v)| v.trim().to_owned())
        };
        let keep = header("connection").is_none_or(|v| v != "close");
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            self.chunked_body().await?
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().context("bad Content-Length")?;
            self.take(length).await?
        } else if status == 304 || status == 204 {
            Vec::new()
        } else {
            bail!("an answer without a length: {:?}", first_line(&head));
        };
        Ok((Response { status, body }, keep))
    }

    async fn chunked_body(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(hex, 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size).await?);
            if !self.line().await?.is_empty() {
                bail!("a chunk does not end with CRLF");
            }
        }
    }

    /// The next line, without its CRLF.
    async fn line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0; 8192];
        let n = self.stream()?.read(&mut chunk).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn stream(&mut self) -> anyhow::Result<&mut TcpStream> {
        self.stream.as_mut().context("not connected")
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
