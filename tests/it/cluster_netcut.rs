//! A leader whose network vanishes: the packets of its lock session are
//! dropped (`iptables`), so no FIN or reset reaches either side, as when a
//! host loses its link. The database notices by itself (TCP keep-alives and
//! `tcp_user_timeout` on Postgres, `wait_timeout` on MariaDB) and releases
//! the lock; another instance takes the feed over, and no client misses or
//! repeats a row.

use crate::cluster::{leader_of, Processes};
use crate::common::blackhole::Blackhole;
use crate::common::*;
use std::time::{Duration, Instant};

/// The client port of the session that holds the leader lock of feed
/// `messages` in the cluster of `prefix`.
async fn lock_session_port(db: &TestDb, prefix: &str) -> Option<u16> {
    let name = format!("{prefix}:messages");
    let port: Option<i64> = match db.kind {
        // An advisory lock on a 64-bit key shows as its two halves.
        Kind::Postgres => sqlx::query_scalar(
            "SELECT a.client_port::int8 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, \
             (SELECT hashtextextended($1 || ':' || current_database(), 0) AS k) AS h \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
             AND l.classid = ((h.k >> 32) & 4294967295)::oid AND l.objid = (h.k & 4294967295)::oid",
        )
        .bind(&name)
        .fetch_optional(&db.pool)
        .await
        .ok()??,
        _ => sqlx::query_scalar(
            "SELECT CAST(SUBSTRING_INDEX(host, ':', -1) AS SIGNED) FROM information_schema.PROCESSLIST \
             WHERE id = IS_USED_LOCK(LEFT(CONCAT(?, ':', COALESCE(DATABASE(), '')), 64))",
        )
        .bind(&name)
        .fetch_optional(&db.pool)
        .await
        .ok()??,
    };
    u16::try_from(port?).ok()
}

async fn a_leader_whose_network_vanishes_hands_over(kind: Kind) {
    let cluster = Processes::start(kind, Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (leader, port) = loop {
        let leader = cluster.leader().await;
        if let Some(port) = lock_session_port(&cluster.db, &cluster.prefix).await {
            break (leader, port);
        }
        assert!(Instant::now() < deadline, "no lock session within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let db_port = match kind {
        Kind::Postgres => 5432,
        _ => 3306,
    };
    let cut = Instant::now();
    let blackhole = Blackhole::cut(db_port, port);
    // Another session holds the lock: the database let the cut one go.
    let taken = loop {
        let holder = lock_session_port(&cluster.db, &cluster.prefix).await;
        if holder.is_some_and(|p| p != port)
            && leader_of(&cluster.instances, "messages", None)
                .await
                .is_some()
        {
            break cut.elapsed();
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "the database kept the cut session's lock for 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.finish().await;
    drop(blackhole);
    eprintln!("{kind:?}: leader {leader} cut off; the lock changed sessions after {taken:?}");
    assert!(taken < Duration::from_secs(4), "takeover took {taken:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_network_vanishes_hands_over_postgres() {
    a_leader_whose_network_vanishes_hands_over(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_network_vanishes_hands_over_mysql() {
    a_leader_whose_network_vanishes_hands_over(Kind::MySql).await;
}
