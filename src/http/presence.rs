//! Presence over HTTP: `GET /presence/{feed}` (a scope's members and the
//! cursor they are current at), and what a stream's `presence`,
//! `presence_key` and `presence_after` parameters ask of it.
//!
//! A scope is the feed and the stream's filter once auth rules have bound
//! it, so a client sees presence only of what it may read. With auth on, a
//! member's key is its token's `sub` and its meta the configured claims; a
//! client cannot choose either.

use super::access::admit;
use super::error::Error;
use super::filter::{self, reserved, Filter};
use super::{ApiContext, Served};
use crate::auth::Claims;
use crate::fanout::stream::Attending;
use crate::presence::{Cursor, Scope};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use serde_json::Value;

/// The longest `presence_key`, in bytes.
const MAX_KEY: usize = 200;

/// `GET /presence/{feed}?…`: the scope's members, by key, and the cursor a
/// stream can follow their changes from (`presence_after`).
pub async fn members(
    State(ctx): State<ApiContext>,
    Path(feed): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Error> {
    let claims = ctx.claims(&headers, &params)?;
    let served = ctx.feed(&feed, claims.as_ref())?;
    let Some(presence) = &served.presence else {
        return Err(Error::PresenceOff(feed));
    };
    let mut filter = filter::for_feed(&served.feed, &params, reserved::MEMBERS)?;
    admit(&served.feed, claims.as_ref(), &mut filter)?;
    Ok(Json(presence.members(&Scope::of(&filter))))
}

/// What a stream of `served` with `filter` (already bound by the token's
/// rules) takes part in: a member's seat when it has a key, the scope's
/// changes when it asked with `presence=1`. `None` on a feed without
/// presence, where the parameters are errors.
pub(super) fn attend(
    ctx: &ApiContext,
    served: &Served,
    claims: Option<&Claims>,
    filter: &Filter,
    params: &[(String, String)],
) -> Result<Option<Attending>, Error> {
    let given = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let [ask, key_param, after] = reserved::PRESENCE else {
        unreachable!("three presence parameters")
    };
    let Some(presence) = &served.presence else {
        if reserved::PRESENCE.iter().any(|p| given(p).is_some()) {
            return Err(Error::PresenceOff(served.feed.name().to_owned()));
        }
        return Ok(None);
    };
    let watching = match given(ask).map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(_) => return Err(bad(ask, "must be 1 (watch the scope's members) or 0")),
    };
    let after = match given(after) {
        None => None,
        Some(_) if !watching => return Err(bad(after, "needs `presence=1`")),
        Some(text) => Some(text.parse::<Cursor>().map_err(|p| bad(after, p))?),
    };
    let key = match (claims, given(key_param)) {
        (Some(_), Some(_)) => {
            return Err(bad(
                key_param,
                "is not taken with auth on: a member's key is its token's `sub`",
            ))
        }
        (Some(claims), None) => claims.0.get("sub").map(|sub| match sub {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }),
        (None, Some(key)) if key.is_empty() || key.len() > MAX_KEY => {
            return Err(bad(key_param, "must be 1 to 200 bytes"))
        }
        (None, key) => key.cloned(),
    };
    let scope = Scope::of(filter);
    let meta = meta(served, claims);
    let seat = key.map(|key| presence.connect(&scope, &key, meta));
    let watch = watching.then(|| presence.watch(&scope, after));
    let silence = (served.feed.config.tuning)
        .presence_silence(ctx.settings.keep_alive)
        .unwrap_or(crate::config::MIN_SILENCE);
    Ok(Some(Attending {
        seat,
        watch,
        silence,
    }))
}

/// A member's meta: the configured claims its token holds.
fn meta(served: &Served, claims: Option<&Claims>) -> Value {
    let mut meta = serde_json::Map::new();
    let names = served.feed.config.presence.iter().flat_map(|p| &p.meta);
    for name in names {
        if let Some(value) = claims.and_then(|c| c.0.get(name)) {
            meta.insert(name.clone(), value.clone());
        }
    }
    Value::Object(meta)
}

fn bad(name: &'static str, problem: impl Into<String>) -> Error {
    Error::BadParameter {
        name,
        problem: problem.into(),
    }
}
