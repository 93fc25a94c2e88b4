//! `fanout`: rowcast's Server-Sent Events fan-out against nginx with the
//! nchan module, side by side, read by the same clients in the same run.
//!
//! Each side is started fresh for each scenario ([`target`]): rowcast on a
//! new Postgres table with the NOTIFY trigger (`--notify off` to poll
//! only), nginx+nchan as a child process publishing the same JSON per row.
//! The clients ([`crowd`], [`stream`]) are one tokio task per connection,
//! spread over the source addresses 127.0.0.1–8, connected a few hundred at
//! a time; rowcast's are ready at the `retry:` line, nchan's at the response
//! head. Each client checks that its row ids come one after the other, and
//! the latency `now - sent_at_us` of every delivery goes into one histogram.
//!
//! Scenarios, run in this order (all of them by default):
//! - `idle`: N idle connections: the server's RSS growth per connection,
//!   connect errors, then one row that every client must get.
//! - `sweep`: C clients; rows at 1, 2, 4, 8… rows/s (then bisected), a step
//!   each; the highest rate at which every client gets every row with a p99
//!   under the limit, as deliveries/s, and the server's CPU per delivery.
//! - `fixed`: C clients at R rows/s: latency, checks, CPU, queries.
//! - `clients`: rowcast's database queries/s with 1, 1000 and 10000 clients
//!   at the same rate — equal within noise when the database load does not
//!   depend on the clients (nchan has no database: n/a).
//! - `start`: a server just started, rows going in at R rows/s from the
//!   start, and C clients coming back meanwhile, each resuming from the row
//!   before the start (as after a deploy, when users watch): the first
//!   window's latency beside the next ones', back to back.
//! - `storm` ([`storm`], rowcast only): C clients, rows flowing; all of them
//!   drop and reconnect at once, each with its own Last-Event-ID among the
//!   last `--storm-spread` rows (inside the replay ring): the queries the
//!   storm cost beyond the usual polls, and every row after each client's
//!   Last-Event-ID exactly once, in order.
//!
//! `--direct-fanout false` runs rowcast with every stream served through
//! hyper instead of its direct fan-out: the A/B of the fan-out (and what a
//! deployment needing TLS or HTTP/2 in rowcast itself would get).
//!
//! Database queries are counted two ways: `seq_scan + idx_scan` of the
//! table in `pg_stat_user_tables` (see `polling`'s `Snapshot` for how its
//! flush lag cancels out over a steady window; `pg_stat_statements` is not
//! assumed), and rowcast's own `rowcast_queries_total` from `/metrics`.
//! Server CPU is the run time of its threads (schedstat), RSS is `VmRSS`.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- fanout
//! cargo run --release -p rowcast-bench -- fanout idle --idle-clients 100
//! cargo run --release -p rowcast-bench -- fanout sweep --side nchan
//! ```
//!
//! Clients, servers and Postgres share the machine, so every figure
//! includes their competition for the CPU. A process may hold only as many
//! open files as its hard limit allows; the benchmark raises its own soft
//! limit to it, and its children inherit that.

pub(crate) mod crowd;
mod histogram;
mod nchan;
mod report;
mod storm;
pub mod stream;
mod sweep;
mod target;
mod window;

