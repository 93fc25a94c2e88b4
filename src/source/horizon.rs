//! The writer horizon of a changes feed: the earliest time a transaction
//! open now could have stamped a row with, by the database's clock, in
//! milliseconds since 1970 (DESIGN.md, *Changes mode*, items 1 and 3).
//!
//! Every open transaction counts, not only those that have written the
//! table yet: a read-modify-write took its `now()` or its application
//! stamp long before it locks a row. Transactions older than `max_txn_age`
//! are left out, so that a session idle in a transaction cannot widen the
//! window forever; they are counted for the operator. What each database
//! can show:
//! - Postgres: `min(xact_start)` in `pg_stat_activity`, when rowcast may
//!   see other roles' sessions (`pg_read_all_stats`); else each
//!   transaction's `virtualxid` lock in `pg_locks`, dated by the sample
//!   that first listed it.
//! - MySQL/MariaDB: `min(trx_started)` in `INNODB_TRX` (needs `PROCESS`),
//!   trusted only from a listing that shows rowcast's own canary
//!   transaction, since the server refills that table only when nobody
//!   has read it for 100 ms.
//! - SQLite: one writer at a time; the horizon is now.

use super::{Error, Source};
use sqlx::Connection;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

/// How often `INNODB_TRX` may be read: the server refills it only after
/// 100 ms without a reader.
const MYSQL_MIN_INTERVAL: Duration = Duration::from_millis(150);

/// One look at the open transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The earliest stamp an open transaction may have taken (xmin mode:
    /// the oldest transaction id still open).
    pub horizon_ms: i64,
    /// The database's clock when it was sampled.
    pub now_ms: i64,
    /// Transactions left out because they are older than `max_txn_age`.
    pub too_old: u64,
}

/// How a feed samples its database's horizon, and what it remembers
/// between samples.
pub enum Horizon {
    /// Postgres, seeing every session's `xact_start`.
    PgActivity,
    /// Postgres without `pg_read_all_stats`: open transactions by their
    /// `virtualxid` lock, each dated by the first sample that listed it.
    PgLocks {
        first_seen: HashMap<String, i64>,
        last_now: Option<i64>,
    },
    /// MySQL/MariaDB with `PROCESS`.
    MySql(Box<Canary>),
    /// MySQL/MariaDB without `PROCESS`: now − `max_txn_age`.
    MySqlBlind,
    /// SQLite.
    Sqlite,
    /// Postgres xmin mode: the oldest transaction id still open
    /// (`pg_snapshot_xmin`), not a time.
    PgXmin,
}

/// rowcast's own open transaction, whose presence in `INNODB_TRX` dates
/// a listing, and the last horizon a dated listing gave.
pub struct Canary {
    options: sqlx::mysql::MySqlConnectOptions,
    open: Option<(sqlx::MySqlConnection, u64)>,
    last_read: Option<Instant>,
    last: Option<Sample>,
    last_dated: Option<(Instant, i64)>,
}

/// What choosing a horizon method says for the start-up log.
pub struct Method {
    pub horizon: Horizon,
    /// What weakens the guarantee.
    pub warning: Option<String>,
}

