//! SQLite: connection options and catalog lookups through the `pragma_*`
//! table-valued functions.

use super::{read_rows, Bound, Catalog, Error, RawRow, Table};
use crate::config::FeedConfig;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use std::str::FromStr;

/// Opens a pool; `create` makes the file when it is missing (the demo only:
/// a server pointed at a mistyped path should fail, not serve an empty file).
pub(crate) async fn connect(
    url: &str,
    max_connections: u32,
    create: bool,
) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?.create_if_missing(create);
    super::pool::<sqlx::SqliteConnection>(options, max_connections).await
}

pub(super) async fn describe(pool: &SqlitePool, feed: &FeedConfig) -> Result<Table, Error> {
    let schema = feed.schema.clone().unwrap_or_else(|| "main".to_owned());
    let display = match &feed.schema {
        Some(schema) => format!("{schema}.{}", feed.table),
        None => feed.table.clone(),
    };
    let master = format!("\"{}\".sqlite_master", schema.replace('"', "\"\""));
    let kind: Option<String> = sqlx::query_scalar(&format!(
        "SELECT type FROM {master} WHERE name = ? AND type IN ('table', 'view')"
    ))
    .bind(&feed.table)
    .fetch_optional(pool)
    .await?;
    match kind.as_deref() {
        None => {
            let available = sqlx::query_scalar(&format!(
                "SELECT name FROM {master} WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY 1"
            ))
            .fetch_all(pool)
            .await?;
            return Err(Error::UnknownTable {
                table: display,
                available,
            });
        }
        Some("view") => return Err(Error::view_as_table(feed, display)),
        Some(_) => {}
    }

    let columns: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, type, pk FROM pragma_table_info(?, ?) ORDER BY cid")
            .bind(&feed.table)
            .bind(&schema)
            .fetch_all(pool)
            .await?;
    let mut primary_key: Vec<(i64, String)> = columns
        .iter()
        .filter(|c| c.2 > 0)
        .map(|c| (c.2, c.0.clone()))
        .collect();
    primary_key.sort();
    let unique = sqlx::query_scalar(
        "SELECT MAX(i.name) FROM pragma_index_list(?1, ?2) AS l, pragma_index_info(l.name, ?2) AS i \
         WHERE l.\"unique\" = 1 AND l.partial = 0 GROUP BY l.name HAVING COUNT(*) = 1",
    )
    .bind(&feed.table)
    .bind(&schema)
    .fetch_all(pool)
    .await?;
    Catalog {
        display,
        columns: columns
            .into_iter()
            .map(|(name, type_name, _)| {
                // SQLite's own rule for integer affinity.
                let integer = type_name.to_ascii_uppercase().contains("INT");
                (name, type_name, integer, false)
            })
            .collect(),
        primary_key: primary_key.into_iter().map(|(_, name)| name).collect(),
        unique,
    }
    .into_table(feed)
}

pub(super) async fn read(
    pool: &SqlitePool,
    sql: &str,
    (low, high): (Bound, Bound),
    limit: i64,
) -> Result<Vec<RawRow>, sqlx::Error> {
    read_rows!(pool, sql, low.as_i64(), high.as_i64(), limit)
}

pub(super) async fn scalar(pool: &SqlitePool, sql: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}
