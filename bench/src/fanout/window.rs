//! One measured window on one side: a crowd already connected, rows
//! written at a steady rate for a while, then a short wait for the last
//! deliveries; what the clients got, how late, and what it cost the server.

use super::crowd::{Check, Counts, Crowd};
use super::histogram::Percentiles;
use super::stream::State;
use super::target::{Queries, Target, Written};
use crate::cpu::cpu_time;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// A crowd on a server, and what connecting it cost.
pub struct Connected {
    pub crowd: Crowd,
    /// Clients that could not connect or were not placed in the feed.
    pub connect_errors: usize,
    /// The first reason a client could not connect.
    pub connect_error: Option<String>,
    /// The server's RSS in KiB before the clients connected, and after.
    pub rss: (Option<u64>, Option<u64>),
    /// How long connecting every client took.
    pub took: Duration,
}

impl Connected {
    /// The server's RSS growth per connected client, in KiB.
    pub fn rss_per_client(&self) -> Option<f64> {
        let (before, after) = (self.rss.0?, self.rss.1?);
        let connected = self.crowd.len() - self.connect_errors;
        (connected > 0).then(|| (after as f64 - before as f64) / connected as f64)
    }
}

/// Connects `count` clients that start live, after the last row written,
/// `parallel` at a time; reads the server's RSS before and after (a second
/// after, once the server has settled).
pub async fn connect(target: &Target, count: usize, parallel: usize) -> Connected {
    let rss_before = target.server.rss_kib();
    let started = Instant::now();
    let after = target.writer.last();
    let crowd = Crowd::connect(&target.server.sub, count, parallel, |_| (after, None)).await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    Connected {
        connect_errors: crowd.count(State::ConnectFailed),
        connect_error: crowd.connect_error(),
        rss: (rss_before, target.server.rss_kib()),
        took,
        crowd,
    }
}

/// What one window found.
#[derive(Debug, Clone)]
pub struct Window {
    /// Rows per second asked for.
    pub rate: f64,
    pub written: Written,
    /// From the first row written until every client had the last one (or
    /// the settle time ran out).
    pub elapsed: Duration,
    pub latency: Percentiles,
    pub check: Check,
    /// CPU time the server used in the window.
    pub server_cpu: Option<Duration>,
    /// CPU time this benchmark used in the window (its clients and writer).
    pub bench_cpu: Option<Duration>,
    /// rowcast's queries at the start and end of the window.
    pub queries: Option<(Queries, Queries)>,
}

impl Window {
    /// Deliveries per second over the window.
    pub fn delivered_per_s(&self) -> f64 {
        self.check.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU µs per delivered event.
    pub fn server_us_per_event(&self) -> Option<f64> {
        per_event(self.server_cpu?, self.check.received)
    }

    pub fn bench_us_per_event(&self) -> Option<f64> {
        per_event(self.bench_cpu?, self.check.received)
    }

    /// Database queries per second: by `pg_stat_user_tables`, by rowcast's
    /// own count.
    pub fn queries_per_s(&self) -> Option<(f64, f64)> {
        let (before, after) = self.queries?;
        let secs = (after.at - before.at).as_secs_f64().max(1e-9);
        Some((
            (after.pg_scans - before.pg_scans) as f64 / secs,
            (after.rowcast - before.rowcast) / secs,
        ))
    }

    /// Why the window does not meet `p99_limit`, if it does not.
    pub fn failure(&self, p99_limit: Duration) -> Option<String> {
        let c = &self.check;
        if !c.ok() {
            return Some(format!(
                "{} missing, {} repeated, {} out of order, {} streams ended",
                c.missing, c.duplicated, c.out_of_order, c.ended
            ));
        }
        if self.written.rate() < 0.9 * self.rate {
            return Some(format!(
                "only {:.0} rows/s could be written",
                self.written.rate()
            ));
        }
        let p99 = Duration::from_micros(self.latency.p99);
        if p99 > p99_limit {
            return Some(format!("p99 {:.0} ms", p99.as_secs_f64() * 1000.0));
        }
        None
    }
}

fn per_event(cpu: Duration, events: u64) -> Option<f64> {
    (events > 0).then(|| cpu.as_secs_f64() * 1e6 / events as f64)
}

/// Writes rows at `rate` for `duration` to the crowd's server, then waits
/// up to `settle` for every client to have the last one.
pub async fn measure(
    target: &mut Target,
    crowd: &Crowd,
    rate: f64,
    duration: Duration,
    settle: Duration,
) -> anyhow::Result<Window> {
    let before = crowd.counts();
    crowd.clear_latencies();
    let meter = Meter::start(target).await?;
    let written = target
        .writer
        .run(rate, duration, &CancellationToken::new())
        .await?;
    crowd
        .wait_caught_up(written.last, Instant::now() + settle)
        .await;
    meter.window(target, crowd, &before, rate, written).await
}

/// Writes rows at `rate` for `duration` while `count` clients connect,
/// `parallel` at a time, as they come back after a deploy: each resumes
/// after the last row written before, so it must get every row of the
/// window; then waits up to `settle` for every client to have the last one.
pub async fn measure_arriving(
    target: &mut Target,
    count: usize,
    parallel: usize,
    rate: f64,
    duration: Duration,
    settle: Duration,
) -> anyhow::Result<(Connected, Window)> {
    let rss_before = target.server.rss_kib();
    let meter = Meter::start(target).await?;
    let sub = target.server.sub.clone();
    let after = target.writer.last();
    let connecting = async {
        let crowd = Crowd::connect(&sub, count, parallel, |_| (after, Some(after))).await;
        (crowd, meter.started.elapsed())
    };
    let stop = CancellationToken::new();
    let (written, (crowd, took)) =
        tokio::join!(target.writer.run(rate, duration, &stop), connecting);
    let written = written?;
    crowd
        .wait_caught_up(written.last, Instant::now() + settle)
        .await;
    let before = vec![Counts::default(); crowd.len()];
    let window = meter.window(target, &crowd, &before, rate, written).await?;
    let connected = Connected {
        connect_errors: crowd.count(State::ConnectFailed),
        connect_error: crowd.connect_error(),
        rss: (rss_before, target.server.rss_kib()),
        took,
        crowd,
    };
    Ok((connected, window))
}

/// The server's and the benchmark's counters at the start of a window.
struct Meter {
    queries: Option<Queries>,
    server_cpu: Option<Duration>,
    bench_cpu: Option<Duration>,
    started: Instant,
}

impl Meter {
    async fn start(target: &Target) -> anyhow::Result<Meter> {
        Ok(Meter {
            queries: target.server.queries().await?,
            server_cpu: target.server.cpu(),
            bench_cpu: cpu_time(std::process::id()),
            started: Instant::now(),
        })
    }

    /// The window from the start until now, for `crowd`, whose counters
    /// were `before` at the start.
    async fn window(
        self,
        target: &Target,
        crowd: &Crowd,
        before: &[Counts],
        rate: f64,
        written: Written,
    ) -> anyhow::Result<Window> {
        let elapsed = self.started.elapsed();
        let server_cpu = self
            .server_cpu
            .zip(target.server.cpu())
            .map(|(b, a)| a.saturating_sub(b));
        let bench_cpu = self
            .bench_cpu
            .zip(cpu_time(std::process::id()))
            .map(|(b, a)| a.saturating_sub(b));
        let queries_after = target.server.queries().await?;
        Ok(Window {
            rate,
            written,
            elapsed,
            latency: crowd.histogram().percentiles(),
            check: crowd.check(before, written.last),
            server_cpu,
            bench_cpu,
            queries: self.queries.zip(queries_after),
        })
    }
}
