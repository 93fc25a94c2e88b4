//! Presence across instances: three rowcast processes share a feed's
//! presence on Redis and on NATS. Members connected to any instance are
//! seen on every one, a key with streams on two instances is one member,
//! and when one instance is killed (`kill -9`, so it says nothing) its
//! members leave everywhere within the TTL, and only they.

use crate::cluster::{free_listen, prefix, Instance, NATS_URL, REDIS_URL};
use crate::common::wire::Wire;
use crate::common::*;
use crate::presence::{watch_until, Seen};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_instances_are_seen_everywhere_and_a_killed_ones_leave_on_redis() {
    members_everywhere(REDIS_URL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_instances_are_seen_everywhere_and_a_killed_ones_leave_on_nats() {
    members_everywhere(NATS_URL).await
}

async fn members_everywhere(bus: &str) {
    let db = TestDb::new(Kind::Sqlite).await;
    let table = db.messages("messages").await;
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("rowcast.toml");
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| {
            f.filter_columns(["room_id"])
                .set("presence", true)
                .set("presence_grace", "1s")
        })
        .cluster(bus, &prefix());
    std::fs::write(&config_file, config.toml()).unwrap();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&config_file, &free_listen()).await);
    }
    let mut watchers = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        let url = format!("{}{}&presence=1", instance.base, path_of(&format!("w{i}")));
        watchers.push((Client::connect(&url, None).await, Seen::default()));
    }
    let mut members = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        for tab in ["a", "b"] {
            let key = format!("i{i}-{tab}");
            members.push(Wire::open(&instance.base, &path_of(&key), "").await);
        }
    }
    // One key with a tab on instance 0 and one on instance 2.
    for i in [0, 2] {
        members.push(Wire::open(&instances[i].base, &path_of("roamer"), "").await);
    }
    let everyone = [
        "i0-a", "i0-b", "i1-a", "i1-b", "i2-a", "i2-b", "roamer", "w0", "w1", "w2",
    ];
    for (client, seen) in &mut watchers {
        watch_until(client, seen, "every instance's members", |s| {
            s.keys() == everyone
        })
        .await;
    }
    // Each instance counts the roamer's streams on the others too.
    for instance in &instances {
        let deadline = Instant::now() + WAIT;
        loop {
            let list = members_of(&instance.base).await;
            assert_eq!(list.len(), everyone.len(), "{list:?}");
            if roamer(&list)["connections"] == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "roamer's two streams: {list:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A cursor is one instance's: on another, the stream starts with the
    // whole list.
    let (_, list) = get_json(&format!(
        "{}/presence/messages?room_id=5",
        instances[0].base
    ))
    .await;
    let cursor = list["cursor"].as_str().unwrap();
    let url = format!(
        "{}/events/messages?room_id=5&presence=1&presence_after={cursor}",
        instances[1].base
    );
    let first = Client::connect(&url, None).await.take(1).await[0].json();
    assert_eq!(
        (
            first["op"].as_str(),
            first["members"].as_array().map(Vec::len)
        ),
        (Some("sync"), Some(everyone.len()))
    );

    // Instance 2 dies without a word: its members leave everywhere, once;
    // the roamer stays, since instance 0 has it too.
    let killed = Instant::now();
    instances[2].kill();
    let left = ["i0-a", "i0-b", "i1-a", "i1-b", "roamer", "w0", "w1"];
    for (client, seen) in watchers.iter_mut().take(2) {
        let before = seen.log.len();
        watch_until(client, seen, "the dead instance's leaves", |s| {
            s.keys() == left
        })
        .await;
        let mut leaves = seen.log[before..].to_vec();
        leaves.sort();
        assert_eq!(leaves, ["leave i2-a", "leave i2-b", "leave w2"]);
    }
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a dead instance's members leave within the TTL (3 s) and a heartbeat, took {took:?}"
    );
    eprintln!("killed instance → its members' leaves: {took:?}");
    // An instance that starts now asks the others for their lists: its
    // watcher has every member at once, without waiting for joins.
    let late = Instance::start(&config_file, &free_listen()).await;
    let started = Instant::now();
    let url = format!("{}{}&presence=1", late.base, path_of("w3"));
    let mut seen = Seen::default();
    let mut watcher = Client::connect(&url, None).await;
    let with_w3 = ["i0-a", "i0-b", "i1-a", "i1-b", "roamer", "w0", "w1", "w3"];
    watch_until(&mut watcher, &mut seen, "the others' members", |s| {
        s.keys() == with_w3
    })
    .await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a new instance has the others' lists within a heartbeat or two (whole lists otherwise come every 10 s), took {took:?}"
    );
    assert!(
        seen.log.iter().all(|l| !l.starts_with("leave")),
        "nobody left: {:?}",
        seen.log
    );
    let roamer = roamer(&members_of(&instances[1].base).await);
    assert_eq!(
        (roamer["connections"].clone(), roamer["meta"].clone()),
        (json!(1), json!({}))
    );
    drop(members);
}

/// The members `GET /presence/messages?room_id=5` lists on `base`.
async fn members_of(base: &str) -> Vec<serde_json::Value> {
    let (_, list) = get_json(&format!("{base}/presence/messages?room_id=5")).await;
    list["members"].as_array().unwrap().clone()
}

fn roamer(list: &[serde_json::Value]) -> serde_json::Value {
    list.iter().find(|m| m["key"] == "roamer").unwrap().clone()
}

/// A member's stream of room 5, as `key`.
fn path_of(key: &str) -> String {
    format!("/events/messages?room_id=5&presence_key={key}")
}
