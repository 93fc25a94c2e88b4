//! Start, serve, stop: connects to the database and to the feeds' Redis
//! and NATS, checks every feed and wires its parts — poller or topic task,
//! feed, fan-out, doorbell — to the HTTP listener, then stops them all,
//! within a bounded time, at shutdown. `tables` prepares the table feeds.

mod tables;

use crate::bus::{self, Bus};
use crate::cluster;
use crate::config::{self, Config, Notify};
use crate::doorbell;
use crate::feed::Feed;
use crate::http::{self, connections::Connections, listener::Listening, Served};
use crate::poller::{self, Health, Setup};
use crate::presence;
use crate::source::{self, FeedQuery, GapSetup, Source};
use crate::topic;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long open streams and pollers get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Source(#[from] source::Error),
    #[error(transparent)]
    Bus(#[from] bus::Error),
    #[error(transparent)]
    Topic(#[from] topic::Error),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {address} (`metrics_listen`): {source}")]
    MetricsListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The sockets a server answers on.
pub struct Listeners {
    /// Clients: streams, feeds, the page.
    pub main: TcpListener,
    /// Operators: `/metrics` and the full `/healthz`, kept apart from
    /// clients. `None`: bound from `metrics_listen` when it is set.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(main: TcpListener) -> Listeners {
        Listeners {
            main,
            metrics: None,
        }
    }
}

/// The checked feeds of a configuration, ready to serve.
pub struct Feeds {
    /// The database; `None` when every feed reads Redis or NATS.
    pub source: Option<Source>,
    /// Every feed as the server will run it, in configuration order.
    pub served: Vec<Served>,
    /// How each feed reads, in the same order.
    pub setups: Vec<Reading>,
    /// The bus shared with other instances, when clustered.
    pub bus: Option<Bus>,
}

impl Feeds {
    /// Closes the database's connections, for feeds prepared and not served.
    pub async fn close(&self) {
        if let Some(source) = &self.source {
            source.close().await;
        }
    }
}

/// How a feed reads, as start-up prepared it.
pub enum Reading {
    /// A table, by its poller.
    Table(Setup),
    /// A Redis stream or channel or a NATS subject, by its task.
    Topic(topic::Follow),
}

impl Reading {
    /// What the database tells about gaps in an append feed's ids.
    pub fn gaps(&self) -> Option<&GapSetup> {
        match self {
            Reading::Table(setup) => setup.gaps(),
            Reading::Topic(_) => None,
        }
    }
}

/// Connects to the database, when a feed reads one, and checks every
/// table feed against its catalog (each starts at its table's current
/// greatest id); connects every feed of Redis or NATS and finds its head.
pub async fn prepare(config: &Config) -> Result<Feeds, Error> {
    let source = match &config.database_url {
        Some(url) => Some(Source::connect(url, config.max_connections).await?),
        None => None,
    };
    let bus = match &config.cluster {
        Some(cluster) => Some(Bus::connect(&cluster.bus, &cluster.prefix).await?),
        None => None,
    };
    if let (Some(bus), Some(cluster), Some(source)) = (&bus, &config.cluster, &source) {
        tables::say_clustered(source, bus, cluster, &config.feeds);
    }
    let mut prepared = match &source {
        Some(source) => tables::prepare(config, source, bus.as_ref()).await?,
        None => Vec::new(),
    };
    for feed in &config.feeds {
        let Some(topic) = &feed.topic else { continue };
        let health = Arc::new(Health::default());
        let topic::Prepared {
            style,
            head,
            reader,
            follow,
        } = topic::prepare(feed, topic, &health).await?;
        let query = FeedQuery::without_sql(feed, follow.describe());
        let feed = Arc::new(Feed::with_style(
            feed.clone(),
            query,
            reader,
            head,
            config.client_buffer,
            style,
        ));
        let served = Served::new(feed, health);
        prepared.push((served, Reading::Topic(follow)));
    }
    // In configuration order, whatever the source.
    prepared.sort_by_key(|(s, _)| config.feeds.iter().position(|f| f.name == s.feed.name()));
    let (served, setups) = prepared.into_iter().unzip();
    Ok(Feeds {
        source,
        served,
        setups,
        bus,
    })
}

/// Connections the operators' listener (`metrics_listen`) holds at most:
/// scrapers and probes.
const METRICS_CLIENTS: usize = 64;

/// Open files that are not client connections, besides the database pool:
/// standard streams, the listener, the runtime's own, the NOTIFY listener.
const RESERVED_FILES: u64 = 16;

/// Raises this process's soft limit of open files to its hard limit, and
/// returns the limit: about how many connections one process can hold.
fn open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(cause = %err, "cannot raise the open files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

/// Prepares the feeds and serves them on `listeners` (a bound
/// [`TcpListener`] will do) until `shutdown` completes.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let feeds = prepare(&config).await?;
    serve(listeners, &config, feeds, shutdown).await
}

/// Serves prepared feeds: starts a poller per feed and the HTTP server, and
/// stops both, within a bounded time, when `shutdown` completes.
pub async fn serve(
    listeners: impl Into<Listeners>,
    config: &Config,
    feeds: Feeds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let Listeners {
        main: listener,
        metrics,
    } = listeners.into();
    let metrics = match (metrics, config.metrics_listen) {
        (None, Some(address)) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| Error::MetricsListen { address, source })?,
        ),
        (metrics, _) => metrics,
    };
    let token = CancellationToken::new();
    let pollers = TaskTracker::new();
    for (served, reading) in feeds.served.iter().zip(feeds.setups) {
        pollers.spawn(served.fanout.clone().run(config.keep_alive, token.clone()));
        if let Some(presence) = &served.presence {
            pollers.spawn(presence.clone().run(token.clone()));
            if let Some(bus) = &feeds.bus {
                let (presence, bus) = (presence.clone(), bus.clone());
                let name = served.feed.name().to_owned();
                pollers.spawn(presence::share(presence, bus, name, token.clone()));
            }
        }
        let (setup, source) = match (reading, &feeds.source) {
            (Reading::Table(setup), Some(source)) => (setup, source),
            (Reading::Topic(follow), _) => {
                pollers.spawn(topic::run(
                    served.feed.clone(),
                    follow,
                    served.health.clone(),
                    token.clone(),
                ));
                continue;
            }
            (Reading::Table(_), None) => unreachable!("table feeds are prepared with a database"),
        };
        match (
            tables::clustered(feeds.bus.as_ref(), source, &setup),
            &config.cluster,
        ) {
            (Some((bus, plan)), Some(cluster)) => pollers.spawn(cluster::run(
                cluster::Member {
                    feed: served.feed.clone(),
                    source: source.clone(),
                    plan,
                    health: served.health.clone(),
                    membership: served.membership.clone(),
                    bus,
                    prefix: cluster.prefix.clone(),
                },
                token.clone(),
            )),
            _ => pollers.spawn(poller::run(
                served.feed.clone(),
                source.clone(),
                setup,
                served.health.clone(),
                token.clone(),
            )),
        };
    }
    if let (Some(source), Some(url)) = (&feeds.source, &config.database_url) {
        let tables = doorbell_tables(source, &feeds.served);
        if !tables.is_empty() {
            pollers.spawn(doorbell::listen(
                url.clone(),
                source.clone(),
                tables,
                token.clone(),
            ));
        }
    }

    let names: Vec<&str> = feeds.served.iter().map(|s| s.feed.name()).collect();
    let files = open_files_limit();
    let capacity =
        usize::try_from(files.saturating_sub(u64::from(config.max_connections) + RESERVED_FILES))
            .unwrap_or(usize::MAX);
    let max_clients = match config.max_clients {
        Some(max) if max > capacity => {
            tracing::warn!(max_clients = max, open_files_limit = files, "max_clients is more than the open-files limit allows; raise the limit (LimitNOFILE) or expect `too many open files`");
            max
        }
        Some(max) => max,
        None => capacity,
    };
    let connections = Arc::new(Connections::new(max_clients));
    tracing::info!(
        address = %listener.local_addr()?,
        database = feeds.source.as_ref().map_or("none", Source::kind),
        feeds = %names.join(","),
        open_files_limit = files,
        max_clients,
        "rowcast listening"
    );
    let listening = Listening {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        send_timeout: config.send_timeout,
        direct_fanout: config.direct_fanout,
    };
    if !config.direct_fanout {
        tracing::info!("direct_fanout is off: every stream is a body hyper writes");
    }
    let ctx = http::ApiContext {
        feeds: Arc::new(feeds.served),
        settings: Arc::new(http::StreamSettings {
            keep_alive: config.keep_alive,
            retry: config.retry,
            max_limit: config.max_limit,
            max_wait: config.max_wait,
            cors_origins: config.cors_origins.clone(),
            send_timeout: config.send_timeout,
        }),
        shutdown: token.clone(),
        auth: config.auth.clone().map(Arc::new),
        limits: Arc::new(http::limits::Limits::new(
            config.max_streams_per_subject,
            config.max_streams_per_ip,
            http::limits::Limits::streams_within(max_clients),
        )),
        connections: connections.clone(),
        metrics_apart: metrics.is_some(),
    };
    if let Some(metrics) = metrics {
        tracing::info!(address = %metrics.local_addr()?, "metrics and health listening");
        let app = http::metrics_app(ctx.clone());
        // Stops with the pollers: at the token, within the same bounded wait.
        pollers.spawn(http::listener::serve(
            metrics,
            app,
            Arc::new(Connections::new(METRICS_CLIENTS)),
            listening,
            token.clone(),
        ));
    }
    pollers.close();
    if ctx.auth.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(address = %config.listen, "listening beyond this machine with auth off: anyone who can reach it reads every feed");
    }
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    let server = http::listener::serve(
        listener,
        http::app(ctx),
        connections,
        listening,
        token.clone(),
    );
    tokio::select! {
        _ = server => {},
        _ = async { token.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
        }
    }
    token.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, pollers.wait())
        .await
        .is_err()
    {
        tracing::warn!("pollers did not stop in time");
    }
    if let Some(source) = &feeds.source {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, source.close()).await;
    }
    tracing::info!("rowcast stopped");
    Ok(())
}

/// The tables whose NOTIFY trigger rings feeds' bells: on Postgres, those
/// of the feeds whose `notify` is not off.
fn doorbell_tables(source: &Source, served: &[Served]) -> Vec<doorbell::Table> {
    if !matches!(source, Source::Postgres(_)) {
        return Vec::new();
    }
    let mut tables: Vec<doorbell::Table> = Vec::new();
    for s in served
        .iter()
        .filter(|s| s.feed.config.topic.is_none() && s.feed.config.notify != Notify::Off)
    {
        let bell = (s.feed.name().to_owned(), s.health.bell.clone());
        match tables.iter_mut().find(|t| t.name == s.feed.query.table) {
            Some(table) => table.bells.push(bell),
            None => tables.push(doorbell::Table {
                name: s.feed.query.table.clone(),
                sql: s.feed.query.table_sql.clone(),
                bells: vec![bell],
            }),
        }
    }
    tables
}