use crate::locate_rowcast;
use anyhow::bail;
use clap::{Args, ValueEnum};
use report::{column, Block};
use std::path::PathBuf;
use std::time::Duration;
use target::{Setup, Side, Target};
use window::{Connected, Window};

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Scenarios to run, in order [default: all].
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
    /// Servers to measure.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Side::Rowcast, Side::Nchan])]
    side: Vec<Side>,
    /// `idle`: connections held open.
    #[arg(long, default_value_t = 19_000)]
    idle_clients: usize,
    /// `sweep`: clients.
    #[arg(long, default_value_t = 10_000)]
    sweep_clients: usize,
    /// `sweep`: how long rows go in at each rate.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sweep_step: Duration,
    /// `sweep`: the p99 a rate must stay under.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    sweep_p99: Duration,
    /// `sweep`: the highest rate tried, in rows/s.
    #[arg(long, default_value_t = 4096.0)]
    sweep_max_rate: f64,
    /// `sweep`: bisection steps between the last rate passed and the first failed.
    #[arg(long, default_value_t = 2)]
    sweep_bisect: usize,
    /// `fixed`: clients.
    #[arg(long, default_value_t = 1_000)]
    fixed_clients: usize,
    /// `fixed`: rows per second.
    #[arg(long, default_value_t = 100.0)]
    fixed_rate: f64,
    /// `clients`: client counts, one window each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 1_000, 10_000])]
    check_clients: Vec<usize>,
    /// `clients`: rows per second.
    #[arg(long, default_value_t = 10.0)]
    check_rate: f64,
    /// `start`: clients.
    #[arg(long, default_value_t = 10_000)]
    start_clients: usize,
    /// `start`: rows per second.
    #[arg(long, default_value_t = 10.0)]
    start_rate: f64,
    /// `start`: measured windows, back to back, from the first row on.
    #[arg(long, default_value_t = 3)]
    start_windows: usize,
    /// `storm`: clients.
    #[arg(long, default_value_t = 10_000)]
    storm_clients: usize,
    /// `storm`: rows per second, before, during and after the storm.
    #[arg(long, default_value_t = 20.0)]
    storm_rate: f64,
    /// `storm`: clients resume after one of the last this many rows
    /// (at most half of `--ring-size`, so every one is in the replay ring).
    #[arg(long, default_value_t = 1_000)]
    storm_spread: usize,
    /// Length of the measured windows of `fixed`, `clients` and `storm`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Longest wait for the last deliveries after the last row.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// rowcast's NOTIFY doorbell: `on` (the trigger is installed) or `off`
    /// (polling only).
    #[arg(long, value_enum, default_value_t = Notify::On)]
    notify: Notify,
    /// rowcast's `--ring-size`.
    #[arg(long, default_value_t = 10_000)]
    ring_size: usize,
    /// rowcast's `--direct-fanout`: `false` serves every stream through
    /// hyper, for an A/B of the direct fan-out.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    direct_fanout: bool,
    /// Postgres database to create the tables in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// The rowcast binary [default: `rowcast` next to this executable].
    #[arg(long)]
    rowcast: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// The nchan module nginx loads.
    #[arg(long, default_value = "/usr/lib/nginx/modules/ngx_nchan_module.so")]
    nchan_module: PathBuf,
    /// nginx's `worker_connections`. nchan takes some of them for itself:
    /// at 20000, 19000 subscribers get ~250 resets ("worker_connections are
    /// not enough"); nginx's open files stay limited to 20000 all the same.
    #[arg(long, default_value_t = 24_000)]
    worker_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Idle,
    Sweep,
    Fixed,
    Clients,
    Start,
    Storm,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Notify {
    On,
    Off,
}

/// Files the benchmark keeps for itself beside its clients.
const OWN_FILES: u64 = 500;
/// Warm-up rows before a measured window, at its rate.
const WARMUP: Duration = Duration::from_secs(2);

/// Runs the scenarios asked for; `Ok(false)` when a check failed.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<bool> {
    let mut scenarios = args.scenarios.clone();
    if scenarios.is_empty() || scenarios.contains(&Scenario::All) {
        scenarios = vec![
            Scenario::Idle,
            Scenario::Sweep,
            Scenario::Fixed,
            Scenario::Clients,
            Scenario::Start,
            Scenario::Storm,
        ];
    }
    let rates = [
        args.fixed_rate,
        args.check_rate,
        args.start_rate,
        args.storm_rate,
    ];
    if rates.iter().any(|r| r.is_nan() || *r <= 0.0) || args.sweep_max_rate < 1.0 {
        bail!("rates must be greater than zero");
    }
    let files = raise_open_files_limit();
    let most = [
        args.idle_clients,
        args.sweep_clients,
        args.fixed_clients,
        args.start_clients,
        args.storm_clients,
    ]
    .into_iter()
    .chain(args.check_clients.iter().copied())
    .max()
    .unwrap_or(0) as u64;
    if files.is_some_and(|files| most + OWN_FILES > files) {
        bail!(
            "{most} clients need {} open files; this process may have {}",
            most + OWN_FILES,
            files.unwrap_or(0)
        );
    }
    let setup = Setup {
        rowcast: if args.side.contains(&Side::Rowcast) {
            Some(locate_rowcast(args.rowcast.clone())?)
        } else {
            None
        },
        postgres_url: args.postgres_url.clone(),
        notify: args.notify == Notify::On,
        ring_size: args.ring_size,
        direct_fanout: args.direct_fanout,
        nginx: args.nginx.clone(),
        nchan_module: args.nchan_module.clone(),
        worker_connections: args.worker_connections,
    };
    println!(
        "fanout: rowcast {} NOTIFY, direct fan-out {}; {} cores{}",
        if setup.notify { "with" } else { "without" },
        if setup.direct_fanout { "on" } else { "off" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        crate::cpu::load_average()
    );
    report::print_header();
    let mut all_ok = true;
    for scenario in scenarios {
        let (block, ok) = match scenario {
            Scenario::Idle => idle(&args, &setup).await?,
            Scenario::Sweep => sweep::sweep(&args, &setup).await?,
            Scenario::Fixed => fixed(&args, &setup).await?,
            Scenario::Clients => clients(&args, &setup).await?,
            Scenario::Start => start(&args, &setup).await?,
            Scenario::Storm => storm::storm(&args, &setup).await?,
            Scenario::All => continue,
        };
        block.print();
        all_ok &= ok;
    }
    Ok(all_ok)
}

