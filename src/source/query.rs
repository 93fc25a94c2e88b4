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

    /// A string literal (used only for names from configuration).
    pub fn literal(self, text: &str) -> String {
        let text = text.replace('\'', "''");
        match self {
            // MySQL treats backslash as an escape inside literals.
            Dialect::MySql => format!("'{}'", text.replace('\\', "\\\\")),
            Dialect::Postgres | Dialect::Sqlite => format!("'{text}'"),
        }
    }

    fn as_text(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("({expr})::text"),
            Dialect::MySql => format!("CAST({expr} AS CHAR)"),
            Dialect::Sqlite => format!("CAST({expr} AS TEXT)"),
        }
    }

    fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }

    /// The row as a JSON object of `columns`, or of every column.
    fn json(self, columns: Option<&[String]>, all: &[String]) -> String {
        if let (Dialect::Postgres, None) = (self, columns) {
            return "row_to_json(t)::text".to_owned();
        }
        let columns = columns.unwrap_or(all);
        let col = |c: &String| format!("t.{}", self.quote(c));
        match self {
            // json_build_object takes at most 100 arguments; a sub-select has no limit.
            Dialect::Postgres => format!(
                "(SELECT row_to_json(r) FROM (SELECT {}) AS r)::text",
                columns.iter().map(col).collect::<Vec<_>>().join(", ")
            ),
            Dialect::MySql | Dialect::Sqlite => {
                let pairs = columns
                    .iter()
                    .map(|c| format!("{}, {}", self.literal(c), col(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                if self == Dialect::MySql {
                    format!("CAST(JSON_OBJECT({pairs}) AS CHAR)")
                } else {
                    format!("json_object({pairs})")
                }
            }
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
    /// Reads rows in an id range (`$1 <= id <= $2`, `LIMIT $3`).
    pub read_sql: String,
    /// Reads the greatest id.
    pub max_sql: String,
    /// Reads the feed's watermark as text, when it has one.
    pub watermark_sql: Option<String>,
    /// The base table, quoted (and qualified when a schema is configured).
    pub table_sql: String,
}

/// `name`, quoted, in the feed's schema when it names one.
fn qualified(dialect: Dialect, feed: &FeedConfig, name: &str) -> String {
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
        let mut payload = d.json(feed.columns.as_deref(), read_columns);
        if let Some(condition) = &feed.condition {
            payload = format!("CASE WHEN ({condition}) THEN {payload} END");
        }
        let mut select = vec![d.as_text(&id), payload];
        select.extend(
            feed.filter_columns
                .iter()
                .map(|c| d.as_text(&format!("t.{}", d.quote(c)))),
        );
        let from = relation(d, feed);
        let read_sql = format!(
            "SELECT {} FROM {from} WHERE {id} >= {} AND {id} <= {} ORDER BY {id} LIMIT {}",
            select.join(", "),
            d.placeholder(1),
            d.placeholder(2),
            d.placeholder(3),
        );
        let max_sql = format!("SELECT {} FROM {from}", d.as_text(&format!("MAX({id})")));
        Ok(FeedQuery {
            source,
            id_column: table.id_column.clone(),
            columns: feed
                .columns
                .clone()
                .unwrap_or_else(|| read_columns.to_vec()),
            filter_columns: feed.filter_columns.clone(),
            unsigned: table.unsigned,
            read_sql,
            max_sql,
            watermark_sql: feed
                .watermark
                .as_ref()
                .map(|sql| format!("SELECT {}", d.as_text(&format!("({sql})")))),
            table_sql: qualified(d, feed, &feed.table),
        })
    }

    /// The bounds of `after < id <= upto` in the column's type, or `None`
    /// when no id can fall in that range.
    pub fn bounds(&self, after: Cursor, upto: Cursor) -> Option<(Bound, Bound)> {
        let low = after.next_id()?;
        let Cursor::At(high) = upto else { return None };
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn feed() -> FeedConfig {
        FeedConfig {
            name: "messages".into(),
            schema: None,
            table: "messages".into(),
            id_column: None,
            columns: None,
            filter_columns: vec!["room_id".into()],
            condition: None,
            read_from: None,
            event: None,
            poll_interval: Duration::from_millis(100),
            max_poll_interval: Duration::from_secs(1),
            batch_size: 100,
            ring_size: 100,
            gaps: crate::gap::GapMode::Hold,
            gap_grace: Duration::from_secs(1),
            hold_cap: Duration::from_secs(30),
            late_check_interval: Duration::from_secs(15),
            watermark: None,
        }
    }

    fn table(unsigned: bool) -> Table {
        Table {
            display: "messages".into(),
            columns: vec!["id".into(), "room_id".into(), "body".into()],
            id_column: "id".into(),
            unsigned,
        }
    }

    #[test]
    fn postgres_reads_every_column_as_one_json_value() {
        let t = table(false);
        let q = FeedQuery::new(Dialect::Postgres, &feed(), &t, &t.columns).unwrap();
        assert_eq!(
            q.read_sql,
            "SELECT (t.\"id\")::text, row_to_json(t)::text, (t.\"room_id\")::text \
             FROM \"messages\" AS t WHERE t.\"id\" >= $1 AND t.\"id\" <= $2 \
             ORDER BY t.\"id\" LIMIT $3"
        );
        assert_eq!(
            q.max_sql,
            "SELECT (MAX(t.\"id\"))::text FROM \"messages\" AS t"
        );
    }

    #[test]
    fn mysql_condition_keeps_excluded_ids() {
        let mut f = feed();
        f.columns = Some(vec!["id".into(), "bo`dy".into()]);
        f.condition = Some("type = 'message'".into());
        f.schema = Some("app".into());
        let mut t = table(false);
        t.columns.push("bo`dy".into());
        let q = FeedQuery::new(Dialect::MySql, &f, &t, &t.columns).unwrap();
        assert_eq!(
            q.read_sql,
            "SELECT CAST(t.`id` AS CHAR), CASE WHEN (type = 'message') THEN \
             CAST(JSON_OBJECT('id', t.`id`, 'bo`dy', t.`bo``dy`) AS CHAR) END, \
             CAST(t.`room_id` AS CHAR) FROM `app`.`messages` AS t \
             WHERE t.`id` >= ? AND t.`id` <= ? ORDER BY t.`id` LIMIT ?"
        );
    }

    #[test]
    fn select_is_wrapped_as_a_subquery() {
        let mut f = feed();
        f.read_from = Some(ReadFrom::Select(
            "SELECT m.*, u.name FROM m JOIN u ON u.id = m.uid".into(),
        ));
        let t = table(false);
        let q = FeedQuery::new(Dialect::Sqlite, &f, &t, &t.columns).unwrap();
        assert!(q
            .read_sql
            .contains("FROM (SELECT m.*, u.name FROM m JOIN u ON u.id = m.uid) AS t WHERE"));
        assert!(q
            .read_sql
            .starts_with("SELECT CAST(t.\"id\" AS TEXT), json_object('id', t.\"id\", "));
    }

    #[test]
    fn unknown_columns_are_listed_with_the_existing_ones() {
        let mut f = feed();
        f.filter_columns = vec!["roomid".into()];
        let t = table(false);
        let err = FeedQuery::new(Dialect::Postgres, &f, &t, &t.columns).unwrap_err();
        assert_eq!(
            err.to_string(),
            "feed `messages`: `filter_columns`: column `roomid` not found in `messages`; \
             columns: id, room_id, body"
        );
    }

    #[test]
    fn bounds_fit_the_column_type() {
        let t = table(false);
        let q = FeedQuery::new(Dialect::Sqlite, &feed(), &t, &t.columns).unwrap();
        let top = Cursor::At(i128::MAX);
        assert_eq!(
            q.bounds(Cursor::Start, top),
            Some((Bound::Signed(i64::MIN), Bound::Signed(i64::MAX)))
        );
        assert_eq!(
            q.bounds(Cursor::At(-5), Cursor::At(10)),
            Some((Bound::Signed(-4), Bound::Signed(10)))
        );
        assert_eq!(q.bounds(Cursor::At(10), Cursor::At(10)), None);
        assert_eq!(q.bounds(Cursor::At(i64::MAX.into()), top), None);
        assert_eq!(q.bounds(Cursor::At(1), Cursor::Start), None);

        let t = table(true);
        let q = FeedQuery::new(Dialect::MySql, &feed(), &t, &t.columns).unwrap();
        assert_eq!(
            q.bounds(Cursor::At(-7), top),
            Some((Bound::Unsigned(0), Bound::Unsigned(u64::MAX)))
        );
        assert_eq!(
            q.bounds(Cursor::At(u64::MAX as i128 - 1), top),
            Some((Bound::Unsigned(u64::MAX), Bound::Unsigned(u64::MAX)))
        );
    }
}
