//! Presence: who is connected to a scope (a feed and a filter, e.g. a
//! room), from the streams themselves. Browser tabs in headless Chromium
//! join, reload and close; a client whose network vanishes without a FIN
//! leaves within `presence_timeout`; a thousand clients join and leave at
//! once while rows flow; tokens bound whose presence a client sees; a
//! member list from `/presence` is followed from its cursor with nothing
//! between.

use crate::clients::driver::{Client as Browser, Driver, Saw};
use crate::common::auth::{hs256, now, SECRET};
use crate::common::blackhole::Blackhole;
use crate::common::wire::Wire;
use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A presence feed of `table`, by `room_id`.
fn presence_feed(db: &TestDb, table: &str) -> Rowcast {
    Rowcast::on(db).feed("messages", table, |f| {
        f.filter_columns(["room_id"])
            .set("presence", true)
            .set("presence_grace", "2s")
    })
}

/// The same, with tokens: `room_ids` bound the rooms, `name` is shown.
fn presence_feed_with_auth(db: &TestDb, table: &str) -> Rowcast {
    Rowcast::on(db)
        .feed("messages", table, |f| {
            f.filter_columns(["room_id"])
                .auth_filter("room_id", "room_ids")
                .set("presence", true)
                .set("presence_meta", vec!["name"])
                .set("presence_grace", "2s")
        })
        .auth("secret", SECRET)
}

fn token(sub: &str, name: &str, rooms: &[i64]) -> String {
    hs256(json!({ "sub": sub, "name": name, "room_ids": rooms, "exp": now() + 3600 }))
}

/// What a watcher's presence events add up to: each member's key and meta,
/// and every event it applied, as `op key`.
#[derive(Default, Debug)]
pub struct Seen {
    pub members: BTreeMap<String, Value>,
    pub log: Vec<String>,
}

impl Seen {
    /// Applies one presence event, checking that it makes sense: a join of
    /// a key not yet there, a leave of one that is.
    pub fn apply(&mut self, event: &Ev) {
        assert_eq!(event.event, "presence", "{event:?}");
        let data = event.json();
        let op = data["op"].as_str().unwrap();
        match op {
            "sync" => {
                self.members = (data["members"].as_array().unwrap().iter())
                    .map(|m| (m["key"].as_str().unwrap().to_owned(), m["meta"].clone()))
                    .collect();
                self.log.push(format!("sync {}", self.keys().join(",")));
            }
            "join" | "leave" => {
                let key = data["key"].as_str().unwrap().to_owned();
                let was = match op {
                    "join" => self.members.insert(key.clone(), data["meta"].clone()),
                    _ => self.members.remove(&key),
                };
                assert_eq!(was.is_some(), op == "leave", "{op} of {key} in {self:?}");
                self.log.push(format!("{op} {key}"));
            }
            other => panic!("unknown presence op {other}: {data}"),
        }
        assert!(data["cursor"].as_str().unwrap().parse::<u64>().is_ok());
    }

    pub fn keys(&self) -> Vec<String> {
        self.members.keys().cloned().collect()
    }
}

