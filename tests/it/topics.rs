//! Feeds of Redis and NATS: a Redis stream (ids are entry ids, resumed from
//! the ring or with XRANGE), a Redis channel (live only), Laravel's
//! broadcasts with filters and auth, NATS subjects with and without
//! JetStream, a stream of a topic and a table under one composite id, the
//! start-up errors of their keys, and a Redis that goes away mid-stream.
//! Every test uses names of its own on the shared Redis and NATS.

use crate::common::auth::{hs256, now, SECRET};
use crate::common::*;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod nats;
mod outage;

const REDIS_URL: &str = "redis://127.0.0.1:6379";
const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A name of this test alone.
fn unique(what: &str) -> String {
    format!("rc_{what}_{:08x}", rand::random::<u32>())
}

async fn redis_at(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("Redis at {url}: {e} (start it with .ci/run)"))
}

/// Redis keys deleted when the test ends, however it ends.
struct Keys(Vec<String>);

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", "6379", "DEL"])
            .args(&self.0)
            .stdout(Stdio::null())
            .status();
    }
}

/// Adds an entry of `fields` to stream `key`; its id.
async fn xadd(c: &mut MultiplexedConnection, key: &str, fields: &[(&str, String)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(value);
    }
    cmd.query_async(c).await.unwrap()
}

/// Publishes `payload` on `channel`; how many subscribers got it.
async fn publish(c: &mut MultiplexedConnection, channel: &str, payload: &str) -> i64 {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(c)
        .await
        .unwrap()
}

/// Waits until rowcast has subscribed to `channel`.
async fn subscribed(c: &mut MultiplexedConnection, channel: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(c)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "nothing subscribed to {channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ids_of(events: &[Ev]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn catch_ups(server: &Server) -> u64 {
    (server.feeds[0].health.counters.catch_up_queries).load(Ordering::SeqCst)
}

