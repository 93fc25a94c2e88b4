//! The SQL text of feeds, as each database is sent it.

use super::*;

fn feed() -> FeedConfig {
    FeedConfig {
        name: "messages".into(),
        schema: None,
        table: "messages".into(),
        id_column: None,
        columns: None,
        filter_columns: vec!["room_id".into()],
        condition: None,
        read_from: None,
        event: None,
        tuning: crate::config::Tuning::resolve(&[]),
        gaps: crate::config::GapHandling::Hold,
        watermark: None,
        txid_column: None,
        notify: crate::config::Notify::Auto,
        timestamp_column: None,
        rules: Default::default(),
        mode: crate::config::Mode::Append,
        updated_column: None,
        deleted_column: None,
        topic: None,
        presence: None,
    }
}

fn table(unsigned: bool) -> Table {
    Table {
        display: "messages".into(),
        columns: vec!["id".into(), "room_id".into(), "body".into()],
        id_column: "id".into(),
        unsigned,
        txid_column: None,
    }
}

#[test]
fn postgres_reads_every_column_as_one_json_value() {
    let t = table(false);
    let q = FeedQuery::new(Dialect::Postgres, &feed(), &t, &t.columns).unwrap();
    assert_eq!(
        q.read_sql,
        "SELECT (t.\"id\")::text, row_to_json(t.*)::text, (t.\"room_id\")::text \
         FROM \"messages\" AS t WHERE t.\"id\" >= $1 AND t.\"id\" <= $2 \
         ORDER BY t.\"id\" LIMIT $3"
    );
    assert_eq!(
        q.max_sql,
        "SELECT (MAX(t.\"id\"))::text FROM \"messages\" AS t"
    );
}

#[test]
fn mysql_condition_keeps_excluded_ids() {
    let mut f = feed();
    f.columns = Some(vec!["id".into(), "bo`dy".into()]);
    f.condition = Some("type = 'message'".into());
    f.schema = Some("app".into());
    let mut t = table(false);
    t.columns.push("bo`dy".into());
    let q = FeedQuery::new(Dialect::MySql, &f, &t, &t.columns).unwrap();
    assert_eq!(
        q.read_sql,
        "SELECT CAST(t.`id` AS CHAR), CASE WHEN (type = 'message') THEN \
         CAST(JSON_OBJECT(_utf8mb4 X'6964', t.`id`, _utf8mb4 X'626F606479', t.`bo``dy`) AS CHAR) END, \
         CAST(t.`room_id` AS CHAR) FROM `app`.`messages` AS t \
         WHERE t.`id` >= ? AND t.`id` <= ? ORDER BY t.`id` LIMIT ?"
    );
}

#[test]
fn postgres_names_rows_as_relations_never_as_bare_names() {
    // A column named `t` or `r` would take the place of a bare `t` or `r`.
    let mut f = feed();
    f.columns = Some(vec!["t".into(), "r".into()]);
    let mut t = table(false);
    t.columns = vec!["t".into(), "r".into(), "room_id".into()];
    t.id_column = "t".into();
    let q = FeedQuery::new(Dialect::Postgres, &f, &t, &t.columns).unwrap();
    assert_eq!(
        q.read_sql,
        "SELECT (t.\"t\")::text, (SELECT row_to_json(r.*) FROM (SELECT t.\"t\", t.\"r\") AS r)::text, \
         (t.\"room_id\")::text FROM \"messages\" AS t WHERE t.\"t\" >= $1 AND t.\"t\" <= $2 \
         ORDER BY t.\"t\" LIMIT $3"
    );
}

#[test]
fn literals_need_no_session_setting() {
    let odd = "it's a \\ \"名前\"";
    // Hex digits, whatever NO_BACKSLASH_ESCAPES and ANSI_QUOTES say.
    assert_eq!(
        Dialect::MySql.literal(odd),
        "_utf8mb4 X'697427732061205C2022E5908DE5898D22'"
    );
    // E'' reads backslashes as escapes whatever standard_conforming_strings says.
    assert_eq!(Dialect::Postgres.literal(odd), "E'it''s a \\\\ \"名前\"'");
    assert_eq!(Dialect::Sqlite.literal(odd), "'it''s a \\ \"名前\"'");
}

#[test]
fn select_is_wrapped_as_a_subquery() {
    let mut f = feed();
    f.read_from = Some(ReadFrom::Select(
        "SELECT m.*, u.name FROM m JOIN u ON u.id = m.uid".into(),
    ));
    let t = table(false);
    let q = FeedQuery::new(Dialect::Sqlite, &f, &t, &t.columns).unwrap();
    assert!(q
        .read_sql
        .contains("FROM (SELECT m.*, u.name FROM m JOIN u ON u.id = m.uid) AS t WHERE"));
    assert!(q
        .read_sql
        .starts_with("SELECT CAST(t.\"id\" AS TEXT), json_object('id', t.\"id\", "));
}

