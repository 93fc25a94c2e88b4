//! A database outage mid-stream: clients stay connected, `/healthz` says
//! degraded, and every row written meanwhile arrives once the database is
//! back. The outage is made by cutting rowcast's connections at a TCP proxy,
//! which to rowcast looks like a database restart, without disturbing the
//! other tests that share the database.

use crate::common::proxy::Proxy;
use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_loses_nothing() {
    outage_loses_nothing(Kind::Postgres, "127.0.0.1:5432").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_loses_nothing() {
    outage_loses_nothing(Kind::MySql, "127.0.0.1:3306").await
}

async fn outage_loses_nothing(kind: Kind, address: &str) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let proxy = Proxy::start(address.parse().unwrap()).await;
    let server = Rowcast::at(&proxy.url(&db.url))
        .feed("messages", &t, |f| f)
        .start()
        .await;
    let stream = format!("{}/events/messages", server.url);
    let mut client = Client::connect(&stream, None).await;
    let before = db.insert_many(&t, 1, 3).await;
    assert_eq!(ids(&client.take(3).await), before);

    proxy.down();
    let during = db.insert_many(&t, 1, 3).await;
    let health = wait_health(&server.url, 503).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["feeds"]["messages"]["status"], "failing");
    // A client may still connect and resume while the database is away.
    let last_before = before.last().unwrap().to_string();
    let mut resumed = Client::connect(&stream, Some(&last_before)).await;

    proxy.up();
    wait_health(&server.url, 200).await;
    assert_eq!(ids(&client.take(3).await), during);
    assert_eq!(ids(&resumed.take(3).await), during);
    let after = db.insert(&t, 1, "after").await;
    assert_eq!(ids(&client.take(1).await), [after]);
    assert_eq!(ids(&resumed.take(1).await), [after]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_of_a_changes_feed_loses_nothing() {
    changes_outage_loses_nothing(Kind::Postgres, "127.0.0.1:5432").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_outage_of_a_changes_feed_loses_nothing() {
    changes_outage_loses_nothing(Kind::MySql, "127.0.0.1:3306").await
}

/// A changes feed through the same outage: its horizon probe (on MariaDB
/// a canary transaction on a connection of its own) fails with the rest,
/// and the changes made meanwhile arrive once the database is back.
async fn changes_outage_loses_nothing(kind: Kind, address: &str) {
    use crate::changes::{changes, Orders};
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let proxy = Proxy::start(address.parse().unwrap()).await;
    let server = Rowcast::at(&proxy.url(&db.url))
        .feed("orders", &orders.t, |f| f.set("mode", "changes"))
        .start()
        .await;
    let mut client = Client::connect(&format!("{}/events/orders", server.url), None).await;
    let a = orders.insert(1, "new").await;
    assert_eq!(changes(&client.take(1).await)[0].1, a);

    proxy.down();
    orders.update(a, "paid").await;
    let b = orders.insert(1, "new").await;
    let health = wait_health(&server.url, 503).await;
    assert_eq!(health["feeds"]["orders"]["status"], "failing");
    proxy.up();
    wait_health(&server.url, 200).await;
    let got = changes(&client.take(2).await);
    assert_eq!(
        got,
        [
            ("update".to_owned(), a, "paid".to_owned()),
            ("insert".to_owned(), b, "new".to_owned())
        ]
    );
    orders.update(b, "paid").await;
    assert_eq!(
        changes(&client.take(1).await),
        [("update".to_owned(), b, "paid".to_owned())]
    );
    server.stop().await;
}
