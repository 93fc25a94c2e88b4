//! Names as real schemas have them: a table, its columns, a view and a
//! SELECT's output named `t`, `r`, `select` or `order`, in mixed case, with
//! spaces, quotes of every kind, backslashes and non-ASCII letters, and a
//! column named like its table. Each is sent, filtered on, used as the
//! cursor and in `where` exactly as the database holds it, on every
//! database; a name a `select` yields twice is refused at start-up.

use crate::common::*;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// What follows the unique prefix in the name of the test table.
const TABLE: &str = "it's \"odd\" `tbl` \\ 名前";

/// The cursor column: the alias rowcast's SQL once gave the table.
const CURSOR: &str = "t";

/// The filter column.
const ROOM: &str = "Room Id";

/// Text columns, besides one named like the table. (MySQL allows no
/// space at the end of a name, only at the start.)
const TEXT: [&str; 11] = [
    " leading space",
    "r",
    "select",
    "order",
    "Mixed Case",
    "it's",
    "\"dq\"",
    "`bt`",
    "back\\slash",
    "prénom",
    "名前",
];

/// A table whose name and columns are all odd.
struct Odd {
    /// The table's name, unquoted.
    table: String,
    /// Its text columns, in table order (the last is named like the table).
    text: Vec<String>,
}

impl Odd {
    /// Creates the table: `t` (auto-increment key), `Room Id`, then the text
    /// columns.
    async fn create(db: &TestDb) -> Odd {
        let table = db.odd_table(TABLE);
        let mut text: Vec<String> = TEXT.iter().map(|c| c.to_string()).collect();
        text.push(table.clone());
        let (key, text_type, options) = match db.kind {
            Kind::Postgres => ("bigserial PRIMARY KEY", "text", ""),
            Kind::MySql => (
                "BIGINT AUTO_INCREMENT PRIMARY KEY",
                "LONGTEXT",
                " DEFAULT CHARSET = utf8mb4",
            ),
            Kind::Sqlite => ("INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT", ""),
        };
        let columns: Vec<String> = text
            .iter()
            .map(|c| format!("{} {text_type} NOT NULL", db.quote(c)))
            .collect();
        db.exec(&format!(
            "CREATE TABLE {} ({} {key}, {} BIGINT NOT NULL, {}){options}",
            db.quote(&table),
            db.quote(CURSOR),
            db.quote(ROOM),
            columns.join(", ")
        ))
        .await;
        Odd { table, text }
    }

    /// The value row `n` holds in `column`: odd characters too.
    fn value(column: &str, n: i64) -> String {
        format!("{column} = it's \"{n}\" \\ №{n}")
    }

    /// Inserts row `n` in `room` and returns it as JSON, every column under
    /// its own name.
    async fn insert(&self, db: &TestDb, room: i64, n: i64) -> Value {
        let names: Vec<String> = std::iter::once(ROOM.to_owned())
            .chain(self.text.iter().cloned())
            .collect();
        let places: Vec<String> = (1..=names.len()).map(|i| db.placeholder(i)).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            db.quote(&self.table),
            names
                .iter()
                .map(|c| db.quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            places.join(", ")
        );
        let id: i64 = match db.kind {
            Kind::MySql => {
                let mut query = sqlx::query(&sql).bind(room);
                for column in &self.text {
                    query = query.bind(Odd::value(column, n));
                }
                let done = query.execute(&db.pool).await.unwrap();
                done.last_insert_id().unwrap()
            }
            _ => {
                let sql = format!("{sql} RETURNING {}", db.quote(CURSOR));
                let mut query = sqlx::query_scalar(&sql).bind(room);
                for column in &self.text {
                    query = query.bind(Odd::value(column, n));
                }
                query.fetch_one(&db.pool).await.unwrap()
            }
        };
        let mut row = Map::new();
        row.insert(CURSOR.into(), json!(id));
        row.insert(ROOM.into(), json!(room));
        for column in &self.text {
            row.insert(column.clone(), json!(Odd::value(column, n)));
        }
        Value::Object(row)
    }
}

/// `text` percent-encoded for a URL query.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The ids and the whole JSON object of each event.
fn rows(events: &[Ev]) -> Vec<(String, Value)> {
    events.iter().map(|e| (e.id.clone(), e.json())).collect()
}

/// The id and object each event should carry for `rows`.
fn expected(rows: &[&Value]) -> Vec<(String, Value)> {
    rows.iter()
        .map(|row| (row[CURSOR].to_string(), (*row).clone()))
        .collect()
}

/// `row` with only `keys`.
fn only(row: &Value, keys: &[&str]) -> Value {
    let object = row.as_object().unwrap();
    Value::Object(
        keys.iter()
            .map(|k| (k.to_string(), object[*k].clone()))
            .collect(),
    )
}

each_db!(
    every_column_is_sent_and_filtered_under_its_own_name,
    chosen_columns_where_and_filter_take_names_literally,
    view_and_select_yield_odd_names,
    select_repeating_a_column_name_is_refused,
);

