//! `polling`: short-polling clients on `GET /feeds/{feed}/rows`, against
//! the same clients on the hand-written endpoint it replaces.
//!
//! For each side, one after the other, it creates a Postgres table
//! `(id, sent_at_us, body)` with one row, and serves it:
//! - `rowcast`: `rowcast serve --notify off` as a child process, otherwise
//!   with its default settings; clients ask
//!   `GET /feeds/<table>/rows?after=<cursor>&limit=100`.
//! - `naive` ([`naive`]): an endpoint in the benchmark's process that runs
//!   `SELECT id, row_to_json(t)::text … WHERE id > $1 ORDER BY id LIMIT 100`
//!   per request on a pool of ten connections; clients ask
//!   `GET /rows?after=<cursor>`.
//!
//! Then C clients (`--clients`, 1000) each send one request a second with
//! their cursor and take the answer's cursor for the next one, on a kept
//! connection, starting from the table's row, their first requests spread
//! over the first second. Meanwhile a writer inserts rows at a steady rate
//! (`--rate`, 5 a second, one autocommitted INSERT each), so that answers
//! have rows (at 5 a second, nearly all of them). After a warm-up (`--warmup`, 3 s) a window
//! (`--duration`, 30 s) is measured: the requests sent in it and answered,
//! their response times as the clients see them (p50, p99, max), and the
//! queries of the table counted by Postgres (see [`Snapshot`]), per second.
//! The CPU that the server and all of Postgres used in the window is shown
//! too. At the end every client's rows are checked: in strictly increasing
//! id order, no row twice, and every row written after its first cursor up
//! to its last one there.
//!
//! Targets: rowcast makes at least 100× fewer database queries than the
//! naive endpoint, and answers with a p99 under 20 ms.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- polling
//! cargo run --release -p rowcast-bench -- polling --side rowcast --rate 50 --duration 10s
//! ```
//!
//! Clients, servers and Postgres share the machine. C clients take C open
//! files here and C in the server (for the naive side, in this process
//! too).

mod client;
mod naive;
mod report;

use crate::cpu::{cpu_time, postgres_cpu_time, threads_cpu_time};
use crate::db::{table_scans, Db};
use crate::http::Connection;
use crate::server::{metric, Server};
use crate::{locate_rowcast, now_us, percentile};
use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use client::PollClient;
use naive::Naive;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct PollingArgs {
    /// Short-polling clients, one request a second each.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// How long the measured window lasts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How long clients poll and rows go in before the window.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Rows inserted per second while clients poll.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Endpoints to measure, one after the other.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Side::Rowcast, Side::Naive])]
    side: Vec<Side>,
    /// Postgres database to create the tables in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// The rowcast binary [default: `rowcast` next to this executable].
    #[arg(long)]
    rowcast: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Rowcast,
    Naive,
}

/// What one side's window found.
pub struct Outcome {
    side: Side,
    /// Requests sent in the window and answered: 200, rows and a cursor.
    requests: usize,
    /// Of those, answers with rows.
    with_rows: usize,
    p50_us: i64,
    p99_us: i64,
    max_us: i64,
    /// The window's length, between the two readings of the counters.
    window: Duration,
    /// Queries of the table, as Postgres counts them.
    db_queries: i64,
    /// Queries of the table, as the server counts them.
    own_queries: i64,
    /// CPU used in the window, in shares of one core.
    server_cpu: Option<f64>,
    postgres_cpu: Option<f64>,
    /// Requests that failed, in the whole run, and the last reason.
    failures: usize,
    last_failure: Option<String>,
    /// Rows in the table at the end.
    rows: usize,
    /// One line per client whose rows were wrong.
    problems: Vec<String>,
}

/// Measures each side asked for; `Ok(false)` when a client's rows were
/// wrong or requests failed.
pub async fn polling(args: PollingArgs) -> anyhow::Result<bool> {
    if args.clients == 0 || !(args.rate.is_finite() && args.rate > 0.0) || args.duration.is_zero() {
        bail!("--clients, --rate and --duration must be greater than zero");
    }
    let rowcast = if args.side.contains(&Side::Rowcast) {
        Some(locate_rowcast(args.rowcast.clone())?)
    } else {
        None
    };
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.postgres_url)
        .await
        .context("cannot connect to Postgres")?;
    let mut outcomes = Vec::new();
    for &side in &args.side {
        eprintln!(
            "rowcast-bench: {}: {} clients, {} warm-up, {} measured",
            format!("{side:?}").to_lowercase(),
            args.clients,
            humantime::format_duration(args.warmup),
            humantime::format_duration(args.duration),
        );
        outcomes.push(measure_side(&args, rowcast.as_deref(), &pool, side).await?);
    }
    report::print(&args, &outcomes);
    Ok(outcomes
        .iter()
        .all(|o| o.problems.is_empty() && o.failures == 0))
}

