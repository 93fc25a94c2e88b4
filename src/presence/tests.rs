use super::*;
use crate::feed::Filter;
use serde_json::json;

fn room(value: &str) -> Scope {
    let mut filter = Filter::default();
    filter.add(0, value.to_owned());
    Scope::of(&filter)
}

/// The presence events in `frames`, as (op, key or member keys).
fn events(frames: &Bytes) -> Vec<(String, String)> {
    let text = std::str::from_utf8(frames).unwrap();
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| {
            let mut lines = f.lines();
            assert_eq!(lines.next(), Some("event: presence"));
            let data: serde_json::Value =
                serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap())
                    .unwrap();
            let op = data["op"].as_str().unwrap().to_owned();
            let who = match op.as_str() {
                "sync" => (data["members"].as_array().unwrap().iter())
                    .map(|m| format!("{}×{}", m["key"].as_str().unwrap(), m["connections"]))
                    .collect::<Vec<_>>()
                    .join(","),
                _ => data["key"].as_str().unwrap().to_owned(),
            };
            (op, who)
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Lets the leave task run what is due.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_joins_once_and_leaves_after_its_last_connection_and_the_grace() {
    let presence = Presence::new(Duration::from_secs(5));
    let stop = CancellationToken::new();
    tokio::spawn(presence.clone().run(stop.clone()));
    let five = room("5");
    let (first, mut watch) = presence.watch(&five, None);
    assert_eq!(events(&first), pairs(&[("sync", "")]));

    let tab1 = presence.connect(&five, "ann", json!({"name": "Ann"}));
    let tab2 = presence.connect(&five, "ann", json!({"name": "Ann"}));
    assert_eq!(events(&watch.next().await), pairs(&[("join", "ann")]));
    assert_eq!(presence.members(&five)["members"][0]["connections"], 2);

    drop(tab1);
    drop(tab2);
    tokio::time::sleep(Duration::from_millis(4900)).await;
    settle().await;
    assert_eq!(presence.member_count(), 1, "still within the grace");
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(events(&watch.next().await), pairs(&[("leave", "ann")]));
    assert_eq!(presence.members(&five)["members"], json!([]));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_is_neither_a_leave_nor_a_join() {
    let presence = Presence::new(Duration::from_secs(5));
    let stop = CancellationToken::new();
    tokio::spawn(presence.clone().run(stop.clone()));
    let five = room("5");
    let (_, mut watch) = presence.watch(&five, None);
    let page = presence.connect(&five, "ann", json!({}));
    assert_eq!(events(&watch.next().await), pairs(&[("join", "ann")]));
    drop(page);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reloaded = presence.connect(&five, "ann", json!({}));
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    let bob = presence.connect(&five, "bob", json!({}));
    // The next change is bob's join: ann neither left nor joined again.
    assert_eq!(events(&watch.next().await), pairs(&[("join", "bob")]));
    drop((reloaded, bob));
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_watcher_resumes_after_its_cursor_or_gets_the_members() {
    let presence = Presence::new(Duration::ZERO);
    let stop = CancellationToken::new();
    tokio::spawn(presence.clone().run(stop.clone()));
    let (five, six) = (room("5"), room("6"));
    let ann = presence.connect(&five, "ann", json!({}));
    let cursor: Cursor = presence.members(&five)["cursor"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let _carl = presence.connect(&six, "carl", json!({}));
    let bob = presence.connect(&five, "bob", json!({}));
    drop(ann);
    settle().await;

    // From the cursor: what happened in room 5 since, and nothing of 6.
    let (first, _) = presence.watch(&five, Some(cursor));
    assert_eq!(events(&first), pairs(&[("join", "bob"), ("leave", "ann")]));
    // Without one, or from another run's: the members.
    let (first, _) = presence.watch(&five, None);
    assert_eq!(events(&first), pairs(&[("sync", "bob×1")]));
    let (first, _) = presence.watch(&five, Some(Cursor(7)));
    assert_eq!(events(&first), pairs(&[("sync", "bob×1")]));
    drop(bob);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_watcher_too_far_behind_the_log_gets_the_members() {
    let presence = Presence::new(Duration::ZERO);
    let five = room("5");
    let (_, mut watch) = presence.watch(&five, None);
    let seats: Vec<Seat> = (0..LOG + 1)
        .map(|n| presence.connect(&five, &format!("k{n:04}"), json!({})))
        .collect();
    let frames = watch.next().await;
    let got = events(&frames);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "sync");
    assert_eq!(got[0].1.split(',').count(), LOG + 1);
    drop(seats);
}

#[test]
fn scopes_ignore_the_order_filters_were_given_in() {
    let mut a = Filter::default();
    a.add(1, "x".into());
    a.add(0, "6".into());
    a.add(0, "5".into());
    let mut b = Filter::default();
    b.add(0, "5".into());
    b.add(0, "6".into());
    b.add(1, "x".into());
    assert_eq!(Scope::of(&a), Scope::of(&b));
    assert_ne!(Scope::of(&a), room("5"));
}

#[test]
fn a_change_reads_op_first_and_carries_no_id() {
    let frame = json::change(
        "join",
        "ann",
        &json!({"name": "Ann", "avatar": "a.png"}),
        42,
    );
    assert_eq!(
        std::str::from_utf8(&frame).unwrap(),
        "event: presence\ndata: {\"op\":\"join\",\"key\":\"ann\",\"meta\":{\"name\":\"Ann\",\"avatar\":\"a.png\"},\"cursor\":\"42\"}\n\n"
    );
}
