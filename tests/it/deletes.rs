//! `rowcast sql deletes` as a user runs it, on every database: the trigger
//! it applies records each hard-deleted row in `rowcast_deletes` exactly as
//! clients were sent it, `--remove` stops that, the retention drops only
//! the table's own old records, any name works, and an unknown table is
//! named. `rowcast_deletes` is shared by every test of a Postgres or MariaDB
//! database, so each test reads only the records of its own tables.

use crate::cli::{finish, rowcast, text};
use crate::common::*;
use rowcast::source::Source;
use serde_json::{json, Map, Value};
use sqlx::Row as _;
use std::process::Output;
use std::time::Duration;

/// One row of `rowcast_deletes`, with `deleted_at` as its age in seconds.
#[derive(Debug)]
struct Record {
    table_name: String,
    row_key: String,
    row_data: Option<String>,
    age: f64,
}

/// The URL a user gives rowcast for `db`.
fn rowcast_url(db: &TestDb) -> String {
    db.url.trim_end_matches("?mode=rwc").to_owned()
}

/// `table` as `rowcast_deletes.table_name` names it: `schema.table` on
/// Postgres, `database.table` on MySQL, the table on SQLite.
async fn recorded_as(db: &TestDb, table: &str) -> String {
    let schema = match db.kind {
        Kind::Postgres => "SELECT current_schema()::text",
        Kind::MySql => "SELECT CAST(DATABASE() AS CHAR)",
        Kind::Sqlite => return table.to_owned(),
    };
    let schema: String = sqlx::query_scalar(schema)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    format!("{schema}.{table}")
}

/// `text` as an SQL string literal under the test database's settings.
fn literal(db: &TestDb, text: &str) -> String {
    let text = text.replace('\'', "''");
    match db.kind {
        Kind::MySql => format!("'{}'", text.replace('\\', "\\\\")),
        Kind::Postgres | Kind::Sqlite => format!("'{text}'"),
    }
}

/// Runs `rowcast sql deletes --table <table> <flags> --database-url …`.
async fn sql_deletes(db: &TestDb, table: &str, flags: &[&str]) -> Output {
    let url = rowcast_url(db);
    let mut args = vec!["sql", "deletes", "--table", table];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--database-url", &url]);
    finish(rowcast(&args), Duration::from_secs(30)).await
}

/// Applies the trigger (or with `--remove`, its removal) and returns the SQL
/// it printed; panics unless it succeeded. The table's records are deleted
/// when the test ends.
async fn apply(db: &TestDb, table: &str, flags: &[&str]) -> String {
    let mut flags = flags.to_vec();
    flags.push("--apply");
    let output = sql_deletes(db, table, &flags).await;
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert_eq!(
        stderr,
        format!("rowcast: applied to {}\n", rowcast_url(db)),
        "{stdout}"
    );
    if db.kind != Kind::Sqlite {
        let name = recorded_as(db, table).await;
        db.on_drop(format!(
            "DELETE FROM rowcast_deletes WHERE table_name = {}",
            literal(db, &name)
        ));
    }
    stdout
}

/// The records of `table`, oldest first.
async fn records(db: &TestDb, table: &str) -> Vec<Record> {
    let (data, age) = match db.kind {
        Kind::Postgres => ("row_data", "EXTRACT(EPOCH FROM now() - deleted_at)::float8"),
        // The driver takes LONGTEXT, and any text longer than 64 KiB, for bytes.
        Kind::MySql => (
            "CAST(row_data AS CHAR(10000))",
            "CAST(TIMESTAMPDIFF(MICROSECOND, deleted_at, NOW(6)) / 1e6 AS DOUBLE)",
        ),
        Kind::Sqlite => (
            "row_data",
            "(julianday('now') - julianday(deleted_at)) * 86400.0",
        ),
    };
    let sql = format!(
        "SELECT table_name, row_key, {data}, {age} FROM rowcast_deletes \
         WHERE table_name = {} ORDER BY id",
        db.placeholder(1)
    );
    let rows = sqlx::query(&sql)
        .bind(recorded_as(db, table).await)
        .fetch_all(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|row| Record {
            table_name: row.get(0),
            row_key: row.get(1),
            row_data: row.get(2),
            age: row.get(3),
        })
        .collect()
}

