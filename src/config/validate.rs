//! From the layers to a [`Config`]: the flags over the file, each feed's
//! per-feed settings over the file's defaults, every value checked. Start-up
//! errors name the key at fault and, where there are choices, list them.

use super::file::{FeedFile, FileConfig};
use super::flags::ServeArgs;
use super::tuning::{Interval, Tuning};
use super::types::{Cluster, Config, FeedConfig, Mode, ReadFrom, DEFAULT_LISTEN};
use std::path::PathBuf;
use std::time::Duration;

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

/// The duration of a layered setting, or `default`; never zero.
fn positive(key: &str, value: Option<Interval>, default: Duration) -> Result<Duration, Error> {
    match value.map_or(default, |v| v.0) {
        value if value.is_zero() => Err(invalid(key, "must be greater than zero")),
        value => Ok(value),
    }
}

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
    pub fn merge(args: &ServeArgs, mut file: FileConfig) -> Result<Config, Error> {
        let database_url = (args.server.database_url.clone())
            .or(file.database_url.take())
            .filter(|url| !url.trim().is_empty());
        let flag_tuning = args.server.tuning();
        let file_tuning = file.tuning();
        let feeds = match (feeds(args, std::mem::take(&mut file.feeds)), &database_url) {
            (Err(_), None) => return Err(Error::NoDatabase),
            (feeds, _) => feeds?,
        };
        // Feeds of Redis and NATS need no database; a table feed does.
        if database_url.is_none() && !feeds.iter().all(topic::is_topic) {
            return Err(Error::NoDatabase);
        }
        let feeds = feeds
            .into_iter()
            .enumerate()
            .map(|(i, f)| validate_feed(i, f, &flag_tuning, &file_tuning))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, feed) in feeds.iter().enumerate() {
            if feeds[..i].iter().any(|other| other.name == feed.name) {
                return Err(invalid(
                    format!("feed `{}`", feed.name),
                    "two feeds share this name; give one a distinct `name`",
                ));
            }
        }
        let server = args.server.clone().over(file);
        let max_connections = server.max_connections.unwrap_or(10);
        if max_connections < 2 {
            return Err(invalid("max_connections", "must be at least 2"));
        }
        let client_buffer = server.client_buffer.unwrap_or(256);
        if client_buffer == 0 {
            return Err(invalid("client_buffer", "must be at least 1"));
        }
        let auth = crate::auth::Auth::from_config(
            &server.auth.unwrap_or_default(),
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
        let cors_origins = server.cors_origins.unwrap_or_default();
        if auth.is_some() && cors_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "cors_origins",
                "`*` lets any site read the feeds with its visitors' tokens; list the origins when auth is on",
            ));
        }
        let max_limit = server.max_limit.unwrap_or(1000);
        if max_limit == 0 {
            return Err(invalid("max_limit", "must be at least 1"));
        }
        let max_clients = server.max_clients;
        if max_clients == Some(0) {
            return Err(invalid("max_clients", "must be at least 1"));
        }
        let listen = server
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let metrics_listen = server.metrics_listen;
        if metrics_listen == Some(listen) && listen.port() != 0 {
            return Err(invalid("metrics_listen", "must differ from `listen`"));
        }
        let cluster = cluster(args.bus.clone(), server.cluster.unwrap_or_default())?;
        let keep_alive = positive("keep_alive", server.keep_alive, Duration::from_secs(15))?;
        presence::check_timeouts(&feeds, keep_alive)?;
        Ok(Config {
            cluster,
            database_url,
            listen,
            metrics_listen,
            keep_alive,
            retry: server.retry.map_or(Duration::from_secs(3), |r| r.0),
            max_connections,
            client_buffer,
            max_limit,
            max_wait: server.max_wait.map_or(Duration::from_secs(60), |w| w.0),
            auth,
            cors_origins,
            max_streams_per_subject: server.max_streams_per_subject.unwrap_or(0),
            max_streams_per_ip: server.max_streams_per_ip.unwrap_or(0),
            header_timeout: positive(
                "header_timeout",
                server.header_timeout,
                Duration::from_secs(10),
            )?,
            idle_timeout: positive("idle_timeout", server.idle_timeout, Duration::from_secs(60))?,
            send_timeout: positive("send_timeout", server.send_timeout, Duration::from_secs(30))?,
            max_clients,
            direct_fanout: server.direct_fanout.unwrap_or(true),
            feeds,
        })
    }
}

/// The bus, from `--bus` over `[cluster]`: a URL of a scheme it knows, and
/// a prefix that fits a Redis key and a NATS subject.
fn cluster(flag: Option<String>, file: super::ClusterFile) -> Result<Option<Cluster>, Error> {
    let Some(bus) = flag.or(file.bus).filter(|b| !b.trim().is_empty()) else {
        if file.prefix.is_some() {
            return Err(invalid("cluster.prefix", "needs `cluster.bus` (or --bus)"));
        }
        return Ok(None);
    };
    let scheme = bus.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("redis" | "rediss" | "nats" | "tls")) {
        return Err(invalid(
            "cluster.bus",
            format!(
                "`{}` is not a bus URL; use redis://host:6379, rediss://… (TLS), nats://host:4222 or tls://… (NATS over TLS)",
                crate::bus::redact(&bus)
            ),
        ));
    }
    let prefix = file.prefix.unwrap_or_else(|| "rowcast".to_owned());
    let fits = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if prefix.is_empty() || !prefix.chars().all(fits) {
        return Err(invalid(
            "cluster.prefix",
            "must be letters, digits, `_` or `-` (it names Redis streams and NATS subjects)",
        ));
    }
    Ok(Some(Cluster { bus, prefix }))
}

