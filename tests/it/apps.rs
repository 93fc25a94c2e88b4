//! Tables of real applications, in their own shapes: a chat server's
//! `events` on Postgres (ids allocated by the server itself and declared
//! complete in a positions table, payload in a second table, time in epoch
//! milliseconds) and a blog's `wp_comments` on MariaDB (unsigned ids, a
//! DATETIME time column, a moderation flag).

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// What `/feeds` says of the first feed.
async fn listed(server: &Server) -> Value {
    let (status, feeds) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(status, 200, "{feeds}");
    feeds["feeds"][0].clone()
}

/// The tables of a chat server: `events`, `event_json` and the position up
/// to which the server declares the events stream complete.
struct Chat {
    events: String,
    json: String,
    positions: String,
}

impl Chat {
    async fn create(db: &TestDb) -> Chat {
        let (events, json, positions) = (
            db.table("events"),
            db.table("event_json"),
            db.table("stream_positions"),
        );
        db.exec(&format!(
            "CREATE TABLE {events} (topological_ordering BIGINT NOT NULL, event_id TEXT NOT NULL UNIQUE, \
             type TEXT NOT NULL, room_id TEXT NOT NULL, sender TEXT, origin_server_ts BIGINT, \
             received_ts BIGINT, stream_ordering BIGINT, state_key TEXT); \
             CREATE UNIQUE INDEX {events}_stream_ordering ON {events} (stream_ordering); \
             CREATE TABLE {json} (event_id TEXT NOT NULL UNIQUE, room_id TEXT NOT NULL, json TEXT NOT NULL); \
             CREATE TABLE {positions} (stream_name TEXT NOT NULL, instance_name TEXT NOT NULL, \
             stream_id BIGINT NOT NULL); \
             INSERT INTO {positions} VALUES ('events', 'master', 0)"
        ))
        .await;
        Chat {
            events,
            json,
            positions,
        }
    }

    /// Persists event `n` in `room` as the server does: the rows, then the
    /// stream position. Returns the feed's row for it.
    async fn send(&self, db: &TestDb, n: i64, room: &str, body: &str) -> Value {
        let (events, json, positions) = (&self.events, &self.json, &self.positions);
        let (sent, received) = (
            1_764_504_000_000 + n * 1000,
            1_764_504_000_000 + n * 1000 + 7,
        );
        let content = json!({"msgtype": "m.text", "body": body}).to_string();
        db.exec(&format!(
            "BEGIN; \
             INSERT INTO {events} (topological_ordering, event_id, type, room_id, sender, \
             origin_server_ts, received_ts, stream_ordering) \
             VALUES ({n}, '$e{n}', 'm.room.message', '{room}', '@ann:example.org', {sent}, {received}, {n}); \
             INSERT INTO {json} (event_id, room_id, json) VALUES ('$e{n}', '{room}', '{content}'); \
             COMMIT; \
             UPDATE {positions} SET stream_id = {n} WHERE stream_name = 'events'"
        ))
        .await;
        json!({
            "stream_ordering": n,
            "room_id": room,
            "sender": "@ann:example.org",
            "origin_server_ts": sent,
            "received_ts": received,
            "json": content,
        })
    }
}

/// The chat server's events, read with a join through `select`: start-up
/// takes the positions table's watermark as covering the ids the server
/// allocates itself, and `/feeds` reports the reception time as the number
/// it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_events_on_postgres() {
    let db = TestDb::new(Kind::Postgres).await;
    let chat = Chat::create(&db).await;
    let (events, json, positions) = (&chat.events, &chat.json, &chat.positions);
    let before = chat.send(&db, 1, "!a:example.org", "before start").await;
    let select = format!(
        "SELECT e.stream_ordering, e.room_id, e.sender, e.origin_server_ts, e.received_ts, j.json \
         FROM {events} e JOIN {json} j ON j.event_id = e.event_id"
    );
    let watermark = format!("SELECT stream_id FROM {positions} WHERE stream_name = 'events'");
    let server = Rowcast::on(&db)
        .feed("events", events, |f| {
            f.id_column("stream_ordering")
                .select(&select)
                .filter_columns(["room_id"])
                .watermark(&watermark)
        })
        .start()
        .await;
    let gaps = &server.setups[0];
    assert_eq!(gaps.warnings, Vec::<String>::new());
    assert_eq!(
        gaps.notes,
        ["feed `events`: `stream_ordering` has no default, so the application assigns ids and no lock \
          reveals a writer in advance; the `watermark` query covers it: gaps below the watermark settle at once"]
    );
    let mut room = Client::connect(
        &format!(
            "{}/events/events?after=start&room_id=!a:example.org",
            server.url
        ),
        None,
    )
    .await;
    let first = room.take(1).await;
    let _elsewhere = chat.send(&db, 2, "!b:example.org", "elsewhere").await;
    let last = chat.send(&db, 3, "!a:example.org", "live").await;
    let got = [first, room.take(1).await].concat();
    assert_eq!(ids(&got), [1, 3]);
    assert_eq!(got.iter().map(Ev::json).collect::<Vec<_>>(), [before, last]);
    room.expect_quiet(Duration::from_millis(300)).await;
    let feed = listed(&server).await;
    assert_eq!(feed["cursor"], "3", "{feed}");
    assert_eq!(
        feed["latest_row_at"],
        json!(1_764_504_003_007_i64),
        "{feed}"
    );
    server.stop().await;
}

