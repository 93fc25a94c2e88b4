//! The benchmark's own use of the databases: tables, rows, the NOTIFY
//! trigger.

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use sqlx::{mysql::MySqlPoolOptions, postgres::PgPoolOptions, MySqlPool, PgPool};
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Database {
    Postgres,
    Mysql,
}

/// Installs the NOTIFY trigger the way a user would: `rowcast sql notify --apply`.
pub async fn install_notify_trigger(rowcast: &Path, url: &str, table: &str) -> anyhow::Result<()> {
    let output = Command::new(rowcast)
        .args(["sql", "notify", "--apply"])
        .arg(format!("--table={table}"))
        .arg(format!("--database-url={url}"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run `rowcast sql notify`")?;
    if !output.status.success() {
        bail!(
            "`rowcast sql notify --apply` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The benchmark's own connection to the database: DDL and the writer.
pub enum Db {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

impl Db {
    pub async fn connect(database: Database, url: &str) -> anyhow::Result<Db> {
        let db = match database {
            Database::Postgres => {
                Db::Postgres(PgPoolOptions::new().max_connections(2).connect(url).await?)
            }
            Database::Mysql => Db::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await?,
            ),
        };
        Ok(db)
    }

    pub async fn create_table(&self, table: &str) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => {
                let sql = format!("CREATE TABLE {table} (id bigserial PRIMARY KEY, sent_at_us bigint NOT NULL, body text)");
                sqlx::query(&sql).execute(pool).await?;
            }
            Db::Mysql(pool) => {
                let sql = format!("CREATE TABLE {table} (id bigint AUTO_INCREMENT PRIMARY KEY, sent_at_us bigint NOT NULL, body text) ENGINE=InnoDB");
                sqlx::query(&sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// A table for a changes feed: `rows` rows already there, stamped in
    /// `updated_at`, with an index on `(updated_at, id)` when `index`.
    pub async fn create_changes_table(
        &self,
        table: &str,
        rows: usize,
        index: bool,
    ) -> anyhow::Result<()> {
        let index_sql = format!("CREATE INDEX {table}_stamp ON {table} (updated_at, id)");
        match self {
            Db::Postgres(pool) => {
                for sql in [
                    format!("CREATE TABLE {table} (id bigserial PRIMARY KEY, sent_at_us bigint NOT NULL, body text, \
                             updated_at timestamptz NOT NULL DEFAULT now())"),
                    format!("INSERT INTO {table} (sent_at_us, body, updated_at) \
                             SELECT 0, 'row ' || n, now() - interval '1 hour' FROM generate_series(1, {rows}) AS n"),
                    format!("ANALYZE {table}"),
                ] {
                    sqlx::query(&sql).execute(pool).await?;
                }
                if index {
                    sqlx::query(&index_sql).execute(pool).await?;
                }
            }
            Db::Mysql(pool) => {
                sqlx::query(&format!("CREATE TABLE {table} (id bigint AUTO_INCREMENT PRIMARY KEY, sent_at_us bigint NOT NULL, body text, \
                     updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB")).execute(pool).await?;
                // MariaDB's sequence engine makes the rows; batches keep
                // each statement's undo small.
                let mut done = 0;
                while done < rows {
                    let n = (rows - done).min(100_000);
                    sqlx::query(&format!(
                        "INSERT INTO {table} (sent_at_us, body, updated_at) \
                         SELECT 0, CONCAT('row ', seq), NOW(6) - INTERVAL 1 HOUR FROM seq_1_to_{n}"
                    ))
                    .execute(pool)
                    .await
                    .context("cannot fill the table (MariaDB's sequence engine makes the rows)")?;
                    done += n;
                }
                if index {
                    sqlx::query(&index_sql).execute(pool).await?;
                }
                sqlx::query(&format!("ANALYZE TABLE {table}"))
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Stamps row `id` as changed now, with `sent_at_us`, in its own
    /// transaction.
    pub async fn touch(&self, table: &str, id: i64, sent_at_us: i64) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => {
                let sql =
                    format!("UPDATE {table} SET sent_at_us = $1, updated_at = now() WHERE id = $2");
                sqlx::query(&sql)
                    .bind(sent_at_us)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
            Db::Mysql(pool) => {
                let sql =
                    format!("UPDATE {table} SET sent_at_us = ?, updated_at = NOW(6) WHERE id = ?");
                sqlx::query(&sql)
                    .bind(sent_at_us)
                    .bind(id)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Rows the database has read from `table` so far (Postgres), or from
    /// every table (MySQL/MariaDB, which counts no more finely).
    pub async fn rows_read(&self, table: &str) -> anyhow::Result<i64> {
        Ok(match self {
            Db::Postgres(pool) => sqlx::query_scalar(
                "SELECT (coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0))::int8 FROM pg_stat_user_tables \
                 WHERE schemaname = current_schema() AND relname = $1",
            )
            .bind(table)
            .fetch_one(pool)
            .await?,
            // Every row a storage engine handed out, for any table.
            Db::Mysql(pool) => sqlx::query_scalar(
                "SELECT CAST(SUM(VARIABLE_VALUE) AS SIGNED) FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME LIKE 'HANDLER\\_READ\\_%'",
            )
            .fetch_one(pool)
            .await?,
        })
    }

    pub async fn drop_table(&self, table: &str) -> anyhow::Result<()> {
        let sql = format!("DROP TABLE IF EXISTS {table}");
        match self {
            Db::Postgres(pool) => {
                sqlx::query(&sql).execute(pool).await?;
            }
            Db::Mysql(pool) => {
                sqlx::query(&sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Inserts one row in its own transaction; returns its id.
    pub async fn insert(&self, table: &str, sent_at_us: i64, body: &str) -> anyhow::Result<i64> {
        match self {
            Db::Postgres(pool) => {
                let sql =
                    format!("INSERT INTO {table} (sent_at_us, body) VALUES ($1, $2) RETURNING id");
                Ok(sqlx::query_scalar(&sql)
                    .bind(sent_at_us)
                    .bind(body)
                    .fetch_one(pool)
                    .await?)
            }
            Db::Mysql(pool) => {
                let sql = format!("INSERT INTO {table} (sent_at_us, body) VALUES (?, ?)");
                let done = sqlx::query(&sql)
                    .bind(sent_at_us)
                    .bind(body)
                    .execute(pool)
                    .await?;
                Ok(i64::try_from(done.last_insert_id())?)
            }
        }
    }
}

/// Scans of `table` so far, as Postgres counts them (`seq_scan + idx_scan`
/// in `pg_stat_user_tables`): the queries that read it, whoever sent them.
pub async fn table_scans(pool: &PgPool, table: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar(
        "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables \
         WHERE schemaname = current_schema() AND relname = $1",
    )
    .bind(table)
    .fetch_one(pool)
    .await
    .context("cannot read pg_stat_user_tables")
}
