//! Configuration: command-line flags and environment variables, merged over an
//! optional TOML file, then validated into typed values.
//!
//! Parsing ([`ServeArgs`], [`FileConfig`]) and validation ([`Config`]) are
//! separate steps, as in ripgrep's low-level and high-level arguments. This
//! module never touches the database: identifiers are checked here for shape
//! only and against the catalog later, by `source`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

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

/// Flags of `rowcast serve` and `rowcast check`. Every one overrides the
/// configuration file; the per-feed ones describe the `--table` feed.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file declaring server settings and feeds.
    #[arg(long, short, env = "ROWCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL: postgres://…, mysql://… (also MariaDB) or sqlite://path.db
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ROWCAST_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address that serves `/metrics` and the full `/healthz`, apart from
    /// clients [default: none, both on `--listen`].
    #[arg(long, env = "ROWCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve a feed of this table, named after it.
    #[arg(long, env = "ROWCAST_TABLE")]
    pub table: Option<String>,
    /// Schema (Postgres) or database (MySQL) of the table [default: the connection's].
    #[arg(long, env = "ROWCAST_SCHEMA")]
    pub schema: Option<String>,
    /// Name of the `--table` feed [default: the table name].
    #[arg(long, env = "ROWCAST_FEED")]
    pub feed: Option<String>,
    /// Increasing integer column that orders the rows [default: the primary key].
    #[arg(long, env = "ROWCAST_ID_COLUMN")]
    pub id_column: Option<String>,
    /// Columns to send, comma-separated [default: all].
    #[arg(long, env = "ROWCAST_COLUMNS", value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Columns clients may filter on, comma-separated.
    #[arg(long, env = "ROWCAST_FILTER_COLUMNS", value_delimiter = ',')]
    pub filter_columns: Option<Vec<String>>,
    /// Static SQL condition a row must meet to be sent, e.g. "type = 'message'".
    #[arg(long = "where", env = "ROWCAST_WHERE")]
    pub condition: Option<String>,
    /// View (or table) to read rows from when it differs from `--table`.
    #[arg(long, env = "ROWCAST_FROM")]
    pub from: Option<String>,
    /// SELECT statement to read rows from, e.g. with a join.
    #[arg(long, env = "ROWCAST_SELECT")]
    pub select: Option<String>,
    /// SSE event name for the `--table` feed [default: none, so `onmessage` fires].
    #[arg(long, env = "ROWCAST_EVENT")]
    pub event: Option<String>,
    /// Shortest interval between polls, used while rows flow [default: 100ms].
    #[arg(long, env = "ROWCAST_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Longest interval between polls, reached when the table is idle [default: 1s].
    #[arg(long, env = "ROWCAST_MAX_POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub max_poll_interval: Option<Duration>,
    /// Rows read per query [default: 500].
    #[arg(long, env = "ROWCAST_BATCH_SIZE")]
    pub batch_size: Option<u32>,
    /// Recent events kept in memory per feed for reconnecting clients [default: 10000].
    #[arg(long, env = "ROWCAST_RING_SIZE")]
    pub ring_size: Option<usize>,
    /// Shortest time a gap in the ids stays open before what is missing is
    /// passed over [default: 1s].
    #[arg(long, env = "ROWCAST_GAP_GRACE", value_parser = humantime::parse_duration)]
    pub gap_grace: Option<Duration>,
    /// Longest time rows are held back behind a gap [default: 30s].
    #[arg(long, env = "ROWCAST_HOLD_CAP", value_parser = humantime::parse_duration)]
    pub hold_cap: Option<Duration>,
    /// Interval of re-checks for rows that commit after their gap was passed over [default: 15s].
    #[arg(long, env = "ROWCAST_LATE_CHECK_INTERVAL", value_parser = humantime::parse_duration)]
    pub late_check_interval: Option<Duration>,
    /// Interval of polls while the Postgres NOTIFY doorbell works [default: 30s].
    #[arg(long, env = "ROWCAST_NOTIFY_INTERVAL", value_parser = humantime::parse_duration)]
    pub notify_interval: Option<Duration>,
    /// Shortest time between two polls the NOTIFY doorbell starts: rings
    /// within it are served by one poll [default: 10ms].
    #[arg(long, env = "ROWCAST_NOTIFY_WINDOW", value_parser = humantime::parse_duration)]
    pub notify_window: Option<Duration>,
    /// Postgres NOTIFY doorbell of the `--table` feed: `auto` (use the trigger
    /// when installed), `on` (require it) or `off` [default: auto].
    #[arg(long, env = "ROWCAST_NOTIFY")]
    pub notify: Option<String>,
    /// SQL returning the highest id the application declares complete (for the `--table` feed).
    #[arg(long, env = "ROWCAST_WATERMARK")]
    pub watermark: Option<String>,
    /// Gap handling of the `--table` feed: `hold` (default) or `ignore` (the naive poller, for measurement).
    #[arg(long, env = "ROWCAST_GAPS")]
    pub gaps: Option<String>,
    /// Interval of `: keep-alive` comments on a quiet stream [default: 15s].
    #[arg(long, env = "ROWCAST_KEEP_ALIVE", value_parser = humantime::parse_duration)]
    pub keep_alive: Option<Duration>,
    /// Reconnect delay sent to clients in the `retry:` field [default: 3s].
    #[arg(long, env = "ROWCAST_RETRY", value_parser = humantime::parse_duration)]
    pub retry: Option<Duration>,
    /// Most database connections rowcast opens [default: 10].
    #[arg(long, env = "ROWCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Poll batches a client may fall behind the live broadcast before it is
    /// caught up from the replay ring or the database [default: 256].
    #[arg(long, env = "ROWCAST_CLIENT_BUFFER")]
    pub client_buffer: Option<usize>,
    /// Most rows one `/feeds/{feed}/rows` answer may ask for with `limit` [default: 1000].
    #[arg(long, env = "ROWCAST_MAX_LIMIT")]
    pub max_limit: Option<usize>,
    /// Longest `/feeds/{feed}/rows` long-poll a client may ask for with `wait` [default: 60s].
    #[arg(long, env = "ROWCAST_MAX_WAIT", value_parser = humantime::parse_duration)]
    pub max_wait: Option<Duration>,
    /// Origins browsers may call from, comma-separated (`*`: any, only with auth off).
    #[arg(long, env = "ROWCAST_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Option<Vec<String>>,
    /// Most open streams per token subject [default: 0, no limit].
    #[arg(long, env = "ROWCAST_MAX_STREAMS_PER_SUBJECT")]
    pub max_streams_per_subject: Option<usize>,
    /// Most open streams per client address [default: 0, no limit].
    #[arg(long, env = "ROWCAST_MAX_STREAMS_PER_IP")]
    pub max_streams_per_ip: Option<usize>,
    /// Longest a new connection may take to send its first request head [default: 10s].
    #[arg(long, env = "ROWCAST_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Longest a kept-alive connection may wait for its next request [default: 60s].
    #[arg(long, env = "ROWCAST_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Longest a write to a client may make no progress before the
    /// connection is closed [default: 30s].
    #[arg(long, env = "ROWCAST_SEND_TIMEOUT", value_parser = humantime::parse_duration)]
    pub send_timeout: Option<Duration>,
    /// Most client connections held at once; past it the connection idle
    /// longest makes room [default: what the open-files limit allows].
    #[arg(long, env = "ROWCAST_MAX_CLIENTS")]
    pub max_clients: Option<usize>,
    /// HS256 secret that verifies clients' JWTs (turns auth on; see `[auth]`).
    #[arg(long, env = "ROWCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

