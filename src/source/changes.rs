//! The SQL of a changes feed: rows by the time they were last stamped,
//! keyset-paged on `(updated_column, id)`, the live rows of a snapshot by
//! id, and the feed's tombstones in `rowcast_deletes`.
//!
//! Window bounds come from the database's clock, in milliseconds since
//! 1970, and are compared in the column's own type; a page's last stamp
//! goes back to the database as the text it sent, so no precision is lost
//! between pages. Like [`super::query`], only bounds are parameters.

use super::query::{qualified, Dialect, FeedQuery};
use super::{Error, Source, DELETES_TABLE};
use crate::config::FeedConfig;

/// The `updated_column` that asks for xmin mode (Postgres): rows are found
/// by the transaction that last wrote them, with no column of their own.
pub const XMIN: &str = "xmin";

/// A changes feed's checked columns and SQL.
#[derive(Clone, Debug)]
pub struct ChangesQuery {
    /// The column stamped on every insert and update.
    pub updated_column: String,
    /// The column a soft delete sets, when the feed has one.
    pub deleted_column: Option<String>,
    /// How the database spells SQL.
    dialect: Dialect,
    /// Xmin mode (Postgres): the window starts at a transaction id, not a
    /// time, and every poll scans the table.
    pub xmin: bool,
    /// Whether an index of the base table starts with the updated column
    /// (`None` when the catalog cannot tell, as through a `select`).
    pub indexed: Option<bool>,
    /// The first page of a window: rows stamped at or after `$1` ms.
    window_sql: String,
    /// A later page: rows after the stamp `$1` = `$2` (as the database
    /// wrote it) and id `$3`.
    window_next_sql: String,
    /// Live rows with an id above `$1`, in id order.
    snapshot_sql: String,
    /// The feed's tombstones stamped at or after `$1` ms with an id above
    /// `$2`, when the database has `rowcast_deletes`.
    tombstones_sql: Option<String>,
}

/// A row of a changes read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The row's key.
    pub id: i128,
    /// The row as JSON; `None` when the feed's condition excludes it.
    pub json: Option<String>,
    /// Filter column values as text, in the feed's filter order.
    pub filters: Vec<Option<String>>,
    /// The updated column, as the database writes it (the next page's
    /// bound); the tombstone's own id for a tombstone.
    pub stamp: String,
    /// Whether the row is soft-deleted, or a tombstone.
    pub deleted: bool,
}

/// Which of a table's columns are a changes feed's.
fn pick_columns(
    d: Dialect,
    feed: &FeedConfig,
    query: &FeedQuery,
    read_columns: &[String],
) -> Result<(String, Option<String>), Error> {
    let updated = feed
        .updated_column
        .clone()
        .unwrap_or_else(|| "updated_at".to_owned());
    let xmin = updated == XMIN && d == Dialect::Postgres;
    if xmin && feed.read_from.is_some() {
        return Err(Error::XminNeedsTable {
            feed: feed.name.clone(),
        });
    }
    if !xmin && !read_columns.contains(&updated) {
        return Err(Error::NoUpdatedColumn {
            postgres: d == Dialect::Postgres,
            feed: feed.name.clone(),
            column: updated,
            configured: feed.updated_column.is_some(),
            table: query.source.clone(),
            available: read_columns.to_vec(),
        });
    }
    let deleted = match &feed.deleted_column {
        Some(column) if !read_columns.contains(column) => {
            return Err(Error::UnknownColumn {
                feed: feed.name.clone(),
                key: "deleted_column",
                column: column.clone(),
                table: query.source.clone(),
                available: read_columns.to_vec(),
            })
        }
        Some(column) => Some(column.clone()),
        None => Some("deleted_at".to_owned()).filter(|c| read_columns.contains(c)),
    };
    Ok((updated, deleted))
}

