//! Client values quoted back in error messages. An error names what it
//! refuses, but a refused value may be tens of kilobytes long: repeated
//! whole, it would cost its size again in every answer and bury the
//! message. Every error that quotes a value a client sent quotes it through
//! [`Echo`]. Pure: knows nothing of HTTP.

use std::fmt;

/// Characters of a client value that an error repeats.
pub const ECHO_CHARS: usize = 64;

/// A client value as an error quotes it, in backticks: whole when it has at
/// most [`ECHO_CHARS`] characters, else its first [`ECHO_CHARS`], `…` and
/// its full length.
#[derive(Clone, Copy, Debug)]
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(ECHO_CHARS) {
            None => write!(f, "`{}`", self.0),
            Some((end, _)) => write!(
                f,
                "`{}…` ({} characters)",
                &self.0[..end],
                self.0.chars().count()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole() {
        assert_eq!(Echo("roomid").to_string(), "`roomid`");
        assert_eq!(Echo("").to_string(), "``");
        let exact = "x".repeat(ECHO_CHARS);
        assert_eq!(Echo(&exact).to_string(), format!("`{exact}`"));
    }

    #[test]
    fn long_values_are_cut_and_measured() {
        let long = "a".repeat(60_000);
        assert_eq!(
            Echo(&long).to_string(),
            format!("`{}…` (60000 characters)", "a".repeat(64))
        );
        // Cut on a character, never inside one.
        let wide = "é".repeat(65);
        assert_eq!(
            Echo(&wide).to_string(),
            format!("`{}…` (65 characters)", "é".repeat(64))
        );
    }
}
