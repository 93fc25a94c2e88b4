//! The hard-delete trigger of `rowcast sql deletes`: the SQL that records
//! every row deleted from a table in `rowcast_deletes`, one table shared by
//! every table, so that a `changes` feed can send hard deletes. Each
//! recorded row is the deleted row's last state as JSON, rendered as
//! rowcast's own reads render it. This module only writes that SQL and
//! reads the catalog for it; it never runs it by itself.

use super::postgres::one_line;
use super::query::Dialect;
use super::{Error, Source};
use crate::config::{FeedConfig, GapHandling, Notify, Tuning};
use std::time::Duration;

/// The table that holds the deleted rows of every table.
pub const DELETES_TABLE: &str = "rowcast_deletes";
/// The Postgres trigger function every table's trigger calls.
const DELETES_FUNCTION: &str = "rowcast_record_delete";
/// The index a feed reads one table's deleted rows through.
const DELETES_INDEX: &str = "rowcast_deletes_table_time";
/// MySQL's longest identifier, in characters.
const MYSQL_NAME_MAX: usize = 64;

/// A table's hard-delete trigger: what its SQL needs to know, read from
/// the catalog by [`Source::delete_trigger`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteTrigger {
    /// How the database spells SQL.
    pub dialect: Dialect,
    /// The schema (MySQL: database) given with `--schema`; `None` for the
    /// connection's, where `rowcast_deletes` is then created too.
    pub schema: Option<String>,
    /// The table, unquoted.
    pub table: String,
    /// The table as `rowcast_deletes.table_name` holds it: `schema.table`
    /// on Postgres and MySQL, the bare name on SQLite.
    pub recorded_as: String,
    /// The column whose value, as text, is a deleted row's `row_key`.
    pub key_column: String,
    /// The columns of `row_data`, in table order (MySQL and SQLite; on
    /// Postgres the trigger renders the whole row).
    pub columns: Vec<String>,
    /// Postgres: rowcast's transaction-id column, left out of `row_data`
    /// as it is out of every event.
    pub left_out: Option<String>,
    /// MySQL: the time zone of rowcast's sessions, in which the trigger
    /// renders times and stamps `deleted_at`, whatever the deleting
    /// session's zone.
    pub time_zone: Option<String>,
}

impl DeleteTrigger {
    /// The SQL that installs the trigger, creating `rowcast_deletes` first
    /// when it is missing: every statement may be run again. Records of
    /// this table older than `retention` (whole seconds) are deleted as
    /// rows are.
    pub fn install_sql(&self, retention: Duration) -> String {
        let kept = humantime::format_duration(Duration::from_secs(retention.as_secs()));
        let head = format!(
            "-- rowcast hard deletes for {}: each deleted row is recorded in {DELETES_TABLE}\n\
             -- (one table for every table), which a `changes` feed reads to send it as a\n\
             -- delete event. This table's records older than {kept} go as rows are deleted.\n",
            one_line(&self.shown())
        );
        let seconds = retention.as_secs();
        let body = match self.dialect {
            Dialect::Postgres => self.postgres_install(seconds),
            Dialect::MySql => self.mysql_install(seconds),
            Dialect::Sqlite => self.sqlite_install(seconds),
        };
        head + &body
    }

