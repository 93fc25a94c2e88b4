//! The SQL of the hard-delete trigger, as each database is sent it.

use super::*;

/// The trigger of a `messages(id, room_id, body)` table in the
/// connection's schema.
fn messages(dialect: Dialect) -> DeleteTrigger {
    DeleteTrigger {
        dialect,
        schema: None,
        table: "messages".into(),
        recorded_as: match dialect {
            Dialect::Postgres => "public.messages".into(),
            Dialect::MySql => "test.messages".into(),
            Dialect::Sqlite => "messages".into(),
        },
        key_column: "id".into(),
        columns: vec!["id".into(), "room_id".into(), "body".into()],
        left_out: None,
        time_zone: (dialect == Dialect::MySql).then(|| "+00:00".into()),
    }
}

const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// The statement lines, without comments: what a test of one clause reads.
fn statements(sql: &str) -> Vec<&str> {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect()
}

#[test]
fn postgres_installs_one_shared_function_and_a_row_trigger() {
    assert_eq!(
        messages(Dialect::Postgres).install_sql(WEEK),
        r#"-- rowcast hard deletes for "messages": each deleted row is recorded in rowcast_deletes
-- (one table for every table), which a `changes` feed reads to send it as a
-- delete event. This table's records older than 7days go as rows are deleted.
BEGIN;
-- Installs on several tables at once take turns: concurrent CREATE OR
-- REPLACE FUNCTION of one function fails.
SELECT pg_advisory_xact_lock(hashtext('rowcast_deletes'));
CREATE TABLE IF NOT EXISTS "rowcast_deletes" (id bigserial PRIMARY KEY, table_name text NOT NULL, row_key text NOT NULL, row_data text, deleted_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS "rowcast_deletes_table_time" ON "rowcast_deletes" (table_name, deleted_at, id);
-- Arguments: the key column, the retention and, in exact mode, the
-- transaction-id column, which row_data leaves out as events do. Rows
-- render as in rowcast's sessions, whatever the deleting session's TimeZone;
-- SKIP LOCKED: no transaction waits for another one's clean-up.
CREATE OR REPLACE FUNCTION "rowcast_record_delete"() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT SET TimeZone FROM CURRENT AS $$
DECLARE
    recorded_as text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    old_row json := row_to_json(OLD);
    data text := old_row::text;
BEGIN
    IF TG_NARGS > 2 THEN
        SELECT '{' || string_agg(to_json(key)::text || ':' || value::text, ',' ORDER BY n) || '}'
            INTO data FROM json_each(old_row) WITH ORDINALITY AS e(key, value, n)
            WHERE key <> TG_ARGV[2];
    END IF;
    INSERT INTO "rowcast_deletes" (table_name, row_key, row_data)
        VALUES (recorded_as, old_row ->> TG_ARGV[0], data);
    DELETE FROM "rowcast_deletes" WHERE id IN (
        SELECT id FROM "rowcast_deletes"
        WHERE table_name = recorded_as AND deleted_at < now() - TG_ARGV[1]::interval
        FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS "rowcast_deletes" ON "messages";
CREATE TRIGGER "rowcast_deletes" AFTER DELETE ON "messages" FOR EACH ROW
    EXECUTE FUNCTION "rowcast_record_delete"(E'id', E'604800 seconds');
COMMIT;
"#
    );
}

#[test]
fn mysql_lists_the_columns_and_renders_in_rowcasts_time_zone() {
    assert_eq!(
        messages(Dialect::MySql).install_sql(WEEK),
        r#"-- rowcast hard deletes for `messages`: each deleted row is recorded in rowcast_deletes
-- (one table for every table), which a `changes` feed reads to send it as a
-- delete event. This table's records older than 7days go as rows are deleted.
-- Apply it as one request (--apply): the mysql client would split the trigger
-- at its first ';' unless DELIMITER is changed around CREATE TRIGGER.
CREATE TABLE IF NOT EXISTS `rowcast_deletes` (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, table_name VARCHAR(255) NOT NULL, row_key VARCHAR(255) NOT NULL, row_data LONGTEXT, deleted_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), KEY `rowcast_deletes_table_time` (table_name, deleted_at, id)) DEFAULT CHARSET = utf8mb4;
DROP TRIGGER IF EXISTS `rowcast_deletes_messages`;
CREATE TRIGGER `rowcast_deletes_messages` AFTER DELETE ON `messages` FOR EACH ROW
BEGIN
    -- Times render and deleted_at is stamped in the time zone of rowcast's
    -- sessions; the deleting session's zone is restored, on errors too.
    DECLARE session_zone VARCHAR(64) DEFAULT @@session.time_zone;
    DECLARE EXIT HANDLER FOR SQLEXCEPTION
    BEGIN
        SET @@session.time_zone = session_zone;
        RESIGNAL;
    END;
    SET @@session.time_zone = _utf8mb4 X'2B30303A3030';
    INSERT INTO `rowcast_deletes` (table_name, row_key, row_data)
        VALUES (_utf8mb4 X'746573742E6D65737361676573', CAST(OLD.`id` AS CHAR), CAST(JSON_OBJECT(_utf8mb4 X'6964', OLD.`id`, _utf8mb4 X'726F6F6D5F6964', OLD.`room_id`, _utf8mb4 X'626F6479', OLD.`body`) AS CHAR));
    DELETE FROM `rowcast_deletes`
        WHERE table_name = _utf8mb4 X'746573742E6D65737361676573' AND deleted_at < NOW(6) - INTERVAL 604800 SECOND;
    SET @@session.time_zone = session_zone;
END;
"#
    );
}

#[test]
fn sqlite_lists_the_columns_in_one_transaction() {
    assert_eq!(
        messages(Dialect::Sqlite).install_sql(WEEK),
        r#"-- rowcast hard deletes for "messages": each deleted row is recorded in rowcast_deletes
-- (one table for every table), which a `changes` feed reads to send it as a
-- delete event. This table's records older than 7days go as rows are deleted.
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS "rowcast_deletes" (id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, row_key TEXT NOT NULL, row_data TEXT, deleted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')));
CREATE INDEX IF NOT EXISTS "rowcast_deletes_table_time" ON "rowcast_deletes" (table_name, deleted_at, id);
DROP TRIGGER IF EXISTS "rowcast_deletes_messages";
CREATE TRIGGER "rowcast_deletes_messages" AFTER DELETE ON "messages" FOR EACH ROW
BEGIN
    INSERT INTO "rowcast_deletes" (table_name, row_key, row_data)
        VALUES ('messages', CAST(OLD."id" AS TEXT), json_object('id', OLD."id", 'room_id', OLD."room_id", 'body', OLD."body"));
    DELETE FROM "rowcast_deletes" WHERE table_name = 'messages'
        AND deleted_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-604800 seconds');
END;
COMMIT;
"#
    );
}

#[test]
fn remove_drops_the_tables_trigger_and_keeps_what_others_share() {
    assert_eq!(
        messages(Dialect::Postgres).remove_sql(),
        r#"DROP TRIGGER IF EXISTS "rowcast_deletes" ON "messages";
-- rowcast_deletes and rowcast_record_delete() stay for other tables; once no table uses them:
-- DROP FUNCTION IF EXISTS "rowcast_record_delete"(); DROP TABLE IF EXISTS "rowcast_deletes";
-- The records of "messages" stay until then; to delete them now:
-- DELETE FROM "rowcast_deletes" WHERE table_name = E'public.messages';
"#
    );
    assert_eq!(
        messages(Dialect::MySql).remove_sql(),
        r#"DROP TRIGGER IF EXISTS `rowcast_deletes_messages`;
-- rowcast_deletes stays for other tables; once no table uses them:
-- DROP TABLE IF EXISTS `rowcast_deletes`;
-- The records of `messages` stay until then; to delete them now:
-- DELETE FROM `rowcast_deletes` WHERE table_name = _utf8mb4 X'746573742E6D65737361676573';
"#
    );
    assert_eq!(
        messages(Dialect::Sqlite).remove_sql(),
        r#"DROP TRIGGER IF EXISTS "rowcast_deletes_messages";
-- rowcast_deletes stays for other tables; once no table uses them:
-- DROP TABLE IF EXISTS "rowcast_deletes";
-- The records of "messages" stay until then; to delete them now:
-- DELETE FROM "rowcast_deletes" WHERE table_name = 'messages';
"#
    );
}

#[test]
fn a_schema_holds_the_shared_table_the_function_and_the_trigger() {
    let in_app = |dialect| DeleteTrigger {
        schema: Some("app".into()),
        ..messages(dialect)
    };
    let postgres = in_app(Dialect::Postgres).install_sql(WEEK);
    for clause in [
        r#"CREATE TABLE IF NOT EXISTS "app"."rowcast_deletes" ("#,
        r#"CREATE INDEX IF NOT EXISTS "rowcast_deletes_table_time" ON "app"."rowcast_deletes" "#,
        r#"CREATE OR REPLACE FUNCTION "app"."rowcast_record_delete"() RETURNS trigger"#,
        r#"    INSERT INTO "app"."rowcast_deletes" (table_name, row_key, row_data)"#,
        r#"DROP TRIGGER IF EXISTS "rowcast_deletes" ON "app"."messages";"#,
        r#"    EXECUTE FUNCTION "app"."rowcast_record_delete"(E'id', E'604800 seconds');"#,
    ] {
        assert!(
            statements(&postgres).iter().any(|l| l.starts_with(clause)),
            "{clause}\n{postgres}"
        );
    }
    let mysql = in_app(Dialect::MySql).install_sql(WEEK);
    for clause in [
        "CREATE TABLE IF NOT EXISTS `app`.`rowcast_deletes` (",
        "DROP TRIGGER IF EXISTS `app`.`rowcast_deletes_messages`;",
        "CREATE TRIGGER `app`.`rowcast_deletes_messages` AFTER DELETE ON `app`.`messages` FOR EACH ROW",
        "    INSERT INTO `app`.`rowcast_deletes` (table_name, row_key, row_data)",
        "    DELETE FROM `app`.`rowcast_deletes`",
    ] {
        assert!(statements(&mysql).iter().any(|l| l.starts_with(clause)), "{clause}\n{mysql}");
    }
    // SQLite names no schema in a trigger's table or body: both are the
    // trigger's own.
    let sqlite = in_app(Dialect::Sqlite).install_sql(WEEK);
    for clause in [
        r#"CREATE TABLE IF NOT EXISTS "app"."rowcast_deletes" ("#,
        r#"CREATE INDEX IF NOT EXISTS "app"."rowcast_deletes_table_time" ON "rowcast_deletes" "#,
        r#"CREATE TRIGGER "app"."rowcast_deletes_messages" AFTER DELETE ON "messages" FOR EACH ROW"#,
        r#"    INSERT INTO "rowcast_deletes" (table_name, row_key, row_data)"#,
    ] {
        assert!(
            statements(&sqlite).iter().any(|l| l.starts_with(clause)),
            "{clause}\n{sqlite}"
        );
    }
    assert_eq!(
        statements(&in_app(Dialect::MySql).remove_sql()),
        ["DROP TRIGGER IF EXISTS `app`.`rowcast_deletes_messages`;"]
    );
}

#[test]
fn any_name_is_quoted_and_comments_stay_comments() {
    let table = "it's \"odd\" `tbl`\nDROP TABLE x; 名前";
    let odd = |dialect| DeleteTrigger {
        table: table.into(),
        recorded_as: table.into(),
        key_column: "Key \"k\"".into(),
        columns: vec!["Key \"k\"".into(), "it's `x`".into()],
        ..messages(dialect)
    };
    let postgres = odd(Dialect::Postgres);
    let sql = postgres.install_sql(WEEK) + &postgres.remove_sql();
    assert!(
        sql.contains("ON \"it's \"\"odd\"\" `tbl`\nDROP TABLE x; 名前\" FOR EACH ROW"),
        "{sql}"
    );
    assert!(sql.contains("(E'Key \"k\"', E'604800 seconds')"), "{sql}");
    assert!(sql.starts_with(
        "-- rowcast hard deletes for \"it's \"\"odd\"\" `tbl` DROP TABLE x; 名前\": each deleted"
    ));
    assert!(sql.contains(
        "\n-- DELETE FROM \"rowcast_deletes\" WHERE table_name = E'it''s \"odd\" `tbl` DROP TABLE x; 名前';\n"
    ), "{sql}");

    let mysql = odd(Dialect::MySql).install_sql(WEEK);
    let hex: String = table.bytes().map(|b| format!("{b:02X}")).collect();
    assert!(
        mysql.contains(&format!(
            "VALUES (_utf8mb4 X'{hex}', CAST(OLD.`Key \"k\"` AS CHAR), "
        )),
        "{mysql}"
    );
    assert!(
        mysql.contains("AFTER DELETE ON `it's \"odd\" ``tbl``\nDROP TABLE x; 名前` FOR EACH ROW"),
        "{mysql}"
    );
    assert!(mysql.contains(", OLD.`it's ``x```) AS CHAR)"), "{mysql}");

    let sqlite = odd(Dialect::Sqlite).install_sql(WEEK);
    assert!(
        sqlite.contains(
            "json_object('Key \"k\"', OLD.\"Key \"\"k\"\"\", 'it''s `x`', OLD.\"it's `x`\")"
        ),
        "{sqlite}"
    );
    assert!(
        sqlite.contains("VALUES ('it''s \"odd\" `tbl`\nDROP TABLE x; 名前', "),
        "{sqlite}"
    );
    // A line break in a name ends no comment: every line that follows one
    // inside a quoted name is SQL, never the tail of a `--` comment.
    for sql in [&postgres.install_sql(WEEK), &mysql, &sqlite] {
        for line in sql.lines().filter(|l| l.starts_with("--")) {
            assert!(
                !line.ends_with("`tbl`") && !line.ends_with("\"odd\" `tbl`"),
                "{line}"
            );
        }
    }
}

#[test]
fn mysql_trigger_names_fit_in_64_characters() {
    let long = |table: &str| DeleteTrigger {
        table: table.into(),
        ..messages(Dialect::MySql)
    };
    let name = |table: &str| long(table).trigger();
    let a = "a".repeat(60);
    let b = format!("{}b", "a".repeat(59));
    let quoted = name(&a);
    let bare = quoted.trim_matches('`');
    assert_eq!(bare.chars().count(), 64, "{bare}");
    assert!(bare.starts_with("rowcast_deletes_aaaa"), "{bare}");
    assert_ne!(name(&a), name(&b), "tables that share a prefix");
    // The same table always gets the same name, or --remove would miss it.
    assert_eq!(
        bare,
        format!(
            "rowcast_deletes_{}_{:08x}",
            "a".repeat(39),
            fnv1a(a.as_bytes())
        )
    );
    // 32-bit FNV-1a as published (offset basis 0x811c9dc5, prime 0x01000193).
    assert_eq!(fnv1a(b"messages"), 0xc003_85b5);
    let unicode = "名".repeat(50);
    assert_eq!(name(&unicode).trim_matches('`').chars().count(), 64);
    // Names that fit, and every SQLite name, are kept whole.
    assert_eq!(name("messages"), "`rowcast_deletes_messages`");
    let sqlite = DeleteTrigger {
        dialect: Dialect::Sqlite,
        ..long(&a)
    };
    assert_eq!(sqlite.trigger(), format!("\"rowcast_deletes_{a}\""));
}

#[test]
fn retention_counts_whole_seconds() {
    let retention = Duration::from_millis(90_500);
    let postgres = messages(Dialect::Postgres).install_sql(retention);
    assert!(postgres.contains("(E'id', E'90 seconds');"), "{postgres}");
    assert!(
        postgres.contains("records older than 1m 30s go"),
        "{postgres}"
    );
    let mysql = messages(Dialect::MySql).install_sql(retention);
    assert!(
        mysql.contains("deleted_at < NOW(6) - INTERVAL 90 SECOND;"),
        "{mysql}"
    );
    let sqlite = messages(Dialect::Sqlite).install_sql(retention);
    assert!(
        sqlite.contains("strftime('%Y-%m-%d %H:%M:%f', 'now', '-90 seconds');"),
        "{sqlite}"
    );
}

#[test]
fn exact_mode_leaves_the_transaction_id_column_out_of_row_data() {
    let exact = DeleteTrigger {
        left_out: Some("rowcast_txid".into()),
        ..messages(Dialect::Postgres)
    };
    let sql = exact.install_sql(WEEK);
    assert!(
        sql.contains("EXECUTE FUNCTION \"rowcast_record_delete\"(E'id', E'604800 seconds', E'rowcast_txid');"),
        "{sql}"
    );
}

#[test]
fn mysql_renders_in_the_time_zone_of_rowcasts_sessions() {
    let zoned = DeleteTrigger {
        time_zone: Some("Europe/Paris".into()),
        ..messages(Dialect::MySql)
    };
    let hex: String = "Europe/Paris".bytes().map(|b| format!("{b:02X}")).collect();
    let sql = zoned.install_sql(WEEK);
    assert!(
        sql.contains(&format!(
            "    SET @@session.time_zone = _utf8mb4 X'{hex}';\n"
        )),
        "{sql}"
    );
}

#[test]
fn the_function_body_is_dollar_quoted_with_a_tag_it_does_not_hold() {
    assert_eq!(dollar_quoted(" x "), "$$ x $$");
    assert_eq!(
        dollar_quoted(" \"a$$b\" "),
        "$rowcast1$ \"a$$b\" $rowcast1$"
    );
    assert_eq!(
        dollar_quoted(" $$ $rowcast1$ "),
        "$rowcast2$ $$ $rowcast1$ $rowcast2$"
    );
    let dollars = DeleteTrigger {
        schema: Some("a$$b".into()),
        ..messages(Dialect::Postgres)
    };
    let sql = dollars.install_sql(WEEK);
    assert!(sql.contains(" AS $rowcast1$\nDECLARE\n"), "{sql}");
    assert!(sql.contains("\nEND $rowcast1$;\n"), "{sql}");
}
