//! Access control per request: the token's claims, the feeds they may
//! read, and each feed's rules turned into a filter the client cannot
//! widen. Off when auth is off.

use super::error::Error;
use super::filter::{filter_index, Filter};
use super::ApiContext;
use super::Served;
use crate::auth::{Claims, Refusal};
use crate::echo::Echo;
use crate::feed::Feed;
use axum::http::{header, HeaderMap};

impl ApiContext {
    /// The caller's verified claims, `None` when auth is off.
    pub(super) fn claims(
        &self,
        headers: &HeaderMap,
        params: &[(String, String)],
    ) -> Result<Option<Claims>, Error> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let token = token(headers, params, &auth.cookie);
        let claims = auth.verify(token.as_deref())?;
        // Streams are counted by `sub`: a token without one would escape
        // the per-subject limit.
        if self.limits.per_subject > 0 && !claims.0.contains_key("sub") {
            return Err(Refusal::NoSubject.into());
        }
        Ok(Some(claims))
    }

    /// The feeds `claims` may read; every feed when auth is off (`None`).
    pub(super) fn readable<'a>(
        &'a self,
        claims: Option<&'a Claims>,
    ) -> impl Iterator<Item = &'a Served> + 'a {
        self.feeds.iter().filter(move |s| may_read(&s.feed, claims))
    }
}

/// Whether `claims` may read `feed` at all (always, with auth off: `None`).
pub fn may_read(feed: &Feed, claims: Option<&Claims>) -> bool {
    claims.is_none_or(|c| feed.config.rules.check(c).is_ok())
}

/// The token from `Authorization: Bearer`, `?access_token=` or the cookie,
/// in that order.
fn token(headers: &HeaderMap, params: &[(String, String)], cookie: &str) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let query = || {
        params
            .iter()
            .find(|(k, _)| k == super::filter::reserved::TOKEN)
            .map(|(_, v)| v.clone())
    };
    let cookie = || {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == cookie)
            .map(|(_, value)| value.to_owned())
    };
    bearer
        .or_else(query)
        .or_else(cookie)
        .filter(|t| !t.is_empty())
}

/// Checks that `claims` may read `feed` and bounds `filter` by its rules: a
/// client may ask for a subset of what its token allows, never more, and
/// asking for nothing means everything it is allowed.
pub fn admit(feed: &Feed, claims: Option<&Claims>, filter: &mut Filter) -> Result<(), Error> {
    let Some(claims) = claims else { return Ok(()) };
    let rules = &feed.config.rules;
    rules.check(claims)?;
    for column in rules.filters.keys() {
        let Some(allowed) = rules.allowed(column, claims) else {
            continue;
        };
        let mut allowed = allowed?;
        allowed.sort_unstable();
        // Checked at start-up: every rule column is a filter column.
        let Some(index) = filter_index(feed, column) else {
            continue;
        };
        match filter.values(index) {
            Some(asked) => {
                if let Some(outside) = asked
                    .iter()
                    .find(|v| !crate::feed::filter::contains(&allowed, v))
                {
                    return Err(Refusal::Forbidden(format!(
                        "{} is outside what the token allows",
                        Echo(&format!("{column}={outside}"))
                    ))
                    .into());
                }
            }
            None => filter.set(index, allowed),
        }
    }
    Ok(())
}
