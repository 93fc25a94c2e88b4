//! `memory`: whether rowcast gives memory back after a burst of clients.
//!
//! For each rowcast binary given (`--rowcast a,b`, e.g. builds with other
//! allocators, side by side in one run), it starts `rowcast serve` on a
//! fresh Postgres table and reads its resident memory (`VmRSS`) once idle.
//! Then, in each of `--rounds` rounds: `--long-polls` clients at once each
//! long-poll `GET /feeds/{feed}/rows?wait=…` on a connection of its own,
//! one row answers them all, and they leave; `--stalled` connections each
//! send half a request head and stall, and are closed. After each round it
//! waits `--quiet` and reads the RSS again. A server that keeps memory
//! only for what it holds comes back near its idle RSS; one whose
//! allocator keeps freed memory stays near the round's peak.
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- memory
//! ```

use crate::cpu::rss_kib;
use crate::db::{Database, Db};
use crate::http::Connection;
use crate::now_us;
use crate::server::Server;
use anyhow::{bail, Context as _};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, Args)]
pub struct MemoryArgs {
    /// rowcast binaries to measure, one after the other [default: `rowcast`
    /// next to this executable].
    #[arg(long, value_delimiter = ',')]
    rowcast: Vec<PathBuf>,
    /// Rounds of long-polls and stalled connections.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Long-polling clients at once, per round.
    #[arg(long, default_value_t = 2000)]
    long_polls: usize,
    /// Connections that stall half-way through a request head, per round.
    #[arg(long, default_value_t = 6400)]
    stalled: usize,
    /// How long the server is left alone before its RSS is read.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// Postgres database to create the table in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
}

pub async fn memory(args: MemoryArgs) -> anyhow::Result<bool> {
    let binaries = match args.rowcast.is_empty() {
        true => vec![crate::locate_rowcast(None)?],
        false => args
            .rowcast
            .iter()
            .map(|path| crate::locate_rowcast(Some(path.clone())))
            .collect::<anyhow::Result<_>>()?,
    };
    let db = Db::connect(Database::Postgres, &args.postgres_url).await?;
    println!(
        "{:<32} {:>9} {}",
        "rowcast",
        "idle MiB",
        (1..=args.rounds)
            .map(|r| format!("{:>22}", format!("round {r}: peak / after")))
            .collect::<String>()
    );
    for binary in &binaries {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let table = format!("rowcast_bench_memory_{stamp}_{}", std::process::id());
        db.create_table(&table).await?;
        let measured = measure(&args, binary, &db, &table).await;
        db.drop_table(&table).await?;
        let (idle, rounds) = measured?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "{:<32} {:>9.1} {}",
            binary.display(),
            mib(idle),
            rounds
                .iter()
                .map(|(peak, after)| format!(
                    "{:>22}",
                    format!("{:.1} / {:.1}", mib(*peak), mib(*after))
                ))
                .collect::<String>()
        );
    }
    Ok(true)
}

/// The idle RSS, then each round's peak and RSS after it, in KiB.
async fn measure(
    args: &MemoryArgs,
    binary: &std::path::Path,
    db: &Db,
    table: &str,
) -> anyhow::Result<(u64, Vec<(u64, u64)>)> {
    db.insert(table, now_us(), "seed").await?;
    let server = Server::start(
        binary,
        vec![
            "serve".to_owned(),
            format!("--database-url={}", args.postgres_url),
            format!("--table={table}"),
        ],
    )
    .await?;
    let pid = server.child.id().context("rowcast has no pid")?;
    let rss = move || rss_kib(pid).context("cannot read rowcast's VmRSS");
    tokio::time::sleep(args.quiet).await;
    let idle = rss()?;
    let mut rounds = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let peak = Arc::new(AtomicU64::new(idle));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    if let Some(now) = rss_kib(pid) {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        long_polls(server.addr, db, table, args.long_polls).await?;
        stalled(server.addr, args.stalled).await?;
        sampler.abort();
        tokio::time::sleep(args.quiet).await;
        rounds.push((peak.load(Ordering::Relaxed), rss()?));
    }
    server.stop().await;
    Ok((idle, rounds))
}

/// `clients` long-polls at once, each on its own connection, answered by
/// one row.
async fn long_polls(addr: SocketAddr, db: &Db, table: &str, clients: usize) -> anyhow::Result<()> {
    let mut cursor = Connection::new(addr);
    let head = cursor.get(&format!("/feeds/{table}/rows")).await?;
    let head: serde_json::Value = serde_json::from_slice(&head.body)?;
    let after = head["cursor"].as_str().context("no cursor")?.to_owned();
    let path = format!("/feeds/{table}/rows?after={after}&wait=30");
    let polls: Vec<_> = (0..clients)
        .map(|_| {
            let path = path.clone();
            tokio::spawn(async move {
                let answer = Connection::new(addr).get(&path).await?;
                let body: serde_json::Value = serde_json::from_slice(&answer.body)?;
                anyhow::Ok(body["rows"].as_array().map_or(0, Vec::len))
            })
        })
        .collect();
    // Let them all arrive and wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    db.insert(table, now_us(), "answer").await?;
    for poll in polls {
        if poll.await?? != 1 {
            bail!("a long-poll was not answered with the one row");
        }
    }
    Ok(())
}

/// `count` connections that send half a request head, held for a moment
/// and closed.
async fn stalled(addr: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut socket = TcpStream::connect(addr).await?;
        socket
            .write_all(b"GET /feeds HTTP/1.1\r\nHost: rowcast\r\nX-Half: ")
            .await?;
        held.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(held);
    Ok(())
}
