//! The layers settings come in, as written: [`FileConfig`] is both the TOML
//! file's top level and the server's flags, [`FeedFile`] both a `[[feed]]`
//! table and the flags of the `--table` feed. Each setting is declared once,
//! here or in the table of [`super::tuning`], with its flag, its variable,
//! its key and its help; unknown keys are errors, so a typo is caught at
//! start-up rather than silently ignored.

use super::tuning::{layered, tuning_table, Interval};
use super::types::{GapHandling, Mode, Notify};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;

tuning_table!(layered! {
    /// The server's settings: the file's top level, and the flags over it.
    /// The per-feed settings given here apply to every feed.
    #[derive(Debug, Default, Clone, Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FileConfig {
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
        /// Interval of `: keep-alive` comments on a quiet stream [default: 15s].
        #[arg(long, env = "ROWCAST_KEEP_ALIVE")]
        pub keep_alive: Option<Interval>,
        /// Reconnect delay sent to clients in the `retry:` field [default: 3s].
        #[arg(long, env = "ROWCAST_RETRY")]
        pub retry: Option<Interval>,
        /// Most database connections rowcast opens [default: 10].
        #[arg(long, env = "ROWCAST_MAX_CONNECTIONS")]
        pub max_connections: Option<u32>,
        /// Poll batches a client may fall behind the live broadcast before it
        /// is caught up from the replay ring or the database [default: 256].
        #[arg(long, env = "ROWCAST_CLIENT_BUFFER")]
        pub client_buffer: Option<usize>,
        /// Most rows one `/feeds/{feed}/rows` answer may ask for with `limit` [default: 1000].
        #[arg(long, env = "ROWCAST_MAX_LIMIT")]
        pub max_limit: Option<usize>,
        /// Longest `/feeds/{feed}/rows` long-poll a client may ask for with `wait` [default: 60s].
        #[arg(long, env = "ROWCAST_MAX_WAIT")]
        pub max_wait: Option<Interval>,
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
        #[arg(long, env = "ROWCAST_HEADER_TIMEOUT")]
        pub header_timeout: Option<Interval>,
        /// Longest a kept-alive connection may wait for its next request [default: 60s].
        #[arg(long, env = "ROWCAST_IDLE_TIMEOUT")]
        pub idle_timeout: Option<Interval>,
        /// Longest a write to a client may make no progress before the
        /// connection is closed [default: 30s].
        #[arg(long, env = "ROWCAST_SEND_TIMEOUT")]
        pub send_timeout: Option<Interval>,
        /// Most client connections held at once; past it the connection idle
        /// longest makes room [default: what the open-files limit allows].
        #[arg(long, env = "ROWCAST_MAX_CLIENTS")]
        pub max_clients: Option<usize>,
        /// Whether the feeds' fan-out tasks write caught-up streams straight
        /// to their sockets; `false` serves every stream through hyper
        /// (slower at many clients) [default: true].
        #[arg(long, env = "ROWCAST_DIRECT_FANOUT")]
        pub direct_fanout: Option<bool>,
        /// JWT verification (off when absent).
        #[arg(skip)]
        pub auth: Option<crate::auth::AuthFile>,
        /// Several instances on one database: the bus they share.
        #[arg(skip)]
        pub cluster: Option<ClusterFile>,
    }
    tuning flags
    extra {
        /// The feeds, as `[[feed]]` tables.
        #[arg(skip)]
        #[serde(default, rename = "feed")]
        pub feeds: Vec<FeedFile>,
    }
});

