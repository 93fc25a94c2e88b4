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
