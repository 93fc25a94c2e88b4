//! Test helpers: a uniquely named table on a real database, a real rowcast
//! server on 127.0.0.1:0 (or on a given address, to restart one), set up
//! with [`Rowcast`], and a real SSE client.

pub mod auth;
pub mod blackhole;
pub mod proxy;
pub mod services;
pub mod setup;
pub mod wire;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use rowcast::config::Config;
use rowcast::http::Served;
use rowcast::source::GapSetup;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use services::{MYSQL_URL, POSTGRES_URL};
pub use setup::{Feed, Rowcast};

/// Shows rowcast's logs when a test runs with `RUST_LOG` set (e.g.
/// `RUST_LOG=rowcast=debug cargo test --test it gaps:: -- --nocapture`).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The databases every behaviour is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Postgres,
    MySql,
    Sqlite,
}

/// Runs an async test body once per database: `each_db!(name);` makes
/// `name::postgres`, `name::mysql` and `name::sqlite` from `async fn name(Kind)`.
macro_rules! each_db {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name(Kind::Postgres).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() { super::$name(Kind::MySql).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name(Kind::Sqlite).await }
        }
    )*};
}
pub(crate) use each_db;

/// A database with tables that exist only for one test and are dropped
/// when it ends, however it ends.
pub struct TestDb {
    pub kind: Kind,
    /// What rowcast connects to.
    pub url: String,
    pub pool: AnyPool,
    prefix: String,
    /// Tables and views to drop, as SQL names them (quoted where needed).
    tables: std::sync::Mutex<Vec<String>>,
    /// Statements run after the tables are dropped (e.g. DROP USER).
    cleanup: std::sync::Mutex<Vec<String>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        TestDb::with_connections(kind, 4).await
    }

    /// A test database whose pool opens up to `connections` connections.
    pub async fn with_connections(kind: Kind, connections: u32) -> TestDb {
        sqlx::any::install_default_drivers();
        let prefix = format!("rc_{:08x}", rand::random::<u32>());
        let (url, dir) = match kind {
            Kind::Postgres => {
                services::POSTGRES.require().await;
                (POSTGRES_URL.to_owned(), None)
            }
            Kind::MySql => {
                services::MARIADB.require().await;
                (MYSQL_URL.to_owned(), None)
            }
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                (url, Some(dir))
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test database {url}: {e}"));
        if kind == Kind::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await
                .unwrap();
        }
        TestDb {
            kind,
            url,
            pool,
            prefix,
            tables: Default::default(),
            cleanup: Default::default(),
            _dir: dir,
        }
    }

    /// A table name unique to this test, dropped at the end; `name` must be
    /// a plain identifier, as the result is used in SQL unquoted.
    pub fn table(&self, name: &str) -> String {
        let table = format!("{}_{name}", self.prefix);
        self.tables.lock().unwrap().push(table.clone());
        table
    }

    /// A table or view name unique to this test that may hold any
    /// character (`name` is appended to the unique prefix); it is dropped
    /// at the end, quoted. Use it in SQL through [`TestDb::quote`].
    pub fn odd_table(&self, name: &str) -> String {
        let table = format!("{}_{name}", self.prefix);
        self.tables.lock().unwrap().push(self.quote(&table));
        table
    }

    /// `ident` quoted so that the database takes it literally.
    pub fn quote(&self, ident: &str) -> String {
        match self.kind {
            Kind::MySql => format!("`{}`", ident.replace('`', "``")),
            Kind::Postgres | Kind::Sqlite => format!("\"{}\"", ident.replace('"', "\"\"")),
        }
    }

    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Installs the Postgres NOTIFY doorbell on `table`, or removes it, with
    /// the SQL `rowcast sql notify` prints.
    pub async fn doorbell(&self, table: &str, install: bool) {
        let sql = if install {
            rowcast::source::notify_sql(table, None)
        } else {
            rowcast::source::unnotify_sql(table, None)
        };
        // Each install replaces the one trigger function all tables share,
        // and Postgres refuses two concurrent `CREATE OR REPLACE FUNCTION`
        // of it ("tuple concurrently updated"): the tests that ring the
        // doorbell, in whatever area, take turns here.
        static INSTALLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = INSTALLING.lock().await;
        self.exec(&sql).await;
    }

    /// Runs `sql` when the test ends, after its tables are dropped.
    pub fn on_drop(&self, sql: impl Into<String>) {
        self.cleanup.lock().unwrap().push(sql.into());
    }

    /// Creates `name(id auto-increment primary key, room_id, body)` and
    /// returns its full name.
    pub async fn messages(&self, name: &str) -> String {
        let t = self.table(name);
        self.exec(&match self.kind {
            Kind::Postgres => format!(
                "CREATE TABLE {t} (id bigserial PRIMARY KEY, room_id bigint NOT NULL, body text NOT NULL)"
            ),
            Kind::MySql => format!(
                "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, room_id BIGINT NOT NULL, \
                 body LONGTEXT NOT NULL) DEFAULT CHARSET = utf8mb4"
            ),
            Kind::Sqlite => format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, body TEXT NOT NULL)"
            ),
        })
        .await;
        t
    }

    /// Inserts a message and returns its id.
    pub async fn insert(&self, table: &str, room_id: i64, body: &str) -> i64 {
        let p = |n| self.placeholder(n);
        let sql = format!(
            "INSERT INTO {table} (room_id, body) VALUES ({}, {})",
            p(1),
            p(2)
        );
        match self.kind {
            Kind::MySql => {
                let done = sqlx::query(&sql)
                    .bind(room_id)
                    .bind(body)
                    .execute(&self.pool)
                    .await
                    .unwrap();
                done.last_insert_id()
                    .expect("MySQL reports the inserted id")
            }
            _ => sqlx::query_scalar(&format!("{sql} RETURNING id"))
                .bind(room_id)
                .bind(body)
                .fetch_one(&self.pool)
                .await
                .unwrap(),
        }
    }

    /// Inserts `n` messages in room `room_id` with bodies `m<i>`; returns their ids.
    pub async fn insert_many(&self, table: &str, room_id: i64, n: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            ids.push(self.insert(table, room_id, &format!("m{i}")).await);
        }
        ids
    }

    pub fn placeholder(&self, n: usize) -> String {
        match self.kind {
            Kind::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let tables = std::mem::take(&mut *self.tables.lock().unwrap());
        let cleanup = std::mem::take(&mut *self.cleanup.lock().unwrap());
        if (tables.is_empty() && cleanup.is_empty()) || self.kind == Kind::Sqlite {
            return;
        }
        let url = self.url.clone();
        let kind = self.kind;
        // Drop runs outside async context rules: use a runtime of our own.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let Ok(pool) = AnyPoolOptions::new().max_connections(1).connect(&url).await else {
                    return;
                };
                for table in tables.iter().rev() {
                    let statements = match kind {
                        Kind::Postgres => [
                            format!("DROP TABLE IF EXISTS {table} CASCADE"),
                            format!("DROP VIEW IF EXISTS {table} CASCADE"),
                        ],
                        _ => [
                            format!("DROP VIEW IF EXISTS {table}"),
                            format!("DROP TABLE IF EXISTS {table}"),
                        ],
                    };
                    // A view and a table cannot share a name; one of the two drops is a no-op.
                    for statement in &statements {
                        let _ = sqlx::raw_sql(statement).execute(&pool).await;
                    }
                }
                for statement in &cleanup {
                    let _ = sqlx::raw_sql(statement).execute(&pool).await;
                }
                pool.close().await;
            });
        })
        .join()
        .ok();
    }
}

