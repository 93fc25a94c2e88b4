//! Changes feeds against every database: each insert, update and delete as
//! the row's latest state, in `{"op":…,"row":…}` envelopes, resumed
//! exactly inside the ring and with the current state beyond it.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;

each_db!(
    every_change_arrives_as_the_rows_latest_state,
    resume_inside_the_ring_is_exact,
    after_zero_sends_every_live_row_then_changes,
    a_restart_resends_current_state_never_an_older_one,
    one_stream_follows_an_append_and_a_changes_feed,
    rows_answers_envelopes_with_a_cursor,
    a_row_that_leaves_a_filter_is_deleted_for_its_clients,
    hard_deletes_arrive_with_the_rows_last_state,
    a_client_from_before_the_retention_starts_over,
    a_changes_feed_needs_a_stamped_column,
);

/// A table of orders with an update stamp and a soft-delete column, as
/// applications have them.
pub struct Orders<'a> {
    pub db: &'a TestDb,
    pub t: String,
}

impl<'a> Orders<'a> {
    pub async fn create(db: &'a TestDb, name: &str) -> Orders<'a> {
        let t = db.table(name);
        db.exec(&match db.kind {
            Kind::Postgres => format!(
                "CREATE TABLE {t} (id bigserial PRIMARY KEY, room_id bigint NOT NULL, status text NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz); \
                 CREATE INDEX ON {t} (updated_at, id)"
            ),
            Kind::MySql => format!(
                "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, room_id BIGINT NOT NULL, status VARCHAR(64) NOT NULL, \
                 updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), deleted_at DATETIME(6) NULL, \
                 KEY (updated_at, id))"
            ),
            Kind::Sqlite => format!(
                "CREATE TABLE {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL, status TEXT NOT NULL, \
                 updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')), deleted_at TEXT); \
                 CREATE INDEX {t}_stamp ON {t} (updated_at, id)"
            ),
        })
        .await;
        Orders { db, t }
    }

    /// The database's clock, as a stamp of the table's column.
    pub fn now(&self) -> &'static str {
        match self.db.kind {
            Kind::Postgres => "now()",
            Kind::MySql => "CURRENT_TIMESTAMP(6)",
            Kind::Sqlite => "strftime('%Y-%m-%d %H:%M:%f','now')",
        }
    }

    /// rowcast with a changes feed `orders` of this table.
    pub async fn serve(&self) -> Server {
        Rowcast::on(self.db)
            .feed("orders", &self.t, changes_feed)
            .start()
            .await
    }

    pub async fn insert(&self, room_id: i64, status: &str) -> i64 {
        let t = &self.t;
        let sql = format!("INSERT INTO {t} (room_id, status) VALUES ({room_id}, '{status}')");
        match self.db.kind {
            Kind::Postgres | Kind::Sqlite => {
                sqlx::query_scalar::<_, i64>(&format!("{sql} RETURNING id"))
                    .fetch_one(&self.db.pool)
                    .await
                    .unwrap()
            }
            Kind::MySql => {
                let done = sqlx::query(&sql).execute(&self.db.pool).await.unwrap();
                done.last_insert_id().unwrap()
            }
        }
    }

    pub async fn update(&self, id: i64, status: &str) {
        let (t, now) = (&self.t, self.now());
        self.db
            .exec(&format!(
                "UPDATE {t} SET status = '{status}', updated_at = {now} WHERE id = {id}"
            ))
            .await;
    }

    pub async fn move_to(&self, id: i64, room_id: i64) {
        let (t, now) = (&self.t, self.now());
        self.db
            .exec(&format!(
                "UPDATE {t} SET room_id = {room_id}, updated_at = {now} WHERE id = {id}"
            ))
            .await;
    }

    pub async fn soft_delete(&self, id: i64) {
        let (t, now) = (&self.t, self.now());
        self.db
            .exec(&format!(
                "UPDATE {t} SET deleted_at = {now}, updated_at = {now} WHERE id = {id}"
            ))
            .await;
    }
}