/// Runs `body` on a fresh server of `side`, then stops it whatever happened.
async fn on_fresh<T>(
    side: Side,
    setup: &Setup,
    body: impl AsyncFnOnce(&mut Target) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut target = Target::start(side, setup).await?;
    let outcome = body(&mut target).await;
    let log = target.server.log();
    let lines: Vec<&str> = log.lines().collect();
    if !lines.is_empty() {
        let last = &lines[lines.len().saturating_sub(10)..];
        progress(
            side,
            format!(
                "logged {} lines, the last:\n{}",
                lines.len(),
                last.join("\n")
            ),
        );
    }
    target.stop().await?;
    outcome
}

/// Runs `body` on a fresh server of each side taking part, rowcast first,
/// after saying `doing` on stderr; each side's result sits in its column.
async fn each_side<T>(
    args: &FanoutArgs,
    setup: &Setup,
    doing: &str,
    body: impl AsyncFn(&mut Target) -> anyhow::Result<T>,
) -> anyhow::Result<[Option<T>; 2]> {
    let mut results = [None, None];
    for side in [Side::Rowcast, Side::Nchan] {
        if measured(args, side) {
            progress(side, doing);
            results[column(side)] = Some(on_fresh(side, setup, &body).await?);
        }
    }
    Ok(results)
}

/// Whether a side takes part.
fn measured(args: &FanoutArgs, side: Side) -> bool {
    args.side.contains(&side)
}

/// Progress, on stderr, so the table on stdout stays a table.
fn progress(side: Side, text: impl std::fmt::Display) {
    eprintln!("fanout: {:<7} {text}", format!("{side:?}").to_lowercase());
}

async fn idle(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let doing = format!("idle: connecting {} clients", args.idle_clients);
    let results = each_side(args, setup, &doing, async |target| {
        let connected = window::connect(target, args.idle_clients, args.parallel).await;
        // One row, to show every idle stream still delivers.
        let one = Duration::from_millis(500);
        let window = window::measure(target, &connected.crowd, 1.0, one, args.settle).await?;
        Ok((connected, window))
    })
    .await?;
    let mut block = Block::new(format!("idle: {} connections", args.idle_clients));
    block.connected(results.each_ref().map(|r| r.as_ref().map(|r| &r.0)));
    let windows = results.each_ref().map(|r| r.as_ref().map(|r| &r.1));
    block.line(
        "then one row: every client got it",
        windows,
        report::verdict,
    );
    Ok((block, close(results).await))
}

async fn fixed(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let doing = format!(
        "fixed: {} clients, {} rows/s",
        args.fixed_clients, args.fixed_rate
    );
    let results = each_side(args, setup, &doing, async |target| {
        let connected = window::connect(target, args.fixed_clients, args.parallel).await;
        let crowd = &connected.crowd;
        window::measure(target, crowd, args.fixed_rate, WARMUP, args.settle).await?;
        let window =
            window::measure(target, crowd, args.fixed_rate, args.duration, args.settle).await?;
        Ok((connected, window))
    })
    .await?;
    let mut block = Block::new(format!(
        "fixed: {} clients, {} rows/s for {}",
        args.fixed_clients,
        args.fixed_rate,
        humantime::format_duration(args.duration)
    ));
    block.connected(results.each_ref().map(|r| r.as_ref().map(|r| &r.0)));
    block.window(results.each_ref().map(|r| r.as_ref().map(|r| &r.1)), true);
    Ok((block, close(results).await))
}

