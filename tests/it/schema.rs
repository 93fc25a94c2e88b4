//! Real tables differ from `messages(id serial)`: a cursor that is a unique,
//! nullable, non-primary column with negative ids; unsigned 64-bit ids;
//! rows read through a view or a configured SELECT with a join; a static row
//! condition; a subset of columns. And the start-up errors a user sees when
//! a feed does not fit its table, with the exact text they read.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// How each database spells the parts of a test table.
struct Ddl {
    /// An auto-increment integer primary key.
    auto_pk: &'static str,
    /// A column type for text of any length.
    text: &'static str,
}

fn ddl(kind: Kind) -> Ddl {
    match kind {
        Kind::Postgres => Ddl {
            auto_pk: "bigserial PRIMARY KEY",
            text: "text",
        },
        Kind::MySql => Ddl {
            auto_pk: "BIGINT AUTO_INCREMENT PRIMARY KEY",
            text: "LONGTEXT",
        },
        Kind::Sqlite => Ddl {
            auto_pk: "INTEGER PRIMARY KEY AUTOINCREMENT",
            text: "TEXT",
        },
    }
}

/// The table's name as rowcast's messages spell it: `schema.table` where
/// the database has schemas, the bare name on SQLite.
fn display(db: &TestDb, table: &str) -> String {
    match db.kind {
        Kind::Postgres => format!("public.{table}"),
        Kind::MySql => format!("test.{table}"),
        Kind::Sqlite => table.to_owned(),
    }
}

/// The settings of every feed here, before its own.
///
/// The ids here have gaps on purpose (sparse, negative, explicit), and on
/// MariaDB every open transaction on the server, other tests' included,
/// counts as a writer that could fill one: a short hold cap keeps these
/// tests about their subject, not about how long a gap is held.
fn short_hold(f: Feed) -> Feed {
    f.set("hold_cap", "3s")
}

each_db!(
    nullable_unique_cursor_with_negative_ids,
    view_with_a_join_is_read_through_from,
    select_with_a_join_is_read_as_a_subquery,
    where_condition_excludes_rows_across_resumes,
    columns_limit_the_json_keys,
    unknown_table_lists_the_existing_ones,
    unknown_filter_column_lists_the_columns,
    unknown_id_column_lists_the_columns,
    text_primary_key_is_no_cursor,
    table_without_primary_key_is_no_cursor,
    id_column_without_unique_index_is_no_cursor,
    suggested_cursor_makes_the_feed_usable,
    table_without_unique_integer_is_no_cursor,
    view_as_table_is_no_cursor,
);