/// Reads `client`'s presence events into `seen` until `done` holds.
pub async fn watch_until(
    client: &mut Client,
    seen: &mut Seen,
    what: &str,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next(left).await {
            Some(event) if event.event == "presence" => seen.apply(&event),
            Some(_) => {}
            None => panic!("no {what} within {WAIT:?}: {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_tab_joins_a_reload_is_neither_a_leave_nor_a_join_and_closing_it_leaves() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("presence_tabs").await;
    let server = presence_feed_with_auth(&db, &t).start().await;
    let room = |who: &str, name: &str| {
        format!(
            "{}/events/messages?room_id=5&presence=1&access_token={}",
            server.url,
            token(who, name, &[5])
        )
    };
    let mut bob = Client::connect(&room("bob", "Bob"), None).await;
    let mut seen = Seen::default();
    watch_until(&mut bob, &mut seen, "bob's list", |s| !s.log.is_empty()).await;
    assert_eq!(seen.log, ["sync bob"]);

    let mut browser = Driver::start(Browser::ChromiumTabs, &server.url, "/", &[]);
    let path = room("ann", "Ann").replace(&server.url, "");
    browser
        .command("open", "ann", json!({ "path": path }))
        .await;
    watch_until(&mut bob, &mut seen, "ann's join", |s| s.members.len() == 2).await;
    assert_eq!(seen.log, ["sync bob", "join ann"]);
    assert_eq!(
        seen.members["ann"],
        json!({ "name": "Ann" }),
        "meta from ann's token"
    );
    // The tab's own stream starts with the room's list, itself in it.
    browser
        .wait_for("the tab's list", |d| {
            d.events("ann").iter().any(|e| e.event == "presence")
        })
        .await;
    let list = browser.events("ann")[0].json();
    assert_eq!(list["op"], "sync");
    let keys: Vec<&str> = (list["members"].as_array().unwrap().iter())
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["ann", "bob"]);
    // Rows reach the tab beside its presence events.
    let id = db.insert(&t, 5, "hello").await;
    let row = bob.take(1).await;
    assert_eq!(
        (row[0].event.as_str(), row[0].id.clone()),
        ("message", id.to_string())
    );
    browser
        .wait_for("the row", |d| {
            d.events("ann").iter().any(|e| e.event == "message")
        })
        .await;
    let row = browser
        .events("ann")
        .into_iter()
        .find(|e| e.event == "message")
        .unwrap();
    assert_eq!(
        (row.id.clone(), row.json()["body"].clone()),
        (id.to_string(), json!("hello"))
    );

    // A reload closes the stream and opens it again within the grace.
    let mark = browser.mark();
    browser.command("reload", "ann", json!({})).await;
    browser
        .wait_for("the reloaded tab's list", |d| {
            d.saw_since("ann", mark)
                .iter()
                .any(|s| matches!(s, Saw::Event { event, .. } if event == "presence"))
        })
        .await;
    bob.expect_quiet(Duration::from_secs(3)).await;
    let (status, members) = get_json(&format!(
        "{}/presence/messages?room_id=5&access_token={}",
        server.url,
        token("bob", "Bob", &[5])
    ))
    .await;
    assert_eq!(status, 200);
    let ann = &members["members"][0];
    assert_eq!(
        (ann["key"].as_str(), ann["connections"].as_u64()),
        (Some("ann"), Some(1))
    );

    // Closing the tab is a leave, once the grace has passed.
    let closed = Instant::now();
    browser.command("close", "ann", json!({})).await;
    watch_until(&mut bob, &mut seen, "ann's leave", |s| s.members.len() == 1).await;
    let took = closed.elapsed();
    assert_eq!(seen.log, ["sync bob", "join ann", "leave ann"]);
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(4)).contains(&took),
        "a closed tab leaves after the 2 s grace, took {took:?}"
    );
    eprintln!("closed tab → leave: {took:?} (grace 2 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_network_vanishes_leaves_within_presence_timeout() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("presence_vanish").await;
    // A keep-alive every 1 s, a grace of 1 s: a vanished client's
    // connection ends after 1.5 s of unanswered writes (and the kernel's
    // half second).
    let server = Rowcast::on(&db)
        .set("keep_alive", "1s")
        .feed("messages", &t, |f| {
            f.filter_columns(["room_id"])
                .set("presence", true)
                .set("presence_grace", "1s")
                .set("presence_timeout", "4s")
        })
        .start()
        .await;
    let url = |key: &str| {
        format!(
            "{}/events/messages?room_id=5&presence=1&presence_key={key}",
            server.url
        )
    };
    let mut watcher = Client::connect(&url("watcher"), None).await;
    let mut ghost = Wire::open(
        &server.url,
        "/events/messages?room_id=5&presence_key=ghost",
        "",
    )
    .await;
    assert!(ghost.head().await.starts_with("HTTP/1.1 200"));
    let mut seen = Seen::default();
    watch_until(&mut watcher, &mut seen, "the ghost's join", |s| {
        s.members.contains_key("ghost")
    })
    .await;

    // From here on nothing of the ghost's connection gets through, either
    // way: no FIN, no reset, no ACK.
    let port = ghost.socket.local_addr().unwrap().port();
    let cut = Instant::now();
    let blackhole = Blackhole::cut(server.address.port(), port);
    watch_until(&mut watcher, &mut seen, "the ghost's leave", |s| {
        !s.members.contains_key("ghost")
    })
    .await;
    let took = cut.elapsed();
    drop(blackhole);
    assert_eq!(
        seen.log,
        ["sync watcher", "join ghost", "leave ghost"],
        "the ghost left once"
    );
    assert!(
        took < Duration::from_millis(4200),
        "a vanished client leaves within presence_timeout (4 s), took {took:?}"
    );
    eprintln!("vanished client → leave: {took:?} (presence_timeout 4 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_joining_and_leaving_at_once_block_no_row_and_lose_no_change() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("presence_storm").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.filter_columns(["room_id"])
                .set("presence", true)
                .set("presence_grace", "1s")
        })
        .start()
        .await;
    let member = |key: &str| format!("/events/messages?room_id=5&presence_key={key}");
    let mut watchers = Vec::new();
    for n in 0..3 {
        let url = format!(
            "{}{}&presence=1",
            server.url,
            member(&format!("watcher{n}"))
        );
        watchers.push((Client::connect(&url, None).await, Seen::default()));
    }
    let mut reader =
        Client::connect(&format!("{}/events/messages?room_id=5", server.url), None).await;
    for (client, seen) in &mut watchers {
        watch_until(client, seen, "the watchers", |s| s.members.len() == 3).await;
    }

    // Rows go on while a thousand join and half of them leave again.
    let write = async {
        let mut ids = Vec::new();
        for n in 0..100 {
            ids.push(db.insert(&t, 5, &format!("row {n}")).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    };
    let started = Instant::now();
    let storm = async {
        let joins: Vec<_> = (0..1000)
            .map(|n| {
                let base = server.url.clone();
                let path = member(&format!("m{n:04}"));
                tokio::spawn(async move {
                    let mut wire = Wire::open(&base, &path, "").await;
                    assert!(wire.head().await.starts_with("HTTP/1.1 200"));
                    wire
                })
            })
            .collect();
        let mut members = Vec::new();
        for join in joins {
            members.push(join.await.unwrap());
        }
        // Every other one goes, all at once.
        let mut stay = Vec::new();
        for (n, wire) in members.into_iter().enumerate() {
            if n % 2 == 1 {
                stay.push(wire);
            }
        }
        stay
    };
    let (ids, stay) = tokio::join!(write, storm);
    let expected: Vec<String> = (0..3)
        .map(|n| format!("watcher{n}"))
        .chain((0..1000).filter(|n| n % 2 == 1).map(|n| format!("m{n:04}")))
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    for (client, seen) in &mut watchers {
        watch_until(client, seen, "the storm's net changes", |s| {
            s.keys() == expected_sorted
        })
        .await;
    }
    eprintln!(
        "1000 joins and 500 leaves seen by every watcher after {:?}",
        started.elapsed()
    );
    for (_, seen) in &watchers {
        let joined = seen.log.iter().filter(|l| l.starts_with("join m")).count();
        let left = seen.log.iter().filter(|l| l.starts_with("leave m")).count();
        let synced = seen.log.iter().filter(|l| l.starts_with("sync")).count();
        assert_eq!(
            (joined, left, synced),
            (1000, 500, 1),
            "{:?}",
            &seen.log[..8]
        );
    }
    // The server's list is the same: each member once, with its stream.
    let (_, list) = get_json(&format!("{}/presence/messages?room_id=5", server.url)).await;
    let listed: Vec<(String, u64)> = (list["members"].as_array().unwrap().iter())
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_owned(),
                m["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    let one_each: Vec<(String, u64)> = expected_sorted.iter().map(|k| (k.clone(), 1)).collect();
    assert_eq!(listed, one_each);
    let rows = reader.take(ids.len()).await;
    assert_eq!(
        crate::common::ids(&rows),
        ids,
        "every row, in order, during the storm"
    );
    drop(stay);
}

#[tokio::test]
async fn a_token_sees_presence_only_of_the_rooms_it_may_read() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("presence_auth").await;
    let server = presence_feed_with_auth(&db, &t).start().await;
    let five = token("ann", "Ann", &[5]);
    let six = token("carl", "Carl", &[6]);
    let _carl = Client::connect(
        &format!(
            "{}/events/messages?room_id=6&access_token={six}",
            server.url
        ),
        None,
    )
    .await;
    let members = |query: &str, token: &str| {
        format!(
            "{}/presence/messages?{query}&access_token={token}",
            server.url
        )
    };
    let (status, body) = get_json(&members("room_id=6", &five)).await;
    assert_eq!((status, &body["error"]), (403, &json!("forbidden")));
    assert_eq!(
        body["detail"],
        "`room_id=6` is outside what the token allows"
    );
    let refused = reqwest::get(format!(
        "{}/events/messages?room_id=6&presence=1&access_token={five}",
        server.url
    ))
    .await
    .unwrap();
    assert_eq!(refused.status(), 403);
    // Asking for no room is asking for the token's rooms: room 5 only.
    let (status, body) = get_json(&members("x=1", &five).replace("x=1&", "")).await;
    assert_eq!((status, body["members"].clone()), (200, json!([])));
    let (status, body) = get_json(&members("room_id=6", &six)).await;
    assert_eq!(status, 200);
    assert_eq!(body["members"][0]["key"], "carl");
    assert_eq!(body["members"][0]["meta"], json!({ "name": "Carl" }));
    // With tokens, the key is the token's: a client cannot choose one.
    let (status, body) = get_json(&format!(
        "{}/events/messages?room_id=5&presence_key=carl&access_token={five}",
        server.url
    ))
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["detail"],
        "`presence_key`: is not taken with auth on: a member's key is its token's `sub`"
    );
}

