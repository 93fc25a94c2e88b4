//! Start-up of the table feeds: each checked against the catalog, its
//! gaps' writers or its changes window set up, and its poller's starting
//! point found; and which of them a cluster shares.

use super::{Error, Reading};
use crate::bus::Bus;
use crate::cluster::{self, Plan};
use crate::config::{self, Config, FeedConfig, Mode, Notify};
use crate::cursor::Cursor;
use crate::feed::{Feed, Reader};
use crate::http::Served;
use crate::poller::{self, ChangesSetup, Health, Primed, Setup, TableReader};
use crate::source::horizon::{self, Horizon};
use crate::source::{self, FeedQuery, Source};
use std::sync::Arc;

/// Checks every table feed of `config` against the catalog of `source`;
/// each starts at its table's current greatest id. The feeds come in
/// configuration order, with what each poller starts with.
pub(super) async fn prepare(
    config: &Config,
    source: &Source,
    bus: Option<&Bus>,
) -> Result<Vec<(Served, Reading)>, Error> {
    let tables = config.feeds.iter().filter(|f| f.topic.is_none());
    let mut plans = Vec::with_capacity(config.feeds.len());
    let mut changes = Vec::new();
    for feed in tables {
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
            .map(|(feed, query, gaps)| poller::starting_head(source, feed, query, gaps)),
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
        let setup = prepare_changes(source, feed, &query, &health).await?;
        let head = poller::changes_head(&setup.first, setup.query.skew(feed.tuning.clock_skew));
        started.push((feed, query, Setup::Changes(Box::new(setup)), head, health));
    }
    // In configuration order, whatever the mode.
    started.sort_by_key(|(feed, ..)| config.feeds.iter().position(|f| f.name == feed.name));
    let mut prepared = Vec::with_capacity(started.len());
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
            clock: clustered(bus, source, &setup).is_some(),
        });
        // A clustered feed catches clients up from the bus first.
        if let Some((bus, _)) = clustered(bus, source, &setup) {
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
        let served = Served::new(feed, health);
        prepared.push((served, Reading::Table(setup)));
    }
    Ok(prepared)
}

/// Says at start-up which feeds the cluster shares and which this instance
/// polls alone.
pub(super) fn say_clustered(
    source: &Source,
    bus: &Bus,
    cluster: &config::Cluster,
    feeds: &[FeedConfig],
) {
    let bus_url = crate::bus::redact(&cluster.bus);
    if matches!(source, Source::Sqlite(_)) {
        tracing::warn!(bus = %bus_url, "SQLite feeds are not clustered: a SQLite file has no sessions to hold a leader's lock, so every instance polls its own feeds and the bus is not used");
        return;
    }
    for feed in feeds.iter().filter(|f| f.topic.is_none()) {
        tracing::info!(feed = %feed.name, bus = %bus_url, kind = bus.kind(), prefix = %cluster.prefix, "clustered: one instance polls the feed, the others follow the bus")
    }
}

/// Whether the cluster shares this feed, and how its leaders poll it: a
/// feed of a database with sessions to hold its lock.
pub(super) fn clustered(bus: Option<&Bus>, source: &Source, setup: &Setup) -> Option<(Bus, Plan)> {
    let plan = match setup {
        Setup::Append(gaps) => Plan::Append(gaps.clone()),
        Setup::Changes(changes) => Plan::Changes(changes.query.clone()),
    };
    match (bus, source) {
        (_, Source::Sqlite(_)) | (None, _) => None,
        (Some(bus), _) => Some((bus.clone(), plan)),
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
        term_began_us: None,
        max_id: source.max_id(query).await?,
        query: changes,
        horizon,
        first,
    })
}
