//! Start, serve, stop: connects to the database, checks every feed and
//! wires its parts — poller, feed, fan-out, doorbell — to the HTTP
//! listener, then stops them all, within a bounded time, at shutdown.

use crate::bus::{self, Bus};
use crate::cluster;
use crate::config::{self, Config, FeedConfig, Mode, Notify};
use crate::cursor::Cursor;
use crate::doorbell;
use crate::fanout::Fanout;
use crate::feed::{Feed, Reader};
use crate::http::{self, connections::Connections, listener::Listening, Served};
use crate::poller::{self, ChangesSetup, Health, Primed, Setup, TableReader};
use crate::source::horizon::{self, Horizon};
use crate::source::{self, FeedQuery, GapSetup, Source};
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
    /// The database.
    pub source: Source,
    /// Every feed as the server will run it, in configuration order.
    pub served: Vec<Served>,
    /// What each feed's poller starts with, in the same order.
    pub setups: Vec<Setup>,
    /// The bus shared with other instances, when clustered.
    pub bus: Option<Bus>,
}

/// Connects to the database and checks every feed against its catalog.
/// Each feed starts at its table's current greatest id.
pub async fn prepare(config: &Config) -> Result<Feeds, Error> {
    let source = Source::connect(&config.database_url, config.max_connections).await?;
    let mut plans = Vec::with_capacity(config.feeds.len());
    let mut changes = Vec::new();
    for feed in &config.feeds {
        let query = source.plan(feed).await?;
        source.validate(feed, &query).await?;
        if feed.mode == Mode::Changes {
            changes.push((feed, query));
            continue;
        }
        let gap_setup = source.gap_setup(feed, &query).await?;
        for warning in &gap_setup.warnings {
            tracing::warn!("{warning}");
        }
        for note in &gap_setup.notes {
            tracing::info!("{note}");
        }
        match (feed.notify, source.notify_trigger(&query).await?) {
            (Notify::On, Some(false)) | (Notify::On, None) => {
                return Err(source::Error::NoTrigger {
                    feed: feed.name.clone(),
                    table: query.table.clone(),
                }
                .into())
            }
            (Notify::Off, _) | (_, Some(false)) | (_, None) => {}
            (_, Some(true)) => {
                tracing::info!(feed = %feed.name, table = %query.table, "NOTIFY trigger found: the doorbell will be used")
            }
        }
        if let Some(column) = &query.txid_column {
            tracing::info!(feed = %feed.name, %column, "exact mode: reading rows in transaction order");
        }
        plans.push((feed, query, gap_setup));
    }
    // Feeds wait for in-flight writers side by side, not one after another.
    let heads = futures::future::try_join_all(
        plans
            .iter()
            .map(|(feed, query, gaps)| poller::starting_head(&source, feed, query, gaps)),
    )
    .await?;
    let mut started: Vec<(&FeedConfig, FeedQuery, Setup, Cursor, Arc<Health>)> = plans
        .into_iter()
        .zip(heads)
        .map(|((feed, query, setup), head)| {
            (feed, query, Setup::Append(setup), head, Arc::default())
        })
        .collect();
    for (feed, query) in changes {
        let health = Arc::new(Health::default());
        let setup = prepare_changes(&source, feed, &query, &health).await?;
        let head = poller::changes_head(&setup.first, setup.query.skew(feed.tuning.clock_skew));
        started.push((feed, query, Setup::Changes(Box::new(setup)), head, health));
    }
    // In configuration order, whatever the mode.
    started.sort_by_key(|(feed, ..)| config.feeds.iter().position(|f| f.name == feed.name));
    let bus = match &config.cluster {
        Some(cluster) => Some(Bus::connect(&cluster.bus, &cluster.prefix).await?),
        None => None,
    };
    if let (Some(bus), Some(cluster)) = (&bus, &config.cluster) {
        say_clustered(&source, bus, cluster, &config.feeds);
    }
    let mut served = Vec::with_capacity(started.len());
    let mut setups = Vec::with_capacity(started.len());
    for (feed, query, setup, head, health) in started {
        let mut reader: Arc<dyn Reader> = Arc::new(TableReader {
            source: source.clone(),
            query: query.clone(),
            changes: match &setup {
                Setup::Changes(changes) => Some(changes.query.clone()),
                Setup::Append(_) => None,
            },
            tuning: feed.tuning.clone(),
            health: health.clone(),
        });
        if let Some((bus, _)) = clustered(bus.as_ref(), &source, &setup) {
            reader = Arc::new(cluster::BusFirst {
                bus,
                feed: feed.name.clone(),
                style: crate::feed::style_of(feed, &query),
                table: reader,
            });
        }
        let feed = Arc::new(Feed::new(
            feed.clone(),
            query,
            reader,
            head,
            config.client_buffer,
        ));
        let fanout = Fanout::of(&feed);
        served.push(Served {
            feed,
            health,
            fanout,
            membership: Arc::default(),
        });
        setups.push(setup);
    }
    Ok(Feeds {
        source,
        served,
        setups,
        bus,
    })
}

