//! MySQL and MariaDB: connection options and catalog lookups in
//! `information_schema`, readable with plain `SELECT` rights.

use super::{read_rows, Bound, Catalog, Error, FeedQuery, GapSetup, RawRow, Table};
use crate::config::FeedConfig;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<MySqlPool, sqlx::Error> {
    // sqlx knows only the mysql:// scheme; MariaDB speaks the same protocol.
    let url = match url.strip_prefix("mariadb://") {
        Some(rest) => format!("mysql://{rest}"),
        None => url.to_owned(),
    };
    let options = MySqlConnectOptions::from_str(&url)?.charset("utf8mb4");
    super::pool::<sqlx::MySqlConnection>(options, max_connections).await
}

const INTEGER_TYPES: [&str; 5] = ["tinyint", "smallint", "mediumint", "int", "bigint"];

pub(super) async fn describe(pool: &MySqlPool, feed: &FeedConfig) -> Result<Table, Error> {
    let schema: String = match &feed.schema {
        Some(schema) => schema.clone(),
        None => sqlx::query_scalar::<_, Option<String>>("SELECT CAST(DATABASE() AS CHAR)")
            .fetch_one(pool)
            .await?
            .ok_or_else(|| Error::UnknownTable {
                table: format!(
                    "{} (no database selected: name one in the URL or set `schema`)",
                    feed.table
                ),
                available: Vec::new(),
            })?,
    };
    let display = format!("{schema}.{}", feed.table);
    let kind: Option<String> = sqlx::query_scalar(
        "SELECT CAST(TABLE_TYPE AS CHAR) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
    )
    .bind(&schema)
    .bind(&feed.table)
    .fetch_optional(pool)
    .await?;
    match kind.as_deref() {
        None => {
            let available = sqlx::query_scalar(
                "SELECT CAST(TABLE_NAME AS CHAR) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = ? AND TABLE_TYPE <> 'VIEW' ORDER BY 1",
            )
            .bind(&schema)
            .fetch_all(pool)
            .await?;
            return Err(Error::UnknownTable {
                table: display,
                available,
            });
        }
        Some("VIEW") => return Err(Error::view_as_table(feed, display)),
        Some(_) => {}
    }

    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), CAST(DATA_TYPE AS CHAR) \
         FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? \
         ORDER BY ORDINAL_POSITION",
    )
    .bind(&schema)
    .bind(&feed.table)
    .fetch_all(pool)
    .await?;
    let primary_key = sqlx::query_scalar(
        "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY'",
    )
    .bind(&schema)
    .bind(&feed.table)
    .fetch_all(pool)
    .await?;
    let unique = sqlx::query_scalar(
        "SELECT CAST(MAX(COLUMN_NAME) AS CHAR) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 \
         GROUP BY INDEX_NAME HAVING COUNT(*) = 1",
    )
    .bind(&schema)
    .bind(&feed.table)
    .fetch_all(pool)
    .await?;
    Catalog {
        display,
        columns: columns
            .into_iter()
            .map(|(name, column_type, data_type)| {
                let integer = INTEGER_TYPES.contains(&data_type.to_ascii_lowercase().as_str());
                let unsigned = column_type.to_ascii_lowercase().contains("unsigned");
                (name, column_type, integer, unsigned)
            })
            .collect(),
        primary_key,
        unique,
    }
    .into_table(feed)
}

pub(super) async fn read(
    pool: &MySqlPool,
    sql: &str,
    bounds: (Bound, Bound),
    limit: i64,
) -> Result<Vec<RawRow>, sqlx::Error> {
    match bounds {
        (Bound::Unsigned(low), Bound::Unsigned(high)) => read_rows!(pool, sql, low, high, limit),
        (low, high) => read_rows!(pool, sql, low.as_i64(), high.as_i64(), limit),
    }
}

pub(super) async fn scalar(pool: &MySqlPool, sql: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}

