//! `GET /events/{feed}` and `GET /events?feed=a&feed=b`: Server-Sent Events.
//!
//! A request is parsed into feeds, filters and cursors first (bad input →
//! 400/404 before any stream starts). The stream then writes frames that the
//! hub built once; per client there is only a filter check and a write.

use super::access::admit;
use super::error::Error;
use super::filter::{filter_index, unknown_filter, Filter};
use super::limits::Slot;
use super::ApiContext;
use crate::auth::Claims;
use crate::cursor::{self, Cursor};
use crate::hub::{Delivery, Hub, Subscriber};
use crate::sse;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

/// Query parameters that are not filters.
const RESERVED: [&str; 3] = ["after", "feed", "access_token"];

/// One feed of a stream request.
struct Wanted {
    hub: Arc<Hub>,
    filter: Filter,
    after: Option<Cursor>,
}

pub async fn one_feed(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(ctx): State<ApiContext>,
    Path(feed): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let hub = ctx.hub(&feed)?;
    let mut filter = Filter::for_feed(&hub, &params, &["after", "access_token"])?;
    let claims = ctx.claims(&headers, &params)?;
    admit(&hub, claims.as_ref(), &mut filter)?;
    let after = match resume_text(&params, &headers) {
        Some((source_name, text)) => {
            Some(Cursor::parse(&text).map_err(|problem| Error::BadCursor {
                source_name,
                problem,
            })?)
        }
        None => None,
    };
    let announce = after.is_none();
    let slot = ctx.limits.take(peer.ip(), subject(&claims))?;
    let expires = claims.as_ref().and_then(Claims::expires_in);
    Ok(stream(
        &ctx,
        vec![Wanted { hub, filter, after }],
        Opening {
            multi: false,
            announce,
            expires,
            slot,
        },
    ))
}

pub async fn many_feeds(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(ctx): State<ApiContext>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for (_, name) in params.iter().filter(|(k, _)| k == "feed") {
        if wanted.iter().any(|w| w.hub.name() == name) {
            return Err(Error::RepeatedFeed(name.clone()));
        }
        wanted.push(Wanted {
            hub: ctx.hub(name)?,
            filter: Filter::default(),
            after: None,
        });
    }
    if wanted.is_empty() {
        return Err(Error::NoFeedRequested {
            available: ctx.feed_names(),
        });
    }
    for (name, value) in &params {
        if RESERVED.contains(&name.as_str()) {
            continue;
        }
        // `feed.column` filters one feed; a bare `column` every feed that has it.
        let (only, column) = match name.split_once('.') {
            Some((feed, column)) if wanted.iter().any(|w| w.hub.name() == feed) => {
                (Some(feed), column)
            }
            _ => (None, name.as_str()),
        };
        let mut used = false;
        for w in wanted
            .iter_mut()
            .filter(|w| only.is_none_or(|f| f == w.hub.name()))
        {
            if let Some(index) = filter_index(&w.hub, column) {
                w.filter.add(index, value.clone());
                used = true;
            }
        }
        if !used {
            let hubs: Vec<_> = wanted.iter().map(|w| w.hub.clone()).collect();
            return Err(unknown_filter(name, &hubs));
        }
    }
    let claims = ctx.claims(&headers, &params)?;
    for w in &mut wanted {
        admit(&w.hub, claims.as_ref(), &mut w.filter)?;
    }
    if let Some((source_name, text)) = resume_text(&params, &headers) {
        let positions = cursor::parse_composite(&text).map_err(|problem| Error::BadCursor {
            source_name,
            problem,
        })?;
        // A feed the cursor does not name starts live; a named feed that is
        // not requested any more is ignored.
        for (feed, position) in positions {
            if let Some(w) = wanted.iter_mut().find(|w| w.hub.name() == feed) {
                w.after = Some(position);
            }
        }
    }
    let slot = ctx.limits.take(peer.ip(), subject(&claims))?;
    let expires = claims.as_ref().and_then(Claims::expires_in);
    Ok(stream(
        &ctx,
        wanted,
        Opening {
            multi: true,
            announce: true,
            expires,
            slot,
        },
    ))
}