impl Horizon {
    /// The best method `source` allows.
    pub async fn choose(source: &Source, feed: &str) -> Result<Method, Error> {
        Ok(match source {
            Source::Postgres(pool) => {
                let sees_all: bool = sqlx::query_scalar(
                    "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') \
                     OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
                )
                .fetch_one(pool)
                .await?;
                if sees_all {
                    Method {
                        horizon: Horizon::PgActivity,
                        warning: None,
                    }
                } else {
                    Method {
                        horizon: Horizon::PgLocks {
                            first_seen: HashMap::new(),
                            last_now: None,
                        },
                        warning: Some(format!("feed `{feed}`: the role cannot see other sessions' transaction start times (grant pg_read_all_stats); transactions are dated from pg_locks samples instead, which widens the window of re-read rows")),
                    }
                }
            }
            Source::MySql(pool) => match super::mysql::writers(pool).await? {
                Some(_) => Method {
                    horizon: Horizon::MySql(Box::new(Canary {
                        options: (*pool.connect_options()).clone(),
                        open: None,
                        last_read: None,
                        last: None,
                        last_dated: None,
                    })),
                    warning: None,
                },
                None => Method {
                    horizon: Horizon::MySqlBlind,
                    warning: Some(format!("feed `{feed}`: without the PROCESS privilege rowcast cannot see open transactions (INNODB_TRX); every poll re-reads rows stamped within max_txn_age, and a change whose transaction stays open longer may be missed (GRANT PROCESS ON *.* TO …)")),
                },
            },
            Source::Sqlite(_) => Method {
                horizon: Horizon::Sqlite,
                warning: None,
            },
        })
    }