/// The `row_key`s of `table`'s records, oldest first.
async fn keys(db: &TestDb, table: &str) -> Vec<String> {
    records(db, table)
        .await
        .into_iter()
        .map(|r| r.row_key)
        .collect()
}

/// Deletes rows as an application whose session has another time zone than
/// rowcast's does.
async fn delete_elsewhere(db: &TestDb, table: &str, ids: &[i64]) {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    let delete = format!("DELETE FROM {table} WHERE id IN ({})", ids.join(", "));
    db.exec(&match db.kind {
        Kind::Postgres => {
            format!("BEGIN; SET LOCAL TimeZone = 'Asia/Tokyo'; {delete}; COMMIT")
        }
        Kind::MySql => format!(
            "SET @zone = @@session.time_zone; SET time_zone = '+09:00'; {delete}; \
             SET time_zone = @zone"
        ),
        Kind::Sqlite => delete,
    })
    .await;
}

/// A table whose rows hold times, decimals, floats, booleans, JSON, NULL
/// and non-ASCII text, with three rows.
async fn typed_table(db: &TestDb) -> String {
    let t = db.table("typed");
    db.exec(&match db.kind {
        Kind::Postgres => format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, body text NOT NULL, \
             at timestamptz NOT NULL DEFAULT now(), price numeric(10, 2), ratio float8, \
             flag boolean, tags jsonb, note text)"
        ),
        Kind::MySql => format!(
            "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, body LONGTEXT NOT NULL, \
             at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), price DECIMAL(10, 2), \
             ratio DOUBLE, flag BOOLEAN, tags JSON, note TEXT) DEFAULT CHARSET = utf8mb4"
        ),
        Kind::Sqlite => format!(
            "CREATE TABLE {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL, \
             at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, price NUMERIC, ratio REAL, \
             flag INTEGER, tags TEXT, note TEXT)"
        ),
    })
    .await;
    db.exec(&format!(
        "INSERT INTO {t} (body, price, ratio, flag, tags, note) VALUES \
         ('it''s \"quoted\" 名前', 12.50, 0.1, TRUE, '{{\"a\": [1, 2]}}', NULL), \
         ('second', 3.00, 2.5e-7, FALSE, '[]', 'x'), \
         ('third', NULL, NULL, NULL, NULL, 'é')"
    ))
    .await;
    t
}

async fn deleted_rows_are_recorded_as_clients_saw_them(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = typed_table(&db).await;
    let server = Rowcast::on(&db).feed("typed", &t, |f| f).start().await;
    let url = format!("{}/events/typed?after=start", server.url);
    let sent = Client::connect(&url, None).await.take(3).await;
    server.stop().await;
    let source = Source::connect(&rowcast_url(&db), 1).await.unwrap();
    if kind == Kind::Sqlite {
        // A file of its own: no test created the shared table in it yet.
        assert!(!source.deletes_table(None).await.unwrap());
    }

    let printed = apply(&db, &t, &[]).await;
    assert!(
        printed.starts_with("-- rowcast hard deletes for "),
        "{printed}"
    );
    // Every statement may run again: one record per deleted row still.
    assert_eq!(apply(&db, &t, &[]).await, printed);
    let (first, third) = (&sent[0], &sent[2]);
    let ids: Vec<i64> = [first, third]
        .iter()
        .map(|e| e.id.parse().unwrap())
        .collect();
    delete_elsewhere(&db, &t, &ids).await;

    let got = records(&db, &t).await;
    let name = recorded_as(&db, &t).await;
    let seen: Vec<(String, String, Option<String>)> = got
        .iter()
        .map(|r| (r.table_name.clone(), r.row_key.clone(), r.row_data.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (name.clone(), first.id.clone(), Some(first.data.clone())),
            (name.clone(), third.id.clone(), Some(third.data.clone())),
        ],
        "each record is the row as its event showed it, to the byte"
    );
    for (record, event) in got.iter().zip([first, third]) {
        let row: Value = serde_json::from_str(record.row_data.as_deref().unwrap()).unwrap();
        assert_eq!(row, event.json());
        assert!(
            (-1.0..60.0).contains(&record.age),
            "deleted_at is now: {record:?}"
        );
    }
    assert_eq!(
        serde_json::from_str::<Value>(got[0].row_data.as_deref().unwrap()).unwrap()["body"],
        json!("it's \"quoted\" 名前")
    );
    assert!(source.deletes_table(None).await.unwrap());
}

