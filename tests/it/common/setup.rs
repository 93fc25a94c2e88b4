//! The server under test, configured the way a user writes `rowcast.toml`,
//! in one builder that every area uses:
//!
//! ```ignore
//! let server = Rowcast::on(&db)
//!     .set("keep_alive", "200ms")
//!     .feed("messages", &t, |f| f.filter_columns(["room_id"]).ring_size(5))
//!     .start()
//!     .await;
//! ```
//!
//! Feeds of Redis and NATS need no database: `Rowcast::without_database()
//! .topic("chat", "redis-channel", url, |f| f.set("channel", "chat"))`.
//!
//! Typed methods cover the keys tests often set; [`Rowcast::set`] and
//! [`Feed::set`] take any other key, with its value as the file has it
//! (durations as text: `"200ms"`). Values become TOML values, never text
//! pasted into TOML, so a name with quotes, backslashes or a newline
//! reaches rowcast as written; the file is then parsed and validated as
//! rowcast parses a user's.

use super::{Server, TestDb};
use rowcast::config::{Config, FileConfig, ServeArgs};
use std::net::SocketAddr;
use toml::{Table, Value};

/// Polling and gap settling quick enough for tests: set any again to
/// change it.
const QUICK: [(&str, &str); 3] = [
    ("poll_interval", "20ms"),
    ("max_poll_interval", "100ms"),
    ("gap_grace", "50ms"),
];

/// A rowcast configuration: top-level keys, `[auth]` and `[[feed]]`s.
/// Built by value; started by reference, so one configuration can start
/// a server again (a restart).
#[derive(Debug)]
pub struct Rowcast {
    /// The file's top-level keys, `[auth]` among them.
    top: Table,
    /// Its `[[feed]]` tables, in order.
    feeds: Vec<Table>,
}

impl Rowcast {
    /// A server of `db`, with no feed yet.
    pub fn on(db: &TestDb) -> Rowcast {
        Rowcast::at(&db.url)
    }

    /// A server of the database at `url`: a proxy's, another user's, or
    /// one that is not there.
    pub fn at(url: &str) -> Rowcast {
        Rowcast::without_database().set("database_url", url)
    }

    /// A server with no database: its feeds read Redis or NATS.
    pub fn without_database() -> Rowcast {
        let top = QUICK.into_iter().map(|(k, v)| (k.into(), v.into()));
        Rowcast {
            top: top.collect(),
            feeds: Vec::new(),
        }
    }

    /// Adds the feed `name` of `source` (`redis-stream`, `redis-channel`,
    /// `nats`) at `url`; `settings` sets its other keys (`stream`,
    /// `channel`, `subject`, `format`, …).
    pub fn topic(
        mut self,
        name: &str,
        source: &str,
        url: &str,
        settings: impl FnOnce(Feed) -> Feed,
    ) -> Rowcast {
        let feed = (Feed(Table::new()).set("name", name))
            .set("source", source)
            .set("url", url);
        self.feeds.push(settings(feed).0);
        self
    }

    /// Adds the feed `name` of `table`; `settings` sets its other keys
    /// (`|f| f` for none).
    pub fn feed(mut self, name: &str, table: &str, settings: impl FnOnce(Feed) -> Feed) -> Rowcast {
        let feed = Feed(Table::new()).set("name", name).set("table", table);
        self.feeds.push(settings(feed).0);
        self
    }

    /// Sets the top-level `key` (`keep_alive`, `max_clients`,
    /// `cors_origins`, …).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Rowcast {
        self.top.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `key` of `[auth]` (`secret`, `audience`, `leeway`, …).
    pub fn auth(mut self, key: &str, value: impl Into<Value>) -> Rowcast {
        let auth = self
            .top
            .entry("auth")
            .or_insert_with(|| Value::Table(Table::new()));
        auth.as_table_mut()
            .expect("`auth` is a table")
            .insert(key.to_owned(), value.into());
        self
    }

    /// Shares the feeds with other instances on `bus`, under `prefix`.
    pub fn cluster(self, bus: &str, prefix: &str) -> Rowcast {
        let mut cluster = Table::new();
        cluster.insert("bus".to_owned(), bus.into());
        cluster.insert("prefix".to_owned(), prefix.into());
        self.set("cluster", Value::Table(cluster))
    }

    /// The configuration file.
    pub fn toml(&self) -> String {
        let mut file = self.top.clone();
        let feeds = self.feeds.iter().cloned().map(Value::Table).collect();
        file.insert("feed".to_owned(), Value::Array(feeds));
        toml::to_string(&file).expect("a table renders as TOML")
    }

    /// The configuration rowcast makes of the file, or the error a user
    /// would read.
    pub fn try_config(&self) -> Result<Config, String> {
        let file: FileConfig = toml::from_str(&self.toml()).map_err(|e| e.to_string())?;
        Config::merge(&ServeArgs::default(), file).map_err(|e| e.to_string())
    }

    /// The configuration; panics, showing the file, when rowcast refuses it.
    pub fn config(&self) -> Config {
        self.try_config()
            .unwrap_or_else(|e| panic!("{e}\nin this configuration:\n{}", self.toml()))
    }

    /// Prepares the feeds as start-up does (the catalog is read, nothing is
    /// served): the feeds, or the error a user would read.
    pub async fn prepare(&self) -> Result<rowcast::Feeds, String> {
        rowcast::prepare(&self.config())
            .await
            .map_err(|e| e.to_string())
    }

    /// The error start-up stops with; panics if it does not.
    pub async fn start_up_error(&self) -> String {
        match self.prepare().await {
            Ok(_) => panic!("start-up accepted this configuration:\n{}", self.toml()),
            Err(err) => err,
        }
    }

