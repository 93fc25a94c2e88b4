//! The `rowcast` command line: the subcommands and the flags of those that
//! are not `serve` and `check` (whose flags are the configuration's, in
//! [`crate::config::ServeArgs`]).

use crate::config::{Interval, ServeArgs};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

/// Turn a database table into a live Server-Sent Events feed.
#[derive(Debug, Parser)]
#[command(name = "rowcast", version, about)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, env = "ROWCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the configured feeds over HTTP.
    Serve(ServeArgs),
    /// Check the configuration against the database, print each feed's query, and exit.
    Check(ServeArgs),
    /// Run a self-contained demo: an embedded SQLite database, a writer, and a live page.
    Demo(DemoArgs),
    /// Print optional SQL for the database (rowcast never applies it by itself).
    #[command(subcommand)]
    Sql(SqlCommand),
}

/// What `rowcast sql` prints.
#[derive(Debug, Subcommand)]
pub enum SqlCommand {
    /// Postgres exact mode: a transaction-id column and index, so that rows are
    /// read in commit order whatever allocates their ids.
    Txid(SqlTableArgs),
    /// Postgres NOTIFY doorbell: a statement-level trigger that makes rowcast
    /// poll as soon as the table changes.
    Notify(SqlNotifyArgs),
    /// Hard deletes for `changes` feeds: a row-level trigger that records each
    /// deleted row in `rowcast_deletes` (Postgres, MySQL/MariaDB, SQLite).
    Deletes(SqlDeletesArgs),
}

/// Flags of `rowcast sql deletes`.
#[derive(Debug, Clone, Args)]
pub struct SqlDeletesArgs {
    /// The table whose deleted rows are recorded.
    #[arg(long)]
    pub table: String,
    /// Its schema (MySQL: database), where `rowcast_deletes` is created too
    /// [default: the connection's].
    #[arg(long)]
    pub schema: Option<String>,
    /// The column that names a deleted row [default: the primary key].
    #[arg(long)]
    pub id_column: Option<String>,
    /// How long the table's deleted rows are kept (whole seconds, at least 1s).
    #[arg(long, default_value = "7d", value_parser = retention)]
    pub retention: Interval,
    /// Print the SQL that removes the trigger instead.
    #[arg(long)]
    pub remove: bool,
    /// Run the SQL on the database as well as printing it.
    #[arg(long)]
    pub apply: bool,
    /// Database whose catalog lists the table's columns (and to apply to).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

/// A retention of at least a second: the trigger counts in whole seconds,
/// and none at all would delete records before a feed reads them.
fn retention(text: &str) -> Result<Interval, String> {
    let retention: Interval = text.parse().map_err(|e| format!("{e}"))?;
    if retention.0.as_secs() == 0 {
        return Err("must be at least 1s".to_owned());
    }
    Ok(retention)
}

/// Flags of `rowcast sql notify`.
#[derive(Debug, Clone, Args)]
pub struct SqlNotifyArgs {
    #[command(flatten)]
    pub table: SqlTableArgs,
    /// Print the SQL that removes the trigger instead.
    #[arg(long)]
    pub remove: bool,
    /// Run the SQL on the database as well as printing it.
    #[arg(long)]
    pub apply: bool,
    /// Database to apply it to (with --apply).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

/// The table `rowcast sql` writes SQL for.
#[derive(Debug, Clone, Args)]
pub struct SqlTableArgs {
    /// The table.
    #[arg(long)]
    pub table: String,
    /// Its schema [default: the connection's].
    #[arg(long)]
    pub schema: Option<String>,
    /// Its increasing integer column.
    #[arg(long, default_value = "id")]
    pub id_column: String,
}

/// Flags of `rowcast demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, env = "ROWCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// SQLite file for the demo (created and migrated if missing).
    #[arg(long, env = "ROWCAST_DEMO_DB")]
    pub database_file: Option<PathBuf>,
    /// Sample messages written per second.
    #[arg(long, default_value_t = 3.0)]
    pub rate: f64,
}
