//! Gap-free delivery under concurrent writers that commit out of id order.
//!
//! The torture tests run 16 writer connections against a real database:
//! transactions that sleep between INSERT and COMMIT (some for seconds),
//! rollbacks, multi-row inserts, and per database the id allocators that
//! make polling feeds lose rows (Postgres: ids taken with `nextval` in an
//! earlier transaction; MariaDB: `INSERT IGNORE` duplicates that burn ids).
//! SSE clients follow the feed, one reconnecting over and over, across a
//! restart of rowcast; each must end with exactly the committed ids.

use crate::common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::AnyPool;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const WRITERS: usize = 16;

/// The torture table: `id` from the database's own allocator.
async fn table(db: &TestDb) -> String {
    let t = db.table("torture");
    db.exec(&match db.kind {
        Kind::Postgres => format!("CREATE TABLE {t} (id bigserial PRIMARY KEY, writer int NOT NULL, dedupe int UNIQUE, body text NOT NULL)"),
        _ => format!(
            "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, writer INT NOT NULL, dedupe INT UNIQUE, body TEXT NOT NULL)"
        ),
    })
    .await;
    // One row that INSERT IGNORE duplicates collide with.
    db.exec(&format!(
        "INSERT INTO {t} (writer, dedupe, body) VALUES (-1, 0, 'seed')"
    ))
    .await;
    t
}

/// One writer's loop until `end`. `slow` writers keep every transaction
/// open for a while, so that later ids surely commit first.
/// How a writer behaves.
#[derive(Clone, Copy)]
struct Mix {
    /// Keep every transaction open for a while.
    slow: bool,
    /// How long, in ms, ids taken with `nextval` wait before their INSERT.
    allocated_delay: (u64, u64),
}

async fn write(pool: AnyPool, kind: Kind, t: String, writer: i32, end: Instant, mix: Mix) {
    let mut rng = StdRng::seed_from_u64(writer as u64 ^ rand::random::<u64>());
    let p = |n: usize| {
        if kind == Kind::Postgres {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    };
    while Instant::now() < end {
        let roll = rng.gen_range(0..100);
        if kind == Kind::Postgres && writer % 4 == 0 && roll < 30 {
            // The id is taken in its own committed transaction and used a
            // little later: no lock shows this writer in advance.
            let id: i64 = sqlx::query_scalar(&format!(
                "SELECT nextval(pg_get_serial_sequence('{t}', 'id'))"
            ))
            .fetch_one(&pool)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(
                rng.gen_range(mix.allocated_delay.0..mix.allocated_delay.1),
            ))
            .await;
            sqlx::query(&format!(
                "INSERT INTO {t} (id, writer, body) VALUES ({}, {}, 'allocated')",
                p(1),
                p(2)
            ))
            .bind(id)
            .bind(writer)
            .execute(&pool)
            .await
            .unwrap();
        } else if kind == Kind::MySql && roll < 10 {
            // A duplicate: nothing is inserted, but an id is burnt.
            sqlx::query(&format!(
                "INSERT IGNORE INTO {t} (writer, dedupe, body) VALUES ({}, 0, 'dup')",
                p(1)
            ))
            .bind(writer)
            .execute(&pool)
            .await
            .unwrap();
        } else {
            let rows = if roll % 5 == 0 { 3 } else { 1 };
            let values = vec![format!("({writer}, 'row')"); rows].join(", ");
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&format!("INSERT INTO {t} (writer, body) VALUES {values}"))
                .execute(&mut *tx)
                .await
                .unwrap();
            let pause = if mix.slow || roll < 3 {
                rng.gen_range(500..2500)
            } else {
                rng.gen_range(0..15)
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if roll % 10 == 7 {
                tx.rollback().await.unwrap();
            } else {
                tx.commit().await.unwrap();
            }
        }
    }
}

/// What a client saw: event ids and row ids in order, and late rows apart.
#[derive(Default, Debug)]
struct Seen {
    events: Vec<i128>,
    ids: Vec<i64>,
    late: Vec<i64>,
    connections: usize,
}

/// When a client may stop: once it has seen as many rows as were committed,
/// or (with `max`, for the naive poller, which never sees them all) the
/// greatest id. Exact mode sends rows in commit order, so the greatest id
/// may come before others.
#[derive(Default)]
struct Target {
    rows: AtomicUsize,
    max: AtomicI64,
}

/// No greatest id: stop on the count alone.
const NO_MAX: i64 = i64::MIN;

impl Target {
    fn set(&self, committed: &[i64], stop_at_max: bool) {
        let max = if stop_at_max {
            *committed.iter().max().unwrap()
        } else {
            NO_MAX
        };
        self.max.store(max, Ordering::SeqCst);
        self.rows.store(committed.len(), Ordering::SeqCst);
    }

