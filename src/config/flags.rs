//! The flags of `rowcast serve` and `rowcast check`: the server's settings
//! ([`FileConfig`], over the file's top level), one feed's (the `--table`
//! feed, or `--feed NAME` of the file), and where the file is.

use super::file::{FeedFile, FileConfig};
use clap::Args;
use std::path::PathBuf;

/// Flags of `rowcast serve` and `rowcast check`. Every one overrides the
/// configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file declaring server settings and feeds.
    #[arg(long, short, env = "ROWCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// HS256 secret that verifies clients' JWTs (turns auth on; see `[auth]`).
    #[arg(long, env = "ROWCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Several instances: the bus they share, `redis://…`, `rediss://…`,
    /// `nats://…` or `tls://…` (turns clustering on; see `[cluster]`).
    #[arg(long, env = "ROWCAST_BUS", hide_env_values = true)]
    pub bus: Option<String>,
    /// The server's settings, and per-feed settings for every feed.
    #[command(flatten)]
    pub server: FileConfig,
    /// The `--table` feed, or with `--feed NAME` alone keys of the file's
    /// feed of that name.
    #[command(flatten)]
    pub feed: FeedFile,
}