#[tokio::test]
async fn a_list_from_presence_is_followed_from_its_cursor_with_nothing_between() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("presence_cursor").await;
    let server = presence_feed(&db, &t).start().await;
    let stream = |key: &str| {
        format!(
            "{}/events/messages?room_id=5&presence_key={key}",
            server.url
        )
    };
    let _ann = Client::connect(&stream("ann"), None).await;
    let (_, list) = get_json(&format!("{}/presence/messages?room_id=5", server.url)).await;
    let members: Vec<&str> = (list["members"].as_array().unwrap().iter())
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(members, ["ann"]);
    assert_eq!(list["members"][0]["connections"], 1);
    assert!(list["members"][0]["since"].as_str().unwrap().ends_with('Z'));
    // Between the list and the stream, bob joins: the stream has it.
    let _bob = Client::connect(&stream("bob"), None).await;
    let cursor = list["cursor"].as_str().unwrap();
    let mut page = Client::connect(
        &format!("{}&presence=1&presence_after={cursor}", stream("page")),
        None,
    )
    .await;
    let events = page.take(2).await;
    let ops: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            let d = e.json();
            (
                d["op"].as_str().unwrap().into(),
                d["key"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("join".into(), "bob".into()),
            ("join".into(), "page".into())
        ]
    );
    // A presence event moves no Last-Event-ID: it keeps the position
    // the stream announced, and rows keep their ids.
    assert!(
        events
            .iter()
            .all(|e| e.event == "presence" && e.id == "start"),
        "{events:?}"
    );
    let id = db.insert(&t, 5, "after").await;
    let row = page.take(1).await;
    assert_eq!(
        (row[0].event.as_str(), row[0].id.clone()),
        ("message", id.to_string())
    );
}

