//! `storm` (rowcast only; nchan has no replay from a client's last id):
//! C clients follow the feed while rows flow. The rows of the usual polls
//! are counted over a steady window first. Then every client drops its
//! connection and all reconnect at once, each with its own Last-Event-ID
//! among the last `--storm-spread` rows (all inside the replay ring), while
//! rows keep flowing. Reported: the queries rowcast made in the storm
//! window beyond what the usual polls make in as long, its catch-up reads,
//! how long until every client was live again, and whether every client
//! got every row after its Last-Event-ID exactly once, in order.

use super::crowd::{Check, Counts, Crowd};
use super::report::Block;
use super::stream::State;
use super::target::{Queries, Setup, Side, Target};
use super::window::{self, Connected};
use super::{measured, on_fresh, progress, FanoutArgs, WARMUP};
use anyhow::{bail, Context as _};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The longest the reconnected clients may take to be live again.
const CATCH_UP: Duration = Duration::from_secs(120);

/// What the storm found.
struct Stormed {
    connected: Connected,
    /// The clients after the storm.
    crowd: Crowd,
    /// Clients that could not reconnect, and the first reason.
    reconnect_errors: usize,
    reconnect_error: Option<String>,
    /// From the first reconnect until every client had every row up to the
    /// newest at the reconnect.
    caught_up_in: Option<Duration>,
    /// Counters over the steady window before the storm.
    baseline: (Queries, Queries),
    /// Counters over the storm window.
    stormed: (Queries, Queries),
    /// Server CPU in the storm window.
    server_cpu: Option<Duration>,
    /// Rows each client was owed from its Last-Event-ID to the newest row
    /// at the reconnect, summed: the replay.
    replayed: i64,
    /// Every reconnected client, from its Last-Event-ID to the last row.
    check: Check,
}

pub async fn storm(args: &FanoutArgs, setup: &Setup) -> anyhow::Result<(Block, bool)> {
    let spread = args.storm_spread.clamp(1, (args.ring_size / 2).max(1));
    let mut block = Block::new(format!(
        "storm: {} clients reconnect at once, Last-Event-ID among the last {spread} rows \
         (ring {}), {} rows/s",
        args.storm_clients, args.ring_size, args.storm_rate
    ));
    if !measured(args, Side::Rowcast) {
        return Ok((block, true));
    }
    progress(
        Side::Rowcast,
        format!("storm: connecting {} clients", args.storm_clients),
    );
    let mut s = on_fresh(Side::Rowcast, setup, async |target| {
        storm_rowcast(args, target, spread).await
    })
    .await?;

    let rate = |q: &(Queries, Queries)| {
        let secs = (q.1.at - q.0.at).as_secs_f64();
        (
            (q.1.pg_scans - q.0.pg_scans) as f64 / secs,
            (q.1.rowcast - q.0.rowcast) / secs,
        )
    };
    let (base_pg, base_own) = rate(&s.baseline);
    let window = (s.stormed.1.at - s.stormed.0.at).as_secs_f64();
    let made_pg = (s.stormed.1.pg_scans - s.stormed.0.pg_scans) as f64;
    let made_own = s.stormed.1.rowcast - s.stormed.0.rowcast;
    block.connected(one(&s.connected));
    block.line("reconnected (errors)", one(&s), |s| {
        format!(
            "{} ({})",
            s.crowd.len() - s.reconnect_errors,
            s.reconnect_errors
        )
    });
    block.line(
        "replay done (rows to the reconnect) after, s",
        one(&s),
        |s| {
            s.caught_up_in.map_or("not within 120 s".to_owned(), |t| {
                format!("{:.1}", t.as_secs_f64())
            })
        },
    );
    block.line("rows replayed from the ring", one(&s), |s| {
        s.replayed.to_string()
    });
    block.line("usual DB queries/s, pg_stat / rowcast", one(()), |_| {
        format!("{base_pg:.1} / {base_own:.1}")
    });
    block.line(
        &format!("storm window {window:.1} s: queries pg_stat / rowcast"),
        one(()),
        |_| format!("{made_pg:.0} / {made_own:.0}"),
    );
    block.line(
        "  beyond the usual polls, pg_stat / rowcast",
        one(()),
        |_| {
            format!(
                "{:+.0} / {:+.0}",
                made_pg - base_pg * window,
                made_own - base_own * window
            )
        },
    );
    block.line("  of which catch-up reads (rowcast)", one(&s), |s| {
        format!("{:.0}", s.stormed.1.catch_up - s.stormed.0.catch_up)
    });
    block.line("server CPU in storm window, s", one(&s), |s| {
        s.server_cpu
            .map_or("?".to_owned(), |c| format!("{:.2}", c.as_secs_f64()))
    });
    block.line(
        "every row after Last-Event-ID once, in order",
        one(&s),
        |s| {
            let c = &s.check;
            if c.ok() {
                format!("yes ({} deliveries)", c.received)
            } else {
                format!(
                    "NO: {} missing/{} dup/{} order/{} ended",
                    c.missing, c.duplicated, c.out_of_order, c.ended
                )
            }
        },
    );
    if let Some(why) = s.check.ended_why.as_ref().filter(|_| s.check.ended > 0) {
        block.line("  a stream ended because", one(why), |w| w.clone());
    }
    if let Some(why) = &s.reconnect_error {
        block.line("  a reconnect failed because", one(why), |w| w.clone());
    }
    let ok = s.connected.connect_errors == 0 && s.reconnect_errors == 0 && s.check.ok();
    s.crowd.close().await;
    Ok((block, ok))
}

