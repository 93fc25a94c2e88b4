//! The validated configuration: typed values the rest of rowcast reads.
//! Nothing here parses; [`super::validate`] builds these from the layers.

use super::tuning::Tuned;
use clap::ValueEnum;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The address served when none is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Validated configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the rows come from; `None` when every feed reads Redis or NATS.
    pub database_url: Option<String>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the operators' listener (`/metrics`, full `/healthz`),
    /// when they have one of their own.
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
    /// Whether caught-up streams are written by the feeds' fan-out tasks
    /// (`false`: every stream is a body hyper writes).
    pub direct_fanout: bool,
    /// The bus shared with other instances; `None`: this instance polls
    /// every feed itself.
    pub cluster: Option<Cluster>,
    /// The feeds, each with a distinct name.
    pub feeds: Vec<FeedConfig>,
}

/// Several instances sharing a bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The bus URL (may hold credentials: never log it whole).
    pub bus: String,
    /// Start of the bus streams' names.
    pub prefix: String,
}

/// Validated configuration of one feed.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    /// Name in URLs and in multi-feed event names.
    pub name: String,
    /// Schema of the base table, if not the connection's default.
    pub schema: Option<String>,
    /// Base table; for a feed of a topic, the stream, channel or subject
    /// it reads (for messages only).
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
    /// The settings that may also be given for every feed.
    pub tuning: Tuned,
    /// How gaps in the ids are treated.
    pub gaps: GapHandling,
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
    /// Who may read which rows (with auth on).
    pub rules: crate::auth::Rules,
    /// What the feed follows: new rows, or every change.
    pub mode: Mode,
    /// Changes mode: the column stamped on every insert and update, when
    /// configured by name (otherwise `updated_at`).
    pub updated_column: Option<String>,
    /// Changes mode: the column set by a soft delete, when configured by
    /// name (otherwise `deleted_at`, if the table has it).
    pub deleted_column: Option<String>,
    /// Where the feed reads when it is not a table: a Redis stream or
    /// channel, or a NATS subject. `None` for a table feed.
    pub topic: Option<Topic>,
    /// Who is connected, when the feed tracks it; `None`: no presence.
    pub presence: Option<PresenceConfig>,
}

/// A feed's presence (its grace and timeout are in the feed's tuning).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceConfig {
    /// Token claims each member's entry shows as its `meta`.
    pub meta: Vec<String>,
}

/// A feed's Redis or NATS topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Which kind of topic, and its name there.
    pub kind: TopicKind,
    /// The server's URL (may hold credentials: never log it whole).
    pub url: String,
    /// How a message's payload becomes an event.
    pub format: Format,
}

/// The kinds of topic a feed can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKind {
    /// A Redis stream, read with `XREAD`; resumable by entry id.
    RedisStream {
        /// The stream's key.
        stream: String,
        /// The entry field whose JSON is the payload.
        field: String,
    },
    /// A Redis pub/sub channel (a pattern when it holds `*`); live only.
    RedisChannel {
        /// The channel or pattern.
        channel: String,
    },
    /// A NATS subject: resumable by stream sequence when a JetStream
    /// stream covers it, live only otherwise.
    Nats {
        /// The subject.
        subject: String,
    },
}

impl TopicKind {
    /// The `source` value of this kind.
    pub fn source(&self) -> &'static str {
        match self {
            TopicKind::RedisStream { .. } => "redis-stream",
            TopicKind::RedisChannel { .. } => "redis-channel",
            TopicKind::Nats { .. } => "nats",
        }
    }

    /// The stream, channel or subject.
    pub fn name(&self) -> &str {
        match self {
            TopicKind::RedisStream { stream, .. } => stream,
            TopicKind::RedisChannel { channel } => channel,
            TopicKind::Nats { subject } => subject,
        }
    }
}

/// How a topic message's payload becomes an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// The payload is the event's JSON.
    #[default]
    Json,
    /// A Laravel broadcast, `{"event":…,"data":{…},"socket":…}`: the
    /// event is named `event` and carries `data`.
    Laravel,
}

/// What a feed follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// New rows, by an increasing id.
    #[default]
    Append,
    /// Every insert, update and delete, as the row's latest state.
    Changes,
}

/// Whether a feed listens for the Postgres NOTIFY doorbell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Notify {
    /// When the trigger is installed (checked at start-up and now and then).
    #[default]
    Auto,
    /// Always: start-up fails without the trigger.
    #[value(alias = "true")]
    On,
    /// Never: polling only.
    #[value(alias = "false")]
    Off,
}

impl<'de> Deserialize<'de> for Notify {
    /// `true`/`false` as the file has always taken them, or a flag's word.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Notify, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Flag(bool),
            Word(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Flag(true) => Ok(Notify::On),
            Written::Flag(false) => Ok(Notify::Off),
            Written::Word(word) => Notify::from_str(&word, true).map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{word}` is not a choice; valid: true, false, auto, on, off"
                ))
            }),
        }
    }
}

/// How gaps in a feed's ids are treated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GapHandling {
    /// Hold rows after a gap until it settles.
    #[default]
    Hold,
    /// Pass over gaps at once: the naive `id > last` poller, which loses
    /// rows that commit out of order. For measurement only.
    Ignore,
}

/// A feed's row source when it is not the base table.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadFrom {
    /// A view or table in the same schema.
    Relation(String),
    /// A SELECT statement, wrapped as a subquery.
    Select(String),
}
