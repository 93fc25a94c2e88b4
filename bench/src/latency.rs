//! `latency`: from INSERT to the client.
//!
//! For each database (Postgres, MySQL/MariaDB) and mode, it creates a table
//! `(id, sent_at_us, body)`, starts `rowcast serve` on it, and for each client
//! count C opens C Server-Sent Events streams to the feed. Once every stream
//! has its `retry:` line, a writer inserts rows at a steady rate, one
//! autocommitted INSERT each, stamping `sent_at_us` with the wall clock just
//! before the INSERT is sent. Each client subtracts that stamp from the clock
//! when the event arrives, so a latency covers the commit, rowcast noticing
//! and reading the row, the fan-out and the read by the client. Every client
//! must get every row exactly once and in order; a mismatch is reported. One
//! line is printed per database, mode and client count: deliveries, then the
//! p50, p99 and max latency over all deliveries. An indented line under it
//! says where the time went: per row, the INSERT's round trip, the latency
//! of the first client to get the row and the spread from first to last
//! client; the CPU that rowcast and the benchmark used while rows were
//! written; how often rowcast read the table meanwhile (its
//! `rowcast_queries_total`); and the machine's load average.
//!
//! Modes:
//! - `notify` (Postgres only): the trigger of `rowcast sql notify` is
//!   installed and rowcast runs with `--notify on --notify-interval 30s`, so
//!   each commit rings the poller at once. `--notify-window` passes
//!   rowcast's own: at a high `--rate`, compare the default with `0s` to see
//!   what sharing polls between notifications saves.
//! - `polling`: `--notify off`; rowcast finds rows by polling, every
//!   `--poll-interval` while rows flow.
//!
//! Feeds: `--feed append` (the default) inserts rows; `--feed changes`
//! runs rowcast with `--mode changes` on a table of `--table-rows` rows
//! (with or without the index on `(updated_at, id)`, `--index`) and updates
//! them one by one instead, each UPDATE stamping `sent_at_us` and
//! `updated_at`. The indented line then also gives the database's cost per
//! poll: rowcast's polls per second and the rows the database read per poll
//! (Postgres counts the table's own; MySQL/MariaDB only every table's).
//! `--xmin` (Postgres) runs the feed in xmin mode instead of `updated_at`.
//!
//! Targets: with NOTIFY, p99 under 10 ms at 1000 clients; polling only, p99
//! under the shortest poll interval + 10 ms while rows flow. Since an idle
//! poller waits up to `--max-poll-interval` before it sees the first row,
//! rows go in for a warm-up time first (`--warmup`, by default that longest
//! interval plus two shortest); they are checked but not measured.
//!
//! Run it by hand, with the local databases up, after a release build (it
//! starts the `rowcast` found next to its own executable):
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- latency
//! cargo run --release -p rowcast-bench -- latency --database postgres --mode notify --clients 1000
//! ```
//!
//! Client, server and database share the machine, so the figures include
//! their competition for the CPU. C clients take C open files here and C in
//! rowcast.

mod breakdown;
mod readers;