    /// The SQL that removes this table's trigger. The shared table (and on
    /// Postgres the function) stay while other tables may use them; a
    /// comment gives the statement that drops them.
    pub fn remove_sql(&self) -> String {
        let d = self.dialect;
        let drop = match d {
            Dialect::Postgres => format!(
                "DROP TRIGGER IF EXISTS {} ON {};\n",
                d.quote(DELETES_TABLE),
                self.qualified(&self.table)
            ),
            Dialect::MySql | Dialect::Sqlite => {
                format!("DROP TRIGGER IF EXISTS {};\n", self.trigger())
            }
        };
        let shared = self.qualified(DELETES_TABLE);
        let drop_shared = match d {
            Dialect::Postgres => format!(
                "DROP FUNCTION IF EXISTS {}(); DROP TABLE IF EXISTS {shared};",
                self.qualified(DELETES_FUNCTION)
            ),
            Dialect::MySql | Dialect::Sqlite => format!("DROP TABLE IF EXISTS {shared};"),
        };
        let forget = format!(
            "DELETE FROM {shared} WHERE table_name = {};",
            d.literal(&self.recorded_as)
        );
        let shared_objects = match d {
            Dialect::Postgres => format!("{DELETES_TABLE} and {DELETES_FUNCTION}() stay"),
            Dialect::MySql | Dialect::Sqlite => format!("{DELETES_TABLE} stays"),
        };
        format!(
            "{drop}\
             -- {shared_objects} for other tables; once no table uses them:\n\
             -- {}\n\
             -- The records of {} stay until then; to delete them now:\n\
             -- {}\n",
            one_line(&drop_shared),
            one_line(&self.shown()),
            one_line(&forget),
        )
    }

    fn postgres_install(&self, seconds: u64) -> String {
        let d = Dialect::Postgres;
        let shared = self.qualified(DELETES_TABLE);
        let function = self.qualified(DELETES_FUNCTION);
        let table = self.qualified(&self.table);
        let body = format!(
            "\nDECLARE\n    \
                 recorded_as text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;\n    \
                 old_row json := row_to_json(OLD);\n    \
                 data text := old_row::text;\n\
             BEGIN\n    \
                 IF TG_NARGS > 2 THEN\n        \
                     SELECT '{{' || string_agg(to_json(key)::text || ':' || value::text, ',' ORDER BY n) || '}}'\n            \
                         INTO data FROM json_each(old_row) WITH ORDINALITY AS e(key, value, n)\n            \
                         WHERE key <> TG_ARGV[2];\n    \
                 END IF;\n    \
                 INSERT INTO {shared} (table_name, row_key, row_data)\n        \
                     VALUES (recorded_as, old_row ->> TG_ARGV[0], data);\n    \
                 DELETE FROM {shared} WHERE id IN (\n        \
                     SELECT id FROM {shared}\n        \
                     WHERE table_name = recorded_as AND deleted_at < now() - TG_ARGV[1]::interval\n        \
                     FOR UPDATE SKIP LOCKED);\n    \
                 RETURN NULL;\n\
             END "
        );
        let mut arguments = vec![
            d.literal(&self.key_column),
            d.literal(&format!("{seconds} seconds")),
        ];
        arguments.extend(self.left_out.iter().map(|c| d.literal(c)));
        format!(
            "BEGIN;\n\
             -- Installs on several tables at once take turns: concurrent CREATE OR\n\
             -- REPLACE FUNCTION of one function fails.\n\
             SELECT pg_advisory_xact_lock(hashtext('{DELETES_TABLE}'));\n\
             CREATE TABLE IF NOT EXISTS {shared} (id bigserial PRIMARY KEY, table_name text NOT NULL, \
             row_key text NOT NULL, row_data text, deleted_at timestamptz NOT NULL DEFAULT now());\n\
             CREATE INDEX IF NOT EXISTS {} ON {shared} (table_name, deleted_at, id);\n\
             -- Arguments: the key column, the retention and, in exact mode, the\n\
             -- transaction-id column, which row_data leaves out as events do. Rows\n\
             -- render as in rowcast's sessions, whatever the deleting session's TimeZone;\n\
             -- SKIP LOCKED: no transaction waits for another one's clean-up.\n\
             CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql\n    \
                 SET search_path FROM CURRENT SET TimeZone FROM CURRENT AS {};\n\
             DROP TRIGGER IF EXISTS {trigger} ON {table};\n\
             CREATE TRIGGER {trigger} AFTER DELETE ON {table} FOR EACH ROW\n    \
                 EXECUTE FUNCTION {function}({});\n\
             COMMIT;\n",
            d.quote(DELETES_INDEX),
            dollar_quoted(&body),
            arguments.join(", "),
            trigger = d.quote(DELETES_TABLE),
        )
    }

