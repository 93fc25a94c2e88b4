//! `rowcast demo`: the whole pipeline with no set-up. Creates and migrates an
//! SQLite file, writes sample chat messages a few times a second, and serves
//! the `messages` feed with a live page at `/`.
//!
//! The writer is the demo's stand-in for an application: it only INSERTs, as
//! any app would, and knows nothing of rowcast.

use crate::cli::DemoArgs;
use crate::config::{Config, FeedFile, FileConfig, Interval, ServeArgs};
use crate::source::sqlite;
use sqlx::SqlitePool;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the demo database {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("cannot migrate the demo database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serve(#[from] crate::Error),
}

const AUTHORS: [&str; 4] = ["ada", "grace", "linus", "margaret"];
const BODIES: [&str; 6] = [
    "hello, room",
    "shipping the fix now 🚀",
    "two lines:\nsee?",
    "quotes \"like this\" and a backslash \\",
    "who broke main?",
    "lunch at noon 🍜",
];

/// Runs the demo until `shutdown` completes.
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let path = args
        .database_file
        .unwrap_or_else(|| std::env::temp_dir().join("rowcast-demo.db"));
    let url = format!("sqlite://{}", path.display());
    let pool = sqlite::connect(&url, 2, true)
        .await
        .map_err(|source| Error::Open {
            path: path.display().to_string(),
            source,
        })?;
    sqlx::migrate!("migrations/sqlite").run(&pool).await?;

    let config = Config::merge(
        &ServeArgs {
            server: FileConfig {
                database_url: Some(url),
                listen: Some(args.listen),
                max_poll_interval: Some(Interval(Duration::from_millis(500))),
                ..FileConfig::default()
            },
            feed: FeedFile {
                table: Some("messages".into()),
                filter_columns: Some(vec!["room_id".into(), "author".into()]),
                ..FeedFile::default()
            },
            ..ServeArgs::default()
        },
        Default::default(),
    )
    .map_err(crate::Error::from)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            address: args.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(crate::Error::from)?;
    let writer = tokio::spawn(write_messages(pool, args.rate));
    println!(
        "rowcast demo: open http://{address}/ (database {})",
        path.display()
    );
    println!("  stream it:   curl -N http://{address}/events/messages");
    println!("  one room:    curl -N 'http://{address}/events/messages?room_id=1'");
    let result = crate::run(listener, config, shutdown).await;
    writer.abort();
    Ok(result?)
}

/// Inserts sample messages at `rate` per second, forever.
async fn write_messages(pool: SqlitePool, rate: f64) {
    let period = Duration::from_secs_f64(1.0 / rate.clamp(0.1, 1000.0));
    let mut tick = tokio::time::interval(period);
    for n in 0usize.. {
        tick.tick().await;
        let result = sqlx::query("INSERT INTO messages (room_id, author, body) VALUES (?, ?, ?)")
            .bind((n % 3 + 1) as i64)
            .bind(AUTHORS[n % AUTHORS.len()])
            .bind(BODIES[n % BODIES.len()])
            .execute(&pool)
            .await;
        if let Err(err) = result {
            tracing::warn!(cause = %err, "demo writer failed to insert");
        }
    }
}
