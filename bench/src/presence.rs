//! `presence`: what presence costs and how fast it is, in one run.
//!
//! 1. **Idle connections.** Two rowcast processes side by side on fresh
//!    Postgres tables: one without presence, holding `--idle` plain
//!    streams, and one with `presence = true`, holding as many streams
//!    that are members (`?presence_key=`). Resident memory per connection
//!    of each, and the difference: the memory of a member.
//! 2. **Latency at `--members`.** A third process whose `--members`
//!    streams are members and watch (`?presence=1`). `--probes` times, a
//!    probe stream connects, and once every watcher has its join it
//!    closes: from the probe's request to each watcher's join event, and
//!    from its close to each watcher's leave (`presence_grace` 0, so the
//!    leave is the close seen and told). Every watcher must see every
//!    probe's join and leave, once.

use crate::cpu::rss_kib;
use crate::db::{Database, Db};
use crate::server::{metric, Server};
use crate::{locate_rowcast, now_us, percentile};
use anyhow::{bail, Context as _};
use clap::Args;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, Args)]
pub struct PresenceArgs {
    /// Idle connections held by each of the two servers.
    #[arg(long, default_value_t = 19_000)]
    idle: usize,
    /// Members that watch, for the latency.
    #[arg(long, default_value_t = 1_000)]
    members: usize,
    /// Probes that join and leave among them.
    #[arg(long, default_value_t = 50)]
    probes: usize,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// Postgres database to create the tables in.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres_url: String,
    /// The rowcast binary [default: `rowcast` next to this executable].
    #[arg(long)]
    rowcast: Option<PathBuf>,
}

/// Runs both parts; `Ok(false)` when a watcher missed an event.
pub async fn presence(args: PresenceArgs) -> anyhow::Result<bool> {
    let rowcast = locate_rowcast(args.rowcast.clone())?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let db = Db::connect(Database::Postgres, &args.postgres_url)
        .await
        .with_context(|| format!("cannot connect to {}", args.postgres_url))?;
    println!(
        "presence: {} idle connections per server, {} watching members, {} probes",
        args.idle, args.members, args.probes
    );

    let plain = idle(&rowcast, &args, &db, false).await?;
    let members = idle(&rowcast, &args, &db, true).await?;
    println!("idle connections ({} each)", args.idle);
    println!("  without presence: {plain:.2} KiB RSS per connection");
    println!("  every one a member: {members:.2} KiB RSS per connection");
    println!("  a member's own cost: {:.2} KiB", members - plain);

    latency(&rowcast, &args, &db).await
}

/// A fresh table, seeded, and rowcast serving it with `extra` flags.
async fn start(
    rowcast: &Path,
    args: &PresenceArgs,
    db: &Db,
    extra: &[&str],
) -> anyhow::Result<(Server, String)> {
    let table = format!("rowcast_presence_{}_{}", now_us(), std::process::id());
    db.create_table(&table).await?;
    db.insert(&table, now_us(), "seed").await?;
    let mut flags = vec![
        "serve".to_owned(),
        format!("--database-url={}", args.postgres_url),
        format!("--table={table}"),
        "--notify=off".to_owned(),
    ];
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    match Server::start(rowcast, flags).await {
        Ok(server) => Ok((server, table)),
        Err(err) => {
            db.drop_table(&table).await?;
            Err(err)
        }
    }
}

/// RSS per connection, in KiB, of a server holding `--idle` streams,
/// members when `presence`.
async fn idle(rowcast: &Path, args: &PresenceArgs, db: &Db, presence: bool) -> anyhow::Result<f64> {
    let extra: &[&str] = if presence { &["--presence=true"] } else { &[] };
    let (server, table) = start(rowcast, args, db, extra).await?;
    let pid = server.child.id().context("rowcast has no pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid).context("cannot read rowcast's VmRSS")?;
    let path = |i: usize| match presence {
        true => format!("/events/{table}?presence_key=member{i}"),
        false => format!("/events/{table}"),
    };
    let streams = open_all(server.addr, args.idle, args.parallel, path).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).context("cannot read rowcast's VmRSS")?;
    if presence {
        let seated = metric(server.addr, "rowcast_presence_members", &table).await?;
        if seated as usize != args.idle {
            bail!("{seated} members seated of {}", args.idle);
        }
    }
    drop(streams);
    server.stop().await;
    db.drop_table(&table).await?;
    Ok((after.saturating_sub(before)) as f64 / args.idle as f64)
}

