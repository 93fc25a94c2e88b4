//! `sweep`: the highest row rate at which every one of C clients gets every
//! row, exactly once and in order, with a p99 latency under the limit.
//! Rates double from 1 row/s until a step fails (or the top rate), then a
//! few bisection steps narrow the gap. Each step writes for `--sweep-step`
//! on the same crowd; after a failed step the crowd is given time to catch
//! up, and is connected afresh if it does not or lost streams.

use super::crowd::Crowd;
use super::report::Block;
use super::stream::State;
use super::target::{Setup, Target};
use super::window::{self, Connected, Window};
use super::{each_side, progress, FanoutArgs, WARMUP};
use std::time::{Duration, Instant};

/// How long a crowd may take to catch up after a failed step.
const RECOVER: Duration = Duration::from_secs(30);

/// What the sweep found on one side.
struct Swept {
    connected: Connected,
    /// The highest rate passed, and its window.
    best: Option<Window>,
    /// The lowest rate failed, and why.
    failed: Option<(f64, String)>,
}

pub async fn sweep(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let doing = format!("sweep: connecting {} clients", args.sweep_clients);
    let results = each_side(args, setup, &doing, async |target| {
        sweep_side(args, target).await
    })
    .await?;

    let mut block = Block::new(format!(
        "rate sweep: {} clients, {} steps, every row with p99 ≤ {} ms",
        args.sweep_clients,
        humantime::format_duration(args.sweep_step),
        args.sweep_p99.as_millis()
    ));
    let best = results
        .each_ref()
        .map(|r| r.as_ref().and_then(|s| s.best.as_ref()));
    block.line("highest rate passed, rows/s", best, |w| {
        format!("{:.0}", w.rate)
    });
    block.line(
        "  = deliveries/s (rate × clients)",
        results
            .each_ref()
            .map(|r| r.as_ref().and_then(|s| s.best.as_ref().map(|w| (s, w)))),
        |(s, w)| {
            let clients = s.connected.crowd.len() - s.connected.connect_errors;
            format!("{:.0}", w.rate * clients as f64)
        },
    );
    block.line(
        "lowest rate failed, and why",
        results.each_ref().map(|r| r.as_ref()),
        |s| match &s.failed {
            Some((rate, why)) => format!("{rate:.0}: {why}"),
            None => format!("none up to {:.0}", args.sweep_max_rate),
        },
    );
    block.connected(results.each_ref().map(|r| r.as_ref().map(|s| &s.connected)));
    block.line("at the highest rate passed:", [Some(()), Some(())], |_| {
        String::new()
    });
    block.window(best, true);
    let ok = results
        .iter()
        .flatten()
        .all(|s| s.connected.connect_errors == 0);
    for mut swept in results.into_iter().flatten() {
        swept.connected.crowd.close().await;
    }
    Ok((block, ok))
}

async fn sweep_side(args: &FanoutArgs, target: &mut Target) -> anyhow::Result<Swept> {
    let side = target.side;
    let mut connected = window::connect(target, args.sweep_clients, args.parallel).await;
    window::measure(target, &connected.crowd, 1.0, WARMUP, args.settle).await?;
    let mut best: Option<Window> = None;
    let mut failed: Option<(f64, String)> = None;
    let mut rate: f64 = 1.0;
    let mut bisections = 0;
    loop {
        let window =
            window::measure(target, &connected.crowd, rate, args.sweep_step, args.settle).await?;
        let verdict = window.failure(args.sweep_p99);
        progress(
            side,
            format!(
                "sweep: {rate:>6.0} rows/s: {:>9.0} deliveries/s, p99 {:>7.1} ms, server {:>5} µs/event: {}",
                window.delivered_per_s(),
                window.latency.p99 as f64 / 1000.0,
                window
                    .server_us_per_event()
                    .map_or("?".to_owned(), |us| format!("{us:.2}")),
                verdict.as_deref().unwrap_or("ok")
            ),
        );
        match verdict {
            None => best = Some(window),
            Some(why) => {
                failed = Some((rate, why));
                if !recover(target, &connected.crowd).await {
                    progress(side, "sweep: connecting the clients afresh");
                    connected.crowd.close().await;
                    let fresh = window::connect(target, args.sweep_clients, args.parallel).await;
                    connected.crowd = fresh.crowd;
                }
            }
        }
        let passed = best.as_ref().map_or(0.0, |w| w.rate);
        rate = match &failed {
            None if rate * 2.0 <= args.sweep_max_rate => rate * 2.0,
            None => break,
            Some((failed_rate, _)) => {
                let middle = ((passed + failed_rate) / 2.0).round();
                if bisections == args.sweep_bisect || middle <= passed || middle >= *failed_rate {
                    break;
                }
                bisections += 1;
                middle
            }
        };
    }
    Ok(Swept {
        connected,
        best,
        failed,
    })
}

/// Waits for every client to catch up after a failed step; whether the
/// crowd can go on (all caught up, no stream lost).
async fn recover(target: &Target, crowd: &Crowd) -> bool {
    let caught_up = crowd
        .wait_caught_up(target.writer.last(), Instant::now() + RECOVER)
        .await;
    caught_up && crowd.count(State::Ended) == 0
}
