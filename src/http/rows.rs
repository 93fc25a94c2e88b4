//! `GET /feeds/{feed}/rows?after=&limit=&wait=`: the drop-in replacement for
//! a short-polling endpoint, as JSON.
//!
//! Answers come from memory whenever they can: nothing new (`after` at or
//! past the feed's head) costs nothing, rows in the replay ring cost a copy,
//! and only a cursor older than the ring reaches the database, through the
//! feed's coalesced and briefly cached catch-up reads. `wait` long-polls on
//! the live broadcast. The body is assembled from the JSON the database
//! rendered, never re-serialized.

use super::error::Error;
use super::filter::{self, Filter};
use super::ApiContext;
use crate::cursor::Cursor;
use crate::echo::Echo;
use crate::feed::{Event, Feed};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

/// Rows per answer when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;

/// One answer: rows after a cursor.
struct Answer {
    rows: Vec<Arc<Event>>,
    /// Where to ask from next: the last row's id, or, when no row matched,
    /// how far the feed was checked.
    cursor: Cursor,
    /// Whether more rows are there already.
    more: bool,
}

pub async fn rows(
    State(ctx): State<ApiContext>,
    Path(name): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    // The token first, as for a stream: see `events::one_feed`.
    let claims = ctx.claims(&headers, &params)?;
    let served = ctx.feed(&name, claims.as_ref())?;
    let feed = &served.feed;
    if !feed.style().resumable() {
        return Err(Error::LiveOnly(feed.name().to_owned()));
    }
    let mut filter = filter::for_feed(feed, &params, filter::reserved::ROWS)?;
    super::access::admit(feed, claims.as_ref(), &mut filter)?;
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let after = match param("after") {
        Some(text) => super::resume::one(feed, "after", text)?,
        // No cursor: start from now, like a live stream.
        None => feed.head().0,
    };
    let limits = &ctx.settings;
    let limit = match param("limit") {
        None => DEFAULT_LIMIT.min(limits.max_limit),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=limits.max_limit).contains(n))
            .ok_or_else(|| Error::BadParameter {
                name: "limit",
                problem: format!(
                    "{} is not a whole number from 1 to {}",
                    Echo(text),
                    limits.max_limit
                ),
            })?,
    };
    let wait = match param("wait") {
        None => Duration::ZERO,
        Some(text) => text
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s <= limits.max_wait.as_secs_f64())
            .map(Duration::from_secs_f64)
            .ok_or_else(|| Error::BadParameter {
                name: "wait",
                problem: format!(
                    "{} is not a number of seconds from 0 to {}",
                    Echo(text),
                    limits.max_wait.as_secs_f64()
                ),
            })?,
    };

    let deadline = tokio::time::Instant::now() + wait;
    let mut answer = collect(feed, after, limit, &filter).await;
    if answer.rows.is_empty() && !wait.is_zero() {
        // Nothing yet: wait on the live broadcast from where the feed was
        // checked, and answer with the first rows that pass the filter.
        let mut subscriber = feed.subscribe(Some(answer.cursor));
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, subscriber.next()) => next,
                _ = ctx.shutdown.cancelled() => break,
            };
            let Ok(Some(_)) = next else { break };
            answer = collect(feed, after, limit, &filter).await;
            if !answer.rows.is_empty() {
                break;
            }
        }
        if answer.rows.is_empty() {
            // Same cursor as asked: nothing is new for this client.
            answer.cursor = answer.cursor.max(after);
        }
    }
    Ok(respond(feed, &answer, &headers))
}

/// The rows after `after` that pass `filter`, at most `limit`.
async fn collect(feed: &Feed, after: Cursor, limit: usize, filter: &Filter) -> Answer {
    let (head, _) = feed.head();
    if after >= head {
        return Answer {
            rows: Vec::new(),
            cursor: after,
            more: false,
        };
    }
    // One more than asked tells whether there is more.
    let wanted = |e: &Event| e.passes(filter);
    // A whole page (a changes feed's catch-up) has no cursor to stop
    // midway at: it is answered whole, whatever `limit`.
    let (events, checked_to, whole) = match feed.ring_after(after, limit.saturating_add(1), wanted)
    {
        Some(events) => (events, head, false),
        None => match feed.catch_up(after).await {
            Ok(page) => {
                let events = page
                    .events
                    .iter()
                    .filter(|e| !e.data.is_empty())
                    .cloned()
                    .collect();
                (events, page.complete_to, page.whole)
            }
            Err(err) => {
                // Answer what is known (nothing new) rather than fail the
                // poll: the client asks again with the same cursor.
                tracing::warn!(feed = %feed.name(), cause = %err, "catch-up read for /rows failed");
                (Vec::new(), after, false)
            }
        },
    };
    let limit = if whole { usize::MAX } else { limit };
    let mut matching = events.into_iter().filter(|e| wanted(e));
    let rows: Vec<Arc<Event>> = matching.by_ref().take(limit).collect();
    let more = matching.next().is_some() || checked_to < head;
    let cursor = match rows.last() {
        Some(last) if more && !whole => Cursor::At(last.id),
        // Everything up to here was checked, including rows the filter or
        // the feed's condition left out.
        _ => checked_to.max(after),
    };
    Answer { rows, cursor, more }
}

/// `{"rows":[…],"cursor":"…","more":…}` with an ETag; 304 when the client
/// already has this answer.
fn respond(feed: &Feed, answer: &Answer, headers: &HeaderMap) -> Response {
    let mut body =
        BytesMut::with_capacity(64 + answer.rows.iter().map(|e| e.data.len() + 1).sum::<usize>());
    body.put_slice(b"{\"rows\":[");
    for (i, row) in answer.rows.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&row.data);
    }
    body.put_slice(b"],\"cursor\":\"");
    body.put_slice(feed.cursor_text(answer.cursor).as_bytes());
    body.put_slice(if answer.more {
        b"\",\"more\":true}"
    } else {
        b"\",\"more\":false}"
    });

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("\"{:016x}\"", hasher.finish());
    let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header");
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let cache = (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if unchanged {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag_value), cache],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag_value),
            cache,
        ],
        body.freeze(),
    )
        .into_response()
}
