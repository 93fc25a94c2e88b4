//! Client filters, matched in memory against the values the poller read
//! beside each row: a check per event per client, never part of any SQL.

/// A client's filter on one feed: every listed column must hold one of its
/// values (a repeated parameter means IN). Each column's values are kept
/// sorted, without repeats: a token may allow thousands (its rooms), and
/// the check runs per row per client.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter(Vec<(usize, Vec<String>)>);

impl Filter {
    /// Whether a row with these filter column values passes.
    pub fn matches(&self, values: &[Option<Box<str>>]) -> bool {
        self.0.iter().all(|(column, allowed)| {
            values[*column]
                .as_deref()
                .is_some_and(|v| contains(allowed, v))
        })
    }

    /// Adds an allowed value for `column`.
    pub fn add(&mut self, column: usize, value: String) {
        match self.0.iter_mut().find(|(c, _)| *c == column) {
            Some((_, values)) => {
                if let Err(at) = values.binary_search(&value) {
                    values.insert(at, value);
                }
            }
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
    pub fn set(&mut self, column: usize, mut values: Vec<String>) {
        values.sort_unstable();
        values.dedup();
        self.0.retain(|(c, _)| *c != column);
        self.0.push((column, values));
    }

    /// Each filtered column and its values, in the order they were added.
    pub fn columns(&self) -> impl Iterator<Item = (usize, &[String])> {
        self.0.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    /// Whether every row passes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether sorted `values` hold `value`.
pub fn contains(values: &[String], value: &str) -> bool {
    values.binary_search_by(|v| v.as_str().cmp(value)).is_ok()
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

    #[test]
    fn many_values_in_any_order_are_one_sorted_set() {
        let mut filter = Filter::default();
        for v in ["9", "10", "1", "10"] {
            filter.add(0, v.into());
        }
        assert_eq!(
            filter.values(0),
            Some(&["1".to_owned(), "10".into(), "9".into()][..])
        );
        filter.set(1, (0..5000).rev().map(|n| n.to_string()).collect());
        let row =
            |a: &str, b: &str| -> Vec<Option<Box<str>>> { vec![Some(a.into()), Some(b.into())] };
        assert!(filter.matches(&row("10", "4321")));
        assert!(!filter.matches(&row("10", "5000")));
        assert!(!filter.matches(&row("2", "0")));
    }
}
