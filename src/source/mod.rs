//! Sources: the database side of a feed. Connects, checks a feed's table and
//! columns against the catalog, and reads rows after a cursor.
//!
//! One file per database (`postgres`, `mysql`, `sqlite`) for what differs —
//! catalog queries, quoting, JSON rendering — and [`query`] for the one SQL
//! shape they share; `deletes` writes the hard-delete trigger of `rowcast sql
//! deletes`. Identifiers come only from configuration and are quoted; request
//! values are never part of the SQL text. This module never decides what a
//! client sees: it returns raw rows, in id order.

mod catalog;
pub mod changes;
mod deletes;
mod error;
pub mod horizon;
mod lock;
mod mysql;
mod postgres;
pub mod query;
pub(crate) mod sqlite;

use crate::config::{FeedConfig, ReadFrom};
use crate::cursor::Cursor;
use catalog::Catalog;
pub use changes::{Change, ChangesQuery};
pub use deletes::{DeleteTrigger, DELETES_TABLE};
pub use error::Error;
pub use lock::LeaderLock;
pub use postgres::{notify_sql, txid_sql, unnotify_sql, NOTIFY_CHANNEL, TXID_COLUMN};
pub use query::FeedQuery;
use std::collections::HashSet;
use std::time::Duration;

/// A connection pool to one of the supported databases.
#[derive(Clone, Debug)]
pub enum Source {
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
    Sqlite(sqlx::SqlitePool),
}

/// One row as read by the poller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The cursor column.
    pub id: i128,
    /// The row rendered as JSON by the database; `None` when the feed's row
    /// condition excludes it (its id still counts as seen).
    pub json: Option<String>,
    /// The filter columns' values as text, in the feed's filter order.
    pub filters: Vec<Option<String>>,
    /// Set on the notice that a change moved a row out of a filter (changes
    /// mode): the row's new filter values. The notice goes to the clients
    /// that `filters` (the old values) pass and these do not.
    pub unless_filters: Option<Vec<Option<String>>>,
    /// The event's own name, when its message names one (a Laravel
    /// broadcast); `None`: the feed's. Rows of a table never have one.
    pub event: Option<String>,
}

/// What a database can tell about gaps in a feed's ids.
#[derive(Clone, Debug)]
pub struct GapSetup {
    /// Difference between consecutive ids.
    pub step: i128,
    /// Whether writers can commit out of id order (not SQLite).
    pub concurrent: bool,
    /// Lists the transactions that could still fill a gap, when the
    /// database lets rowcast see them.
    pub writers_sql: Option<String>,
    /// What weakens the guarantee, for the start-up log.
    pub warnings: Vec<String>,
    /// What the operator should know but need not act on, for the log.
    pub notes: Vec<String>,
}

impl GapSetup {
    /// Ids that become visible in id order: one writer at a time (SQLite),
    /// or rows read in transaction order (exact mode).
    pub fn in_order() -> GapSetup {
        GapSetup {
            step: 1,
            concurrent: false,
            writers_sql: None,
            warnings: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Concurrent writers whose ids step by `step`.
    fn concurrent(step: i128) -> GapSetup {
        GapSetup {
            step,
            concurrent: true,
            ..GapSetup::in_order()
        }
    }

    /// Records that the application assigns the ids itself (`why` says how
    /// the catalog shows it): no database state names such a writer in
    /// advance, so only the grace window or a watermark can settle a gap.
    fn app_assigns_ids(&mut self, feed: &FeedConfig, why: String) {
        if feed.watermark.is_some() {
            self.notes.push(format!(
                "feed `{}`: {why}; the `watermark` query covers it: gaps below the watermark settle at once",
                feed.name
            ));
        } else {
            self.warnings.push(format!(
                "feed `{}`: {why}; gaps settle by gap_grace alone unless a `watermark` query is set",
                feed.name
            ));
        }
    }
}

/// What the catalog says about a feed's base table.
#[derive(Clone, Debug)]
pub struct Table {
    /// Qualified name as given, for messages.
    pub display: String,
    /// Columns in table order.
    pub columns: Vec<String>,
    /// The cursor column.
    pub id_column: String,
    /// Whether the cursor column is an unsigned integer (MySQL).
    pub unsigned: bool,
    /// The `xid8` column of exact mode (Postgres), when the table has it.
    pub txid_column: Option<String>,
}

/// How long a query may wait for a pooled connection before the poller
/// counts the database as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of `C` connections, opened with one connection first: a pool
/// reports a refused connection only as a timeout, and the user needs the
/// real cause.
async fn pool<C: sqlx::Connection>(
    options: <C as sqlx::Connection>::Options,
    max_connections: u32,
) -> Result<sqlx::Pool<C::Database>, sqlx::Error> {
    C::connect_with(&options).await?.close().await?;
    sqlx::pool::PoolOptions::<C::Database>::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

impl Source {
    /// Opens a pool for `url` and checks that the database answers.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Source, Error> {
        let scheme = url.split(':').next().unwrap_or_default();
        let connect_error = |source| Error::Connect {
            url: redact(url),
            source,
        };
        match scheme {
            "postgres" | "postgresql" => postgres::connect(url, max_connections)
                .await
                .map(Source::Postgres)
                .map_err(connect_error),
            "mysql" | "mariadb" => mysql::connect(url, max_connections)
                .await
                .map(Source::MySql)
                .map_err(connect_error),
            "sqlite" => sqlite::connect(url, max_connections, false)
                .await
                .map(Source::Sqlite)
                .map_err(connect_error),
            _ => Err(Error::Scheme(redact(url))),
        }
    }

    /// Which database this is, for logs and `check`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Postgres(_) => "postgres",
            Source::MySql(_) => "mysql",
            Source::Sqlite(_) => "sqlite",
        }
    }