/// Opens `count` streams at `path(i)`, `parallel` at a time, each read
/// until its response head.
async fn open_all(
    addr: SocketAddr,
    count: usize,
    parallel: usize,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<TcpStream>> {
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let (gate, path) = (gate.clone(), path(i));
        tasks.push(tokio::spawn(async move {
            let _turn = gate.acquire_owned().await?;
            open(addr, &path).await
        }));
    }
    let mut streams = Vec::with_capacity(count);
    for task in tasks {
        streams.push(task.await??);
    }
    Ok(streams)
}

/// A stream at `path`, its response head read.
async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("{path}: closed before its response head");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200 ") {
        bail!("{path}: {}", String::from_utf8_lossy(&head));
    }
    Ok(stream)
}

/// When each watcher saw each probe's join and leave, in µs since the
/// epoch, by (op, key).
type Seen = Arc<Mutex<HashMap<(String, String), Vec<i64>>>>;

/// Reads a watcher's stream, noting the probes' joins and leaves.
async fn watch(mut stream: TcpStream, seen: Seen) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let at = now_us();
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        for line in buf[..end].split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data: ") else {
                continue;
            };
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) else {
                continue;
            };
            let (Some(op), Some(key)) = (event["op"].as_str(), event["key"].as_str()) else {
                continue;
            };
            if key.starts_with("probe") {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                seen.entry((op.to_owned(), key.to_owned()))
                    .or_default()
                    .push(at);
            }
        }
        buf.drain(..=end);
    }
}

/// Part 2: join and leave latency at `--members` watching members.
async fn latency(rowcast: &Path, args: &PresenceArgs, db: &Db) -> anyhow::Result<bool> {
    let (server, table) = start(
        rowcast,
        args,
        db,
        &["--presence=true", "--presence-grace=0s"],
    )
    .await?;
    let seen: Seen = Arc::default();
    let path = |i: usize| format!("/events/{table}?presence=1&presence_key=watcher{i}");
    let watchers = open_all(server.addr, args.members, args.parallel, path).await?;
    let readers: Vec<_> = watchers
        .into_iter()
        .map(|w| tokio::spawn(watch(w, seen.clone())))
        .collect();
    // Until the joins of the watchers themselves have reached them all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    let mut complete = true;
    for probe in 0..args.probes {
        let key = format!("probe{probe}");
        let asked = now_us();
        let stream = open(server.addr, &format!("/events/{table}?presence_key={key}")).await?;
        complete &= wait_all(&seen, "join", &key, args.members).await;
        let closed = now_us();
        drop(stream);
        complete &= wait_all(&seen, "leave", &key, args.members).await;
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let since = |op: &str, from: i64| -> Vec<i64> {
            (seen
                .get(&(op.to_owned(), key.clone()))
                .into_iter()
                .flatten())
            .map(|at| at - from)
            .collect()
        };
        joins.extend(since("join", asked));
        leaves.extend(since("leave", closed));
    }
    for reader in readers {
        reader.abort();
    }
    server.stop().await;
    db.drop_table(&table).await?;
    joins.sort_unstable();
    leaves.sort_unstable();
    let ms = |us: i64| us as f64 / 1000.0;
    println!(
        "presence events at {} watching members ({} probes)",
        args.members, args.probes
    );
    for (what, values) in [
        ("join (from the probe's request)", &joins),
        ("leave (from the probe's close)", &leaves),
    ] {
        println!(
            "  {what}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} deliveries",
            ms(percentile(values, 0.50)),
            ms(percentile(values, 0.99)),
            ms(values.last().copied().unwrap_or(0)),
            values.len()
        );
    }
    let expected = args.members * args.probes;
    let exact = joins.len() == expected && leaves.len() == expected;
    println!(
        "  every watcher saw every join and leave once: {}",
        if complete && exact { "yes" } else { "NO" }
    );
    Ok(complete && exact)
}

/// Waits up to 10 s until `count` watchers saw `op` of `key`.
async fn wait_all(seen: &Seen, op: &str, key: &str, count: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = (op.to_owned(), key.to_owned());
    loop {
        let got = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .map_or(0, Vec::len);
        if got >= count {
            return got == count;
        }
        if Instant::now() > deadline {
            eprintln!("presence: {got} of {count} watchers saw the {op} of {key}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