/// A rowcast server running in this process on an ephemeral port.
pub struct Server {
    pub url: String,
    /// Where it listens: start another here to restart it.
    pub address: SocketAddr,
    /// The operators' listener (`/metrics`, full `/healthz`), when it has one.
    pub metrics_url: Option<String>,
    /// Every feed as the server runs it, in configuration order.
    pub feeds: Vec<Served>,
    /// What the database told about gaps in each feed's ids.
    pub setups: Vec<GapSetup>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), rowcast::Error>>>,
}

impl Server {
    /// Starts a server on `address` (see [`Rowcast::start_at`]).
    async fn start_at(config: Config, address: SocketAddr) -> Server {
        let feeds = rowcast::prepare(&config).await.expect("feeds prepare");
        Server::serve_on(bind(address).await, config, feeds, None).await
    }

    /// A server with an operators' listener (see
    /// [`Rowcast::start_with_metrics_listener`]).
    async fn start_with_metrics_listener(config: Config) -> Server {
        let feeds = rowcast::prepare(&config).await.expect("feeds prepare");
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Server::serve_on(listener, config, feeds, Some(metrics)).await
    }

    async fn serve_on(
        listener: TcpListener,
        config: Config,
        feeds: rowcast::Feeds,
        metrics: Option<TcpListener>,
    ) -> Server {
        let address = listener.local_addr().unwrap();
        let url = format!("http://{address}");
        let metrics_url = metrics
            .as_ref()
            .map(|m| format!("http://{}", m.local_addr().unwrap()));
        let served = feeds.served.clone();
        let setups = feeds
            .setups
            .iter()
            .map(|s| s.gaps().cloned().unwrap_or_else(GapSetup::in_order))
            .collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let listeners = rowcast::Listeners {
            main: listener,
            metrics,
        };
        let task = tokio::spawn(async move {
            rowcast::serve(listeners, &config, feeds, async {
                let _ = stopped.await;
            })
            .await
        });
        Server {
            url,
            address,
            metrics_url,
            feeds: served,
            setups,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Queries this server sent for `feed` so far.
    pub fn queries(&self, feed: &str) -> u64 {
        let served = self.feeds.iter().find(|s| s.feed.name() == feed).unwrap();
        (served.health.counters)
            .queries
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the server and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

/// Binds `address`, waiting a little while something else still holds it.
async fn bind(address: SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("cannot listen on {address}: {e}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One event as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub id: String,
    pub event: String,
    pub data: String,
}

impl Ev {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("data is not JSON ({e}): {:?}", self.data))
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// A real SSE client on one stream.
pub struct Client {
    events: Events,
    pub response_headers: reqwest::header::HeaderMap,
}

pub const WAIT: Duration = Duration::from_secs(15);

impl Client {
    /// Opens `url`, with `Last-Event-ID` when given; panics unless the
    /// answer is a 200 event stream.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Client {
        match Client::open(url, last_event_id).await {
            Ok(client) => client,
            Err(problem) => panic!("GET {url}: {problem}"),
        }
    }

    /// Opens `url` like [`Client::connect`], but returns `None` instead of
    /// panicking when the server is not there.
    pub async fn try_connect(url: &str, last_event_id: Option<&str>) -> Option<Client> {
        Client::open(url, last_event_id).await.ok()
    }

    async fn open(url: &str, last_event_id: Option<&str>) -> Result<Client, String> {
        let mut request = reqwest::Client::new().get(url);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            let status = response.status();
            return Err(format!("{status}: {:?}", response.text().await));
        }
        let response_headers = response.headers().clone();
        let events = response
            .bytes_stream()
            .eventsource()
            .map(|e| e.map_err(|e| e.to_string()))
            .boxed();
        Ok(Client {
            events,
            response_headers,
        })
    }

    /// The next `n` events; panics if they do not come within [`WAIT`].
    pub async fn take(&mut self, n: usize) -> Vec<Ev> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Ok(Some(Ok(e))) => got.push(Ev {
                    id: e.id,
                    event: e.event,
                    data: e.data,
                }),
                Ok(Some(Err(e))) => panic!("stream error after {} events: {e}", got.len()),
                Ok(None) => panic!("stream ended after {} of {n} events: {got:?}", got.len()),
                Err(_) => panic!("only {} of {n} events within {WAIT:?}: {got:?}", got.len()),
            }
        }
        got
    }