/// Says at start-up which feeds the cluster shares and which this instance
/// polls alone.
fn say_clustered(source: &Source, bus: &Bus, cluster: &config::Cluster, feeds: &[FeedConfig]) {
    let bus_url = source::redact(&cluster.bus);
    if matches!(source, Source::Sqlite(_)) {
        tracing::warn!(bus = %bus_url, "SQLite feeds are not clustered: a SQLite file has no sessions to hold a leader's lock, so every instance polls its own feeds and the bus is not used");
        return;
    }
    for feed in feeds {
        match feed.mode {
            Mode::Append => {
                tracing::info!(feed = %feed.name, bus = %bus_url, kind = bus.kind(), prefix = %cluster.prefix, "clustered: one instance polls the feed, the others follow the bus")
            }
            Mode::Changes => {
                tracing::warn!(feed = %feed.name, "changes feeds are not clustered yet: every instance polls this feed itself")
            }
        }
    }
}

/// Whether the cluster shares this feed: an append feed of a database
/// with sessions to hold its lock.
fn clustered(bus: Option<&Bus>, source: &Source, setup: &Setup) -> Option<(Bus, GapSetup)> {
    match (bus, source, setup) {
        (_, Source::Sqlite(_), _) | (None, ..) => None,
        (Some(bus), _, Setup::Append(gaps)) => Some((bus.clone(), gaps.clone())),
        (_, _, Setup::Changes(_)) => None,
    }
}

/// Checks a changes feed's columns, says how it sees deletes and writers,
/// and samples its horizon.
async fn prepare_changes(
    source: &Source,
    feed: &FeedConfig,
    query: &FeedQuery,
    health: &Health,
) -> Result<ChangesSetup, Error> {
    let (changes, deletes, zone_warning) = source.plan_changes(feed, query).await?;
    if let Some(warning) = zone_warning {
        tracing::warn!("{warning}");
    }
    let bad = |source| source::Error::BadQuery {
        feed: feed.name.clone(),
        source,
    };
    // Each statement once, matching nothing, so that a mistake stops
    // start-up instead of every poll.
    let never = 4_102_444_800_000; // 2100-01-01
    for result in [
        source.read_window(&changes, never, None, 1).await.map(drop),
        source
            .read_snapshot(&changes, i128::from(i64::MAX), 1)
            .await
            .map(drop),
        source
            .read_tombstones(&changes, never, 0, 1)
            .await
            .map(drop),
    ] {
        match result {
            Err(source::Error::Query(err)) => return Err(bad(err).into()),
            other => other?,
        }
    }
    if let Some(column) = &changes.deleted_column {
        tracing::info!(feed = %feed.name, %column, "changes feed: a row whose column is set is sent as a delete (soft delete)")
    }
    if changes.indexed == Some(false) {
        tracing::warn!(feed = %feed.name, "no index of {} starts with `{}`: every poll scans the table; add one: {}", query.table, changes.updated_column, changes.index_sql(query));
    }
    if deletes {
        tracing::info!(feed = %feed.name, table = source::DELETES_TABLE, "changes feed: hard deletes are read from the rowcast_deletes table");
    } else {
        tracing::info!(feed = %feed.name, "changes feed: no rowcast_deletes table, so hard deletes are not seen (install it with `rowcast sql deletes --table … --apply`)");
    }
    let method = match changes.xmin {
        true => {
            tracing::info!(feed = %feed.name, "changes feed in xmin mode: rows are found by the transaction that last wrote them; every poll scans the table (small tables only)");
            horizon::Method {
                horizon: Horizon::PgXmin,
                warning: None,
            }
        }
        false => Horizon::choose(source, &feed.name).await?,
    };
    if let Some(warning) = &method.warning {
        tracing::warn!("{warning}");
    }
    let mut horizon = method.horizon;
    let first = horizon.sample(source, feed.tuning.max_txn_age).await?;
    let skew = changes.skew(feed.tuning.clock_skew);
    let since = first.horizon_ms - i64::try_from(skew.as_millis()).unwrap_or(0);
    let primed = Primed::read(source, &changes, since, feed.tuning.batch_size, health).await?;
    tracing::info!(feed = %feed.name, column = %changes.updated_column, "changes feed: following inserts, updates and deletes by this column");
    Ok(ChangesSetup {
        primed,
        max_id: source.max_id(query).await?,
        query: changes,
        horizon,
        first,
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
    for (served, setup) in feeds.served.iter().zip(feeds.setups) {
        match (
            clustered(feeds.bus.as_ref(), &feeds.source, &setup),
            &config.cluster,
        ) {
            (Some((bus, gaps)), Some(cluster)) => pollers.spawn(cluster::run(
                cluster::Member {
                    feed: served.feed.clone(),
                    source: feeds.source.clone(),
                    gaps,
                    health: served.health.clone(),
                    membership: served.membership.clone(),
                    bus,
                    prefix: cluster.prefix.clone(),
                },
                token.clone(),
            )),
            _ => pollers.spawn(poller::run(
                served.feed.clone(),
                feeds.source.clone(),
                setup,
                served.health.clone(),
                token.clone(),
            )),
        };
        let fanout = served.fanout.clone();
        pollers.spawn(fanout.run(config.keep_alive, token.clone()));
    }
    let tables = doorbell_tables(&feeds.source, &feeds.served);
    if !tables.is_empty() {
        pollers.spawn(doorbell::listen(
            config.database_url.clone(),
            feeds.source.clone(),
            tables,
            token.clone(),
        ));
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
        database = feeds.source.kind(),
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
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, feeds.source.close()).await;
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
        .filter(|s| s.feed.config.notify != Notify::Off)
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
