//! `rowcast-bench`: measurements of rowcast taken from the outside, the way
//! a user sees it: the release `rowcast` binary as a child process, real
//! databases, real HTTP clients.
//!
//! - `latency` ([`latency`]): from INSERT to Server-Sent Events clients, on
//!   Postgres and MySQL/MariaDB, with and without the NOTIFY doorbell.
//! - `polling` ([`polling`]): a thousand short-polling clients on
//!   `GET /feeds/{feed}/rows` against the same clients on a hand-written
//!   endpoint that queries the table per request: database queries and
//!   response times of each.
//! - `fanout` ([`fanout`]): the Server-Sent Events fan-out of rowcast
//!   against nginx with the nchan module, side by side: idle connections,
//!   the highest row rate, a fixed load, the database load by client count
//!   and a reconnect storm.
//! - `memory` ([`memory`]): resident memory before and after bursts of
//!   long-polls and stalled connections.
//! - `presence` ([`presence`]): the memory of a member on idle connections,
//!   and join/leave latency among a thousand watching members.
//!
//! It is a crate of its own in the workspace, left out of a plain
//! `cargo build`: it drives the binary and never links the library. Run it by
//! hand, with the local databases up, after a release build of rowcast (it
//! starts the `rowcast` found next to its own executable, in the workspace's
//! `target/release/`):
//!
//! ```sh
//! cargo build --release
//! cargo run --release -p rowcast-bench -- latency
//! cargo run --release -p rowcast-bench -- polling
//! cargo run --release -p rowcast-bench -- fanout
//! cargo run --release -p rowcast-bench -- memory
//! cargo run --release -p rowcast-bench -- presence
//! ```

mod cluster;
mod cpu;
mod db;
pub mod fanout;
mod http;
mod latency;
mod memory;
mod polling;
mod presence;
mod server;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use fanout::FanoutArgs;
use latency::LatencyArgs;
use memory::MemoryArgs;
use polling::PollingArgs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// Short-polling clients on `/feeds/{feed}/rows` against a hand-written
    /// endpoint: database queries and response times (Postgres).
    Polling(PollingArgs),
    /// Server-Sent Events fan-out of rowcast against nginx+nchan, side by
    /// side: memory per connection, highest rate, reconnect storm.
    Fanout(FanoutArgs),
    /// Several instances sharing a bus against one alone: database queries,
    /// deliveries and latency, memory per connection.
    Cluster(cluster::ClusterArgs),
    /// Streams on one server in a process of their own, driven over stdin
    /// by `cluster`.
    #[command(hide = true)]
    Crowd(cluster::crowd::CrowdArgs),
    /// Resident memory before and after bursts of long-polls and stalled
    /// connections: whether rowcast gives memory back.
    Memory(MemoryArgs),
    /// Presence: memory of a member on idle connections, and join/leave
    /// latency among watching members.
    Presence(presence::PresenceArgs),
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Bench::Latency(args) => latency::latency(args).await,
        Bench::Polling(args) => polling::polling(args).await,
        Bench::Fanout(args) => fanout::fanout(args).await,
        Bench::Memory(args) => memory::memory(args).await,
        Bench::Cluster(args) => cluster::cluster(args).await,
        Bench::Crowd(args) => cluster::crowd::serve(args).await,
        Bench::Presence(args) => presence::presence(args).await,
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "rowcast-bench: some clients did not get every row exactly once, in order, \
                 or requests failed (see above)"
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("rowcast-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `rowcast` next to this executable: both crates build into the workspace's
/// `target/`, so `cargo build --release` leaves it beside
/// `target/release/rowcast-bench`.
pub fn locate_rowcast(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) if path.is_file() => path,
        Some(path) => bail!("{} not found (given with --rowcast)", path.display()),
        None => {
            let me = std::env::current_exe().context("cannot find this executable")?;
            let dir = me.parent().context("this executable has no directory")?;
            let path = dir.join(format!("rowcast{}", std::env::consts::EXE_SUFFIX));
            if !path.is_file() {
                bail!(
                    "{} not found: build rowcast first with `{}` at the workspace root \
                     (or pass --rowcast)",
                    path.display(),
                    build_command(dir)
                );
            }
            path
        }
    };
    // `cargo run -p rowcast-bench` does not rebuild rowcast: show its age.
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

/// The command that builds rowcast into `dir`, the profile's directory in
/// `target/` that this executable runs from (`cargo run -p rowcast-bench`
/// without `--release` runs from `target/debug`).
fn build_command(dir: &Path) -> &'static str {
    match dir.file_name() {
        Some(profile) if profile == "debug" => "cargo build",
        _ => "cargo build --release",
    }
}

/// The nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The wall clock in µs since the epoch.
pub fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_micros() as i64
}

#[cfg(test)]
mod tests {
    use super::build_command;
    use std::path::Path;

    #[test]
    fn the_build_command_matches_the_profile_the_bench_runs_from() {
        assert_eq!(
            build_command(Path::new("target/release")),
            "cargo build --release"
        );
        assert_eq!(build_command(Path::new("target/debug")), "cargo build");
    }
}