/// One side on a table of its own, dropped whatever happens.
async fn measure_side(
    args: &PollingArgs,
    rowcast: Option<&Path>,
    pool: &PgPool,
    side: Side,
) -> anyhow::Result<Outcome> {
    let db = Db::Postgres(pool.clone());
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let table =
        format!("rowcast_bench_{stamp}_{}_poll_{side:?}", std::process::id()).to_lowercase();
    db.create_table(&table).await?;
    let outcome = measure_table(args, rowcast, pool, &table, side).await;
    let dropped = db.drop_table(&table).await;
    let outcome = outcome?;
    dropped?;
    Ok(outcome)
}

async fn measure_table(
    args: &PollingArgs,
    rowcast: Option<&Path>,
    pool: &PgPool,
    table: &str,
    side: Side,
) -> anyhow::Result<Outcome> {
    let db = Db::Postgres(pool.clone());
    // The row the clients start after, as a page shows the latest rows.
    let seed = db.insert(table, now_us(), "seed").await?;
    let endpoint = Endpoint::start(side, rowcast, &args.postgres_url, table).await?;
    let path = Arc::new(endpoint.path(table));

    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();
    let start = Instant::now() + Duration::from_millis(100);
    let writer = tokio::spawn(write_rows(
        db,
        table.to_owned(),
        args.rate,
        start,
        stop.clone(),
    ));
    let clients: Vec<_> = (0..args.clients)
        .map(|n| {
            let client = PollClient {
                conn: Connection::new(endpoint.addr()),
                path: path.clone(),
                start: seed,
            };
            let first = Duration::from_secs(1).mul_f64(n as f64 / args.clients as f64);
            tokio::spawn(client.run(start, first, stop.clone()))
        })
        .collect();

    let window_start = start + args.warmup;
    tokio::time::sleep_until(window_start.into()).await;
    let before = Snapshot::take(pool, table, &endpoint).await?;
    tokio::time::sleep_until((window_start + args.duration).into()).await;
    let after = Snapshot::take(pool, table, &endpoint).await?;
    stop.cancel();

    let mut written = vec![seed];
    written.extend(writer.await??);
    let mut logs = Vec::with_capacity(args.clients);
    for client in clients {
        logs.push(client.await?);
    }
    endpoint.stop().await;

    let window = args.warmup..args.warmup + args.duration;
    let mut took: Vec<i64> = Vec::with_capacity(args.clients * args.duration.as_secs() as usize);
    let mut with_rows = 0;
    for answered in logs.iter().flat_map(|l| &l.answered) {
        if window.contains(&answered.sent) {
            took.push(answered.took_us);
            with_rows += usize::from(answered.rows);
        }
    }
    took.sort_unstable();
    let problems = logs
        .iter()
        .enumerate()
        .filter_map(|(n, log)| Some(format!("client {n}: {}", log.check(&written)?)))
        .collect();
    let elapsed = after.at - before.at;
    let share = |b: Option<Duration>, a: Option<Duration>| {
        Some(a?.saturating_sub(b?).as_secs_f64() / elapsed.as_secs_f64())
    };
    Ok(Outcome {
        side,
        requests: took.len(),
        with_rows,
        p50_us: percentile(&took, 0.50),
        p99_us: percentile(&took, 0.99),
        max_us: took.last().copied().unwrap_or(0),
        window: elapsed,
        db_queries: after.scans - before.scans,
        own_queries: after.own - before.own,
        server_cpu: share(before.server_cpu, after.server_cpu),
        postgres_cpu: share(before.postgres_cpu, after.postgres_cpu),
        failures: logs.iter().map(|l| l.failures).sum(),
        last_failure: logs.iter().rev().find_map(|l| l.last_failure.clone()),
        rows: written.len(),
        problems,
    })
}

/// The server of one side.
enum Endpoint {
    Rowcast(Server),
    Naive(Naive),
}

