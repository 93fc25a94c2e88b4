//! The SQL of a feed, built once at start-up from checked identifiers.
//!
//! Every database reads a feed with the same shape of statement:
//!
//! ```sql
//! SELECT <id as text>, CASE WHEN <condition> THEN <row as JSON> END, <filters as text>
//! FROM <table, view or (select)> AS t
//! WHERE t.id >= ? AND t.id <= ? ORDER BY t.id LIMIT ?
//! ```
//!
//! Rows that fail the feed's condition still come back (with no JSON) so the
//! poller sees every raw id. Only the three bounds are parameters; nothing a
//! client sends is ever part of this text.

use super::{Bound, Error, Table};
use crate::config::{FeedConfig, ReadFrom};
use crate::cursor::Cursor;

/// The databases' differences in SQL spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// Quotes an identifier so that any name is taken literally.
    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{}`", ident.replace('`', "``")),
            Dialect::Postgres | Dialect::Sqlite => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    /// A string literal of `text` that reads the same whatever the
    /// session's settings: MySQL's `NO_BACKSLASH_ESCAPES` and `ANSI_QUOTES`,
    /// Postgres' `standard_conforming_strings`.
    pub fn literal(self, text: &str) -> String {
        match self {
            // Hex digits need no escaping at all; the introducer makes the
            // bytes text rather than a binary string.
            Dialect::MySql => {
                let hex: String = text.bytes().map(|b| format!("{b:02X}")).collect();
                format!("_utf8mb4 X'{hex}'")
            }
            // An E'' string takes backslashes as escapes in every mode.
            Dialect::Postgres => format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''")),
            // SQLite has no escapes in string literals.
            Dialect::Sqlite => format!("'{}'", text.replace('\'', "''")),
        }
    }

    /// `expr` cast to text.
    pub(super) fn as_text(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("({expr})::text"),
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
        }
    }

    pub(super) fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }

    /// The row of relation `t` as a JSON object of `columns`, or of every
    /// column. On Postgres the row is named `t.*` and never a bare `t`: a
    /// bare name is looked up as a column first (of this relation or any
    /// outer one), a qualified `t.*` only as a relation, so no column name
    /// can take its place.
    fn json(self, columns: Option<&[String]>, all: &[String]) -> String {
        if let (Dialect::Postgres, None) = (self, columns) {
            return "row_to_json(t.*)::text".to_owned();
        }
        let columns = columns.unwrap_or(all);
        match self {
            // json_build_object takes at most 100 arguments; a sub-select has no limit.
            Dialect::Postgres => format!(
                "(SELECT row_to_json(r.*) FROM (SELECT {}) AS r)::text",
                columns
                    .iter()
                    .map(|c| format!("t.{}", self.quote(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::MySql | Dialect::Sqlite => self.json_object("t", columns),
        }
    }

    /// The JSON object text of `columns` of `row` (a relation's alias, or a
    /// trigger's `OLD`), each under its own name (MySQL and SQLite, where
    /// a row has no JSON form of its own).
    pub(super) fn json_object(self, row: &str, columns: &[String]) -> String {
        let pairs = columns
            .iter()
            .map(|c| format!("{}, {row}.{}", self.literal(c), self.quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        if self == Dialect::MySql {
            format!("CAST(JSON_OBJECT({pairs}) AS CHAR)")
        } else {
            format!("json_object({pairs})")
        }
    }
}

/// A feed's checked columns and prepared SQL.
#[derive(Clone, Debug)]
pub struct FeedQuery {
    /// Where rows are read from, for messages.
    pub source: String,
    /// The cursor column.
    pub id_column: String,
    /// Columns sent to clients.
    pub columns: Vec<String>,
    /// Columns clients may filter on, in the order `Row::filters` holds them.
    pub filter_columns: Vec<String>,
    /// Whether ids are bound as unsigned integers.
    pub unsigned: bool,
    /// Exact mode (Postgres): rows are read in transaction order through
    /// this `xid8` column, and cursors pack `(txid, id)` into one integer.
    pub txid_column: Option<String>,
    /// Reads rows in an id range (`$1 <= id <= $2`, `LIMIT $3`).
    pub read_sql: String,
    /// Reads the greatest id of the base table (whatever `from` or
    /// `select` rows are read through).
    pub max_sql: String,
    /// Reads the feed's watermark as text, when it has one.
    pub watermark_sql: Option<String>,
    /// The base table, quoted (and qualified when a schema is configured).
    pub table_sql: String,
    /// The base table as the catalog names it (`schema.table` on Postgres
    /// and MySQL): the NOTIFY doorbell's payload.
    pub table: String,
    /// What a read selects: the id as text, the row's JSON (`NULL` when
    /// the feed's condition excludes it), the filter columns as text.
    pub select: String,
    /// The relation rows are read from, aliased `t`.
    pub from: String,
}

/// Exact-mode cursors pack `(txid, id)` as `txid * 2^64 + (id + 2^63)`,
/// which sorts like the pair.
const TXID_SHIFT: &str = "18446744073709551616";
const ID_OFFSET: &str = "9223372036854775808";

/// The exact-mode cursor of a row.
pub fn pack(txid: u64, id: i64) -> i128 {
    (i128::from(txid) << 64) | i128::from((id as u64) ^ (1 << 63))
}

/// The `(txid, id)` of an exact-mode cursor.
pub fn unpack(cursor: i128) -> (u64, i64) {
    let txid = (cursor >> 64) as u64;
    let id = ((cursor as u64) ^ (1 << 63)) as i64;
    (txid, id)
}

/// `name`, quoted, in the feed's schema when it names one.
pub(super) fn qualified(dialect: Dialect, feed: &FeedConfig, name: &str) -> String {
    match &feed.schema {
        Some(schema) => format!("{}.{}", dialect.quote(schema), dialect.quote(name)),
        None => dialect.quote(name),
    }
}

/// The relation rows are read from, aliased `t`.
fn relation(dialect: Dialect, feed: &FeedConfig) -> String {
    let qualified = |name: &str| qualified(dialect, feed, name);
    match &feed.read_from {
        None => format!("{} AS t", qualified(&feed.table)),
        Some(ReadFrom::Relation(name)) => format!("{} AS t", qualified(name)),
        Some(ReadFrom::Select(select)) => format!("({select}) AS t"),
    }
}

/// A statement that yields the columns of a feed's row source and no rows.
pub fn probe_sql(dialect: Dialect, feed: &FeedConfig) -> String {
    format!("SELECT * FROM {} WHERE 1 = 0", relation(dialect, feed))
}

impl FeedQuery {
    /// Checks the feed's columns against what the row source yields and
    /// writes its SQL.
    pub fn new(
        dialect: Dialect,
        feed: &FeedConfig,
        table: &Table,
        read_columns: &[String],
    ) -> Result<FeedQuery, Error> {
        let source = match &feed.read_from {
            None => table.display.clone(),
            Some(ReadFrom::Relation(name)) => name.clone(),
            Some(ReadFrom::Select(_)) => "the configured select".to_owned(),
        };
        let check = |key: &'static str, column: &String| {
            if read_columns.contains(column) {
                Ok(())
            } else {
                Err(Error::UnknownColumn {
                    feed: feed.name.clone(),
                    key,
                    column: column.clone(),
                    table: source.clone(),
                    available: read_columns.to_vec(),
                })
            }
        };
        check("id_column", &table.id_column)?;
        for column in feed.columns.iter().flatten() {
            check("columns", column)?;
        }
        for column in &feed.filter_columns {
            check("filter_columns", column)?;
        }

        let d = dialect;
        let id = format!("t.{}", d.quote(&table.id_column));
        let all_columns: Vec<String> = read_columns
            .iter()
            .filter(|c| Some(*c) != table.txid_column.as_ref())
            .cloned()
            .collect();
        let columns = match (&feed.columns, &table.txid_column) {
            (Some(columns), _) => Some(columns.as_slice()),
            // Every column but the transaction id, which is rowcast's own.
            (None, Some(_)) => Some(all_columns.as_slice()),
            (None, None) => None,
        };
        let mut payload = d.json(columns, read_columns);
        if let Some(condition) = &feed.condition {
            payload = format!("CASE WHEN ({condition}) THEN {payload} END");
        }
        let filters = feed
            .filter_columns
            .iter()
            .map(|c| d.as_text(&format!("t.{}", d.quote(c))));
        let from = relation(d, feed);
        let filters: Vec<String> = filters.collect();
        let plain_select: Vec<String> = [d.as_text(&id), payload.clone()]
            .into_iter()
            .chain(filters.iter().cloned())
            .collect();
        let filters = filters.into_iter();
        // The greatest id is read from the base table, where ids are
        // allocated: gap judging needs no more, and a `select` joining
        // other tables would scan them all on every new gap.
        let base = format!("{} AS t", qualified(d, feed, &feed.table));
        let p = |n| d.placeholder(n);
        let (read_sql, max_sql) = match &table.txid_column {
            None => {
                let select: Vec<String> = [d.as_text(&id), payload]
                    .into_iter()
                    .chain(filters)
                    .collect();
                (
                    format!(
                        "SELECT {} FROM {from} WHERE {id} >= {} AND {id} <= {} ORDER BY {id} LIMIT {}",
                        select.join(", "),
                        p(1),
                        p(2),
                        p(3),
                    ),
                    format!("SELECT {} FROM {base}", d.as_text(&format!("MAX({id})"))),
                )
            }
            Some(txid) => {
                // Only transactions older than every open one are final.
                let txid = format!("t.{}", d.quote(txid));
                let packed = format!(
                    "(({txid})::text::numeric * {TXID_SHIFT} + ({id} + {ID_OFFSET}))::text"
                );
                let settled = format!("{txid} < pg_snapshot_xmin(pg_current_snapshot())");
                let select: Vec<String> = [packed.clone(), payload]
                    .into_iter()
                    .chain(filters)
                    .collect();
                (
                    format!(
                        "SELECT {} FROM {from} WHERE ({txid}, {id}) > ({}::xid8, {}) AND ({txid}, {id}) <= ({}::xid8, {}) \
                         AND {settled} ORDER BY {txid}, {id} LIMIT {}",
                        select.join(", "),
                        p(1),
                        p(2),
                        p(3),
                        p(4),
                        p(5),
                    ),
                    format!(
                        "SELECT (SELECT {packed} FROM {base} WHERE {settled} ORDER BY {txid} DESC, {id} DESC LIMIT 1)"
                    ),
                )
            }
        };
        let columns = columns.map_or_else(|| read_columns.to_vec(), <[String]>::to_vec);
        // The row's time is read out of the JSON that clients get.
        if let Some(column) = feed
            .timestamp_column
            .as_ref()
            .filter(|c| !columns.contains(c))
        {
            return Err(Error::NotSent {
                feed: feed.name.clone(),
                key: "timestamp_column",
                column: column.clone(),
                sent: columns,
            });
        }
        Ok(FeedQuery {
            source,
            id_column: table.id_column.clone(),
            columns,
            filter_columns: feed.filter_columns.clone(),
            unsigned: table.unsigned,
            txid_column: table.txid_column.clone(),
            read_sql,
            max_sql,
            watermark_sql: feed
                .watermark
                .as_ref()
                .map(|sql| format!("SELECT {}", d.as_text(&format!("({sql})")))),
            table_sql: qualified(d, feed, &feed.table),
            table: table.display.clone(),
            select: plain_select.join(", "),
            from,
        })
    }

    /// The shape of a feed whose events are not read with SQL (a Redis or
    /// NATS topic): `source` says what it reads, for people, and its filter
    /// fields are the feed's. It has no statements; nothing runs them.
    pub fn without_sql(feed: &FeedConfig, source: String) -> FeedQuery {
        FeedQuery {
            source,
            id_column: String::new(),
            columns: Vec::new(),
            filter_columns: feed.filter_columns.clone(),
            unsigned: false,
            txid_column: None,
            read_sql: String::new(),
            max_sql: String::new(),
            watermark_sql: None,
            table_sql: String::new(),
            table: feed.table.clone(),
            select: String::new(),
            from: String::new(),
        }
    }

    /// Bounds that match no row, to run the read once at start-up.
    pub fn nothing(&self) -> (Bound, Bound) {
        match (&self.txid_column, self.unsigned) {
            (Some(_), _) => (Bound::Txid(1, 0), Bound::Txid(0, 0)),
            (None, true) => (Bound::Unsigned(1), Bound::Unsigned(0)),
            (None, false) => (Bound::Signed(1), Bound::Signed(0)),
        }
    }

    /// The bounds of `after < id <= upto` in the column's type, or `None`
    /// when no id can fall in that range.
    pub fn bounds(&self, after: Cursor, upto: Cursor) -> Option<(Bound, Bound)> {
        let Cursor::At(high) = upto else { return None };
        if self.txid_column.is_some() {
            // The exact read compares `(txid, id) > low`: `low` is the cursor itself.
            let low = match after {
                Cursor::Start => 0,
                Cursor::At(after) => after.max(0),
            };
            let high = high.min(pack(i64::MAX as u64, i64::MAX));
            if low >= high {
                return None;
            }
            let ((low_txid, low_id), (high_txid, high_id)) = (unpack(low), unpack(high));
            return Some((
                Bound::Txid(low_txid, low_id),
                Bound::Txid(high_txid, high_id),
            ));
        }
        let low = after.next_id()?;
        let (min, max) = if self.unsigned {
            (0, i128::from(u64::MAX))
        } else {
            (i128::from(i64::MIN), i128::from(i64::MAX))
        };
        let (low, high) = (low.max(min), high.min(max));
        if low > high {
            return None;
        }
        // Both are within the column type's range, checked just above.
        Some(if self.unsigned {
            (Bound::Unsigned(low as u64), Bound::Unsigned(high as u64))
        } else {
            (Bound::Signed(low as i64), Bound::Signed(high as i64))
        })
    }
}

#[cfg(test)]
mod tests;
