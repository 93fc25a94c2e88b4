//! `cluster`: rowcast alone against several rowcast instances sharing one
//! bus, in the same run, on the same kind of Postgres table: what the
//! database sees, what clients get and what each instance holds.
//!
//! Each configuration starts fresh: a new table `(id bigserial, sent_at_us,
//! body)` with the NOTIFY trigger, then `rowcast serve` once without a bus,
//! or `--instances` times with `--bus`. Clients (the fan-out benchmark's,
//! one task per stream, checking that ids come one after the other) are
//! spread evenly over the instances. One window of rows at `--rate` rows/s:
//! the table's `seq_scan + idx_scan` (`pg_stat_user_tables`) and the
//! instances' `rowcast_queries_total` per second, deliveries per second,
//! delivery latency (now − the row's `sent_at_us`) per instance, and each
//! instance's RSS growth per connection. Then one row to every client.
//!
//! One process holds at most as many open files as its hard limit (20,000
//! on the machine the README's figures come from), so each instance's
//! clients run in a process of their own (`crowd`). `--clients` is the
//! total over the instances; alone, one instance holds them all, so the
//! one-instance run takes at most `--alone-clients`.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- cluster --clients 30000
//! cargo run --release -p rowcast-bench -- cluster --clients 57000 --rate 1 --duration 5s
//! ```

pub mod crowd;

use crate::cpu::rss_kib;
use crate::db::{install_notify_trigger, table_scans, Db};
use crate::now_us;
use crate::server::{metric, Server};
use anyhow::Context as _;
use clap::Args;
use crowd::Remote;
use sqlx::postgres::PgPoolOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Instances sharing the bus.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Clients in all, spread evenly over the instances.
    #[arg(long, default_value_t = 9_000)]
    clients: usize,
    /// Rows per second in the measured window.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long the measured window writes.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// The bus the instances share.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    bus: String,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// The rowcast binary [default: the one beside this executable].
    #[arg(long)]
    rowcast: Option<PathBuf>,
    /// Clients of the one-instance run at most (one process holds them).
    #[arg(long, default_value_t = 19_000)]
    alone_clients: usize,
    /// Clients connecting at once, per instance.
    #[arg(long, default_value_t = 500)]
    parallel: usize,
}

/// One configuration's servers and their table.
struct Deployment {
    db: Db,
    table: String,
    servers: Vec<Server>,
    last: i64,
}

/// What one configuration measured.
struct Measured {
    instances: usize,
    clients: usize,
    connect_errors: usize,
    rss_per_client_kib: Vec<f64>,
    rows: usize,
    elapsed: Duration,
    scans_per_s: f64,
    rowcast_queries_per_s: Vec<f64>,
    deliveries: u64,
    /// p50, p99, max per instance, µs.
    latency: Vec<(u64, u64, u64)>,
    ok: bool,
    one_row: bool,
    roles: Vec<String>,
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<bool> {
    let rowcast = crate::locate_rowcast(args.rowcast.clone())?;
    let mut all_ok = true;
    let mut results = Vec::new();
    for instances in [1, args.instances] {
        let bus = (instances > 1).then_some(args.bus.as_str());
        eprintln!("cluster: {instances} instance(s), {} clients", args.clients);
        let measured = measure(&args, &rowcast, instances, bus).await?;
        all_ok &= measured.ok && measured.one_row;
        results.push(measured);
    }
    report(&args, &results);
    Ok(all_ok)
}

async fn deploy(
    args: &ClusterArgs,
    rowcast: &std::path::Path,
    instances: usize,
    bus: Option<&str>,
) -> anyhow::Result<Deployment> {
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&args.postgres_url)
        .await
        .with_context(|| format!("cannot connect to {}", args.postgres_url))?;
    let db = Db::Postgres(pool);
    let table = format!("rowcast_cluster_{}_{}", now_us(), std::process::id());
    db.create_table(&table).await?;
    let last = db.insert(&table, now_us(), "seed").await?;
    install_notify_trigger(rowcast, &args.postgres_url, &table).await?;
    let mut servers = Vec::new();
    for _ in 0..instances {
        let mut flags = vec![
            "serve".to_owned(),
            format!("--database-url={}", args.postgres_url),
            format!("--table={table}"),
            "--notify=on".to_owned(),
        ];
        if let Some(bus) = bus {
            flags.push(format!("--bus={bus}"));
        }
        servers.push(Server::start(rowcast, flags).await?);
    }
    Ok(Deployment {
        db,
        table,
        servers,
        last,
    })
}