impl Source {
    /// Checks a changes feed's columns and writes its SQL; `deletes` says
    /// whether the database has `rowcast_deletes` to read tombstones from.
    pub async fn plan_changes(
        &self,
        feed: &FeedConfig,
        query: &FeedQuery,
    ) -> Result<(ChangesQuery, bool, Option<String>), Error> {
        let read_columns: Vec<String> = self
            .describe(feed, &format!("SELECT * FROM {} WHERE 1 = 0", query.from))
            .await?;
        let d = self.dialect();
        let (updated, deleted) = pick_columns(d, feed, query, &read_columns)?;
        let xmin = updated == XMIN && d == Dialect::Postgres;
        let stamp_type = match xmin {
            true => String::new(),
            false => self.stamp_type(feed, query, &updated).await?,
        };
        let deletes = self.deletes_table(feed.schema.as_deref()).await?;
        let indexed = match (&feed.read_from, xmin) {
            (None, false) => Some(self.stamp_indexed(feed, query, &updated).await?),
            _ => None,
        };
        let mut changes = match xmin {
            true => ChangesQuery::xmin(feed, query, deleted, deletes),
            false => ChangesQuery::new(d, feed, query, updated, deleted, &stamp_type, deletes),
        };
        changes.indexed = indexed;
        let zone_warning = self
            .zone_warning(feed, &changes.updated_column, &stamp_type)
            .await?;
        Ok((changes, deletes, zone_warning))
    }

    /// A warning when a stamp column without a time zone is compared in
    /// another zone than the one sessions start in: `NOW()` written there
    /// would look hours off.
    async fn zone_warning(
        &self,
        feed: &FeedConfig,
        column: &str,
        stamp_type: &str,
    ) -> Result<Option<String>, Error> {
        let (ours, theirs): (String, String) = match (self, stamp_type) {
            (Source::Postgres(pool), "timestamp") => sqlx::query_as(
                "SELECT current_setting('TimeZone'), reset_val FROM pg_settings WHERE name = 'TimeZone'",
            )
            .fetch_one(pool)
            .await?,
            (Source::MySql(pool), "DATETIME(6)") => {
                // NULL when the server has no time zone tables to tell.
                let (ours, theirs, offset): (String, String, Option<i64>) = sqlx::query_as(
                    "SELECT CAST(@@session.time_zone AS CHAR), CAST(@@global.time_zone AS CHAR), \
                     TIMESTAMPDIFF(SECOND, NOW(), CONVERT_TZ(NOW(), @@session.time_zone, @@global.time_zone))",
                )
                .fetch_one(pool)
                .await?;
                if offset.unwrap_or(0) == 0 {
                    return Ok(None);
                }
                (ours, theirs)
            }
            _ => return Ok(None),
        };
        Ok((ours != theirs).then(|| format!(
            "feed `{}`: `{column}` holds no time zone and rowcast compares it in {ours}, while sessions start in {theirs}: \
             stamps that an application writes with NOW() in {theirs} look shifted by the difference (missed, or re-read for hours); \
             store them in {ours}, or use a column type with a zone (timestamptz, TIMESTAMP)",
            feed.name
        )))
    }