async fn nullable_unique_cursor_with_negative_ids(kind: Kind) {
    let db = TestDb::new(kind).await;
    let d = ddl(kind);
    let t = db.table("events");
    db.exec(&format!(
        "CREATE TABLE {t} (pk {}, stream_ordering BIGINT NULL, body {} NOT NULL)",
        d.auto_pk, d.text
    ))
    .await;
    db.exec(&format!(
        "CREATE UNIQUE INDEX {t}_so ON {t} (stream_ordering)"
    ))
    .await;
    // Primary-key order differs from cursor order: the cursor must win. A
    // unique index admits any number of NULLs; no such row is in the feed.
    for (ordering, body) in [
        ("2", "two"),
        ("NULL", "no ordering"),
        ("-3", "minus three"),
        ("NULL", "no ordering either"),
        ("-5", "minus five"),
    ] {
        db.exec(&format!(
            "INSERT INTO {t} (stream_ordering, body) VALUES ({ordering}, '{body}')"
        ))
        .await;
    }
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            short_hold(f).id_column("stream_ordering")
        })
        .start()
        .await;
    let (_, feeds) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(feeds["feeds"][0]["cursor"], "2", "{feeds}");
    let url = format!("{}/events/messages", server.url);
    let mut client = Client::connect(&format!("{url}?after=start"), None).await;
    let got = client.take(3).await;
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["-5", "-3", "2"]
    );
    assert_eq!(bodies(&got), ["minus five", "minus three", "two"]);
    for event in &got {
        assert_eq!(
            event.json()["stream_ordering"],
            json!(event.id.parse::<i64>().unwrap())
        );
    }

    db.exec(&format!(
        "INSERT INTO {t} (stream_ordering, body) VALUES (7, 'seven')"
    ))
    .await;
    let live = client.take(1).await;
    assert_eq!(live[0].id, "7");
    assert_eq!(bodies(&live), ["seven"]);
    assert_eq!(live[0].json()["stream_ordering"], json!(7));
    client.expect_quiet(Duration::from_millis(300)).await;

    // Resuming from a negative id passes over the NULL rows too.
    let mut resumed = Client::connect(&url, Some("-3")).await;
    let got = resumed.take(2).await;
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["2", "7"]
    );
    resumed.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_unsigned_ids_above_i64_max() {
    let db = TestDb::new(Kind::MySql).await;
    let t = db.table("big");
    db.exec(&format!(
        "CREATE TABLE {t} (id BIGINT UNSIGNED NOT NULL PRIMARY KEY, body LONGTEXT NOT NULL)"
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {t} (id, body) VALUES (9223372036854775807, 'i64 max'), \
         (9223372036854775808, 'i64 max + 1'), (18446744073709551614, 'u64 max - 1')"
    ))
    .await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, short_hold)
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);
    let mut client = Client::connect(&format!("{url}?after=9223372036854775807"), None).await;
    let got = client.take(2).await;
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["9223372036854775808", "18446744073709551614"]
    );
    assert_eq!(
        got.iter()
            .map(|e| e.json()["id"].as_u64())
            .collect::<Vec<_>>(),
        [Some(9223372036854775808), Some(18446744073709551614)]
    );
    assert_eq!(bodies(&got), ["i64 max + 1", "u64 max - 1"]);

    // The very last id a BIGINT UNSIGNED can hold still arrives live.
    db.exec(&format!(
        "INSERT INTO {t} (id, body) VALUES (18446744073709551615, 'u64 max')"
    ))
    .await;
    let live = client.take(1).await;
    assert_eq!(live[0].id, "18446744073709551615");
    assert_eq!(live[0].json()["id"].as_u64(), Some(u64::MAX));
    client.expect_quiet(Duration::from_millis(300)).await;
    let (_, feeds) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(
        feeds["feeds"][0]["cursor"], "18446744073709551615",
        "{feeds}"
    );

    // Past the column's type, either way, a cursor is refused, not clamped.
    let unsigned = "expected an integer from 0 to 18446744073709551615 or `start`";
    for after in ["18446744073709551616", "-1"] {
        let detail = format!("after: `{after}` is outside the ids of this feed: {unsigned}");
        for url in [
            format!("{url}?after={after}"),
            format!("{}/feeds/messages/rows?after={after}", server.url),
        ] {
            assert_eq!(
                get_json(&url).await,
                (400, json!({ "error": "bad_cursor", "detail": detail })),
                "{url}"
            );
        }
    }
    server.stop().await;
}

/// Creates `messages(id, user_id, body)` and `users(id, name)` with users
/// 1 `ann` and 2 `bob`; returns their names.
async fn messages_and_users(db: &TestDb) -> (String, String) {
    let d = ddl(db.kind);
    let m = db.table("messages");
    let u = db.table("users");
    db.exec(&format!(
        "CREATE TABLE {u} (id BIGINT PRIMARY KEY, name {} NOT NULL)",
        d.text
    ))
    .await;
    db.exec(&format!(
        "CREATE TABLE {m} (id {}, user_id BIGINT NOT NULL, body {} NOT NULL)",
        d.auto_pk, d.text
    ))
    .await;
    db.exec(&format!(
        "INSERT INTO {u} (id, name) VALUES (1, 'ann'), (2, 'bob')"
    ))
    .await;
    (m, u)
}

async fn post(db: &TestDb, messages: &str, id: i64, user_id: i64, body: &str) {
    db.exec(&format!(
        "INSERT INTO {messages} (id, user_id, body) VALUES ({id}, {user_id}, '{body}')"
    ))
    .await;
}