/// Open InnoDB transactions that could hold an allocated id: those that
/// wrote something or are running a statement (an INSERT between taking its
/// id and writing its row). Readers idle in a transaction cannot, and are
/// left out so that they do not hold gaps open. A transaction is named by
/// its connection and start time: `trx_id` is 0 until it first writes.
/// The second column says whether the row is this very statement's own
/// transaction: `{marker}`, unique per read, tells this read from an earlier
/// one of the same connection that a stale cache may still show.
const WRITERS_SQL: &str = "SELECT CONCAT(trx_mysql_thread_id, '@', trx_started), \
                                  IFNULL(trx_mysql_thread_id = CONNECTION_ID() AND trx_query LIKE '%{marker}%', FALSE), \
                                  trx_rows_modified > 0 OR trx_query IS NOT NULL OR trx_state = 'LOCK WAIT' \
                           FROM information_schema.INNODB_TRX";

/// Tells apart the reads of INNODB_TRX made by this process.
static READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How often, at most, InnoDB refreshes its INNODB_TRX cache: only once
/// nobody has read it for 100 ms.
const TRX_CACHE_INTERVAL: Duration = Duration::from_millis(110);

/// How long [`writers`] tries for a fresh list before it gives up.
const FRESH_WITHIN: Duration = Duration::from_secs(3);

/// When this process last read INNODB_TRX. Its reads take turns, spaced by
/// at least [`TRX_CACHE_INTERVAL`]: a read by one feed within 100 ms of
/// another's would keep the cache from refreshing for either.
static LAST_READ: tokio::sync::Mutex<Option<Instant>> = tokio::sync::Mutex::const_new(None);

/// Reads INNODB_TRX with `sql` once `spacing` has passed since this process
/// last read it.
async fn read_trx<'c, E, T>(
    executor: E,
    sql: &str,
    spacing: Duration,
) -> Result<Vec<T>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
    T: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::mysql::MySqlRow>,
{
    let mut last = LAST_READ.lock().await;
    if let Some(at) = *last {
        tokio::time::sleep(spacing.saturating_sub(at.elapsed())).await;
    }
    // Each text is used once: do not keep it prepared.
    let rows = sqlx::query_as(sql)
        .persistent(false)
        .fetch_all(executor)
        .await;
    *last = Some(Instant::now());
    rows
}

/// The spacing before the next try after a stale read: another session
/// read within 100 ms. Two readers that each wait a fixed interval can keep
/// the cache stale for both forever (each read lands within 100 ms of the
/// other's); a random extra wait lets one of them find it idle.
fn after_stale_read(read: u64) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(read);
    TRX_CACHE_INTERVAL + Duration::from_millis(random % 200)
}

/// The transactions that could fill a gap now, or `None` when no fresh
/// list could be had. InnoDB serves INNODB_TRX from a cache refreshed only
/// when nobody read it for 0.1 s, so a list is trusted only once it shows
/// the reader's own transaction, begun just before.
pub(super) async fn writers(pool: &MySqlPool) -> Result<Option<HashSet<String>>, Error> {
    // Starts an InnoDB transaction at once. A read of the feed's table is
    // no such start: one of a MyISAM or Aria table, or one the server
    // answers without reaching InnoDB, starts none, and INNODB_TRX would
    // never list this reader.
    let mut tx = pool
        .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .await?;
    let (mut fresh, mut spacing, started) = (None, TRX_CACHE_INTERVAL, Instant::now());
    while fresh.is_none() && started.elapsed() < FRESH_WITHIN {
        let read = READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("rowcast-{}-{read}", std::process::id());
        let sql = WRITERS_SQL.replace("{marker}", &marker);
        let rows: Vec<(String, bool, bool)> = read_trx(&mut *tx, &sql, spacing).await?;
        if rows.iter().any(|(_, own, _)| *own) {
            fresh = Some(
                rows.into_iter()
                    .filter(|(_, own, writer)| !own && *writer)
                    .map(|(name, _, _)| name)
                    .collect(),
            );
        }
        spacing = after_stale_read(read);
    }
    tx.commit().await?;
    if fresh.is_none() {
        tracing::warn!(
            waited = ?started.elapsed(),
            "INNODB_TRX was never refreshed: InnoDB refills it only after 100 ms in which nobody reads it, \
             so another session reads it more often (a monitoring agent, another rowcast instance); \
             gaps settle by gap_grace alone meanwhile. Find the reader with \
             SELECT ID, USER, HOST, INFO FROM information_schema.PROCESSLIST WHERE INFO LIKE '%INNODB_TRX%' \
             (run it a few times) and have it read less than every 100 ms"
        );
    }
    Ok(fresh)
}