    /// Whether an index of the feed's table starts with `column`: without
    /// one, every poll scans the table.
    async fn stamp_indexed(
        &self,
        feed: &FeedConfig,
        query: &FeedQuery,
        column: &str,
    ) -> Result<bool, Error> {
        let count: i64 = match self {
            Source::Postgres(pool) => sqlx::query_scalar(
                "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
                 AND a.attnum = i.indkey[0] WHERE i.indrelid = to_regclass($1) AND a.attname = $2",
            )
            .bind(&query.table_sql)
            .bind(column)
            .fetch_one(pool)
            .await?,
            Source::MySql(pool) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) \
                 AND TABLE_NAME = ? AND COLUMN_NAME = ? AND SEQ_IN_INDEX = 1",
            )
            .bind(&feed.schema)
            .bind(&feed.table)
            .bind(column)
            .fetch_one(pool)
            .await?,
            Source::Sqlite(pool) => sqlx::query_scalar(
                "SELECT count(*) FROM pragma_index_list(?1) AS l, pragma_index_info(l.name) AS i \
                 WHERE i.seqno = 0 AND i.name = ?2",
            )
            .bind(&feed.table)
            .bind(column)
            .fetch_one(pool)
            .await?,
        };
        Ok(count > 0)
    }

    /// The SQL type a stamp read back as text is cast to, checked to be a
    /// time.
    async fn stamp_type(
        &self,
        feed: &FeedConfig,
        query: &FeedQuery,
        column: &str,
    ) -> Result<String, Error> {
        use sqlx::{Column, Executor, TypeInfo};
        let d = self.dialect();
        let sql = format!(
            "SELECT t.{} FROM {} WHERE 1 = 0",
            d.quote(column),
            query.from
        );
        let bad = |source| Error::BadReadFrom {
            feed: feed.name.clone(),
            source,
        };
        let name = match self {
            Source::Postgres(pool) => {
                let described = pool.describe(&sql).await.map_err(bad)?;
                described.columns()[0].type_info().name().to_owned()
            }
            Source::MySql(pool) => {
                let described = pool.describe(&sql).await.map_err(bad)?;
                described.columns()[0].type_info().name().to_owned()
            }
            // SQLite stores stamps as text and compares them as text.
            Source::Sqlite(_) => return Ok(String::new()),
        };
        let cast = match (d, name.as_str()) {
            (Dialect::Postgres, "TIMESTAMPTZ") => "timestamptz",
            (Dialect::Postgres, "TIMESTAMP") => "timestamp",
            (Dialect::Postgres, "DATE") => "date",
            (Dialect::MySql, "DATETIME" | "TIMESTAMP") => "DATETIME(6)",
            (Dialect::MySql, "DATE") => "DATE",
            _ => {
                return Err(Error::UpdatedNotATime {
                    feed: feed.name.clone(),
                    column: column.to_owned(),
                    found: name,
                })
            }
        };
        Ok(cast.to_owned())
    }

    /// One page of a poll's window: rows stamped at or after `since_ms`,
    /// or, with `after`, rows after that stamp and id.
    pub async fn read_window(
        &self,
        query: &ChangesQuery,
        since_ms: i64,
        after: Option<(&str, i128)>,
        limit: u32,
    ) -> Result<Vec<Change>, Error> {
        let limit = i64::from(limit);
        if query.xmin {
            // Pages by id; the window is the transaction id `since_ms`.
            let after = match after {
                Some((_, id)) => i64::try_from(id).map_err(|_| Error::BadId(id.to_string()))?,
                None => i64::MIN,
            };
            let raw = read_changes!(self, &query.window_sql, since_ms.to_string(), after, limit);
            return raw.into_iter().map(RawChange::parse).collect();
        }
        let raw = match after {
            None => read_changes!(self, &query.window_sql, since_ms, limit),
            Some((stamp, id)) => {
                let id = i64::try_from(id).map_err(|_| Error::BadId(id.to_string()))?;
                read_changes!(self, &query.window_next_sql, stamp, stamp, id, limit)
            }
        };
        raw.into_iter().map(RawChange::parse).collect()
    }

    /// One page of the live rows with an id above `after`, in id order.
    pub async fn read_snapshot(
        &self,
        query: &ChangesQuery,
        after: i128,
        limit: u32,
    ) -> Result<Vec<Change>, Error> {
        let after = i64::try_from(after.max(i128::from(i64::MIN))).unwrap_or(i64::MAX);
        let raw = read_changes!(self, &query.snapshot_sql, after, i64::from(limit));
        raw.into_iter().map(RawChange::parse).collect()
    }

    /// One page of the feed's tombstones stamped at or after `since_ms`
    /// with a tombstone id above `after`; none without `rowcast_deletes`.
    pub async fn read_tombstones(
        &self,
        query: &ChangesQuery,
        since_ms: i64,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Change>, Error> {
        let Some(sql) = &query.tombstones_sql else {
            return Ok(Vec::new());
        };
        let raw = match query.xmin {
            true => read_changes!(self, sql, since_ms.to_string(), after, i64::from(limit)),
            false => read_changes!(self, sql, since_ms, after, i64::from(limit)),
        };
        raw.into_iter().map(RawChange::parse).collect()
    }
}