/// The TOML file, as written. Unknown keys are errors, so a typo is caught
/// at start-up rather than silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Database URL (the `DATABASE_URL` environment variable or flag wins).
    pub database_url: Option<String>,
    /// Address to listen on.
    pub listen: Option<SocketAddr>,
    /// Address of `/metrics` and the full `/healthz`.
    pub metrics_listen: Option<SocketAddr>,
    /// Interval of keep-alive comments.
    #[serde(default, with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
    /// Reconnect delay sent to clients.
    #[serde(default, with = "humantime_serde")]
    pub retry: Option<Duration>,
    /// Most database connections.
    pub max_connections: Option<u32>,
    /// Poll batches a client may fall behind the live broadcast.
    pub client_buffer: Option<usize>,
    /// Most rows one `/rows` answer may ask for.
    pub max_limit: Option<usize>,
    /// Longest `/rows` long-poll.
    #[serde(default, with = "humantime_serde")]
    pub max_wait: Option<Duration>,
    // Defaults for every feed. (Not a flattened `FeedTuning`: serde cannot
    // combine `flatten` with `deny_unknown_fields`.)
    /// Shortest interval between polls.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Longest interval between polls.
    #[serde(default, with = "humantime_serde")]
    pub max_poll_interval: Option<Duration>,
    /// Rows read per query.
    pub batch_size: Option<u32>,
    /// Events kept in memory for reconnecting clients.
    pub ring_size: Option<usize>,
    /// Shortest time a gap in the ids stays open before what is missing is
    /// passed over.
    #[serde(default, with = "humantime_serde")]
    pub gap_grace: Option<Duration>,
    /// Longest time rows are held back behind a gap.
    #[serde(default, with = "humantime_serde")]
    pub hold_cap: Option<Duration>,
    /// Interval of re-checks for rows that commit after their gap was passed over.
    #[serde(default, with = "humantime_serde")]
    pub late_check_interval: Option<Duration>,
    /// Interval of polls while the Postgres NOTIFY doorbell works.
    #[serde(default, with = "humantime_serde")]
    pub notify_interval: Option<Duration>,
    /// Shortest time between two polls the doorbell starts.
    #[serde(default, with = "humantime_serde")]
    pub notify_window: Option<Duration>,
    /// JWT verification (off when absent).
    pub auth: Option<crate::auth::AuthFile>,
    /// Origins browsers may call from.
    pub cors_origins: Option<Vec<String>>,
    /// Most open streams per token subject.
    pub max_streams_per_subject: Option<usize>,
    /// Most open streams per client address.
    pub max_streams_per_ip: Option<usize>,
    /// Longest a new connection may take to send its first request head.
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    /// Longest a kept-alive connection may wait for its next request.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Longest a write to a client may make no progress.
    #[serde(default, with = "humantime_serde")]
    pub send_timeout: Option<Duration>,
    /// Most client connections held at once.
    pub max_clients: Option<usize>,
    /// The feeds, as `[[feed]]` tables.
    #[serde(default, rename = "feed")]
    pub feeds: Vec<FeedFile>,
}

