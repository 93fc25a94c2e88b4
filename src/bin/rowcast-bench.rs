//! `rowcast-bench`: measurements of rowcast taken from the outside, the way
//! a user sees it: the release `rowcast` binary as a child process, real
//! databases, real HTTP clients.
//!
//! # `latency`: from INSERT to the client
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
//! written; and the machine's load average.
//!
//! Modes:
//! - `notify` (Postgres only): the trigger of `rowcast sql notify` is
//!   installed and rowcast runs with `--notify on --notify-interval 30s`, so
//!   each commit rings the poller at once.
//! - `polling`: `--notify off`; rowcast finds rows by polling, every
//!   `--poll-interval` while rows flow.
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
//! cargo run --release --bin rowcast-bench -- latency
//! cargo run --release --bin rowcast-bench -- latency --database postgres --mode notify --clients 1000
//! ```
//!
//! Client, server and database share the machine, so the figures include
//! their competition for the CPU. C clients take C open files here and C in
//! rowcast.

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use sqlx::{mysql::MySqlPoolOptions, postgres::PgPoolOptions, MySqlPool, PgPool};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Measure rowcast from the outside.
#[derive(Debug, Parser)]
#[command(name = "rowcast-bench")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Latency from INSERT to SSE client, with and without the NOTIFY doorbell.
    Latency(LatencyArgs),
}