impl Endpoint {
    async fn start(
        side: Side,
        rowcast: Option<&Path>,
        url: &str,
        table: &str,
    ) -> anyhow::Result<Endpoint> {
        Ok(match side {
            Side::Rowcast => {
                let rowcast = rowcast.context("no rowcast binary")?;
                let serve = vec![
                    "serve".to_owned(),
                    format!("--database-url={url}"),
                    format!("--table={table}"),
                    "--notify=off".to_owned(),
                ];
                Endpoint::Rowcast(Server::start(rowcast, serve).await?)
            }
            Side::Naive => Endpoint::Naive(Naive::start(url, table).await?),
        })
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Endpoint::Rowcast(server) => server.addr,
            Endpoint::Naive(naive) => naive.addr,
        }
    }

    /// The path of a request, before the cursor and after it.
    fn path(&self, table: &str) -> (String, String) {
        match self {
            Endpoint::Rowcast(_) => (format!("/feeds/{table}/rows?after="), "&limit=100".into()),
            Endpoint::Naive(_) => ("/rows?after=".into(), String::new()),
        }
    }

    /// Queries of the table so far, as the server counts them: rowcast's
    /// `rowcast_queries_total`, the naive endpoint's requests.
    async fn own_queries(&self, table: &str) -> anyhow::Result<i64> {
        match self {
            Endpoint::Rowcast(server) => {
                let queries = metric(server.addr, "rowcast_queries_total", table).await?;
                Ok(queries as i64)
            }
            Endpoint::Naive(naive) => Ok(naive.queries() as i64),
        }
    }

    /// The CPU time the server used so far.
    fn cpu(&self) -> Option<Duration> {
        match self {
            Endpoint::Rowcast(server) => cpu_time(server.child.id()?),
            Endpoint::Naive(_) => threads_cpu_time(naive::THREAD_NAME),
        }
    }

    async fn stop(self) {
        match self {
            Endpoint::Rowcast(server) => server.stop().await,
            Endpoint::Naive(naive) => naive.stop().await,
        }
    }
}

/// The counters at one end of the window.
///
/// `scans` is how Postgres counts queries of the table: `seq_scan +
/// idx_scan` of `pg_stat_user_tables`. Each statement that reads the table
/// raises it by one, with whichever scan its plan chose (on a table this
/// small the naive query is a sequential scan); the writer's INSERTs scan
/// nothing. Planning adds a little: a custom plan for a parameter past the
/// table's statistics looks the column's actual end up in the index, one
/// index scan, and a prepared statement gets five custom plans when it is
/// new and again after each ANALYZE. So `scans` may run a few above the
/// statements run, which is work the database did all the same.
///
/// A backend publishes its counts late: at the end of a transaction once
/// its last flush is a second old (PGSTAT_MIN_INTERVAL), or, when it goes
/// idle with counts pending, up to 10 s later (PGSTAT_IDLE_INTERVAL,
/// PostgreSQL 15). `pg_stat_force_next_flush()` flushes only the backend
/// that calls it, not rowcast's nor the pool's. Stopping the server would
/// flush its backends at the end, but the reading at the start would still
/// lag, and the difference would count up to a second of queries from
/// before the window. So both readings are taken alike, while clients and
/// writer run: every backend that reads the table then queries several
/// times a second (rowcast's poller on its two connections while rows flow;
/// the pool's connections ~100 times a second each), each reading lacks
/// about the last second of each backend, the same at both ends of a steady
/// window, and the lags cancel but for a fraction of one second's queries.
/// The servers' own counts (`own`), read at the same moments, are printed
/// beside it as a check.
struct Snapshot {
    at: Instant,
    scans: i64,
    own: i64,
    server_cpu: Option<Duration>,
    postgres_cpu: Option<Duration>,
}

impl Snapshot {
    async fn take(pool: &PgPool, table: &str, endpoint: &Endpoint) -> anyhow::Result<Snapshot> {
        let at = Instant::now();
        let server_cpu = endpoint.cpu();
        let postgres_cpu = postgres_cpu_time();
        let scans: i64 = table_scans(pool, table).await?;
        let own = endpoint.own_queries(table).await?;
        Ok(Snapshot {
            at,
            scans,
            own,
            server_cpu,
            postgres_cpu,
        })
    }
}

/// Inserts rows at a steady rate from `start` until `stop`; returns their
/// ids. An INSERT under way when `stop` comes is finished.
async fn write_rows(
    db: Db,
    table: String,
    rate: f64,
    start: Instant,
    stop: CancellationToken,
) -> anyhow::Result<Vec<i64>> {
    let mut tick = tokio::time::interval_at(start.into(), Duration::from_secs_f64(1.0 / rate));
    let mut ids = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(ids),
            _ = tick.tick() => {}
        }
        ids.push(db.insert(&table, now_us(), "row").await?);
    }
}
