//! `GET /metrics`: Prometheus text exposition of each feed's counters.
//! Read from memory; never queries the database.

use super::ApiContext;
use crate::hub::Hub;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// A metric family: name, type, help, and how to read it off a hub.
type Family = (&'static str, &'static str, &'static str, fn(&Hub) -> u64);

pub async fn metrics(State(ctx): State<ApiContext>) -> impl IntoResponse {
    let mut out = String::new();
    let families: [Family; 6] = [
        (
            "rowcast_queries_total",
            "counter",
            "Row queries sent to the database (polls and catch-up reads).",
            |h| h.counters.queries.load(Ordering::Relaxed),
        ),
        (
            "rowcast_catch_up_queries_total",
            "counter",
            "Of those, catch-up reads for clients behind the replay ring.",
            |h| h.counters.catch_up_queries.load(Ordering::Relaxed),
        ),
        (
            "rowcast_query_errors_total",
            "counter",
            "Row queries that failed.",
            |h| h.counters.errors.load(Ordering::Relaxed),
        ),
        (
            "rowcast_events_total",
            "counter",
            "Rows published to subscribers.",
            |h| h.counters.events.load(Ordering::Relaxed),
        ),
        ("rowcast_clients", "gauge", "Connected subscribers.", |h| {
            h.clients() as u64
        }),
        (
            "rowcast_feed_up",
            "gauge",
            "1 when the feed's last poll succeeded.",
            |h| u64::from(h.failure().is_none()),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for hub in ctx.hubs.iter() {
            let _ = writeln!(out, "{name}{{feed=\"{}\"}} {}", hub.name(), value(hub));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