impl ChangesQuery {
    /// The index that keeps each poll off a table scan.
    pub fn index_sql(&self, query: &FeedQuery) -> String {
        let d = self.dialect;
        format!(
            "CREATE INDEX {} ON {} ({}, {})",
            d.quote(&format!(
                "{}_{}_rowcast",
                query.table.rsplit('.').next().unwrap_or_default(),
                self.updated_column
            )),
            query.table_sql,
            d.quote(&self.updated_column),
            d.quote(&query.id_column)
        )
    }

    /// How far a stamp may precede its transaction: none for transaction ids.
    pub fn skew(&self, configured: std::time::Duration) -> std::time::Duration {
        match self.xmin {
            true => std::time::Duration::ZERO,
            false => configured,
        }
    }

    /// What each poll runs first: rows stamped since the window start.
    pub fn window_sql(&self) -> &str {
        &self.window_sql
    }

    /// Whether hard deletes are read from `rowcast_deletes`.
    pub fn reads_tombstones(&self) -> bool {
        self.tombstones_sql.is_some()
    }

    /// Xmin mode: rows whose last writer is not older than the oldest
    /// transaction that was open at the previous read (`$1`, an `xid8` as
    /// text), paged by id. `age()` compares the 32-bit `xmin` of a row with
    /// it across wraparound; frozen rows are as old as can be.
    fn xmin(
        feed: &FeedConfig,
        query: &FeedQuery,
        deleted: Option<String>,
        deletes: bool,
    ) -> ChangesQuery {
        let d = Dialect::Postgres;
        let id = format!("t.{}", d.quote(&query.id_column));
        let written_since = |n: usize| format!("age(t.xmin) <= age((${n}::text)::xid8::xid)");
        let is_deleted = match &deleted {
            Some(column) => format!(
                "(CASE WHEN t.{} IS NULL THEN 0 ELSE 1 END)::text",
                d.quote(column)
            ),
            None => "'0'".to_owned(),
        };
        let select = format!("{}, (t.xmin)::text, {is_deleted}", query.select);
        let window_sql = format!(
            "SELECT {select} FROM {} WHERE {} AND {id} > $2 ORDER BY {id} LIMIT $3",
            query.from,
            written_since(1)
        );
        let stamped = ChangesQuery::new(d, feed, query, XMIN.to_owned(), deleted, "", deletes);
        ChangesQuery {
            xmin: true,
            window_next_sql: window_sql.clone(),
            tombstones_sql: stamped.tombstones_sql.as_ref().map(|sql| {
                sql.replace(
                    "t.deleted_at >= to_timestamp($1::int8 / 1000.0)",
                    &written_since(1),
                )
            }),
            window_sql,
            ..stamped
        }
    }

