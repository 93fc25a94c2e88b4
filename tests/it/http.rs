//! HTTP behaviour that does not depend on the database: errors with JSON
//! bodies, the position frame for clients that join live, the small JSON
//! endpoints and the page at `/`.

use crate::common::*;
use std::time::Duration;

/// Two feeds of `t`: `messages`, filtered by `room_id`, and `other`.
fn two_feeds(db: &TestDb, t: &str) -> Rowcast {
    Rowcast::on(db)
        .feed("messages", t, |f| f.filter_columns(["room_id"]))
        .feed("other", t, |f| f)
}

async fn get_with(url: &str, last_event_id: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!(response.headers()["content-type"], "application/json");
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn bad_requests_get_a_status_and_a_json_body_naming_the_problem() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let base = &server.url;
    let cases: Vec<(String, Option<&str>, u16, &str, &str)> = vec![
        (format!("{base}/events/nope"), None, 404, "unknown_feed", "no feed named `nope`; feeds: messages, other"),
        (format!("{base}/events/messages?roomid=5"), None, 400, "unknown_filter",
         "`roomid` is not a filter of feed `messages`; filters: room_id"),
        (format!("{base}/events/other?room_id=5"), None, 400, "unknown_filter",
         "`room_id` is not a filter of feed `other`; filters: (none)"),
        (format!("{base}/events/messages"), Some("12abc"), 400, "bad_cursor",
         "Last-Event-ID: `12abc` is not a row id: expected an integer or `start`"),
        (format!("{base}/events/messages?after=-"), None, 400, "bad_cursor",
         "after: `-` is not a row id: expected an integer or `start`"),
        (format!("{base}/events"), None, 400, "no_feed",
         "no feed requested: add ?feed=<name> (repeat it for several feeds); feeds: messages, other"),
        (format!("{base}/events?feed=messages&feed=messages"), None, 400, "repeated_feed",
         "feed `messages` is requested more than once"),
        (format!("{base}/events?feed=messages&feed=nope"), None, 404, "unknown_feed",
         "no feed named `nope`; feeds: messages, other"),
        (format!("{base}/events?feed=messages&feed=other"), Some("5"), 400, "bad_cursor",
         "Last-Event-ID: `5` is not a cursor of this stream: expected `feed:id` pairs separated by commas"),
        (format!("{base}/events?feed=messages&feed=other&other.room_id=1"), None, 400, "unknown_filter",
         "`other.room_id` is not a filter of feed `messages`, feed `other`; filters: room_id"),
        (format!("{base}/nowhere"), None, 404, "not_found",
         "no route for this path; try /events/{feed}, /events?feed=…, /feeds, /feeds/{feed}/rows, /presence/{feed}, /healthz or /metrics"),
    ];
    for (url, last_event_id, status, code, detail) in cases {
        let (got_status, body) = get_with(&url, last_event_id).await;
        assert_eq!(
            (
                got_status,
                body["error"].as_str().unwrap(),
                body["detail"].as_str().unwrap()
            ),
            (status, code, detail),
            "{url}"
        );
    }
    // A bad request never disturbs the server.
    wait_health(base, 200).await;
    server.stop().await;
}

