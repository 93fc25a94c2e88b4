//! What a leader appends to the bus for each batch it publishes, and the
//! key that orders it there.
//!
//! An entry says which span of the feed it covers (`from`, `head`] and
//! carries the rows of that span that make events. A follower whose head is
//! below `from` missed entries (the bus lost or trimmed them, or it lagged):
//! it reads that span from the database before applying the entry, so a
//! lost entry delays rows and never skips them.

use crate::cursor::{Cursor, IdRange, Style};
use crate::feed::{Batch, ReadSpan};
use crate::source::Row;
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// One batch as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The feed's head before the batch.
    pub from: Cursor,
    /// The feed's head after it.
    pub head: Cursor,
    /// Rows that committed after their gap was passed over (they do not
    /// move the head).
    pub late: bool,
    /// When the leader appended it, in ms since 1970: followers' lag.
    pub at_ms: i64,
    /// The rows of the span that make events, in id order.
    pub rows: Vec<Row>,
    /// The run a changes feed's leader numbers its events in.
    pub epoch: Option<u32>,
    /// When the changes poll behind the entry read the table.
    pub read: Option<ReadSpan>,
}

/// An entry's place on the bus, derived from the feed cursor it ends at:
/// a Redis stream id `major-minor`, which `XADD` refuses unless it is above
/// the stream's last. Late rows of one head take the minors after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub major: u64,
    pub minor: u64,
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bus entry is not rowcast's: {0}")]
#[derive(Clone)]
pub struct Malformed(pub String);

#[derive(Serialize, Deserialize)]
struct Wire {
    from: String,
    head: String,
    #[serde(default)]
    late: bool,
    at_ms: i64,
    rows: Vec<WireRow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epoch: Option<u32>,
    /// `[began, ended]`, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    read: Option<(i64, i64)>,
}

/// `[id, json, filters, unless_filters]`.
#[derive(Serialize, Deserialize)]
struct WireRow(
    String,
    String,
    Vec<Option<String>>,
    #[serde(default)] Option<Vec<Option<String>>>,
);

fn cursor_text(cursor: Cursor) -> String {
    match cursor {
        Cursor::Start => "start".to_owned(),
        Cursor::At(id) => id.to_string(),
    }
}

fn parse_cursor(text: &str) -> Result<Cursor, Malformed> {
    match text {
        "start" => Ok(Cursor::Start),
        _ => text
            .parse()
            .map(Cursor::At)
            .map_err(|_| Malformed(format!("cursor `{text}`"))),
    }
}

/// Milliseconds since 1970, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Entry {
    /// The entry of a batch the feed published after `from`, numbered in
    /// the run `epoch` for a changes feed.
    pub fn of(batch: &Batch, epoch: Option<u32>) -> Entry {
        let rows = batch
            .events
            .iter()
            .filter(|e| !e.marker)
            .map(|e| Row {
                id: e.id,
                json: Some(String::from_utf8_lossy(&e.data).into_owned()),
                filters: e
                    .filters
                    .iter()
                    .map(|f| f.as_deref().map(str::to_owned))
                    .collect(),
                unless_filters: e
                    .unless_filters
                    .as_ref()
                    .map(|u| u.iter().map(|f| f.as_deref().map(str::to_owned)).collect()),
                event: None,
            })
            .collect();
        Entry {
            from: batch.after,
            head: batch.head,
            late: batch.late,
            at_ms: now_ms(),
            rows,
            epoch,
            read: batch.read,
        }
    }

    /// An entry that carries no rows and moves followers to `head`: what a
    /// leader appends when the bus comes back, for the batches it could not
    /// append (followers read them from the database).
    pub fn marker(head: Cursor, epoch: Option<u32>) -> Entry {
        Entry {
            from: head,
            head,
            late: false,
            at_ms: now_ms(),
            rows: Vec::new(),
            epoch,
            read: None,
        }
    }

    /// The entry as bytes on the bus (JSON, so an operator can read it).
    pub fn encode(&self) -> Vec<u8> {
        let wire = Wire {
            from: cursor_text(self.from),
            head: cursor_text(self.head),
            late: self.late,
            at_ms: self.at_ms,
            epoch: self.epoch,
            read: self.read.map(|r| (r.began_us, r.ended_us)),
            rows: self
                .rows
                .iter()
                .map(|r| {
                    WireRow(
                        r.id.to_string(),
                        r.json.clone().unwrap_or_default(),
                        r.filters.clone(),
                        r.unless_filters.clone(),
                    )
                })
                .collect(),
        };
        serde_json::to_vec(&wire).expect("an entry always serializes")
    }

    /// Reads an entry from the bus.
    pub fn decode(bytes: &[u8]) -> Result<Entry, Malformed> {
        let wire: Wire = serde_json::from_slice(bytes).map_err(|err| Malformed(err.to_string()))?;
        let rows = wire
            .rows
            .into_iter()
            .map(|WireRow(id, json, filters, unless_filters)| {
                Ok(Row {
                    id: id
                        .parse()
                        .map_err(|_| Malformed(format!("row id `{id}`")))?,
                    json: Some(json),
                    filters,
                    unless_filters,
                    event: None,
                })
            })
            .collect::<Result<_, Malformed>>()?;
        Ok(Entry {
            from: parse_cursor(&wire.from)?,
            head: parse_cursor(&wire.head)?,
            late: wire.late,
            at_ms: wire.at_ms,
            rows,
            epoch: wire.epoch,
            read: wire
                .read
                .map(|(began_us, ended_us)| ReadSpan { began_us, ended_us }),
        })
    }

    /// The entry's key on the bus: its head, and for late rows their number
    /// at that head (from 1). `None` for an entry that no key can order:
    /// late rows of a feed whose cursors use all 128 bits (they have none)
    /// or a head before every row.
    pub fn key(&self, style: Style, late: u64) -> Option<Key> {
        Key::of(self.head, style, late)
    }
}

