//! The Postgres NOTIFY doorbell: with the trigger a row reaches clients at
//! once even when polling is slow; the doorbell survives a database restart;
//! without the trigger rowcast falls back to polling and loses nothing.

use crate::common::proxy::Proxy;
use crate::common::*;
use std::time::{Duration, Instant};

/// Waits until `/metrics` says the doorbell works (or does not).
async fn wait_doorbell(server: &Server, up: bool) {
    let line = format!("rowcast_doorbell_up{{feed=\"messages\"}} {}", u8::from(up));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = metrics(server).await;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "never saw {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polling alone would take a minute.
fn slow_polling(f: Feed) -> Feed {
    f.set("poll_interval", "60s")
        .set("max_poll_interval", "60s")
        .set("notify_interval", "60s")
}

async fn arrives_quickly(db: &TestDb, t: &str, client: &mut Client) {
    let started = Instant::now();
    let id = db.insert(t, 1, "rung").await;
    assert_eq!(ids(&client.take(1).await), [id]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "took {took:?} with a 60 s poll interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_rings_the_doorbell_and_arrives_at_once() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    db.insert(&t, 1, "before").await;
    db.doorbell(&t, true).await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, slow_polling)
        .start()
        .await;
    wait_doorbell(&server, true).await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    for _ in 0..3 {
        arrives_quickly(&db, &t, &mut client).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doorbell_works_again_after_a_database_restart() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    db.insert(&t, 1, "before").await;
    db.doorbell(&t, true).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let server = Rowcast::at(&proxy.url(&db.url))
        .feed("messages", &t, slow_polling)
        .start()
        .await;
    wait_doorbell(&server, true).await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    arrives_quickly(&db, &t, &mut client).await;

    proxy.down();
    wait_doorbell(&server, false).await;
    // Written while the database was away: read when the listener reconnects.
    let during = db.insert(&t, 1, "during").await;
    proxy.up();
    wait_doorbell(&server, true).await;
    assert_eq!(ids(&client.take(1).await), [during]);
    arrives_quickly(&db, &t, &mut client).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_trigger_polling_takes_over_and_loses_nothing() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    db.insert(&t, 1, "before").await;
    db.doorbell(&t, true).await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.set("max_poll_interval", "200ms")
                .set("notify_interval", "60s")
        })
        .start()
        .await;
    wait_doorbell(&server, true).await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let first = db.insert_many(&t, 1, 3).await;
    assert_eq!(ids(&client.take(3).await), first);

    db.doorbell(&t, false).await;
    let rows = db.insert_many(&t, 1, 5).await;
    wait_doorbell(&server, false).await;
    assert_eq!(ids(&client.take(5).await), rows);
    let later = db.insert(&t, 1, "polled").await;
    assert_eq!(ids(&client.take(1).await), [later]);
    server.stop().await;
}

#[tokio::test]
async fn notify_on_without_the_trigger_stops_start_up() {
    for kind in [Kind::Postgres, Kind::MySql, Kind::Sqlite] {
        let db = TestDb::new(kind).await;
        let t = db.messages("messages").await;
        let rowcast = Rowcast::on(&db).feed("messages", &t, |f| f.notify(true));
        let err = match rowcast.prepare().await {
            Ok(_) => panic!("{kind:?}: started without a trigger"),
            Err(err) => err,
        };
        let table = match kind {
            Kind::Postgres => format!("public.{t}"),
            Kind::MySql => format!("test.{t}"),
            Kind::Sqlite => t.clone(),
        };
        assert_eq!(
            err,
            format!(
                "feed `messages`: `notify` is on but `{table}` has no rowcast_notify trigger (Postgres only); \
                 install it with `rowcast sql notify --table … --apply`, or set `notify = false`"
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_commits_is_read_by_a_few_polls() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    db.doorbell(&t, true).await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, slow_polling)
        .start()
        .await;
    wait_doorbell(&server, true).await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    arrives_quickly(&db, &t, &mut client).await;

    // Sixty commits, one after another, each ringing the doorbell.
    let before = server.queries("messages");
    let started = Instant::now();
    let written = db.insert_many(&t, 1, 60).await;
    let burst = started.elapsed();
    assert_eq!(ids(&client.take(60).await), written);
    let polls = server.queries("messages") - before;
    // Rings within notify_window (10 ms) of the last poll share one poll;
    // with no window each commit costs a poll.
    let most = burst.as_millis() as u64 / 10 + 2;
    assert!(
        polls <= most,
        "{polls} polls for 60 commits in {burst:?}, not at most {most}"
    );
    // A row alone still goes out at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    arrives_quickly(&db, &t, &mut client).await;
    server.stop().await;
}
