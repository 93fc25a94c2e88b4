//! `GET /events/{feed}` and `GET /events?feed=a&feed=b`: Server-Sent Events.
//!
//! A request's token is verified first (401), then the request is parsed
//! into feeds, filters and cursors (bad input → 400/404 before any stream
//! starts). The stream then writes frames that the feed built once; per
//! client there is only a filter check and a write.

use super::access::admit;
use super::error::Error;
use super::filter::{self, filter_index, unknown_filter, Filter};
use super::presence;
use super::resume::{self, resume_text};
use super::ApiContext;
use crate::auth::Claims;
use crate::fanout::stream::{EventStream, Opening, Pace, Wanted};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use axum::Extension;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub async fn one_feed(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(ctx): State<ApiContext>,
    Path(feed): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    own_socket: Option<Extension<OwnSocket>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    // The token first: a client that may not read a feed learns nothing
    // of it, not even from a 404 or a 400.
    let claims = ctx.claims(&headers, &params)?;
    let served = ctx.feed(&feed, claims.as_ref())?;
    let mut filter = filter::for_feed(&served.feed, &params, filter::reserved::STREAM)?;
    admit(&served.feed, claims.as_ref(), &mut filter)?;
    // A live feed has no ids: whatever cursor a client sends, it starts live.
    let resumable = served.feed.style().resumable();
    let after = match resume_text(&params, &headers) {
        Some((source_name, text)) if resumable => {
            Some(resume::one(&served.feed, source_name, &text)?)
        }
        _ => None,
    };
    let announce = after.is_none() && resumable;
    let slot = ctx.limits.take(peer.ip(), subject(&claims))?;
    let presence = presence::attend(&ctx, &served, claims.as_ref(), &filter, &params)?;
    let expires = claims.as_ref().and_then(Claims::expires_in);
    let wanted = Wanted {
        feed: served.feed,
        fanout: served.fanout,
        filter,
        after,
    };
    let mut opening = opening(&ctx, false, announce, expires, slot);
    opening.presence = presence;
    let state = EventStream::new(vec![wanted], opening);
    Ok(respond(state, own_socket.is_some()))
}

pub async fn many_feeds(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(ctx): State<ApiContext>,
    Query(params): Query<Vec<(String, String)>>,
    own_socket: Option<Extension<OwnSocket>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let claims = ctx.claims(&headers, &params)?;
    if let Some((name, _)) = params
        .iter()
        .find(|(k, _)| filter::reserved::PRESENCE.contains(&k.as_str()))
    {
        return Err(Error::BadParameter {
            name: "presence",
            problem: format!("`{name}` is for one feed's stream: /events/{{feed}}?presence=1"),
        });
    }
    let mut wanted: Vec<Wanted> = Vec::new();
    for (_, name) in params.iter().filter(|(k, _)| k == "feed") {
        if wanted.iter().any(|w| w.feed.name() == name) {
            return Err(Error::RepeatedFeed(name.clone()));
        }
        let served = ctx.feed(name, claims.as_ref())?;
        wanted.push(Wanted {
            feed: served.feed,
            fanout: served.fanout,
            filter: Filter::default(),
            after: None,
        });
    }
    if wanted.is_empty() {
        return Err(Error::NoFeedRequested {
            available: ctx.feed_names(claims.as_ref()),
        });
    }
    for (name, value) in &params {
        if filter::reserved::STREAMS.contains(&name.as_str()) {
            continue;
        }
        // `feed.column` filters one feed; a bare `column` every feed that has it.
        let (only, column) = match name.split_once('.') {
            Some((feed, column)) if wanted.iter().any(|w| w.feed.name() == feed) => {
                (Some(feed), column)
            }
            _ => (None, name.as_str()),
        };
        let mut used = false;
        for w in wanted
            .iter_mut()
            .filter(|w| only.is_none_or(|f| f == w.feed.name()))
        {
            if let Some(index) = filter_index(&w.feed, column) {
                w.filter.add(index, value.clone());
                used = true;
            }
        }
        if !used {
            let feeds: Vec<_> = wanted.iter().map(|w| w.feed.clone()).collect();
            return Err(unknown_filter(name, &feeds));
        }
    }
    for w in &mut wanted {
        admit(&w.feed, claims.as_ref(), &mut w.filter)?;
    }
    if let Some((source_name, text)) = resume_text(&params, &headers) {
        resume::many(&mut wanted, ctx.feeds.len(), source_name, &text)?;
    }
    let slot = ctx.limits.take(peer.ip(), subject(&claims))?;
    let expires = claims.as_ref().and_then(Claims::expires_in);
    let state = EventStream::new(wanted, opening(&ctx, true, true, expires, slot));
    Ok(respond(state, own_socket.is_some()))
}

/// How a stream starts and ends, and how it writes.
fn opening(
    ctx: &ApiContext,
    multi: bool,
    announce: bool,
    expires: Option<std::time::Duration>,
    slot: super::limits::Slot,
) -> Opening {
    Opening {
        multi,
        announce,
        expires,
        held: Box::new(slot),
        pace: Pace {
            keep_alive: ctx.settings.keep_alive,
            retry: ctx.settings.retry,
            send_timeout: ctx.settings.send_timeout,
        },
        stopping: ctx.shutdown.clone(),
        presence: None,
    }
}

/// The token's subject, which stream limits count by.
fn subject(claims: &Option<Claims>) -> Option<&str> {
    claims.as_ref()?.0.get("sub")?.as_str()
}

/// A marker a request carries when the server will write the stream to
/// the client's socket itself.
#[derive(Debug, Clone, Copy)]
pub struct OwnSocket;

/// A stream waiting for the server to write its response head and hand it
/// the socket.
#[derive(Clone)]
pub struct PendingStream(Arc<Mutex<Option<EventStream>>>);

impl PendingStream {
    /// The stream, once.
    pub fn take(&self) -> Option<EventStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A 200 event stream: a body for hyper, or, when the server owns the
/// socket, a [`PendingStream`] for it to write.
fn respond(state: EventStream, own_socket: bool) -> Response {
    let mut response = if own_socket {
        let mut response = Response::new(Body::empty());
        response
            .extensions_mut()
            .insert(PendingStream(Arc::new(Mutex::new(Some(state)))));
        response
    } else {
        Response::new(state.into_body())
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