impl Key {
    /// The key of an entry ending at `cursor` (see [`Entry::key`]).
    pub fn of(cursor: Cursor, style: Style, late: u64) -> Option<Key> {
        let Cursor::At(id) = cursor else {
            return None;
        };
        let minor = 1 + late;
        match style {
            Style::Ids(IdRange::Signed) => Some(Key {
                major: (i64::try_from(id).ok()? as u64) ^ (1 << 63),
                minor,
            }),
            Style::Ids(IdRange::Unsigned) => Some(Key {
                major: u64::try_from(id).ok()?,
                minor,
            }),
            Style::Ids(IdRange::Packed) | Style::Changes { .. } if late == 0 => {
                let wide = u128::try_from(id).ok()?;
                Some(Key {
                    major: (wide >> 64) as u64,
                    minor: wide as u64,
                })
            }
            _ => None,
        }
    }

    /// The greatest key an entry ending at `cursor` can have: entries above
    /// it hold rows after `cursor`. `None` before every row.
    pub fn last_at(cursor: Cursor, style: Style) -> Option<Key> {
        let key = Key::of(cursor, style, 0)?;
        Some(match style {
            Style::Ids(IdRange::Signed | IdRange::Unsigned) => Key {
                minor: u64::MAX,
                ..key
            },
            _ => key,
        })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

impl std::str::FromStr for Key {
    type Err = Malformed;

    fn from_str(text: &str) -> Result<Key, Malformed> {
        let bad = || Malformed(format!("key `{text}`"));
        let (major, minor) = text.split_once('-').ok_or_else(bad)?;
        Ok(Key {
            major: major.parse().map_err(|_| bad())?,
            minor: minor.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(head: i128) -> Entry {
        Entry {
            from: Cursor::At(head - 2),
            head: Cursor::At(head),
            late: false,
            at_ms: 1,
            rows: vec![Row {
                id: head,
                json: Some(r#"{"id":1,"body":"a\"b\nc"}"#.to_owned()),
                filters: vec![Some("5".to_owned()), None],
                unless_filters: None,
                event: None,
            }],
            epoch: None,
            read: None,
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let written = entry(42);
        assert_eq!(Entry::decode(&written.encode()).unwrap(), written);
        let changes = Entry {
            epoch: Some(0x5f3a_9c1e),
            read: Some(ReadSpan {
                began_us: 1_733_100_000_120_001,
                ended_us: 1_733_100_000_123_456,
            }),
            ..entry(42)
        };
        assert_eq!(Entry::decode(&changes.encode()).unwrap(), changes);
        let err = Entry::decode(b"{\"from\":\"x\"}").unwrap_err();
        assert!(
            err.to_string().starts_with("bus entry is not rowcast's"),
            "{err}"
        );
    }

    #[test]
    fn keys_sort_as_the_cursors_do() {
        let signed = Style::Ids(IdRange::Signed);
        let keys: Vec<Key> = [-5, -1, 0, 1, 7, i64::MAX as i128]
            .iter()
            .map(|&id| entry(id).key(signed, 0).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
        // Late rows of a head come after it and before the next head.
        let late = entry(7).key(signed, 2).unwrap();
        assert!(keys[4] < late && late < entry(8).key(signed, 0).unwrap());
        // Unsigned ids from 0 take ids above Redis' lowest, `0-0`.
        let zero = entry(0).key(Style::Ids(IdRange::Unsigned), 0).unwrap();
        assert_eq!(zero.to_string(), "0-1");
        let packed = Style::Ids(IdRange::Packed);
        let wide = entry((5i128 << 64) | 3).key(packed, 0).unwrap();
        assert_eq!(wide.to_string(), "5-3");
        assert_eq!(entry(9).key(packed, 1), None);
        assert_eq!("5-3".parse::<Key>().unwrap(), wide);
        // Every entry ending at a cursor, late ones too, is at or below its
        // last key, and the next cursor's above it.
        let last = Key::last_at(Cursor::At(7), signed).unwrap();
        assert!(late <= last && last < entry(8).key(signed, 0).unwrap());
        assert_eq!(
            Key::last_at(Cursor::At(5i128 << 64 | 3), packed),
            Some(wide)
        );
        assert_eq!(Key::last_at(Cursor::Start, signed), None);
        assert!("5".parse::<Key>().is_err());
    }
}
