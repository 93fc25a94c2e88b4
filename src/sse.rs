//! Server-Sent Events framing: turns ids, event names and JSON text into the
//! bytes of the `text/event-stream` wire format.
//!
//! Pure functions, no I/O. A frame is built once per row and shared by every
//! subscriber, so nothing here may depend on who receives it.

use bytes::{BufMut, Bytes, BytesMut};
use std::time::Duration;

/// The comment sent when a stream has been quiet for the keep-alive interval.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The first frame of every stream: how long the browser waits before it
/// reconnects.
pub fn retry(after: Duration) -> Bytes {
    Bytes::from(format!("retry: {}\n\n", after.as_millis()))
}

/// An id-only frame: it moves the client's last event id without dispatching
/// an event, so a client that reconnects before its first row still resumes
/// from where it joined.
pub fn position(id: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(id.len() + 6);
    put_field(&mut buf, "id", id);
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Appends one event to `buf`. `data` must be a single line (JSON rendered
/// by a database always is once [`one_line`] has run over it). An event
/// without an id leaves the client's last event id as it was (late rows).
pub fn put_event(buf: &mut BytesMut, id: Option<&str>, event: Option<&str>, data: &[u8]) {
    debug_assert!(!data.contains(&b'\n') && !data.contains(&b'\r'));
    buf.reserve(id.map_or(0, str::len) + data.len() + event.map_or(0, str::len) + 24);
    if let Some(event) = event {
        put_field(buf, "event", event);
    }
    if let Some(id) = id {
        put_field(buf, "id", id);
    }
    buf.put_slice(b"data: ");
    buf.put_slice(data);
    buf.put_slice(b"\n\n");
}

fn put_field(buf: &mut BytesMut, name: &str, value: &str) {
    buf.put_slice(name.as_bytes());
    buf.put_slice(b": ");
    buf.put_slice(value.as_bytes());
    buf.put_u8(b'\n');
}

/// Makes JSON text fit one `data:` line. Inside JSON strings a newline is
/// always escaped, so a raw CR or LF can only be insignificant whitespace
/// (e.g. a Postgres `json` value stored as typed) and becomes a space.
pub fn one_line(mut json: String) -> String {
    if json.bytes().any(|b| b == b'\n' || b == b'\r') {
        json = json.replace(['\n', '\r'], " ");
    }
    json
}

/// Whether `text` can be an event name or id: neither may hold a line break
/// or NUL.
pub fn is_field_value(text: &str) -> bool {
    !text.contains(['\n', '\r', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, name: Option<&str>, data: &str) -> String {
        let mut buf = BytesMut::new();
        put_event(&mut buf, id, name, data.as_bytes());
        String::from_utf8(buf.to_vec()).unwrap()
    }

    #[test]
    fn plain_event_has_no_event_line() {
        assert_eq!(
            event(Some("7"), None, r#"{"a":1}"#),
            "id: 7\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn named_event_comes_first() {
        assert_eq!(
            event(Some("m:7"), Some("messages"), "{}"),
            "event: messages\nid: m:7\ndata: {}\n\n"
        );
    }

    #[test]
    fn late_event_has_no_id() {
        assert_eq!(event(None, None, "{}"), "data: {}\n\n");
    }

    #[test]
    fn retry_and_position_frames() {
        assert_eq!(&retry(Duration::from_secs(3))[..], b"retry: 3000\n\n");
        assert_eq!(&position("12")[..], b"id: 12\n\n");
    }

    #[test]
    fn json_whitespace_newlines_become_spaces() {
        assert_eq!(one_line("{\"a\":\r\n 1}".into()), "{\"a\":   1}");
        let escaped = r#"{"body":"line\nbreak"}"#.to_owned();
        assert_eq!(one_line(escaped.clone()), escaped);
    }

    #[test]
    fn field_values_exclude_line_breaks() {
        assert!(is_field_value("messages"));
        assert!(!is_field_value("a\nb"));
        assert!(!is_field_value("a\rb"));
        assert!(!is_field_value("a\0b"));
    }
}