    /// Checks a feed against the catalog and builds its queries.
    pub async fn plan(&self, feed: &FeedConfig) -> Result<FeedQuery, Error> {
        let table = match self {
            Source::Postgres(pool) => postgres::describe(pool, feed).await?,
            Source::MySql(pool) => mysql::describe(pool, feed).await?,
            Source::Sqlite(pool) => sqlite::describe(pool, feed).await?,
        };
        let read_columns = match &feed.read_from {
            None => table.columns.clone(),
            Some(_) => self.read_columns(feed).await?,
        };
        FeedQuery::new(self.dialect(), feed, &table, &read_columns)
    }

    fn dialect(&self) -> query::Dialect {
        match self {
            Source::Postgres(_) => query::Dialect::Postgres,
            Source::MySql(_) => query::Dialect::MySql,
            Source::Sqlite(_) => query::Dialect::Sqlite,
        }
    }

    /// The columns a feed's `from` view or `select` statement yields, each
    /// name once: a name is a JSON key and a filter, which must be one
    /// column.
    async fn read_columns(&self, feed: &FeedConfig) -> Result<Vec<String>, Error> {
        let probe = query::probe_sql(self.dialect(), feed);
        let (key, sql) = match &feed.read_from {
            // The statement itself: as a subquery, MySQL refuses repeated
            // names with an error of its own and SQLite renames them.
            Some(ReadFrom::Select(select)) => ("select", select.as_str()),
            _ => ("from", probe.as_str()),
        };
        let own = self.describe(feed, sql).await?;
        let mut seen = HashSet::new();
        let mut repeated: Vec<String> = Vec::new();
        for name in &own {
            if !seen.insert(name) && !repeated.contains(name) {
                repeated.push(name.clone());
            }
        }
        if !repeated.is_empty() {
            return Err(Error::RepeatedColumns {
                feed: feed.name.clone(),
                key,
                columns: repeated,
            });
        }
        if sql == probe {
            Ok(own)
        } else {
            self.describe(feed, &probe).await
        }
    }

    /// The names of the columns `sql` yields.
    async fn describe(&self, feed: &FeedConfig, sql: &str) -> Result<Vec<String>, Error> {
        use sqlx::Executor;
        let bad = |source| Error::BadReadFrom {
            feed: feed.name.clone(),
            source,
        };
        Ok(match self {
            Source::Postgres(pool) => names(pool.describe(sql).await.map_err(bad)?.columns()),
            Source::MySql(pool) => names(pool.describe(sql).await.map_err(bad)?.columns()),
            Source::Sqlite(pool) => names(pool.describe(sql).await.map_err(bad)?.columns()),
        })
    }

    /// Runs the feed's read once, matching no row, so that a mistake in its
    /// condition or SELECT stops start-up instead of every poll.
    pub async fn validate(&self, feed: &FeedConfig, query: &FeedQuery) -> Result<(), Error> {
        let nothing = query.nothing();
        let sql = &query.read_sql;
        let result = match self {
            Source::Postgres(pool) => postgres::read(pool, sql, nothing, 1).await.map(drop),
            Source::MySql(pool) => mysql::read(pool, sql, nothing, 1).await.map(drop),
            Source::Sqlite(pool) => sqlite::read(pool, sql, nothing, 1).await.map(drop),
        };
        let result = match (&query.watermark_sql, result) {
            (Some(sql), Ok(())) => self.scalar(sql).await.map(drop),
            (_, result) => result,
        };
        result.map_err(|source| Error::BadQuery {
            feed: feed.name.clone(),
            source,
        })
    }

    /// Asks the database what it can tell about gaps in the feed's ids.
    pub async fn gap_setup(&self, feed: &FeedConfig, query: &FeedQuery) -> Result<GapSetup, Error> {
        match self {
            Source::Postgres(pool) => postgres::gap_setup(pool, feed, query).await,
            Source::MySql(pool) => mysql::gap_setup(pool, feed, query).await,
            Source::Sqlite(_) => Ok(GapSetup::in_order()),
        }
    }

    /// Whether the table has the NOTIFY doorbell trigger; `None` when the
    /// database has no such thing (not Postgres).
    pub async fn notify_trigger(&self, query: &FeedQuery) -> Result<Option<bool>, Error> {
        match self {
            Source::Postgres(pool) => postgres::has_notify_trigger(pool, &query.table_sql)
                .await
                .map(Some),
            _ => Ok(None),
        }
    }

