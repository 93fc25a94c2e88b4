//! Leadership of a feed among instances: a database lock taken on a
//! session of its own, so that the database itself releases it when the
//! leader dies, its connection breaks or its session is killed. Postgres
//! uses an advisory lock, MySQL/MariaDB a named `GET_LOCK`; SQLite has no
//! sessions to hold one (a SQLite feed is not clustered).

use super::{Error, Source};
use sqlx::{Connection, MySqlConnection, PgConnection};
use std::time::Duration;

/// How long a leader's check of its session may take before it counts as
/// lost: a leader that cannot tell it still leads stops polling.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A session that holds, or tries to take, one feed's lock.
pub struct LeaderLock {
    source: Source,
    /// The lock's name: the cluster prefix and the feed.
    name: String,
    /// Who holds it, for `pg_stat_activity` and operators.
    application: String,
    session: Option<Session>,
}

enum Session {
    Postgres(PgConnection),
    MySql(MySqlConnection),
}

impl LeaderLock {
    /// The lock of `feed` in the cluster of `prefix`; `None` on SQLite.
    pub fn new(source: &Source, prefix: &str, feed: &str) -> Option<LeaderLock> {
        if matches!(source, Source::Sqlite(_)) {
            return None;
        }
        let application: String = format!("rowcast leader {feed}").chars().take(63).collect();
        Some(LeaderLock {
            source: source.clone(),
            name: format!("{prefix}:{feed}"),
            application,
            session: None,
        })
    }

    /// A session of its own, that the server drops soon after this process
    /// vanishes without closing it (a cut network): keep-alives on
    /// Postgres, a short `wait_timeout` on MySQL (the leader checks it
    /// every half second).
    async fn open(&self) -> Result<Session, sqlx::Error> {
        match &self.source {
            Source::Postgres(pool) => {
                let options = (*pool.connect_options())
                    .clone()
                    .application_name(&self.application)
                    .options([
                        ("tcp_keepalives_idle", "1"),
                        ("tcp_keepalives_interval", "1"),
                        ("tcp_keepalives_count", "1"),
                        // Once a probe is out, 1.5 s without an answer ends
                        // the session: a vanished leader's lock is free
                        // about 2 s after its last word.
                        ("tcp_user_timeout", "1500"),
                    ]);
                Ok(Session::Postgres(
                    PgConnection::connect_with(&options).await?,
                ))
            }
            Source::MySql(pool) => {
                let mut session = MySqlConnection::connect_with(&pool.connect_options()).await?;
                set_wait_timeout(&mut session).await?;
                Ok(Session::MySql(session))
            }
            Source::Sqlite(_) => unreachable!("a SQLite feed has no lock"),
        }
    }

    /// Takes the lock if nobody holds it; `true` while this session holds
    /// it.
    pub async fn try_acquire(&mut self) -> Result<bool, Error> {
        let mut session = match self.session.take() {
            Some(session) => session,
            None => self.open().await.map_err(Error::Query)?,
        };
        let taken = match &mut session {
            Session::Postgres(session) => pg_try_lock(session, &self.name).await,
            Session::MySql(session) => mysql_try_lock(session, &self.name).await,
        };
        match taken {
            Ok(taken) => {
                self.session = Some(session);
                Ok(taken)
            }
            // The session is dropped: the next try opens another.
            Err(err) => Err(Error::Query(err)),
        }
    }

    /// Whether this session still holds the lock: it answers, within a
    /// bound. A session that does not is dropped (releasing the lock if the
    /// server still had it).
    pub async fn holds(&mut self) -> bool {
        let Some(session) = &mut self.session else {
            return false;
        };
        let alive = match session {
            Session::Postgres(session) => tokio::time::timeout(CHECK_TIMEOUT, session.ping()).await,
            Session::MySql(session) => tokio::time::timeout(CHECK_TIMEOUT, session.ping()).await,
        };
        if matches!(alive, Ok(Ok(()))) {
            return true;
        }
        self.session = None;
        false
    }

    /// Gives the lock up: closes the session.
    pub fn release(&mut self) {
        self.session = None;
    }
}

async fn pg_try_lock(session: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    // Advisory locks are the server's, not one database's.
    sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended($1 || ':' || current_database(), 0))",
    )
    .bind(name)
    .fetch_one(session)
    .await
}

async fn mysql_try_lock(session: &mut MySqlConnection, name: &str) -> Result<bool, sqlx::Error> {
    // Named locks are the server's, not one database's.
    let taken: Option<i64> = sqlx::query_scalar(
        "SELECT GET_LOCK(LEFT(CONCAT(?, ':', COALESCE(DATABASE(), '')), 64), 0)",
    )
    .bind(name)
    .fetch_one(session)
    .await?;
    Ok(taken == Some(1))
}

async fn set_wait_timeout(session: &mut MySqlConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET SESSION wait_timeout = 2")
        .execute(session)
        .await
        .map(drop)
}
