//! Writing an event stream's chunked HTTP/1.1 body to a socket that its own
//! task and the feed's fan-out share.
//!
//! Both writers go through here so that every write is one whole chunk:
//! the fan-out writes only when the socket takes a whole chunk at once
//! (or hands over what is left), and a stream's task writes only while the
//! fan-out does not hold it.

use bytes::{Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::time::Duration;
use tokio::net::TcpStream;

/// The end of a chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";

/// The chunk that ends a body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// A chunk header: the data's length in hex and CRLF.
pub struct ChunkHeader {
    text: [u8; 18],
    len: usize,
}

impl ChunkHeader {
    /// The header of a chunk of `len` bytes.
    pub fn new(len: usize) -> ChunkHeader {
        let mut text = [0; 18];
        let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
        for (i, place) in text[..digits].iter_mut().enumerate() {
            let nibble = (len >> (4 * (digits - 1 - i))) & 0xf;
            *place = b"0123456789abcdef"[nibble];
        }
        text[digits..digits + 2].copy_from_slice(b"\r\n");
        ChunkHeader {
            text,
            len: digits + 2,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.text[..self.len]
    }
}

/// What a write that may not wait achieved.
#[derive(Debug)]
pub enum Written {
    /// Everything.
    All,
    /// Nothing: the socket's buffer is full.
    Nothing,
    /// A part; these bytes are still to be written, before anything else.
    Part(Bytes),
    /// The socket failed: the client is gone.
    Failed,
}

/// Writes `parts` if the socket takes them now, without waiting.
///
/// This is the fan-out's write, made once per client per batch, so it goes
/// straight to `sendmsg` on the non-blocking socket rather than through the
/// runtime's readiness bookkeeping: a socket that is full says so itself.
/// The readiness the runtime keeps may then be stale, which only costs the
/// stream's task one futile write before it waits (see [`write_all`]).
pub fn write_now(socket: &TcpStream, parts: &mut [IoSlice<'_>]) -> Written {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    match socket2::SockRef::from(socket).send_vectored(parts) {
        Ok(n) if n == total => Written::All,
        Ok(n) => {
            let mut parts = &mut parts[..];
            IoSlice::advance_slices(&mut parts, n);
            let mut rest = BytesMut::with_capacity(total - n);
            for part in parts.iter() {
                rest.extend_from_slice(part);
            }
            Written::Part(rest.freeze())
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Written::Nothing,
        Err(_) => Written::Failed,
    }
}

/// Writes all of `parts`, waiting for the socket while the client takes
/// something at least every `send_timeout`; a client that takes nothing
/// for that long fails the write with `TimedOut`.
pub async fn write_all(
    socket: &TcpStream,
    parts: &mut [IoSlice<'_>],
    send_timeout: Duration,
) -> io::Result<()> {
    let mut parts = &mut parts[..];
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        tokio::time::timeout(send_timeout, socket.writable())
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        match socket.try_write_vectored(parts) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut parts, n),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Writes `data` as one chunk, as [`write_all`] does.
pub async fn write_chunk(
    socket: &TcpStream,
    data: &[u8],
    send_timeout: Duration,
) -> io::Result<()> {
    let header = ChunkHeader::new(data.len());
    write_all(
        socket,
        &mut [
            IoSlice::new(header.as_bytes()),
            IoSlice::new(data),
            IoSlice::new(CHUNK_END),
        ],
        send_timeout,
    )
    .await
}

/// Completes when the client closes its end of the connection (or it
/// fails). Anything the client sends meanwhile is read and dropped: an
/// event stream has no use for it. Cancel-safe.
pub async fn closed(socket: &TcpStream) {
    let mut sink = [0; 256];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        match socket.try_read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_headers_are_lowercase_hex() {
        let text = |len| String::from_utf8(ChunkHeader::new(len).as_bytes().to_vec()).unwrap();
        assert_eq!(text(0), "0\r\n");
        assert_eq!(text(10), "a\r\n");
        assert_eq!(text(16), "10\r\n");
        assert_eq!(text(0x1f2e), "1f2e\r\n");
        assert_eq!(text(usize::MAX), "ffffffffffffffff\r\n");
    }
}