    /// Samples the horizon now.
    pub async fn sample(
        &mut self,
        source: &Source,
        max_txn_age: Duration,
    ) -> Result<Sample, Error> {
        let age_ms = i64::try_from(max_txn_age.as_millis()).unwrap_or(i64::MAX);
        match (self, source) {
            (Horizon::PgActivity, Source::Postgres(pool)) => {
                let (now_ms, oldest, too_old): (i64, Option<i64>, i64) = sqlx::query_as(
                    "SELECT (extract(epoch FROM now()) * 1000)::int8, \
                     floor(extract(epoch FROM min(xact_start) FILTER (WHERE xact_start >= now() - $1::float8 * interval '1 millisecond')) * 1000)::int8, \
                     count(*) FILTER (WHERE xact_start < now() - $1::float8 * interval '1 millisecond') \
                     FROM pg_stat_activity WHERE datname = current_database() \
                     AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                )
                .bind(age_ms as f64)
                .fetch_one(pool)
                .await?;
                Ok(Sample {
                    horizon_ms: oldest.map_or(now_ms, |o| o.min(now_ms)),
                    now_ms,
                    too_old: too_old as u64,
                })
            }
            (
                Horizon::PgLocks {
                    first_seen,
                    last_now,
                },
                Source::Postgres(pool),
            ) => {
                let rows: Vec<(i64, Option<String>)> = sqlx::query_as(
                    "SELECT (extract(epoch FROM now()) * 1000)::int8, l.virtualtransaction \
                     FROM (SELECT 1) AS one LEFT JOIN (pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid) \
                     ON l.locktype = 'virtualxid' AND a.datname = current_database() AND l.pid <> pg_backend_pid()",
                )
                .fetch_all(pool)
                .await?;
                let now_ms = rows.first().map_or(0, |r| r.0);
                // A transaction not listed before started after the last
                // sample was taken; at the first sample, its start is
                // unknown and taken as old as may count.
                let new_since = last_now.unwrap_or(now_ms - age_ms);
                let mut seen = HashMap::with_capacity(rows.len());
                for (_, vxid) in rows {
                    if let Some(vxid) = vxid {
                        let since = first_seen.get(&vxid).copied().unwrap_or(new_since);
                        seen.insert(vxid, since);
                    }
                }
                *first_seen = seen;
                *last_now = Some(now_ms);
                let oldest = now_ms - age_ms;
                let too_old = first_seen.values().filter(|s| **s < oldest).count() as u64;
                let horizon_ms = first_seen
                    .values()
                    .copied()
                    .filter(|s| *s >= oldest)
                    .min()
                    .unwrap_or(now_ms)
                    .min(now_ms);
                Ok(Sample {
                    horizon_ms,
                    now_ms,
                    too_old,
                })
            }
            (Horizon::PgXmin, Source::Postgres(pool)) => {
                let xmin: i64 = sqlx::query_scalar(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8",
                )
                .fetch_one(pool)
                .await?;
                Ok(Sample {
                    horizon_ms: xmin,
                    now_ms: xmin,
                    too_old: 0,
                })
            }
            (Horizon::MySql(canary), Source::MySql(_)) => canary.sample(age_ms).await,
            (Horizon::MySqlBlind, Source::MySql(pool)) => {
                let now_ms = mysql_now(pool).await?;
                Ok(Sample {
                    horizon_ms: now_ms - age_ms,
                    now_ms,
                    too_old: 0,
                })
            }
            (_, _) => {
                let now_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                Ok(Sample {
                    horizon_ms: now_ms,
                    now_ms,
                    too_old: 0,
                })
            }
        }
    }
}

/// The database's clock now, in µs since 1970: what orders one instance's
/// reads against another's.
pub async fn clock_us(source: &Source) -> Result<i64, Error> {
    Ok(match source {
        Source::Postgres(pool) => {
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8")
                .fetch_one(pool)
                .await?
        }
        Source::MySql(pool) => {
            sqlx::query_scalar("SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(6)) * 1000000) AS SIGNED)")
                .fetch_one(pool)
                .await?
        }
        Source::Sqlite(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64),
    })
}

async fn mysql_now(pool: &sqlx::MySqlPool) -> Result<i64, Error> {
    Ok(
        sqlx::query_scalar("SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED)")
            .fetch_one(pool)
            .await?,
    )
}

/// `INNODB_TRX` as one query lists it: the server's clock, then each
/// transaction's thread and start (none: one row of NULLs).
type Listing = Vec<(i64, Option<u64>, Option<i64>)>;

impl Canary {
    async fn sample(&mut self, age_ms: i64) -> Result<Sample, Error> {
        if let (Some(last), Some(read)) = (self.last, self.last_read) {
            if read.elapsed() < MYSQL_MIN_INTERVAL {
                return Ok(last);
            }
        }
        if self.open.is_none() {
            // Each canary on a new connection, so that its thread id names it.
            let mut conn = sqlx::MySqlConnection::connect_with(&self.options).await?;
            sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .execute(&mut conn)
                .await?;
            let thread: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                .fetch_one(&mut conn)
                .await?;
            self.open = Some((conn, thread));
        }
        let Some((conn, thread)) = &mut self.open else {
            unreachable!("opened above")
        };
        let thread = *thread;
        let rows: Result<Listing, sqlx::Error> = sqlx::query_as(
            "SELECT CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED), t.trx_mysql_thread_id, \
             CAST(UNIX_TIMESTAMP(t.trx_started) * 1000 AS SIGNED) \
             FROM (SELECT 1) AS one LEFT JOIN information_schema.INNODB_TRX AS t ON 1 = 1",
        )
        .fetch_all(&mut *conn)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(err) => {
                // A broken connection is not reused: the next sample opens
                // a new canary.
                self.open = None;
                return Err(err.into());
            }
        };
        self.last_read = Some(Instant::now());
        let now_ms = rows.first().map_or(0, |r| r.0);
        let dated = rows.iter().any(|r| r.1 == Some(thread));
        let sample = if dated {
            let oldest = now_ms - age_ms;
            let started = rows.iter().filter_map(|r| r.2);
            let too_old = started.clone().filter(|s| *s < oldest).count() as u64;
            let horizon_ms = started
                .filter(|s| *s >= oldest)
                .min()
                .unwrap_or(now_ms)
                .min(now_ms);
            self.last_dated = Some((Instant::now(), horizon_ms));
            // The next listing is dated by a canary opened after this one.
            if let Some((conn, _)) = self.open.take() {
                conn.close().await.ok();
            }
            Sample {
                horizon_ms,
                now_ms,
                too_old,
            }
        } else {
            let horizon_ms = match self.last_dated {
                Some((at, horizon)) if at.elapsed().as_millis() < age_ms as u128 => horizon,
                _ => now_ms - age_ms,
            };
            Sample {
                horizon_ms: horizon_ms.min(now_ms),
                now_ms,
                too_old: 0,
            }
        };
        self.last = Some(sample);
        Ok(sample)
    }
}
