//! Auth helpers: tokens signed as the application would sign them, a
//! server whose feeds have access rules, and requests that carry a token.

use super::Rowcast;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

pub const SECRET: &str = "a shared secret the app also has";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Two feeds on one table: `messages`, bounded by the token's `room_ids`,
/// and `audit`, for admins only; `[auth]` is for the caller to fill.
pub fn rules(url: &str, t: &str) -> Rowcast {
    Rowcast::at(url)
        .feed("messages", t, |f| {
            f.filter_columns(["room_id"])
                .auth_filter("room_id", "room_ids")
        })
        .feed("audit", t, |f| f.auth_require("role", "admin"))
}

/// GET `url` with a bearer token and a cookie, when given: the status, and
/// the body when it is JSON.
pub async fn get(url: &str, bearer: Option<&str>, cookie: Option<&str>) -> (u16, Value) {
    let (status, content_type, text) = get_text(url, bearer, cookie).await;
    let body = if content_type == "application/json" {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    } else {
        Value::Null
    };
    (status, body)
}

/// GET `url` like [`get`]: the status, content type and text of the body
/// (not for streams, which never end).
pub async fn get_text(
    url: &str,
    bearer: Option<&str>,
    cookie: Option<&str>,
) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = bearer {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    if let Some(cookie) = cookie {
        request = request.header("Cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    if content_type == "text/event-stream" {
        return (status, content_type, String::new());
    }
    (status, content_type, response.text().await.unwrap())
}