async fn remove_stops_recording(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.messages("messages").await;
    let ids = db.insert_many(&t, 1, 3).await;
    apply(&db, &t, &[]).await;
    delete_elsewhere(&db, &t, &ids[..1]).await;
    assert_eq!(keys(&db, &t).await, [ids[0].to_string()]);

    let removal = apply(&db, &t, &["--remove"]).await;
    assert!(removal.starts_with("DROP TRIGGER IF EXISTS "), "{removal}");
    delete_elsewhere(&db, &t, &ids[1..2]).await;
    assert_eq!(
        keys(&db, &t).await,
        [ids[0].to_string()],
        "nothing recorded once removed, and the old record stays"
    );
    // The shared table stays for other tables.
    let source = Source::connect(&rowcast_url(&db), 1).await.unwrap();
    assert!(source.deletes_table(None).await.unwrap());
    // Removing twice is fine too.
    apply(&db, &t, &["--remove"]).await;
}

async fn retention_drops_only_the_tables_own_old_records(kind: Kind) {
    let db = TestDb::new(kind).await;
    let (a, b) = (db.messages("a").await, db.messages("b").await);
    let (a_ids, b_ids) = (
        db.insert_many(&a, 1, 3).await,
        db.insert_many(&b, 1, 2).await,
    );
    apply(&db, &a, &["--retention", "1s"]).await;
    apply(&db, &b, &["--retention", "1s"]).await;
    delete_elsewhere(&db, &a, &a_ids[..1]).await;
    delete_elsewhere(&db, &b, &b_ids[..1]).await;
    delete_elsewhere(&db, &a, &a_ids[1..2]).await;
    assert_eq!(
        keys(&db, &a).await,
        [a_ids[0].to_string(), a_ids[1].to_string()],
        "records younger than the retention stay"
    );

    // The database's clock decides, so the test waits for it.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    delete_elsewhere(&db, &a, &a_ids[2..]).await;
    assert_eq!(keys(&db, &a).await, [a_ids[2].to_string()]);
    assert_eq!(
        keys(&db, &b).await,
        [b_ids[0].to_string()],
        "another table's old records wait for that table's deletes"
    );
}

/// What follows the unique prefix in the name of the table with odd names.
const ODD_TABLE: &str = "it's \"odd\" `tbl` \\ 名前";
/// Its key column, then its text columns.
const ODD_KEY: &str = "Key \"k\" `x`";
const ODD_TEXT: [&str; 5] = [" leading space", "it's", "back\\slash", "select", "名前"];

