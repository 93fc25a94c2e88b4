//! Client filters: query parameters naming a feed's filter columns, matched
//! in memory against the values the poller read beside each row. Values
//! are never part of any SQL.

use super::error::Error;
use crate::hub::Hub;
use std::sync::Arc;

/// A client's filter on one feed: every listed column must hold one of its
/// values (a repeated parameter means IN).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter(Vec<(usize, Vec<String>)>);

impl Filter {
    /// The filter that `params` give for `hub`; any parameter that is
    /// neither in `reserved` nor a filter column is an error.
    pub fn for_feed(
        hub: &Arc<Hub>,
        params: &[(String, String)],
        reserved: &[&str],
    ) -> Result<Filter, Error> {
        let mut filter = Filter::default();
        for (name, value) in params {
            if reserved.contains(&name.as_str()) {
                continue;
            }
            let column = filter_index(hub, name)
                .ok_or_else(|| unknown_filter(name, std::slice::from_ref(hub)))?;
            filter.add(column, value.clone());
        }
        Ok(filter)
    }

    pub fn matches(&self, values: &[Option<Box<str>>]) -> bool {
        self.0.iter().all(|(column, allowed)| {
            values[*column]
                .as_deref()
                .is_some_and(|v| allowed.iter().any(|a| a == v))
        })
    }

    pub fn add(&mut self, column: usize, value: String) {
        match self.0.iter_mut().find(|(c, _)| *c == column) {
            Some((_, values)) => values.push(value),
            None => self.0.push((column, vec![value])),
        }
    }

    /// The values asked for `column`, if any.
    pub fn values(&self, column: usize) -> Option<&[String]> {
        self.0
            .iter()
            .find(|(c, _)| *c == column)
            .map(|(_, v)| v.as_slice())
    }

    /// Sets the values of `column` (an empty list matches no row).
    pub fn set(&mut self, column: usize, values: Vec<String>) {
        self.0.retain(|(c, _)| *c != column);
        self.0.push((column, values));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The position of `column` among the feed's filter columns.
pub fn filter_index(hub: &Hub, column: &str) -> Option<usize> {
    hub.query.filter_columns.iter().position(|c| c == column)
}

/// The error for a parameter that is not a filter of `hubs`.
pub fn unknown_filter(param: &str, hubs: &[Arc<Hub>]) -> Error {
    let feeds = hubs
        .iter()
        .map(|h| format!("feed `{}`", h.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut valid: Vec<String> = hubs
        .iter()
        .flat_map(|h| h.query.filter_columns.iter().cloned())
        .collect();
    valid.sort();
    valid.dedup();
    if valid.is_empty() {
        valid.push("(none)".to_owned());
    }
    Error::UnknownFilter {
        param: param.to_owned(),
        feeds,
        valid: valid.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_needs_every_column_and_any_of_its_values() {
        let mut filter = Filter::default();
        filter.add(0, "5".into());
        filter.add(0, "6".into());
        filter.add(1, "alice".into());
        let row = |a: Option<&str>, b: Option<&str>| -> Vec<Option<Box<str>>> {
            vec![a.map(Into::into), b.map(Into::into)]
        };
        assert!(filter.matches(&row(Some("5"), Some("alice"))));
        assert!(filter.matches(&row(Some("6"), Some("alice"))));
        assert!(!filter.matches(&row(Some("7"), Some("alice"))));
        assert!(!filter.matches(&row(Some("5"), Some("bob"))));
        assert!(!filter.matches(&row(None, Some("alice"))));
        assert!(Filter::default().matches(&row(None, None)));
    }
}