/// Per-feed settings that may also be given once for all feeds.
#[derive(Debug, Default, Clone)]
pub struct FeedTuning {
    /// Shortest interval between polls.
    pub poll_interval: Option<Duration>,
    /// Longest interval between polls.
    pub max_poll_interval: Option<Duration>,
    /// Rows read per query.
    pub batch_size: Option<u32>,
    /// Events kept in memory for reconnecting clients.
    pub ring_size: Option<usize>,
    /// Shortest time a gap stays open.
    pub gap_grace: Option<Duration>,
    /// Longest time rows are held back behind a gap.
    pub hold_cap: Option<Duration>,
    /// Interval of late-row re-checks.
    pub late_check_interval: Option<Duration>,
    /// Interval of polls while the NOTIFY doorbell works.
    pub notify_interval: Option<Duration>,
    /// Shortest time between two polls the doorbell starts.
    pub notify_window: Option<Duration>,
}

macro_rules! tuning_of {
    ($source:expr) => {
        FeedTuning {
            poll_interval: $source.poll_interval,
            max_poll_interval: $source.max_poll_interval,
            batch_size: $source.batch_size,
            ring_size: $source.ring_size,
            gap_grace: $source.gap_grace,
            hold_cap: $source.hold_cap,
            late_check_interval: $source.late_check_interval,
            notify_interval: $source.notify_interval,
            notify_window: $source.notify_window,
        }
    };
}

/// One `[[feed]]` table of the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedFile {
    /// Name in URLs (`/events/{name}`); defaults to the table name.
    pub name: Option<String>,
    /// Base table: its key is checked, its locks and notifications matter.
    pub table: Option<String>,
    /// Schema (Postgres) or database (MySQL) of the table.
    pub schema: Option<String>,
    /// Increasing integer column.
    pub id_column: Option<String>,
    /// Columns to send.
    pub columns: Option<Vec<String>>,
    /// Columns clients may filter on.
    pub filter_columns: Option<Vec<String>>,
    /// Static row condition (SQL).
    #[serde(rename = "where")]
    pub condition: Option<String>,
    /// View or table to read rows from.
    pub from: Option<String>,
    /// SELECT to read rows from.
    pub select: Option<String>,
    /// SSE event name.
    pub event: Option<String>,
    /// Shortest interval between polls.
    #[serde(default, with = "humantime_serde")]
    pub poll_interval: Option<Duration>,
    /// Longest interval between polls.
    #[serde(default, with = "humantime_serde")]
    pub max_poll_interval: Option<Duration>,
    /// Rows read per query.
    pub batch_size: Option<u32>,
    /// Events kept in memory for reconnecting clients.
    pub ring_size: Option<usize>,
    /// Shortest time a gap in the ids stays open before what is missing is
    /// passed over.
    #[serde(default, with = "humantime_serde")]
    pub gap_grace: Option<Duration>,
    /// Longest time rows are held back behind a gap.
    #[serde(default, with = "humantime_serde")]
    pub hold_cap: Option<Duration>,
    /// Interval of re-checks for rows that commit after their gap was passed over.
    #[serde(default, with = "humantime_serde")]
    pub late_check_interval: Option<Duration>,
    /// Interval of polls while the Postgres NOTIFY doorbell works.
    #[serde(default, with = "humantime_serde")]
    pub notify_interval: Option<Duration>,
    /// Shortest time between two polls the doorbell starts.
    #[serde(default, with = "humantime_serde")]
    pub notify_window: Option<Duration>,
    /// SQL returning the highest id the application declares complete.
    pub watermark: Option<String>,
    /// `hold` (default) or `ignore` (the naive poller, for measurement).
    pub gaps: Option<String>,
    /// Postgres `xid8` column for exact mode [default: `rowcast_txid`, when present].
    pub txid_column: Option<String>,
    /// Postgres NOTIFY doorbell: `true` requires the trigger, `false` never
    /// listens [default: use the trigger when it is installed].
    pub notify: Option<bool>,
    /// Column whose value `/feeds` reports as the latest row's time
    /// [default: `created_at`, `inserted_at` or `updated_at`, if sent].
    pub timestamp_column: Option<String>,
    /// Claims a token must hold, with these values, to read the feed.
    pub auth_require: Option<std::collections::BTreeMap<String, toml::Value>>,
    /// Filter column → claim whose values bound what a client may ask for.
    pub auth_filters: Option<std::collections::BTreeMap<String, String>>,
}

