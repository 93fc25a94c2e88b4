//! The catalog's view of a base table, and the choice of its cursor column:
//! shared by every database, which only fills in [`Catalog`].

use super::{Error, Table};
use crate::config::FeedConfig;

/// What each database's catalog reports about a base table, before the
/// cursor column is chosen.
pub(super) struct Catalog {
    /// The table as messages name it.
    pub display: String,
    /// `(name, type as the database spells it, integer?, unsigned?)`.
    pub columns: Vec<(String, String, bool, bool)>,
    /// The primary key's columns, in key order.
    pub primary_key: Vec<String>,
    /// Columns that alone carry a unique index (the primary key included).
    pub unique: Vec<String>,
}

impl Catalog {
    /// Picks the cursor column: the configured one, else the primary key.
    /// It must be an integer and unique, or rows sharing an id would be
    /// skipped by `id > last`.
    pub fn into_table(self, feed: &FeedConfig) -> Result<Table, Error> {
        let no_cursor = |reason: String| Error::NoCursor {
            feed: feed.name.clone(),
            table: self.display.clone(),
            reason,
        };
        let id = match &feed.id_column {
            Some(id) => id.clone(),
            None => match self.primary_key.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(no_cursor(
                        "it has no primary key; set `id_column` (--id-column) to a unique, increasing integer column".into(),
                    ))
                }
                many => {
                    return Err(no_cursor(format!(
                        "its primary key ({}) spans several columns; set `id_column` (--id-column) to a unique, increasing integer column",
                        many.join(", ")
                    )))
                }
            },
        };
        let Some((_, type_name, integer, unsigned)) = self.columns.iter().find(|c| c.0 == id)
        else {
            return Err(Error::UnknownColumn {
                feed: feed.name.clone(),
                key: "id_column",
                column: id,
                table: self.display.clone(),
                available: self.columns.iter().map(|c| c.0.clone()).collect(),
            });
        };
        if !integer {
            return Err(no_cursor(format!(
                "column `{id}` is `{type_name}`, not an integer; set `id_column` (--id-column) to a unique, increasing integer column"
            )));
        }
        if !self.is_unique(&id) {
            // An index on an application's table is the application's to
            // add: point at what already works instead.
            let join = "set `table` to a table whose unique id orders these rows and `select` them with a join";
            let candidates: Vec<String> = self
                .columns
                .iter()
                .filter(|c| c.2 && self.is_unique(&c.0))
                .map(|c| format!("`{}`", c.0))
                .collect();
            let fix = if candidates.is_empty() {
                format!("it has no unique integer column, so {join}")
            } else {
                format!(
                    "set `id_column` (--id-column) to one of its unique integer columns ({}), or {join}",
                    candidates.join(", ")
                )
            };
            return Err(no_cursor(format!(
                "column `{id}` has no unique index, and rows sharing an id could be skipped; {fix}"
            )));
        }
        Ok(Table {
            columns: self.columns.iter().map(|c| c.0.clone()).collect(),
            unsigned: *unsigned,
            txid_column: None,
            id_column: id,
            display: self.display,
        })
    }

    /// Whether `column` alone is unique: a single-column unique index or
    /// primary key (SQLite's `INTEGER PRIMARY KEY` has no index of its own).
    fn is_unique(&self, column: &str) -> bool {
        self.unique.iter().any(|c| c == column) || self.primary_key == [column]
    }
}
