//! Clients in a process of their own: one process may hold only as many
//! open files as its hard limit, so the crowds of several instances
//! (19,000 streams each) cannot share the benchmark's. The benchmark runs
//! itself as `rowcast-bench crowd …` per instance and talks to it over
//! stdin/stdout, one JSON line per request and per answer.

use crate::fanout::crowd::{Counts, Crowd, Subscription};
use crate::fanout::stream::{ReadyOn, State};
use anyhow::{bail, Context as _};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The hidden `crowd` command: streams on one server, driven over stdin.
#[derive(Debug, Args)]
pub struct CrowdArgs {
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long)]
    path: String,
    #[arg(long)]
    clients: usize,
    /// The id before the first row every client must get.
    #[arg(long)]
    after: i64,
    #[arg(long)]
    parallel: usize,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// A window starts: forget the latencies, remember the counters.
    Window,
    /// Wait until every client has had row `last`, or `within_ms`.
    Wait { last: i64, within_ms: u64 },
    /// What the clients got in the window, every row up to `last` due.
    Check { last: i64 },
}

/// What the clients of a process got in a window.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Report {
    pub connected: usize,
    pub failed: usize,
    pub caught_up: bool,
    pub received: u64,
    pub wrong: bool,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

/// Runs the `crowd` command until stdin closes.
pub async fn serve(args: CrowdArgs) -> anyhow::Result<bool> {
    let sub = Subscription {
        addr: args.addr,
        path: args.path,
        ready_on: ReadyOn::Retry,
    };
    let after = args.after;
    let crowd = Crowd::connect(&sub, args.clients, args.parallel, |_| (after, None)).await;
    let failed = crowd.count(State::ConnectFailed);
    let mut out = tokio::io::stdout();
    let ready = Report {
        connected: args.clients - failed,
        failed,
        ..Report::default()
    };
    answer(&mut out, &ready).await?;
    let mut before: Vec<Counts> = crowd.counts();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let report = match serde_json::from_str::<Request>(&line)? {
            Request::Window => {
                before = crowd.counts();
                crowd.clear_latencies();
                Report::default()
            }
            Request::Wait { last, within_ms } => {
                let deadline = Instant::now() + Duration::from_millis(within_ms);
                Report {
                    caught_up: crowd.wait_caught_up(last, deadline).await,
                    ..Report::default()
                }
            }
            Request::Check { last } => {
                let check = crowd.check(&before, last);
                let p = crowd.histogram().percentiles();
                Report {
                    received: check.received,
                    wrong: !check.ok(),
                    p50: p.p50,
                    p99: p.p99,
                    max: p.max,
                    ..Report::default()
                }
            }
        };
        answer(&mut out, &report).await?;
    }
    Ok(true)
}

async fn answer(out: &mut tokio::io::Stdout, report: &Report) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(report)?;
    line.push(b'\n');
    out.write_all(&line).await?;
    out.flush().await?;
    Ok(())
}

/// A `crowd` process, seen from the benchmark.
pub struct Remote {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// What connecting found.
    pub ready: Report,
}

impl Remote {
    /// Starts `clients` streams on `addr` from a process of their own and
    /// waits until they are connected.
    pub async fn start(
        addr: SocketAddr,
        path: &str,
        clients: usize,
        after: i64,
        parallel: usize,
    ) -> anyhow::Result<Remote> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .arg("crowd")
            .arg(format!("--addr={addr}"))
            .arg(format!("--path={path}"))
            .arg(format!("--clients={clients}"))
            .arg(format!("--after={after}"))
            .arg(format!("--parallel={parallel}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a crowd process")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let mut remote = Remote {
            child,
            stdin,
            stdout,
            ready: Report::default(),
        };
        remote.ready = remote.read().await?;
        Ok(remote)
    }

    async fn read(&mut self) -> anyhow::Result<Report> {
        match self.stdout.next_line().await? {
            Some(line) => Ok(serde_json::from_str(&line)?),
            None => bail!("a crowd process ended: {:?}", self.child.try_wait()),
        }
    }

    async fn ask(&mut self, request: Request) -> anyhow::Result<Report> {
        let mut line = serde_json::to_vec(&request)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.read().await
    }

    pub async fn window(&mut self) -> anyhow::Result<()> {
        self.ask(Request::Window).await.map(drop)
    }

    pub async fn wait(&mut self, last: i64, within: Duration) -> anyhow::Result<bool> {
        let within_ms = u64::try_from(within.as_millis())?;
        Ok(self.ask(Request::Wait { last, within_ms }).await?.caught_up)
    }

    pub async fn check(&mut self, last: i64) -> anyhow::Result<Report> {
        self.ask(Request::Check { last }).await
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