/// A configuration mistake, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("no database: set --database-url, DATABASE_URL or `database_url` in the config file")]
    NoDatabase,
    #[error("no feed: give --table, or declare [[feed]] tables in the config file")]
    NoFeeds,
    #[error("feed {index}: `table` is missing")]
    NoTable { index: usize },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error(transparent)]
    Auth(#[from] crate::auth::ConfigError),
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Error {
    Error::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the rows come from.
    pub database_url: String,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of `/metrics` and the full `/healthz`, apart from clients;
    /// `None`: both on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// Interval of keep-alive comments on quiet streams.
    pub keep_alive: Duration,
    /// Reconnect delay sent to clients.
    pub retry: Duration,
    /// Most database connections.
    pub max_connections: u32,
    /// Poll batches a client may fall behind the live broadcast before it is
    /// caught up from the ring or the database.
    pub client_buffer: usize,
    /// Most rows one `/rows` answer may ask for.
    pub max_limit: usize,
    /// Longest `/rows` long-poll.
    pub max_wait: Duration,
    /// Verifies clients' tokens; `None` when auth is off.
    pub auth: Option<crate::auth::Auth>,
    /// Origins browsers may call from.
    pub cors_origins: Vec<String>,
    /// Most open streams per token subject (0: no limit).
    pub max_streams_per_subject: usize,
    /// Most open streams per client address (0: no limit).
    pub max_streams_per_ip: usize,
    /// Longest a new connection may take to send its first request head.
    pub header_timeout: Duration,
    /// Longest a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest a write to a client may make no progress.
    pub send_timeout: Duration,
    /// Most client connections held at once; `None`: what the open-files
    /// limit allows.
    pub max_clients: Option<usize>,
    /// The feeds, each with a distinct name.
    pub feeds: Vec<FeedConfig>,
}

/// Validated configuration of one feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    /// Name in URLs and in multi-feed event names.
    pub name: String,
    /// Schema of the base table, if not the connection's default.
    pub schema: Option<String>,
    /// Base table.
    pub table: String,
    /// Cursor column, or `None` to use the primary key.
    pub id_column: Option<String>,
    /// Columns to send, or `None` for all.
    pub columns: Option<Vec<String>>,
    /// Columns clients may filter on.
    pub filter_columns: Vec<String>,
    /// Static row condition.
    pub condition: Option<String>,
    /// Where rows are read from, when not the base table itself.
    pub read_from: Option<ReadFrom>,
    /// SSE event name of single-feed streams.
    pub event: Option<String>,
    /// Shortest interval between polls.
    pub poll_interval: Duration,
    /// Longest interval between polls.
    pub max_poll_interval: Duration,
    /// Rows per query.
    pub batch_size: u32,
    /// Events kept in memory for reconnecting clients.
    pub ring_size: usize,
    /// How gaps in the ids are treated.
    pub gaps: crate::gap::GapMode,
    /// Shortest time a gap stays open.
    pub gap_grace: Duration,
    /// Longest time rows are held back behind a gap.
    pub hold_cap: Duration,
    /// Interval of late-row re-checks.
    pub late_check_interval: Duration,
    /// SQL returning the highest id the application declares complete.
    pub watermark: Option<String>,
    /// The `xid8` column of exact mode, when configured by name (otherwise
    /// `rowcast_txid` is used if the table has it).
    pub txid_column: Option<String>,
    /// Whether to listen for the Postgres NOTIFY doorbell.
    pub notify: Notify,
    /// Column whose value `/feeds` reports as the latest row's time, when
    /// configured by name.
    pub timestamp_column: Option<String>,
    /// Interval of polls while the doorbell works.
    pub notify_interval: Duration,
    /// Shortest time between two polls the doorbell starts: rings within
    /// it are served by one poll.
    pub notify_window: Duration,
    /// Who may read which rows (with auth on).
    pub rules: crate::auth::Rules,
}

/// Whether a feed listens for the Postgres NOTIFY doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// When the trigger is installed (checked at start-up and now and then).
    Auto,
    /// Always: start-up fails without the trigger.
    On,
    /// Never: polling only.
    Off,
}

