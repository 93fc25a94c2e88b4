//! The sides side by side, and whether the targets are met.

use super::{Outcome, PollingArgs, Side};
use crate::cpu::load_average;

/// At least this many times fewer database queries than the naive endpoint.
const QUERY_RATIO_TARGET: f64 = 100.0;
/// rowcast's p99 response time under this.
const P99_TARGET_MS: f64 = 20.0;

/// A line of the table: its label, its value for a side, its decimals, and
/// whether the ratio naive/rowcast is shown.
type Figure = (&'static str, fn(&Outcome) -> Option<f64>, usize, bool);

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

/// Database queries per second of the window.
fn qps(o: &Outcome) -> f64 {
    o.db_queries as f64 / o.window.as_secs_f64()
}

fn pct(share: Option<f64>) -> Option<f64> {
    share.map(|s| s * 100.0)
}

pub fn print(args: &PollingArgs, outcomes: &[Outcome]) {
    let rowcast = outcomes.iter().find(|o| o.side == Side::Rowcast);
    let naive = outcomes.iter().find(|o| o.side == Side::Naive);
    let window = outcomes.first().map_or(0.0, |o| o.window.as_secs_f64());
    println!(
        "polling: {} clients, 1 request/s each; {} rows/s written; window {window:.1} s after {} warm-up{}",
        args.clients,
        args.rate,
        humantime::format_duration(args.warmup),
        load_average(),
    );
    println!(
        "{:<28} {:>12} {:>12} {:>14}",
        "", "rowcast", "naive", "naive/rowcast"
    );
    let rows: [Figure; 12] = [
        ("requests completed", |o| Some(o.requests as f64), 0, false),
        ("  with rows", |o| Some(o.with_rows as f64), 0, false),
        ("response time p50, ms", |o| Some(ms(o.p50_us)), 2, true),
        ("response time p99, ms", |o| Some(ms(o.p99_us)), 2, true),
        ("response time max, ms", |o| Some(ms(o.max_us)), 2, true),
        ("database queries", |o| Some(o.db_queries as f64), 0, false),
        ("database queries/s", |o| Some(qps(o)), 1, true),
        (
            "  as the server counts them",
            |o| Some(o.own_queries as f64),
            0,
            false,
        ),
        ("server CPU, % of a core", |o| pct(o.server_cpu), 1, true),
        (
            "postgres CPU, % of a core",
            |o| pct(o.postgres_cpu),
            1,
            true,
        ),
        ("failed requests", |o| Some(o.failures as f64), 0, false),
        (
            "clients with wrong rows",
            |o| Some(o.problems.len() as f64),
            0,
            false,
        ),
    ];
    for (label, value, decimals, ratio) in rows {
        let cell = |o: Option<&Outcome>| match o.and_then(value) {
            Some(v) => format!("{v:.decimals$}"),
            None => "-".to_owned(),
        };
        let ratio = match (ratio, rowcast.and_then(value), naive.and_then(value)) {
            (true, Some(r), Some(n)) if r > 0.0 => format!("{:.1}×", n / r),
            _ => String::new(),
        };
        let line = format!(
            "{label:<28} {:>12} {:>12} {ratio:>14}",
            cell(rowcast),
            cell(naive)
        );
        println!("{}", line.trim_end());
    }

    match (rowcast, naive) {
        (Some(r), Some(n)) => {
            let ratio = qps(n) / qps(r).max(f64::MIN_POSITIVE);
            let verdict = if ratio >= QUERY_RATIO_TARGET {
                "met".to_owned()
            } else {
                format!(
                    "MISSED ({:.0}% short)",
                    100.0 * (1.0 - ratio / QUERY_RATIO_TARGET)
                )
            };
            println!(
                "target: at least {QUERY_RATIO_TARGET:.0}× fewer database queries than naive: {ratio:.1}× fewer: {verdict}"
            );
        }
        _ => println!(
            "target: at least {QUERY_RATIO_TARGET:.0}× fewer database queries than naive: not measured (needs both sides)"
        ),
    }
    match rowcast {
        Some(r) => {
            let p99 = ms(r.p99_us);
            let verdict = if p99 < P99_TARGET_MS {
                "met".to_owned()
            } else {
                format!("MISSED by {:.1} ms", p99 - P99_TARGET_MS)
            };
            println!("target: rowcast p99 under {P99_TARGET_MS:.0} ms: {p99:.2} ms: {verdict}");
        }
        None => println!("target: rowcast p99 under {P99_TARGET_MS:.0} ms: not measured"),
    }

    for o in outcomes {
        let side = format!("{:?}", o.side).to_lowercase();
        println!(
            "{side}: {} rows in the table; every client's rows checked: {}",
            o.rows,
            if o.problems.is_empty() {
                "in order, none missing, none twice".to_owned()
            } else {
                format!("{} clients wrong", o.problems.len())
            }
        );
        for problem in o.problems.iter().take(5) {
            println!("    {problem}");
        }
        if o.problems.len() > 5 {
            println!("    … and {} more clients", o.problems.len() - 5);
        }
        if let Some(failure) = &o.last_failure {
            println!("    {} failed requests, the last: {failure}", o.failures);
        }
    }
}