use crate::cpu::{cpu_time, load_average};
use crate::db::{install_notify_trigger, Database, Db};
use crate::server::{metric, Server};
use crate::{locate_rowcast, now_us, percentile};
use anyhow::bail;
use breakdown::Breakdown;
use clap::{Args, ValueEnum};
use readers::Readers;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Args)]
pub struct LatencyArgs {
    /// Databases to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Database::Postgres, Database::Mysql])]
    database: Vec<Database>,
    /// Modes to measure (`notify` is measured on Postgres only).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Notify, Mode::Polling])]
    mode: Vec<Mode>,
    /// Numbers of concurrent SSE clients, one measurement each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 100, 1000])]
    clients: Vec<usize>,
    /// Measured rows inserted per measurement.
    #[arg(long, default_value_t = 200)]
    rows: usize,
    /// Rows inserted (or updated) per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// What the feed follows: new rows (`append`) or updates (`changes`).
    #[arg(long = "feed", value_enum, default_value_t = FeedMode::Append)]
    feed_mode: FeedMode,
    /// Changes feeds: rows in the table before the measurement (at least
    /// the rows updated).
    #[arg(long, default_value_t = 1000)]
    table_rows: usize,
    /// Changes feeds: whether the table has the index on `(updated_at, id)`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    index: bool,
    /// Changes feeds on Postgres: find changes by `xmin` (every poll scans
    /// the table) instead of `updated_at`.
    #[arg(long)]
    xmin: bool,
    /// How long rows go in, at the same rate, before the measured ones; they
    /// are not measured [default: max-poll-interval + 2 × poll-interval].
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// Threads that read the clients' streams (one per core by default, so
    /// that reading keeps pace with a fan-out that runs on every core).
    #[arg(long, default_value_t = std::thread::available_parallelism().map_or(1, |n| n.get()))]
    reader_threads: usize,
    /// rowcast's `--poll-interval`.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// rowcast's `--max-poll-interval`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    max_poll_interval: Duration,
    /// rowcast's `--notify-window` [default: rowcast's]; `0s` polls on
    /// every notification.
    #[arg(long, value_parser = humantime::parse_duration)]
    notify_window: Option<Duration>,
    /// Postgres database to create the tables in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// MySQL/MariaDB database to create the tables in.
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/test")]
    mysql_url: String,
    /// The rowcast binary [default: `rowcast` next to this executable].
    #[arg(long)]
    rowcast: Option<PathBuf>,
}

