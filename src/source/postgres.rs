//! PostgreSQL: connection options and catalog lookups (`pg_class`,
//! `pg_attribute`, `pg_index`), all readable with plain `SELECT` rights.

use super::{read_rows, Bound, Catalog, Error, FeedQuery, GapSetup, RawRow, Table};
use crate::config::FeedConfig;
use sqlx::postgres::{PgConnectOptions, PgPool};
use std::str::FromStr;

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let mut options = PgConnectOptions::from_str(url)?;
    if !url.contains("application_name") {
        // Lets operators find rowcast's sessions in pg_stat_activity.
        options = options.application_name("rowcast");
    }
    super::pool::<sqlx::PgConnection>(options, max_connections).await
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
    // Exact mode when the table has rowcast's transaction-id column.
    let txid_name = feed.txid_column.as_deref().unwrap_or(TXID_COLUMN);
    let txid_column = match columns.iter().find(|c| c.0 == txid_name) {
        Some((name, type_name, _)) if type_name == "xid8" => Some(name.clone()),
        Some((_, type_name, _)) if feed.txid_column.is_some() => {
            return Err(Error::NoCursor {
                feed: feed.name.clone(),
                table: display,
                reason: format!(
                "`txid_column` `{txid_name}` is `{type_name}`, not `xid8`; see `rowcast sql txid`"
            ),
            })
        }
        None if feed.txid_column.is_some() => {
            return Err(Error::UnknownColumn {
                feed: feed.name.clone(),
                key: "txid_column",
                column: txid_name.to_owned(),
                table: display,
                available: columns.into_iter().map(|c| c.0).collect(),
            })
        }
        _ => None,
    };
    let mut table = Catalog {
        display,
        columns: columns
            .into_iter()
            .map(|(name, type_name, integer)| (name, type_name, integer, false))
            .collect(),
        primary_key,
        unique,
    }
    .into_table(feed)?;
    table.txid_column = txid_column;
    Ok(table)
}

/// The exact-mode column rowcast looks for when none is configured.
pub const TXID_COLUMN: &str = "rowcast_txid";

/// The SQL that enables exact mode on a table: a transaction-id column
/// filled by the database and an index to read in transaction order.
pub fn txid_sql(table: &str, schema: Option<&str>, id_column: &str) -> String {
    let d = super::query::Dialect::Postgres;
    let qualified = qualified_name(table, schema);
    let column = d.quote(TXID_COLUMN);
    let index = d.quote(&format!("{table}_{TXID_COLUMN}"));
    let (shown, shown_index) = (one_line(&qualified), one_line(&index));
    format!(
        "-- rowcast exact mode for {shown}: rows are read in transaction order, so\n\
         -- rows are delivered exactly once whatever allocates their ids and whenever\n\
         -- they commit. rowcast uses the column when it finds it; it never adds it.\n\
         -- Adding the column rewrites the table (existing rows share one transaction id).\n\
         ALTER TABLE {qualified} ADD COLUMN {column} xid8 NOT NULL DEFAULT pg_current_xact_id();\n\
         CREATE INDEX CONCURRENTLY {index} ON {qualified} ({column}, {});\n\
         -- To undo:\n\
         -- DROP INDEX CONCURRENTLY {shown_index};\n\
         -- ALTER TABLE {shown} DROP COLUMN {column};\n",
        d.quote(id_column)
    )
}

pub(super) async fn read(
    pool: &PgPool,
    sql: &str,
    bounds: (Bound, Bound),
    limit: i64,
) -> Result<Vec<RawRow>, sqlx::Error> {
    match bounds {
        (Bound::Txid(low_txid, low_id), Bound::Txid(high_txid, high_id)) => read_rows!(
            pool,
            sql,
            low_txid.to_string(),
            low_id,
            high_txid.to_string(),
            high_id,
            limit
        ),
        (low, high) => read_rows!(pool, sql, low.as_i64(), high.as_i64(), limit),
    }
}

pub(super) async fn scalar(pool: &PgPool, sql: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(pool).await
}