async fn storm_rowcast(
    args: &FanoutArgs,
    target: &mut Target,
    spread: usize,
) -> anyhow::Result<Stormed> {
    // Rows in the ring before anyone comes, so every Last-Event-ID is there.
    target.writer.fill(spread).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while target
        .server
        .metric("rowcast_events_total")
        .await?
        .unwrap_or(0.0)
        < spread as f64
    {
        if Instant::now() > deadline {
            bail!("rowcast did not publish the {spread} rows written before the storm");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut connected = window::connect(target, args.storm_clients, args.parallel).await;

    let stop = CancellationToken::new();
    let Target { server, writer, .. } = target;
    let newest = writer.progress();
    let crowd = &mut connected.crowd;
    let storm = async {
        let outcome = async {
            tokio::time::sleep(WARMUP).await;
            let before = server.queries().await?.context("no query counts")?;
            tokio::time::sleep(args.duration).await;
            let baseline = (before, server.queries().await?.context("no query counts")?);

            progress(Side::Rowcast, "storm: every client drops and reconnects");
            let cpu_before = server.cpu();
            let before = server.queries().await?.context("no query counts")?;
            crowd.close().await;
            let started = Instant::now();
            let at = newest.load(Ordering::Relaxed);
            let resume = |i: usize| {
                // Spread evenly but out of step with the client order.
                let back = (i.wrapping_mul(7919) % spread) as i64;
                let last_event_id = at - 1 - back;
                (last_event_id, Some(last_event_id))
            };
            let replayed = (0..crowd.len()).map(|i| at - resume(i).0).sum();
            let fresh = Crowd::connect(&server.sub, crowd.len(), args.parallel, resume).await;
            // Replayed: every client has the rows up to the newest at the
            // reconnect (the newest of all is always on its way to some).
            let mut caught_up_in = None;
            while started.elapsed() < CATCH_UP {
                if fresh.caught_up(at) {
                    caught_up_in = Some(started.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // As long a window as the baseline's, and two seconds live at least.
            let live = started.elapsed() + Duration::from_secs(2);
            tokio::time::sleep(args.duration.saturating_sub(live) + Duration::from_secs(2)).await;
            let stormed = (before, server.queries().await?.context("no query counts")?);
            let server_cpu = cpu_before
                .zip(server.cpu())
                .map(|(b, a)| a.saturating_sub(b));
            Ok::<_, anyhow::Error>(Reconnected {
                crowd: fresh,
                baseline,
                stormed,
                server_cpu,
                caught_up_in,
                replayed,
            })
        }
        .await;
        stop.cancel();
        outcome
    };
    // Rows flow before, during and after the storm, until it is over.
    let forever = Duration::from_secs(24 * 3600);
    let (written, reconnected) = tokio::join!(writer.run(args.storm_rate, forever, &stop), storm);
    let written = written?;
    let r = reconnected?;
    r.crowd
        .wait_caught_up(written.last, Instant::now() + args.settle)
        .await;
    let zero = vec![Counts::default(); r.crowd.len()];
    Ok(Stormed {
        reconnect_errors: r.crowd.count(State::ConnectFailed),
        reconnect_error: r.crowd.connect_error(),
        check: r.crowd.check(&zero, written.last),
        connected,
        crowd: r.crowd,
        caught_up_in: r.caught_up_in,
        baseline: r.baseline,
        stormed: r.stormed,
        server_cpu: r.server_cpu,
        replayed: r.replayed,
    })
}

/// The storm, as its task saw it.
struct Reconnected {
    crowd: Crowd,
    baseline: (Queries, Queries),
    stormed: (Queries, Queries),
    server_cpu: Option<Duration>,
    caught_up_in: Option<Duration>,
    replayed: i64,
}

/// A figure of rowcast alone.
fn one<T>(x: T) -> [Option<T>; 2] {
    [Some(x), None]
}
