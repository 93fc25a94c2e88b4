//! The direct fan-out: caught-up streams written by their feed's fan-out
//! task, on the wire as a user's HTTP client sees them. Streams opened in
//! other ways (after another request on the same connection, HTTP/1.0)
//! still get every row, through hyper.

use crate::common::wire::{header, Wire};
use crate::common::*;
use std::time::Duration;
use tokio::io::AsyncReadExt;

each_db!(caught_up_streams_are_written_by_the_fanout);

async fn caught_up_streams_are_written_by_the_fanout(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let mut everything = Vec::new();
    let mut room_one = Vec::new();
    for _ in 0..20 {
        everything.push(Client::connect(&format!("{}/events/messages", server.url), None).await);
        room_one.push(
            Client::connect(&format!("{}/events/messages?room_id=1", server.url), None).await,
        );
    }
    wait_for_direct(&server, 40).await;

    let mut all_ids = Vec::new();
    let mut room_one_ids = Vec::new();
    for i in 0..30 {
        let room = 1 + i % 2;
        let id = db.insert(&t, room, &format!("row {i}")).await;
        all_ids.push(id);
        if room == 1 {
            room_one_ids.push(id);
        }
    }
    for client in &mut everything {
        assert_eq!(ids(&client.take(30).await), all_ids);
    }
    for client in &mut room_one {
        assert_eq!(ids(&client.take(15).await), room_one_ids);
    }

    // Clients that leave are let go of without waiting for a write.
    everything.truncate(5);
    room_one.truncate(5);
    wait_for_direct(&server, 10).await;
    assert!(metrics(&server)
        .await
        .contains("rowcast_direct_streams{feed=\"messages\"} 10\n"));
    let id = db.insert(&t, 1, "after the others left").await;
    for client in everything.iter_mut().chain(room_one.iter_mut()) {
        assert_eq!(ids(&client.take(1).await), vec![id]);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_inside_the_ring_reads_nothing_and_loses_nothing() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.ring_size(500))
        .start()
        .await;
    let before = db.insert_many(&t, 1, 100).await;
    let first_id = before[0] - 1;
    // Wait until the hub has published them all: then they are in the ring.
    let mut watcher = Client::connect(
        &format!("{}/events/messages", server.url),
        Some(&first_id.to_string()),
    )
    .await;
    assert_eq!(ids(&watcher.take(100).await), before);

    // 200 clients at once, each resuming from its own id, while rows keep
    // coming.
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let resume = before[(i * 37) % before.len()];
            let url = format!("{}/events/messages", server.url);
            tokio::spawn(async move {
                let client = Client::connect(&url, Some(&resume.to_string())).await;
                (resume, client)
            })
        })
        .collect();
    let after = db.insert_many(&t, 2, 50).await;
    let all: Vec<i64> = before.iter().chain(&after).copied().collect();
    let checks = clients.into_iter().map(|client| {
        let all = &all;
        async move {
            let (resume, mut client) = client.await.unwrap();
            let expected: Vec<i64> = all.iter().copied().filter(|id| *id > resume).collect();
            assert_eq!(
                ids(&client.take(expected.len()).await),
                expected,
                "resumed after {resume}"
            );
            client.expect_quiet(Duration::from_millis(200)).await;
            client
        }
    });
    let _open = futures::future::join_all(checks).await;
    // The watcher and the 200: all written by the fan-out.
    wait_for_direct(&server, 201).await;
    let catch_up = server.feeds[0]
        .health
        .counters
        .catch_up_queries
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(catch_up, 0, "everyone was served from the ring");
    server.stop().await;
}

/// Waits until the feed's fan-out writes exactly `n` streams.
async fn wait_for_direct(server: &Server, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.feeds[0].fanout.streams() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} direct streams, not {n}",
            server.feeds[0].fanout.streams()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_direct_streams_get_keep_alives_in_valid_chunks() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("keep_alive", "200ms")
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let mut wire = Wire::open(&server.url, "/events/messages", "").await;
    let head = wire.head().await;
    let opened = std::time::Instant::now();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    wait_for_direct(&server, 1).await;
    let id = db.insert(&t, 1, "one").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let body = wire.chunked_body().await;
    assert!(body.starts_with("retry: 3000\n\nid: "), "{body:?}");
    assert!(
        body.contains(&format!("id: {id}\ndata: {{")),
        "the row is in the body: {body:?}"
    );
    // One every 200 ms of quiet: not fewer, and not more either.
    let intervals = (opened.elapsed().as_millis() / 200) as usize;
    let keep_alives = body.matches(": keep-alive\n\n").count();
    assert!(
        (intervals.saturating_sub(3)..=intervals + 1).contains(&keep_alives),
        "{keep_alives} keep-alives in {:?}: {body:?}",
        opened.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_other_ways_get_every_row() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db).feed("messages", &t, |f| f).start().await;

    // A stream asked for after another request on the same connection.
    let mut second = Wire::connect(&server.url).await;
    second.send("/feeds", "").await;
    let head = second.head().await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let length: usize = header(&head, "content-length").parse().unwrap();
    second.read_exactly(length).await;
    second.send("/events/messages", "").await;
    assert!(second.head().await.starts_with("HTTP/1.1 200 OK\r\n"));

    // HTTP/1.0: no chunks, the body ends when the connection does.
    let mut old = Wire::connect(&server.url).await;
    old.write(b"GET /events/messages HTTP/1.0\r\n\r\n").await;
    assert!(old.head().await.contains(" 200 OK\r\n"));

    // None of them is a direct stream; rows reach them all the same.
    let mut rows = Vec::new();
    for i in 0..5 {
        rows.push(db.insert(&t, 1, &format!("row {i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.feeds[0].fanout.streams(), 0);
    let expect = |body: &str| {
        let got: Vec<i64> = body
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .filter_map(|id| id.parse().ok())
            .filter(|id| *id > 0)
            .collect();
        assert_eq!(got, rows, "{body:?}");
    };
    expect(&second.chunked_body().await);
    expect(&String::from_utf8_lossy(&old.take_read().await));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_a_whole_answer_and_the_connection_closes() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db).feed("messages", &t, |f| f).start().await;
    let mut wire = Wire::open(&server.url, "/events/nope", "").await;
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, wire.socket.read_to_end(&mut answer))
        .await
        .expect("the connection closes")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert_eq!(header(head, "content-type"), "application/json");
    assert_eq!(header(head, "connection"), "close");
    assert_eq!(header(head, "content-length"), body.len().to_string());
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["error"], "unknown_feed");
    server.stop().await;
}
