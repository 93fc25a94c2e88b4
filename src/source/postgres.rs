//! PostgreSQL: connection options and catalog lookups (`pg_class`,
//! `pg_attribute`, `pg_index`), all readable with plain `SELECT` rights.

use super::{read_rows, Bound, Catalog, Error, RawRow, Table};
use crate::config::FeedConfig;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?;
    if !url.contains("application_name") {
        // Lets operators find rowcast's sessions in pg_stat_activity.
        options = options.application_name("rowcast");
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(super::ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

pub(super) async fn describe(pool: &PgPool, feed: &FeedConfig) -> Result<Table, Error> {
    let schema: String = match &feed.schema {
        Some(schema) => schema.clone(),
        None => {
            sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(pool)
                .await?
        }
    };
    let display = format!("{schema}.{}", feed.table);
    let found: Option<(sqlx::postgres::types::Oid, String)> = sqlx::query_as(
        "SELECT c.oid, c.relkind::text FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(&schema)
    .bind(&feed.table)
    .fetch_optional(pool)
    .await?;
    let oid =
        match found {
            Some((oid, kind)) if kind == "r" || kind == "p" => oid,
            Some((_, kind)) => {
                return Err(Error::NoCursor {
                    feed: feed.name.clone(),
                    table: display,
                    reason: format!(
                    "it is a {}, not a table; set `table` to its base table and `from` to the view",
                    if kind == "v" || kind == "m" { "view" } else { "relation of another kind" }
                ),
                })
            }
            None => {
                let available = sqlx::query_scalar(
                    "SELECT c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY 1",
                )
                .bind(&schema)
                .fetch_all(pool)
                .await?;
                return Err(Error::UnknownTable {
                    table: display,
                    available,
                });
            }
        };

    let columns: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT attname::text, format_type(atttypid, atttypmod), \
                atttypid IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype) \
         FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
         ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let primary_key = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = $1 AND i.indisprimary",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    let unique = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
         WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 \
           AND i.indpred IS NULL AND i.indexprs IS NULL",
    )
    .bind(oid)
    .fetch_all(pool)
    .await?;
    Catalog {
        display,
        columns: columns
            .into_iter()
            .map(|(name, type_name, integer)| (name, type_name, integer, false))
            .collect(),
        primary_key,
        unique,
    }
    .into_table(feed)
}

pub(super) async fn read(
    pool: &PgPool,
    sql: &str,
    (low, high): (Bound, Bound),
    limit: i64,
) -> Result<Vec<RawRow>, sqlx::Error> {
    read_rows!(pool, sql, low.as_i64(), high.as_i64(), limit)
}

pub(super) async fn scalar(pool: &PgPool, sql: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}