    fn new(
        d: Dialect,
        feed: &FeedConfig,
        query: &FeedQuery,
        updated: String,
        deleted: Option<String>,
        stamp_type: &str,
        deletes: bool,
    ) -> ChangesQuery {
        let p = |n| d.placeholder(n);
        let id = format!("t.{}", d.quote(&query.id_column));
        let stamp = format!("t.{}", d.quote(&updated));
        let since = |n| match d {
            Dialect::Postgres => format!("to_timestamp({}::int8 / 1000.0)", p(n)),
            Dialect::MySql => format!("FROM_UNIXTIME({} / 1000)", p(n)),
            Dialect::Sqlite => format!(
                "strftime('%Y-%m-%d %H:%M:%f', {} / 1000.0, 'unixepoch')",
                p(n)
            ),
        };
        let stamp_bound = |n| match d {
            Dialect::Sqlite => p(n),
            _ => format!("CAST({} AS {stamp_type})", p(n)),
        };
        let is_deleted = match &deleted {
            Some(column) => d.as_text(&format!(
                "CASE WHEN t.{} IS NULL THEN 0 ELSE 1 END",
                d.quote(column)
            )),
            None => d.as_text("0"),
        };
        let select = format!("{}, {}, {is_deleted}", query.select, d.as_text(&stamp));
        let from = &query.from;
        let window_sql = format!(
            "SELECT {select} FROM {from} WHERE {stamp} >= {} ORDER BY {stamp}, {id} LIMIT {}",
            since(1),
            p(2)
        );
        let window_next_sql = format!(
            "SELECT {select} FROM {from} WHERE {stamp} >= {} AND ({stamp} > {} OR {id} > {}) \
             ORDER BY {stamp}, {id} LIMIT {}",
            stamp_bound(1),
            stamp_bound(2),
            p(3),
            p(4),
        );
        let live = match &deleted {
            Some(column) => format!(" AND t.{} IS NULL", d.quote(column)),
            None => String::new(),
        };
        let snapshot_sql = format!(
            "SELECT {select} FROM {from} WHERE {id} > {}{live} ORDER BY {id} LIMIT {}",
            p(1),
            p(2)
        );
        let tombstones_sql = deletes.then(|| {
            let data = "t.row_data";
            let filters = feed.filter_columns.iter().map(|c| {
                let key = d.literal(c);
                d.as_text(&match d {
                    Dialect::Postgres => format!("({data})::json ->> {key}"),
                    Dialect::MySql => format!(
                        "JSON_UNQUOTE(JSON_EXTRACT({data}, CONCAT('$.', JSON_QUOTE({key}))))"
                    ),
                    Dialect::Sqlite => format!("{data} ->> {key}"),
                })
            });
            let select: Vec<String> = [d.as_text("t.row_key"), data.to_owned()]
                .into_iter()
                .chain(filters)
                .chain([d.as_text("t.id"), d.as_text("1")])
                .collect();
            let table = qualified(d, feed, DELETES_TABLE);
            // The trigger's stamps are `timestamptz`, `DATETIME(6)` and
            // text: a row stamp's bound fits them as it is.
            let since = since(1);
            format!(
                "SELECT {} FROM {table} AS t WHERE t.table_name = {} AND t.deleted_at >= {since} \
                 AND t.id > {} ORDER BY t.id LIMIT {}",
                select.join(", "),
                d.literal(&query.table),
                p(2),
                p(3),
            )
        });
        ChangesQuery {
            dialect: d,
            xmin: false,
            indexed: None,
            updated_column: updated,
            deleted_column: deleted,
            window_sql,
            window_next_sql,
            snapshot_sql,
            tombstones_sql,
        }
    }
}

/// A changes row as the driver returns it: all text.
pub(super) struct RawChange {
    pub(super) id: String,
    pub(super) json: Option<String>,
    pub(super) filters: Vec<Option<String>>,
    pub(super) stamp: Option<String>,
    pub(super) deleted: Option<String>,
}

impl RawChange {
    fn parse(self) -> Result<Change, Error> {
        Ok(Change {
            id: super::parse_id(&self.id)?,
            json: self.json.map(crate::sse::one_line),
            filters: self.filters,
            stamp: self.stamp.unwrap_or_default(),
            deleted: self.deleted.as_deref() == Some("1"),
        })
    }
}

/// Runs a changes read on any driver's pool: the id, the JSON, the
/// filters, then the stamp and whether the row is deleted.
macro_rules! read_changes {
    ($source:expr, $sql:expr, $($bind:expr),+) => {
        match $source {
            Source::Postgres(pool) => read_changes!(@pool pool, $sql, $($bind),+),
            Source::MySql(pool) => read_changes!(@pool pool, $sql, $($bind),+),
            Source::Sqlite(pool) => read_changes!(@pool pool, $sql, $($bind),+),
        }
    };
    (@pool $pool:expr, $sql:expr, $($bind:expr),+) => {{
        use sqlx::Row as _;
        let rows = sqlx::query($sql)$(.bind($bind))+.fetch_all($pool).await?;
        rows.iter()
            .map(|row| {
                let n = row.len();
                Ok(RawChange {
                    id: row.try_get(0)?,
                    json: row.try_get(1)?,
                    filters: (2..n - 2)
                        .map(|i| row.try_get(i))
                        .collect::<Result<_, sqlx::Error>>()?,
                    stamp: row.try_get(n - 2)?,
                    deleted: row.try_get(n - 1)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?
    }};
}
use read_changes;