/// Rows of a joined feed: one before start (read with `?after=start`), two
/// live; every one with exactly the joined keys.
async fn expect_joined_rows(db: &TestDb, messages: &str, rowcast: Rowcast, name_key: &str) {
    post(db, messages, 1, 1, "before start").await;
    let server = rowcast.start().await;
    let mut client =
        Client::connect(&format!("{}/events/messages?after=start", server.url), None).await;
    let first = client.take(1).await;
    post(db, messages, 2, 2, "from bob").await;
    post(db, messages, 3, 1, "from ann").await;
    let got = [first, client.take(2).await].concat();
    assert_eq!(ids(&got), [1, 2, 3]);
    assert_eq!(
        got.iter().map(Ev::json).collect::<Vec<_>>(),
        [
            json!({"id": 1, "body": "before start", name_key: "ann"}),
            json!({"id": 2, "body": "from bob", name_key: "bob"}),
            json!({"id": 3, "body": "from ann", name_key: "ann"}),
        ]
    );
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn view_with_a_join_is_read_through_from(kind: Kind) {
    let db = TestDb::new(kind).await;
    let (m, u) = messages_and_users(&db).await;
    let v = db.table("view"); // registered last: dropped first
    db.exec(&format!(
        "CREATE VIEW {v} AS SELECT m.id, m.body, u.name FROM {m} m JOIN {u} u ON u.id = m.user_id"
    ))
    .await;
    let rowcast = Rowcast::on(&db).feed("messages", &m, |f| short_hold(f).from(&v));
    expect_joined_rows(&db, &m, rowcast, "name").await;
}

async fn select_with_a_join_is_read_as_a_subquery(kind: Kind) {
    let db = TestDb::new(kind).await;
    let (m, u) = messages_and_users(&db).await;
    let select =
        format!("SELECT m.id, m.body, u.name AS author FROM {m} m JOIN {u} u ON u.id = m.user_id");
    let rowcast = Rowcast::on(&db).feed("messages", &m, |f| short_hold(f).select(&select));
    expect_joined_rows(&db, &m, rowcast, "author").await;
}

async fn where_condition_excludes_rows_across_resumes(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let a1 = db.insert(&t, 1, "a1").await;
    let _a2 = db.insert(&t, 2, "a2").await;
    let a3 = db.insert(&t, 3, "a3").await;
    let _a4 = db.insert(&t, 2, "a4").await;
    let a5 = db.insert(&t, 1, "a5").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).condition("room_id <> 2"))
        .start()
        .await;
    let url = format!("{}/events/messages", server.url);

    // Rows written before start: read from the database, room 2 left out.
    let mut client = Client::connect(&url, Some(&a1.to_string())).await;
    let got = client.take(2).await;
    assert_eq!(ids(&got), [a3, a5]);
    assert_eq!(bodies(&got), ["a3", "a5"]);

    // Live rows: room 2 never arrives.
    let _b1 = db.insert(&t, 2, "b1").await;
    let b2 = db.insert(&t, 1, "b2").await;
    let _b3 = db.insert(&t, 2, "b3").await;
    let b4 = db.insert(&t, 3, "b4").await;
    assert_eq!(ids(&client.take(2).await), [b2, b4]);
    client.expect_quiet(Duration::from_millis(300)).await;
    drop(client);

    // Resuming from b2 passes over the excluded b3, c1 and c2.
    let _c1 = db.insert(&t, 2, "c1").await;
    let _c2 = db.insert(&t, 2, "c2").await;
    let c3 = db.insert(&t, 1, "c3").await;
    let mut client = Client::connect(&url, Some(&b2.to_string())).await;
    let got = client.take(2).await;
    assert_eq!(ids(&got), [b4, c3]);
    assert_eq!(bodies(&got), ["b4", "c3"]);
    client.expect_quiet(Duration::from_millis(300)).await;

    // The whole table from the start: every row but room 2's, in order.
    let mut client = Client::connect(&format!("{url}?after=start"), None).await;
    assert_eq!(ids(&client.take(6).await), [a1, a3, a5, b2, b4, c3]);
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn columns_limit_the_json_keys(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let server = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).columns(["id", "body"]))
        .start()
        .await;
    let mut client = Client::connect(&format!("{}/events/messages", server.url), None).await;
    let first = db.insert(&t, 4, "hello").await;
    let second = db.insert(&t, 5, "world").await;
    let got = client.take(2).await;
    assert_eq!(ids(&got), [first, second]);
    assert_eq!(
        got.iter().map(Ev::json).collect::<Vec<_>>(),
        [
            json!({"id": first, "body": "hello"}),
            json!({"id": second, "body": "world"}),
        ]
    );
    server.stop().await;
}