#[test]
fn the_greatest_id_comes_from_the_base_table() {
    let mut f = feed();
    f.read_from = Some(ReadFrom::Select(
        "SELECT m.*, u.name FROM messages m JOIN users u ON u.id = m.uid".into(),
    ));
    let mut t = table(false);
    let q = FeedQuery::new(Dialect::MySql, &f, &t, &t.columns).unwrap();
    assert_eq!(
        q.max_sql,
        "SELECT CAST(MAX(t.`id`) AS CHAR) FROM `messages` AS t"
    );

    // Exact mode too: the (txid, id) index is the base table's.
    f.read_from = Some(ReadFrom::Relation("messages_with_names".into()));
    t.columns.push("rowcast_txid".into());
    t.txid_column = Some("rowcast_txid".into());
    let q = FeedQuery::new(Dialect::Postgres, &f, &t, &t.columns).unwrap();
    assert_eq!(
        q.max_sql,
        "SELECT (SELECT ((t.\"rowcast_txid\")::text::numeric * 18446744073709551616 \
         + (t.\"id\" + 9223372036854775808))::text FROM \"messages\" AS t \
         WHERE t.\"rowcast_txid\" < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY t.\"rowcast_txid\" DESC, t.\"id\" DESC LIMIT 1)"
    );
    assert!(q
        .read_sql
        .contains(" FROM \"messages_with_names\" AS t WHERE "));
}

#[test]
fn unknown_columns_are_listed_with_the_existing_ones() {
    let mut f = feed();
    f.filter_columns = vec!["roomid".into()];
    let t = table(false);
    let err = FeedQuery::new(Dialect::Postgres, &f, &t, &t.columns).unwrap_err();
    assert_eq!(
        err.to_string(),
        "feed `messages`: `filter_columns`: column `roomid` not found in `messages`; \
         columns: id, room_id, body"
    );
}

#[test]
fn timestamp_column_must_be_sent() {
    let mut f = feed();
    f.columns = Some(vec!["id".into(), "body".into()]);
    f.timestamp_column = Some("room_id".into());
    let t = table(false);
    let err = FeedQuery::new(Dialect::Sqlite, &f, &t, &t.columns).unwrap_err();
    assert_eq!(
        err.to_string(),
        "feed `messages`: `timestamp_column`: column `room_id` is not sent; sent columns: id, body; \
         name one of them, or add it to `columns`"
    );
    f.timestamp_column = Some("body".into());
    assert!(FeedQuery::new(Dialect::Sqlite, &f, &t, &t.columns).is_ok());
}

#[test]
fn exact_cursors_sort_like_their_pairs() {
    let pairs = [
        (3, i64::MIN),
        (3, -1),
        (3, 0),
        (3, i64::MAX),
        (4, i64::MIN),
        (900, 7),
    ];
    let packed: Vec<i128> = pairs.iter().map(|&(t, i)| pack(t, i)).collect();
    assert!(packed.windows(2).all(|w| w[0] < w[1]));
    for (&pair, &p) in pairs.iter().zip(&packed) {
        assert_eq!(unpack(p), pair);
    }
    // In SQL: txid * 2^64 + (id + 2^63).
    assert_eq!(pack(5, 2), 5 * (1i128 << 64) + 2 + (1i128 << 63));
}

#[test]
fn exact_mode_reads_in_transaction_order() {
    let mut t = table(false);
    t.columns.push("rowcast_txid".into());
    t.txid_column = Some("rowcast_txid".into());
    let q = FeedQuery::new(Dialect::Postgres, &feed(), &t, &t.columns).unwrap();
    assert_eq!(
        q.columns,
        ["id", "room_id", "body"],
        "the txid column is not sent"
    );
    assert!(q.read_sql.contains(
        "WHERE (t.\"rowcast_txid\", t.\"id\") > ($1::xid8, $2) AND (t.\"rowcast_txid\", t.\"id\") <= ($3::xid8, $4) \
         AND t.\"rowcast_txid\" < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY t.\"rowcast_txid\", t.\"id\" LIMIT $5"
    ), "{}", q.read_sql);
    let after = pack(7, 10);
    assert_eq!(
        q.bounds(Cursor::At(after), Cursor::At(pack(9, 1))),
        Some((Bound::Txid(7, 10), Bound::Txid(9, 1)))
    );
    assert_eq!(
        q.bounds(Cursor::Start, Cursor::At(pack(9, 1))),
        Some((Bound::Txid(0, i64::MIN), Bound::Txid(9, 1)))
    );
}

#[test]
fn bounds_fit_the_column_type() {
    let t = table(false);
    let q = FeedQuery::new(Dialect::Sqlite, &feed(), &t, &t.columns).unwrap();
    let top = Cursor::At(i128::MAX);
    assert_eq!(
        q.bounds(Cursor::Start, top),
        Some((Bound::Signed(i64::MIN), Bound::Signed(i64::MAX)))
    );
    assert_eq!(
        q.bounds(Cursor::At(-5), Cursor::At(10)),
        Some((Bound::Signed(-4), Bound::Signed(10)))
    );
    assert_eq!(q.bounds(Cursor::At(10), Cursor::At(10)), None);
    assert_eq!(q.bounds(Cursor::At(i64::MAX.into()), top), None);
    assert_eq!(q.bounds(Cursor::At(1), Cursor::Start), None);

    let t = table(true);
    let q = FeedQuery::new(Dialect::MySql, &feed(), &t, &t.columns).unwrap();
    assert_eq!(
        q.bounds(Cursor::At(-7), top),
        Some((Bound::Unsigned(0), Bound::Unsigned(u64::MAX)))
    );
    assert_eq!(
        q.bounds(Cursor::At(u64::MAX as i128 - 1), top),
        Some((Bound::Unsigned(u64::MAX), Bound::Unsigned(u64::MAX)))
    );
}
