//! Database load does not grow with clients: 200 live clients cost one query
//! per poll (counted by the database itself where it can count), and 50
//! clients catching up from behind the replay ring share their reads.

use crate::common::*;
use futures::future::join_all;
use std::time::Duration;

each_db!(
    two_hundred_clients_cost_one_query_per_poll,
    clients_behind_the_ring_share_catch_up_reads
);

/// A SELECT-only MariaDB user whose statements the database counts
/// (`USER_STATISTICS`); returns rowcast's URL and the user name.
async fn counted_mysql_user(db: &TestDb) -> (String, String) {
    let user = format!("rc_u{:08x}", rand::random::<u32>());
    db.exec("SET GLOBAL userstat = 1").await;
    for host in ["%", "localhost"] {
        db.exec(&format!("CREATE USER '{user}'@'{host}'")).await;
        db.exec(&format!("GRANT SELECT ON test.* TO '{user}'@'{host}'"))
            .await;
        db.on_drop(format!("DROP USER IF EXISTS '{user}'@'{host}'"));
    }
    (format!("mysql://{user}@127.0.0.1:3306/test"), user)
}

/// Statements the database saw from rowcast, or `None` where it cannot tell.
/// On Postgres, waits (up to 5 s) for the count to reach `expect`, since
/// exiting backends publish their statistics a little later, more so on a
/// busy machine; what it returns is still what Postgres counted.
async fn database_count(
    db: &TestDb,
    table: &str,
    mysql_user: &str,
    expect: Option<i64>,
) -> Option<i64> {
    match db.kind {
        // Scans of the table: every rowcast read is one; nothing else reads it.
        Kind::Postgres => {
            let sql = "SELECT (COALESCE(seq_scan, 0) + COALESCE(idx_scan, 0))::bigint \
                       FROM pg_stat_user_tables WHERE relname = $1";
            // Backends publish their statistics when they exit; wait for it
            // (on a loaded machine that takes seconds).
            let mut last = -1;
            for _ in 0..150 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now: i64 = sqlx::query_scalar(sql)
                    .bind(table)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
                if expect.map_or(now == last, |e| now >= e) {
                    return Some(now);
                }
                last = now;
            }
            Some(last)
        }
        Kind::MySql => {
            let sql = "SELECT CAST(SELECT_COMMANDS AS SIGNED) FROM information_schema.USER_STATISTICS WHERE USER = ?";
            let count: Option<i64> = sqlx::query_scalar(sql)
                .bind(mysql_user)
                .fetch_optional(&db.pool)
                .await
                .unwrap();
            Some(count.unwrap_or(0))
        }
        Kind::Sqlite => None,
    }
}

async fn two_hundred_clients_cost_one_query_per_poll(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let (url, user) = match kind {
        Kind::MySql => counted_mysql_user(&db).await,
        _ => (db.url.clone(), String::new()),
    };
    let server = Rowcast::at(&url).feed("messages", &t, |f| f).start().await;
    let stream = format!("{}/events/messages", server.url);
    let mut clients = join_all((0..200).map(|_| Client::connect(&stream, None))).await;

    let db_before = database_count(&db, &t, &user, None).await;
    let server_before = server.queries("messages");
    let expected = db.insert_many(&t, 1, 20).await;
    let received = join_all(clients.iter_mut().map(|c| c.take(20))).await;
    for events in &received {
        assert_eq!(ids(events), expected);
    }
    // Counted once the server has stopped: no poll can slip in after.
    let health = server.feeds[0].health.clone();
    drop(clients);
    server.stop().await;
    let server_total = health
        .counters
        .queries
        .load(std::sync::atomic::Ordering::SeqCst);
    let server_queries = server_total - server_before;

    // The poller's pace alone sets the count: far below one per client.
    assert!(
        server_queries < 100,
        "{server_queries} queries for 200 clients"
    );
    let expect = Some(server_total as i64 + 2);
    match (
        kind,
        db_before,
        database_count(&db, &t, &user, expect).await,
    ) {
        // Postgres counted every scan since the table was made: the polls
        // plus two at start-up (the query check and MAX(id)).
        (Kind::Postgres, _, Some(after)) => assert_eq!(after as u64, server_total + 2),
        // MariaDB counted statements since the baseline, read a moment apart
        // from the server's own baseline: allow a poll either way.
        (Kind::MySql, Some(before), Some(after)) => {
            let seen = (after - before) as u64;
            assert!(
                seen.abs_diff(server_queries) <= 2,
                "database saw {seen} statements, rowcast counted {server_queries}"
            );
        }
        (Kind::Sqlite, None, None) => {}
        other => panic!("unexpected counts {other:?}"),
    }
}

async fn clients_behind_the_ring_share_catch_up_reads(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| f.ring_size(5).batch_size(10))
        .start()
        .await;
    let expected = db.insert_many(&t, 1, 40).await;
    // Wait until the poller has published them all.
    let last = expected.last().unwrap().to_string();
    for _ in 0..200 {
        let (_, feeds) = get_json(&format!("{}/feeds", server.url)).await;
        if feeds["feeds"][0]["cursor"] == serde_json::json!(last) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = server.feeds[0].health.clone();
    let catch_up = || {
        health
            .counters
            .catch_up_queries
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = catch_up();

    let stream = format!("{}/events/messages?after=start", server.url);
    let mut clients = join_all((0..50).map(|_| Client::connect(&stream, None))).await;
    let received = join_all(clients.iter_mut().map(|c| c.take(40))).await;
    for events in &received {
        assert_eq!(ids(events), expected);
    }
    // 40 rows behind a ring of 5, read 10 at a time: 4 or 5 pages, however
    // many clients ask (a page read by one is reused by the rest).
    let reads = catch_up() - before;
    assert!(
        (4..=10).contains(&reads),
        "{reads} catch-up reads for 50 clients"
    );
    server.stop().await;
}