/// A feed's row source when it is not the base table.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadFrom {
    /// A view or table in the same schema.
    Relation(String),
    /// A SELECT statement, wrapped as a subquery.
    Select(String),
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Config {
    /// Reads the file named by `--config`, if any, and merges the flags over it.
    pub fn load(args: &ServeArgs) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| Error::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    /// Merges flags over the file and validates the result.
    pub fn merge(args: &ServeArgs, file: FileConfig) -> Result<Config, Error> {
        let database_url = args
            .database_url
            .clone()
            .or(file.database_url)
            .filter(|url| !url.trim().is_empty())
            .ok_or(Error::NoDatabase)?;
        let flag_tuning = tuning_of!(args);
        let defaults = tuning_of!(file);

        let mut feeds = file.feeds;
        let flag_feed = flag_feed(args)?;
        if let Some(table) = &args.table {
            let name = flag_feed.name.clone().unwrap_or_else(|| table.clone());
            // A `--table` feed replaces a file feed of the same name.
            feeds.retain(|f| f.name.as_ref().or(f.table.as_ref()) != Some(&name));
            feeds.push(flag_feed);
        } else if let Some(name) = &args.feed {
            // `--feed NAME` alone: the flags override keys of a file feed.
            let names: Vec<&str> = feeds
                .iter()
                .filter_map(|f| f.name.as_ref().or(f.table.as_ref()))
                .map(String::as_str)
                .collect();
            let known = names.join(", ");
            let Some(feed) = feeds
                .iter_mut()
                .find(|f| f.name.as_ref().or(f.table.as_ref()) == Some(name))
            else {
                return Err(invalid(
                    "--feed",
                    format!("no feed `{name}` to apply the per-feed flags to; feeds of the config file: {}; give --table to declare a new feed", if known.is_empty() { "(none)" } else { &known }),
                ));
            };
            feed.overlay(flag_feed);
        } else if has_feed_flags(args) {
            return Err(invalid(
                "--table",
                "per-feed flags (--id-column, --columns, --where, …) need --table (a new feed) or --feed NAME (a feed of the config file)",
            ));
        }
        if feeds.is_empty() {
            return Err(Error::NoFeeds);
        }

        let feeds = feeds
            .into_iter()
            .enumerate()
            .map(|(i, f)| validate_feed(i, f, &flag_tuning, &defaults))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, feed) in feeds.iter().enumerate() {
            if feeds[..i].iter().any(|other| other.name == feed.name) {
                return Err(invalid(
                    format!("feed `{}`", feed.name),
                    "two feeds share this name; give one a distinct `name`",
                ));
            }
        }

        let max_connections = args.max_connections.or(file.max_connections).unwrap_or(10);
        if max_connections < 2 {
            return Err(invalid("max_connections", "must be at least 2"));
        }
        let client_buffer = args.client_buffer.or(file.client_buffer).unwrap_or(256);
        if client_buffer == 0 {
            return Err(invalid("client_buffer", "must be at least 1"));
        }
        let auth = crate::auth::Auth::from_config(
            &file.auth.clone().unwrap_or_default(),
            args.jwt_secret.clone(),
        )?;
        if auth.is_none() {
            if let Some(feed) = feeds
                .iter()
                .find(|f| !f.rules.require.is_empty() || !f.rules.filters.is_empty())
            {
                return Err(invalid(
                    format!("feed `{}`: `auth_require`/`auth_filters`", feed.name),
                    "need auth: set `[auth]` `secret` or `public_key_file` (or ROWCAST_JWT_SECRET)",
                ));
            }
        }
        let cors_origins = args
            .cors_origins
            .clone()
            .or(file.cors_origins)
            .unwrap_or_default();
        if auth.is_some() && cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "cors_origins",
                "`*` lets any site read the feeds with its visitors' tokens; list the origins when auth is on",
            ));
        }
        let max_limit = args.max_limit.or(file.max_limit).unwrap_or(1000);
        if max_limit == 0 {
            return Err(invalid("max_limit", "must be at least 1"));
        }
        let max_wait = args
            .max_wait
            .or(file.max_wait)
            .unwrap_or(Duration::from_secs(60));
        let keep_alive = args
            .keep_alive
            .or(file.keep_alive)
            .unwrap_or(Duration::from_secs(15));
        if keep_alive.is_zero() {
            return Err(invalid("keep_alive", "must be greater than zero"));
        }
        let timeout = |key: &str, flag: Option<Duration>, file: Option<Duration>, default| {
            let value = flag.or(file).unwrap_or(default);
            match value.is_zero() {
                true => Err(invalid(key, "must be greater than zero")),
                false => Ok(value),
            }
        };
        let header_timeout = timeout(
            "header_timeout",
            args.header_timeout,
            file.header_timeout,
            Duration::from_secs(10),
        )?;
        let idle_timeout = timeout(
            "idle_timeout",
            args.idle_timeout,
            file.idle_timeout,
            Duration::from_secs(60),
        )?;
        let send_timeout = timeout(
            "send_timeout",
            args.send_timeout,
            file.send_timeout,
            Duration::from_secs(30),
        )?;
        let max_clients = args.max_clients.or(file.max_clients);
        if max_clients == Some(0) {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let metrics_listen = args.metrics_listen.or(file.metrics_listen);
        if metrics_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid("metrics_listen", "must differ from `listen`"));
        }
        Ok(Config {
            database_url,
            listen,
            metrics_listen,
            keep_alive,
            retry: args.retry.or(file.retry).unwrap_or(Duration::from_secs(3)),
            max_connections,
            client_buffer,
            max_limit,
            max_wait,
            auth,
            cors_origins,
            max_streams_per_subject: args
                .max_streams_per_subject
                .or(file.max_streams_per_subject)
                .unwrap_or(0),
            max_streams_per_ip: args
                .max_streams_per_ip
                .or(file.max_streams_per_ip)
                .unwrap_or(0),
            header_timeout,
            idle_timeout,
            send_timeout,
            max_clients,
            feeds,
        })
    }
}