impl LatencyArgs {
    /// The rows inserted before the measured ones.
    fn warmup_rows(&self) -> usize {
        let time = self
            .warmup
            .unwrap_or(self.max_poll_interval + 2 * self.poll_interval);
        (time.as_secs_f64() * self.rate).ceil() as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FeedMode {
    Append,
    Changes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Notify,
    Polling,
}

/// Runs every measurement asked for; `Ok(false)` when a delivery check failed.
pub async fn latency(args: LatencyArgs) -> anyhow::Result<bool> {
    if args.rows == 0 || args.clients.contains(&0) || args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--rows, --clients and --rate must be greater than zero");
    }
    let rowcast = locate_rowcast(args.rowcast.clone())?;
    Line::print_header();
    let mut all_delivered = true;
    for &database in &args.database {
        for &mode in &args.mode {
            if mode == Mode::Notify && database != Database::Postgres {
                continue;
            }
            all_delivered &= measure_setup(&args, &rowcast, database, mode).await?;
        }
    }
    Ok(all_delivered)
}

/// One table and one rowcast process on one database in one mode, measured
/// at each client count. The table is dropped whatever happens.
async fn measure_setup(
    args: &LatencyArgs,
    rowcast: &Path,
    database: Database,
    mode: Mode,
) -> anyhow::Result<bool> {
    let url = match database {
        Database::Postgres => &args.postgres_url,
        Database::Mysql => &args.mysql_url,
    };
    let db = Db::connect(database, url).await?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let table = format!("rowcast_bench_{stamp}_{}_{mode:?}", std::process::id()).to_lowercase();
    match args.feed_mode {
        FeedMode::Append => db.create_table(&table).await?,
        FeedMode::Changes => {
            let rows = args.table_rows.max(args.warmup_rows() + args.rows);
            db.create_changes_table(&table, rows, args.index).await?
        }
    }
    let outcome = measure_table(args, rowcast, &db, url, &table, database, mode).await;
    let dropped = db.drop_table(&table).await;
    let delivered = outcome?;
    dropped?;
    Ok(delivered)
}

async fn measure_table(
    args: &LatencyArgs,
    rowcast: &Path,
    db: &Db,
    url: &str,
    table: &str,
    database: Database,
    mode: Mode,
) -> anyhow::Result<bool> {
    // A feed whose table is empty at start-up holds its first rows for the
    // gap grace window; a row already there avoids measuring that.
    if args.feed_mode == FeedMode::Append {
        db.insert(table, now_us(), "seed").await?;
    }
    let mut serve = vec![
        "serve".to_owned(),
        format!("--database-url={url}"),
        format!("--table={table}"),
        format!(
            "--poll-interval={}",
            humantime::format_duration(args.poll_interval)
        ),
        format!(
            "--max-poll-interval={}",
            humantime::format_duration(args.max_poll_interval)
        ),
    ];
    if args.feed_mode == FeedMode::Changes {
        serve.push("--mode=changes".to_owned());
        if args.xmin {
            serve.push("--updated-column=xmin".to_owned());
        }
    }
    let (target_ms, slowest_poll) = match mode {
        Mode::Notify => {
            install_notify_trigger(rowcast, url, table).await?;
            serve.extend(["--notify=on".to_owned(), "--notify-interval=30s".to_owned()]);
            if let Some(window) = args.notify_window {
                serve.push(format!(
                    "--notify-window={}",
                    humantime::format_duration(window)
                ));
            }
            (10.0, Duration::from_secs(30))
        }
        Mode::Polling => {
            serve.push("--notify=off".to_owned());
            let target = args.poll_interval.as_secs_f64() * 1000.0 + 10.0;
            (target, args.max_poll_interval)
        }
    };
    let server = Server::start(rowcast, serve).await?;
    let mut all_delivered = true;
    for &clients in &args.clients {
        let run = Run {
            addr: server.addr,
            server_pid: server.child.id(),
            feed: table,
            clients,
            settle: Duration::from_secs(10) + 2 * slowest_poll,
        };
        let measured = run.measure(db, args).await?;
        all_delivered &= measured.problems.is_empty();
        let line = Line {
            database,
            mode,
            clients,
            rows: args.rows,
            target_ms,
        };
        line.print(&measured);
    }
    server.stop().await;
    Ok(all_delivered)
}

/// One line of the table, before its figures.
struct Line {
    database: Database,
    mode: Mode,
    clients: usize,
    rows: usize,
    target_ms: f64,
}

impl Line {
    fn print_header() {
        println!(
            "{:<9} {:<8} {:>7} {:>15} {:>8} {:>8} {:>8}  {:<12} result",
            "database", "mode", "clients", "deliveries", "p50 ms", "p99 ms", "max ms", "p99 target"
        );
    }

    /// Prints the line, then where the time went, then any client that did
    /// not get every row once, in order.
    fn print(&self, m: &Measured) {
        let result = if !m.problems.is_empty() {
            "ROWS WRONG".to_owned()
        } else if m.p99_ms < self.target_ms {
            "ok".to_owned()
        } else {
            format!("missed by {:.1} ms", m.p99_ms - self.target_ms)
        };
        println!(
            "{:<9} {:<8} {:>7} {:>15} {:>8.1} {:>8.1} {:>8.1}  {:<12} {result}",
            format!("{:?}", self.database).to_lowercase(),
            format!("{:?}", self.mode).to_lowercase(),
            self.clients,
            format!("{}/{}", m.deliveries, self.clients * self.rows),
            m.p50_ms,
            m.p99_ms,
            m.max_ms,
            format!("< {} ms", self.target_ms),
        );
        let cpu = m.cpu.as_ref().map_or(String::new(), |c| {
            format!(
                "; CPU while writing: rowcast {:.0}% of a core ({:.0} µs per delivery), bench {:.0}% ({:.0} µs)",
                c.rowcast * 100.0,
                c.rowcast_us,
                c.bench * 100.0,
                c.bench_us,
            )
        });
        println!(
            "    {}{cpu}; rowcast read the table {:.1} times/s{}{}",
            m.breakdown,
            m.polls_per_s,
            m.cost.as_deref().unwrap_or(""),
            load_average()
        );
        for problem in m.problems.iter().take(5) {
            println!("    {problem}");
        }
        if m.problems.len() > 5 {
            println!("    … and {} more clients", m.problems.len() - 5);
        }
    }
}

/// One measurement: C clients on one running rowcast.
struct Run<'a> {
    addr: SocketAddr,
    /// rowcast's process id, to read the CPU time it used.
    server_pid: Option<u32>,
    feed: &'a str,
    clients: usize,
    /// How long to wait for the last deliveries after the last INSERT.
    settle: Duration,
}

