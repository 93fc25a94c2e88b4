//! Client filters: query parameters naming a feed's filter columns, matched
//! in memory against the values the poller read beside each row. Values
//! are never part of any SQL.

use super::error::Error;
use crate::feed::Feed;
use std::sync::Arc;

pub use crate::feed::Filter;

/// The query parameters of each endpoint that are not filters: every other
/// parameter names a filter column, or is an error.
pub mod reserved {
    /// The token, as EventSource cannot send a header.
    pub const TOKEN: &str = "access_token";
    /// A stream's presence: watch it, the member key without auth, and
    /// where the watcher's list is current.
    pub const PRESENCE: &[&str] = &["presence", "presence_key", "presence_after"];
    /// `GET /events/{feed}`.
    pub const STREAM: &[&str] = &["after", TOKEN, PRESENCE[0], PRESENCE[1], PRESENCE[2]];
    /// `GET /events?feed=…`.
    pub const STREAMS: &[&str] = &["after", "feed", TOKEN];
    /// `GET /feeds/{feed}/rows`.
    pub const ROWS: &[&str] = &["after", "limit", "wait", TOKEN];
    /// `GET /presence/{feed}`.
    pub const MEMBERS: &[&str] = &[TOKEN];
}

/// The filter that `params` give for `feed`; any parameter that is
/// neither in `reserved` nor a filter column is an error.
pub fn for_feed(
    feed: &Arc<Feed>,
    params: &[(String, String)],
    reserved: &[&str],
) -> Result<Filter, Error> {
    let mut filter = Filter::default();
    for (name, value) in params {
        if reserved.contains(&name.as_str()) {
            continue;
        }
        let column = filter_index(feed, name)
            .ok_or_else(|| unknown_filter(name, std::slice::from_ref(feed)))?;
        filter.add(column, value.clone());
    }
    Ok(filter)
}

/// The position of `column` among the feed's filter columns.
pub fn filter_index(feed: &Feed, column: &str) -> Option<usize> {
    feed.query.filter_columns.iter().position(|c| c == column)
}

/// The error for a parameter that is not a filter of `feeds`.
pub fn unknown_filter(param: &str, feeds: &[Arc<Feed>]) -> Error {
    let names = feeds
        .iter()
        .map(|f| format!("feed `{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut valid: Vec<String> = feeds
        .iter()
        .flat_map(|f| f.query.filter_columns.iter().cloned())
        .collect();
    valid.sort();
    valid.dedup();
    if valid.is_empty() {
        valid.push("(none)".to_owned());
    }
    Error::UnknownFilter {
        param: param.to_owned(),
        feeds: names,
        valid: valid.join(", "),
    }
}
