//! HTTP errors: each variant is a status code and a JSON body that names the
//! problem (`{"error":"unknown_filter","detail":"…"}`). Internal detail is
//! logged, never sent.

use crate::echo::Echo;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Also a feed the caller's token may not read: `available` lists only
    /// the feeds it may.
    #[error("no feed named {}; feeds: {available}", Echo(.name))]
    UnknownFeed { name: String, available: String },
    #[error(
        "no feed requested: add ?feed=<name> (repeat it for several feeds); feeds: {available}"
    )]
    NoFeedRequested { available: String },
    #[error("feed {} is requested more than once", Echo(.0))]
    RepeatedFeed(String),
    #[error("{} is not a filter of {feeds}; filters: {valid}", Echo(.param))]
    UnknownFilter {
        param: String,
        feeds: String,
        valid: String,
    },
    #[error("{source_name}: {problem}")]
    BadCursor {
        source_name: &'static str,
        problem: crate::cursor::ParseError,
    },
    #[error("`{name}`: {problem}")]
    BadParameter { name: &'static str, problem: String },
    #[error(
        "feed `{0}` is live only (pub/sub): it keeps no rows to poll; follow it with /events/{0}"
    )]
    LiveOnly(String),
    #[error("feed `{0}` does not track presence; set `presence = true` on it")]
    PresenceOff(String),
    #[error("{0}")]
    Unauthorized(crate::auth::Refusal),
    #[error("{0}")]
    Forbidden(crate::auth::Refusal),
    #[error("{0}")]
    TooManyStreams(String),
    #[error("no route for this path; try /events/{{feed}}, /events?feed=…, /feeds, /feeds/{{feed}}/rows, /presence/{{feed}}, /healthz or /metrics")]
    NotFound,
    #[error("the request head is larger than {max_bytes} bytes or has more than {max_headers} header lines")]
    HeadTooLarge {
        max_bytes: usize,
        max_headers: usize,
    },
    #[error("the request target is longer than {max} bytes")]
    UriTooLong { max: usize },
    #[error("the request is not valid HTTP/1.1: {0}")]
    BadRequest(String),
}

impl Error {
    /// The machine-readable code in the body's `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnknownFeed { .. } => "unknown_feed",
            Error::NoFeedRequested { .. } => "no_feed",
            Error::RepeatedFeed(_) => "repeated_feed",
            Error::UnknownFilter { .. } => "unknown_filter",
            Error::BadCursor { .. } => "bad_cursor",
            Error::BadParameter { .. } => "bad_parameter",
            Error::LiveOnly(_) => "live_only",
            Error::PresenceOff(_) => "presence_off",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::TooManyStreams(_) => "too_many_streams",
            Error::NotFound => "not_found",
            Error::HeadTooLarge { .. } => "head_too_large",
            Error::UriTooLong { .. } => "uri_too_long",
            Error::BadRequest(_) => "bad_request",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Error::UnknownFeed { .. } | Error::NotFound => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<crate::auth::Refusal> for Error {
    fn from(refusal: crate::auth::Refusal) -> Error {
        if refusal.is_forbidden() {
            Error::Forbidden(refusal)
        } else {
            Error::Unauthorized(refusal)
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code(), "detail": self.to_string() });
        (self.status(), Json(body)).into_response()
    }
}
