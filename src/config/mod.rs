//! Configuration: flags and environment variables, merged over an optional
//! TOML file, then validated into typed values.
//!
//! Parsing and validation are separate steps, as in ripgrep's low-level and
//! high-level arguments: `file` and `flags` hold the layers as written
//! (each setting declared once, per-feed ones in the table of `tuning`),
//! `validate` merges them into the typed values of `types`. This module
//! never touches the database: identifiers are checked here for shape only
//! and against the catalog later, by `source`.

mod file;
mod flags;
pub(crate) mod tuning;
mod types;
mod validate;

pub use file::{ClusterFile, FeedFile, FileConfig};
pub use flags::ServeArgs;
pub use tuning::{Interval, Tuned, Tuning};
pub use types::{
    Cluster, Config, FeedConfig, Format, GapHandling, Mode, Notify, PresenceConfig, ReadFrom,
    Topic, TopicKind, DEFAULT_LISTEN,
};
pub use validate::presence::MIN_SILENCE;
pub use validate::Error;
