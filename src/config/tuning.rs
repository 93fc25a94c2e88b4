//! Per-feed settings that may also be given once for every feed. One table,
//! [`tuning_table!`], declares each: its type, its default, its environment
//! variable and what it does. The flags, the file's keys (at its top and in
//! each `[[feed]]`), the help text and the defaults all come from it, so a
//! setting is added, documented or given a new default in one place.

use serde::Deserialize;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration as people write it in flags, variables and files: `100ms`,
/// `15s`, `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl FromStr for Interval {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Interval, Self::Err> {
        humantime::parse_duration(text).map(Interval)
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Interval, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A setting's value once resolved: what the code uses.
pub trait Setting: Clone {
    type Value;
    fn value(self) -> Self::Value;
}

impl Setting for Interval {
    type Value = Duration;
    fn value(self) -> Duration {
        self.0
    }
}

impl Setting for u32 {
    type Value = u32;
    fn value(self) -> u32 {
        self
    }
}

impl Setting for usize {
    type Value = usize;
    fn value(self) -> usize {
        self
    }
}

/// Calls `$then!` with its own input followed by the table of per-feed
/// settings, for it to make structs and functions of.
macro_rules! tuning_table {
    ($then:ident! { $($input:tt)* }) => {
        $then! {
            $($input)*
            tuning {
                poll_interval: Interval = "100ms", "ROWCAST_POLL_INTERVAL",
                    "Shortest interval between polls, used while rows flow";
                max_poll_interval: Interval = "1s", "ROWCAST_MAX_POLL_INTERVAL",
                    "Longest interval between polls, reached when the table is idle";
                batch_size: u32 = "500", "ROWCAST_BATCH_SIZE",
                    "Rows read per query (1 to 100000)";
                ring_size: usize = "10000", "ROWCAST_RING_SIZE",
                    "Recent events kept in memory per feed for reconnecting clients";
                gap_grace: Interval = "1s", "ROWCAST_GAP_GRACE",
                    "Shortest time a gap in the ids stays open before what is missing is passed over";
                hold_cap: Interval = "30s", "ROWCAST_HOLD_CAP",
                    "Longest time rows are held back behind a gap (not shorter than gap_grace)";
                late_check_interval: Interval = "15s", "ROWCAST_LATE_CHECK_INTERVAL",
                    "Interval of re-checks for rows that commit after their gap was passed over";
                notify_interval: Interval = "30s", "ROWCAST_NOTIFY_INTERVAL",
                    "Interval of polls while the Postgres NOTIFY doorbell works";
                notify_window: Interval = "10ms", "ROWCAST_NOTIFY_WINDOW",
                    "Shortest time between two polls the NOTIFY doorbell starts: rings within it share one poll";
                clock_skew: Interval = "2s", "ROWCAST_CLOCK_SKEW",
                    "Changes mode: how far a row's stamp may precede the start of its transaction (whole-second application stamps need at least 1s, plus clock drift)";
                max_txn_age: Interval = "30s", "ROWCAST_MAX_TXN_AGE",
                    "Changes mode: transactions open longer than this no longer hold back the window of re-read rows";
                delete_retention: Interval = "7days", "ROWCAST_DELETE_RETENTION",
                    "Changes mode: how long `rowcast_deletes` keeps tombstones; a client resuming from before it starts over";
                presence_grace: Interval = "5s", "ROWCAST_PRESENCE_GRACE",
                    "Presence: how long a member's last connection may be gone before it leaves (a reload or reconnect within it is neither a leave nor a join)";
                presence_timeout: Interval = "30s", "ROWCAST_PRESENCE_TIMEOUT",
                    "Presence: longest time from a client vanishing without a word (no FIN) to its leave; more than keep_alive + presence_grace";
            }
        }
    };
}
pub(crate) use tuning_table;