/// A blog's comments: only approved ones, per post; `/feeds` reports the
/// comment's DATETIME as MariaDB renders it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blog_comments_on_mariadb() {
    let db = TestDb::new(Kind::MySql).await;
    let c = db.table("wp_comments");
    db.exec(&format!(
        "CREATE TABLE {c} (comment_ID BIGINT(20) UNSIGNED NOT NULL AUTO_INCREMENT, \
         comment_post_ID BIGINT(20) UNSIGNED NOT NULL DEFAULT 0, comment_author TINYTEXT NOT NULL, \
         comment_date DATETIME NOT NULL, comment_date_gmt DATETIME NOT NULL, comment_content TEXT NOT NULL, \
         comment_approved VARCHAR(20) NOT NULL DEFAULT '1', PRIMARY KEY (comment_ID), \
         KEY comment_post_ID (comment_post_ID)) DEFAULT CHARSET = utf8mb4"
    ))
    .await;
    let comment = |post: i64, minute: i64, approved: &str| {
        let (local, gmt) = (
            format!("2026-11-30 13:{minute:02}:00"),
            format!("2026-11-30 12:{minute:02}:00"),
        );
        let sql = format!(
            "INSERT INTO {c} (comment_post_ID, comment_author, comment_date, comment_date_gmt, \
             comment_content, comment_approved) VALUES ({post}, 'ann', '{local}', '{gmt}', 'nice {minute}', '{approved}')"
        );
        (sql, local, gmt)
    };
    let row = |id: i64, post: i64, minute: i64, local: &str, gmt: &str| {
        json!({
            "comment_ID": id, "comment_post_ID": post, "comment_author": "ann",
            "comment_date": local, "comment_date_gmt": gmt,
            "comment_content": format!("nice {minute}"), "comment_approved": "1",
        })
    };
    let server = Rowcast::on(&db)
        .feed("comments", &c, |f| {
            f.filter_columns(["comment_post_ID"])
                .condition("comment_approved = '1'")
        })
        .start()
        .await;
    let gaps = &server.setups[0];
    assert_eq!(
        (gaps.warnings.clone(), gaps.notes.clone()),
        (Vec::new(), Vec::new())
    );
    let mut post = Client::connect(
        &format!("{}/events/comments?comment_post_ID=7", server.url),
        None,
    )
    .await;
    let mut expected = Vec::new();
    for (id, (post_id, minute, approved)) in [(7, 1, "1"), (7, 2, "0"), (8, 3, "1"), (7, 4, "1")]
        .into_iter()
        .enumerate()
    {
        let (sql, local, gmt) = comment(post_id, minute, approved);
        db.exec(&sql).await;
        if post_id == 7 && approved == "1" {
            expected.push(row(id as i64 + 1, post_id, minute, &local, &gmt));
        }
    }
    let got = post.take(2).await;
    assert_eq!(ids(&got), [1, 4]);
    assert_eq!(got.iter().map(Ev::json).collect::<Vec<_>>(), expected);
    post.expect_quiet(Duration::from_millis(300)).await;
    let feed = listed(&server).await;
    assert_eq!(
        feed["latest_row_at"],
        json!("2026-11-30 13:04:00"),
        "{feed}"
    );
    server.stop().await;
}
