//! Presence as clients read it: the `event: presence` frames of joins,
//! leaves and member lists, the entries of `GET /presence/{feed}`, and the
//! cursor both carry.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// The SSE event name of presence frames.
pub const EVENT: &str = "presence";

/// A point in a feed's presence: a client that has every change up to it
/// resumes its scope from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub u64);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Cursor {
    type Err = &'static str;

    fn from_str(text: &str) -> Result<Cursor, Self::Err> {
        text.parse().map(Cursor).map_err(|_| {
            "is not a presence cursor: use the `cursor` of /presence/{feed} or of a presence event"
        })
    }
}

/// The frame of a join or a leave, numbered `number`.
pub fn change(op: &str, key: &str, meta: &Value, number: u64) -> Bytes {
    frame(&json!({
        "op": op,
        "key": key,
        "meta": meta,
        "cursor": Cursor(number).to_string(),
    }))
}

/// The frame of a scope's whole member list at `latest`, which replaces
/// whatever list the client had.
pub fn sync(members: Vec<Value>, latest: u64) -> Bytes {
    frame(&json!({
        "op": "sync",
        "members": members,
        "cursor": Cursor(latest).to_string(),
    }))
}

/// `GET /presence/{feed}`'s answer.
pub fn listing(members: Vec<Value>, latest: u64) -> Value {
    json!({ "members": members, "cursor": Cursor(latest).to_string() })
}

/// One member's entry.
pub fn member(key: &str, connections: usize, since: SystemTime, meta: &Value) -> Value {
    json!({
        "key": key,
        "connections": connections,
        "since": humantime::format_rfc3339_millis(since).to_string(),
        "meta": meta,
    })
}

fn frame(value: &Value) -> Bytes {
    let mut buf = BytesMut::new();
    // serde_json escapes every newline inside strings: one line.
    crate::sse::put_event(&mut buf, None, Some(EVENT), value.to_string().as_bytes());
    buf.freeze()
}