/// What one measurement found.
struct Measured {
    /// Measured rows received, over all clients.
    deliveries: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Where the time goes, per measured row.
    breakdown: Breakdown,
    /// CPU used while rows were written, when known.
    cpu: Option<CpuShare>,
    /// rowcast's queries of the table per second while rows were written.
    polls_per_s: f64,
    /// Changes feeds: polls per second and rows the database read per poll.
    cost: Option<String>,
    /// One line per client that did not get every row once, in order.
    problems: Vec<String>,
}

impl Run<'_> {
    async fn measure(&self, db: &Db, args: &LatencyArgs) -> anyhow::Result<Measured> {
        let readers = Readers::start(
            self.addr,
            &format!("/events/{}", self.feed),
            self.clients,
            args.reader_threads,
            args.warmup_rows() + args.rows,
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while readers.ready() + readers.failed() < self.clients && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ready = readers.ready();
        if ready < self.clients {
            let failed = readers.failed();
            let cause = readers
                .finish()
                .into_iter()
                .find_map(Result::err)
                .map_or("timed out".to_owned(), |err| format!("{err:#}"));
            bail!(
                "{} of {} clients could not connect ({failed} failed): {cause}",
                self.clients - ready,
                self.clients
            );
        }

        let cpu_before = self.cpu_times(readers.received());
        let queries_before = metric(self.addr, "rowcast_queries_total", self.feed).await?;
        let polls_before = metric(self.addr, "rowcast_polls_total", self.feed).await?;
        let read_before = db.rows_read(self.feed).await?;
        let writing = Instant::now();
        let written = write_rows(db, self.feed, args).await?;
        let elapsed = writing.elapsed().as_secs_f64();
        let polls_per_s = (metric(self.addr, "rowcast_queries_total", self.feed).await?
            - queries_before)
            / elapsed;
        let polls = metric(self.addr, "rowcast_polls_total", self.feed).await? - polls_before;
        // Postgres publishes its counters within a second or so.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let rows_per_poll = (db.rows_read(self.feed).await? - read_before) as f64 / polls.max(1.0);
        let cost = (args.feed_mode == FeedMode::Changes).then(|| {
            format!(
                "; {:.1} polls/s, {rows_per_poll:.0} rows read per poll",
                polls / elapsed
            )
        });
        let ids: Vec<i64> = written.iter().map(|w| w.id).collect();
        let expected = self.clients * ids.len();
        let deadline = Instant::now() + self.settle;
        while readers.received() < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu =
            cpu_before.and_then(|before| Some(self.cpu_times(readers.received())?.since(&before)));
        // Give a duplicate the chance to show up.
        tokio::time::sleep(args.poll_interval).await;
        let received = tokio::task::spawn_blocking(move || readers.finish()).await?;

        let first_measured = ids[args.warmup_rows()];
        let mut latencies_us = Vec::with_capacity(expected);
        let mut problems = Vec::new();
        let mut logs = Vec::with_capacity(self.clients);
        for (n, client) in received.into_iter().enumerate() {
            let (events, error) = match client {
                Ok(events) => (events, None),
                Err(err) => (Vec::new(), Some(err)),
            };
            let got: Vec<i64> = events.iter().map(|&(id, _)| id).collect();
            if got != ids || error.is_some() {
                problems.push(format!(
                    "client {n}: {}",
                    mismatch(&got, &ids, error.as_ref())
                ));
            }
            latencies_us.extend(
                events
                    .iter()
                    .filter(|&&(id, _)| id >= first_measured)
                    .map(|&(_, us)| us),
            );
            logs.push(events);
        }
        latencies_us.sort_unstable();
        let ms = |us: i64| us as f64 / 1000.0;
        Ok(Measured {
            deliveries: latencies_us.len(),
            p50_ms: ms(percentile(&latencies_us, 0.50)),
            p99_ms: ms(percentile(&latencies_us, 0.99)),
            max_ms: ms(latencies_us.last().copied().unwrap_or(0)),
            breakdown: Breakdown::new(&written[args.warmup_rows()..], &logs),
            cpu,
            polls_per_s,
            cost,
            problems,
        })
    }

    fn cpu_times(&self, received: usize) -> Option<CpuTimes> {
        Some(CpuTimes {
            at: Instant::now(),
            received,
            rowcast: cpu_time(self.server_pid?)?,
            bench: cpu_time(std::process::id())?,
        })
    }
}