pub(super) async fn gap_setup(
    pool: &PgPool,
    feed: &FeedConfig,
    query: &FeedQuery,
) -> Result<GapSetup, Error> {
    if query.txid_column.is_some() {
        // Read in transaction order: nothing can commit below the cursor.
        return Ok(GapSetup::in_order());
    }
    let table = &query.table_sql;
    let column = &query.id_column;
    let mut setup = GapSetup::concurrent(1);
    let sequence: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT pg_get_serial_sequence($1, $2), seqincrement, seqcache FROM pg_sequence \
         WHERE seqrelid = pg_get_serial_sequence($1, $2)::regclass",
    )
    .bind(table)
    .bind(column)
    .fetch_optional(pool)
    .await?;
    match sequence {
        Some((name, increment, cache)) => {
            if increment > 0 {
                setup.step = i128::from(increment);
            } else {
                setup.warnings.push(format!(
                    "feed `{}`: the sequence of `{column}` counts down; rowcast follows increasing ids only",
                    feed.name
                ));
            }
            if cache > 1 {
                setup.warnings.push(format!(
                    "feed `{}`: the sequence of `{column}` has CACHE {cache}: each session takes ids {cache} at a time, \
                     so rows appear far out of id order and rows after a gap wait for gap_grace; \
                     ALTER SEQUENCE {name} CACHE 1 avoids it",
                    feed.name
                ));
            }
        }
        None => {
            let has_default: Option<bool> = sqlx::query_scalar(
                "SELECT a.attidentity <> '' OR a.atthasdef FROM pg_attribute a \
                 WHERE a.attrelid = $1::regclass AND a.attname = $2",
            )
            .bind(table)
            .bind(column)
            .fetch_optional(pool)
            .await?;
            if has_default != Some(true) {
                setup.app_assigns_ids(
                    feed,
                    format!(
                        "`{column}` has no default, so the application assigns ids and no lock reveals a writer in advance"
                    ),
                );
            }
        }
    }
    // The table by number: its name, written into the SQL as a literal,
    // would depend on the session's string settings.
    let oid: sqlx::postgres::types::Oid = sqlx::query_scalar("SELECT $1::regclass::oid")
        .bind(table)
        .fetch_one(pool)
        .await?;
    // Writers that take an id from the column default hold this lock
    // before `nextval`; pooled connections keep their pid across
    // transactions, so transactions are told apart by virtual id.
    setup.writers_sql = Some(format!(
        "SELECT virtualtransaction FROM pg_locks \
         WHERE locktype = 'relation' AND relation = {} \
           AND mode = 'RowExclusiveLock' AND pid IS DISTINCT FROM pg_backend_pid()",
        oid.0
    ));
    Ok(setup)
}

/// The channel the NOTIFY trigger rings; the payload is `schema.table`.
pub const NOTIFY_CHANNEL: &str = "rowcast";
/// The trigger's name, which start-up looks for.
pub const NOTIFY_TRIGGER: &str = "rowcast_notify";

/// The SQL that installs the doorbell on a table: one notification per
/// statement (not per row), and notifications with the same payload in one
/// transaction are folded into one by Postgres.
pub fn notify_sql(table: &str, schema: Option<&str>) -> String {
    let qualified = qualified_name(table, schema);
    let shown = one_line(&qualified);
    format!(
        "-- rowcast NOTIFY doorbell for {shown}: rows are still read by rowcast's\n\
         -- normal query, so a lost or folded notification never loses a row.\n\
         CREATE OR REPLACE FUNCTION {NOTIFY_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$\n\
         BEGIN\n    \
             PERFORM pg_notify('{NOTIFY_CHANNEL}', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);\n    \
             RETURN NULL;\n\
         END $$;\n\
         DROP TRIGGER IF EXISTS {NOTIFY_TRIGGER} ON {qualified};\n\
         CREATE TRIGGER {NOTIFY_TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {qualified}\n    \
             FOR EACH STATEMENT EXECUTE FUNCTION {NOTIFY_TRIGGER}();\n"
    )
}

/// The SQL that removes the doorbell from a table (the function stays for
/// other tables; drop it once no table uses it).
pub fn unnotify_sql(table: &str, schema: Option<&str>) -> String {
    let qualified = qualified_name(table, schema);
    format!(
        "DROP TRIGGER IF EXISTS {NOTIFY_TRIGGER} ON {qualified};\n\
         -- Once no table uses it: DROP FUNCTION IF EXISTS {NOTIFY_TRIGGER}();\n"
    )
}

/// `name` for a `--` comment, which a line break in a quoted name would
/// end, turning the rest of the name into SQL.
pub(super) fn one_line(name: &str) -> String {
    name.replace(|c: char| c.is_control(), " ")
}

fn qualified_name(table: &str, schema: Option<&str>) -> String {
    let d = super::query::Dialect::Postgres;
    match schema {
        Some(schema) => format!("{}.{}", d.quote(schema), d.quote(table)),
        None => d.quote(table),
    }
}

/// Which of `tables` (quoted names) have the doorbell trigger installed
/// and enabled, in one catalog read; a table that is gone has none.
pub(super) async fn notify_triggers(
    pool: &PgPool,
    tables: &[String],
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) AS t WHERE EXISTS (SELECT 1 FROM pg_trigger \
         WHERE tgrelid = to_regclass(t) AND tgname = $2 AND tgenabled <> 'D')",
    )
    .bind(tables)
    .bind(NOTIFY_TRIGGER)
    .fetch_all(pool)
    .await?)
}

/// Whether the doorbell trigger is installed and enabled on the table.
pub(super) async fn has_notify_trigger(pool: &PgPool, table_sql: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger \
         WHERE tgrelid = $1::regclass AND tgname = $2 AND tgenabled <> 'D')",
    )
    .bind(table_sql)
    .bind(NOTIFY_TRIGGER)
    .fetch_one(pool)
    .await?)
}