async fn any_name_works(kind: Kind) {
    let db = TestDb::new(kind).await;
    let t = db.odd_table(ODD_TABLE);
    let (key, text_type, options) = match db.kind {
        Kind::Postgres => ("bigserial PRIMARY KEY", "text", ""),
        Kind::MySql => (
            "BIGINT AUTO_INCREMENT PRIMARY KEY",
            "LONGTEXT",
            " DEFAULT CHARSET = utf8mb4",
        ),
        Kind::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", ""),
    };
    let columns: Vec<String> = ODD_TEXT
        .iter()
        .map(|c| format!("{} {text_type}", db.quote(c)))
        .collect();
    db.exec(&format!(
        "CREATE TABLE {} ({} {key}, {}){options}",
        db.quote(&t),
        db.quote(ODD_KEY),
        columns.join(", ")
    ))
    .await;
    let names: Vec<String> = ODD_TEXT.iter().map(|c| db.quote(c)).collect();
    let values: Vec<String> = ODD_TEXT
        .iter()
        .map(|c| literal(&db, &format!("{c} = it's \"1\" \\ №1")))
        .collect();
    for _ in 0..2 {
        db.exec(&format!(
            "INSERT INTO {} ({}) VALUES ({})",
            db.quote(&t),
            names.join(", "),
            values.join(", ")
        ))
        .await;
    }

    apply(&db, &t, &[]).await;
    db.exec(&format!(
        "DELETE FROM {} WHERE {} = 1",
        db.quote(&t),
        db.quote(ODD_KEY)
    ))
    .await;
    let got = records(&db, &t).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].table_name, recorded_as(&db, &t).await);
    assert_eq!(got[0].row_key, "1");
    let mut row = Map::new();
    row.insert(ODD_KEY.into(), json!(1));
    for c in ODD_TEXT {
        row.insert(c.into(), json!(format!("{c} = it's \"1\" \\ №1")));
    }
    let data: Value = serde_json::from_str(got[0].row_data.as_deref().unwrap()).unwrap();
    assert_eq!(data, Value::Object(row));

    apply(&db, &t, &["--remove"]).await;
    db.exec(&format!("DELETE FROM {}", db.quote(&t))).await;
    assert_eq!(records(&db, &t).await.len(), 1);
}

async fn an_unknown_table_is_named_as_check_names_it(kind: Kind) {
    let db = TestDb::new(kind).await;
    db.messages("messages").await;
    let missing = db.table("missing");
    let output = sql_deletes(&db, &missing, &["--apply"]).await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{:?}: {stderr}", output.status);
    assert_eq!(text(&output.stdout), "", "nothing printed, nothing applied");
    let line = stderr.lines().last().unwrap_or_default();
    let named = format!(
        "rowcast: table `{}` not found; tables: ",
        recorded_as(&db, &missing).await
    );
    assert!(line.starts_with(&named), "{stderr}");

    let url = rowcast_url(&db);
    let check = finish(
        rowcast(&["check", "--database-url", &url, "--table", &missing]),
        Duration::from_secs(30),
    )
    .await;
    let check = text(&check.stderr);
    let check_line = check.lines().last().unwrap_or_default();
    assert!(check_line.starts_with(&named), "{check}");
    if kind == Kind::Sqlite {
        // One file, one test: the list of tables cannot change in between.
        assert_eq!(line, check_line);
    }
}

each_db!(
    deleted_rows_are_recorded_as_clients_saw_them,
    remove_stops_recording,
    retention_drops_only_the_tables_own_old_records,
    any_name_works,
    an_unknown_table_is_named_as_check_names_it,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_names_the_trigger_of_a_64_character_table_within_64_characters() {
    let db = TestDb::new(Kind::MySql).await;
    // The unique prefix is 12 characters: MySQL's longest table name.
    let t = db.messages(&"l".repeat(52)).await;
    assert_eq!(t.chars().count(), 64);
    let ids = db.insert_many(&t, 1, 2).await;
    apply(&db, &t, &[]).await;
    delete_elsewhere(&db, &t, &ids[..1]).await;
    assert_eq!(keys(&db, &t).await, [ids[0].to_string()]);
    apply(&db, &t, &["--remove"]).await;
    delete_elsewhere(&db, &t, &ids[1..]).await;
    assert_eq!(keys(&db, &t).await, [ids[0].to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_needs_a_database_to_read_the_columns_from() {
    let output = finish(
        rowcast(&["sql", "deletes", "--table", "messages"]),
        Duration::from_secs(5),
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert_eq!(text(&output.stdout), "");
}