/// The resume cursor: `Last-Event-ID` (what EventSource sends on reconnect)
/// wins over `?after=` (what a first connection may give).
fn resume_text(params: &[(String, String)], headers: &HeaderMap) -> Option<(&'static str, String)> {
    let header = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
        .filter(|v| !v.is_empty());
    match header {
        Some(text) => Some(("Last-Event-ID", text)),
        None => params
            .iter()
            .rev()
            .find(|(k, _)| k == "after")
            .map(|(_, v)| ("after", v.clone())),
    }
}

type Deliveries = BoxStream<'static, (usize, Delivery, Cursor)>;

/// The state of one open stream.
struct EventStream {
    /// Bytes to send before any event.
    opening: Option<Bytes>,
    feeds: Vec<(Arc<Hub>, Filter)>,
    /// Each feed's position as the client will know it.
    positions: Vec<Cursor>,
    deliveries: Deliveries,
    /// Whether events are named after their feed with composite ids.
    multi: bool,
    ctx: ApiContext,
    /// Fires at shutdown. Made once per stream: a new waiter per event
    /// would take the token's lock once per client per event.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Fires when a keep-alive may be due. Moved only when it fires, not on
    /// every write: the deadline is counted from `last_write`.
    keep_alive: Pin<Box<Sleep>>,
    last_write: Instant,
    /// Fires when the client's token expires.
    expires: Pin<Box<Sleep>>,
    /// Held until the stream ends.
    _slot: Slot,
}

/// The expiry of a stream without a token: about a year, within tokio's
/// timer range.
const NEVER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// What woke a stream.
enum Wake {
    Shutdown,
    Delivery(Option<(usize, Delivery, Cursor)>),
    KeepAlive,
}

/// The token's subject, which stream limits count by.
fn subject(claims: &Option<Claims>) -> Option<&str> {
    claims.as_ref()?.0.get("sub")?.as_str()
}

/// How a stream starts and ends.
struct Opening {
    /// Events named after their feed, with composite ids.
    multi: bool,
    /// Send the client its starting position.
    announce: bool,
    /// The token's remaining life: the stream ends then, and the client
    /// reconnects with a fresh token and resumes by Last-Event-ID.
    expires: Option<std::time::Duration>,
    /// The stream's place under the limits.
    slot: Slot,
}

/// A 200 event stream.
fn stream(ctx: &ApiContext, wanted: Vec<Wanted>, opening: Opening) -> Response {
    let Opening {
        multi,
        announce,
        expires,
        slot,
    } = opening;
    let subscribers: Vec<Subscriber> = wanted.iter().map(|w| w.hub.subscribe(w.after)).collect();
    let positions: Vec<Cursor> = subscribers.iter().map(Subscriber::position).collect();
    let mut opening = BytesMut::new();
    opening.extend_from_slice(&sse::retry(ctx.settings.retry));
    if announce {
        let id = if multi {
            composite(wanted.iter().map(|w| w.hub.name()), &positions)
        } else {
            positions[0].to_string()
        };
        opening.extend_from_slice(&sse::position(&id));
    }
    let mut feeds: Vec<Deliveries> = subscribers
        .into_iter()
        .enumerate()
        .map(|(i, sub)| {
            stream::unfold(sub, move |mut sub| async move {
                let delivery = sub.next().await?;
                let position = sub.position();
                Some(((i, delivery, position), sub))
            })
            .boxed()
        })
        .collect();
    // A single feed needs no merging: spare it the merge's bookkeeping.
    let deliveries = match feeds.len() {
        1 => feeds.remove(0),
        _ => stream::select_all(feeds).boxed(),
    };
    let now = Instant::now();
    let state = EventStream {
        opening: Some(opening.freeze()),
        feeds: wanted.into_iter().map(|w| (w.hub, w.filter)).collect(),
        positions,
        deliveries,
        multi,
        ctx: ctx.clone(),
        shutdown: Box::pin(ctx.shutdown.clone().cancelled_owned()),
        keep_alive: Box::pin(tokio::time::sleep_until(now + ctx.settings.keep_alive)),
        last_write: now,
        expires: Box::pin(tokio::time::sleep_until(now + expires.unwrap_or(NEVER))),
        _slot: slot,
    };
    let body = stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn composite<'a>(names: impl Iterator<Item = &'a str>, positions: &[Cursor]) -> String {
    cursor::format_composite(names.zip(positions.iter().copied()))
}