#[tokio::test]
async fn a_live_client_learns_its_position_before_any_row() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let first = db.insert(&t, 1, "before").await;
    let server = two_feeds(&db, &t).start().await;
    let mut response = reqwest::get(format!("{}/events/messages", server.url))
        .await
        .unwrap();
    let opening = response.chunk().await.unwrap().unwrap();
    assert_eq!(
        &opening[..],
        format!("retry: 3000\n\nid: {first}\n\n").as_bytes()
    );
    drop(response);

    // Rows written before it reconnects with that id are not lost.
    let missed = db.insert(&t, 1, "while away").await;
    let mut client = Client::connect(
        &format!("{}/events/messages", server.url),
        Some(&first.to_string()),
    )
    .await;
    assert_eq!(ids(&client.take(1).await), [missed]);

    // A multi-feed stream announces every feed's position at once (once
    // both feeds' pollers have seen the row).
    for served in &server.feeds {
        while served.feed.head().0 < rowcast::cursor::Cursor::At(missed.into()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut response = reqwest::get(format!("{}/events?feed=messages&feed=other", server.url))
        .await
        .unwrap();
    let opening = response.chunk().await.unwrap().unwrap();
    assert_eq!(
        &opening[..],
        format!("retry: 3000\n\nid: messages:{missed},other:{missed}\n\n").as_bytes()
    );
    server.stop().await;
}

#[tokio::test]
async fn quiet_streams_get_keep_alive_comments() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("keep_alive", "200ms")
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let mut response = reqwest::get(format!("{}/events/messages?after=start", server.url))
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains(": keep-alive\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(2), response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(text, "retry: 3000\n\n: keep-alive\n\n");
    server.stop().await;
}

#[tokio::test]
async fn a_filtered_client_of_a_busy_feed_still_gets_keep_alives() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .set("keep_alive", "300ms")
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let mut response = reqwest::get(format!("{}/events/messages?room_id=2", server.url))
        .await
        .unwrap();
    let opening = response.chunk().await.unwrap().unwrap();
    assert!(opening.starts_with(b"retry: 3000\n\n"));
    // Rows for another room every 50 ms: none passes the filter.
    let writer = tokio::spawn(async move {
        for _ in 0..20 {
            db.insert(&t, 1, "elsewhere").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let chunk = tokio::time::timeout(Duration::from_millis(900), response.chunk())
        .await
        .expect("a keep-alive within the interval despite the busy feed")
        .unwrap()
        .unwrap();
    assert_eq!(&chunk[..], b": keep-alive\n\n");
    writer.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn feeds_healthz_metrics_and_page_answer_from_memory() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let id = db.insert(&t, 1, "x").await;
    let mut client =
        Client::connect(&format!("{}/events/messages?after=start", server.url), None).await;
    client.take(1).await;

    let (status, feeds) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(status, 200);
    let messages = &feeds["feeds"][0];
    assert_eq!(messages["name"], "messages");
    assert_eq!(messages["cursor"], id.to_string());
    assert_eq!(messages["clients"], 1);
    assert_eq!(messages["filter_columns"], serde_json::json!(["room_id"]));
    assert!(messages["latest_at"].as_u64().is_some());

    let health = wait_health(&server.url, 200).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["feeds"]["messages"]["status"], "ok");

    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("rowcast_events_total{feed=\"messages\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rowcast_clients{feed=\"messages\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rowcast_feed_up{feed=\"other\"} 1\n"),
        "{metrics}"
    );

    let page = reqwest::get(format!("{}/", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("new EventSource('/events/'"),
        "the page follows a feed with EventSource"
    );
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let started = std::time::Instant::now();
    server.stop().await;
    client.expect_end(Duration::from_secs(2)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rejected_values_are_quoted_cut_short() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let base = &server.url;
    // Values as long as a request can carry (a target of 8 KiB, a head of
    // 32 KiB), each quoted back as its first 64 characters and its length.
    let long = |c: &str, n: usize| c.repeat(n);
    let cut = |c: &str, n: usize| format!("`{}…` ({n} characters)", c.repeat(64));
    let cases = [
        (format!("{base}/events/messages?{}=1", long("r", 8_000)), None, 400, "unknown_filter",
         format!("{} is not a filter of feed `messages`; filters: room_id", cut("r", 8_000))),
        (format!("{base}/events/{}", long("f", 8_000)), None, 404, "unknown_feed",
         format!("no feed named {}; feeds: messages, other", cut("f", 8_000))),
        (format!("{base}/events/messages?after={}", long("x", 8_000)), None, 400, "bad_cursor",
         format!("after: {} is not a row id: expected an integer or `start`", cut("x", 8_000))),
        (format!("{base}/events?feed=messages&feed=other"), Some(long("c", 30_000)), 400, "bad_cursor",
         format!("Last-Event-ID: {} is not a cursor of this stream: expected `feed:id` pairs separated by commas", cut("c", 30_000))),
        (format!("{base}/feeds/messages/rows?limit={}", long("9", 8_000)), None, 400, "bad_parameter",
         format!("`limit`: {} is not a whole number from 1 to 1000", cut("9", 8_000))),
    ];
    for (url, last_event_id, status, code, detail) in cases {
        assert_eq!(
            get_with(&url, last_event_id.as_deref()).await,
            (
                status,
                serde_json::json!({ "error": code, "detail": detail })
            ),
            "{}",
            &url[..url.len().min(80)]
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_metrics_listener_keeps_metrics_and_feed_health_apart() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let id = db.insert(&t, 1, "x").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f)
        .feed("other", &t, |f| f)
        .start_with_metrics_listener()
        .await;
    let ops = server.metrics_url.clone().unwrap();

    // Clients' listener: no metrics, and health without feeds.
    assert_eq!(
        get_with(&format!("{}/metrics", server.url), None).await,
        (
            404,
            serde_json::json!({
                "error": "not_found",
                "detail": "no route for this path; try /events/{feed}, /events?feed=…, /feeds, /feeds/{feed}/rows, /presence/{feed}, /healthz or /metrics"
            })
        )
    );
    assert_eq!(
        wait_health(&server.url, 200).await,
        serde_json::json!({ "status": "ok" })
    );

    // Operators' listener: every feed, no streams.
    let cursor = id.to_string();
    assert_eq!(
        wait_health(&ops, 200).await,
        serde_json::json!({ "status": "ok", "feeds": {
            "messages": { "status": "ok", "cursor": cursor },
            "other": { "status": "ok", "cursor": cursor },
        }})
    );
    let text = reqwest::get(format!("{ops}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "rowcast_feed_up{feed=\"messages\"} 1\n",
        "rowcast_feed_up{feed=\"other\"} 1\n",
    ] {
        assert!(text.contains(series), "{text}");
    }
    assert_eq!(
        get_with(&format!("{ops}/events/messages"), None).await.0,
        404
    );

    // It stops with the rest.
    server.stop().await;
    assert!(reqwest::get(format!("{ops}/healthz")).await.is_err());
}
