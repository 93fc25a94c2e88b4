//! Cursors: the position of a client in a feed, and how it travels as text.
//!
//! A single-feed stream's event id is the row id (`1042`). A multi-feed
//! stream's id lists every feed's position (`messages:1042,orders:77`) so one
//! `Last-Event-ID` resumes them all. `start` stands for "before every row" (a
//! feed whose table was empty). This module only parses and prints, and
//! checks that an id fits the feed's [`IdRange`]; it never decides what a
//! position means for the database.

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

/// Prints a multi-feed cursor: `a:1,b:start`.
pub fn format_composite<'a>(positions: impl IntoIterator<Item = (&'a str, Cursor)>) -> String {
    let mut out = String::new();
    for (feed, cursor) in positions {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(feed);
        out.push(':');
        out.push_str(&cursor.to_string());
    }
    out
}

/// Parses a multi-feed cursor into `(feed, cursor)` pairs, in the order
/// given. A cursor names each feed at most once, so one with more than
/// `most` pairs (the number of feeds) is refused.
pub fn parse_composite(text: &str, most: usize) -> Result<Vec<(String, Cursor)>, ParseError> {
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
        pairs.push((feed.to_owned(), Cursor::parse(cursor)?));
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
        let text = format_composite([("messages", Cursor::At(1042)), ("orders", Cursor::Start)]);
        assert_eq!(text, "messages:1042,orders:start");
        assert_eq!(
            parse_composite(&text, 2).unwrap(),
            vec![
                ("messages".to_owned(), Cursor::At(1042)),
                ("orders".to_owned(), Cursor::Start)
            ]
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
        assert_eq!(
            parse_composite("a:x", 2),
            Err(ParseError::NotAnId("x".into()))
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
