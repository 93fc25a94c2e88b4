//! Framing, the ring, joining and subscribers, with rows published by
//! hand: a feed built in memory, whose reader is never asked.

use super::testing::{feed, BUFFER};
use super::*;

fn rows(ids: &[i128]) -> Vec<Row> {
    ids.iter()
        .map(|&id| Row {
            id,
            json: Some(format!("{{\"id\":{id}}}")),
            filters: vec![Some((id % 2).to_string())],
            unless_filters: None,
            event: None,
        })
        .collect()
}

fn ids(delivery: &Delivery) -> Vec<i128> {
    delivery.events().iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn frames_are_built_once_and_sliced() {
    let (events, frames) = frame::frame(
        rows(&[1, 2]),
        None,
        false,
        crate::cursor::Style::Ids(crate::cursor::IdRange::Signed),
    );
    assert_eq!(
        &frames[..],
        b"id: 1\ndata: {\"id\":1}\n\nid: 2\ndata: {\"id\":2}\n\n"
    );
    assert_eq!(&events[1].frame[..], b"id: 2\ndata: {\"id\":2}\n\n");
    assert_eq!(&events[1].data[..], b"{\"id\":2}");
    assert_eq!(events[1].filters[0].as_deref(), Some("0"));
}

#[tokio::test]
async fn rows_without_json_move_the_head_but_make_no_event() {
    let feed = feed(10, Cursor::At(0));
    let mut batch = rows(&[1, 2, 3]);
    batch[1].json = None;
    feed.publish(batch, Cursor::At(3));
    assert_eq!(feed.head().0, Cursor::At(3));
    let Joined::Live { backlog, .. } = feed.join(Cursor::At(0)) else {
        panic!("the ring covers the start")
    };
    assert_eq!(backlog.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
}

#[tokio::test]
async fn ring_evicts_oldest_and_raises_its_floor() {
    let feed = feed(3, Cursor::At(0));
    feed.publish(rows(&[1, 2, 3, 4, 5]), Cursor::At(5));
    assert!(matches!(feed.join(Cursor::At(1)), Joined::Behind));
    let Joined::Live { backlog, .. } = feed.join(Cursor::At(2)) else {
        panic!("ids after 2 are all in the ring")
    };
    assert_eq!(backlog.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4, 5]);
}

#[tokio::test]
async fn subscriber_replays_then_follows_without_duplicates() {
    let feed = feed(100, Cursor::At(0));
    feed.publish(rows(&[1, 2, 3]), Cursor::At(3));
    let mut sub = feed.subscribe(Some(Cursor::At(1)));
    assert_eq!(ids(&sub.next().await.unwrap()), [2, 3]);
    feed.publish(rows(&[4, 5]), Cursor::At(5));
    let live = sub.next().await.unwrap();
    assert!(
        matches!(live, Delivery::Batch(_)),
        "a whole new batch is passed on as is"
    );
    assert_eq!(ids(&live), [4, 5]);
    assert_eq!(sub.position(), Cursor::At(5));
    assert_eq!(feed.clients(), 1);
    drop(sub);
    assert_eq!(feed.clients(), 0);
}

#[tokio::test]
async fn live_subscriber_starts_at_the_head() {
    let feed = feed(100, Cursor::At(0));
    feed.publish(rows(&[1, 2]), Cursor::At(2));
    let mut sub = feed.subscribe(None);
    assert_eq!(sub.position(), Cursor::At(2));
    feed.publish(rows(&[3]), Cursor::At(3));
    assert_eq!(ids(&sub.next().await.unwrap()), [3]);
}

#[tokio::test]
async fn lagging_subscriber_rejoins_from_the_ring() {
    let feed = feed(100_000, Cursor::At(0));
    let mut sub = feed.subscribe(None);
    // Overflow the broadcast: more batches than it keeps.
    for id in 1..=(BUFFER as i128 + 10) {
        feed.publish(rows(&[id]), Cursor::At(id));
    }
    let mut seen = Vec::new();
    while seen.len() < BUFFER + 10 {
        seen.extend(ids(&sub.next().await.unwrap()));
    }
    let expected: Vec<i128> = (1..=(BUFFER as i128 + 10)).collect();
    assert_eq!(seen, expected);
}

#[test]
fn time_column_prefers_what_says_when_a_row_came_to_be() {
    let pick = |configured: Option<&str>, columns: &[&str]| {
        let columns: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
        time_column(configured, &columns)
    };
    // A chat server's events: the sender's clock comes first, the server's
    // reception is the row's own time.
    let events = [
        "stream_ordering",
        "origin_server_ts",
        "received_ts",
        "room_id",
    ];
    assert_eq!(pick(None, &events).as_deref(), Some("received_ts"));
    // A blog's comments: the first column named like a time.
    let comments = ["comment_ID", "comment_date", "comment_date_gmt"];
    assert_eq!(pick(None, &comments).as_deref(), Some("comment_date"));
    // The frameworks' names first, wherever they stand; any case.
    let rails = ["id", "updated_at", "inserted_at", "Created_At"];
    assert_eq!(pick(None, &rails).as_deref(), Some("Created_At"));
    // A deletion's time is no row's time.
    let soft = ["id", "deleted_at", "updated_at"];
    assert_eq!(pick(None, &soft).as_deref(), Some("updated_at"));
    assert_eq!(pick(None, &["id", "body", "room_id"]), None);
    // Configured wins over every guess.
    assert_eq!(pick(Some("body"), &rails).as_deref(), Some("body"));
}