/// Installs the hard-delete trigger, with the SQL `rowcast sql deletes`
/// applies.
pub async fn install_deletes(db: &TestDb, t: &str) {
    let source = rowcast::source::Source::connect(&db.url, 1).await.unwrap();
    let trigger = source.delete_trigger(t, None, None).await.unwrap();
    source
        .apply(&trigger.install_sql(Duration::from_secs(7 * 86_400)))
        .await
        .unwrap();
    db.on_drop(trigger.remove_sql());
    source.close().await;
}

/// Each event's op, id and status.
pub fn changes(events: &[Ev]) -> Vec<(String, i64, String)> {
    events
        .iter()
        .map(|e| {
            let v = e.json();
            (
                v["op"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no op: {v}"))
                    .to_owned(),
                v["row"]["id"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no id: {v}")),
                v["row"]["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// What a client gets until it has been quiet for `quiet`, as [`changes`].
async fn changes_until_quiet(client: &mut Client, quiet: Duration) -> Vec<(String, i64, String)> {
    let mut seen = Vec::new();
    while let Some(event) = client.next(quiet).await {
        if !event.data.is_empty() {
            seen.extend(changes(&[event]));
        }
    }
    seen
}

fn change(op: &str, id: i64, status: &str) -> (String, i64, String) {
    (op.to_owned(), id, status.to_owned())
}

fn changes_feed(f: Feed) -> Feed {
    f.set("mode", "changes").filter_columns(["room_id"])
}

async fn every_change_arrives_as_the_rows_latest_state(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let before = orders.insert(1, "old").await;
    let server = orders.serve().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, None).await;
    let mut room = Client::connect(&format!("{url}?room_id=2"), None).await;
    // What was there before a client came is not sent to it.
    client.expect_quiet(Duration::from_millis(300)).await;

    let a = orders.insert(1, "new").await;
    assert_eq!(changes(&client.take(1).await), [change("insert", a, "new")]);
    orders.update(a, "paid").await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", a, "paid")]
    );
    orders.update(before, "edited").await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", before, "edited")]
    );
    let b = orders.insert(2, "new").await;
    orders.soft_delete(b).await;
    // Both changes of b may be seen by one poll: then only the latest state.
    let mut got = client.take(1).await;
    if changes(&got) == [change("insert", b, "new")] {
        got = client.take(1).await;
    }
    let deleted = got[0].json();
    assert_eq!(deleted["op"], "delete", "{deleted}");
    assert_eq!(deleted["row"]["id"], json!(b));
    assert!(
        !deleted["row"]["deleted_at"].is_null(),
        "a soft delete carries the row's last state: {deleted}"
    );
    // The filtered client saw only room 2's row, ending deleted.
    let room_events = room.take(1).await;
    let last = match changes(&room_events)[0].0.as_str() {
        "insert" => room.take(1).await,
        _ => room_events,
    };
    assert_eq!(changes(&last), [change("delete", b, "new")]);

    // Every event is an envelope of exactly `op` and `row`, and the row is
    // every column.
    let v = deleted.as_object().unwrap();
    assert_eq!(v.keys().collect::<Vec<_>>(), ["op", "row"]);
    assert_eq!(deleted["row"].as_object().unwrap().len(), 5);

    // Several updates of one row within one second: the latest state always
    // arrives last, and no state goes back.
    for status in ["s1", "s2", "s3", "s4", "s5"] {
        orders.update(a, status).await;
    }
    let mut seen = Vec::new();
    while seen.last().map(|c: &(String, i64, String)| c.2.as_str()) != Some("s5") {
        let got = changes(&client.take(1).await);
        seen.extend(got);
    }
    let order: Vec<&str> = seen.iter().map(|c| c.2.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "states arrive in the order they were made");
    client.expect_quiet(Duration::from_millis(500)).await;
    server.stop().await;
}

async fn resume_inside_the_ring_is_exact(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let server = orders.serve().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, None).await;
    let a = orders.insert(1, "new").await;
    let first = client.take(1).await;
    let mut expected = Vec::new();
    for status in ["packed", "shipped"] {
        orders.update(a, status).await;
        expected.extend(changes(&client.take(1).await));
    }
    let b = orders.insert(1, "new").await;
    expected.extend(changes(&client.take(1).await));
    drop(client);
    assert_eq!(
        expected,
        [
            change("update", a, "packed"),
            change("update", a, "shipped"),
            change("insert", b, "new")
        ]
    );
    // The same events again, in order, and nothing else.
    let mut again = Client::connect(&url, Some(&first[0].id)).await;
    assert_eq!(changes(&again.take(3).await), expected);
    again.expect_quiet(Duration::from_millis(300)).await;
    // ?after= resumes the same way.
    let mut after = Client::connect(&format!("{url}?after={}", first[0].id), None).await;
    assert_eq!(changes(&after.take(3).await), expected);

    // A cursor that no changes feed sent is a 400 naming the problem.
    let (status, body) = get_json(&format!("{}/feeds/orders/rows?after=42", server.url)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_cursor");
    assert_eq!(
        body["detail"],
        "after: `42` is not a cursor of this changes feed: expected an event id it sent, or `0` for every row's current state"
    );
    server.stop().await;
}

async fn after_zero_sends_every_live_row_then_changes(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let a = orders.insert(1, "new").await;
    let b = orders.insert(2, "new").await;
    let c = orders.insert(1, "new").await;
    orders.update(a, "paid").await;
    orders.soft_delete(b).await;
    let server = orders.serve().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&format!("{url}?after=0"), None).await;
    // The live rows' current state, in id order; the deleted row is not there.
    let snapshot = client.take(2).await;
    assert_eq!(
        changes(&snapshot),
        [change("insert", a, "paid"), change("insert", c, "new")]
    );
    let mut room = Client::connect(&format!("{url}?after=0&room_id=1"), None).await;
    assert_eq!(changes(&room.take(2).await), changes(&snapshot));
    // Then live changes.
    orders.update(c, "paid").await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", c, "paid")]
    );
    assert_eq!(changes(&room.take(1).await), [change("update", c, "paid")]);
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn a_restart_resends_current_state_never_an_older_one(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let config = Rowcast::on(&db).feed("orders", &orders.t, changes_feed);
    let server = config.start().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, None).await;
    let a = orders.insert(1, "new").await;
    let b = orders.insert(1, "new").await;
    let got = client.take(2).await;
    assert_eq!(
        changes(&got),
        [change("insert", a, "new"), change("insert", b, "new")]
    );
    drop(client);
    server.stop().await;

    orders.update(a, "paid").await;
    let server = config.start().await;
    let url = format!("{}/events/orders", server.url);
    // Another run: the table is read from the last event's window start.
    // Rows may come again, but only as they are now.
    let mut client = Client::connect(&url, Some(&got[1].id)).await;
    let seen = changes_until_quiet(&mut client, Duration::from_millis(1500)).await;
    assert!(seen.contains(&change("update", a, "paid")), "{seen:?}");
    for (op, id, status) in &seen {
        let now = if *id == a { "paid" } else { "new" };
        assert_eq!(status, now, "{op} of {id} is its current state: {seen:?}");
    }
    server.stop().await;
}

async fn one_stream_follows_an_append_and_a_changes_feed(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let messages = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("orders", &orders.t, changes_feed)
        .feed("messages", &messages, |f| f.filter_columns(["room_id"]))
        .start()
        .await;
    let url = format!("{}/events?feed=orders&feed=messages", server.url);
    let mut client = Client::connect(&url, None).await;
    let m = db.insert(&messages, 1, "hi").await;
    let got = client.take(1).await;
    assert_eq!(got[0].event, "messages");
    let a = orders.insert(1, "new").await;
    let got = client.take(1).await;
    assert_eq!(got[0].event, "orders");
    assert_eq!(changes(&got), [change("insert", a, "new")]);
    // One id resumes both.
    let id = got[0].id.clone();
    assert!(
        id.starts_with("orders:") && id.contains(&format!(",messages:{m}")),
        "{id}"
    );
    drop(client);
    orders.update(a, "paid").await;
    let m2 = db.insert(&messages, 1, "again").await;
    let mut client = Client::connect(&url, Some(&id)).await;
    let got = client.take(2).await;
    let mut by_feed: Vec<(String, Value)> =
        got.iter().map(|e| (e.event.clone(), e.json())).collect();
    by_feed.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(by_feed[0].1["id"], json!(m2));
    assert_eq!(
        by_feed[1].1,
        json!({"op": "update", "row": by_feed[1].1["row"].clone()})
    );
    assert_eq!(by_feed[1].1["row"]["status"], "paid");
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn rows_answers_envelopes_with_a_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let a = orders.insert(1, "new").await;
    let b = orders.insert(2, "new").await;
    let server = orders.serve().await;
    let rows = format!("{}/feeds/orders/rows", server.url);
    let (status, body) = get_json(&format!("{rows}?after=0")).await;
    assert_eq!(status, 200, "{body}");
    let ops: Vec<(String, i64)> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_owned(),
                r["row"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ops, [("insert".to_owned(), a), ("insert".to_owned(), b)]);
    let cursor = body["cursor"].as_str().unwrap().to_owned();
    // Nothing new: the same cursor, no rows.
    let (_, same) = get_json(&format!("{rows}?after={cursor}")).await;
    assert_eq!(same["rows"], json!([]));
    // A long poll answers with the next change.
    let waiting = tokio::spawn({
        let url = format!("{rows}?after={cursor}&wait=10&room_id=2");
        async move { get_json(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    orders.update(a, "paid").await;
    orders.update(b, "paid").await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200);
    let rows_of_room: Vec<&Value> = body["rows"].as_array().unwrap().iter().collect();
    assert_eq!(rows_of_room.len(), 1, "{body}");
    assert_eq!(rows_of_room[0]["op"], "update");
    assert_eq!(rows_of_room[0]["row"]["id"], json!(b));
    server.stop().await;
}

async fn a_changes_feed_needs_a_stamped_column(kind: Kind) {
    let db = TestDb::new(kind).await;
    let messages = db.messages("messages").await;
    let error = Rowcast::on(&db)
        .feed("messages", &messages, |f| f.set("mode", "changes"))
        .start_up_error()
        .await;
    assert!(
        error.contains("feed `messages`: a `changes` feed needs a column stamped on every insert and update: `updated_at` (the default of `updated_column`) is not one of them; name the table's column with `updated_column`; columns of"),
        "{error}"
    );
    assert_eq!(
        error.contains("without one, `updated_column = \"xmin\"` finds changes by transaction id (a scan per poll: small tables only)"),
        kind == Kind::Postgres,
        "{error}"
    );
    // SQLite stores stamps as text: any column will do there.
    if kind != Kind::Sqlite {
        let error = Rowcast::on(&db)
            .feed("messages", &messages, |f| {
                f.set("mode", "changes").set("updated_column", "body")
            })
            .start_up_error()
            .await;
        assert!(
            error.contains("feed `messages`: `updated_column`: `body` is of type"),
            "{error}"
        );
    }
}

async fn a_row_that_leaves_a_filter_is_deleted_for_its_clients(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    let server = orders.serve().await;
    let url = format!("{}/events/orders", server.url);
    let mut all = Client::connect(&url, None).await;
    let mut one = Client::connect(&format!("{url}?room_id=1"), None).await;
    let mut two = Client::connect(&format!("{url}?room_id=2"), None).await;
    let mut both = Client::connect(&format!("{url}?room_id=1&room_id=2"), None).await;
    let a = orders.insert(1, "new").await;
    for client in [&mut all, &mut one, &mut both] {
        assert_eq!(changes(&client.take(1).await), [change("insert", a, "new")]);
    }
    orders.move_to(a, 2).await;
    // Room 1 sees it go; room 2 sees it come; whoever sees both rooms, or
    // every row, sees one update.
    let gone = one.take(1).await;
    assert_eq!(changes(&gone), [change("delete", a, "new")]);
    assert_eq!(gone[0].json()["row"]["room_id"], json!(2));
    assert_eq!(changes(&two.take(1).await), [change("update", a, "new")]);
    assert_eq!(changes(&both.take(1).await), [change("update", a, "new")]);
    assert_eq!(changes(&all.take(1).await), [change("update", a, "new")]);
    for client in [&mut all, &mut one, &mut two, &mut both] {
        client.expect_quiet(Duration::from_millis(300)).await;
    }
    server.stop().await;
}

async fn hard_deletes_arrive_with_the_rows_last_state(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    install_deletes(&db, &orders.t).await;
    let server = orders.serve().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, None).await;
    let mut other_room = Client::connect(&format!("{url}?room_id=2"), None).await;
    let a = orders.insert(1, "new").await;
    assert_eq!(changes(&client.take(1).await), [change("insert", a, "new")]);
    orders.update(a, "paid").await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", a, "paid")]
    );
    db.exec(&format!("DELETE FROM {} WHERE id = {a}", orders.t))
        .await;
    let deleted = client.take(1).await;
    assert_eq!(changes(&deleted), [change("delete", a, "paid")]);
    assert_eq!(deleted[0].json()["row"]["room_id"], json!(1));
    // The tombstone's filter values are the row's: room 2 saw nothing.
    other_room.expect_quiet(Duration::from_millis(300)).await;
    // A client that resumes from before the delete gets it from the table.
    let first = orders.insert(1, "first").await;
    let got = client.take(1).await;
    assert_eq!(changes(&got), [change("insert", first, "first")]);
    server.stop().await;
    db.exec(&format!("DELETE FROM {} WHERE id = {first}", orders.t))
        .await;
    let server = orders.serve().await;
    let mut client =
        Client::connect(&format!("{}/events/orders", server.url), Some(&got[0].id)).await;
    let seen = changes_until_quiet(&mut client, Duration::from_millis(1000)).await;
    assert!(seen.contains(&change("delete", first, "first")), "{seen:?}");
    assert!(
        !seen.iter().any(|c| c.1 == first && c.0 != "delete"),
        "{seen:?}"
    );
    server.stop().await;
}

async fn a_client_from_before_the_retention_starts_over(kind: Kind) {
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    install_deletes(&db, &orders.t).await;
    let config = Rowcast::on(&db).feed("orders", &orders.t, |f| {
        changes_feed(f).set("delete_retention", "1s")
    });
    let server = config.start().await;
    let mut client = Client::connect(&format!("{}/events/orders", server.url), None).await;
    let a = orders.insert(1, "new").await;
    let got = client.take(1).await;
    let b = orders.insert(2, "new").await;
    client.take(1).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Tombstones from then may be gone: the client is told to start over,
    // then gets every live row, then live changes.
    let server = config.start().await;
    let url = format!("{}/events/orders", server.url);
    let mut client = Client::connect(&url, Some(&got[0].id)).await;
    let events = client.take(3).await;
    assert_eq!(events[0].json(), json!({"op": "reset"}));
    assert_eq!(
        changes(&events[1..]),
        [change("insert", a, "new"), change("insert", b, "new")]
    );
    // Whatever its filter.
    let mut room = Client::connect(&format!("{url}?room_id=2"), Some(&got[0].id)).await;
    let events = room.take(2).await;
    assert_eq!(events[0].json(), json!({"op": "reset"}));
    assert_eq!(changes(&events[1..]), [change("insert", b, "new")]);
    orders.update(a, "paid").await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", a, "paid")]
    );
    server.stop().await;
}

/// Postgres xmin mode: a table with no stamp column at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_xmin_mode_follows_a_table_without_a_stamp() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.table("plain");
    db.exec(&format!(
        "CREATE TABLE {t} (id bigserial PRIMARY KEY, room_id bigint NOT NULL, status text NOT NULL, deleted_at timestamptz)"
    ))
    .await;
    install_deletes(&db, &t).await;
    let insert = |status: &'static str| {
        let (pool, t) = (db.pool.clone(), t.clone());
        async move {
            sqlx::query_scalar::<_, i64>(&format!(
                "INSERT INTO {t} (room_id, status) VALUES (1, '{status}') RETURNING id"
            ))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let a = insert("new").await;
    let config = Rowcast::on(&db).feed("plain", &t, |f| {
        f.set("mode", "changes").set("updated_column", "xmin")
    });
    let server = config.start().await;
    let url = format!("{}/events/plain", server.url);
    let mut client = Client::connect(&format!("{url}?after=0"), None).await;
    assert_eq!(changes(&client.take(1).await), [change("insert", a, "new")]);
    db.exec(&format!("UPDATE {t} SET status = 'paid' WHERE id = {a}"))
        .await;
    assert_eq!(
        changes(&client.take(1).await),
        [change("update", a, "paid")]
    );
    let b = insert("new").await;
    assert_eq!(changes(&client.take(1).await), [change("insert", b, "new")]);
    db.exec(&format!("UPDATE {t} SET deleted_at = now() WHERE id = {b}"))
        .await;
    assert_eq!(changes(&client.take(1).await), [change("delete", b, "new")]);
    db.exec(&format!("DELETE FROM {t} WHERE id = {a}")).await;
    let last = client.take(1).await;
    assert_eq!(changes(&last), [change("delete", a, "paid")]);
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;

    // Another run: from the last id, only what changed since, as it is now.
    let c = insert("new").await;
    let server = config.start().await;
    let mut client =
        Client::connect(&format!("{}/events/plain", server.url), Some(&last[0].id)).await;
    let seen = changes_until_quiet(&mut client, Duration::from_millis(1000)).await;
    assert!(
        seen.contains(&change("insert", c, "new")) || seen.contains(&change("update", c, "new")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|(op, id, _)| *id == a && op != "delete"),
        "{seen:?}"
    );
    server.stop().await;
}

/// Auth rules bound a changes feed as they bound an append feed: a token
/// for room 1 gets room 1's changes only, and may not ask for room 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_rooms_bound_a_changes_feed() {
    use crate::common::auth::{get, hs256, now, SECRET};
    let db = TestDb::new(Kind::Postgres).await;
    let orders = Orders::create(&db, "orders").await;
    let server = Rowcast::on(&db)
        .auth("secret", SECRET)
        .feed("orders", &orders.t, |f| {
            changes_feed(f).auth_filter("room_id", "room_ids")
        })
        .start()
        .await;
    let token = hs256(json!({"sub": "u1", "room_ids": [1], "exp": now() + 600}));
    let url = format!("{}/events/orders?access_token={token}", server.url);
    let (status, body) = get(&format!("{url}&room_id=2"), None, None).await;
    assert_eq!(status, 403, "{body}");
    let mut client = Client::connect(&url, None).await;
    let mine = orders.insert(1, "new").await;
    let theirs = orders.insert(2, "new").await;
    // Seen before it moves: one poll that saw both would see it in room 2.
    assert_eq!(
        changes(&client.take(1).await),
        [change("insert", mine, "new")]
    );
    orders.update(theirs, "paid").await;
    orders.move_to(mine, 2).await;
    // Its own row leaving its rooms; nothing of room 2.
    assert_eq!(
        changes(&client.take(1).await),
        [change("delete", mine, "new")]
    );
    client.expect_quiet(Duration::from_millis(500)).await;
    // The same through /rows, from the start.
    let rows = format!(
        "{}/feeds/orders/rows?after=0&access_token={token}",
        server.url
    );
    let (status, body) = get_json(&rows).await;
    assert_eq!((status, body["rows"].clone()), (200, json!([])), "{body}");
    server.stop().await;
}
