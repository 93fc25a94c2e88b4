//! What can go wrong talking to a database or fitting a feed to its
//! catalog, with the feed, the key and the fix named in each message.

use crate::config::FeedConfig;

/// Everything that can go wrong talking to a database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unsupported database URL `{0}`: expected postgres://, mysql://, mariadb:// or sqlite://"
    )]
    Scheme(String),
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("table `{table}` not found; tables: {}", list(.available))]
    UnknownTable {
        table: String,
        available: Vec<String>,
    },
    #[error("feed `{feed}`: `{key}`: column `{column}` not found in `{table}`; columns: {}", list(.available))]
    UnknownColumn {
        feed: String,
        key: &'static str,
        column: String,
        table: String,
        available: Vec<String>,
    },
    #[error("feed `{feed}`: `{key}`: column `{column}` is not sent; sent columns: {}; name one of them, or add it to `columns`", list(.sent))]
    NotSent {
        feed: String,
        key: &'static str,
        column: String,
        sent: Vec<String>,
    },
    #[error("feed `{feed}`: `{table}` has no usable cursor: {reason}")]
    NoCursor {
        feed: String,
        table: String,
        reason: String,
    },
    #[error("feed `{feed}`: `{key}` yields more than one column named {}: each name is one JSON key and one filter, so give all but one another name with AS (e.g. `… AS {}_2`), or leave them out", quoted(.columns), .columns.first().map_or("", String::as_str))]
    RepeatedColumns {
        feed: String,
        key: &'static str,
        columns: Vec<String>,
    },
    #[error("feed `{feed}`: the configured `from`/`select` cannot be read: {source}")]
    BadReadFrom { feed: String, source: sqlx::Error },
    #[error("feed `{feed}`: its query fails (check `where`, `select`, `columns` and `watermark`): {source}")]
    BadQuery { feed: String, source: sqlx::Error },
    #[error("feed `{feed}`: `notify` is on but `{table}` has no rowcast_notify trigger (Postgres only); install it with `rowcast sql notify --table … --apply`, or set `notify = false`")]
    NoTrigger { feed: String, table: String },
    #[error("feed `{feed}`: a `changes` feed needs a column stamped on every insert and update: {}; columns of `{table}`: {}{}", if *.configured { format!("`updated_column` = `{column}` is not one of them") } else { format!("`{column}` (the default of `updated_column`) is not one of them; name the table's column with `updated_column`") }, list(.available), if *.postgres { "; without one, `updated_column = \"xmin\"` finds changes by transaction id (a scan per poll: small tables only)" } else { "" })]
    NoUpdatedColumn {
        /// Whether xmin mode is there to offer.
        postgres: bool,
        feed: String,
        column: String,
        /// Whether the column was named by `updated_column`.
        configured: bool,
        table: String,
        available: Vec<String>,
    },
    #[error("feed `{feed}`: `updated_column = \"xmin\"` reads the base table's own transaction ids: it cannot go with `from` or `select`")]
    XminNeedsTable { feed: String },
    #[error("feed `{feed}`: `updated_column`: `{column}` is of type {found}, not a timestamp, datetime or date")]
    UpdatedNotATime {
        feed: String,
        column: String,
        found: String,
    },
    #[error("database query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database returned `{0}` as a row id, which is not an integer")]
    BadId(String),
}

impl Error {
    /// A view named as a feed's `table`.
    pub(super) fn view_as_table(feed: &FeedConfig, display: String) -> Error {
        Error::NoCursor {
            feed: feed.name.clone(),
            table: display,
            reason:
                "it is a view, not a table; set `table` to its base table and `from` to the view"
                    .into(),
        }
    }
}

/// `names`, each in backticks.
fn quoted(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    quoted.join(", ")
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

impl Error {
    /// Whether retrying later may succeed (the database is down or busy),
    /// as opposed to a mistake in the configuration or schema.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Query(e) | Error::BadReadFrom { source: e, .. } => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::WorkerCrashed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    // Postgres: connection exceptions, operator intervention
                    // (shutdown), insufficient resources.
                    .is_some_and(|c| {
                        c.starts_with("08") || c.starts_with("57") || c.starts_with("53")
                    })
            }
            _ => false,
        }
    }
}
