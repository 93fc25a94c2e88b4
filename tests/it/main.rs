//! rowcast's integration tests: the real server on `127.0.0.1:0` against
//! real databases (Postgres, MariaDB, SQLite), read by real clients.
//!
//! One crate, so the helpers in [`common`] are compiled once and every area
//! runs in one process; `cargo test --test it gaps::` runs one area.
//!
//! # Layout
//! - [`common`]: a test database, the server, an SSE client, raw HTTP.
//! - [`stream`], [`rows`], [`http`], [`cursors`]: what clients ask for and
//!   get: streams, JSON polls, errors, cursors.
//! - [`listener`], [`fanout`], [`slow`], [`scale`]: connections on the wire,
//!   the fan-out, slow clients, database load as clients grow.
//! - [`gaps`], [`gap_limits`], [`notify`], [`outage`]: delivery without
//!   gaps under concurrent writers, the doorbell, database outages.
//! - [`schema`], [`names`], [`apps`]: tables as applications have them.
//! - [`auth`], [`visibility`]: tokens, claim rules, what a token may see.
//! - [`cli`], [`clients`]: the binary as a user runs it; the strictest real
//!   SSE clients, directly and behind nginx.
//! - [`deletes`]: the hard-delete trigger of `rowcast sql deletes`.
//! - [`bus`], [`cluster`]: the cluster bus on real Redis and NATS
//!   JetStream servers; several instances on one database and one bus.
//! - [`topics`]: feeds of Redis streams and channels and NATS subjects.
//! - [`presence`]: who is connected to a scope: browser tabs, vanished
//!   clients, join/leave storms, tokens.

mod common;

mod apps;
mod auth;
mod bus;
mod bus_tls;
mod changes;
mod changes_torture;
mod cli;
mod clients;
mod cluster;
mod cluster_changes;
mod cluster_netcut;
mod cluster_presence;
mod cursors;
mod deletes;
mod fanout;
mod gap_limits;
mod gaps;
mod http;
mod listener;
mod names;
mod notify;
mod outage;
mod presence;
mod rows;
mod scale;
mod schema;
mod slow;
mod stream;
mod topics;
mod visibility;
