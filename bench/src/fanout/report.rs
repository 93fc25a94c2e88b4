//! The table: one block per scenario, one line per figure, rowcast and
//! nginx+nchan side by side.

use super::target::Side;
use super::window::{Connected, Window};

const LABEL: usize = 46;
const VALUE: usize = 30;

/// One scenario's lines.
pub struct Block {
    title: String,
    lines: Vec<(String, [String; 2])>,
}

/// Where a side's figures are in a line.
pub fn column(side: Side) -> usize {
    match side {
        Side::Rowcast => 0,
        Side::Nchan => 1,
    }
}

pub fn print_header() {
    println!(
        "{:<LABEL$} {:>VALUE$} {:>VALUE$}",
        "scenario / figure", "rowcast", "nginx+nchan"
    );
}

impl Block {
    pub fn new(title: impl Into<String>) -> Block {
        Block {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    /// A line whose figure for each side `value` gives ("n/a" when it gives
    /// nothing).
    pub fn line<T>(&mut self, label: &str, sides: [Option<T>; 2], value: impl Fn(T) -> String) {
        let [a, b] = sides;
        let cell = |x: Option<T>| x.map_or("n/a".to_owned(), &value);
        self.lines.push((label.to_owned(), [cell(a), cell(b)]));
    }

    pub fn print(&self) {
        println!("{}", self.title);
        for (label, [a, b]) in &self.lines {
            println!("  {label:<w$} {a:>VALUE$} {b:>VALUE$}", w = LABEL - 2);
        }
    }

    /// The lines about connecting a crowd.
    pub fn connected(&mut self, sides: [Option<&Connected>; 2]) {
        self.line("clients connected (connect errors)", sides, |c| {
            format!(
                "{} ({})",
                c.crowd.len() - c.connect_errors,
                c.connect_errors
            )
        });
        if sides.iter().flatten().any(|c| c.connect_errors > 0) {
            self.line("  first connect error", sides, |c| {
                c.connect_error.clone().unwrap_or_default()
            });
        }
        self.line("time to connect them all, s", sides, |c| {
            format!("{:.1}", c.took.as_secs_f64())
        });
        self.line("server RSS before → after connecting, MiB", sides, |c| {
            format!("{} → {}", mib(c.rss.0), mib(c.rss.1))
        });
        self.line("server RSS growth per connection, KiB", sides, |c| {
            c.rss_per_client()
                .map_or("?".to_owned(), |k| format!("{k:.2}"))
        });
    }

    /// The lines about a window of rows.
    pub fn window(&mut self, sides: [Option<&Window>; 2], latency: bool) {
        self.line("rows written (rows/s)", sides, |w| {
            format!("{} ({:.1}/s)", w.written.rows, w.written.rate())
        });
        self.line("delivered events/s", sides, |w| {
            format!("{:.0}", w.delivered_per_s())
        });
        if latency {
            self.line(
                "insert→client latency p50 / p99 / max, ms",
                sides,
                self::latency,
            );
        }
        self.line("every row once, in order", sides, verdict);
        self.line("server CPU in window, s (% of a core)", sides, |w| {
            w.server_cpu.map_or("?".to_owned(), |cpu| {
                format!(
                    "{:.2} ({:.0}%)",
                    cpu.as_secs_f64(),
                    100.0 * cpu.as_secs_f64() / w.elapsed.as_secs_f64()
                )
            })
        });
        self.line("server CPU per delivered event, µs", sides, |w| {
            w.server_us_per_event()
                .map_or("?".to_owned(), |us| format!("{us:.2}"))
        });
        self.line("bench CPU per delivered event, µs", sides, |w| {
            w.bench_us_per_event()
                .map_or("?".to_owned(), |us| format!("{us:.2}"))
        });
        self.queries(sides);
    }

    /// rowcast's database queries per second in a window.
    pub fn queries(&mut self, sides: [Option<&Window>; 2]) {
        let qps = sides.map(|w| w.and_then(Window::queries_per_s));
        self.line("DB queries/s (pg_stat_user_tables scans)", qps, |q| {
            format!("{:.1}", q.0)
        });
        self.line("DB queries/s (rowcast_queries_total)", qps, |q| {
            format!("{:.1}", q.1)
        });
    }
}

/// A window's insert→client latency: p50 / p99 / max in ms.
pub fn latency(w: &Window) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    format!(
        "{:.1} / {:.1} / {:.1}",
        ms(w.latency.p50),
        ms(w.latency.p99),
        ms(w.latency.max)
    )
}

/// Whether every client got every row once, in order, or what went wrong.
pub fn verdict(w: &Window) -> String {
    let c = &w.check;
    if c.ok() {
        return format!("yes ({} deliveries)", c.received);
    }
    format!(
        "NO: {} missing/{} dup/{} order/{} ended",
        c.missing, c.duplicated, c.out_of_order, c.ended
    )
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0))
}