/// CPU time used so far by rowcast and by the benchmark.
struct CpuTimes {
    at: Instant,
    /// Deliveries so far.
    received: usize,
    rowcast: Duration,
    bench: Duration,
}

impl CpuTimes {
    /// What each used since `before`.
    fn since(&self, before: &CpuTimes) -> CpuShare {
        let wall = (self.at - before.at).as_secs_f64();
        let deliveries = self.received.saturating_sub(before.received).max(1) as f64;
        let rowcast = self.rowcast.saturating_sub(before.rowcast).as_secs_f64();
        let bench = self.bench.saturating_sub(before.bench).as_secs_f64();
        CpuShare {
            rowcast: rowcast / wall,
            bench: bench / wall,
            rowcast_us: rowcast * 1e6 / deliveries,
            bench_us: bench * 1e6 / deliveries,
        }
    }
}

/// CPU used while rows were written: shares of one core, and µs per
/// delivery to one client.
struct CpuShare {
    rowcast: f64,
    bench: f64,
    rowcast_us: f64,
    bench_us: f64,
}

/// A row the writer inserted.
struct Written {
    id: i64,
    /// Its `sent_at_us`: the clock just before the INSERT was sent.
    sent_us: i64,
    /// The clock when the INSERT returned.
    committed_us: i64,
}

/// Inserts the warm-up rows, then the measured ones, at a steady rate.
async fn write_rows(db: &Db, table: &str, args: &LatencyArgs) -> anyhow::Result<Vec<Written>> {
    let warmup = args.warmup_rows();
    let total = warmup + args.rows;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut written = Vec::with_capacity(total);
    for n in 0..total {
        tick.tick().await;
        let body = if n < warmup { "warm-up" } else { "measured" };
        let sent_us = now_us();
        let id = match args.feed_mode {
            FeedMode::Append => db.insert(table, sent_us, body).await?,
            // The table's rows, each updated once, in id order.
            FeedMode::Changes => {
                let id = n as i64 + 1;
                db.touch(table, id, sent_us).await?;
                id
            }
        };
        written.push(Written {
            id,
            sent_us,
            committed_us: now_us(),
        });
    }
    Ok(written)
}

/// How a client's rows differ from the rows written.
fn mismatch(got: &[i64], want: &[i64], error: Option<&anyhow::Error>) -> String {
    let mut text = format!("{} of {} rows", got.len(), want.len());
    let missing = want.iter().filter(|id| !got.contains(id)).count();
    let mut unique = got.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let repeated = got.len() - unique.len();
    text.push_str(&format!(", {missing} missing, {repeated} repeated"));
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        text.push_str(&format!(
            ", first difference at #{at}: id {} for {}",
            got[at], want[at]
        ));
    }
    if let Some(err) = error {
        text.push_str(&format!("; stream failed: {err:#}"));
    }
    text
}