async fn every_column_is_sent_and_filtered_under_its_own_name(kind: Kind) {
    let db = TestDb::new(kind).await;
    let odd = Odd::create(&db).await;
    let before = odd.insert(&db, 5, 1).await;
    let server = Rowcast::on(&db)
        .feed("odd", &odd.table, |f| {
            f.id_column(CURSOR).filter_columns([ROOM])
        })
        .start()
        .await;
    let url = format!("{}/events/odd?after=start", server.url);
    let mut all = Client::connect(&url, None).await;
    let mut room = Client::connect(&format!("{url}&{}=5", encode(ROOM)), None).await;
    let first = all.take(1).await;
    let other = odd.insert(&db, 6, 2).await;
    let last = odd.insert(&db, 5, 3).await;
    let got = [first, all.take(2).await].concat();
    assert_eq!(rows(&got), expected(&[&before, &other, &last]));
    assert_eq!(rows(&room.take(2).await), expected(&[&before, &last]));
    all.expect_quiet(Duration::from_millis(300)).await;
    room.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn chosen_columns_where_and_filter_take_names_literally(kind: Kind) {
    let db = TestDb::new(kind).await;
    let odd = Odd::create(&db).await;
    let sent = [
        CURSOR,
        " leading space",
        "r",
        "select",
        "it's",
        "back\\slash",
        "名前",
        &odd.table,
    ];
    let rows_in = [
        odd.insert(&db, 5, 1).await,
        odd.insert(&db, 6, 2).await,
        odd.insert(&db, 7, 3).await,
    ];
    // The condition names its columns as the operator would, quoted.
    let condition = format!("{} <> 6 AND {} <> ''", db.quote(ROOM), db.quote("order"));
    let server = Rowcast::on(&db)
        .feed("odd", &odd.table, |f| {
            f.columns(sent)
                .filter_columns(["名前", ROOM, " leading space"])
                .condition(&condition)
        })
        .start()
        .await;
    let url = format!("{}/events/odd?after=start", server.url);
    let mut all = Client::connect(&url, None).await;
    let third = Odd::value("名前", 3);
    let mut one = Client::connect(
        &format!("{url}&{}={}", encode("名前"), encode(&third)),
        None,
    )
    .await;
    let live = odd.insert(&db, 5, 4).await;
    assert_eq!(
        rows(&all.take(3).await),
        [&rows_in[0], &rows_in[2], &live].map(|row| (row[CURSOR].to_string(), only(row, &sent)))
    );
    assert_eq!(
        rows(&one.take(1).await),
        [(rows_in[2][CURSOR].to_string(), only(&rows_in[2], &sent))]
    );
    all.expect_quiet(Duration::from_millis(300)).await;
    one.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

async fn view_and_select_yield_odd_names(kind: Kind) {
    let db = TestDb::new(kind).await;
    let odd = Odd::create(&db).await;
    let q = |name: &str| db.quote(name);
    let view = db.odd_table("view \"v\" `w` 名前");
    db.exec(&format!(
        "CREATE VIEW {} AS SELECT {}, {}, {}, {} FROM {}",
        q(&view),
        q(CURSOR),
        q(ROOM),
        q("select"),
        q(&odd.table),
        q(&odd.table)
    ))
    .await;
    // A statement whose output names are its own: an alias named `t`,
    // quoted names, and the table's name as a column.
    let alias = "order \"by\" `x` \\ 名";
    let select = format!(
        "SELECT o.{}, o.{} AS {}, o.{} FROM {} AS o",
        q(CURSOR),
        q("名前"),
        q(alias),
        q(ROOM),
        q(&odd.table)
    );
    let before = odd.insert(&db, 5, 1).await;
    let server = Rowcast::on(&db)
        .feed("view", &odd.table, |f| f.from(&view).filter_columns([ROOM]))
        .feed("select", &odd.table, |f| {
            f.select(&select).filter_columns([ROOM])
        })
        .start()
        .await;
    let room = format!("after=start&{}=5", encode(ROOM));
    let mut from_view = Client::connect(&format!("{}/events/view?{room}", server.url), None).await;
    let mut from_select =
        Client::connect(&format!("{}/events/select?{room}", server.url), None).await;
    let _other = odd.insert(&db, 6, 2).await;
    let last = odd.insert(&db, 5, 3).await;
    let view_keys = [CURSOR, ROOM, "select", odd.table.as_str()];
    assert_eq!(
        rows(&from_view.take(2).await),
        [&before, &last].map(|row| (row[CURSOR].to_string(), only(row, &view_keys)))
    );
    let selected = |row: &Value| {
        (
            row[CURSOR].to_string(),
            json!({CURSOR: row[CURSOR], alias: row["名前"], ROOM: row[ROOM]}),
        )
    };
    assert_eq!(
        rows(&from_select.take(2).await),
        [selected(&before), selected(&last)]
    );
    from_view.expect_quiet(Duration::from_millis(300)).await;
    from_select.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

/// A join of two tables that both have `room_id` yields it twice: one
/// JSON key and one filter cannot stand for both, so start-up says which
/// name repeats and how to fix it, whether or not it is a filter.
async fn select_repeating_a_column_name_is_refused(kind: Kind) {
    let db = TestDb::new(kind).await;
    let m = db.messages("messages").await;
    let u = db.table("members");
    db.exec(&format!(
        "CREATE TABLE {u} (user_id BIGINT PRIMARY KEY, room_id BIGINT NOT NULL)"
    ))
    .await;
    let select =
        format!("SELECT m.*, u.user_id, u.room_id FROM {m} m JOIN {u} u ON u.room_id = m.room_id");
    let expected = "feed `messages`: `select` yields more than one column named `room_id`: \
                    each name is one JSON key and one filter, so give all but one another name \
                    with AS (e.g. `… AS room_id_2`), or leave them out";
    for filter in [None, Some("room_id")] {
        let err = Rowcast::on(&db)
            .feed("messages", &m, |f| {
                let f = f.select(&select);
                match filter {
                    Some(column) => f.filter_columns([column]),
                    None => f,
                }
            })
            .start_up_error()
            .await;
        assert_eq!(err, expected, "filter {filter:?}");
    }
    // Renamed as the message says, the feed starts.
    let renamed = select.replace("u.room_id FROM", "u.room_id AS room_id_2 FROM");
    let rowcast = Rowcast::on(&db).feed("messages", &m, |f| {
        f.select(&renamed).filter_columns(["room_id"])
    });
    if let Err(e) = rowcast.prepare().await {
        panic!("still refused with {renamed}: {e}");
    }
}

/// `rowcast sql notify` and `rowcast sql txid` quote the table: applied to
/// the odd table, they give a feed with the doorbell, in exact mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scripts_work_on_an_odd_table() {
    let db = TestDb::new(Kind::Postgres).await;
    let odd = Odd::create(&db).await;
    db.doorbell(&odd.table, true).await;
    // CREATE INDEX CONCURRENTLY runs outside a transaction: one at a time.
    for statement in rowcast::source::txid_sql(&odd.table, None, CURSOR).split(";\n") {
        db.exec(statement).await;
    }
    let before = odd.insert(&db, 5, 1).await;
    let server = Rowcast::on(&db)
        .feed("odd", &odd.table, |f| f.notify(true).filter_columns([ROOM]))
        .start()
        .await;
    assert_eq!(
        server.feeds[0].feed.query.txid_column.as_deref(),
        Some("rowcast_txid")
    );
    let mut client = Client::connect(
        &format!("{}/events/odd?after=start&{}=5", server.url, encode(ROOM)),
        None,
    )
    .await;
    let first = client.take(1).await;
    let _other = odd.insert(&db, 6, 2).await;
    let last = odd.insert(&db, 5, 3).await;
    let got = [first, client.take(1).await].concat();
    // Exact-mode ids are transaction positions; the rows are what counts.
    assert_eq!(got.iter().map(Ev::json).collect::<Vec<_>>(), [before, last]);
    client.expect_quiet(Duration::from_millis(300)).await;
    server.stop().await;
}

/// The JSON keys rowcast writes are read the same whatever the session's
/// `sql_mode`: with NO_BACKSLASH_ESCAPES a backslash in a string literal is
/// a character, not an escape, and with ANSI_QUOTES `"` quotes names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_keys_do_not_depend_on_sql_mode() {
    use sqlx::{Connection, Row};
    let db = TestDb::new(Kind::MySql).await;
    let odd = Odd::create(&db).await;
    let row = odd.insert(&db, 5, 1).await;
    let feeds = Rowcast::on(&db)
        .feed("odd", &odd.table, |f| f)
        .prepare()
        .await
        .unwrap();
    let sql = feeds.served[0].feed.query.read_sql.clone();
    feeds.close().await;
    for mode in [
        "NO_BACKSLASH_ESCAPES",
        "ANSI_QUOTES",
        "NO_BACKSLASH_ESCAPES,ANSI_QUOTES",
    ] {
        let mut session = sqlx::MySqlConnection::connect(MYSQL_URL).await.unwrap();
        sqlx::raw_sql(&format!(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',{mode}')"
        ))
        .execute(&mut session)
        .await
        .unwrap();
        let read = sqlx::query(&sql)
            .bind(i64::MIN)
            .bind(i64::MAX)
            .bind(10i64)
            .fetch_all(&mut session)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {sql}: {e}"));
        let json: Vec<Value> = read
            .iter()
            .map(|r| serde_json::from_str(&r.get::<String, _>(1)).unwrap())
            .collect();
        assert_eq!(json, std::slice::from_ref(&row), "{mode}");
        session.close().await.unwrap();
    }
}
