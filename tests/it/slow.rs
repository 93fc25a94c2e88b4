//! A client that stops reading neither slows the poller nor other clients,
//! and is never skipped ahead: once it reads again it gets every row, in
//! order, caught up from the ring or the database.

use crate::common::*;
use std::sync::atomic::Ordering;

each_db!(stalled_client_catches_up_without_a_gap);

async fn stalled_client_catches_up_without_a_gap(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        // Fall behind by more than two poll batches and leave the broadcast.
        .set("client_buffer", 2)
        .feed("messages", &t, |f| f.ring_size(20).batch_size(50))
        .start()
        .await;
    let stream = format!("{}/events/messages", server.url);
    let mut stalled = Client::connect(&stream, None).await;
    let mut reader = Client::connect(&stream, None).await;

    // 300 rows of 64 KiB: far more than the socket buffers hold, so the
    // server cannot write to the stalled client. Insert in groups that the
    // reader receives before the next, so they arrive as separate polls.
    let body = "y".repeat(64 << 10);
    let mut expected = Vec::new();
    for _ in 0..30 {
        let mut group = Vec::new();
        for _ in 0..10 {
            group.push(db.insert(&t, 1, &body).await);
        }
        assert_eq!(
            ids(&reader.take(10).await),
            group,
            "the reading client is not held up"
        );
        expected.extend(group);
    }

    let got = stalled.take(300).await;
    assert_eq!(ids(&got), expected);
    assert!(got
        .iter()
        .all(|e| e.json()["body"].as_str().unwrap().len() == body.len()));
    let catch_up = server.feeds[0]
        .health
        .counters
        .catch_up_queries
        .load(Ordering::SeqCst);
    assert!(
        catch_up > 0,
        "the stalled client was caught up from the database"
    );
    server.stop().await;
}
