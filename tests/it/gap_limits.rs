//! The edges of gap holding: the hold cap, late rows, the watermark query,
//! and the start-up warnings about what weakens the guarantee.

use crate::common::*;
use std::time::{Duration, Instant};

async fn metric(server: &Server, name: &str) -> String {
    let text = metrics(server).await;
    let line = format!("{name}{{feed=\"messages\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

async fn open_transaction_is_passed_over_at_the_hold_cap_and_its_row_arrives_late(kind: Kind) {
    logs();
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let rowcast = Rowcast::on(&db).feed("messages", &t, |f| {
        f.set("hold_cap", "1s").set("late_check_interval", "200ms")
    });
    let first = db.insert(&t, 1, "first").await;
    let server = rowcast.start().await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;

    // A transaction takes the next id and stays open.
    let mut open = db.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {t} (room_id, body) VALUES (1, 'open')"
    ))
    .execute(&mut *open)
    .await
    .unwrap();
    let after = db.insert_many(&t, 1, 2).await;
    let started = Instant::now();
    client.expect_quiet(Duration::from_millis(600)).await;
    assert!(
        metric(&server, "rowcast_gap_hold_seconds")
            .await
            .parse::<f64>()
            .unwrap()
            > 0.0
    );
    let got = client.take(2).await;
    assert_eq!(ids(&got), after, "rows after the gap still arrive");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held until the cap"
    );
    assert_eq!(metric(&server, "rowcast_gaps_capped_total").await, "1");
    assert_eq!(metric(&server, "rowcast_late_rows_total").await, "0");

    // The open transaction commits after all: its row comes late, without
    // moving the client's last event id back.
    open.commit().await.unwrap();
    let late = client.take(1).await;
    let late_id = first + 1;
    assert_eq!(late[0].json()["id"], serde_json::json!(late_id));
    assert_eq!(late[0].json()["body"], "open");
    assert_eq!(
        late[0].id,
        after[1].to_string(),
        "the late event carries no id"
    );
    assert_eq!(metric(&server, "rowcast_late_rows_total").await, "1");
    client.expect_quiet(Duration::from_millis(500)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hold_cap_and_late_row() {
    open_transaction_is_passed_over_at_the_hold_cap_and_its_row_arrives_late(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_hold_cap_and_late_row() {
    open_transaction_is_passed_over_at_the_hold_cap_and_its_row_arrives_late(Kind::MySql).await
}

async fn watermark_bounds_what_is_sent(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let positions = db.table("positions");
    db.exec(&format!("CREATE TABLE {positions} (pos BIGINT NOT NULL)"))
        .await;
    db.exec(&format!("INSERT INTO {positions} (pos) VALUES (0)"))
        .await;
    // A long grace window: only the watermark can settle gaps quickly.
    let watermark = format!("SELECT pos FROM {positions}");
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.set("gap_grace", "20s")
                .set("hold_cap", "30s")
                .watermark(&watermark)
        })
        .start()
        .await;
    let mut client =
        Client::connect(&format!("{}/events/messages?after=start", server.url), None).await;
    let ids_in = db.insert_many(&t, 1, 3).await;
    client.expect_quiet(Duration::from_millis(300)).await;
    db.exec(&format!("UPDATE {positions} SET pos = {}", ids_in[1]))
        .await;
    assert_eq!(ids(&client.take(2).await), &ids_in[..2]);
    client.expect_quiet(Duration::from_millis(300)).await;

    // A burnt id below the watermark is no reason to wait.
    let skipped = ids_in[2] + 1;
    let beyond = skipped + 1;
    db.exec(&format!(
        "INSERT INTO {t} (id, room_id, body) VALUES ({beyond}, 1, 'beyond')"
    ))
    .await;
    db.exec(&format!("UPDATE {positions} SET pos = {beyond}"))
        .await;
    assert_eq!(ids(&client.take(2).await), [ids_in[2], beyond]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_watermark_bounds_what_is_sent() {
    watermark_bounds_what_is_sent(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_watermark_bounds_what_is_sent() {
    watermark_bounds_what_is_sent(Kind::MySql).await
}

/// What start-up tells about gaps in feed `messages` of `t`, with
/// `settings`.
async fn gap_setup(
    t: &str,
    url: &str,
    settings: impl FnOnce(Feed) -> Feed,
) -> rowcast::source::GapSetup {
    let feeds = Rowcast::at(url)
        .feed("messages", t, settings)
        .prepare()
        .await
        .unwrap();
    let setup = feeds.setups[0].gaps().cloned().unwrap();
    feeds.close().await;
    setup
}

async fn warnings(t: &str, url: &str) -> Vec<String> {
    gap_setup(t, url, |f| f).await.warnings
}

/// Ids the application assigns are what a watermark query is for: with
/// one, start-up says so instead of warning.
async fn watermark_covers_ids_the_application_assigns(kind: Kind, why: &str) {
    let db = TestDb::new(kind).await;
    let plain = db.table("plain");
    db.exec(&format!(
        "CREATE TABLE {plain} (id BIGINT PRIMARY KEY, body TEXT)"
    ))
    .await;
    let watermark = format!("SELECT MAX(id) FROM {plain}");
    let setup = gap_setup(&plain, &db.url, |f| f.watermark(&watermark)).await;
    assert_eq!(setup.warnings, Vec::<String>::new());
    assert_eq!(
        setup.notes,
        [format!(
            "feed `messages`: {why}; the `watermark` query covers it: gaps below the watermark settle at once"
        )]
    );
}

#[tokio::test]
async fn postgres_watermark_covers_a_cursor_without_default() {
    watermark_covers_ids_the_application_assigns(
        Kind::Postgres,
        "`id` has no default, so the application assigns ids and no lock reveals a writer in advance",
    )
    .await
}

#[tokio::test]
async fn mysql_watermark_covers_a_cursor_without_auto_increment() {
    watermark_covers_ids_the_application_assigns(
        Kind::MySql,
        "`id` is not AUTO_INCREMENT, so the application assigns ids",
    )
    .await
}

#[tokio::test]
async fn postgres_warns_about_a_cached_sequence_and_a_missing_default() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    assert_eq!(warnings(&t, &db.url).await, Vec::<String>::new());

    let sequence = format!("public.{t}_id_seq");
    db.exec(&format!("ALTER SEQUENCE {sequence} CACHE 20"))
        .await;
    let found = warnings(&t, &db.url).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("has CACHE 20"), "{}", found[0]);
    // The advice is a statement that works.
    let advice = found[0]
        .split("; ")
        .last()
        .unwrap()
        .trim_end_matches(" avoids it");
    assert_eq!(advice, format!("ALTER SEQUENCE {sequence} CACHE 1"));
    db.exec(advice).await;
    assert_eq!(warnings(&t, &db.url).await, Vec::<String>::new());

    let plain = db.table("plain");
    db.exec(&format!(
        "CREATE TABLE {plain} (id bigint PRIMARY KEY, body text)"
    ))
    .await;
    let found = warnings(&plain, &db.url).await;
    assert_eq!(
        found,
        ["feed `messages`: `id` has no default, so the application assigns ids and no lock reveals \
          a writer in advance; gaps settle by gap_grace alone unless a `watermark` query is set"]
    );
}

#[tokio::test]
async fn mysql_warns_without_auto_increment_or_the_process_privilege() {
    let db = TestDb::new(Kind::MySql).await;
    let plain = db.table("plain");
    db.exec(&format!(
        "CREATE TABLE {plain} (id BIGINT PRIMARY KEY, body TEXT)"
    ))
    .await;
    let found = warnings(&plain, &db.url).await;
    assert_eq!(
        found,
        [
            "feed `messages`: `id` is not AUTO_INCREMENT, so the application assigns ids; \
          gaps settle by gap_grace alone unless a `watermark` query is set"
        ]
    );

    let t = db.messages("messages").await;
    let user = format!("rc_u{:08x}", rand::random::<u32>());
    for host in ["%", "localhost"] {
        db.exec(&format!("CREATE USER '{user}'@'{host}'")).await;
        db.exec(&format!("GRANT SELECT ON test.* TO '{user}'@'{host}'"))
            .await;
        db.on_drop(format!("DROP USER IF EXISTS '{user}'@'{host}'"));
    }
    let found = warnings(&t, &format!("mysql://{user}@127.0.0.1:3306/test")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("without the PROCESS privilege"),
        "{}",
        found[0]
    );
    assert!(found[0].contains("GRANT PROCESS ON *.*"), "{}", found[0]);
}

/// A MyISAM table has no transactions for INNODB_TRX to list: start-up says
/// so and settles gaps by the grace window, instead of waiting seconds for
/// a listing that could never show a reader of that table and then blaming
/// other readers of INNODB_TRX.
#[tokio::test]
async fn mysql_table_without_transactions_lists_no_writers() {
    let db = TestDb::new(Kind::MySql).await;
    let t = db.table("myisam");
    db.exec(&format!(
        "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, room_id BIGINT NOT NULL, body TEXT NOT NULL) \
         ENGINE = MyISAM"
    ))
    .await;
    db.insert_many(&t, 1, 2).await;
    let started = Instant::now();
    let setup = gap_setup(&t, &db.url, |f| f).await;
    // Waiting for a fresh listing took 3.3 s; the grace window here is 50 ms.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(setup.writers_sql, None);
    assert_eq!(setup.warnings, Vec::<String>::new());
    assert_eq!(
        setup.notes,
        [format!(
            "feed `messages`: `test.{t}` is a MyISAM table, without transactions: a row is visible as soon as \
             its INSERT ends, so there are no writers to wait for and gaps settle by gap_grace alone"
        )]
    );
}
