//! `GET /healthz`: whether every feed's last poll succeeded. The status is
//! the whole server's, whoever asks, so that a load balancer's probe needs
//! no token; which feeds the body names depends on who asks. With auth on,
//! a caller without a valid token sees only the status, and one with a
//! token the feeds it may read. When operators give `/healthz` a listener
//! of its own (`metrics_listen`), the main listener names no feed at all.
//! Read from memory; never queries the database.

use super::access::may_read;
use super::{ApiContext, Served};
use crate::cluster::Role;
use crate::feed::Feed;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering;

/// `/healthz` on the main listener.
pub async fn healthz(
    State(ctx): State<ApiContext>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    if ctx.metrics_apart {
        return answer(&ctx.feeds, None);
    }
    match ctx.claims(&headers, &params) {
        Ok(claims) => answer(&ctx.feeds, Some(&|feed| may_read(feed, claims.as_ref()))),
        // Not a 401: a probe without a token still learns the status.
        Err(_) => answer(&ctx.feeds, None),
    }
}

/// `/healthz` on the operators' listener: every feed.
pub async fn full(State(ctx): State<ApiContext>) -> impl IntoResponse {
    answer(&ctx.feeds, Some(&|_| true))
}

/// 200 `ok` when every feed's last poll succeeded, else 503 `degraded`;
/// with `shown`, the state of each feed it picks under `feeds`.
fn answer(
    served: &[Served],
    shown: Option<&dyn Fn(&Feed) -> bool>,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut healthy = true;
    let mut feeds = serde_json::Map::new();
    for Served {
        feed,
        health,
        membership,
        ..
    } in served
    {
        // Read once: the status and the feed's entry must agree.
        let failure = health.failure().or_else(|| membership.bus_failure());
        healthy &= failure.is_none();
        if shown.is_some_and(|shown| shown(feed)) {
            let mut state = match failure {
                None => {
                    let cursor =
                        (feed.style().resumable()).then(|| feed.cursor_text(feed.head().0));
                    json!({ "status": "ok", "cursor": cursor })
                }
                Some(error) => json!({ "status": "failing", "error": error }),
            };
            let role = membership.role();
            if role != Role::Standalone {
                state["role"] = json!(role.name());
                state["leader_changes"] = json!(membership.leader_changes.load(Ordering::Relaxed));
                if role == Role::Follower {
                    let lag = membership.lag_ms.load(Ordering::Relaxed);
                    state["bus_lag_ms"] = json!(lag);
                }
            }
            feeds.insert(feed.name().to_owned(), state);
        }
    }
    let (code, status) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    };
    let body = match shown {
        Some(_) => json!({ "status": status, "feeds": feeds }),
        None => json!({ "status": status }),
    };
    (code, Json(body))
}
