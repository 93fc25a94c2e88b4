//! The changes torture: 16 writers insert, update (in bursts on one row),
//! soft- and hard-delete for 20 s, half stamping with the database's clock
//! and half with an application's at whole seconds, some transactions held
//! open for seconds, some rolled back, and rowcast restarted midway.
//! Clients follow from the start (reconnecting with `Last-Event-ID`) or
//! from late with `?after=0`; each client's view, built by applying events
//! in arrival order, must equal the table at the end, and no client may see
//! a row's version go back. A naive `(updated_at, id) > cursor` poller
//! following the same writes ends with a view that is wrong.

use crate::common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sqlx::AnyPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

const WRITERS: usize = 16;
const RUN: Duration = Duration::from_secs(20);
/// Where a statement's stamp goes, filled in just before it runs.
const STAMP: &str = "{STAMP}";

/// Each live row's version.
pub type View = BTreeMap<i64, i64>;

pub async fn table(db: &TestDb) -> String {
    let t = db.table("torture");
    db.exec(&match db.kind {
        Kind::Postgres => format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, writer int NOT NULL, version bigint NOT NULL DEFAULT 1, \
             updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz); \
             CREATE INDEX ON {t} (updated_at, id)"
        ),
        _ => format!(
            "CREATE TABLE {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, writer INT NOT NULL, version BIGINT NOT NULL DEFAULT 1, \
             updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), deleted_at DATETIME(6) NULL, \
             KEY (updated_at, id))"
        ),
    })
    .await;
    t
}

/// The stamp a writer sets: the database's clock, or the application's at
/// whole seconds, read before its transaction starts.
fn stamp(kind: Kind, app_clock: bool) -> String {
    match (kind, app_clock) {
        (Kind::Postgres, false) => "now()".to_owned(),
        (_, false) => "CURRENT_TIMESTAMP(6)".to_owned(),
        (kind, true) => {
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            match kind {
                Kind::Postgres => format!("to_timestamp({secs})"),
                _ => format!("FROM_UNIXTIME({secs})"),
            }
        }
    }
}

pub async fn write(
    pool: AnyPool,
    kind: Kind,
    t: String,
    writer: usize,
    end: Instant,
    ids: Arc<Mutex<Vec<i64>>>,
) {
    let mut rng = StdRng::seed_from_u64(writer as u64 ^ rand::random::<u64>());
    let app_clock = writer % 2 == 1;
    while Instant::now() < end {
        let roll = rng.gen_range(0..100);
        let target = {
            let ids = ids.lock().unwrap();
            (!ids.is_empty()).then(|| ids[rng.gen_range(0..ids.len())])
        };
        let statements: Vec<String> = match (roll, target) {
            (0..30, _) | (_, None) => vec![format!(
                "INSERT INTO {t} (writer, updated_at) VALUES ({writer}, {STAMP})"
            )],
            (30..55, Some(id)) => {
                // A burst of updates of one row within a second.
                (0..rng.gen_range(3..6))
                    .map(|_| {
                        format!("UPDATE {t} SET version = version + 1, updated_at = {STAMP} WHERE id = {id}")
                    })
                    .collect()
            }
            (55..85, Some(id)) => vec![format!(
                "UPDATE {t} SET version = version + 1, updated_at = {STAMP} WHERE id = {id}"
            )],
            (85..93, Some(id)) => vec![format!(
                "UPDATE {t} SET version = version + 1, deleted_at = {STAMP}, updated_at = {STAMP} WHERE id = {id}"
            )],
            (_, Some(id)) => vec![format!("DELETE FROM {t} WHERE id = {id}")],
        };
        let burst = statements.len() > 1;
        for sql in statements {
            // Stamped as an application does: just before its transaction.
            let sql = sql.replace(STAMP, &stamp(kind, app_clock));
            let mut tx = pool.begin().await.unwrap();
            let inserted = match (sql.starts_with("INSERT"), kind) {
                (false, _) => {
                    sqlx::query(&sql).execute(&mut *tx).await.unwrap();
                    None
                }
                (true, Kind::Postgres) => Some(
                    sqlx::query_scalar::<_, i64>(&format!("{sql} RETURNING id"))
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap(),
                ),
                (true, _) => sqlx::query(&sql)
                    .execute(&mut *tx)
                    .await
                    .unwrap()
                    .last_insert_id(),
            };
            let hold = match rng.gen_range(0..100) {
                0..5 => rng.gen_range(500..3000),
                _ if burst => rng.gen_range(0..50),
                _ => rng.gen_range(0..15),
            };
            tokio::time::sleep(Duration::from_millis(hold)).await;
            if rng.gen_range(0..100) < 10 {
                tx.rollback().await.unwrap();
            } else {
                tx.commit().await.unwrap();
                if let Some(id) = inserted {
                    ids.lock().unwrap().push(id);
                }
            }
        }
    }
}