async fn measure(
    args: &ClusterArgs,
    rowcast: &std::path::Path,
    instances: usize,
    bus: Option<&str>,
) -> anyhow::Result<Measured> {
    let mut d = deploy(args, rowcast, instances, bus).await?;
    let Db::Postgres(pool) = &d.db else {
        unreachable!("the cluster benchmark runs on Postgres")
    };
    let pool = pool.clone();
    let per = match instances {
        1 => args.clients.min(args.alone_clients),
        _ => args.clients / instances,
    };
    let mut crowds = Vec::new();
    let mut rss_per_client = Vec::new();
    for server in &d.servers {
        let before = rss_kib(server.child.id().unwrap_or(0));
        let path = format!("/events/{}", d.table);
        let crowd = Remote::start(server.addr, &path, per, d.last, args.parallel).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(server.child.id().unwrap_or(0));
        let connected = crowd.ready.connected;
        rss_per_client.push(match (before, after) {
            (Some(b), Some(a)) if connected > 0 => (a as f64 - b as f64) / connected as f64,
            _ => f64::NAN,
        });
        crowds.push(crowd);
    }
    let connect_errors = crowds.iter().map(|c| c.ready.failed).sum();
    // Warm up, then the window.
    write(&mut d, args.rate, Duration::from_secs(2)).await?;
    wait_all(&mut crowds, d.last, Duration::from_secs(10)).await?;
    for crowd in &mut crowds {
        crowd.window().await?;
    }
    let scans_before = table_scans(&pool, &d.table).await?;
    let queries_before = queries(&d).await?;
    let started = Instant::now();
    let rows = write(&mut d, args.rate, args.duration).await?;
    let written_for = started.elapsed();
    let caught_up = wait_all(&mut crowds, d.last, Duration::from_secs(10)).await?;
    // pg_stat_user_tables lags by up to a second: read it after as long.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    let scans = table_scans(&pool, &d.table).await? - scans_before;
    let queries_after = queries(&d).await?;
    let mut ok = caught_up;
    let mut deliveries = 0;
    let mut latency = Vec::new();
    for crowd in &mut crowds {
        let report = crowd.check(d.last).await?;
        ok &= !report.wrong;
        deliveries += report.received;
        latency.push((report.p50, report.p99, report.max));
    }
    let mut roles = Vec::new();
    for server in &d.servers {
        let leader = metric(server.addr, "rowcast_leader", &d.table).await?;
        roles.push(if bus.is_none() {
            "alone".to_owned()
        } else if leader > 0.0 {
            "leader".to_owned()
        } else {
            "follower".to_owned()
        });
    }
    // One more row, to every client.
    write(&mut d, 1.0, Duration::from_millis(500)).await?;
    let one_row = wait_all(&mut crowds, d.last, Duration::from_secs(10)).await?;
    for crowd in crowds {
        crowd.stop().await;
    }
    for server in d.servers.drain(..) {
        server.stop().await;
    }
    d.db.drop_table(&d.table).await?;
    Ok(Measured {
        instances,
        clients: per * instances,
        connect_errors,
        rss_per_client_kib: rss_per_client,
        rows,
        elapsed: written_for,
        scans_per_s: scans as f64 / elapsed.as_secs_f64(),
        rowcast_queries_per_s: queries_after
            .iter()
            .zip(&queries_before)
            .map(|(a, b)| (a - b) / elapsed.as_secs_f64())
            .collect(),
        deliveries,
        latency,
        ok,
        one_row,
        roles,
    })
}

/// Each instance's `rowcast_queries_total` of the feed.
async fn queries(d: &Deployment) -> anyhow::Result<Vec<f64>> {
    let mut all = Vec::new();
    for server in &d.servers {
        all.push(metric(server.addr, "rowcast_queries_total", &d.table).await?);
    }
    Ok(all)
}

/// Writes rows at `rate` for `duration`; returns how many.
async fn write(d: &mut Deployment, rate: f64, duration: Duration) -> anyhow::Result<usize> {
    let end = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut rows = 0;
    while Instant::now() < end {
        tick.tick().await;
        d.last = d.db.insert(&d.table, now_us(), "row").await?;
        rows += 1;
    }
    Ok(rows)
}

async fn wait_all(crowds: &mut [Remote], last: i64, within: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + within;
    let mut all = true;
    for crowd in crowds {
        let left = deadline.saturating_duration_since(Instant::now());
        all &= crowd.wait(last, left).await?;
    }
    Ok(all)
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn report(args: &ClusterArgs, results: &[Measured]) {
    println!(
        "\ncluster: {} clients in all, {} rows/s for {}",
        args.clients,
        args.rate,
        humantime::format_duration(args.duration)
    );
    for m in results {
        println!(
            "\n{} instance(s) ({}), {} clients, {} connect errors",
            m.instances,
            m.roles.join(", "),
            m.clients,
            m.connect_errors
        );
        println!(
            "  rows written            {} in {:.1} s",
            m.rows,
            m.elapsed.as_secs_f64()
        );
        println!("  table scans/s (pg)      {:.2}", m.scans_per_s);
        let queries: Vec<String> = m
            .rowcast_queries_per_s
            .iter()
            .map(|q| format!("{q:.2}"))
            .collect();
        println!(
            "  rowcast queries/s       {} (per instance)",
            queries.join(" + ")
        );
        println!(
            "  deliveries/s            {:.0} ({} rows × {} clients in {:.1} s)",
            m.deliveries as f64 / m.elapsed.as_secs_f64(),
            m.rows,
            m.clients - m.connect_errors,
            m.elapsed.as_secs_f64()
        );
        for (i, ((p50, p99, max), rss)) in m.latency.iter().zip(&m.rss_per_client_kib).enumerate() {
            println!(
                "  instance {i}: latency p50 {} p99 {} max {}; RSS {:.1} KiB per connection",
                ms(*p50),
                ms(*p99),
                ms(*max),
                rss
            );
        }
        println!(
            "  every row once, in order: {}; then one row to all: {}",
            if m.ok { "yes" } else { "NO" },
            if m.one_row { "yes" } else { "NO" }
        );
    }
}
