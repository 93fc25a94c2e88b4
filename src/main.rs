//! The `rowcast` command: tracing set-up, configuration, then `serve`,
//! `check` or `demo`. Errors print as one readable line.

use anyhow::Context as _;
use clap::Parser;
use rowcast::cli::{Cli, Command, LogFormat, SqlCommand};
use rowcast::config::Config;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

// jemalloc's background threads return freed memory within seconds of a
// burst of clients; glibc's allocator keeps the burst's peak for good.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("rowcast=info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rowcast: {}", chain(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let config = Config::load(&args)?;
            let (listener, backlog) = rowcast::http::listener::bind(config.listen)
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            if backlog < 1024 {
                tracing::warn!(backlog, "net.core.somaxconn is low: connections arriving faster than they are accepted (a reconnect storm) are dropped; raise it (and net.ipv4.tcp_max_syn_backlog)");
            } else {
                tracing::info!(backlog, "listen backlog (net.core.somaxconn)");
            }
            rowcast::run(listener, config, rowcast::shutdown::signal()).await?;
        }
        Command::Check(args) => {
            let config = Config::load(&args)?;
            let feeds = rowcast::prepare(&config).await?;
            for (served, reading) in feeds.served.iter().zip(&feeds.setups) {
                let feed = &served.feed;
                let q = &feed.query;
                println!("feed {}", feed.name());
                println!("  reads      {}", q.source);
                let rowcast::Reading::Table(setup) = reading else {
                    let cursor = match feed.style().resumable() {
                        true => format!("resumable (now at {})", feed.cursor_text(feed.head().0)),
                        false => "none: live only".to_owned(),
                    };
                    println!("  cursor     {cursor}");
                    println!("  filters    {}", q.filter_columns.join(", "));
                    continue;
                };
                if let rowcast::poller::Setup::Changes(changes) = setup {
                    let c = &changes.query;
                    println!(
                        "  changes    every insert, update and delete, by `{}`",
                        c.updated_column
                    );
                    if let Some(column) = &c.deleted_column {
                        println!("  soft       a row whose `{column}` is set is a delete");
                    }
                    println!(
                        "  hard       {}",
                        match c.reads_tombstones() {
                            true => "deletes read from rowcast_deletes",
                            false => "deletes not seen (see `rowcast sql deletes`)",
                        }
                    );
                    if c.indexed == Some(false) {
                        println!(
                            "  index      missing: every poll scans the table; add one: {}",
                            c.index_sql(q)
                        );
                    }
                }
                println!(
                    "  cursor     {} (now at {})",
                    q.id_column,
                    feed.cursor_text(feed.head().0)
                );
                if let Some(txid) = &q.txid_column {
                    println!("  exact      rows read in transaction order by `{txid}`");
                }
                println!("  columns    {}", q.columns.join(", "));
                println!("  filters    {}", q.filter_columns.join(", "));
                match setup {
                    rowcast::poller::Setup::Changes(changes) => {
                        println!("  query      {}", changes.query.window_sql())
                    }
                    rowcast::poller::Setup::Append(_) => println!("  query      {}", q.read_sql),
                }
            }
            println!(
                "ok: {} feed(s) on {}",
                feeds.served.len(),
                feeds.source.as_ref().map_or("no database", |s| s.kind())
            );
        }
        Command::Demo(args) => rowcast::demo::run(args, rowcast::shutdown::signal()).await?,
        Command::Sql(SqlCommand::Txid(args)) => print!(
            "{}",
            rowcast::source::txid_sql(&args.table, args.schema.as_deref(), &args.id_column)
        ),
        Command::Sql(SqlCommand::Notify(args)) => {
            let (table, schema) = (&args.table.table, args.table.schema.as_deref());
            let sql = if args.remove {
                rowcast::source::unnotify_sql(table, schema)
            } else {
                rowcast::source::notify_sql(table, schema)
            };
            print!("{sql}");
            if args.apply {
                let url = args
                    .database_url
                    .context("--apply needs --database-url or DATABASE_URL")?;
                let source = rowcast::source::Source::connect(&url, 2).await?;
                source.apply(&sql).await?;
                eprintln!("rowcast: applied to {}", rowcast::source::redact(&url));
            }
        }
        Command::Sql(SqlCommand::Deletes(args)) => {
            let source = rowcast::source::Source::connect(&args.database_url, 2).await?;
            let trigger = source
                .delete_trigger(
                    &args.table,
                    args.schema.as_deref(),
                    args.id_column.as_deref(),
                )
                .await?;
            let sql = if args.remove {
                trigger.remove_sql()
            } else {
                trigger.install_sql(args.retention.0)
            };
            print!("{sql}");
            if args.apply {
                source.apply(&sql).await?;
                let url = rowcast::source::redact(&args.database_url);
                eprintln!("rowcast: applied to {url}");
            }
        }
    }
    Ok(())
}

/// The error and its causes on one line, each cause once: our messages
/// often already quote their cause.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let part = next.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = next.source();
    }
    text
}