/// The per-feed flags, as a feed table.
fn flag_feed(args: &ServeArgs) -> Result<FeedFile, Error> {
    Ok(FeedFile {
        name: args.feed.clone(),
        table: args.table.clone(),
        schema: args.schema.clone(),
        id_column: args.id_column.clone(),
        // `--columns "a, b"`: spaces around commas are the command line's,
        // not the names' (a file's array takes names as written).
        columns: args.columns.as_deref().map(trimmed),
        filter_columns: args.filter_columns.as_deref().map(trimmed),
        condition: args.condition.clone(),
        from: args.from.clone(),
        select: args.select.clone(),
        event: args.event.clone(),
        watermark: args.watermark.clone(),
        gaps: args.gaps.clone(),
        notify: match args.notify.as_deref() {
            None | Some("auto") => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(other) => {
                return Err(invalid(
                    "--notify",
                    format!("`{other}` is not a choice; valid: auto, on, off"),
                ))
            }
        },
        ..FeedFile::default()
    })
}

fn trimmed(names: &[String]) -> Vec<String> {
    names.iter().map(|n| n.trim().to_owned()).collect()
}

impl FeedFile {
    /// Takes every key the flags give over this feed's own.
    fn overlay(&mut self, flags: FeedFile) {
        macro_rules! over {
            ($($key:ident),*) => {$(
                if flags.$key.is_some() {
                    self.$key = flags.$key;
                }
            )*};
        }
        over!(
            schema,
            id_column,
            columns,
            filter_columns,
            condition,
            from,
            select,
            event,
            watermark,
            gaps,
            notify
        );
    }
}

fn has_feed_flags(args: &ServeArgs) -> bool {
    args.schema.is_some()
        || args.feed.is_some()
        || args.id_column.is_some()
        || args.columns.is_some()
        || args.filter_columns.is_some()
        || args.condition.is_some()
        || args.from.is_some()
        || args.select.is_some()
        || args.event.is_some()
        || args.watermark.is_some()
        || args.gaps.is_some()
        || args.notify.is_some()
}

