//! HTTP: the axum router, its shared state, and the small JSON endpoints.
//!
//! `app(ctx)` builds the router (its unit tests call it with `oneshot`);
//! [`listener::serve`] runs it on a bound listener until shutdown, answering
//! event stream requests on the socket itself and handing them to the
//! feed's fan-out. `metrics_app(ctx)` is the operators' router, for a
//! listener of its own. Handlers read feeds only and never query the
//! database themselves; a stream behind the replay ring is caught up by its
//! feed's coalesced reads. With auth on, a client learns nothing of a feed
//! its token may not read.

mod access;
pub mod connections;
mod error;
pub mod events;
mod filter;
mod head;
mod health;
pub mod limits;
pub mod listener;
mod metrics;
mod presence;
mod resume;
mod rows;
#[cfg(test)]
mod tests;

pub use error::Error;

use crate::auth::Claims;
use crate::fanout::Fanout;
use crate::feed::Feed;
use crate::poller::Health;
use crate::presence::Presence;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

/// Stream settings shared by every request.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Interval of keep-alive comments on quiet streams.
    pub keep_alive: Duration,
    /// Reconnect delay sent in `retry:`.
    pub retry: Duration,
    /// Most rows one `/rows` answer may ask for.
    pub max_limit: usize,
    /// Longest `/rows` long-poll.
    pub max_wait: Duration,
    /// Origins browsers may call from (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// A write to a client that makes no progress for this long ends its
    /// stream.
    pub send_timeout: Duration,
}

/// A feed as the server runs it: the feed, how its poller is doing, and
/// the fan-out that writes its caught-up streams.
#[derive(Clone)]
pub struct Served {
    pub feed: Arc<Feed>,
    pub health: Arc<Health>,
    pub fanout: Arc<Fanout>,
    /// The feed's place among instances sharing a bus.
    pub membership: Arc<crate::cluster::Membership>,
    /// Who is connected, when the feed tracks it.
    pub presence: Option<Arc<Presence>>,
}

impl Served {
    /// A feed with its fan-out, before any cluster task has placed it.
    pub fn new(feed: Arc<Feed>, health: Arc<Health>) -> Served {
        let presence = (feed.config.presence.as_ref())
            .map(|_| Presence::new(feed.config.tuning.presence_grace));
        Served {
            presence,
            fanout: Fanout::of(&feed),
            feed,
            health,
            membership: Arc::default(),
        }
    }
}

/// The state every handler sees.
#[derive(Clone)]
pub struct ApiContext {
    /// Every feed, in configuration order.
    pub feeds: Arc<Vec<Served>>,
    /// Stream settings.
    pub settings: Arc<StreamSettings>,
    /// Fires when the server stops: open streams end.
    pub shutdown: CancellationToken,
    /// Verifies tokens; `None` when auth is off.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Open streams per token subject, per client address and in all.
    pub limits: Arc<limits::Limits>,
    /// The main listener's connections, for `/metrics`.
    pub connections: Arc<connections::Connections>,
    /// Whether `/metrics` and the full `/healthz` have a listener of their
    /// own (`metrics_listen`): the router then answers `/metrics` with 404
    /// and `/healthz` with the overall status only.
    pub metrics_apart: bool,
}

impl ApiContext {
    /// The feed `name`, when `claims` may read it. A feed the token may not
    /// read is answered exactly like one that does not exist, so that a
    /// client learns nothing of it.
    fn feed(&self, name: &str, claims: Option<&Claims>) -> Result<Served, Error> {
        self.readable(claims)
            .find(|s| s.feed.name() == name)
            .cloned()
            .ok_or_else(|| Error::UnknownFeed {
                name: name.to_owned(),
                available: self.feed_names(claims),
            })
    }