/// The live rows' versions, as the table holds them.
pub async fn table_view(db: &TestDb, t: &str) -> View {
    let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT id, version FROM {t} WHERE deleted_at IS NULL ORDER BY id"
    ))
    .fetch_all(&db.pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// What one client built from its events.
#[derive(Default, Debug)]
pub struct Follower {
    /// Every row's last version and whether it is live.
    rows: BTreeMap<i64, (i64, bool)>,
    /// Versions that went back, as `(id, had, got)`.
    pub backwards: Vec<(i64, i64, i64)>,
    pub connections: usize,
    pub events: usize,
}

impl Follower {
    pub fn apply(&mut self, event: &serde_json::Value) {
        let op = event["op"]
            .as_str()
            .unwrap_or_else(|| panic!("no op: {event}"));
        if op == "reset" {
            self.rows.clear();
            return;
        }
        let row = &event["row"];
        let id = row["id"].as_i64().unwrap();
        let version = row["version"].as_i64().unwrap_or(i64::MAX);
        if let Some((had, _)) = self.rows.get(&id) {
            if version < *had {
                self.backwards.push((id, *had, version));
            }
        }
        self.rows.insert(id, (version, op != "delete"));
    }

    /// Forgets every row, for a client that starts over from `?after=0`.
    pub fn forget(&mut self) {
        self.rows.clear();
    }

    pub fn view(&self) -> View {
        self.rows
            .iter()
            .filter(|(_, (_, live))| *live)
            .map(|(id, (v, _))| (*id, *v))
            .collect()
    }
}

/// Follows the feed wherever `url` points, reconnecting with its last id
/// every `churn` (or only when the stream ends), until `done`.
async fn follow(
    url: watch::Receiver<String>,
    first: &'static str,
    churn: Option<(u64, u64)>,
    state: Arc<Mutex<Follower>>,
    done: watch::Receiver<bool>,
) {
    let mut last: Option<String> = None;
    let mut rng = StdRng::seed_from_u64(rand::random());
    while !*done.borrow() {
        let base = url.borrow().clone();
        let Some(mut client) =
            Client::try_connect(&format!("{base}/events/feed{first}"), last.as_deref()).await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        state.lock().unwrap().connections += 1;
        let until = Instant::now()
            + churn.map_or(Duration::from_secs(600), |(a, b)| {
                Duration::from_millis(rng.gen_range(a..b))
            });
        apply_events(&mut client, until, &done, &mut last, &state).await;
    }
}

/// Applies `client`'s events to `state` until `until`, `done` or a quiet
/// half second, keeping the last id it got in `last`.
pub async fn apply_events(
    client: &mut Client,
    until: Instant,
    done: &watch::Receiver<bool>,
    last: &mut Option<String>,
    state: &Mutex<Follower>,
) {
    while Instant::now() < until && !*done.borrow() {
        let Some(event) = client.next(Duration::from_millis(500)).await else {
            break;
        };
        if !event.id.is_empty() {
            *last = Some(event.id.clone());
        }
        if event.data.is_empty() {
            continue;
        }
        let mut state = state.lock().unwrap();
        state.events += 1;
        state.apply(&event.json());
    }
}

/// Waits until every follower's view is the table's (which must hold more
/// than 50 live rows); panics after 30 s, showing how each differs. Returns
/// the table's view.
pub async fn views_become_the_table(
    db: &TestDb,
    t: &str,
    followers: &[Arc<Mutex<Follower>>],
) -> View {
    let expected = table_view(db, t).await;
    assert!(
        expected.len() > 50,
        "the writers left rows: {}",
        expected.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<View> = followers.iter().map(|f| f.lock().unwrap().view()).collect();
        if views.iter().all(|v| *v == expected) {
            return expected;
        }
        if Instant::now() > deadline {
            for (i, view) in views.iter().enumerate() {
                let wrong: Vec<_> = expected
                    .iter()
                    .filter(|(id, v)| view.get(id) != Some(v))
                    .map(|(id, v)| (id, v, view.get(id)))
                    .take(10)
                    .collect();
                let extra: Vec<_> = view
                    .keys()
                    .filter(|id| !expected.contains_key(id))
                    .take(10)
                    .collect();
                eprintln!(
                    "follower {i}: {} rows, expected {}; wrong {wrong:?}; extra {extra:?}",
                    view.len(),
                    expected.len()
                );
            }
            panic!("followers' views differ from the table");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The naive poller: `(updated_at, id) > cursor`, applied in order.
async fn naive(
    pool: AnyPool,
    kind: Kind,
    t: String,
    state: Arc<Mutex<Follower>>,
    done: watch::Receiver<bool>,
) {
    let (stamp, bound) = match kind {
        Kind::Postgres => ("updated_at::text", "$1::timestamptz"),
        _ => ("CAST(updated_at AS CHAR)", "CAST(? AS DATETIME(6))"),
    };
    let id_bound = if kind == Kind::Postgres { "$3" } else { "?" };
    let bound2 = bound.replace("$1", "$2");
    let sql = format!(
        "SELECT id, version, CASE WHEN deleted_at IS NULL THEN 1 ELSE 0 END AS live, {stamp} AS stamp FROM {t} \
         WHERE updated_at > {bound} OR (updated_at = {bound2} AND id > {id_bound}) ORDER BY updated_at, id LIMIT 500"
    );
    let mut cursor = ("1970-01-01 00:00:00".to_owned(), 0i64);
    while !*done.borrow() {
        let rows: Vec<(i64, i64, i32, String)> = sqlx::query_as(&sql)
            .bind(&cursor.0)
            .bind(&cursor.0)
            .bind(cursor.1)
            .fetch_all(&pool)
            .await
            .unwrap();
        {
            let mut state = state.lock().unwrap();
            for (id, version, live, stamp) in rows {
                let op = if live == 1 { "update" } else { "delete" };
                state.apply(&serde_json::json!({"op": op, "row": {"id": id, "version": version}}));
                cursor = (stamp, id);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the feed finds changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// By `updated_at`.
    Column,
    /// Postgres xmin mode.
    Xmin,
}

async fn torture(kind: Kind, stamp: Stamp) {
    logs();
    let db = TestDb::with_connections(kind, WRITERS as u32 + 8).await;
    let t = table(&db).await;
    crate::changes::install_deletes(&db, &t).await;
    let rowcast = Rowcast::on(&db).feed("feed", &t, |f| {
        let f = f.set("mode", "changes").ring_size(300);
        match stamp {
            Stamp::Column => f,
            Stamp::Xmin => f.set("updated_column", "xmin"),
        }
    });
    let server = rowcast.start().await;
    let address = server.address;
    let (url_tx, url) = watch::channel(server.url.clone());
    let (done_tx, done) = watch::channel(false);
    let ids = Arc::new(Mutex::new(Vec::new()));
    let end = Instant::now() + RUN;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(db.pool.clone(), kind, t.clone(), w, end, ids.clone())))
        .collect();
    let followers: Vec<Arc<Mutex<Follower>>> = (0..4).map(|_| Arc::default()).collect();
    let mut tasks = vec![
        tokio::spawn(follow(
            url.clone(),
            "",
            Some((2000, 4000)),
            followers[0].clone(),
            done.clone(),
        )),
        tokio::spawn(follow(
            url.clone(),
            "",
            None,
            followers[1].clone(),
            done.clone(),
        )),
    ];
    let naive_state: Arc<Mutex<Follower>> = Arc::default();
    let naive_task = {
        let (t, state, done) = (t.clone(), naive_state.clone(), done.clone());
        tokio::spawn(naive(db.pool.clone(), kind, t, state, done))
    };

    // A restart in the middle, and clients that come late with ?after=0.
    tokio::time::sleep(RUN / 2).await;
    server.stop().await;
    let server = rowcast.start_at(address).await;
    url_tx.send(server.url.clone()).unwrap();
    for (i, churn) in [(2, Some((1500, 3000))), (3, None)] {
        tasks.push(tokio::spawn(follow(
            url.clone(),
            "?after=0",
            churn,
            followers[i].clone(),
            done.clone(),
        )));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    // Every follower's view becomes the table's and stays so.
    let expected = views_become_the_table(&db, &t, &followers).await;
    done_tx.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    naive_task.await.unwrap();
    // Followers 0 and 1 were there at the restart, 2 reconnects every few
    // seconds; 3 came late and stayed.
    for (i, follower) in followers.iter().enumerate() {
        let f = follower.lock().unwrap();
        assert_eq!(f.backwards, [], "follower {i} saw versions go back");
        let least = if i == 3 { 1 } else { 2 };
        assert!(
            f.connections >= least,
            "follower {i} connected {} times",
            f.connections
        );
    }
    let naive = naive_state.lock().unwrap().view();
    let lost = expected
        .iter()
        .filter(|(id, v)| naive.get(id) != Some(v))
        .count();
    assert!(
        lost > 0,
        "the naive poller ended right: the workload is too gentle to show anything"
    );
    eprintln!(
        "changes torture ({kind:?}): {} live rows; the naive poller is wrong about {lost} of them",
        expected.len()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_changes_torture_ends_with_every_clients_view_equal_to_the_table() {
    torture(Kind::Postgres, Stamp::Column).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_xmin_changes_torture_ends_with_every_clients_view_equal_to_the_table() {
    torture(Kind::Postgres, Stamp::Xmin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql_changes_torture_ends_with_every_clients_view_equal_to_the_table() {
    torture(Kind::MySql, Stamp::Column).await;
}
