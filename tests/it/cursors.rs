//! Cursors that clients send: an id must fit the feed's cursor column
//! (signed, or packed `(txid, id)` in Postgres exact mode; MySQL `BIGINT
//! UNSIGNED` is in `schema.rs`) on every endpoint that takes one, and a
//! composite id has at most one pair per feed, however many it sends.

use crate::common::*;
use serde_json::{json, Value};

/// GET `url` (with `Last-Event-ID` when given): the status, and the JSON
/// body when it is not a stream.
async fn get(url: &str, last_event_id: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if response.headers()["content-type"] == "text/event-stream" {
        return (status, Value::Null);
    }
    (status, response.json().await.unwrap())
}

fn bad_cursor(detail: &str) -> (u16, Value) {
    (400, json!({ "error": "bad_cursor", "detail": detail }))
}

/// Two feeds, `messages` and `other`, on one table.
fn two_feeds(db: &TestDb, t: &str) -> Rowcast {
    Rowcast::on(db)
        .feed("messages", t, |f| f)
        .feed("other", t, |f| f)
}

const SIGNED: &str =
    "expected an integer from -9223372036854775808 to 9223372036854775807 or `start`";

#[tokio::test]
async fn ids_beyond_a_signed_column_are_refused_on_every_endpoint() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let base = &server.url;
    let beyond = format!("`18446744073709551616` is outside the ids of this feed: {SIGNED}");
    let below = format!("`-9223372036854775809` is outside the ids of this feed: {SIGNED}");
    let cases = [
        (format!("{base}/events/messages?after=18446744073709551616"), None, format!("after: {beyond}")),
        (format!("{base}/events/messages"), Some("18446744073709551616"), format!("Last-Event-ID: {beyond}")),
        (format!("{base}/events/messages?after=9223372036854775808"), None,
         format!("after: `9223372036854775808` is outside the ids of this feed: {SIGNED}")),
        (format!("{base}/events/messages?after=-9223372036854775809"), None, format!("after: {below}")),
        (format!("{base}/feeds/messages/rows?after=18446744073709551616"), None, format!("after: {beyond}")),
        (format!("{base}/events?feed=messages&feed=other"), Some("messages:1,other:18446744073709551616"),
         format!("Last-Event-ID: `18446744073709551616` is outside the ids of feed `other`: {SIGNED}")),
        (format!("{base}/events?feed=messages&after=messages:18446744073709551616"), None,
         format!("after: `18446744073709551616` is outside the ids of feed `messages`: {SIGNED}")),
    ];
    for (url, last_event_id, detail) in cases {
        assert_eq!(
            get(&url, last_event_id).await,
            bad_cursor(&detail),
            "{url} {last_event_id:?}"
        );
    }
    // The ends of the range are ids like any other.
    for id in [i64::MAX.to_string(), i64::MIN.to_string()] {
        assert_eq!(
            get(&format!("{base}/events/messages?after={id}"), None)
                .await
                .0,
            200
        );
        let (status, body) = get(&format!("{base}/feeds/messages/rows?after={id}"), None).await;
        assert_eq!(status, 200, "{body}");
        let composite = format!("messages:{id},other:{id}");
        assert_eq!(
            get(
                &format!("{base}/events?feed=messages&feed=other"),
                Some(&composite)
            )
            .await
            .0,
            200
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_composite_id_with_more_pairs_than_feeds_is_refused() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).start().await;
    let url = format!("{}/events?feed=messages&feed=other", server.url);
    // As many pairs as fit in a request head (32 KiB): refused by their
    // number, before any is read.
    let pairs = |n: usize| {
        (0..n)
            .map(|i| format!("f{i}:1"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert_eq!(
        get(&url, Some(&pairs(3_000))).await,
        bad_cursor("Last-Event-ID: the cursor has 3000 `feed:id` pairs, more than there are feeds: expected at most one pair per feed")
    );
    // 40,000 pairs, 350 KB, are not even read: no request head is that large.
    assert_eq!(
        get(&url, Some(&pairs(40_000))).await,
        (
            431,
            json!({"error": "head_too_large", "detail": "the request head is larger than 32768 bytes or has more than 100 header lines"})
        )
    );
    assert_eq!(
        get(&url, Some("messages:1,other:1,third:1")).await,
        bad_cursor("Last-Event-ID: the cursor has 3 `feed:id` pairs, more than there are feeds: expected at most one pair per feed")
    );
    assert_eq!(
        get(&url, Some("other:1,other:2")).await,
        bad_cursor("Last-Event-ID: cursor names feed `other` more than once")
    );
    assert_eq!(get(&url, Some("messages:1,other:1")).await.0, 200);
    // The server still answers.
    wait_health(&server.url, 200).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exact_mode_cursors_above_u64_resume_everywhere() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    db.exec(&format!(
        "ALTER TABLE {t} ADD COLUMN rowcast_txid xid8 NOT NULL DEFAULT pg_current_xact_id()"
    ))
    .await;
    let server = Rowcast::on(&db).feed("messages", &t, |f| f).start().await;
    assert!(
        server.feeds[0].feed.query.txid_column.is_some(),
        "exact mode"
    );
    for body in ["one", "two", "three"] {
        db.insert(&t, 1, body).await;
    }
    let base = &server.url;
    let mut client = Client::connect(&format!("{base}/events/messages?after=start"), None).await;
    let events = client.take(3).await;
    assert_eq!(bodies(&events), ["one", "two", "three"]);
    let packed: Vec<u128> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert!(
        packed.iter().all(|id| *id > u128::from(u64::MAX)),
        "{packed:?}"
    );

    // Each endpoint resumes after the first row from its packed id.
    let first = &events[0].id;
    let mut resumed = Client::connect(&format!("{base}/events/messages"), Some(first)).await;
    assert_eq!(bodies(&resumed.take(2).await), ["two", "three"]);
    let mut resumed = Client::connect(
        &format!("{base}/events?feed=messages"),
        Some(&format!("messages:{first}")),
    )
    .await;
    assert_eq!(bodies(&resumed.take(2).await), ["two", "three"]);
    let (status, body) = get(&format!("{base}/feeds/messages/rows?after={first}"), None).await;
    assert_eq!(status, 200);
    let rows: Vec<&str> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["body"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["two", "three"]);
    assert_eq!(body["cursor"], events[2].id.as_str());

    // Packed cursors are never negative.
    assert_eq!(
        get(&format!("{base}/events/messages?after=-1"), None).await,
        bad_cursor("after: `-1` is outside the ids of this feed: expected an integer from 0 to 170141183460469231731687303715884105727 or `start`")
    );
    server.stop().await;
}
