//! `GET /metrics`: Prometheus text exposition of each feed's counters.
//! With auth on, the main listener answers only a token, with the series of
//! the feeds it may read; the operators' listener (`metrics_listen`) shows
//! every feed. Read from memory; never queries the database.

use super::connections::Connections;
use super::error::Error;
use super::ApiContext;
use super::Served;
use crate::cluster::Role;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// A metric family: name, type, help, and how to read it off a feed.
type Family = (&'static str, &'static str, &'static str, fn(&Served) -> f64);

fn count(counter: &std::sync::atomic::AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

/// `/metrics` on the main listener: a token's feeds with auth on (Prometheus
/// sends one as `Authorization: Bearer`), every feed with auth off.
pub async fn metrics(
    State(ctx): State<ApiContext>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Error> {
    let claims = ctx.claims(&headers, &params)?;
    let shown: Vec<&Served> = ctx.readable(claims.as_ref()).collect();
    Ok(exposition(&shown, &ctx.connections))
}

/// `/metrics` on the operators' listener: every feed.
pub async fn all(State(ctx): State<ApiContext>) -> impl IntoResponse {
    let shown: Vec<&Served> = ctx.feeds.iter().collect();
    exposition(&shown, &ctx.connections)
}

/// The text exposition of the series of `feeds`, and of the listener's
/// connections.
fn exposition(feeds: &[&Served], connections: &Connections) -> impl IntoResponse {
    let mut out = String::new();
    let server: [(&str, &str, &str, f64); 4] = [
        (
            "rowcast_connections",
            "gauge",
            "Client connections held.",
            connections.open() as f64,
        ),
        (
            "rowcast_max_clients",
            "gauge",
            "Most client connections held at once (max_clients).",
            connections.max() as f64,
        ),
        (
            "rowcast_connections_evicted_total",
            "counter",
            "Idle connections closed to make room for new ones.",
            count(&connections.evicted),
        ),
        (
            "rowcast_connections_refused_total",
            "counter",
            "New connections closed at once because every held one was busy.",
            count(&connections.refused),
        ),
    ];
    for (name, kind, help, value) in server {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let families: [Family; 27] = [
        (
            "rowcast_queries_total",
            "counter",
            "Queries of the feed's table (polls, catch-up reads and gap checks), or catch-up reads of its Redis or JetStream stream.",
            |s| count(&s.health.counters.queries),
        ),
        (
            "rowcast_catch_up_queries_total",
            "counter",
            "Of those, catch-up reads for clients behind the replay ring.",
            |s| count(&s.health.counters.catch_up_queries),
        ),
        (
            "rowcast_query_errors_total",
            "counter",
            "Row queries that failed, or failed reads of the feed's Redis or NATS.",
            |s| count(&s.health.counters.errors),
        ),
        (
            "rowcast_polls_total",
            "counter",
            "Polls of the feed's table by its poller.",
            |s| count(&s.health.counters.polls),
        ),
        (
            "rowcast_events_total",
            "counter",
            "Rows (or Redis and NATS messages) published to subscribers.",
            |s| count(&s.health.counters.events),
        ),
        (
            "rowcast_skipped_messages_total",
            "counter",
            "Feeds of Redis and NATS: messages passed over because their payload is not JSON (or not a Laravel broadcast).",
            |s| count(&s.health.counters.skipped),
        ),
        ("rowcast_clients", "gauge", "Connected subscribers.", |s| {
            s.feed.clients() as f64
        }),
        (
            "rowcast_direct_streams",
            "gauge",
            "Of the streams, those caught up and written by the feed's fan-out task.",
            |s| s.fanout.streams() as f64,
        ),
        (
            "rowcast_feed_up",
            "gauge",
            "1 when the feed's last poll succeeded.",
            |s| f64::from(u8::from(s.health.failure().is_none())),
        ),
        (
            "rowcast_gaps_passed_total",
            "counter",
            "Gaps in the ids passed over after they settled.",
            |s| count(&s.health.counters.gaps_passed),
        ),
        (
            "rowcast_gaps_capped_total",
            "counter",
            "Gaps passed over because rows were held past hold_cap.",
            |s| count(&s.health.counters.gaps_capped),
        ),
        (
            "rowcast_late_rows_total",
            "counter",
            "Rows that committed after their gap was passed over, delivered late.",
            |s| count(&s.health.counters.late_rows),
        ),
        (
            "rowcast_gap_hold_seconds",
            "gauge",
            "How long rows have been held back behind a gap (0 when none are).",
            |s| (s.health.holding_since()).map_or(0.0, |t| t.elapsed().as_secs_f64()),
        ),
        (
            "rowcast_old_transactions",
            "gauge",
            "Changes feeds: transactions open longer than max_txn_age at the last poll, left out of the window.",
            |s| count(&s.health.counters.old_transactions),
        ),
        (
            "rowcast_window_rows",
            "gauge",
            "Changes feeds: rows the last poll re-read (what the feed keeps a hash of).",
            |s| count(&s.health.counters.window_rows),
        ),
        (
            "rowcast_window_seconds",
            "gauge",
            "Changes feeds: how far back from the database's clock the last poll read.",
            |s| count(&s.health.counters.window_ms) / 1000.0,
        ),
        (
            "rowcast_doorbell_up",
            "gauge",
            "1 when the Postgres NOTIFY doorbell works for the feed.",
            |s| f64::from(u8::from(s.health.doorbell_live())),
        ),
        (
            "rowcast_leader",
            "gauge",
            "1 when this instance polls the feed (its leader, or alone without a bus); 0 when it follows the bus.",
            |s| f64::from(u8::from(s.membership.role() != Role::Follower)),
        ),
        (
            "rowcast_leader_changes_total",
            "counter",
            "Times this instance took the lead of the feed or gave it up.",
            |s| count(&s.membership.leader_changes),
        ),
        (
            "rowcast_bus_up",
            "gauge",
            "1 when the cluster bus answered the feed's last use of it (or there is no bus).",
            |s| f64::from(u8::from(s.membership.bus_failure().is_none())),
        ),
        (
            "rowcast_bus_lag_seconds",
            "gauge",
            "Followers: how long the last entry applied took from the leader's append to here.",
            |s| s.membership.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        ),
        (
            "rowcast_bus_appended_total",
            "counter",
            "Entries (one per batch) this instance appended to the bus as the feed's leader.",
            |s| count(&s.membership.appended),
        ),
        (
            "rowcast_bus_applied_total",
            "counter",
            "Entries this instance applied from the bus as a follower.",
            |s| count(&s.membership.applied),
        ),
        (
            "rowcast_bus_filled_total",
            "counter",
            "Spans a follower read from the database because the bus had not got them.",
            |s| count(&s.membership.filled),
        ),
        (
            "rowcast_presence_members",
            "gauge",
            "Presence feeds: members seated now, over every scope (a key in two scopes counts twice).",
            |s| s.presence.as_ref().map_or(0.0, |p| p.member_count() as f64),
        ),
        (
            "rowcast_presence_joins_total",
            "counter",
            "Presence feeds: joins (a key's first connection in a scope).",
            |s| s.presence.as_ref().map_or(0.0, |p| count(&p.joins)),
        ),
        (
            "rowcast_presence_leaves_total",
            "counter",
            "Presence feeds: leaves (a key's last connection gone for presence_grace).",
            |s| s.presence.as_ref().map_or(0.0, |p| count(&p.leaves)),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for served in feeds {
            let name_of = served.feed.name();
            let _ = writeln!(out, "{name}{{feed=\"{name_of}\"}} {}", value(served));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
