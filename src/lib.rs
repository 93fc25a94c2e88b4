//! # rowcast
//!
//! Turns a table of an existing Postgres, MySQL/MariaDB or SQLite database
//! into a live feed of Server-Sent Events: every new row, in order, to every
//! client, with nothing lost across reconnects, at the database cost of one
//! client. A feed can also follow a Redis stream or channel or a NATS
//! subject, with the same events, filters and auth.
//!
//! # Layout
//!
//! The modules follow the data, in flow order:
//!
//! - [`config`]: flags, environment and TOML, validated into a [`Config`]
//!   ([`cli`] is the command line around it).
//! - [`source`]: one file per database; checks feeds against the catalog and
//!   reads rows after a cursor, rendered as JSON by the database. Knows no
//!   clients.
//! - [`poller`]: one task per feed; one query per poll, whatever the number
//!   of clients; owns its gaps, its health and its doorbell. A changes feed's
//!   poller re-reads the rows stamped since the writer horizon
//!   (`source::horizon`) and sends those whose state changed. `gap` judges
//!   which ids it may publish when they commit out of order; `doorbell`
//!   rings its bell on a Postgres NOTIFY.
//! - [`topic`]: beside `source` and `poller`, for feeds that are not a
//!   table: one task per feed reads a Redis stream or channel or a NATS
//!   subject (one file per kind) and publishes each message as a row, and
//!   catches up clients behind the ring from the stream where there is
//!   one. Knows no clients and no database.
//! - [`cluster`]: with several instances on one bus, the instance holding a
//!   feed's database lock runs its poller and relays each batch to the
//!   [`bus`]; the others apply the bus's entries to their feed instead.
//! - [`feed`]: per feed, frames each row once, keeps a replay ring and the
//!   latest cursor, broadcasts batches, and catches up clients behind the
//!   ring with coalesced reads through a reader it is handed.
//! - [`fanout`]: writes each batch straight to the sockets of caught-up
//!   streams, from one task per core, and writes a stream on its own socket
//!   otherwise: the one owner of a stream's socket.
//! - [`presence`]: beside the streams, who is connected to each scope of a
//!   feed: a stream with a member key holds a seat, watchers get joins and
//!   leaves; with a bus, every instance says its members to the others.
//! - [`http`]: the listener (reads request heads, answers event stream
//!   requests on the socket and hands them to the fan-out) and the axum
//!   router: `/events` (SSE), `/feeds`, `/presence`, `/healthz`,
//!   `/metrics`, `/`.
//!
//! `app` wires them together and stops them. Beside the flow: `sse`
//! (pure event framing), [`cursor`] (event ids as text), [`auth`] (tokens
//! and per-feed rules), `echo` (client values quoted back in errors, cut
//! short), [`shutdown`] (signals), [`demo`] (the self-contained SQLite demo).

mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod cursor;
pub mod demo;
mod doorbell;
mod echo;
pub mod fanout;
pub mod feed;
mod gap;
pub mod http;
pub mod poller;
pub mod presence;
pub mod shutdown;
pub mod source;
mod sse;
pub mod topic;

pub use app::{prepare, run, serve, Error, Feeds, Listeners, Reading};
pub use config::Config;
