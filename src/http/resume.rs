//! Where a client resumes: `Last-Event-ID` or `?after=`, read and checked
//! against the ids each feed's cursor column can hold before any stream
//! starts, so that a cursor no row can have is a 400, not a silent clamp.

use super::error::Error;
use crate::cursor::{self, Cursor};
use crate::fanout::stream::Wanted;
use crate::feed::Feed;
use axum::http::HeaderMap;

/// The resume cursor as text: `Last-Event-ID` (what EventSource sends on
/// reconnect) wins over `?after=` (what a first connection may give).
pub fn resume_text(
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Option<(&'static str, String)> {
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

/// `feed`'s cursor from `text`, which came from `source_name`.
pub fn one(feed: &Feed, source_name: &'static str, text: &str) -> Result<Cursor, Error> {
    feed.style()
        .parse(text, None)
        .map_err(|problem| Error::BadCursor {
            source_name,
            problem,
        })
}

/// Sets each wanted feed's cursor from the composite `text`, which came
/// from `source_name`. `feeds` (how many the server serves) bounds the
/// pairs it may have. A feed the cursor does not name starts live, as does
/// a live-only feed whatever it says; a named feed that is not requested
/// any more is ignored.
pub fn many(
    wanted: &mut [Wanted],
    feeds: usize,
    source_name: &'static str,
    text: &str,
) -> Result<(), Error> {
    let bad = |problem| Error::BadCursor {
        source_name,
        problem,
    };
    for (feed, position) in cursor::parse_composite(text, feeds).map_err(bad)? {
        let named = wanted.iter_mut().find(|w| w.feed.name() == feed);
        if let Some(w) = named.filter(|w| w.feed.style().resumable()) {
            let position = w.feed.style().parse(&position, Some(&feed)).map_err(bad)?;
            w.after = Some(position);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

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