pub(super) async fn gap_setup(
    pool: &MySqlPool,
    feed: &FeedConfig,
    query: &FeedQuery,
) -> Result<GapSetup, Error> {
    let column = &query.id_column;
    // The server's default, which the application's sessions use.
    let increment: i64 =
        sqlx::query_scalar("SELECT CAST(@@GLOBAL.auto_increment_increment AS SIGNED)")
            .fetch_one(pool)
            .await?;
    let extra: Option<String> = sqlx::query_scalar(
        "SELECT CAST(EXTRA AS CHAR) FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND COLUMN_NAME = ?",
    )
    .bind(&feed.schema)
    .bind(&feed.table)
    .bind(column)
    .fetch_optional(pool)
    .await?;
    let mut setup = GapSetup::concurrent(i128::from(increment.max(1)));
    if !extra.is_some_and(|e| e.to_ascii_lowercase().contains("auto_increment")) {
        setup.app_assigns_ids(
            feed,
            format!("`{column}` is not AUTO_INCREMENT, so the application assigns ids"),
        );
    }
    // Transactions of another engine are not InnoDB's to list.
    let engine: Option<(String, String)> = sqlx::query_as(
        "SELECT CAST(t.ENGINE AS CHAR), CAST(e.TRANSACTIONS AS CHAR) FROM information_schema.TABLES t \
         JOIN information_schema.ENGINES e ON e.ENGINE = t.ENGINE \
         WHERE t.TABLE_SCHEMA = COALESCE(?, DATABASE()) AND t.TABLE_NAME = ?",
    )
    .bind(&feed.schema)
    .bind(&feed.table)
    .fetch_optional(pool)
    .await?;
    let table = &query.table;
    setup.writers_sql = match engine {
        Some((engine, _)) if engine.eq_ignore_ascii_case("InnoDB") => {
            innodb_writers(pool, feed, &mut setup).await?
        }
        Some((engine, transactions)) if transactions.eq_ignore_ascii_case("NO") => {
            setup.notes.push(format!(
                "feed `{}`: `{table}` is a {engine} table, without transactions: a row is visible as soon as its \
                 INSERT ends, so there are no writers to wait for and gaps settle by gap_grace alone",
                feed.name
            ));
            None
        }
        other => {
            let engine = other.map_or_else(|| "(unknown)".to_owned(), |(engine, _)| engine);
            setup.warnings.push(format!(
                "feed `{}`: `{table}` is a {engine} table, whose transactions INNODB_TRX does not list, \
                 so gaps in the ids settle by gap_grace alone",
                feed.name
            ));
            None
        }
    };
    if increment > 1 {
        setup.warnings.push(format!(
            "feed `{}`: auto_increment_increment is {increment}: ids step by {increment}, and a session \
             that sets another increment would make rowcast take a missing id for no gap",
            feed.name
        ));
    }
    Ok(setup)
}

/// The SQL that lists an InnoDB table's writers, or `None` (with a
/// warning) when rowcast may not read INNODB_TRX.
async fn innodb_writers(
    pool: &MySqlPool,
    feed: &FeedConfig,
    setup: &mut GapSetup,
) -> Result<Option<String>, Error> {
    Ok(
        match read_trx::<_, (String, bool, bool)>(pool, WRITERS_SQL, TRX_CACHE_INTERVAL).await {
            Ok(_) => Some(WRITERS_SQL.to_owned()),
            // 1227: access denied, the PROCESS privilege is missing.
            Err(sqlx::Error::Database(e))
                if e.code().as_deref() == Some("42000") || e.message().contains("PROCESS") =>
            {
                setup.warnings.push(format!(
                "feed `{}`: without the PROCESS privilege rowcast cannot see open transactions, so gaps in the ids \
                 settle by gap_grace alone; `GRANT PROCESS ON *.* TO <rowcast user>` gives the exact guarantee",
                feed.name
            ));
                None
            }
            Err(e) => return Err(e.into()),
        },
    )
}
