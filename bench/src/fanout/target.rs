//! The two servers under test behind one face: started fresh, fed rows at a
//! steady rate, and read for their memory, CPU time and (rowcast) database
//! queries.
//!
//! - rowcast: a fresh Postgres table `(id bigserial, sent_at_us, body)`
//!   with one row, the NOTIFY trigger of `rowcast sql notify` unless
//!   `--notify off`, and `rowcast serve` on it; a row is one autocommitted
//!   INSERT stamped with the clock just before it is sent.
//! - nginx+nchan: a message is one POST to the publisher on a kept
//!   connection, carrying the JSON rowcast would send for such a row,
//!   `{"id":N,"sent_at_us":T,"body":"row"}`, stamped just before the POST.

use super::crowd::Subscription;
use super::nchan::{Nginx, PUBLISH_PATH, SUBSCRIBE_PATH};
use super::stream::ReadyOn;
use crate::cpu::cpu_time;
use crate::db::{install_notify_trigger, table_scans, Db};
use crate::http::Connection;
use crate::now_us;
use crate::server::{series, Server};
use anyhow::{bail, Context as _};
use clap::ValueEnum;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    Rowcast,
    Nchan,
}

/// How to start each side.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The rowcast binary (only when rowcast is measured).
    pub rowcast: Option<PathBuf>,
    pub postgres_url: String,
    /// Whether rowcast runs with the NOTIFY doorbell.
    pub notify: bool,
    /// rowcast's `--ring-size`.
    pub ring_size: usize,
    /// rowcast's `--direct-fanout`.
    pub direct_fanout: bool,
    pub nginx: PathBuf,
    pub nchan_module: PathBuf,
    /// nginx's `worker_connections`.
    pub worker_connections: usize,
}

/// One side, started fresh: the server and its writer.
pub struct Target {
    pub side: Side,
    pub server: Served,
    pub writer: Writer,
}

/// The server process and how to read it.
pub struct Served {
    pub sub: Subscription,
    process: Process,
    /// rowcast's table and the benchmark's pool on its database.
    table: Option<(PgPool, String)>,
}

enum Process {
    Rowcast(Server),
    Nchan(Nginx),
}

/// Puts rows in at a steady rate.
pub struct Writer {
    sink: Sink,
    /// The id of the last row written, for whoever watches the writer.
    last: Arc<AtomicI64>,
}

enum Sink {
    Rowcast { db: Db, table: String },
    Nchan(Connection),
}

/// The rows of one stretch of writing.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// The id of the last row.
    pub last: i64,
    pub rows: usize,
    /// From the first row to the end of the last.
    pub elapsed: Duration,
}

impl Written {
    /// Rows per second actually written.
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counters of rowcast's queries at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Queries {
    pub at: Instant,
    /// `seq_scan + idx_scan` of the table in `pg_stat_user_tables`.
    pub pg_scans: i64,
    /// `rowcast_queries_total` of the feed.
    pub rowcast: f64,
    /// `rowcast_catch_up_queries_total` of the feed.
    pub catch_up: f64,
}

impl Target {
    pub async fn start(side: Side, setup: &Setup) -> anyhow::Result<Target> {
        match side {
            Side::Rowcast => start_rowcast(setup).await,
            Side::Nchan => {
                let nginx =
                    Nginx::start(&setup.nginx, &setup.nchan_module, setup.worker_connections)
                        .await?;
                let addr = nginx.addr;
                Ok(Target {
                    side,
                    server: Served {
                        sub: Subscription {
                            addr,
                            path: SUBSCRIBE_PATH.to_owned(),
                            ready_on: ReadyOn::Head,
                        },
                        process: Process::Nchan(nginx),
                        table: None,
                    },
                    writer: Writer {
                        sink: Sink::Nchan(Connection::new(addr)),
                        last: Arc::new(AtomicI64::new(0)),
                    },
                })
            }
        }
    }

    /// Stops the server and drops rowcast's table.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self.server.process {
            Process::Rowcast(server) => server.stop().await,
            Process::Nchan(nginx) => nginx.stop().await,
        }
        if let Some((pool, table)) = self.server.table {
            Db::Postgres(pool).drop_table(&table).await?;
        }
        Ok(())
    }
}

async fn start_rowcast(setup: &Setup) -> anyhow::Result<Target> {
    let rowcast = setup.rowcast.as_deref().context("no rowcast binary")?;
    let url = &setup.postgres_url;
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let table = format!("rowcast_fanout_{stamp}_{}", std::process::id());
    let db = Db::Postgres(pool.clone());
    db.create_table(&table).await?;
    let started = serve(rowcast, setup, &db, &table).await;
    let (server, seed) = match started {
        Ok(started) => started,
        Err(err) => {
            db.drop_table(&table).await?;
            return Err(err);
        }
    };
    Ok(Target {
        side: Side::Rowcast,
        server: Served {
            sub: Subscription {
                addr: server.addr,
                path: format!("/events/{table}"),
                ready_on: ReadyOn::Retry,
            },
            process: Process::Rowcast(server),
            table: Some((pool, table.clone())),
        },
        writer: Writer {
            sink: Sink::Rowcast { db, table },
            last: Arc::new(AtomicI64::new(seed)),
        },
    })
}