#[derive(Debug, Args)]
struct LatencyArgs {
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
    /// Rows inserted per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long rows go in, at the same rate, before the measured ones; they
    /// are not measured [default: max-poll-interval + 2 × poll-interval].
    #[arg(long, value_parser = humantime::parse_duration)]
    warmup: Option<Duration>,
    /// rowcast's `--poll-interval`.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// rowcast's `--max-poll-interval`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    max_poll_interval: Duration,
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
enum Database {
    Postgres,
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Notify,
    Polling,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Bench::Latency(args) => latency(args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("rowcast-bench: some clients did not get every row exactly once, in order");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("rowcast-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every measurement asked for; `Ok(false)` when a delivery check failed.
async fn latency(args: LatencyArgs) -> anyhow::Result<bool> {
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

/// `rowcast` next to this executable, as `cargo build --release` leaves it.
fn locate_rowcast(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => {
            let me = std::env::current_exe().context("cannot find this executable")?;
            let dir = me.parent().context("this executable has no directory")?;
            dir.join(format!("rowcast{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first (or pass --rowcast)",
            path.display()
        );
    }
    // `cargo run --bin rowcast-bench` does not rebuild rowcast: show its age.
    let age = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|built| built.elapsed().ok())
        .map(|age| {
            format!(
                ", built {} ago",
                humantime::format_duration(Duration::from_secs(age.as_secs()))
            )
        })
        .unwrap_or_default();
    eprintln!("rowcast-bench: measuring {}{age}", path.display());
    Ok(path)
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
    db.create_table(&table).await?;
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
    db.insert(table, now_us(), "seed").await?;
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
    let (target_ms, slowest_poll) = match mode {
        Mode::Notify => {
            install_notify_trigger(rowcast, url, table).await?;
            serve.extend(["--notify=on".to_owned(), "--notify-interval=30s".to_owned()]);
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
        println!("    {}{cpu}{}", m.breakdown, load_average());
        for problem in m.problems.iter().take(5) {
            println!("    {problem}");
        }
        if m.problems.len() > 5 {
            println!("    … and {} more clients", m.problems.len() - 5);
        }
    }
}

/// Installs the NOTIFY trigger the way a user would: `rowcast sql notify --apply`.
async fn install_notify_trigger(rowcast: &Path, url: &str, table: &str) -> anyhow::Result<()> {
    let output = Command::new(rowcast)
        .args(["sql", "notify", "--apply"])
        .arg(format!("--table={table}"))
        .arg(format!("--database-url={url}"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run `rowcast sql notify`")?;
    if !output.status.success() {
        bail!(
            "`rowcast sql notify --apply` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The benchmark's own connection to the database: DDL and the writer.
enum Db {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

impl Db {
    async fn connect(database: Database, url: &str) -> anyhow::Result<Db> {
        let db = match database {
            Database::Postgres => {
                Db::Postgres(PgPoolOptions::new().max_connections(2).connect(url).await?)
            }
            Database::Mysql => Db::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await?,
            ),
        };
        Ok(db)
    }

    async fn create_table(&self, table: &str) -> anyhow::Result<()> {
        match self {
            Db::Postgres(pool) => {
                let sql = format!("CREATE TABLE {table} (id bigserial PRIMARY KEY, sent_at_us bigint NOT NULL, body text)");
                sqlx::query(&sql).execute(pool).await?;
            }
            Db::Mysql(pool) => {
                let sql = format!("CREATE TABLE {table} (id bigint AUTO_INCREMENT PRIMARY KEY, sent_at_us bigint NOT NULL, body text) ENGINE=InnoDB");
                sqlx::query(&sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    async fn drop_table(&self, table: &str) -> anyhow::Result<()> {
        let sql = format!("DROP TABLE IF EXISTS {table}");
        match self {
            Db::Postgres(pool) => {
                sqlx::query(&sql).execute(pool).await?;
            }
            Db::Mysql(pool) => {
                sqlx::query(&sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Inserts one row in its own transaction; returns its id.
    async fn insert(&self, table: &str, sent_at_us: i64, body: &str) -> anyhow::Result<i64> {
        match self {
            Db::Postgres(pool) => {
                let sql =
                    format!("INSERT INTO {table} (sent_at_us, body) VALUES ($1, $2) RETURNING id");
                Ok(sqlx::query_scalar(&sql)
                    .bind(sent_at_us)
                    .bind(body)
                    .fetch_one(pool)
                    .await?)
            }
            Db::Mysql(pool) => {
                let sql = format!("INSERT INTO {table} (sent_at_us, body) VALUES (?, ?)");
                let done = sqlx::query(&sql)
                    .bind(sent_at_us)
                    .bind(body)
                    .execute(pool)
                    .await?;
                Ok(i64::try_from(done.last_insert_id())?)
            }
        }
    }
}

/// A `rowcast serve` child process, killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts rowcast on a free port and waits until `/healthz` answers 200.
    async fn start(rowcast: &Path, mut args: Vec<String>) -> anyhow::Result<Server> {
        let addr = StdListener::bind("127.0.0.1:0")?.local_addr()?;
        args.push(format!("--listen={addr}"));
        let mut child = Command::new(rowcast)
            .args(&args)
            // Flags win over the environment, except a config file's feeds.
            .env_remove("ROWCAST_CONFIG")
            .env("RUST_LOG", "rowcast=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", rowcast.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("rowcast exited ({status}) before serving; its log is above");
            }
            if healthz(addr).await.unwrap_or(false) {
                return Ok(Server { child, addr });
            }
            if Instant::now() > deadline {
                bail!("rowcast on {addr} did not answer /healthz with 200 within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        // The benchmark is over; a clean shutdown is not what it measures.
        let _ = self.child.kill().await;
    }
}

async fn healthz(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 200 "))
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
    /// One line per client that did not get every row once, in order.
    problems: Vec<String>,
}

/// Per measured row, in µs, sorted: the parts of a delivery's latency.
#[derive(Default)]
struct Breakdown {
    /// The INSERT's round trip, commit included.
    insert: Vec<i64>,
    /// From the INSERT to the first client that got the row.
    first: Vec<i64>,
    /// From the first client that got the row to the last.
    spread: Vec<i64>,
}

impl Breakdown {
    /// Gathers each row's fastest and slowest client.
    fn new(written: &[Written], logs: &[Vec<(i64, i64)>]) -> Breakdown {
        let mut fastest = vec![i64::MAX; written.len()];
        let mut slowest = vec![i64::MIN; written.len()];
        for &(id, latency) in logs.iter().flatten() {
            if let Ok(i) = written.binary_search_by_key(&id, |w| w.id) {
                fastest[i] = fastest[i].min(latency);
                slowest[i] = slowest[i].max(latency);
            }
        }
        let mut b = Breakdown::default();
        for (i, w) in written.iter().enumerate() {
            b.insert.push(w.committed_us - w.sent_us);
            if fastest[i] <= slowest[i] {
                b.first.push(fastest[i]);
                b.spread.push(slowest[i] - fastest[i]);
            }
        }
        for part in [&mut b.insert, &mut b.first, &mut b.spread] {
            part.sort_unstable();
        }
        b
    }
}

impl std::fmt::Display for Breakdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |part: &[i64], p| percentile(part, p) as f64 / 1000.0;
        let parts = [
            ("INSERT", &self.insert),
            ("to first client", &self.first),
            ("first to last client", &self.spread),
        ];
        let mut sep = "p50/p99 ms per row:";
        for (name, part) in parts {
            write!(f, "{sep} {name} {:.1}/{:.1}", ms(part, 0.5), ms(part, 0.99))?;
            sep = ",";
        }
        Ok(())
    }
}

impl Run<'_> {
    async fn measure(&self, db: &Db, args: &LatencyArgs) -> anyhow::Result<Measured> {
        let stop = CancellationToken::new();
        let _stop_on_return = stop.clone().drop_guard();
        let received = Arc::new(AtomicUsize::new(0));
        let path = format!("/events/{}", self.feed);
        let mut clients = Vec::with_capacity(self.clients);
        let mut connected = Vec::with_capacity(self.clients);
        for _ in 0..self.clients {
            let (ready, ready_rx) = oneshot::channel();
            let client = Client {
                addr: self.addr,
                path: path.clone(),
                ready: Some(ready),
                received: received.clone(),
                events: Vec::with_capacity(args.warmup_rows() + args.rows),
            };
            clients.push(tokio::spawn(client.run(stop.clone())));
            connected.push(ready_rx);
        }
        let all_connected = async {
            for ready in connected {
                if ready.await.is_err() {
                    return false;
                }
            }
            true
        };
        if !tokio::time::timeout(Duration::from_secs(60), all_connected)
            .await
            .unwrap_or(false)
        {
            stop.cancel();
            let mut failed = 0;
            let mut cause = "timed out".to_owned();
            for client in clients {
                if let Err(err) = client.await? {
                    failed += 1;
                    cause = format!("{err:#}");
                }
            }
            bail!(
                "{failed} of {} clients could not connect: {cause}",
                self.clients
            );
        }

        let cpu_before = self.cpu_times(&received);
        let written = write_rows(db, self.feed, args).await?;
        let ids: Vec<i64> = written.iter().map(|w| w.id).collect();
        let expected = self.clients * ids.len();
        let deadline = Instant::now() + self.settle;
        while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu = cpu_before.and_then(|before| Some(self.cpu_times(&received)?.since(&before)));
        // Give a duplicate the chance to show up.
        tokio::time::sleep(args.poll_interval).await;
        stop.cancel();

        let first_measured = ids[args.warmup_rows()];
        let mut latencies_us = Vec::with_capacity(expected);
        let mut problems = Vec::new();
        let mut logs = Vec::with_capacity(self.clients);
        for (n, client) in clients.into_iter().enumerate() {
            let (events, error) = match client.await? {
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
            problems,
        })
    }

    fn cpu_times(&self, received: &AtomicUsize) -> Option<CpuTimes> {
        Some(CpuTimes {
            at: Instant::now(),
            received: received.load(Ordering::Relaxed),
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

/// The CPU time of a process, summed over its threads, where Linux tells it.
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        let nanos: u64 = stat.split_whitespace().next()?.parse().ok()?;
        total += Duration::from_nanos(nanos);
    }
    Some(total)
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
        let id = db.insert(table, sent_us, body).await?;
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

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The machine's one-minute load average, where Linux tells it: the other
/// work that competed for the CPU.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| {
            text.split_whitespace()
                .next()
                .map(|l| format!("; load {l}"))
        })
        .unwrap_or_default()
}

fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_micros() as i64
}

/// One SSE client: a hand-written HTTP/1.1 GET, then the stream read line by
/// line. Cheap enough to run a thousand on two cores.
struct Client {
    addr: SocketAddr,
    path: String,
    /// Fired at the `retry:` line: rowcast has placed the client in the feed.
    ready: Option<oneshot::Sender<()>>,
    /// Rows received by every client together.
    received: Arc<AtomicUsize>,
    /// (row id, latency in µs) of each event, in arrival order.
    events: Vec<(i64, i64)>,
}

/// A row as the benchmark reads it from an event's `data:`.
#[derive(Deserialize)]
struct Row {
    id: i64,
    sent_at_us: i64,
}

impl Client {
    /// Reads until `stop`; returns what arrived.
    async fn run(mut self, stop: CancellationToken) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut stream = TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            self.path, self.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut body = HttpBody::default();
        let mut buf = vec![0; 8192];
        loop {
            let n = tokio::select! {
                n = stream.read(&mut buf) => n?,
                _ = stop.cancelled() => return Ok(self.events),
            };
            if n == 0 {
                bail!("rowcast closed the stream");
            }
            // Everything in one read arrived at the same moment.
            let now = now_us();
            body.push(&buf[..n], |line| self.line(line, now))?;
        }
    }

    fn line(&mut self, line: &[u8], now: i64) -> anyhow::Result<()> {
        if line.starts_with(b"retry:") {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(());
            }
        } else if let Some(data) = line.strip_prefix(b"data:") {
            let row: Row = serde_json::from_slice(data).context("an event's data is not a row")?;
            self.events.push((row.id, now - row.sent_at_us));
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Turns the bytes of an HTTP/1.1 response into the lines of its body,
/// undoing the chunked transfer encoding that a stream is sent with.
#[derive(Default)]
struct HttpBody {
    /// Received bytes not decoded yet.
    raw: Vec<u8>,
    /// The start of a body line whose end has not arrived.
    partial: Vec<u8>,
    state: BodyState,
}

#[derive(Default, Clone, Copy)]
enum BodyState {
    /// Reading the status line and headers.
    #[default]
    Head,
    /// The body is not chunked: every byte is body.
    Plain,
    /// Expecting a chunk-size line.
    ChunkSize,
    /// Inside a chunk, with this many bytes left.
    ChunkData(usize),
    /// Expecting the CRLF after a chunk.
    ChunkEnd,
}

impl HttpBody {
    fn push(
        &mut self,
        bytes: &[u8],
        mut on_line: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.raw.extend_from_slice(bytes);
        let raw = std::mem::take(&mut self.raw);
        let mut at = 0;
        while at < raw.len() {
            let rest = &raw[at..];
            match self.state {
                BodyState::Head => {
                    let Some(end) = find(rest, b"\r\n\r\n") else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
                    if !head.starts_with("http/1.1 200 ") {
                        bail!("rowcast answered {}", head.lines().next().unwrap_or(""));
                    }
                    let chunked = head
                        .lines()
                        .any(|h| h.starts_with("transfer-encoding:") && h.contains("chunked"));
                    self.state = if chunked {
                        BodyState::ChunkSize
                    } else {
                        BodyState::Plain
                    };
                    at += end + 4;
                }
                BodyState::Plain => {
                    split_lines(&mut self.partial, rest, &mut on_line)?;
                    at = raw.len();
                }
                BodyState::ChunkSize => {
                    let Some(end) = find(rest, b"\r\n") else {
                        break;
                    };
                    let line = std::str::from_utf8(&rest[..end])?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .with_context(|| format!("bad chunk size {line:?}"))?;
                    if size == 0 {
                        bail!("rowcast ended the stream");
                    }
                    self.state = BodyState::ChunkData(size);
                    at += end + 2;
                }
                BodyState::ChunkData(left) => {
                    let take = left.min(rest.len());
                    split_lines(&mut self.partial, &rest[..take], &mut on_line)?;
                    self.state = match left - take {
                        0 => BodyState::ChunkEnd,
                        left => BodyState::ChunkData(left),
                    };
                    at += take;
                }
                BodyState::ChunkEnd => {
                    if rest.len() < 2 {
                        break;
                    }
                    if !rest.starts_with(b"\r\n") {
                        bail!("a chunk does not end with CRLF");
                    }
                    self.state = BodyState::ChunkSize;
                    at += 2;
                }
            }
        }
        self.raw = raw;
        self.raw.drain(..at);
        Ok(())
    }
}

/// Calls `on_line` for each complete line of `bytes`, after the start kept
/// in `partial`; keeps the incomplete end there.
fn split_lines(
    partial: &mut Vec<u8>,
    mut bytes: &[u8],
    on_line: &mut impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
        let line = if partial.is_empty() {
            &bytes[..nl]
        } else {
            partial.extend_from_slice(&bytes[..nl]);
            &partial[..]
        };
        on_line(line.strip_suffix(b"\r").unwrap_or(line))?;
        partial.clear();
        bytes = &bytes[nl + 1..];
    }
    partial.extend_from_slice(bytes);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