    /// Which of the feeds' tables have the NOTIFY doorbell trigger, by
    /// `FeedQuery::table_sql`; none on a database without such a thing.
    pub async fn notify_triggers(&self, tables: &[String]) -> Result<HashSet<String>, Error> {
        match self {
            Source::Postgres(pool) => Ok(postgres::notify_triggers(pool, tables)
                .await?
                .into_iter()
                .collect()),
            _ => Ok(HashSet::new()),
        }
    }

    /// Runs SQL given by the operator (`rowcast sql … --apply`).
    pub async fn apply(&self, sql: &str) -> Result<(), Error> {
        match self {
            Source::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop)?,
            Source::MySql(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop)?,
            Source::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// The transactions that could fill a gap now (from `writers_sql`), or
    /// `None` when the database cannot tell at the moment.
    pub async fn writers(&self, sql: &str) -> Result<Option<HashSet<String>>, Error> {
        match self {
            Source::Postgres(pool) => {
                let list: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await?;
                Ok(Some(list.into_iter().collect()))
            }
            // The SQL is fixed; `writers_sql` only says that it may be run.
            Source::MySql(pool) => mysql::writers(pool).await,
            Source::Sqlite(_) => Ok(None),
        }
    }

    /// The highest id the application declares complete, or `None` when
    /// the watermark query returns nothing.
    pub async fn watermark(&self, sql: &str) -> Result<Option<i128>, Error> {
        self.scalar(sql).await?.map(|t| parse_id(&t)).transpose()
    }

    async fn scalar(&self, sql: &str) -> Result<Option<String>, sqlx::Error> {
        match self {
            Source::Postgres(pool) => postgres::scalar(pool, sql).await,
            Source::MySql(pool) => mysql::scalar(pool, sql).await,
            Source::Sqlite(pool) => sqlite::scalar(pool, sql).await,
        }
    }

    /// Rows with `after < id <= upto`, in id order, at most `limit`.
    pub async fn read(
        &self,
        query: &FeedQuery,
        after: Cursor,
        upto: Cursor,
        limit: u32,
    ) -> Result<Vec<Row>, Error> {
        let Some(range) = query.bounds(after, upto) else {
            return Ok(Vec::new());
        };
        let sql = &query.read_sql;
        let limit = i64::from(limit);
        let raw = match self {
            Source::Postgres(pool) => postgres::read(pool, sql, range, limit).await?,
            Source::MySql(pool) => mysql::read(pool, sql, range, limit).await?,
            Source::Sqlite(pool) => sqlite::read(pool, sql, range, limit).await?,
        };
        raw.into_iter().map(RawRow::parse).collect()
    }

    /// The greatest id in the feed now, or `Start` when it has no rows.
    pub async fn max_id(&self, query: &FeedQuery) -> Result<Cursor, Error> {
        match self.scalar(&query.max_sql).await? {
            None => Ok(Cursor::Start),
            Some(text) => parse_id(&text).map(Cursor::At),
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match self {
            Source::Postgres(pool) => pool.close().await,
            Source::MySql(pool) => pool.close().await,
            Source::Sqlite(pool) => pool.close().await,
        }
    }
}

fn names<C: sqlx::Column>(columns: &[C]) -> Vec<String> {
    columns.iter().map(|c| c.name().to_owned()).collect()
}

/// A bound of the id range, typed for the column it is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Signed(i64),
    Unsigned(u64),
    /// An exact-mode `(txid, id)` pair.
    Txid(u64, i64),
}

impl Bound {
    /// The bound for a signed column; an unsigned bound never reaches one,
    /// and would saturate if it did.
    fn as_i64(self) -> i64 {
        match self {
            Bound::Signed(v) => v,
            Bound::Unsigned(v) => i64::try_from(v).unwrap_or(i64::MAX),
            Bound::Txid(_, id) => id,
        }
    }
}

/// A row as the driver returns it: all text, parsed by [`RawRow::parse`].
struct RawRow {
    id: String,
    json: Option<String>,
    filters: Vec<Option<String>>,
}

impl RawRow {
    fn parse(self) -> Result<Row, Error> {
        Ok(Row {
            id: parse_id(&self.id)?,
            json: self.json.map(crate::sse::one_line),
            filters: self.filters,
            unless_filters: None,
            event: None,
        })
    }
}

fn parse_id(text: &str) -> Result<i128, Error> {
    text.trim()
        .parse()
        .map_err(|_| Error::BadId(text.to_owned()))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Runs a feed's read statement on any driver's pool. A macro rather than a
/// generic function: sqlx's per-driver trait bounds would outweigh the body.
macro_rules! read_rows {
    ($pool:expr, $sql:expr, $($bind:expr),+) => {{
        use sqlx::Row as _;
        let rows = sqlx::query($sql)
            $(.bind($bind))+
            .fetch_all($pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::source::RawRow {
                    id: row.try_get(0)?,
                    json: row.try_get(1)?,
                    filters: (2..row.len())
                        .map(|i| row.try_get(i))
                        .collect::<Result<_, sqlx::Error>>()?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
    }};
}
use read_rows;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }
}