tuning_table!(layered! {
    /// One feed's settings: a `[[feed]]` table of the file, or the flags of
    /// the `--table` feed. The per-feed settings it may give besides are
    /// flags of every feed ([`FileConfig`]).
    #[derive(Debug, Default, Clone, PartialEq, Args, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct FeedFile {
        /// Name in URLs and event names (`/events/{name}`) [default: the table name].
        #[arg(long = "feed", env = "ROWCAST_FEED")]
        pub name: Option<String>,
        /// Base table of the feed: its key is checked, its locks and
        /// notifications matter.
        #[arg(long, env = "ROWCAST_TABLE")]
        pub table: Option<String>,
        /// Schema (Postgres) or database (MySQL) of the table [default: the connection's].
        #[arg(long, env = "ROWCAST_SCHEMA")]
        pub schema: Option<String>,
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
        #[serde(rename = "where")]
        pub condition: Option<String>,
        /// View (or table) to read rows from when it differs from `--table`.
        #[arg(long, env = "ROWCAST_FROM")]
        pub from: Option<String>,
        /// SELECT statement to read rows from, e.g. with a join.
        #[arg(long, env = "ROWCAST_SELECT")]
        pub select: Option<String>,
        /// SSE event name of single-feed streams [default: none, so `onmessage` fires].
        #[arg(long, env = "ROWCAST_EVENT")]
        pub event: Option<String>,
        /// SQL returning the highest id the application declares complete.
        #[arg(long, env = "ROWCAST_WATERMARK")]
        pub watermark: Option<String>,
        /// What the feed follows: `append` (new rows, by id) or `changes`
        /// (every insert, update and delete) [default: append].
        #[arg(long, env = "ROWCAST_MODE")]
        pub mode: Option<Mode>,
        /// Changes mode: column stamped on every insert and update [default: `updated_at`].
        #[arg(long, env = "ROWCAST_UPDATED_COLUMN")]
        pub updated_column: Option<String>,
        /// Changes mode: column a soft delete sets [default: `deleted_at`, when present].
        #[arg(long, env = "ROWCAST_DELETED_COLUMN")]
        pub deleted_column: Option<String>,
        /// Gap handling: `hold` (default) or `ignore` (the naive poller, for measurement only).
        #[arg(long, env = "ROWCAST_GAPS")]
        pub gaps: Option<GapHandling>,
        /// Postgres NOTIFY doorbell: `auto` (use the trigger when installed),
        /// `on`/`true` (require it) or `off`/`false` [default: auto].
        #[arg(long, env = "ROWCAST_NOTIFY")]
        pub notify: Option<Notify>,
        /// Track who is connected to each scope of the feed (the feed and a
        /// filter, e.g. a room): `/presence/{feed}`, and `event: presence`
        /// on streams that ask with `?presence=1` [default: false].
        #[arg(long, env = "ROWCAST_PRESENCE")]
        pub presence: Option<bool>,
        /// Presence: token claims a member's entry shows as its `meta`,
        /// comma-separated (the key is the token's `sub`).
        #[arg(long, env = "ROWCAST_PRESENCE_META", value_delimiter = ',')]
        pub presence_meta: Option<Vec<String>>,
        /// Postgres `xid8` column for exact mode [default: `rowcast_txid`, when present].
        #[arg(skip)]
        pub txid_column: Option<String>,
        /// Column whose value `/feeds` reports as the latest row's time
        /// [default: `created_at`, `inserted_at`, or a time-like sent column].
        #[arg(skip)]
        pub timestamp_column: Option<String>,
        /// Claims a token must hold, with these values, to read the feed.
        #[arg(skip)]
        pub auth_require: Option<BTreeMap<String, toml::Value>>,
        /// Filter column → claim whose values bound what a client may ask for.
        #[arg(skip)]
        pub auth_filters: Option<BTreeMap<String, String>>,
        /// What the feed reads: `table` (a table of the database), or
        /// `redis-stream`, `redis-channel` or `nats` [default: table].
        #[arg(skip)]
        pub source: Option<String>,
        /// Redis or NATS server of a feed that is not a table: `redis://…`,
        /// `rediss://…` (TLS), `nats://…` or `tls://…` (NATS over TLS).
        #[arg(skip)]
        pub url: Option<String>,
        /// `redis-stream`: the key of the stream.
        #[arg(skip)]
        pub stream: Option<String>,
        /// `redis-stream`: the entry field holding the JSON payload [default: data].
        #[arg(skip)]
        pub field: Option<String>,
        /// `redis-channel`: the channel, or a pattern when it holds `*`.
        #[arg(skip)]
        pub channel: Option<String>,
        /// `nats`: the subject (JetStream when a stream covers it).
        #[arg(skip)]
        pub subject: Option<String>,
        /// How a Redis or NATS message becomes an event: `json` (the payload
        /// as it is) or `laravel` (a Laravel broadcast: `event` names the
        /// event, `data` is sent) [default: json].
        #[arg(skip)]
        pub format: Option<String>,
    }
    tuning skip
    extra {}
});

/// The `[cluster]` table: several instances that share a bus, so that one
/// of them polls each feed.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// `redis://…`, `rediss://…` (TLS), `nats://…` or `tls://…` (NATS, TLS).
    pub bus: Option<String>,
    /// Start of the bus streams' names, so that deployments can share one
    /// Redis or NATS [default: rowcast].
    pub prefix: Option<String>,
}
