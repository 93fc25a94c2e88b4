//! A raw HTTP/1.1 connection, to see the bytes a client gets.

use super::WAIT;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A raw HTTP/1.1 connection, to see the bytes a client gets.
pub struct Wire {
    pub socket: TcpStream,
    pub read: Vec<u8>,
}

impl Wire {
    pub async fn connect(base: &str) -> Wire {
        let address = base.trim_start_matches("http://");
        Wire {
            socket: TcpStream::connect(address).await.unwrap(),
            read: Vec::new(),
        }
    }

    pub async fn open(base: &str, path: &str, extra_headers: &str) -> Wire {
        let mut wire = Wire::connect(base).await;
        wire.send(path, extra_headers).await;
        wire
    }

    pub async fn send(&mut self, path: &str, extra_headers: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: rowcast\r\n{extra_headers}\r\n");
        self.write(request.as_bytes()).await;
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    /// Reads more, for up to 200 ms; false when nothing more came.
    pub async fn read_more(&mut self) -> bool {
        let mut buf = [0; 16 * 1024];
        match tokio::time::timeout(Duration::from_millis(200), self.socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.read.extend_from_slice(&buf[..n]);
                true
            }
            _ => false,
        }
    }

    /// The response head, as text.
    pub async fn head(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.read[..end + 4].to_vec()).unwrap();
                self.read.drain(..end + 4);
                return head;
            }
            assert!(tokio::time::Instant::now() < deadline, "no response head");
            self.read_more().await;
        }
    }

    pub async fn read_exactly(&mut self, n: usize) {
        while self.read.len() < n {
            assert!(self.read_more().await, "the body ended early");
        }
        self.read.drain(..n);
    }

    /// Everything read so far and whatever comes until the connection is
    /// quiet for 200 ms (at most a second).
    pub async fn take_read(&mut self) -> Vec<u8> {
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.read_more().await && tokio::time::Instant::now() < until {}
        std::mem::take(&mut self.read)
    }

    /// The chunked body read so far and whatever comes until the
    /// connection is quiet for 200 ms (at most a second), decoded; panics
    /// on a malformed chunk.
    pub async fn chunked_body(&mut self) -> String {
        let raw = self.take_read().await;
        let mut raw = &raw[..];
        let mut body = Vec::new();
        while !raw.is_empty() {
            let line_end = raw
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("chunk size line");
            let size = std::str::from_utf8(&raw[..line_end]).unwrap();
            let size =
                usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
            let data = &raw[line_end + 2..];
            assert!(data.len() >= size + 2, "a whole chunk");
            body.extend_from_slice(&data[..size]);
            assert_eq!(&data[size..size + 2], b"\r\n", "chunk data ends with CRLF");
            raw = &data[size + 2..];
        }
        String::from_utf8(body).unwrap()
    }
}

/// A header's value in a response head (names are lowercase on the wire).
pub fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}