/// The feeds as written: the file's, with the `--table` feed in place of
/// the file's feed of its name, or `--feed NAME`'s flags over that feed.
fn feeds(args: &ServeArgs, mut feeds: Vec<FeedFile>) -> Result<Vec<FeedFile>, Error> {
    let flags = trimmed(args.feed.clone());
    let name_of = |f: &FeedFile| f.name.clone().or_else(|| f.table.clone());
    if let Some(table) = &flags.table {
        let name = flags.name.clone().unwrap_or_else(|| table.clone());
        feeds.retain(|f| name_of(f).as_ref() != Some(&name));
        feeds.push(flags);
    } else if let Some(name) = &flags.name {
        let known: Vec<String> = feeds.iter().filter_map(name_of).collect();
        let Some(at) = feeds.iter().position(|f| name_of(f).as_ref() == Some(name)) else {
            let known = match known.is_empty() {
                true => "(none)".to_owned(),
                false => known.join(", "),
            };
            return Err(invalid(
                "--feed",
                format!("no feed `{name}` to apply the per-feed flags to; feeds of the config file: {known}; give --table to declare a new feed"),
            ));
        };
        let feed = std::mem::take(&mut feeds[at]);
        feeds[at] = flags.over(feed);
    } else if flags != FeedFile::default() {
        return Err(invalid(
            "--table",
            "per-feed flags (--id-column, --columns, --where, …) need --table (a new feed) or --feed NAME (a feed of the config file)",
        ));
    }
    if feeds.is_empty() {
        return Err(Error::NoFeeds);
    }
    Ok(feeds)
}

/// `--columns "a, b"`: spaces around commas are the command line's, not
/// the names' (a file's array takes names as written).
fn trimmed(mut flags: FeedFile) -> FeedFile {
    let trim = |names: Vec<String>| names.into_iter().map(|n| n.trim().to_owned()).collect();
    flags.columns = flags.columns.map(trim);
    flags.filter_columns = flags.filter_columns.map(trim);
    flags
}

fn validate_feed(
    index: usize,
    file: FeedFile,
    flags: &Tuning,
    defaults: &Tuning,
) -> Result<FeedConfig, Error> {
    let tuning = Tuning::resolve(&[flags, &file.tuning(), defaults]);
    let topic = topic::resolve(&file, &topic::provisional_name(index, &file))?;
    let table = match &topic {
        Some(topic) => topic.kind.name().to_owned(),
        None => file.table.ok_or(Error::NoTable { index })?,
    };
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

    if tuning.poll_interval.is_zero() {
        return Err(invalid(key("poll_interval"), "must be greater than zero"));
    }
    if !(1..=100_000).contains(&tuning.batch_size) {
        return Err(invalid(key("batch_size"), "must be between 1 and 100000"));
    }
    if tuning.hold_cap < tuning.gap_grace {
        return Err(invalid(
            key("hold_cap"),
            "must not be shorter than `gap_grace`",
        ));
    }
    if tuning.late_check_interval.is_zero() {
        return Err(invalid(
            key("late_check_interval"),
            "must be greater than zero",
        ));
    }
    let mut tuning = tuning;
    // Polling faster than the shortest interval is never what was meant.
    tuning.max_poll_interval = tuning.max_poll_interval.max(tuning.poll_interval);
    tuning.notify_interval = tuning.notify_interval.max(tuning.poll_interval);
    let watermark = file
        .watermark
        .map(|w| w.trim().trim_end_matches(';').to_owned())
        .filter(|w| !w.is_empty());

    let mode = file.mode.unwrap_or_default();
    if mode == Mode::Changes {
        let append_only = [
            ("watermark", watermark.is_some()),
            ("gaps", file.gaps.is_some()),
            ("txid_column", file.txid_column.is_some()),
        ];
        if let Some((field, _)) = append_only.iter().find(|(_, given)| *given) {
            return Err(invalid(
                key(field),
                "applies to `append` feeds only; a `changes` feed reads by `updated_column`",
            ));
        }
        if tuning.max_txn_age.is_zero() {
            return Err(invalid(key("max_txn_age"), "must be greater than zero"));
        }
    } else {
        let changes_only = [
            ("updated_column", file.updated_column.is_some()),
            ("deleted_column", file.deleted_column.is_some()),
        ];
        if let Some((field, _)) = changes_only.iter().find(|(_, given)| *given) {
            return Err(invalid(
                key(field),
                "applies to `mode = \"changes\"` feeds only",
            ));
        }
    }

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

    let presence = presence::resolve(&name, file.presence, file.presence_meta)?;
    Ok(FeedConfig {
        presence,
        topic,
        mode,
        updated_column: file
            .updated_column
            .map(|c| identifier("updated_column", c))
            .transpose()?,
        deleted_column: file
            .deleted_column
            .map(|c| identifier("deleted_column", c))
            .transpose()?,
        rules,
        timestamp_column: file
            .timestamp_column
            .map(|c| identifier("timestamp_column", c))
            .transpose()?,
        notify: file.notify.unwrap_or_default(),
        txid_column: file
            .txid_column
            .map(|c| identifier("txid_column", c))
            .transpose()?,
        gaps: file.gaps.unwrap_or_default(),
        tuning,
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
        name,
    })
}

pub(crate) mod presence;
mod topic;

#[cfg(test)]
mod tests;