/// A server with feed `events` of Redis stream `key`, filtered by
/// `room_id`, with a ring of two.
async fn stream_feed(key: &str) -> Server {
    Rowcast::without_database()
        .topic("events", "redis-stream", REDIS_URL, |f| {
            f.set("stream", key)
                .filter_columns(["room_id"])
                .ring_size(2)
        })
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stream_is_followed_resumed_and_filtered() {
    let key = unique("stream");
    let _keys = Keys(vec![key.clone()]);
    let server = stream_feed(&key).await;
    let url = format!("{}/events/events", server.url);
    let mut live = Client::connect(&url, None).await;
    let mut room_5 = Client::connect(&format!("{url}?room_id=5"), None).await;
    let mut c = redis_at(REDIS_URL).await;
    let rooms = [5, 6, 5, 7, 5];
    let mut ids = Vec::new();
    for (n, room) in rooms.into_iter().enumerate() {
        let data = json!({ "n": n, "room_id": room }).to_string();
        ids.push(xadd(&mut c, &key, &[("data", data)]).await);
    }

    let events = live.take(5).await;
    assert_eq!(ids_of(&events), ids, "event ids are the entries' ids");
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event.event, "message");
        assert_eq!(event.json(), json!({ "n": n, "room_id": rooms[n] }));
    }
    live.expect_quiet(Duration::from_millis(300)).await;
    let matching = room_5.take(3).await;
    assert_eq!(
        ids_of(&matching),
        [ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    room_5.expect_quiet(Duration::from_millis(300)).await;

    // From the 4th, in the ring of two: the 5th, and Redis is not asked.
    let asked = catch_ups(&server);
    let mut from_4th = Client::connect(&url, Some(&ids[3])).await;
    assert_eq!(ids_of(&from_4th.take(1).await), [ids[4].clone()]);
    assert_eq!(catch_ups(&server), asked);
    // From the 2nd, before the ring: the 3rd to 5th, read with XRANGE.
    let mut from_2nd = Client::connect(&url, Some(&ids[1])).await;
    let resumed = from_2nd.take(3).await;
    assert_eq!(ids_of(&resumed), &ids[2..]);
    assert_eq!(resumed[0].json()["n"], 2);
    assert!(catch_ups(&server) > asked, "the catch-up read Redis");
    from_2nd.expect_quiet(Duration::from_millis(300)).await;

    // `?after=` and JSON polling resume the same way.
    let (status, body) = get_json(&format!(
        "{}/feeds/events/rows?after={}&room_id=5",
        server.url, ids[0]
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let n: Vec<&Value> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["n"])
        .collect();
    assert_eq!(n, [&json!(2), &json!(4)]);
    assert_eq!(body["cursor"], ids[4].as_str());
    let (_, feeds) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(feeds["feeds"][0]["source"], "redis-stream");
    assert_eq!(feeds["feeds"][0]["cursor"], ids[4].as_str());

    // Live again after the catch-up.
    let next = xadd(&mut c, &key, &[("data", json!({ "n": 5 }).to_string())]).await;
    assert_eq!(ids_of(&from_2nd.take(1).await), [next.as_str()]);
    assert_eq!(ids_of(&live.take(1).await), [next.as_str()]);
    server.stop().await;
}

/// A client resuming from an id the stream has trimmed since is told so by
/// a `reset` event, whatever its filter, then gets what the stream kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_redis_stream_says_reset_to_a_client_that_missed_entries() {
    let key = unique("trimmed");
    let _keys = Keys(vec![key.clone()]);
    let server = stream_feed(&key).await;
    let url = format!("{}/events/events", server.url);
    let mut live = Client::connect(&url, None).await;
    let mut c = redis_at(REDIS_URL).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        let data = json!({ "n": n, "room_id": 5 }).to_string();
        ids.push(xadd(&mut c, &key, &[("data", data)]).await);
    }
    assert_eq!(ids_of(&live.take(6).await), ids);
    let _: i64 = redis::cmd("XTRIM")
        .arg(&key)
        .arg("MAXLEN")
        .arg(2)
        .query_async(&mut c)
        .await
        .unwrap();

    // From the 2nd: the 3rd and 4th are gone.
    let mut behind = Client::connect(&format!("{url}?room_id=5"), Some(&ids[1])).await;
    let events = behind.take(3).await;
    assert_eq!(events[0].event, "reset", "{events:?}");
    assert_eq!(
        events[0].json(),
        json!({"op": "reset", "reason": "events after the cursor are no longer kept"})
    );
    assert_eq!(ids_of(&events[1..]), &ids[4..]);
    behind.expect_quiet(Duration::from_millis(300)).await;
    // The reset's id is just before the oldest entry kept: resuming from
    // it misses nothing more.
    let mut after_reset = Client::connect(&url, Some(&events[0].id)).await;
    assert_eq!(ids_of(&after_reset.take(2).await), &ids[4..]);
    after_reset.expect_quiet(Duration::from_millis(300)).await;
    // JSON polling gets the same reset first.
    let (status, body) = get_json(&format!(
        "{}/feeds/events/rows?after={}",
        server.url, ids[0]
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["op"], "reset", "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_channel_is_live_and_passes_over_what_is_not_json() {
    let channel = unique("channel");
    let server = Rowcast::without_database()
        .topic("chat", "redis-channel", REDIS_URL, |f| {
            f.set("channel", channel.as_str())
        })
        .start()
        .await;
    let url = format!("{}/events/chat", server.url);
    let mut client = Client::connect(&url, None).await;
    let mut c = redis_at(REDIS_URL).await;
    subscribed(&mut c, &channel).await;
    publish(&mut c, &channel, r#"{"body":"one"}"#).await;
    publish(&mut c, &channel, "not json {").await;
    publish(&mut c, &channel, r#"{"body":"two"}"#).await;
    let events = client.take(2).await;
    assert_eq!(bodies(&events), ["one", "two"]);
    assert_eq!(ids_of(&events), ["", ""], "pub/sub events carry no id");
    client.expect_quiet(Duration::from_millis(300)).await;
    let metrics = metrics(&server).await;
    assert!(
        metrics.contains("rowcast_skipped_messages_total{feed=\"chat\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("rowcast_events_total{feed=\"chat\"} 2\n"));

    // Whatever id a client comes back with, it starts live.
    drop(client);
    let mut again = Client::connect(&url, Some("1733100000000-5")).await;
    publish(&mut c, &channel, r#"{"body":"three"}"#).await;
    assert_eq!(bodies(&again.take(1).await), ["three"]);
    let (status, body) = get_json(&format!("{}/feeds/chat/rows?after=1", server.url)).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("live_only")),
        "{body}"
    );
    let (_, feed) = get_json(&format!("{}/feeds/chat", server.url)).await;
    assert_eq!(feed["cursor"], Value::Null);
    assert_eq!(feed["cursor_type"], "none (live only)");
    server.stop().await;
}

/// What Laravel's Redis broadcaster publishes for `MessageSent` in a room.
fn broadcast(id: u32, room: u32, body: &str) -> String {
    json!({
        "event": "App\\Events\\MessageSent",
        "data": { "message": { "id": id, "room_id": room, "body": body }, "room_id": room },
        "socket": null,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn laravel_broadcasts_are_named_events_filtered_and_bounded_by_auth() {
    // The app's Redis prefix, as `database.redis.options.prefix` sets it.
    let prefix = format!("{}_database_", unique("laravel"));
    let server = Rowcast::without_database()
        .auth("secret", SECRET)
        .topic("chat", "redis-channel", REDIS_URL, |f| {
            f.set("channel", format!("{prefix}private-chat.*"))
                .set("format", "laravel")
                .filter_columns(["room_id"])
                .auth_filter("room_id", "room_ids")
        })
        .start()
        .await;
    let url = format!("{}/events/chat", server.url);
    let mut c = redis_at(REDIS_URL).await;
    // A pattern subscription: wait until a publish on a room nobody reads
    // reaches rowcast.
    let deadline = Instant::now() + WAIT;
    while publish(&mut c, &format!("{prefix}private-chat.0"), "probe").await == 0 {
        assert!(Instant::now() < deadline, "rowcast never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let room_5 = hs256(json!({ "sub": "u5", "room_ids": [5], "exp": now() + 600 }));
    let mut bounded = Client::connect(&format!("{url}?access_token={room_5}"), None).await;
    let mut asked = Client::connect(&format!("{url}?room_id=5&access_token={room_5}"), None).await;
    let wider = reqwest::get(format!("{url}?room_id=6&access_token={room_5}"))
        .await
        .unwrap();
    assert_eq!(wider.status(), 403, "a room the token does not allow");

    publish(
        &mut c,
        &format!("{prefix}private-chat.6"),
        &broadcast(1, 6, "not yours"),
    )
    .await;
    // Exactly Laravel's bytes: `App\\Events\\…` is a JSON-escaped backslash.
    let laravel = r#"{"event":"App\\Events\\MessageSent","data":{"message":{"id":1,"room_id":5,"body":"hi"},"room_id":5},"socket":null}"#;
    publish(&mut c, &format!("{prefix}private-chat.5"), laravel).await;
    for client in [&mut bounded, &mut asked] {
        let events = client.take(1).await;
        assert_eq!(events[0].event, r"App\Events\MessageSent");
        assert_eq!(events[0].id, "");
        // `data` as the app wrote it, its keys in their order.
        assert_eq!(
            events[0].data,
            r#"{"message":{"id":1,"room_id":5,"body":"hi"},"room_id":5}"#
        );
        client.expect_quiet(Duration::from_millis(300)).await;
    }
    publish(
        &mut c,
        &format!("{prefix}private-chat.5"),
        &broadcast(2, 5, "again"),
    )
    .await;
    let events = bounded.take(1).await;
    assert_eq!(events[0].json()["message"]["body"], "again");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stream_and_a_table_resume_with_one_composite_id() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("messages").await;
    let key = unique("stream");
    let _keys = Keys(vec![key.clone()]);
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f)
        .topic("events", "redis-stream", REDIS_URL, |f| {
            f.set("stream", key.as_str())
        })
        .start()
        .await;
    let url = format!("{}/events?feed=messages&feed=events", server.url);
    let mut c = redis_at(REDIS_URL).await;
    let mut client = Client::connect(&url, None).await;
    let row = db.insert(&t, 1, "from the table").await;
    let from_table = client.take(1).await;
    assert_eq!(from_table[0].event, "messages");
    let entry = xadd(
        &mut c,
        &key,
        &[("data", json!({ "body": "from redis" }).to_string())],
    )
    .await;
    let from_redis = client.take(1).await;
    assert_eq!(from_redis[0].event, "events");
    assert_eq!(from_redis[0].id, format!("messages:{row},events:{entry}"));
    drop(client);

    let row_2 = db.insert(&t, 1, "table, while away").await;
    let entry_2 = xadd(
        &mut c,
        &key,
        &[("data", json!({ "body": "redis, while away" }).to_string())],
    )
    .await;
    let mut resumed = Client::connect(&url, Some(&from_redis[0].id)).await;
    let events = resumed.take(2).await;
    // The second event's id holds both feeds' new positions.
    assert_eq!(events[1].id, format!("messages:{row_2},events:{entry_2}"));
    let mut got: Vec<(String, Value)> = (events.iter())
        .map(|e| (e.event.clone(), e.json()["body"].clone()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("events".to_owned(), json!("redis, while away")),
            ("messages".to_owned(), json!("table, while away")),
        ]
    );
    resumed.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

#[test]
fn mistakes_in_topic_feeds_are_named() {
    let topic = |settings: fn(Feed) -> Feed| {
        Rowcast::without_database()
            .topic("x", "redis-stream", REDIS_URL, |f| {
                settings(f.set("stream", "s"))
            })
            .try_config()
            .unwrap_err()
    };
    assert_eq!(
        topic(|f| f.unset("url")),
        "feed `x`: `url`: is required for a `redis-stream` feed (redis://host:6379, or rediss://… for TLS)"
    );
    assert_eq!(
        topic(|f| f.set("source", "kafka")),
        "feed `x`: `source`: `kafka` is not a source; valid: table, redis-stream, redis-channel, nats"
    );
    assert_eq!(
        topic(|f| f.condition("type = 'message'")),
        "feed `x`: `where`: applies to table feeds only; a `redis-stream` feed reads no table"
    );
    assert_eq!(
        topic(|f| f.id_column("id")),
        "feed `x`: `id_column`: applies to table feeds only; a `redis-stream` feed reads no table"
    );
    assert_eq!(
        topic(|f| f.set("url", "nats://app:s3cret@127.0.0.1:4222")),
        "feed `x`: `url`: `nats://app:***@127.0.0.1:4222` is not a Redis URL; use redis://host:6379, or rediss://… for TLS"
    );
    assert_eq!(
        topic(|f| f.set("channel", "c")),
        "feed `x`: `channel`: applies to `source = \"redis-channel\"` feeds only"
    );
    assert_eq!(
        topic(|f| f.unset("stream")),
        "feed `x`: `stream`: is required for a `redis-stream` feed: one word, with no spaces"
    );
    assert_eq!(
        topic(|f| f.set("format", "pusher")),
        "feed `x`: `format`: `pusher` is not a format; valid: json, laravel"
    );
    let table = Rowcast::at("sqlite://x.db")
        .feed("m", "m", |f| f.set("url", REDIS_URL))
        .try_config()
        .unwrap_err();
    assert_eq!(
        table,
        "feed `m`: `url`: applies to feeds of `source = \"redis-stream\"`, `\"redis-channel\"` or `\"nats\"` only"
    );
    // No database is needed by feeds of Redis alone, and is by a table's.
    let config = Rowcast::without_database()
        .topic("x", "redis-channel", REDIS_URL, |f| f.set("channel", "c"))
        .config();
    assert_eq!(config.database_url, None);
    let mixed = Rowcast::without_database()
        .topic("x", "redis-channel", REDIS_URL, |f| f.set("channel", "c"))
        .feed("m", "m", |f| f)
        .try_config()
        .unwrap_err();
    assert_eq!(
        mixed,
        "no database: set --database-url, DATABASE_URL or `database_url` in the config file"
    );
}