    /// The next event, or `None` when the stream ends, fails or stays
    /// quiet for `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Ev> {
        match tokio::time::timeout(within, self.events.next()).await {
            Ok(Some(Ok(e))) => Some(Ev {
                id: e.id,
                event: e.event,
                data: e.data,
            }),
            _ => None,
        }
    }

    /// Asserts that no event arrives within `window`.
    pub async fn expect_quiet(&mut self, window: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(window, self.events.next()).await {
            panic!("expected no event, got {e:?}");
        }
    }

    /// Waits for the end of the stream; panics on an event or a timeout.
    pub async fn expect_end(&mut self, within: Duration) {
        match tokio::time::timeout(within, self.events.next()).await {
            Ok(None) | Ok(Some(Err(_))) => {}
            Ok(Some(Ok(e))) => panic!("expected the stream to end, got {e:?}"),
            Err(_) => panic!("stream still open after {within:?}"),
        }
    }
}

/// The ids of events, as numbers.
pub fn ids(events: &[Ev]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e.id.parse().unwrap_or_else(|_| panic!("id {:?}", e.id)))
        .collect()
}

/// The `body` field of each event's JSON.
pub fn bodies(events: &[Ev]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.json()["body"].as_str().unwrap().to_owned())
        .collect()
}

/// GET `url` and return status and JSON body.
pub async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}")),
    )
}

/// The text of the server's `/metrics`.
pub async fn metrics(server: &Server) -> String {
    reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Waits until `/healthz` answers `status`.
pub async fn wait_health(base: &str, status: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = reqwest::get(format!("{base}/healthz")).await {
            if response.status().as_u16() == status {
                return response.json().await.unwrap();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/healthz never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
