//! Cursors that clients send: a composite id has at most one pair per
//! feed, however many it sends.

mod common;

use common::*;
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
async fn two_feeds(db: &TestDb, t: &str) -> Server {
    Server::start(config(
        &db.url,
        &format!(
            "[[feed]]\nname = \"messages\"\ntable = \"{t}\"\n[[feed]]\nname = \"other\"\ntable = \"{t}\"\n"
        ),
    ))
    .await
}

#[tokio::test]
async fn a_composite_id_with_more_pairs_than_feeds_is_refused() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let server = two_feeds(&db, &t).await;
    let url = format!("{}/events?feed=messages&feed=other", server.url);
    // 40,000 pairs for as many feeds, 350 KB: refused by their number,
    // before any is read.
    let many: Vec<String> = (0..40_000).map(|i| format!("f{i}:1")).collect();
    let many = many.join(",");
    assert_eq!(
        get(&url, Some(&many)).await,
        bad_cursor("Last-Event-ID: the cursor has 40000 `feed:id` pairs, more than there are feeds: expected at most one pair per feed")
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