async fn unknown_table_lists_the_existing_ones(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let missing = db.table("missing"); // never created
    let err = Rowcast::on(&db)
        .feed("messages", &missing, short_hold)
        .start_up_error()
        .await;
    let head = format!("table `{}` not found; tables: ", display(&db, &missing));
    let Some(tables) = err.strip_prefix(&head) else {
        panic!("expected {head:?}…, got {err:?}");
    };
    let tables: Vec<&str> = tables.split(", ").collect();
    assert!(tables.contains(&t.as_str()), "{t} not in {tables:?}");
    assert!(!tables.contains(&missing.as_str()), "{tables:?}");
}

async fn unknown_filter_column_lists_the_columns(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).filter_columns(["nope"]))
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `filter_columns`: column `nope` not found in `{}`; columns: id, room_id, body",
            display(&db, &t)
        )
    );
}

async fn unknown_id_column_lists_the_columns(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).id_column("nope"))
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `id_column`: column `nope` not found in `{}`; columns: id, room_id, body",
            display(&db, &t)
        )
    );
}

async fn text_primary_key_is_no_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.table("keyed");
    // The key type as each database's catalog spells it.
    let key_type = match kind {
        Kind::Postgres => "text",
        Kind::MySql => "varchar(64)",
        Kind::Sqlite => "TEXT",
    };
    db.exec(&format!(
        "CREATE TABLE {t} (id {key_type} PRIMARY KEY, body {} NOT NULL)",
        ddl(kind).text
    ))
    .await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, short_hold)
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `{}` has no usable cursor: column `id` is `{key_type}`, not an integer; \
             set `id_column` (--id-column) to a unique, increasing integer column",
            display(&db, &t)
        )
    );
}

async fn table_without_primary_key_is_no_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.table("keyless");
    db.exec(&format!(
        "CREATE TABLE {t} (id BIGINT NOT NULL, body {} NOT NULL)",
        ddl(kind).text
    ))
    .await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, short_hold)
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `{}` has no usable cursor: it has no primary key; \
             set `id_column` (--id-column) to a unique, increasing integer column",
            display(&db, &t)
        )
    );
}

/// Creates `name(id, seq, room_id, body)` where `seq` has a plain index and
/// a unique one over `(seq, room_id)`: neither makes `seq` alone unique.
async fn sequenced(db: &TestDb, name: &str) -> String {
    let t = db.table(name);
    let d = ddl(db.kind);
    db.exec(&format!(
        "CREATE TABLE {t} (id {}, seq BIGINT NOT NULL, room_id BIGINT NOT NULL, body {} NOT NULL)",
        d.auto_pk, d.text
    ))
    .await;
    db.exec(&format!("CREATE INDEX {t}_seq ON {t} (seq)")).await;
    db.exec(&format!(
        "CREATE UNIQUE INDEX {t}_seq_room ON {t} (seq, room_id)"
    ))
    .await;
    t
}

async fn id_column_without_unique_index_is_no_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = sequenced(&db, "sequenced").await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).id_column("seq"))
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `{}` has no usable cursor: column `seq` has no unique index, \
             and rows sharing an id could be skipped; set `id_column` (--id-column) to one of \
             its unique integer columns (`id`), or set `table` to a table whose unique id \
             orders these rows and `select` them with a join",
            display(&db, &t)
        )
    );
}