    fn mysql_install(&self, seconds: u64) -> String {
        let d = Dialect::MySql;
        let shared = self.qualified(DELETES_TABLE);
        let recorded_as = d.literal(&self.recorded_as);
        let zone = d.literal(self.time_zone.as_deref().unwrap_or("SYSTEM"));
        let trigger = self.trigger();
        format!(
            "-- Apply it as one request (--apply): the mysql client would split the trigger\n\
             -- at its first ';' unless DELIMITER is changed around CREATE TRIGGER.\n\
             CREATE TABLE IF NOT EXISTS {shared} (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, \
             table_name VARCHAR(255) NOT NULL, row_key VARCHAR(255) NOT NULL, row_data LONGTEXT, \
             deleted_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
             KEY {} (table_name, deleted_at, id)) DEFAULT CHARSET = utf8mb4;\n\
             DROP TRIGGER IF EXISTS {trigger};\n\
             CREATE TRIGGER {trigger} AFTER DELETE ON {} FOR EACH ROW\n\
             BEGIN\n    \
                 -- Times render and deleted_at is stamped in the time zone of rowcast's\n    \
                 -- sessions; the deleting session's zone is restored, on errors too.\n    \
                 DECLARE session_zone VARCHAR(64) DEFAULT @@session.time_zone;\n    \
                 DECLARE EXIT HANDLER FOR SQLEXCEPTION\n    \
                 BEGIN\n        \
                     SET @@session.time_zone = session_zone;\n        \
                     RESIGNAL;\n    \
                 END;\n    \
                 SET @@session.time_zone = {zone};\n    \
                 INSERT INTO {shared} (table_name, row_key, row_data)\n        \
                     VALUES ({recorded_as}, {}, {});\n    \
                 DELETE FROM {shared}\n        \
                     WHERE table_name = {recorded_as} AND deleted_at < NOW(6) - INTERVAL {seconds} SECOND;\n    \
                 SET @@session.time_zone = session_zone;\n\
             END;\n",
            d.quote(DELETES_INDEX),
            self.qualified(&self.table),
            d.as_text(&format!("OLD.{}", d.quote(&self.key_column))),
            d.json_object("OLD", &self.columns),
        )
    }

    fn sqlite_install(&self, seconds: u64) -> String {
        let d = Dialect::Sqlite;
        // A trigger's table and the tables its body names are the
        // trigger's own schema's: SQLite allows no schema there.
        let shared = d.quote(DELETES_TABLE);
        let recorded_as = d.literal(&self.recorded_as);
        let trigger = self.trigger();
        format!(
            "BEGIN IMMEDIATE;\n\
             CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, \
             row_key TEXT NOT NULL, row_data TEXT, \
             deleted_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f','now')));\n\
             CREATE INDEX IF NOT EXISTS {} ON {shared} (table_name, deleted_at, id);\n\
             DROP TRIGGER IF EXISTS {trigger};\n\
             CREATE TRIGGER {trigger} AFTER DELETE ON {} FOR EACH ROW\n\
             BEGIN\n    \
                 INSERT INTO {shared} (table_name, row_key, row_data)\n        \
                     VALUES ({recorded_as}, {}, {});\n    \
                 DELETE FROM {shared} WHERE table_name = {recorded_as}\n        \
                     AND deleted_at < strftime('%Y-%m-%d %H:%M:%f', 'now', '-{seconds} seconds');\n\
             END;\n\
             COMMIT;\n",
            self.qualified(DELETES_TABLE),
            self.qualified(DELETES_INDEX),
            d.quote(&self.table),
            d.as_text(&format!("OLD.{}", d.quote(&self.key_column))),
            d.json_object("OLD", &self.columns),
        )
    }

    /// `name`, quoted, in the `--schema` when one was given.
    fn qualified(&self, name: &str) -> String {
        let d = self.dialect;
        match &self.schema {
            Some(schema) => format!("{}.{}", d.quote(schema), d.quote(name)),
            None => d.quote(name),
        }
    }

    /// The table as the user named it, for comments.
    fn shown(&self) -> String {
        self.qualified(&self.table)
    }

    /// The trigger's name, qualified (MySQL and SQLite, where a trigger is
    /// named per schema): `rowcast_deletes_<table>`, cut to MySQL's 64
    /// characters with a hash of the table's name when it is longer.
    fn trigger(&self) -> String {
        let mut name = format!("{DELETES_TABLE}_{}", self.table);
        if self.dialect == Dialect::MySql && name.chars().count() > MYSQL_NAME_MAX {
            let hash = format!("_{:08x}", fnv1a(self.table.as_bytes()));
            name = name.chars().take(MYSQL_NAME_MAX - hash.len()).collect();
            name.push_str(&hash);
        }
        self.qualified(&name)
    }
}

