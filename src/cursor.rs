//! Cursors: the position of a client in a feed, and how it travels as text.
//!
//! A single-feed stream's event id is the row id (`1042`). A multi-feed
//! stream's id lists every feed's position (`messages:1042,orders:77`) so one
//! `Last-Event-ID` resumes them all. `start` stands for "before every row" (a
//! feed whose table was empty). This module only parses and prints, and
//! checks that an id fits the feed's [`IdRange`]; it never decides what a
//! position means for the database.
//!
//! A changes feed's id is opaque to clients (`1733100000123.5f3a9c1e.42`):
//! the window start of the poll that sent the event (milliseconds since
//! 1970), the run of the server that numbered it, and its number in that
//! run. Inside the server it is one [`Cursor`] that sorts by that number
//! ([`Style::Changes`]); `0` asks for the current state of every row.

use crate::echo::Echo;
use std::collections::HashSet;
use std::fmt;

/// A position in a feed: every row with a greater id comes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cursor {
    /// Before every row, whatever its id (even a negative one).
    Start,
    /// Just after the row with this id. `i128` holds both signed and
    /// `BIGINT UNSIGNED` ids.
    At(i128),
}

/// The ids a feed's cursor can take, by the type of its cursor column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdRange {
    /// A signed 64-bit integer column.
    Signed,
    /// A MySQL `BIGINT UNSIGNED` column.
    Unsigned,
    /// Postgres exact mode: `(txid, id)` packed into one integer, never
    /// negative, as high as `i128` goes.
    Packed,
}

impl IdRange {
    /// The lowest and highest id.
    pub fn bounds(self) -> (i128, i128) {
        match self {
            IdRange::Signed => (i64::MIN.into(), i64::MAX.into()),
            IdRange::Unsigned => (0, u64::MAX.into()),
            IdRange::Packed => (0, i128::MAX),
        }
    }

    /// `cursor`, when a row of `feed` (named in a multi-feed cursor) can
    /// have that id. An id out of range would reach the database clamped
    /// and silently mean something else.
    pub fn check(self, cursor: Cursor, feed: Option<&str>) -> Result<Cursor, ParseError> {
        let (min, max) = self.bounds();
        match cursor {
            Cursor::At(id) if id < min || id > max => Err(ParseError::OutOfRange {
                id,
                feed: feed.map(str::to_owned),
                min,
                max,
            }),
            _ => Ok(cursor),
        }
    }
}

/// Why a cursor given by a client could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{} is not a row id: expected an integer or `start`", Echo(.0))]
    NotAnId(String),
    #[error("{} is not a cursor of this stream: expected `feed:id` pairs separated by commas", Echo(.0))]
    NotComposite(String),
    #[error("cursor names feed {} more than once", Echo(.0))]
    RepeatedFeed(String),
    #[error("the cursor has {parts} `feed:id` pairs, more than there are feeds: expected at most one pair per feed")]
    TooManyParts { parts: usize },
    #[error("{} is not a cursor of this changes feed: expected an event id it sent, or `0` for every row's current state", Echo(.0))]
    NotAChange(String),
    #[error("{} is not a Redis stream id: expected `<milliseconds>-<sequence>` (e.g. `1733100000000-5`), `<milliseconds>` or `start`", Echo(.0))]
    NotAStreamId(String),
    #[error("`{id}` is outside the ids of {}: expected an integer from {min} to {max} or `start`", whose(.feed))]
    OutOfRange {
        id: i128,
        /// The feed a multi-feed cursor named, `None` for a single feed.
        feed: Option<String>,
        min: i128,
        max: i128,
    },
}

/// The feed an out-of-range id was meant for, as the message names it.
fn whose(feed: &Option<String>) -> String {
    match feed {
        Some(feed) => format!("feed `{feed}`"),
        None => "this feed".to_owned(),
    }
}

impl Cursor {
    /// Parses a single-feed cursor: an integer or `start`.
    pub fn parse(text: &str) -> Result<Cursor, ParseError> {
        let text = text.trim();
        if text == "start" {
            return Ok(Cursor::Start);
        }
        // `i128::from_str` accepts a leading `+`; a row id never has one.
        if text.starts_with('+') {
            return Err(ParseError::NotAnId(text.to_owned()));
        }
        text.parse()
            .map(Cursor::At)
            .map_err(|_| ParseError::NotAnId(text.to_owned()))
    }

    /// The id of the first row that can follow this cursor.
    pub fn next_id(self) -> Option<i128> {
        match self {
            Cursor::Start => Some(i128::MIN),
            Cursor::At(id) => id.checked_add(1),
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Start => f.write_str("start"),
            Cursor::At(id) => write!(f, "{id}"),
        }
    }
}

/// How a feed's cursors read and print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Row ids of a column of this range.
    Ids(IdRange),
    /// A changes feed's places, numbered in the server run `epoch`.
    Changes { epoch: u32 },
    /// Redis stream entry ids, `<ms>-<seq>`, packed by [`stream_id`].
    RedisStream,
    /// A feed that cannot be resumed (pub/sub): its events carry no id, and
    /// any cursor a client sends means "live from now".
    Live,
}

