//! Request and response heads on the listener's own path, as bytes.
//!
//! [`parse`] reads a connection's first request head: an event stream
//! request is answered on the socket, anything else goes to hyper, and a
//! head no server should take is refused here with the same JSON errors as
//! the router's. [`response`] writes the head of an answer the listener
//! sends itself. Pure functions, no I/O: what a layer of the router put in
//! a response must never reach the wire as a second framing header.

use super::error::Error;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, Method, Request, StatusCode, Version};
use std::time::SystemTime;

/// The longest request head a client may send (what nginx allows by
/// default); hyper is held to the same for later requests.
pub const MAX_HEAD: usize = 32 * 1024;

/// The longest request target, as nginx's default request line allows.
pub const MAX_URI: usize = 8 * 1024;

/// Most header lines a request may have, as hyper allows.
pub const MAX_HEADERS: usize = 100;

/// What the bytes read so far on a new connection are.
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet: read on.
    Partial,
    /// An HTTP/1.1 `GET` of an event stream without a body: answered by
    /// the listener.
    Events(Request<Body>),
    /// A whole head of any other request: hyper serves it.
    Other,
    /// A head that is refused before routing.
    Refused(Error),
}

/// Reads the first request head in `buf`.
pub fn parse(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Head::Refused(Error::HeadTooLarge {
                max_bytes: MAX_HEAD,
                max_headers: MAX_HEADERS,
            })
        }
        Err(err) => return Head::Refused(Error::BadRequest(err.to_string())),
    }
    let Some(path) = parsed.path else {
        return Head::Refused(Error::BadRequest("no request target".into()));
    };
    if path.len() > MAX_URI {
        return Head::Refused(Error::UriTooLong { max: MAX_URI });
    }
    match event_request(&parsed, path) {
        Some(request) => Head::Events(request),
        None => Head::Other,
    }
}

/// The request as the router takes it, when it is an HTTP/1.1 `GET` of an
/// event stream without a body.
fn event_request(parsed: &httparse::Request<'_, '_>, path: &str) -> Option<Request<Body>> {
    let route = path.split('?').next()?;
    let wanted = parsed.method == Some("GET")
        && parsed.version == Some(1)
        && (route == "/events" || route.starts_with("/events/"));
    let has_body = parsed.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
    });
    if !wanted || has_body {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    for header in parsed.headers.iter() {
        request = request.header(header.name, header.value);
    }
    // A head hyper would refuse goes to hyper, which says why.
    request.body(Body::empty()).ok()
}

/// How the body after a head the listener writes is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// An event stream: chunks until the last one.
    Chunked,
    /// A whole answer of this many bytes, after which the connection closes.
    Close(usize),
}

/// Headers that describe one hop or the body's framing: the listener
/// writes its own, so a layer's (axum sets `content-length` from the body
/// it sees) never reaches the wire beside them.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The status line and headers of an answer written by the listener, with
/// exactly one framing header.
pub fn response(status: StatusCode, headers: &HeaderMap, framing: Framing) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    )
    .into_bytes();
    let mut put = |name: &str, value: &[u8]| {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in headers {
        let framing_header = HOP_BY_HOP.contains(name)
            // A stream's chunks are written as they are; nothing encodes them.
            || (framing == Framing::Chunked && name == header::CONTENT_ENCODING);
        if !framing_header {
            put(name.as_str(), value.as_bytes());
        }
    }
    if !headers.contains_key(header::DATE) {
        put(
            "date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    match framing {
        Framing::Chunked => put("transfer-encoding", b"chunked"),
        Framing::Close(length) => {
            put("content-length", length.to_string().as_bytes());
            put("connection", b"close");
        }
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn head_text(status: StatusCode, headers: &HeaderMap, framing: Framing) -> String {
        String::from_utf8(response(status, headers, framing)).unwrap()
    }

    /// The header lines of a head, without the status line and the date.
    fn lines(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text
            .split("\r\n")
            .skip(1)
            .filter(|l| !l.is_empty() && !l.starts_with("date: "))
            .collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn a_stream_head_has_one_framing_header_whatever_the_layers_added() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        // What axum and other layers may leave on a response.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("gzip, chunked"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(header::TRAILER, HeaderValue::from_static("x"));
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        headers.append(
            header::VARY,
            HeaderValue::from_static("access-control-request-method"),
        );
        let text = head_text(StatusCode::OK, &headers, Framing::Chunked);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert_eq!(
            lines(&text),
            [
                "cache-control: no-cache",
                "content-type: text/event-stream",
                "transfer-encoding: chunked",
                "vary: access-control-request-method",
                "vary: origin",
            ]
        );
        assert_eq!(text.matches("\r\ndate: ").count(), 1, "{text}");
    }

    #[test]
    fn a_whole_answer_has_its_own_length_once_and_closes() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("136"));
        headers.insert(
            header::DATE,
            HeaderValue::from_static("Tue, 01 Dec 2026 10:00:00 GMT"),
        );
        let text = head_text(StatusCode::UNAUTHORIZED, &headers, Framing::Close(136));
        assert_eq!(
            text,
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
             date: Tue, 01 Dec 2026 10:00:00 GMT\r\ncontent-length: 136\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn an_event_stream_request_is_answered_here() {
        let Head::Events(request) = parse(
            b"GET /events/messages?room_id=5 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n",
        ) else {
            panic!("not an event request")
        };
        assert_eq!(request.uri(), "/events/messages?room_id=5");
        assert_eq!(request.headers()["last-event-id"], "7");
        assert!(matches!(
            parse(b"GET /events?feed=a HTTP/1.1\r\nHost: x\r\n\r\n"),
            Head::Events(_)
        ));
    }

    #[test]
    fn other_requests_go_to_hyper() {
        for head in [
            &b"GET /feeds HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /events/messages HTTP/1.0\r\n\r\n",
            b"POST /events/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            b"GET /events/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /eventsx HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(head), Head::Other),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_partial_head_reads_on_until_it_is_too_large() {
        assert!(matches!(parse(b""), Head::Partial));
        assert!(matches!(
            parse(b"GET /events/m HTTP/1.1\r\nHost"),
            Head::Partial
        ));
        let mut big = b"GET /events/m HTTP/1.1\r\nCookie: ".to_vec();
        big.resize(MAX_HEAD, b'a');
        let Head::Refused(err) = parse(&big) else {
            panic!("a head of MAX_HEAD bytes is taken")
        };
        assert_eq!(err.code(), "head_too_large");
    }

    #[test]
    fn heads_no_server_should_take_are_refused() {
        let mut many = b"GET /feeds HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let long_uri = format!("GET /events/m?x={} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI));
        let cases: [(&[u8], &str); 4] = [
            (&many, "head_too_large"),
            (long_uri.as_bytes(), "uri_too_long"),
            (
                b"GET /events/m HTTP/1.1\r\nBad Header: x\r\n\r\n",
                "bad_request",
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                "bad_request",
            ),
        ];
        for (head, code) in cases {
            match parse(head) {
                Head::Refused(err) => assert_eq!(err.code(), code),
                other => panic!("{other:?} for {}", String::from_utf8_lossy(head)),
            }
        }
    }
}