async fn start(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let doing = format!(
        "start: {} clients on a fresh server, {} rows/s",
        args.start_clients, args.start_rate
    );
    let results = each_side(args, setup, &doing, async |target| {
        // No warm-up: the first rows after a start are what is measured,
        // while the clients come back.
        let (connected, first) = window::measure_arriving(
            target,
            args.start_clients,
            args.parallel,
            args.start_rate,
            args.duration,
            args.settle,
        )
        .await?;
        let mut windows = vec![first];
        for _ in 1..args.start_windows {
            let crowd = &connected.crowd;
            windows.push(
                window::measure(target, crowd, args.start_rate, args.duration, args.settle).await?,
            );
        }
        Ok((connected, windows))
    })
    .await?;
    let mut block = Block::new(format!(
        "start: {} clients on a fresh server, {} rows/s, windows of {}",
        args.start_clients,
        args.start_rate,
        humantime::format_duration(args.duration)
    ));
    block.connected(results.each_ref().map(|r| r.as_ref().map(|r| &r.0)));
    for n in 0..args.start_windows {
        let windows = results
            .each_ref()
            .map(|r| r.as_ref().and_then(|r| r.1.get(n)));
        block.line(
            &format!("window {}: latency p50 / p99 / max, ms", n + 1),
            windows,
            report::latency,
        );
        block.line(
            &format!("window {}: every row once, in order", n + 1),
            windows,
            report::verdict,
        );
    }
    let ok = results
        .iter()
        .flatten()
        .all(|(c, windows)| c.connect_errors == 0 && windows.iter().all(|w| w.check.ok()));
    for (mut connected, _) in results.into_iter().flatten() {
        connected.crowd.close().await;
    }
    Ok((block, ok))
}

/// Whether every side connected every client and every client got every
/// row; closes the clients.
async fn close(results: [Option<(Connected, Window)>; 2]) -> bool {
    let ok = results
        .iter()
        .flatten()
        .all(|(c, w)| c.connect_errors == 0 && w.check.ok());
    for (mut connected, _) in results.into_iter().flatten() {
        connected.crowd.close().await;
    }
    ok
}

/// rowcast only: the database load at each client count, same rate.
async fn clients(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let mut block = Block::new(format!(
        "clients: DB queries/s at {} rows/s, by client count (same rowcast)",
        args.check_rate
    ));
    if !measured(args, Side::Rowcast) {
        return Ok((block, true));
    }
    let windows = on_fresh(Side::Rowcast, setup, async |target| {
        let mut windows = Vec::new();
        for &count in &args.check_clients {
            progress(Side::Rowcast, format!("clients: {count} clients"));
            let mut connected = window::connect(target, count, args.parallel).await;
            let crowd = &connected.crowd;
            window::measure(target, crowd, args.check_rate, WARMUP, args.settle).await?;
            let window =
                window::measure(target, crowd, args.check_rate, args.duration, args.settle).await?;
            windows.push((count, connected.connect_errors, window));
            connected.crowd.close().await;
        }
        Ok(windows)
    })
    .await?;
    let mut ok = true;
    for (count, errors, window) in &windows {
        ok &= *errors == 0 && window.check.ok();
        let qps = [window.queries_per_s(), None];
        block.line(
            &format!("{count} clients: DB q/s pg_stat / rowcast"),
            qps,
            |q| format!("{:.1} / {:.1}", q.0, q.1),
        );
        let sides = [Some(window), None];
        block.line(
            &format!("{count} clients: every row once ({errors} conn err)"),
            sides,
            report::verdict,
        );
    }
    Ok((block, ok))
}

/// Raises this process's soft limit of open files to its hard limit;
/// returns the limit now in force, where the system tells it.
fn raise_open_files_limit() -> Option<u64> {
    rlimit::increase_nofile_limit(u64::MAX).ok()
}