    fn reached(&self, seen: &Seen) -> bool {
        let rows = self.rows.load(Ordering::SeqCst);
        rows != 0 && (seen.ids.len() >= rows || seen.ids.contains(&self.max.load(Ordering::SeqCst)))
    }
}

/// Follows the feed at whatever server `url` names, reconnecting with its
/// last id whenever the stream ends (or, with `churn`, every so often),
/// until it reaches `target`.
async fn follow(url: watch::Receiver<String>, target: Arc<Target>, churn: bool) -> Seen {
    let mut seen = Seen::default();
    let mut last: Option<String> = None;
    let mut rng = StdRng::seed_from_u64(rand::random());
    loop {
        let base = url.borrow().clone();
        // The first connection replays from the start: this client cannot
        // read the id-only frame that tells a live client its position.
        let url = format!("{base}/events/feed?after=start");
        let Some(mut client) = Client::try_connect(&url, last.as_deref()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        seen.connections += 1;
        let until = Instant::now()
            + Duration::from_millis(if churn {
                rng.gen_range(200..1200)
            } else {
                600_000
            });
        while Instant::now() < until {
            let Some(event) = client.next(Duration::from_secs(2)).await else {
                break;
            };
            let row = event.json();
            let row_id = row["id"].as_i64().unwrap();
            // A late row carries no id: the client keeps its last one.
            if event.id.is_empty() || Some(&event.id) == last.as_ref() {
                seen.late.push(row_id);
                continue;
            }
            seen.events.push(event.id.parse().unwrap());
            if row["writer"].as_i64().unwrap() >= 0 {
                seen.ids.push(row_id);
            }
            last = Some(event.id);
        }
        if target.reached(&seen) {
            return seen;
        }
    }
}

/// The torture feed's settings. The default grace window: these writers
/// need it.
fn torture_feed(f: Feed) -> Feed {
    f.ring_size(200).set("gap_grace", "1s")
}

async fn committed(db: &TestDb, t: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT id FROM {t} WHERE writer >= 0 ORDER BY id"))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

fn spawn_writers(
    db: &TestDb,
    t: &str,
    run: Duration,
    slow: usize,
    allocated_delay: (u64, u64),
) -> Vec<tokio::task::JoinHandle<()>> {
    let end = Instant::now() + run;
    (0..WRITERS)
        .map(|w| {
            tokio::spawn(write(
                db.pool.clone(),
                db.kind,
                t.to_owned(),
                w as i32,
                end,
                Mix {
                    slow: w < slow,
                    allocated_delay,
                },
            ))
        })
        .collect()
}

/// Ids taken with `nextval` are used within this many ms: the default grace
/// window covers them.
const PROMPT_ALLOCATION: (u64, u64) = (20, 150);

/// How the torture feed reads its rows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    /// The table itself.
    Table,
    /// Exact mode (Postgres): the table, in transaction order.
    Exact,
    /// A `select` joining a second table: gaps are still judged on the
    /// base table's ids.
    Join,
}

/// A `select` of every torture row with its writer's name.
async fn joined_select(db: &TestDb, t: &str) -> String {
    let w = db.table("writers");
    db.exec(&format!(
        "CREATE TABLE {w} (id INT PRIMARY KEY, name TEXT NOT NULL)"
    ))
    .await;
    let names: Vec<String> = (-1..WRITERS as i32)
        .map(|i| format!("({i}, 'writer {i}')"))
        .collect();
    db.exec(&format!(
        "INSERT INTO {w} (id, name) VALUES {}",
        names.join(", ")
    ))
    .await;
    format!("SELECT t.*, w.name FROM {t} t LEFT JOIN {w} w ON w.id = t.writer")
}

async fn torture(kind: Kind, read: Read) {
    logs();
    let db = TestDb::with_connections(kind, WRITERS as u32 + 4).await;
    let t = table(&db).await;
    let exact = read == Read::Exact;
    // Exact mode reads in transaction order: ids may be used much later
    // than the grace window allows.
    let allocated_delay = if exact {
        for statement in rowcast::source::txid_sql(&t, None, "id").split(";\n") {
            let statement: String = statement.lines().filter(|l| !l.starts_with("--")).collect();
            if !statement.trim().is_empty() {
                db.exec(&statement).await;
            }
        }
        (500, 2500)
    } else {
        PROMPT_ALLOCATION
    };
    let select = match read {
        Read::Join => Some(joined_select(&db, &t).await),
        Read::Table | Read::Exact => None,
    };
    let rowcast = Rowcast::on(&db).feed("feed", &t, |f| match &select {
        Some(select) => torture_feed(f).select(select),
        None => torture_feed(f),
    });
    let server = rowcast.start().await;
    let (url_tx, url) = watch::channel(server.url.clone());
    let target = Arc::new(Target::default());
    let writers = spawn_writers(&db, &t, Duration::from_secs(8), 0, allocated_delay);
    let clients: Vec<_> = [false, true, true]
        .into_iter()
        .map(|churn| tokio::spawn(follow(url.clone(), target.clone(), churn)))
        .collect();

    // Restart rowcast in the middle of it all.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let late_before = server.feeds[0]
        .health
        .counters
        .late_rows
        .load(Ordering::SeqCst);
    let gaps_before = server.feeds[0]
        .health
        .counters
        .gaps_passed
        .load(Ordering::SeqCst);
    server.stop().await;
    let server = rowcast.start().await;
    url_tx.send(server.url.clone()).unwrap();

    for writer in writers {
        writer.await.unwrap();
    }
    let committed = committed(&db, &t).await;
    target.set(&committed, false);
    for client in clients {
        let seen = tokio::time::timeout(Duration::from_secs(60), client)
            .await
            .expect("client catches up")
            .unwrap();
        assert!(
            seen.events.windows(2).all(|w| w[0] < w[1]),
            "event ids strictly increase"
        );
        let mut ids = seen.ids.clone();
        if exact {
            // Transaction order, not id order: compare as sets.
            ids.sort();
        } else {
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "row ids strictly increase"
            );
        }
        if ids != committed {
            let got: std::collections::BTreeSet<_> = seen.ids.iter().collect();
            let missing: Vec<_> = committed.iter().filter(|id| !got.contains(id)).collect();
            panic!(
                "{} of {} committed ids missing (client connected {} times; late {:?}): {:?}",
                missing.len(),
                committed.len(),
                seen.connections,
                seen.late,
                &missing[..missing.len().min(20)]
            );
        }
        assert_eq!(
            seen.late,
            Vec::<i64>::new(),
            "the grace window covers these writers"
        );
        assert!(
            seen.connections >= 2,
            "every client resumed at least once (restart)"
        );
    }
    let served = &server.feeds[0];
    assert_eq!(
        late_before + served.health.counters.late_rows.load(Ordering::SeqCst),
        0
    );
    let gaps = gaps_before + served.health.counters.gaps_passed.load(Ordering::SeqCst);
    if exact {
        assert_eq!(
            served.feed.query.txid_column.as_deref(),
            Some("rowcast_txid")
        );
        assert_eq!(gaps, 0, "exact mode never passes over an id");
    } else {
        assert!(gaps > 0, "rollbacks and burnt ids left gaps to settle");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_torture_delivers_exactly_the_committed_rows() {
    torture(Kind::Postgres, Read::Table).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_torture_delivers_exactly_the_committed_rows() {
    torture(Kind::MySql, Read::Table).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_exact_mode_delivers_ids_used_long_after_they_were_taken() {
    torture(Kind::Postgres, Read::Exact).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_join_through_select_delivers_exactly_the_committed_rows() {
    torture(Kind::Postgres, Read::Join).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_join_through_select_delivers_exactly_the_committed_rows() {
    torture(Kind::MySql, Read::Join).await
}

/// The same writers against the naive `id > last` poller lose rows: the
/// torture test can fail.
async fn naive_poller_loses_rows(kind: Kind) {
    let db = TestDb::with_connections(kind, WRITERS as u32 + 4).await;
    let t = table(&db).await;
    let server = Rowcast::on(&db)
        .feed("feed", &t, |f| torture_feed(f).set("gaps", "ignore"))
        .start()
        .await;
    let (_url_tx, url) = watch::channel(server.url.clone());
    let target = Arc::new(Target::default());
    let writers = spawn_writers(&db, &t, Duration::from_secs(4), 4, PROMPT_ALLOCATION);
    let client = tokio::spawn(follow(url, target.clone(), false));
    for writer in writers {
        writer.await.unwrap();
    }
    let committed = committed(&db, &t).await;
    target.set(&committed, true);
    let seen = tokio::time::timeout(Duration::from_secs(30), client)
        .await
        .unwrap()
        .unwrap();
    let got: std::collections::BTreeSet<_> = seen.ids.iter().collect();
    let missing = committed.iter().filter(|id| !got.contains(id)).count();
    assert!(
        missing > 0,
        "the naive poller saw all {} rows",
        committed.len()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_naive_poller_loses_rows() {
    naive_poller_loses_rows(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_naive_poller_loses_rows() {
    naive_poller_loses_rows(Kind::MySql).await
}