/// Seeds the table, installs the trigger and starts rowcast; returns it and
/// the seed row's id.
async fn serve(
    rowcast: &Path,
    setup: &Setup,
    db: &Db,
    table: &str,
) -> anyhow::Result<(Server, i64)> {
    // A feed whose table is empty at start-up holds its first rows for the
    // gap grace window; a row already there avoids measuring that.
    let seed = db.insert(table, now_us(), "seed").await?;
    let mut args = vec![
        "serve".to_owned(),
        format!("--database-url={}", setup.postgres_url),
        format!("--table={table}"),
        format!("--ring-size={}", setup.ring_size),
    ];
    // Only when off: a rowcast from before the setting runs as it did.
    if !setup.direct_fanout {
        args.push("--direct-fanout=false".to_owned());
    }
    if setup.notify {
        install_notify_trigger(rowcast, &setup.postgres_url, table).await?;
        args.push("--notify=on".to_owned());
    } else {
        args.push("--notify=off".to_owned());
    }
    Ok((Server::start(rowcast, args).await?, seed))
}

impl Served {
    pub fn addr(&self) -> SocketAddr {
        self.sub.addr
    }

    pub fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Rowcast(server) => server.child.id(),
            Process::Nchan(nginx) => nginx.child.id(),
        }
    }

    /// The server's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        crate::cpu::rss_kib(self.pid()?)
    }

    /// The CPU time the server used so far.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_time(self.pid()?)
    }

    /// What the server logged, when it fails (nginx's error log).
    pub fn log(&self) -> String {
        match &self.process {
            Process::Rowcast(_) => String::new(),
            Process::Nchan(nginx) => nginx.error_log(),
        }
    }

    /// rowcast's queries of its table so far; `None` for nchan.
    pub async fn queries(&self) -> anyhow::Result<Option<Queries>> {
        let Some((pool, table)) = &self.table else {
            return Ok(None);
        };
        let at = Instant::now();
        let pg_scans: i64 = table_scans(pool, table).await?;
        let metrics = self.metrics().await?;
        Ok(Some(Queries {
            at,
            pg_scans,
            rowcast: series(&metrics, "rowcast_queries_total", table)?,
            catch_up: series(&metrics, "rowcast_catch_up_queries_total", table)?,
        }))
    }

    /// One of rowcast's metrics of its feed; `None` for nchan.
    pub async fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let Some((_, table)) = &self.table else {
            return Ok(None);
        };
        Ok(Some(series(&self.metrics().await?, name, table)?))
    }

    /// rowcast's `/metrics` text.
    async fn metrics(&self) -> anyhow::Result<String> {
        let response = Connection::new(self.addr()).get("/metrics").await?;
        if response.status != 200 {
            bail!("/metrics answered {}", response.status);
        }
        Ok(String::from_utf8_lossy(&response.body).into_owned())
    }
}

impl Writer {
    /// The id of the last row written.
    pub fn last(&self) -> i64 {
        self.last.load(Ordering::Relaxed)
    }

    /// A handle that follows [`Writer::last`] while the writer runs.
    pub fn progress(&self) -> Arc<AtomicI64> {
        self.last.clone()
    }

    /// Writes rows at `rate` for `duration`, or until `stop`.
    pub async fn run(
        &mut self,
        rate: f64,
        duration: Duration,
        stop: &CancellationToken,
    ) -> anyhow::Result<Written> {
        let start = Instant::now();
        let end = start + duration;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let mut rows = 0;
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(end.into()) => break,
                _ = tick.tick() => {}
            }
            self.write().await?;
            rows += 1;
        }
        Ok(Written {
            last: self.last(),
            rows,
            elapsed: start.elapsed(),
        })
    }

    /// Writes one row.
    async fn write(&mut self) -> anyhow::Result<()> {
        let expected = self.last() + 1;
        let id = match &mut self.sink {
            Sink::Rowcast { db, table } => db.insert(table, now_us(), "row").await?,
            Sink::Nchan(publisher) => {
                let body = format!(
                    r#"{{"id":{expected},"sent_at_us":{},"body":"row"}}"#,
                    now_us()
                );
                let response = publisher
                    .post(PUBLISH_PATH, "application/json", body.as_bytes())
                    .await?;
                if !matches!(response.status, 201 | 202) {
                    bail!("nchan's publisher answered {}", response.status);
                }
                expected
            }
        };
        // Clients expect consecutive ids; a writer alone on the table gets them.
        if id != expected {
            bail!(
                "row {id} was written after {}: ids are not consecutive",
                expected - 1
            );
        }
        self.last.store(id, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `rows` rows in one INSERT (rowcast only): rows for the replay
    /// ring before clients come.
    pub async fn fill(&mut self, rows: usize) -> anyhow::Result<()> {
        let Sink::Rowcast {
            db: Db::Postgres(pool),
            table,
        } = &self.sink
        else {
            bail!("only rowcast's table can be filled");
        };
        let sql = format!(
            "INSERT INTO {table} (sent_at_us, body) SELECT $1, 'fill' FROM generate_series(1, $2)"
        );
        sqlx::query(&sql)
            .bind(now_us())
            .bind(i64::try_from(rows)?)
            .execute(pool)
            .await?;
        let last: i64 = sqlx::query_scalar(&format!("SELECT max(id) FROM {table}"))
            .fetch_one(pool)
            .await?;
        if last != self.last() + i64::try_from(rows)? {
            bail!("the filled rows do not have consecutive ids");
        }
        self.last.store(last, Ordering::Relaxed);
        Ok(())
    }
}
