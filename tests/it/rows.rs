//! `GET /feeds/{feed}/rows`: JSON rows for short-polling clients, long-poll,
//! ETags, and answers that do not reach the database.

use crate::common::*;
use futures::future::join_all;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// GET and return status, ETag and JSON body (`Null` for an empty body).
async fn get(url: &str, if_none_match: Option<&str>) -> (u16, Option<String>, serde_json::Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(etag) = if_none_match {
        request = request.header("If-None-Match", etag);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, etag, body)
}

fn row_ids(body: &serde_json::Value) -> Vec<i64> {
    body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

/// Waits until the feed has published `id`.
async fn wait_head(server: &Server, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.feeds[0].feed.head().0 < rowcast::cursor::Cursor::At(id.into()) {
        assert!(Instant::now() < deadline, "the feed never reached {id}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

each_db!(
    polls_return_every_row_once_in_order,
    long_poll_answers_on_insert_or_at_the_end_of_wait,
    unchanged_answers_are_304_and_filters_apply
);

async fn polls_return_every_row_once_in_order(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let before = db.insert_many(&t, 1, 4).await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.filter_columns(["room_id"]).ring_size(3)
        })
        .start()
        .await;
    let base = format!("{}/feeds/messages/rows", server.url);
    let more = db.insert_many(&t, 1, 6).await;
    wait_head(&server, *more.last().unwrap()).await;
    let expected: Vec<i64> = before.iter().chain(&more).copied().collect();

    // From the start, three at a time: the older ones come from the
    // database (the ring keeps 3), the newer from the ring.
    let mut cursor = "start".to_owned();
    let mut got = Vec::new();
    loop {
        let (status, _, body) = get(&format!("{base}?after={cursor}&limit=3"), None).await;
        assert_eq!(status, 200, "{body}");
        got.extend(row_ids(&body));
        cursor = body["cursor"].as_str().unwrap().to_owned();
        if body["more"] == false {
            break;
        }
        assert_eq!(row_ids(&body).len(), 3);
    }
    assert_eq!(got, expected);
    assert_eq!(cursor, expected.last().unwrap().to_string());
    let (_, _, body) = get(&format!("{base}?after={cursor}"), None).await;
    assert_eq!(
        body,
        serde_json::json!({"rows": [], "cursor": cursor, "more": false})
    );
    let first = &get(&format!("{base}?after={}&limit=1", before[0]), None)
        .await
        .2["rows"][0];
    assert_eq!(first["body"], "m1", "rows are the table's JSON: {first}");

    // No cursor: nothing old, then what comes next.
    let (_, _, body) = get(&base, None).await;
    assert_eq!(row_ids(&body), Vec::<i64>::new());
    assert_eq!(body["cursor"], expected.last().unwrap().to_string());
    server.stop().await;
}

async fn long_poll_answers_on_insert_or_at_the_end_of_wait(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let last = db.insert(&t, 1, "old").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let url = format!("{}/feeds/messages/rows?after={last}&wait=10", server.url);
    let started = Instant::now();
    let poll = tokio::spawn(async move { get(&url, None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = db.insert(&t, 1, "new").await;
    let (status, _, body) = poll.await.unwrap();
    assert_eq!((status, row_ids(&body)), (200, vec![id]));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (_, _, body) = get(
        &format!("{}/feeds/messages/rows?after={id}&wait=0.5", server.url),
        None,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(
        body,
        serde_json::json!({"rows": [], "cursor": id.to_string(), "more": false})
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    server.stop().await;
}

async fn unchanged_answers_are_304_and_filters_apply(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let start = db.insert(&t, 1, "start").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let base = format!("{}/feeds/messages/rows", server.url);
    let (status, etag, body) = get(&format!("{base}?after={start}"), None).await;
    assert_eq!(status, 200);
    let etag = etag.expect("an ETag");
    let (status, again, body304) = get(&format!("{base}?after={start}"), Some(&etag)).await;
    assert_eq!(
        (status, again.as_deref(), body304),
        (304, Some(etag.as_str()), serde_json::Value::Null)
    );

    let mut rooms = Vec::new();
    for room in [1, 2, 3, 2] {
        rooms.push((room, db.insert(&t, room, "x").await));
    }
    wait_head(&server, rooms.last().unwrap().1).await;
    let (status, _, changed) = get(&format!("{base}?after={start}"), Some(&etag)).await;
    assert_eq!(status, 200, "new rows change the answer");
    assert_ne!(changed, body);
    let (_, _, body) = get(&format!("{base}?after={start}&room_id=2"), None).await;
    let room2: Vec<i64> = rooms.iter().filter(|r| r.0 == 2).map(|r| r.1).collect();
    assert_eq!(row_ids(&body), room2);
    let (_, _, body) = get(&format!("{base}?after={start}&room_id=1&room_id=3"), None).await;
    let room13: Vec<i64> = rooms.iter().filter(|r| r.0 != 2).map(|r| r.1).collect();
    assert_eq!(row_ids(&body), room13);
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_400_with_a_reason() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let base = format!("{}/feeds/messages/rows", server.url);
    let cases = [
        (
            "limit=0",
            "bad_parameter",
            "`limit`: `0` is not a whole number from 1 to 1000",
        ),
        (
            "limit=5000",
            "bad_parameter",
            "`limit`: `5000` is not a whole number from 1 to 1000",
        ),
        (
            "limit=ten",
            "bad_parameter",
            "`limit`: `ten` is not a whole number from 1 to 1000",
        ),
        (
            "wait=-1",
            "bad_parameter",
            "`wait`: `-1` is not a number of seconds from 0 to 60",
        ),
        (
            "wait=61",
            "bad_parameter",
            "`wait`: `61` is not a number of seconds from 0 to 60",
        ),
        (
            "after=abc",
            "bad_cursor",
            "after: `abc` is not a row id: expected an integer or `start`",
        ),
        (
            "room=1",
            "unknown_filter",
            "`room` is not a filter of feed `messages`; filters: room_id",
        ),
    ];
    for (query, code, detail) in cases {
        let (status, _, body) = get(&format!("{base}?{query}"), None).await;
        assert_eq!(
            (status, body["error"].as_str(), body["detail"].as_str()),
            (400, Some(code), Some(detail)),
            "{query}"
        );
    }
    let (status, _, body) = get(&format!("{}/feeds/nope/rows", server.url), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_feed"))
    );
    server.stop().await;
}

#[tokio::test]
async fn feeds_describe_themselves_from_memory() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.table("messages");
    db.exec(&format!(
        "CREATE TABLE {t} (id bigserial PRIMARY KEY, room_id bigint NOT NULL, body text NOT NULL, created_at text NOT NULL)"
    ))
    .await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    db.exec(&format!(
        "INSERT INTO {t} (room_id, body, created_at) VALUES (1, 'x', '2026-11-30T12:00:00Z')"
    ))
    .await;
    wait_head(&server, 1).await;
    let (status, _, list) = get(&format!("{}/feeds", server.url), None).await;
    assert_eq!(status, 200);
    let feed = &list["feeds"][0];
    assert_eq!(feed["cursor"], "1");
    assert_eq!(feed["latest_row_at"], "2026-11-30T12:00:00Z");
    assert_eq!(feed["table"], format!("public.{t}"));
    let (status, _, one) = get(&format!("{}/feeds/messages", server.url), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        one["columns"],
        serde_json::json!(["id", "room_id", "body", "created_at"])
    );
    assert_eq!(one["filter_columns"], serde_json::json!(["room_id"]));
    assert_eq!(one["id_column"], "id");
    assert_eq!(one["cursor_type"], "row id (integer)");
    server.stop().await;
}

/// 500 clients polling while nothing changes cost the database nothing;
/// 500 asking for the same rows behind the ring cost a few reads.
async fn many_pollers_cost_nothing_or_a_few_reads(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.filter_columns(["room_id"]).ring_size(5).batch_size(100)
        })
        .start()
        .await;
    let ids = db.insert_many(&t, 1, 40).await;
    let last = *ids.last().unwrap();
    wait_head(&server, last).await;
    let served = server.feeds[0].clone();
    let catch_up = || {
        served
            .health
            .counters
            .catch_up_queries
            .load(Ordering::SeqCst)
    };

    let client = reqwest::Client::new();
    let base = format!("{}/feeds/messages/rows", server.url);
    let before = catch_up();
    let idle: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}?after={last}"));
            async move {
                for _ in 0..4 {
                    let body: serde_json::Value =
                        client.get(&url).send().await.unwrap().json().await.unwrap();
                    assert_eq!(body["rows"], serde_json::json!([]));
                }
            }
        })
        .collect();
    join_all(idle).await;
    assert_eq!(
        catch_up() - before,
        0,
        "2000 polls with nothing new read nothing"
    );

    let before = catch_up();
    let behind: Vec<_> = (0..500)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}?after=start&limit=100"));
            async move {
                client
                    .get(&url)
                    .send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()
            }
        })
        .collect();
    for body in join_all(behind).await {
        assert_eq!(row_ids(&body), ids);
    }
    let reads = catch_up() - before;
    assert!(
        (1..=3).contains(&reads),
        "{reads} reads for 500 identical polls"
    );
    server.stop().await;
}

each_db!(many_pollers_cost_nothing_or_a_few_reads);
