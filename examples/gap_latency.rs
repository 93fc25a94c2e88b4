//! Measures the latency rowcast adds when ids have gaps that never fill.
//!
//! For each database it creates a uniquely named table
//! `messages(id auto-increment primary key, sent_at_us bigint, body text)`,
//! serves it with rowcast in this process (default feed settings: poll
//! interval 100 ms, gap grace 1 s), follows `/events/messages` with one SSE
//! client, and inserts rows at a steady rate, one transaction per row, in
//! two phases of `--rows` transactions each:
//!
//! - **baseline**: every transaction commits, so the ids have no gaps;
//! - **rollbacks**: every 10th transaction is rolled back, which burns its
//!   id and leaves a gap that never fills. rowcast holds the rows after such
//!   a gap until it settles (its writers gone and `gap_grace` passed).
//!
//! Each row carries the time it was inserted (`sent_at_us`, microseconds
//! since the Unix epoch); the client subtracts it from the time the event
//! arrives. Writer, server and client share this machine's clock. A row
//! counts as "after a gap" when its id is more than one above the id of the
//! row delivered before it. Rows are delivered in id order, so a held gap
//! delays every row behind it too: when gaps come more often than
//! `gap_grace`, rows with no gap right before them wait as well. The table
//! is dropped at the end, and on Ctrl-C.
//!
//! Run it against the local databases (the URLs the tests use by default):
//!
//! ```text
//! cargo run --release --example gap_latency -- [--database postgres|mysql|both] [--rows N]
//!     [--rate ROWS_PER_S] [--rollback-every K] [--postgres-url URL] [--mysql-url URL]
//! ```
//!
//! `RUST_LOG=rowcast=debug` shows rowcast's own log.

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use rowcast::config::{Config, FileConfig, ServeArgs};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Parser)]
#[command(about = "Latency rowcast adds to rows that follow gaps in the ids")]
struct Args {
    /// Database(s) to measure.
    #[arg(long, value_enum, default_value_t = Which::Both)]
    database: Which,
    /// Transactions per phase.
    #[arg(long, default_value_t = 500)]
    rows: u32,
    /// Transactions per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// In the rollback phase, every K-th transaction is rolled back.
    #[arg(long, default_value_t = 10)]
    rollback_every: u32,
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/test")]
    mysql_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Postgres,
    Mysql,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Db {
    Postgres,
    MySql,
}

impl Db {
    fn name(self) -> &'static str {
        match self {
            Db::Postgres => "postgres",
            Db::MySql => "mysql",
        }
    }

    fn create(self, table: &str) -> String {
        match self {
            Db::Postgres => format!(
                "CREATE TABLE {table} (id bigserial PRIMARY KEY, sent_at_us bigint NOT NULL, body text NOT NULL)"
            ),
            Db::MySql => format!(
                "CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, sent_at_us BIGINT NOT NULL, body TEXT NOT NULL)"
            ),
        }
    }
}

/// The feed's name in URLs.
const FEED: &str = "messages";

/// One event as the client received it.
struct Delivered {
    id: i64,
    latency_us: i64,
    body: String,
}

fn now_us() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_micros() as i64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "rowcast=warn".into()),
        )
        .try_init();
    let args = Args::parse();
    if args.rows == 0 || args.rate <= 0.0 || args.rollback_every < 2 {
        bail!("--rows and --rate must be positive, --rollback-every at least 2");
    }
    sqlx::any::install_default_drivers();
    let dbs = match args.database {
        Which::Postgres => vec![Db::Postgres],
        Which::Mysql => vec![Db::MySql],
        Which::Both => vec![Db::Postgres, Db::MySql],
    };
    for db in dbs {
        run(db, &args).await?;
    }
    Ok(())
}