/// `body` between dollar quotes whose tag it does not contain (a quoted
/// schema name in it could hold `$$`).
fn dollar_quoted(body: &str) -> String {
    let mut tag = "$$".to_owned();
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$rowcast{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// 32-bit FNV-1a: a hash that stays the same across Rust releases, as a
/// trigger's name must for `--remove` to find it.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A feed of `table` alone, to check it against the catalog as `rowcast
/// check` does.
fn feed_of(table: &str, schema: Option<&str>, id_column: Option<&str>) -> FeedConfig {
    FeedConfig {
        name: table.to_owned(),
        schema: schema.map(str::to_owned),
        table: table.to_owned(),
        id_column: id_column.map(str::to_owned),
        columns: None,
        filter_columns: Vec::new(),
        condition: None,
        read_from: None,
        event: None,
        tuning: Tuning::resolve(&[]),
        gaps: GapHandling::Hold,
        watermark: None,
        txid_column: None,
        notify: Notify::Off,
        timestamp_column: None,
        rules: Default::default(),
        mode: crate::config::Mode::Append,
        updated_column: None,
        deleted_column: None,
        topic: None,
        presence: None,
    }
}

impl Source {
    /// Reads what the hard-delete trigger of `table` needs from the
    /// catalog: its columns and its key (`id_column`, else the primary
    /// key, as `rowcast serve` finds it). A missing table or an unusable
    /// key fails as it does in `rowcast check`.
    pub async fn delete_trigger(
        &self,
        table: &str,
        schema: Option<&str>,
        id_column: Option<&str>,
    ) -> Result<DeleteTrigger, Error> {
        let query = self.plan(&feed_of(table, schema, id_column)).await?;
        let time_zone = match self {
            Source::MySql(pool) => Some(
                sqlx::query_scalar("SELECT CAST(@@session.time_zone AS CHAR)")
                    .fetch_one(pool)
                    .await?,
            ),
            _ => None,
        };
        Ok(DeleteTrigger {
            dialect: self.dialect(),
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
            recorded_as: match self {
                Source::Sqlite(_) => table.to_owned(),
                _ => query.table,
            },
            key_column: query.id_column,
            columns: query.columns,
            left_out: query.txid_column,
            time_zone,
        })
    }

    /// Whether `rowcast_deletes` exists in `schema` (MySQL: database), or
    /// in the connection's: a `changes` feed reads hard deletes from it.
    pub async fn deletes_table(&self, schema: Option<&str>) -> Result<bool, Error> {
        Ok(match self {
            Source::Postgres(pool) => sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = coalesce($2, current_schema()) AND c.relname = $1 AND c.relkind IN ('r', 'p'))",
            )
            .bind(DELETES_TABLE)
            .bind(schema)
            .fetch_one(pool)
            .await?,
            Source::MySql(pool) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? AND TABLE_TYPE <> 'VIEW'",
                )
                .bind(schema)
                .bind(DELETES_TABLE)
                .fetch_one(pool)
                .await?
                    > 0
            }
            // A trigger's tables are its own schema's: `main` here.
            Source::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                )
                .bind(DELETES_TABLE)
                .fetch_one(pool)
                .await?
                    > 0
            }
        })
    }
}

#[cfg(test)]
mod tests;