impl EventStream {
    /// The next bytes to write, or `None` to end the stream (shutdown).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(opening) = self.opening.take() {
            self.last_write = Instant::now();
            return Some(opening);
        }
        loop {
            // Deliveries first: checking the shutdown token takes a lock,
            // and a busy stream reaches the shutdown branch within a batch.
            let wake = tokio::select! {
                biased;
                item = self.deliveries.next() => Wake::Delivery(item),
                _ = &mut self.keep_alive => Wake::KeepAlive,
                _ = &mut self.expires => Wake::Shutdown,
                _ = &mut self.shutdown => Wake::Shutdown,
            };
            match wake {
                Wake::Shutdown | Wake::Delivery(None) => return None,
                Wake::Delivery(Some((feed, delivery, position))) => {
                    let chunk = self.frame(feed, &delivery);
                    self.positions[feed] = position;
                    if chunk.is_some() {
                        self.last_write = Instant::now();
                        return chunk;
                    }
                }
                // Counted from the last write, so that a client whose filter
                // drops every row of a busy feed still gets its keep-alives.
                Wake::KeepAlive => {
                    let interval = self.ctx.settings.keep_alive;
                    let now = Instant::now();
                    let due = self.last_write + interval;
                    if now < due {
                        self.keep_alive.as_mut().reset(due);
                        continue;
                    }
                    self.keep_alive.as_mut().reset(now + interval);
                    self.last_write = now;
                    return Some(Bytes::from_static(sse::KEEP_ALIVE));
                }
            }
        }
    }

    /// The bytes of a delivery for this client, or `None` when its filter
    /// lets nothing through.
    fn frame(&mut self, feed: usize, delivery: &Delivery) -> Option<Bytes> {
        let filter = &self.feeds[feed].1;
        if !self.multi && filter.is_empty() {
            if let Delivery::Batch(batch) = delivery {
                return Some(batch.frames.clone());
            }
        }
        let mut buf = BytesMut::new();
        for event in delivery.events() {
            if !filter.matches(&event.filters) {
                continue;
            }
            if self.multi {
                let name = Some(self.feeds[feed].0.name());
                if event.late {
                    sse::put_event(&mut buf, None, name, &event.data);
                    continue;
                }
                self.positions[feed] = Cursor::At(event.id);
                let id = composite(self.feeds.iter().map(|(h, _)| h.name()), &self.positions);
                sse::put_event(&mut buf, Some(&id), name, &event.data);
            } else {
                buf.extend_from_slice(&event.frame);
            }
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_wins_over_after() {
        let params = vec![("after".to_owned(), "3".to_owned())];
        let mut headers = HeaderMap::new();
        assert_eq!(
            resume_text(&params, &headers),
            Some(("after", "3".to_owned()))
        );
        headers.insert("last-event-id", HeaderValue::from_static("9"));
        assert_eq!(
            resume_text(&params, &headers),
            Some(("Last-Event-ID", "9".to_owned()))
        );
        headers.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(
            resume_text(&params, &headers),
            Some(("after", "3".to_owned()))
        );
        assert_eq!(resume_text(&[], &HeaderMap::new()), None);
    }
}
