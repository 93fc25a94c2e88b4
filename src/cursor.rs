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
        }
    }

    /// Prints a cursor as clients get it.
    pub fn format(self, cursor: Cursor) -> String {
        match self {
            Style::Ids(_) => cursor.to_string(),
            Style::Changes { epoch } => {
                let (seq, since) = unchange(cursor);
                format!("{since}.{epoch:08x}.{seq}")
            }
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
mod tests {
    use super::*;

    #[test]
    fn parses_ids_of_every_range() {
        assert_eq!(Cursor::parse("1042"), Ok(Cursor::At(1042)));
        assert_eq!(Cursor::parse("-5"), Ok(Cursor::At(-5)));
        assert_eq!(
            Cursor::parse("18446744073709551615"),
            Ok(Cursor::At(u64::MAX as i128))
        );
        assert_eq!(Cursor::parse("start"), Ok(Cursor::Start));
        assert_eq!(Cursor::parse(" 7 "), Ok(Cursor::At(7)));
    }

    #[test]
    fn rejects_what_is_not_an_id() {
        for bad in ["", "abc", "1.5", "+3", "1e3", "0x10", "12 3"] {
            assert_eq!(
                Cursor::parse(bad),
                Err(ParseError::NotAnId(bad.trim().to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn start_sorts_before_every_id() {
        assert!(Cursor::Start < Cursor::At(i128::MIN));
        assert!(Cursor::At(-1) < Cursor::At(0));
        assert_eq!(Cursor::Start.next_id(), Some(i128::MIN));
        assert_eq!(Cursor::At(i128::MAX).next_id(), None);
    }

    #[test]
    fn composite_round_trips() {
        let orders = Style::Changes { epoch: 0xab };
        let text = format_composite([
            ("messages", Cursor::At(1042).to_string()),
            ("orders", orders.format(change(7, 1_733_100_000_123))),
        ]);
        assert_eq!(text, "messages:1042,orders:1733100000123.000000ab.7");
        assert_eq!(
            parse_composite(&text, 2).unwrap(),
            vec![
                ("messages".to_owned(), "1042".to_owned()),
                ("orders".to_owned(), "1733100000123.000000ab.7".to_owned())
            ]
        );
    }

    #[test]
    fn changes_cursors_keep_their_number_only_in_their_own_run() {
        let style = Style::Changes { epoch: 0x5f3a9c1e };
        let cursor = change(42, 1_733_100_000_123);
        assert_eq!(style.format(cursor), "1733100000123.5f3a9c1e.42");
        assert_eq!(style.parse("1733100000123.5f3a9c1e.42", None), Ok(cursor));
        assert_eq!(unchange(cursor), (42, 1_733_100_000_123));
        // Another run's event: only its time counts.
        assert_eq!(
            style.parse("1733100000123.00000001.42", None),
            Ok(change(0, 1_733_100_000_123))
        );
        assert_eq!(style.parse("0", None), Ok(change(0, 0)));
        assert!(change(1, 0) > change(0, i64::MAX));
        for bad in [
            "", "12", "1.2", "a.b.c", "1.zz.3", "-1.ab.3", "1.ab.3.4", "1.ab.+3",
        ] {
            assert_eq!(
                style.parse(bad, None),
                Err(ParseError::NotAChange(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            Style::Ids(IdRange::Signed).parse("1.ab.3", None),
            Err(ParseError::NotAnId("1.ab.3".to_owned()))
        );
    }

    #[test]
    fn composite_rejects_malformed_text() {
        assert_eq!(
            parse_composite("1042", 2),
            Err(ParseError::NotComposite("1042".into()))
        );
        assert_eq!(
            parse_composite(":5", 2),
            Err(ParseError::NotComposite(":5".into()))
        );
        assert_eq!(
            parse_composite("a:1,a:2", 2),
            Err(ParseError::RepeatedFeed("a".into()))
        );
    }

    #[test]
    fn composite_has_at_most_one_pair_per_feed() {
        assert_eq!(
            parse_composite("a:1,b:2,c:3", 2),
            Err(ParseError::TooManyParts { parts: 3 })
        );
        // Refused by the count alone, however malformed the pairs are.
        assert_eq!(
            parse_composite(",,,", 3),
            Err(ParseError::TooManyParts { parts: 4 })
        );
        let many = vec!["a:1"; 40_000].join(",");
        assert_eq!(
            parse_composite(&many, 3),
            Err(ParseError::TooManyParts { parts: 40_000 })
        );
        assert_eq!(
            ParseError::TooManyParts { parts: 40_000 }.to_string(),
            "the cursor has 40000 `feed:id` pairs, more than there are feeds: expected at most one pair per feed"
        );
        assert_eq!(parse_composite("a:1,b:2", 2).map(|p| p.len()), Ok(2));
    }

    #[test]
    fn composite_finds_a_repeat_among_many_feeds() {
        // As many feeds as pairs: every pair is parsed and checked.
        let mut names: Vec<String> = (0..20_000).map(|i| format!("f{i}:{i}")).collect();
        assert_eq!(
            parse_composite(&names.join(","), names.len()).map(|p| p.len()),
            Ok(20_000)
        );
        names.push("f7:1".to_owned());
        assert_eq!(
            parse_composite(&names.join(","), names.len()),
            Err(ParseError::RepeatedFeed("f7".into()))
        );
    }

    #[test]
    fn ids_must_fit_the_cursor_column() {
        let above_u64 = Cursor::At(i128::from(u64::MAX) + 1);
        assert_eq!(
            IdRange::Unsigned.check(above_u64, None),
            Err(ParseError::OutOfRange {
                id: i128::from(u64::MAX) + 1,
                feed: None,
                min: 0,
                max: u64::MAX.into()
            })
        );
        assert_eq!(
            IdRange::Unsigned.check(above_u64, None).unwrap_err().to_string(),
            "`18446744073709551616` is outside the ids of this feed: expected an integer from 0 to 18446744073709551615 or `start`"
        );
        assert_eq!(
            IdRange::Signed
                .check(Cursor::At(i64::MAX as i128 + 1), Some("orders"))
                .unwrap_err()
                .to_string(),
            "`9223372036854775808` is outside the ids of feed `orders`: expected an integer from -9223372036854775808 to 9223372036854775807 or `start`"
        );
        assert!(IdRange::Unsigned.check(Cursor::At(-1), None).is_err());
        for (range, ok) in [
            (IdRange::Signed, [i64::MIN.into(), -1, 0, i64::MAX.into()]),
            (IdRange::Unsigned, [0, 1, i64::MAX.into(), u64::MAX.into()]),
            // Exact mode packs `(txid, id)` far above u64.
            (IdRange::Packed, [0, u64::MAX.into(), 1 << 100, i128::MAX]),
        ] {
            for id in ok {
                assert_eq!(range.check(Cursor::At(id), None), Ok(Cursor::At(id)));
            }
            assert_eq!(range.check(Cursor::Start, None), Ok(Cursor::Start));
        }
        assert!(IdRange::Packed.check(Cursor::At(-1), None).is_err());
    }

    #[test]
    fn long_cursor_text_is_quoted_cut() {
        let long = "9".repeat(60_000) + "x";
        assert_eq!(
            Cursor::parse(&long).unwrap_err().to_string(),
            format!(
                "`{}…` (60001 characters) is not a row id: expected an integer or `start`",
                "9".repeat(64)
            )
        );
    }
}
