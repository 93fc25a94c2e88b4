//! One subscriber's stream, read as cheaply as the benchmark can: the HTTP/1.1
//! response undone by hand (chunked or not), each `data:` line scanned for
//! its `"id":` and `"sent_at_us":` digits without a JSON parser, and each
//! row's id checked against the one expected next. It never keeps a body:
//! only a line that spans two reads is copied.

use anyhow::{bail, Context as _};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};

/// What marks a stream as placed in the feed, ready for rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    /// The `retry:` line that rowcast sends once it has subscribed the client.
    Retry,
    /// The response head (nchan sends it once the subscriber is in the channel).
    Head,
}

/// A client's counts, shared with whoever checks them.
#[derive(Default)]
pub struct Slot {
    /// Rows received.
    pub received: AtomicU64,
    /// Ids passed over, less those that came later after all.
    pub missing: AtomicI64,
    /// Rows received a second time.
    pub duplicated: AtomicU64,
    /// Rows that came after a later one (and filled a gap).
    pub out_of_order: AtomicU64,
    /// The highest id received, or the id the client started after.
    pub last_id: AtomicI64,
    /// [`State`] as a number.
    pub state: AtomicU8,
}

/// Where a client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Connecting = 0,
    Ready = 1,
    /// It could not connect, or not get its stream started.
    ConnectFailed = 2,
    /// Its stream ended or broke after it was ready.
    Ended = 3,
}

impl Slot {
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Connecting,
            1 => State::Ready,
            2 => State::ConnectFailed,
            _ => State::Ended,
        }
    }

    pub fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// Ids a client passed over, kept to tell a late row from a repeated one.
/// Bounded: a stream that loses rows at every turn does not grow it forever.
#[derive(Default)]
pub struct Gaps {
    /// Inclusive ranges of ids not received yet, oldest first.
    open: Vec<(i64, i64)>,
}

const MOST_GAPS: usize = 256;

impl Gaps {
    /// Counts row `id` into `slot`.
    pub fn see(&mut self, slot: &Slot, id: i64) {
        slot.received.fetch_add(1, Ordering::Relaxed);
        let last = slot.last_id.load(Ordering::Relaxed);
        if id == last + 1 {
            slot.last_id.store(id, Ordering::Relaxed);
        } else if id > last {
            slot.missing.fetch_add(id - last - 1, Ordering::Relaxed);
            if self.open.len() == MOST_GAPS {
                self.open.remove(0);
            }
            self.open.push((last + 1, id - 1));
            slot.last_id.store(id, Ordering::Relaxed);
        } else if let Some(at) = self.open.iter().position(|&(a, b)| a <= id && id <= b) {
            let (a, b) = self.open[at];
            match (a == id, b == id) {
                (true, true) => {
                    self.open.remove(at);
                }
                (true, false) => self.open[at].0 = id + 1,
                (false, true) => self.open[at].1 = id - 1,
                (false, false) => {
                    self.open[at].1 = id - 1;
                    self.open.insert(at + 1, (id + 1, b));
                }
            }
            slot.missing.fetch_sub(1, Ordering::Relaxed);
            slot.out_of_order.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.duplicated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What a line of the body was.
pub enum Line {
    /// A row: its id and the `sent_at_us` stamped in it.
    Row { id: i64, sent_at_us: i64 },
    /// The client is in the feed.
    Ready,
    /// Anything else: comments, `id:`, `event:`, `retry:` past the first.
    Other,
}

/// The decoder of one response: where it is in the HTTP framing, and the
/// start of a line whose end has not arrived.
pub struct Parser {
    framing: Framing,
    /// The response head until it is complete; then the start of a line.
    partial: Vec<u8>,
    ready_on: ReadyOn,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// Reading the status line and headers.
    Head,
    /// No chunking: every byte to the end is body.
    Plain,
    /// Reading a chunk-size line; the size so far, and whether an extension
    /// (after `;`) or the CR has started, so digits no longer count.
    ChunkSize { size: usize, done: bool },
    /// Inside a chunk, with this many bytes left.
    ChunkData(usize),
    /// Up to the LF after a chunk's data.
    ChunkEnd,
}

impl Parser {
    pub fn new(ready_on: ReadyOn) -> Parser {
        Parser {
            framing: Framing::Head,
            partial: Vec::new(),
            ready_on,
        }
    }

    /// Decodes the bytes of one read, calling `on_line` for each complete
    /// body line (and with [`Line::Ready`] once the head is in, for
    /// [`ReadyOn::Head`]).
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        on_line: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while !bytes.is_empty() {
            match self.framing {
                Framing::Head => {
                    let before = self.partial.len();
                    self.partial.extend_from_slice(bytes);
                    let Some(end) = find(&self.partial, b"\r\n\r\n") else {
                        if self.partial.len() > 16 * 1024 {
                            bail!("a response head longer than 16 KiB");
                        }
                        return Ok(());
                    };
                    let consumed = end + 4 - before;
                    let chunked = check_head(&self.partial[..end])?;
                    self.partial.clear();
                    self.framing = if chunked {
                        Framing::ChunkSize {
                            size: 0,
                            done: false,
                        }
                    } else {
                        Framing::Plain
                    };
                    if self.ready_on == ReadyOn::Head {
                        on_line(Line::Ready)?;
                    }
                    bytes = &bytes[consumed..];
                }
                Framing::Plain => {
                    self.lines(bytes, on_line)?;
                    return Ok(());
                }
                Framing::ChunkSize { mut size, mut done } => {
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        if b == b'\n' {
                            if size == 0 {
                                bail!("the server ended the stream");
                            }
                            self.framing = Framing::ChunkData(size);
                            break;
                        }
                        if done {
                            continue;
                        }
                        let digit = match b {
                            b'0'..=b'9' => b - b'0',
                            b'a'..=b'f' => b - b'a' + 10,
                            b'A'..=b'F' => b - b'A' + 10,
                            b';' | b'\r' | b' ' | b'\t' => {
                                done = true;
                                continue;
                            }
                            _ => bail!("a bad chunk size"),
                        };
                        size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(usize::from(digit)))
                            .context("a chunk size too large")?;
                    }
                    if let Framing::ChunkSize { .. } = self.framing {
                        self.framing = Framing::ChunkSize { size, done };
                    }
                    bytes = &bytes[used..];
                }
                Framing::ChunkData(left) => {
                    let take = left.min(bytes.len());
                    self.lines(&bytes[..take], on_line)?;
                    self.framing = match left - take {
                        0 => Framing::ChunkEnd,
                        left => Framing::ChunkData(left),
                    };
                    bytes = &bytes[take..];
                }
                Framing::ChunkEnd => match bytes.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        self.framing = Framing::ChunkSize {
                            size: 0,
                            done: false,
                        };
                        bytes = &bytes[at + 1..];
                    }
                    None => return Ok(()),
                },
            }
        }
        Ok(())
    }

    /// Splits body bytes into lines, after the start kept from before.
    fn lines(
        &mut self,
        mut bytes: &[u8],
        on_line: &mut impl FnMut(Line) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            let line = if self.partial.is_empty() {
                classify(&bytes[..nl], self.ready_on)?
            } else {
                self.partial.extend_from_slice(&bytes[..nl]);
                let line = classify(&self.partial, self.ready_on)?;
                self.partial.clear();
                line
            };
            on_line(line)?;
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }
}

