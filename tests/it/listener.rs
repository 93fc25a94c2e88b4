//! The listener on the wire, as strict clients and hostile ones see it:
//! one framing header on every answer whichever path writes it, the same
//! heads from the fast path and from hyper, JSON errors for heads no server
//! should take, and no connection that a client can hold without using it.

use crate::common::wire::{header, Wire};
use crate::common::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A fresh SQLite table, and a feed `messages` of it filtered by
/// `room_id`, for each test to add its settings to.
async fn messages() -> (TestDb, String, Rowcast) {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let rowcast = Rowcast::on(&db).feed("messages", &t, |f| f.filter_columns(["room_id"]));
    (db, t, rowcast)
}

/// The header lines of a response head, sorted, without the status line,
/// the date and the framing headers.
fn headers_apart_from_framing(head: &str) -> Vec<String> {
    let mut lines: Vec<String> = head
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default();
            !["date", "content-length", "transfer-encoding", "connection"].contains(&name)
        })
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// How many times a header appears in a head.
fn count(head: &str, name: &str) -> usize {
    head.split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
        .count()
}

/// The head of `path` answered on a fresh connection (the fast path for a
/// stream), and on a connection that asked for `/healthz` first (hyper).
async fn both_ways(base: &str, path: &str, headers: &str) -> (String, String) {
    let mut fast = Wire::open(base, path, headers).await;
    let fast = fast.head().await;
    let mut kept = Wire::open(base, "/healthz", "").await;
    let head = kept.head().await;
    kept.read_exactly(header(&head, "content-length").parse().unwrap())
        .await;
    kept.send(path, headers).await;
    (fast, kept.head().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_and_hyper_answer_with_the_same_head_apart_from_framing() {
    let (_db, _, rowcast) = messages().await;
    let server = rowcast
        .set("cors_origins", vec!["https://app.example"])
        .start()
        .await;
    let origin = "Origin: https://app.example\r\n";
    let cases = [
        ("/events/messages", "HTTP/1.1 200 OK\r\n"),
        ("/events?feed=messages", "HTTP/1.1 200 OK\r\n"),
        ("/events/nope", "HTTP/1.1 404 Not Found\r\n"),
        ("/events/messages?roomid=1", "HTTP/1.1 400 Bad Request\r\n"),
    ];
    for (path, status) in cases {
        let (fast, hyper) = both_ways(&server.url, path, origin).await;
        assert!(fast.starts_with(status), "{path}: {fast}");
        assert!(hyper.starts_with(status), "{path}: {hyper}");
        assert_eq!(
            headers_apart_from_framing(&fast),
            headers_apart_from_framing(&hyper),
            "{path}"
        );
        for head in [&fast, &hyper] {
            // Exactly one framing header, as undici and Node's http demand.
            assert_eq!(
                count(head, "content-length") + count(head, "transfer-encoding"),
                1,
                "{path}: {head}"
            );
            assert_eq!(count(head, "date"), 1, "{path}: {head}");
            assert_eq!(
                header(head, "access-control-allow-origin"),
                "https://app.example"
            );
        }
        if status.contains("200") {
            assert_eq!(header(&fast, "transfer-encoding"), "chunked");
            assert_eq!(header(&fast, "content-type"), "text/event-stream");
            assert_eq!(count(&fast, "content-encoding"), 0, "{fast}");
        }
    }
    server.stop().await;
}

/// Writes `request` on a fresh connection and reads the whole answer,
/// until the server closes the connection.
async fn answer_to(base: &str, request: &[u8]) -> (String, serde_json::Value) {
    let mut socket = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        header(head, "content-length"),
        body.len().to_string(),
        "{head}"
    );
    assert_eq!(count(head, "content-length"), 1, "{head}");
    assert_eq!(header(head, "content-type"), "application/json");
    (head.to_owned(), serde_json::from_str(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_no_server_should_take_get_json_errors() {
    let (_db, _, rowcast) = messages().await;
    let server = rowcast.start().await;
    let big = format!(
        "GET /feeds HTTP/1.1\r\nHost: x\r\nCookie: {}\r\n\r\n",
        "c".repeat(40_000)
    );
    let long = format!(
        "GET /feeds?x={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(9_000)
    );
    let mut many = "GET /events/messages HTTP/1.1\r\n".to_owned();
    for i in 0..101 {
        many.push_str(&format!("x-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    let cases = [
        (
            big.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "head_too_large",
            "the request head is larger than 32768 bytes or has more than 100 header lines",
        ),
        (
            many.as_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "head_too_large",
            "the request head is larger than 32768 bytes or has more than 100 header lines",
        ),
        (
            long.as_bytes(),
            "HTTP/1.1 414 URI Too Long",
            "uri_too_long",
            "the request target is longer than 8192 bytes",
        ),
        (
            &b"GET /feeds HTTP/1.1\r\nBad Header: x\r\n\r\n"[..],
            "HTTP/1.1 400 Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1: invalid header name",
        ),
    ];
    for (request, status, code, detail) in cases {
        let (head, body) = answer_to(&server.url, request).await;
        assert!(head.starts_with(status), "{head}");
        assert_eq!(
            (body["error"].as_str(), body["detail"].as_str()),
            (Some(code), Some(detail))
        );
    }
    wait_health(&server.url, 200).await;
    server.stop().await;
}

/// Waits until the server closes `socket`, reading and dropping what it
/// sends, for at most `most` since `started`; returns how long since
/// `started` that took.
async fn closed_within(socket: &mut TcpStream, started: Instant, most: Duration) -> Duration {
    let mut buf = vec![0; 64 * 1024];
    loop {
        match tokio::time::timeout_at((started + most).into(), socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("still open after {most:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_is_closed_within_the_configured_time() {
    let (_db, _, rowcast) = messages().await;
    let server = rowcast
        .set("header_timeout", "500ms")
        .set("idle_timeout", "800ms")
        .start()
        .await;
    let address = server.url.trim_start_matches("http://").to_owned();
    let early = Duration::from_millis(400);

    // Connected, never a byte.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(&address).await.unwrap();
    // Half a head, then nothing.
    let mut half = TcpStream::connect(&address).await.unwrap();
    half.write_all(b"GET /events/messages HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for socket in [&mut silent, &mut half] {
        let took = closed_within(socket, opened, Duration::from_secs(3)).await;
        assert!(
            took >= early,
            "closed after {took:?}, before header_timeout"
        );
    }

    // Kept alive after an answer, then idle; or a second head sent by half.
    let mut idle = Wire::open(&server.url, "/feeds", "").await;
    let mut second = Wire::open(&server.url, "/feeds", "").await;
    for wire in [&mut idle, &mut second] {
        let head = wire.head().await;
        wire.read_exactly(header(&head, "content-length").parse().unwrap())
            .await;
    }
    let answered = Instant::now();
    second.write(b"GET /feeds HTTP/1.1\r\nHo").await;
    for wire in [&mut idle, &mut second] {
        let took = closed_within(&mut wire.socket, answered, Duration::from_secs(3)).await;
        assert!(
            took >= Duration::from_millis(600),
            "closed after {took:?}, before idle_timeout"
        );
    }

    // A stream is not idle: it stays open past both.
    let mut stream = Client::connect(&format!("{}/events/messages", server.url), None).await;
    stream.expect_quiet(Duration::from_millis(1500)).await;
    server.stop().await;
}

each_db!(a_stream_whose_client_reads_nothing_is_closed_after_send_timeout);

async fn a_stream_whose_client_reads_nothing_is_closed_after_send_timeout(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("send_timeout", "1s")
        .feed("messages", &t, |f| f)
        .start()
        .await;
    // One stream written by the fan-out, one by hyper (asked for on a
    // kept-alive connection): neither reads what it is sent.
    let mut direct = Wire::open(&server.url, "/events/messages", "").await;
    let mut kept = Wire::open(&server.url, "/healthz", "").await;
    let head = kept.head().await;
    kept.read_exactly(header(&head, "content-length").parse().unwrap())
        .await;
    kept.send("/events/messages", "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body = "x".repeat(256 * 1024);
    let mut ids = Vec::new();
    for _ in 0..80 {
        ids.push(db.insert(&t, 1, &body).await);
    }
    // Far more than the kernel's buffers hold: the writes stall, and after
    // send_timeout the server gives both connections up.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for wire in [&mut direct, &mut kept] {
        let mut got = 0;
        let mut buf = vec![0; 1 << 20];
        loop {
            match tokio::time::timeout(WAIT, wire.socket.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got += n,
                Err(_) => panic!("the stalled stream was never closed"),
            }
        }
        assert!(
            got < 80 * body.len(),
            "closed before every row was sent: {got} bytes"
        );
    }
    let quiet = Instant::now();
    while server.feeds[0].feed.clients() != 0 {
        assert!(quiet.elapsed() < WAIT, "the server let go of both streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The feed goes on for everyone else.
    let mut fresh = Client::connect(
        &format!("{}/events/messages", server.url),
        Some(&ids[78].to_string()),
    )
    .await;
    assert_eq!(crate::common::ids(&fresh.take(1).await), vec![ids[79]]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room_and_busy_ones_keep_theirs() {
    let (db, t, rowcast) = messages().await;
    let server = rowcast
        .set("max_clients", 10)
        .set("header_timeout", "1m")
        .start()
        .await;
    let address = server.url.trim_start_matches("http://").to_owned();
    // Two streams, busy for good.
    let mut streams = Vec::new();
    for _ in 0..2 {
        streams.push(Client::connect(&format!("{}/events/messages", server.url), None).await);
    }
    // Eight silent connections fill the rest, and 40 more keep coming:
    // each takes the place of the one idle longest.
    let mut silent = Vec::new();
    for _ in 0..48 {
        silent.push(TcpStream::connect(&address).await.unwrap());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (old, young) = silent.split_at_mut(40);
    let opened = Instant::now();
    for socket in old {
        closed_within(socket, opened, Duration::from_secs(5)).await;
    }
    // A fresh client still gets in: it sends its request at once, so
    // the silent ones make room for it.
    wait_health(&server.url, 200).await;
    let mut third = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let id = db.insert(&t, 1, "for everyone").await;
    for client in streams.iter_mut().chain([&mut third]) {
        assert_eq!(crate::common::ids(&client.take(1).await), vec![id]);
    }
    // The youngest silent connections were the ones left to go.
    let mut still_open = 0;
    for socket in young {
        let mut byte = [0; 1];
        if tokio::time::timeout(Duration::from_millis(50), socket.read(&mut byte))
            .await
            .is_err()
        {
            still_open += 1;
        }
    }
    // Two of them at most made room for /healthz and the third stream.
    assert!(
        (6..=7).contains(&still_open),
        "{still_open} of the youngest 8 still open"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_leave_room_for_other_requests() {
    // Of 20 connections, streams may hold all but one.
    let (db, t, rowcast) = messages().await;
    let server = rowcast.set("max_clients", 20).start().await;
    let url = format!("{}/events/messages", server.url);
    let mut streams = Vec::new();
    for _ in 0..19 {
        streams.push(Client::connect(&url, None).await);
    }
    let (status, body) = get_json(&url).await;
    assert_eq!(
        (status, body["error"].as_str(), body["detail"].as_str()),
        (
            429,
            Some("too_many_streams"),
            Some("this server already has 19 open streams, the most allowed")
        )
    );
    // The last place is there for everything else.
    wait_health(&server.url, 200).await;
    let (status, _) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(status, 200);
    let id = db.insert(&t, 1, "to all 19").await;
    for client in &mut streams {
        assert_eq!(crate::common::ids(&client.take(1).await), vec![id]);
    }
    // A stream that ends gives its place back.
    streams.pop();
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        if let Some(client) = Client::try_connect(&url, Some(&id.to_string())).await {
            break client;
        }
        assert!(Instant::now() < deadline, "no place came free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let next = db.insert(&t, 1, "after").await;
    assert_eq!(crate::common::ids(&again.take(1).await), vec![next]);
    server.stop().await;
}