/// A user who sets the column the error names gets a working feed, with
/// no change to the application's table.
async fn suggested_cursor_makes_the_feed_usable(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = sequenced(&db, "sequenced").await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).id_column("seq"))
        .start_up_error()
        .await;
    let column = err
        .split_once("unique integer columns (`")
        .and_then(|(_, rest)| rest.split_once("`)"))
        .map(|(column, _)| column)
        .unwrap_or_else(|| panic!("no suggested column in {err:?}"));
    let rowcast = Rowcast::on(&db).feed("messages", &t, |f| short_hold(f).id_column(column));
    if let Err(e) = rowcast.prepare().await {
        panic!("still refused with `id_column = {column}`: {e}");
    }
}

/// With no unique integer column to name, the error says so and names
/// the way that remains.
async fn table_without_unique_integer_is_no_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.table("coded");
    // A unique column that is not an integer is no candidate.
    db.exec(&format!(
        "CREATE TABLE {t} (code VARCHAR(64) NOT NULL UNIQUE, seq BIGINT NOT NULL, body {} NOT NULL)",
        ddl(kind).text
    ))
    .await;
    let err = Rowcast::on(&db)
        .feed("messages", &t, |f| short_hold(f).id_column("seq"))
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `{}` has no usable cursor: column `seq` has no unique index, \
             and rows sharing an id could be skipped; it has no unique integer column, so set \
             `table` to a table whose unique id orders these rows and `select` them with a join",
            display(&db, &t)
        )
    );
}

async fn view_as_table_is_no_cursor(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let v = db.table("view");
    db.exec(&format!("CREATE VIEW {v} AS SELECT id, body FROM {t}"))
        .await;
    let err = Rowcast::on(&db)
        .feed("messages", &v, short_hold)
        .start_up_error()
        .await;
    assert_eq!(
        err,
        format!(
            "feed `messages`: `{}` has no usable cursor: it is a view, not a table; \
             set `table` to its base table and `from` to the view",
            display(&db, &v)
        )
    );
}

/// `prepare` fails with `cannot connect to <url>` within a few seconds.
async fn expect_unreachable(url: &str) {
    let rowcast = Rowcast::at(url).feed("messages", "messages", |f| f);
    let err = tokio::time::timeout(Duration::from_secs(10), rowcast.start_up_error())
        .await
        .unwrap_or_else(|_| panic!("prepare against {url} still waiting after 10 s"));
    let head = format!("cannot connect to {url}");
    assert!(err.starts_with(&head), "expected {head:?}…, got {err:?}");
}

#[tokio::test]
async fn unreachable_postgres_is_named() {
    expect_unreachable("postgres://postgres@127.0.0.1:1/test").await;
}

#[tokio::test]
async fn unreachable_mysql_is_named() {
    expect_unreachable("mysql://root@127.0.0.1:1/test").await;
}

#[tokio::test]
async fn missing_sqlite_file_is_named_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.db");
    expect_unreachable(&format!("sqlite://{}", path.display())).await;
    assert!(!path.exists(), "rowcast created {}", path.display());
}

/// The refused connection, not only a pool timeout, is what the user needs
/// to read to tell a stopped database from a wrong host or a firewall.
async fn expect_refusal_named(url: &str) {
    let rowcast = Rowcast::at(url).feed("messages", "messages", |f| f);
    let err = tokio::time::timeout(Duration::from_secs(10), rowcast.start_up_error())
        .await
        .unwrap_or_else(|_| panic!("prepare against {url} still waiting after 10 s"));
    assert!(err.contains("Connection refused"), "{err}");
}

#[tokio::test]
async fn unreachable_postgres_names_the_refusal() {
    expect_refusal_named("postgres://postgres@127.0.0.1:1/test").await;
}

#[tokio::test]
async fn unreachable_mysql_names_the_refusal() {
    expect_refusal_named("mysql://root@127.0.0.1:1/test").await;
}