    /// The names of the feeds `claims` may read, for error messages.
    fn feed_names(&self, claims: Option<&Claims>) -> String {
        self.readable(claims)
            .map(|s| s.feed.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The router. Streams are never compressed: a compressing layer would
/// buffer events.
pub fn app(ctx: ApiContext) -> Router {
    let cors = cors(&ctx.settings.cors_origins);
    let router = Router::new()
        .route("/", get(index))
        .route("/events", get(events::many_feeds))
        .route("/events/{feed}", get(events::one_feed))
        .route("/feeds", get(feeds))
        .route("/feeds/{feed}", get(feed))
        .route("/feeds/{feed}/rows", get(rows::rows))
        .route("/presence/{feed}", get(presence::members))
        .route("/healthz", get(health::healthz));
    // With a listener of their own, metrics are not served to clients.
    let router = if ctx.metrics_apart {
        router
    } else {
        router.route("/metrics", get(metrics::metrics))
    };
    router
        .fallback(|| async { Error::NotFound })
        .layer(cors)
        .layer(TraceLayer::new_for_http())
        .with_state(ctx)
}

/// The router of the `metrics_listen` listener, for operators: `/metrics`
/// and `/healthz` of every feed, without a token.
pub fn metrics_app(ctx: ApiContext) -> Router {
    Router::new()
        .route("/healthz", get(health::full))
        .route("/metrics", get(metrics::all))
        .fallback(|| async { Error::NotFound })
        .layer(TraceLayer::new_for_http())
        .with_state(ctx)
}

/// CORS for the configured origins. With a list, credentials (the token
/// cookie) are allowed; `*` allows any origin without credentials, and is
/// accepted only with auth off.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return CorsLayer::new();
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET])
        .allow_headers([
            header::AUTHORIZATION,
            header::CACHE_CONTROL,
            header::IF_NONE_MATCH,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::ETAG]);
    if origins.iter().any(|o| o == "*") {
        return layer.allow_origin(AllowOrigin::any());
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    layer
        .allow_origin(AllowOrigin::list(list))
        .allow_credentials(true)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

fn feed_summary(feed: &Feed) -> serde_json::Value {
    let (cursor, at) = feed.head();
    let topic = feed.config.topic.as_ref();
    json!({
        "name": feed.name(),
        "source": topic.map_or("table", |t| t.kind.source()),
        "table": topic.is_none().then_some(&feed.query.source),
        "reads": feed.query.source,
        // A live-only feed has no cursor a client could use.
        "cursor": feed.style().resumable().then(|| feed.cursor_text(cursor)),
        "latest_at": at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_millis() as u64),
        "latest_row_at": feed.head_row_time(),
        "clients": feed.clients(),
        "filter_columns": feed.query.filter_columns,
    })
}

/// `GET /feeds`: every feed the caller may read, with its latest cursor,
/// from memory.
async fn feeds(
    State(ctx): State<ApiContext>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let claims = ctx.claims(&headers, &params)?;
    let readable = ctx
        .readable(claims.as_ref())
        .map(|s| feed_summary(&s.feed))
        .collect::<Vec<_>>();
    Ok(Json(json!({ "feeds": readable })))
}

/// `GET /feeds/{feed}`: what a client needs to know to read one feed.
async fn feed(
    State(ctx): State<ApiContext>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(params): axum::extract::Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let claims = ctx.claims(&headers, &params)?;
    let served = ctx.feed(&name, claims.as_ref())?;
    let mut summary = feed_summary(&served.feed);
    let q = &served.feed.query;
    let extra = json!({
        "id_column": (served.feed.config.topic.is_none()).then_some(&q.id_column),
        "columns": q.columns,
        "cursor_type": cursor_type(&served.feed),
        "event": served.feed.config.event,
        "doorbell": served.health.doorbell_live(),
    });
    if let (Some(summary), Some(extra)) = (summary.as_object_mut(), extra.as_object()) {
        summary.extend(extra.clone());
    }
    Ok(Json(summary))
}

/// What a feed's cursors are, for `/feeds/{feed}`.
fn cursor_type(feed: &Feed) -> &'static str {
    use crate::cursor::Style;
    match (feed.style(), &feed.config.topic) {
        (Style::Live, _) => "none (live only)",
        (Style::RedisStream, _) => "Redis stream entry id (<ms>-<seq>)",
        (_, Some(_)) => "JetStream stream sequence (integer)",
        _ if feed.query.txid_column.is_some() => "transaction order (opaque integer)",
        _ => "row id (integer)",
    }
}