    /// A server on an ephemeral port.
    pub async fn start(&self) -> Server {
        self.start_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// A server on `address`: given the address of one that was stopped,
    /// it is a restart, and clients reconnect to it by themselves.
    pub async fn start_at(&self, address: SocketAddr) -> Server {
        Server::start_at(self.config(), address).await
    }

    /// A server whose `/metrics` and full `/healthz` are on a listener of
    /// their own, at [`Server::metrics_url`].
    pub async fn start_with_metrics_listener(&self) -> Server {
        Server::start_with_metrics_listener(self.config()).await
    }
}

/// One `[[feed]]` table.
#[derive(Debug)]
pub struct Feed(Table);

impl Feed {
    /// The cursor column.
    pub fn id_column(self, column: &str) -> Feed {
        self.set("id_column", column)
    }

    /// The columns sent.
    pub fn columns<S: AsRef<str>>(self, columns: impl IntoIterator<Item = S>) -> Feed {
        self.set("columns", strings(columns))
    }

    /// The columns clients may filter on.
    pub fn filter_columns<S: AsRef<str>>(self, columns: impl IntoIterator<Item = S>) -> Feed {
        self.set("filter_columns", strings(columns))
    }

    /// A static row condition: the feed's `where`.
    pub fn condition(self, sql: &str) -> Feed {
        self.set("where", sql)
    }

    /// The view or table rows are read from.
    pub fn from(self, view: &str) -> Feed {
        self.set("from", view)
    }

    /// The SELECT rows are read from.
    pub fn select(self, sql: &str) -> Feed {
        self.set("select", sql)
    }

    /// The SQL of the highest id the application declares complete.
    pub fn watermark(self, sql: &str) -> Feed {
        self.set("watermark", sql)
    }

    /// Events kept for reconnecting clients.
    pub fn ring_size(self, events: u32) -> Feed {
        self.set("ring_size", events)
    }

    /// Rows read per query.
    pub fn batch_size(self, rows: u32) -> Feed {
        self.set("batch_size", rows)
    }

    /// The NOTIFY doorbell: required (`true`) or never used (`false`).
    pub fn notify(self, on: bool) -> Feed {
        self.set("notify", on)
    }

    /// Bounds filter `column` by the values of the token's `claim`.
    pub fn auth_filter(self, column: &str, claim: &str) -> Feed {
        self.set_in("auth_filters", column, claim)
    }

    /// Lets only tokens whose `claim` is `value` read the feed.
    pub fn auth_require(self, claim: &str, value: impl Into<Value>) -> Feed {
        self.set_in("auth_require", claim, value)
    }

    /// Sets `key` (`hold_cap`, `gaps`, `poll_interval`, …).
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Feed {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// Leaves `key` out.
    pub fn unset(mut self, key: &str) -> Feed {
        self.0.remove(key);
        self
    }

    /// Sets `key` of the inline table `table`.
    fn set_in(mut self, table: &str, key: &str, value: impl Into<Value>) -> Feed {
        let inner = self
            .0
            .entry(table)
            .or_insert_with(|| Value::Table(Table::new()));
        inner
            .as_table_mut()
            .unwrap_or_else(|| panic!("`{table}` is a table"))
            .insert(key.to_owned(), value.into());
        self
    }
}

fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(items.into_iter().map(|s| s.as_ref().into()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The file as TOML reads it back.
    fn parsed(rowcast: &Rowcast) -> Table {
        toml::from_str(&rowcast.toml()).unwrap()
    }

    #[test]
    fn hostile_names_reach_rowcast_as_written() {
        let names = [
            "it's \"odd\" `tbl` \\ 名前",
            "\"\"\" ''' [[feed]]",
            "line\nbreak\ttab",
            " leading space",
            "#not a comment",
        ];
        let mut rowcast = Rowcast::at("postgres://u@h/d\"b").auth("secret", names[0]);
        for (i, name) in names.into_iter().enumerate() {
            rowcast = rowcast.feed(&format!("f{i}"), name, |f| {
                f.id_column(name)
                    .filter_columns([name, "room_id"])
                    .condition(&format!("{name} <> ''"))
                    .auth_filter(name, name)
            });
        }
        // rowcast takes the file, and every name reads back as it was given.
        assert_eq!(
            rowcast.config().database_url.as_deref(),
            Some("postgres://u@h/d\"b")
        );
        let file = parsed(&rowcast);
        assert_eq!(file["auth"]["secret"].as_str(), Some(names[0]));
        let feeds = file["feed"].as_array().unwrap();
        assert_eq!(feeds.len(), names.len());
        for (feed, name) in feeds.iter().zip(names) {
            for key in ["table", "id_column"] {
                assert_eq!(feed[key].as_str(), Some(name), "{key}");
            }
            assert_eq!(feed["filter_columns"][0].as_str(), Some(name));
            let condition = format!("{name} <> ''");
            assert_eq!(feed["where"].as_str(), Some(condition.as_str()));
            assert_eq!(feed["auth_filters"][name].as_str(), Some(name));
        }
    }

    #[test]
    fn settings_reach_the_config_and_later_ones_win() {
        let rowcast = Rowcast::at("sqlite://x.db")
            .set("keep_alive", "200ms")
            .set("client_buffer", 2)
            .set("poll_interval", "1s")
            .auth("secret", "s")
            .feed("messages", "messages", |f| f.ring_size(5).ring_size(7));
        let config = rowcast.config();
        assert_eq!(config.keep_alive, Duration::from_millis(200));
        assert_eq!(config.client_buffer, 2);
        assert!(config.auth.is_some());
        let file = parsed(&rowcast);
        assert_eq!(file["poll_interval"].as_str(), Some("1s"));
        assert_eq!(file["feed"][0]["ring_size"].as_integer(), Some(7));
    }
}