#[tokio::test]
async fn presence_parameters_get_clear_errors() {
    let db = TestDb::new(Kind::Sqlite).await;
    let t = db.messages("presence_errors").await;
    let server = presence_feed(&db, &t)
        .feed("plain", &t, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let cases = [
        (
            "/events/plain?presence=1",
            "presence_off",
            "feed `plain` does not track presence; set `presence = true` on it",
        ),
        (
            "/presence/plain",
            "presence_off",
            "feed `plain` does not track presence; set `presence = true` on it",
        ),
        (
            "/events/messages?presence=yes",
            "bad_parameter",
            "`presence`: must be 1 (watch the scope's members) or 0",
        ),
        (
            "/events/messages?presence_after=12",
            "bad_parameter",
            "`presence_after`: needs `presence=1`",
        ),
        (
            "/events/messages?presence=1&presence_after=soon",
            "bad_parameter",
            "`presence_after`: is not a presence cursor: use the `cursor` of /presence/{feed} or of a presence event",
        ),
        (
            "/events?feed=messages&presence=1",
            "bad_parameter",
            "`presence`: `presence` is for one feed's stream: /events/{feed}?presence=1",
        ),
        (
            "/presence/messages?room=5",
            "unknown_filter",
            "`room` is not a filter of feed `messages`; filters: room_id",
        ),
    ];
    for (path, code, detail) in cases {
        let (status, body) = get_json(&format!("{}{path}", server.url)).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(
            (body["error"].as_str(), body["detail"].as_str()),
            (Some(code), Some(detail)),
            "{path}"
        );
    }
    let long = "k".repeat(201);
    let (status, body) = get_json(&format!(
        "{}/events/messages?presence_key={long}",
        server.url
    ))
    .await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (400, Some("`presence_key`: must be 1 to 200 bytes"))
    );
}