/// Makes [`Tuning`], the settings as one layer gives them, and [`Tuned`],
/// their values once every layer and the defaults are applied.
macro_rules! tuning_types {
    (tuning { $( $name:ident: $ty:ty = $default:literal, $env:literal, $help:literal; )* }) => {
        /// The per-feed settings one layer gives (the flags, a `[[feed]]`
        /// table, the file's top level); `None` where it says nothing.
        #[derive(Debug, Default, Clone, PartialEq)]
        pub struct Tuning {
            $( #[doc = $help] pub $name: Option<$ty>, )*
        }

        /// The per-feed settings of a feed, resolved.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Tuned {
            $( #[doc = $help] pub $name: <$ty as Setting>::Value, )*
        }

        impl Tuning {
            /// Every setting from the first of `layers` that gives it, else
            /// its default.
            pub fn resolve(layers: &[&Tuning]) -> Tuned {
                Tuned {
                    $( $name: layers
                        .iter()
                        .find_map(|layer| layer.$name.clone())
                        .unwrap_or_else(|| $default.parse().expect("the table's defaults parse"))
                        .value(), )*
                }
            }

            /// Each setting's name and default, as the table gives them.
            pub const DEFAULTS: &'static [(&'static str, &'static str)] =
                &[$( (stringify!($name), $default), )*];
        }
    };
}

tuning_table!(tuning_types! {});

/// Makes a struct of layered settings (every field an `Option`) with the
/// table's settings among its fields, and `tuning()` (those settings as a
/// [`Tuning`]) and `over()` (this layer's settings over another's). With
/// `tuning flags` the table's settings are flags too; with `tuning skip`
/// they are not (the struct's other flags describe one feed).
macro_rules! layered {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident: Option<$fty:ty>, )*
        }
        tuning $args:ident
        extra { $( $(#[$emeta:meta])* pub $extra:ident: $ety:ty, )* }
        tuning { $( $tname:ident: $tty:ty = $default:literal, $env:literal, $help:literal; )* }
    ) => {
        layered!(@struct $args
            [$(#[$meta])*] $name
            [$( $(#[$fmeta])* pub $field: Option<$fty>, )*]
            [$( $(#[$emeta])* pub $extra: $ety, )*]
            [$( $tname: $tty = $default, $env, $help; )*]
        );

        impl $name {
            /// The per-feed settings this layer gives.
            pub fn tuning(&self) -> $crate::config::tuning::Tuning {
                $crate::config::tuning::Tuning { $( $tname: self.$tname.clone(), )* }
            }

            /// This layer's settings where it gives them, else `below`'s;
            /// the other fields are `below`'s.
            pub fn over(self, below: $name) -> $name {
                $name {
                    $( $field: self.$field.or(below.$field), )*
                    $( $tname: self.$tname.or(below.$tname), )*
                    $( $extra: below.$extra, )*
                }
            }
        }
    };
    (@struct flags [$($meta:tt)*] $name:ident [$($fields:tt)*] [$($extras:tt)*]
        [$( $tname:ident: $tty:ty = $default:literal, $env:literal, $help:literal; )*]) => {
        $($meta)*
        pub struct $name {
            $($fields)*
            $( #[doc = $help]
               #[arg(long, env = $env, help = concat!($help, " [default: ", $default, "]"))]
               pub $tname: Option<$tty>, )*
            $($extras)*
        }
    };
    (@struct skip [$($meta:tt)*] $name:ident [$($fields:tt)*] [$($extras:tt)*]
        [$( $tname:ident: $tty:ty = $default:literal, $env:literal, $help:literal; )*]) => {
        $($meta)*
        pub struct $name {
            $($fields)*
            $( #[doc = $help] #[arg(skip)] pub $tname: Option<$tty>, )*
            $($extras)*
        }
    };
}
pub(crate) use layered;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_layer_that_gives_a_setting_wins_and_defaults_fill_the_rest() {
        let flags = Tuning {
            batch_size: Some(7),
            ..Tuning::default()
        };
        let feed = Tuning {
            batch_size: Some(10),
            poll_interval: Some(Interval(Duration::from_secs(2))),
            ..Tuning::default()
        };
        let tuned = Tuning::resolve(&[&flags, &feed, &Tuning::default()]);
        assert_eq!(tuned.batch_size, 7);
        assert_eq!(tuned.poll_interval, Duration::from_secs(2));
        assert_eq!(tuned.ring_size, 10_000);
        assert_eq!(tuned.notify_window, Duration::from_millis(10));
    }

    #[test]
    fn every_default_parses() {
        let tuned = Tuning::resolve(&[]);
        assert_eq!(tuned.hold_cap, Duration::from_secs(30));
        assert_eq!(Tuning::DEFAULTS.len(), 14);
    }

    #[test]
    fn intervals_read_and_print_as_people_write_them() {
        let interval: Interval = "1m 30s".parse().unwrap();
        assert_eq!(interval.0, Duration::from_secs(90));
        assert_eq!(interval.to_string(), "1m 30s");
        assert!("soon".parse::<Interval>().is_err());
    }
}