/// Creates the table, measures, and drops the table however that ends.
async fn run(db: Db, args: &Args) -> anyhow::Result<()> {
    let url = match db {
        Db::Postgres => &args.postgres_url,
        Db::MySql => &args.mysql_url,
    };
    let pool = AnyPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let table = format!("gap_latency_{:08x}_messages", rand::random::<u32>());
    sqlx::raw_sql(&db.create(&table)).execute(&pool).await?;
    let outcome = tokio::select! {
        outcome = serve_and_measure(db, url, &pool, &table, args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let dropped = sqlx::raw_sql(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await;
    pool.close().await;
    outcome?;
    dropped.with_context(|| format!("DROP TABLE {table}"))?;
    Ok(())
}

async fn serve_and_measure(
    db: Db,
    url: &str,
    pool: &AnyPool,
    table: &str,
    args: &Args,
) -> anyhow::Result<()> {
    let mut serve_args = ServeArgs::default();
    serve_args.server.database_url = Some(url.to_owned());
    let file: FileConfig = toml::from_str(&format!(
        "[[feed]]\nname = \"{FEED}\"\ntable = \"{table}\"\n"
    ))?;
    let config = Config::merge(&serve_args, file)?;
    let feeds = rowcast::prepare(&config).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let feed = config.feeds[0].clone();
    let server = tokio::spawn(async move {
        rowcast::serve(listener, &config, feeds, async {
            let _ = stopped.await;
        })
        .await
    });

    let measured = measure(db, &base, pool, table, args).await;
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(result)) => result?,
        Ok(Err(panic)) => bail!("server task failed: {panic}"),
        Err(_) => bail!("server did not stop within 10 s"),
    }
    let groups = measured?;

    println!();
    println!(
        "{} — rowcast {}: poll_interval {:?}, max_poll_interval {:?}, gap_grace {:?}, hold_cap {:?}, batch_size {}",
        db.name(),
        env!("CARGO_PKG_VERSION"),
        feed.tuning.poll_interval,
        feed.tuning.max_poll_interval,
        feed.tuning.gap_grace,
        feed.tuning.hold_cap,
        feed.tuning.batch_size,
    );
    println!(
        "writer: {} tx/s, {} tx per phase, one transaction per row; rollbacks phase: every {}th rolled back",
        args.rate, args.rows, args.rollback_every
    );
    println!(
        "{:<10} {:<14} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "phase", "rows", "count", "p50 ms", "p99 ms", "max ms", "mean ms"
    );
    for (phase, kind, latencies) in groups {
        println!("{:<10} {:<14} {}", phase, kind, summary(latencies));
    }
    Ok(())
}

/// Latency groups: (phase, "no gap before" | "after a gap", latencies in µs).
type Groups = Vec<(&'static str, &'static str, Vec<i64>)>;

async fn measure(
    db: Db,
    base: &str,
    pool: &AnyPool,
    table: &str,
    args: &Args,
) -> anyhow::Result<Groups> {
    let response = reqwest::get(format!("{base}/events/{FEED}"))
        .await?
        .error_for_status()?;
    let (sender, mut received) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut events = response.bytes_stream().eventsource();
        while let Some(Ok(event)) = events.next().await {
            let arrived = now_us();
            let row: serde_json::Value = serde_json::from_str(&event.data)?;
            let number = |key: &str| {
                let value = &row[key];
                value
                    .as_i64()
                    .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| anyhow!("no integer `{key}` in {}", event.data))
            };
            let delivered = Delivered {
                id: number("id")?,
                latency_us: arrived - number("sent_at_us")?,
                body: row["body"].as_str().unwrap_or_default().to_owned(),
            };
            if sender.send(delivered).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });

    // The warm-up row proves the stream is live (the first row of an empty
    // table waits out gap_grace: nothing is known below it).
    let mut groups = Groups::new();
    let mut previous = None;
    let phases = [
        ("warmup", 1, None),
        ("baseline", args.rows, None),
        ("rollbacks", args.rows, Some(args.rollback_every)),
    ];
    for (phase, n, rollback_every) in phases {
        let last = write(db, pool, table, phase, n, args.rate, rollback_every).await?;
        let (mut contiguous, mut after_gap) = (Vec::new(), Vec::new());
        while previous.is_none_or(|p| p < last) {
            let row = tokio::time::timeout(Duration::from_secs(60), received.recv())
                .await
                .map_err(|_| anyhow!("row {last} not delivered within 60 s"))?
                .ok_or_else(|| anyhow!("the event stream ended"))?;
            if row.body != phase {
                bail!("row {} of phase {} came during {phase}", row.id, row.body);
            }
            match previous {
                Some(p) if row.id > p + 1 => after_gap.push(row.latency_us),
                _ => contiguous.push(row.latency_us),
            }
            previous = Some(row.id);
        }
        if phase != "warmup" {
            groups.push((phase, "no gap before", contiguous));
            groups.push((phase, "after a gap", after_gap));
        }
    }
    reader.abort();
    Ok(groups)
}

/// Inserts `n` rows with `body` at `rate` per second, one transaction each,
/// rolling back every `rollback_every`-th; returns the last committed id.
async fn write(
    db: Db,
    pool: &AnyPool,
    table: &str,
    body: &str,
    n: u32,
    rate: f64,
    rollback_every: Option<u32>,
) -> anyhow::Result<i64> {
    let sql = match db {
        Db::Postgres => {
            format!("INSERT INTO {table} (sent_at_us, body) VALUES ($1, $2) RETURNING id")
        }
        Db::MySql => format!("INSERT INTO {table} (sent_at_us, body) VALUES (?, ?)"),
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    for i in 1..=n {
        tick.tick().await;
        let mut tx = pool.begin().await?;
        let insert = sqlx::query(&sql).bind(now_us()).bind(body);
        let id: i64 = match db {
            Db::Postgres => sqlx::Row::try_get(&insert.fetch_one(&mut *tx).await?, 0)?,
            Db::MySql => insert
                .execute(&mut *tx)
                .await?
                .last_insert_id()
                .context("MySQL reports the inserted id")?,
        };
        if rollback_every.is_some_and(|k| i % k == 0) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            last = Some(id);
        }
    }
    last.context("no row committed")
}

/// `count p50 p99 max mean` of latencies in µs, printed in ms.
fn summary(mut latencies: Vec<i64>) -> String {
    if latencies.is_empty() {
        return format!("{:>5} {:>9} {:>9} {:>9} {:>9}", 0, "-", "-", "-", "-");
    }
    latencies.sort_unstable();
    let n = latencies.len();
    // Nearest rank.
    let pct = |p: usize| latencies[(p * n).div_ceil(100).max(1) - 1];
    let ms = |us: i64| format!("{:.1}", us as f64 / 1000.0);
    let mean = latencies.iter().sum::<i64>() / n as i64;
    format!(
        "{:>5} {:>9} {:>9} {:>9} {:>9}",
        n,
        ms(pct(50)),
        ms(pct(99)),
        ms(latencies[n - 1]),
        ms(mean)
    )
}