/// The cursor of Redis stream entry `<ms>-<seq>`: sorts like the pair.
/// Milliseconds above `i64::MAX` (292 million years) do not fit and are
/// taken as that.
pub fn stream_id(ms: u64, seq: u64) -> Cursor {
    let ms = ms.min(i64::MAX as u64);
    Cursor::At((i128::from(ms) << 64) | i128::from(seq))
}

/// The `(ms, seq)` of a Redis stream cursor; `Start` is `0-0`, before
/// every entry.
pub fn unstream_id(cursor: Cursor) -> (u64, u64) {
    match cursor {
        Cursor::Start => (0, 0),
        Cursor::At(packed) if packed < 0 => (0, 0),
        Cursor::At(packed) => ((packed >> 64) as u64, packed as u64),
    }
}

/// Reads a Redis stream entry id, `<ms>-<seq>` (or `<ms>`, meaning
/// `<ms>-0`), as Redis prints it.
pub fn parse_stream_id(text: &str) -> Option<Cursor> {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let (ms, seq) = text.split_once('-').unwrap_or((text, "0"));
    if !digits(ms) || !digits(seq) {
        return None;
    }
    let ms: u64 = ms.parse().ok().filter(|ms| *ms <= i64::MAX as u64)?;
    Some(stream_id(ms, seq.parse().ok()?))
}

/// The cursor of a changes feed's event number `seq`, sent by a poll whose
/// window started at `since_ms`. Sorts by `seq`; `seq` 0 is before every
/// event of this run, a place only a read of the table can resume from.
pub fn change(seq: u64, since_ms: i64) -> Cursor {
    Cursor::At((i128::from(seq) << 64) | i128::from(since_ms.max(0) as u64))
}

/// The `(seq, since_ms)` of a changes feed's cursor.
pub fn unchange(cursor: Cursor) -> (u64, i64) {
    match cursor {
        Cursor::Start => (0, 0),
        Cursor::At(packed) => (
            (packed >> 64) as u64,
            (packed as u64).min(i64::MAX as u64) as i64,
        ),
    }
}

impl Style {
    /// Reads a client's cursor (of feed `feed`, in a multi-feed cursor).
    pub fn parse(self, text: &str, feed: Option<&str>) -> Result<Cursor, ParseError> {
        match self {
            Style::Ids(range) => range.check(Cursor::parse(text)?, feed),
            Style::Changes { epoch } => {
                let text = text.trim();
                if text == "0" || text == "start" {
                    return Ok(change(0, 0));
                }
                let bad = || ParseError::NotAChange(text.to_owned());
                let mut parts = text.split('.');
                let (Some(since), Some(run), Some(seq), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad());
                };
                let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
                if !digits(since) || !digits(seq) || run.is_empty() {
                    return Err(bad());
                }
                let since: i64 = since.parse().map_err(|_| bad())?;
                let seq: u64 = seq.parse().map_err(|_| bad())?;
                let run = u32::from_str_radix(run, 16).map_err(|_| bad())?;
                // Another run's numbers mean nothing here: only the time
                // is kept, and the table is read from it.
                Ok(change(if run == epoch { seq } else { 0 }, since))
            }
            Style::RedisStream => {
                let text = text.trim();
                if text == "start" {
                    return Ok(Cursor::Start);
                }
                parse_stream_id(text).ok_or_else(|| ParseError::NotAStreamId(text.to_owned()))
            }
            // Nothing to resume from: the caller starts the client live.
            Style::Live => Ok(Cursor::Start),
        }
    }

    /// Whether a client can resume from this feed's cursors: every style
    /// but [`Style::Live`].
    pub fn resumable(self) -> bool {
        self != Style::Live
    }

    /// Prints a cursor as clients get it.
    pub fn format(self, cursor: Cursor) -> String {
        match self {
            Style::Ids(_) => cursor.to_string(),
            Style::Changes { epoch } => {
                let (seq, since) = unchange(cursor);
                format!("{since}.{epoch:08x}.{seq}")
            }
            Style::RedisStream => {
                let (ms, seq) = unstream_id(cursor);
                format!("{ms}-{seq}")
            }
            Style::Live => cursor.to_string(),
        }
    }
}

/// Prints a multi-feed cursor: `a:1,b:start`.
pub fn format_composite<'a>(positions: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut out = String::new();
    for (feed, cursor) in positions {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(feed);
        out.push(':');
        out.push_str(&cursor);
    }
    out
}

/// Splits a multi-feed cursor into `(feed, cursor text)` pairs, in the
/// order given, for each feed's [`Style`] to read. A cursor names each feed
/// at most once, so one with more than `most` pairs (the number of feeds)
/// is refused.
pub fn parse_composite(text: &str, most: usize) -> Result<Vec<(String, String)>, ParseError> {
    let text = text.trim();
    // Counted before any work per pair: a client may send thousands.
    let parts = text.bytes().filter(|b| *b == b',').count() + 1;
    if parts > most {
        return Err(ParseError::TooManyParts { parts });
    }
    let mut seen = HashSet::with_capacity(parts);
    let mut pairs = Vec::with_capacity(parts);
    for part in text.split(',') {
        let (feed, cursor) = part
            .split_once(':')
            .filter(|(feed, _)| !feed.is_empty())
            .ok_or_else(|| ParseError::NotComposite(text.to_owned()))?;
        if !seen.insert(feed) {
            return Err(ParseError::RepeatedFeed(feed.to_owned()));
        }
        pairs.push((feed.to_owned(), cursor.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests;