/// Checks the status; returns whether the body is chunked.
fn check_head(head: &[u8]) -> anyhow::Result<bool> {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200 ") {
        bail!(
            "the server answered {:?}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(head
        .lines()
        .any(|h| h.starts_with("transfer-encoding:") && h.contains("chunked")))
}

fn classify(line: &[u8], ready_on: ReadyOn) -> anyhow::Result<Line> {
    if let Some(data) = line.strip_prefix(b"data:") {
        let id = int_after(data, b"\"id\":").context("an event's data has no \"id\"")?;
        let sent_at_us =
            int_after(data, b"\"sent_at_us\":").context("an event's data has no \"sent_at_us\"")?;
        Ok(Line::Row { id, sent_at_us })
    } else if ready_on == ReadyOn::Retry && line.starts_with(b"retry:") {
        Ok(Line::Ready)
    } else {
        Ok(Line::Other)
    }
}

/// The integer right after `key` (spaces allowed before it).
fn int_after(text: &[u8], key: &[u8]) -> Option<i64> {
    let at = find(text, key)? + key.len();
    let rest = &text[at..];
    let rest = &rest[rest.iter().position(|&b| b != b' ')?..];
    let (negative, digits) = match rest.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, rest),
    };
    let mut value: i64 = 0;
    let mut any = false;
    for &b in digits.iter().take_while(|b| b.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(if negative { -value } else { value })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(parser: &mut Parser, input: &[&[u8]]) -> (Vec<(i64, i64)>, usize) {
        let mut rows = Vec::new();
        let mut ready = 0;
        for bytes in input {
            parser
                .push(bytes, &mut |line| {
                    match line {
                        Line::Row { id, sent_at_us } => rows.push((id, sent_at_us)),
                        Line::Ready => ready += 1,
                        Line::Other => {}
                    }
                    Ok(())
                })
                .unwrap();
        }
        (rows, ready)
    }

    #[test]
    fn chunked_rows_split_anywhere() {
        let mut body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for chunk in [
            &b"retry: 3000\n"[..],
            b"id: 7\ndata: {\"id\":7,\"sent_at_us\":1234}\n\n",
            b": keep-alive\n\ndata: {\"id\": 8,",
            b"\"sent_at_us\":-5}\n\nid",
        ] {
            body.extend(format!("{:x}\r\n", chunk.len()).bytes());
            body.extend(chunk);
            body.extend(b"\r\n");
        }
        for cut in 1..body.len() {
            let mut parser = Parser::new(ReadyOn::Retry);
            let (got, ready) = rows(&mut parser, &[&body[..cut], &body[cut..]]);
            assert_eq!(got, vec![(7, 1234), (8, -5)], "cut at {cut}");
            assert_eq!(ready, 1);
        }
    }

    #[test]
    fn plain_body_is_ready_at_the_head() {
        let body = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n: hi\n\n\
            id: 1:0\ndata: {\"id\":1,\"sent_at_us\":9,\"body\":\"row\"}\n\n";
        let mut parser = Parser::new(ReadyOn::Head);
        assert_eq!(rows(&mut parser, &[body]), (vec![(1, 9)], 1));
    }

    #[test]
    fn a_late_row_is_out_of_order_and_a_repeat_is_a_duplicate() {
        let slot = Slot::default();
        slot.last_id.store(10, Ordering::Relaxed);
        let mut gaps = Gaps::default();
        for id in [11, 14, 12, 15, 15, 13, 9] {
            gaps.see(&slot, id);
        }
        assert_eq!(slot.received.load(Ordering::Relaxed), 7);
        assert_eq!(slot.missing.load(Ordering::Relaxed), 0);
        assert_eq!(slot.out_of_order.load(Ordering::Relaxed), 2);
        assert_eq!(slot.duplicated.load(Ordering::Relaxed), 2);
        assert_eq!(slot.last_id.load(Ordering::Relaxed), 15);
    }
}