fn validate_feed(
    index: usize,
    file: FeedFile,
    flags: &FeedTuning,
    defaults: &FeedTuning,
) -> Result<FeedConfig, Error> {
    let table = file.table.ok_or(Error::NoTable { index })?;
    let name = file.name.unwrap_or_else(|| table.clone());
    let key = |field: &str| format!("feed `{name}`: `{field}`");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            format!("feed `{name}`: `name`"),
            "use letters, digits, `_` and `-` only (it appears in URLs and event ids)",
        ));
    }
    let identifier = |field: &str, value: String| -> Result<String, Error> {
        if value.trim().is_empty() || value.contains('\0') {
            Err(invalid(key(field), "must be a non-empty identifier"))
        } else {
            Ok(value)
        }
    };
    let identifiers = |field: &str, values: Vec<String>| -> Result<Vec<String>, Error> {
        values.into_iter().map(|v| identifier(field, v)).collect()
    };

    let read_from = match (file.from, file.select) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                key("select"),
                "give either `from` or `select`, not both",
            ))
        }
        (Some(from), None) => Some(ReadFrom::Relation(identifier("from", from)?)),
        (None, Some(select)) if select.trim().is_empty() => {
            return Err(invalid(key("select"), "is empty"))
        }
        (None, Some(select)) => Some(ReadFrom::Select(
            select.trim().trim_end_matches(';').to_owned(),
        )),
        (None, None) => None,
    };
    if let Some(event) = &file.event {
        if event.is_empty() || !crate::sse::is_field_value(event) {
            return Err(invalid(key("event"), "must be one line of text"));
        }
    }
    let condition = file.condition.filter(|c| !c.trim().is_empty());

    let tuning = tuning_of!(file);
    let poll_interval = flags
        .poll_interval
        .or(tuning.poll_interval)
        .or(defaults.poll_interval)
        .unwrap_or(Duration::from_millis(100));
    let max_poll_interval = flags
        .max_poll_interval
        .or(tuning.max_poll_interval)
        .or(defaults.max_poll_interval)
        .unwrap_or(Duration::from_secs(1))
        .max(poll_interval);
    if poll_interval.is_zero() {
        return Err(invalid(key("poll_interval"), "must be greater than zero"));
    }
    let batch_size = flags
        .batch_size
        .or(tuning.batch_size)
        .or(defaults.batch_size)
        .unwrap_or(500);
    if !(1..=100_000).contains(&batch_size) {
        return Err(invalid(key("batch_size"), "must be between 1 and 100000"));
    }
    let ring_size = flags
        .ring_size
        .or(tuning.ring_size)
        .or(defaults.ring_size)
        .unwrap_or(10_000);

    let pick = |flag: Option<Duration>, feed: Option<Duration>, all: Option<Duration>, default| {
        flag.or(feed).or(all).unwrap_or(default)
    };
    let gap_grace = pick(
        flags.gap_grace,
        tuning.gap_grace,
        defaults.gap_grace,
        Duration::from_secs(1),
    );
    let hold_cap = pick(
        flags.hold_cap,
        tuning.hold_cap,
        defaults.hold_cap,
        Duration::from_secs(30),
    );
    if hold_cap < gap_grace {
        return Err(invalid(
            key("hold_cap"),
            "must not be shorter than `gap_grace`",
        ));
    }
    let late_check_interval = pick(
        flags.late_check_interval,
        tuning.late_check_interval,
        defaults.late_check_interval,
        Duration::from_secs(15),
    );
    if late_check_interval.is_zero() {
        return Err(invalid(
            key("late_check_interval"),
            "must be greater than zero",
        ));
    }
    let gaps = match file.gaps.as_deref() {
        None | Some("hold") => crate::gap::GapMode::Hold,
        Some("ignore") => crate::gap::GapMode::Ignore,
        Some(other) => {
            return Err(invalid(
                key("gaps"),
                format!("`{other}` is not a gap mode; valid: hold, ignore"),
            ))
        }
    };
    let watermark = file
        .watermark
        .map(|w| w.trim().trim_end_matches(';').to_owned())
        .filter(|w| !w.is_empty());

    let notify_interval = pick(
        flags.notify_interval,
        tuning.notify_interval,
        defaults.notify_interval,
        Duration::from_secs(30),
    )
    .max(poll_interval);
    let notify_window = pick(
        flags.notify_window,
        tuning.notify_window,
        defaults.notify_window,
        Duration::from_millis(10),
    );
    let notify = match file.notify {
        None => Notify::Auto,
        Some(true) => Notify::On,
        Some(false) => Notify::Off,
    };

    let mut rules = crate::auth::Rules::default();
    for (claim, value) in file.auth_require.unwrap_or_default() {
        let value =
            serde_json::to_value(value).map_err(|e| invalid(key("auth_require"), e.to_string()))?;
        rules.require.insert(claim, value);
    }
    for (column, claim) in file.auth_filters.unwrap_or_default() {
        if !file.filter_columns.iter().flatten().any(|c| *c == column) {
            return Err(invalid(
                key("auth_filters"),
                format!("`{column}` must also be one of `filter_columns`"),
            ));
        }
        rules.filters.insert(column, claim);
    }

    Ok(FeedConfig {
        rules,
        timestamp_column: file
            .timestamp_column
            .map(|c| identifier("timestamp_column", c))
            .transpose()?,
        notify,
        notify_interval,
        notify_window,
        txid_column: file
            .txid_column
            .map(|c| identifier("txid_column", c))
            .transpose()?,
        gaps,
        gap_grace,
        hold_cap,
        late_check_interval,
        watermark,
        schema: file.schema.map(|s| identifier("schema", s)).transpose()?,
        table: identifier("table", table)?,
        id_column: file
            .id_column
            .map(|c| identifier("id_column", c))
            .transpose()?,
        columns: file
            .columns
            .map(|c| identifiers("columns", c))
            .transpose()?,
        filter_columns: identifiers("filter_columns", file.filter_columns.unwrap_or_default())?,
        condition,
        read_from,
        event: file.event,
        poll_interval,
        max_poll_interval,
        batch_size,
        ring_size,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(table: Option<&str>) -> ServeArgs {
        ServeArgs {
            database_url: Some("sqlite://x.db".into()),
            table: table.map(Into::into),
            ..ServeArgs::default()
        }
    }

    fn file(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn table_flag_alone_makes_a_feed_with_defaults() {
        let config = Config::merge(&args(Some("messages")), FileConfig::default()).unwrap();
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(config.feeds.len(), 1);
        let feed = &config.feeds[0];
        assert_eq!(feed.name, "messages");
        assert_eq!(feed.table, "messages");
        assert_eq!(feed.batch_size, 500);
        assert_eq!(feed.poll_interval, Duration::from_millis(100));
        assert_eq!(feed.event, None);
    }

    #[test]
    fn flags_override_the_file() {
        let file = file(
            r#"
            database_url = "postgres://file"
            poll_interval = "2s"
            batch_size = 50
            [[feed]]
            table = "orders"
            batch_size = 10
            "#,
        )
        .unwrap();
        let mut a = args(None);
        a.batch_size = Some(7);
        let config = Config::merge(&a, file).unwrap();
        assert_eq!(config.database_url, "sqlite://x.db");
        assert_eq!(config.feeds[0].batch_size, 7);
        assert_eq!(config.feeds[0].poll_interval, Duration::from_secs(2));
    }

    #[test]
    fn feed_value_beats_file_default() {
        let file = file("batch_size = 50\n[[feed]]\ntable = \"a\"\nbatch_size = 10\n").unwrap();
        let config = Config::merge(&args(None), file).unwrap();
        assert_eq!(config.feeds[0].batch_size, 10);
    }

    #[test]
    fn unknown_key_is_named_with_the_valid_ones() {
        let err = file("[[feed]]\ntable = \"a\"\nid_colum = \"x\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `id_colum`"), "{text}");
        assert!(text.contains("id_column"), "{text}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[[feed]]\ntable = \"a\"\nname = \"a b\"\n",
                "feed `a b`: `name`",
            ),
            (
                "[[feed]]\ntable = \"a\"\nbatch_size = 0\n",
                "feed `a`: `batch_size`",
            ),
            (
                "[[feed]]\ntable = \"a\"\nfrom = \"v\"\nselect = \"select 1\"\n",
                "feed `a`: `select`",
            ),
            (
                "[[feed]]\ntable = \"a\"\nevent = \"x\\ny\"\n",
                "feed `a`: `event`",
            ),
            (
                "[[feed]]\ntable = \"a\"\n[[feed]]\ntable = \"a\"\n",
                "feed `a`",
            ),
            ("[[feed]]\nname = \"x\"\n", "feed 0: `table` is missing"),
        ];
        for (text, key) in cases {
            let err = Config::merge(&args(None), file(text).unwrap()).unwrap_err();
            assert!(err.to_string().starts_with(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn missing_database_and_feeds_are_explained() {
        let err = Config::merge(&ServeArgs::default(), FileConfig::default()).unwrap_err();
        assert!(matches!(err, Error::NoDatabase));
        let err = Config::merge(&args(None), FileConfig::default()).unwrap_err();
        assert!(matches!(err, Error::NoFeeds));
        let mut a = args(None);
        a.id_column = Some("x".into());
        let err = Config::merge(&a, FileConfig::default()).unwrap_err();
        assert!(err.to_string().starts_with("--table:"), "{err}");
    }

    #[test]
    fn feed_flag_overrides_keys_of_a_file_feed() {
        let text =
            "[[feed]]\nname = \"events\"\ntable = \"events\"\nfilter_columns = [\"room_id\"]\n";
        let mut a = args(None);
        a.feed = Some("events".into());
        a.watermark = Some("SELECT max(stream_id) FROM stream_positions".into());
        let config = Config::merge(&a, file(text).unwrap()).unwrap();
        let feed = &config.feeds[0];
        assert_eq!(
            feed.watermark.as_deref(),
            Some("SELECT max(stream_id) FROM stream_positions")
        );
        assert_eq!(feed.filter_columns, ["room_id"]);
        assert_eq!(feed.table, "events");

        a.feed = Some("evnts".into());
        let err = Config::merge(&a, file(text).unwrap()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--feed: no feed `evnts` to apply the per-feed flags to; feeds of the config file: events; \
             give --table to declare a new feed"
        );
    }

    #[test]
    fn metrics_listen_comes_from_the_file_or_the_flag() {
        let config = Config::merge(&args(Some("a")), FileConfig::default()).unwrap();
        assert_eq!(config.metrics_listen, None);
        let text = "metrics_listen = \"127.0.0.1:9090\"\n";
        let config = Config::merge(&args(Some("a")), file(text).unwrap()).unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
        let mut a = args(Some("a"));
        a.metrics_listen = Some("10.0.0.1:9100".parse().unwrap());
        let config = Config::merge(&a, file(text).unwrap()).unwrap();
        assert_eq!(
            config.metrics_listen,
            Some("10.0.0.1:9100".parse().unwrap())
        );
        a.listen = a.metrics_listen;
        let err = Config::merge(&a, FileConfig::default()).unwrap_err();
        assert_eq!(err.to_string(), "metrics_listen: must differ from `listen`");

        let cli = Cli::try_parse_from(["rowcast", "serve", "--metrics-listen", "127.0.0.1:9090"])
            .unwrap();
        let Command::Serve(flags) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            flags.metrics_listen,
            Some("127.0.0.1:9090".parse().unwrap())
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let file = file(include_str!("../rowcast.example.toml")).unwrap();
        let config = Config::merge(&args(None), file).unwrap();
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.feeds[0].notify_window, Duration::from_millis(10));
    }

    #[test]
    fn select_loses_its_trailing_semicolon() {
        let file = file("[[feed]]\ntable = \"a\"\nselect = \"SELECT * FROM a;\"\n").unwrap();
        let config = Config::merge(&args(None), file).unwrap();
        assert_eq!(
            config.feeds[0].read_from,
            Some(ReadFrom::Select("SELECT * FROM a".into()))
        );
    }
}
