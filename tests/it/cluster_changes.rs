//! A changes feed on three instances: one polls it (its leader), the
//! others apply the bus. Sixteen writers insert, update (in bursts), soft-
//! and hard-delete; clients move from instance to instance with their
//! `Last-Event-ID` (one after pauses that leave it behind the rings, so
//! that the bus catches it up; one starting over from `?after=0` each
//! time, which reads the table), and midway the leader goes away (stopped,
//! or killed with `kill -9` and restarted). Every client's view, built by applying
//! its events in arrival order, ends equal to the table, and no client
//! sees a row's version go back.

use crate::changes_torture::{self as torture, Follower};
use crate::cluster::{
    drop_stream, free_listen, leader_of, prefix, served, Instance, PrivateBus, NATS_URL, REDIS_URL,
};
use crate::common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long the writers write.
const RUN: Duration = Duration::from_secs(10);

/// The torture's writers.
const WRITERS: usize = 16;

/// How a roaming client comes back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// At once, from the last id it got.
    Now,
    /// After a pause that leaves it behind the rings, from the last id it
    /// got: the bus has the events it missed.
    Late,
    /// After such a pause, from every row's current state (`?after=0`),
    /// which the database has.
    Over,
}

/// Follows the feed from every row's current state, each connection on the
/// next instance of `bases`, coming back as `resume` says, until `done`.
async fn roam(
    bases: Arc<Vec<String>>,
    first: usize,
    resume: Resume,
    state: Arc<Mutex<Follower>>,
    done: watch::Receiver<bool>,
) {
    let mut last: Option<String> = None;
    let mut rng = StdRng::seed_from_u64(rand::random());
    let mut next = first;
    while !*done.borrow() {
        let base = &bases[next % bases.len()];
        next += 1;
        if last.is_some() && resume != Resume::Now {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        if resume == Resume::Over {
            last = None;
            state.lock().unwrap().forget();
        }
        let url = match last {
            Some(_) => format!("{base}/events/feed"),
            None => format!("{base}/events/feed?after=0"),
        };
        let Some(mut client) = Client::try_connect(&url, last.as_deref()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        state.lock().unwrap().connections += 1;
        let until = Instant::now() + Duration::from_millis(rng.gen_range(1000..2500));
        torture::apply_events(&mut client, until, &done, &mut last, &state).await;
    }
}

/// Starts `count` roaming clients, each on its own first instance; the
/// last two pause between connections long enough to fall behind the
/// rings, one resuming from its last id, the other from `?after=0`.
fn spawn_clients(
    bases: &Arc<Vec<String>>,
    count: usize,
    done: &watch::Receiver<bool>,
) -> (Vec<Arc<Mutex<Follower>>>, Vec<tokio::task::JoinHandle<()>>) {
    let followers: Vec<Arc<Mutex<Follower>>> = (0..count).map(|_| Arc::default()).collect();
    let tasks = (followers.iter().enumerate())
        .map(|(i, f)| {
            let resume = match count - i {
                1 => Resume::Over,
                2 => Resume::Late,
                _ => Resume::Now,
            };
            tokio::spawn(roam(bases.clone(), i, resume, f.clone(), done.clone()))
        })
        .collect();
    (followers, tasks)
}

/// Waits until every client's view is the table's, then stops them and
/// checks that none saw a version go back.
async fn assert_views_end_as_the_table(
    db: &TestDb,
    t: &str,
    followers: &[Arc<Mutex<Follower>>],
    done: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) {
    torture::views_become_the_table(db, t, followers).await;
    done.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    for (i, follower) in followers.iter().enumerate() {
        let f = follower.lock().unwrap();
        assert_eq!(f.backwards, [], "client {i} saw versions go back");
        assert!(
            f.connections >= 3,
            "client {i} connected {} times",
            f.connections
        );
    }
}

/// Starts [`WRITERS`] of the torture's writers on `t` until `end`.
fn spawn_writers(db: &TestDb, t: &str, end: Instant) -> Vec<tokio::task::JoinHandle<()>> {
    let ids = Arc::new(Mutex::new(Vec::new()));
    (0..WRITERS)
        .map(|w| {
            let (pool, t) = (db.pool.clone(), t.to_owned());
            tokio::spawn(torture::write(pool, db.kind, t, w, end, ids.clone()))
        })
        .collect()
}

async fn changes_table(kind: Kind) -> (TestDb, String) {
    let db = TestDb::with_connections(kind, WRITERS as u32 + 8).await;
    let t = torture::table(&db).await;
    crate::changes::install_deletes(&db, &t).await;
    (db, t)
}

fn config(db: &TestDb, t: &str, prefix: &str) -> Rowcast {
    Rowcast::on(db)
        .feed("feed", t, |f| f.set("mode", "changes").ring_size(300))
        .cluster(REDIS_URL, prefix)
}

fn leads(server: &Server) -> bool {
    served(server).membership.role() == rowcast::cluster::Role::Leader
}

/// Three in-process instances; midway the leader stops and comes back.
/// Instances that never led never poll.
async fn three_instances_follow_one_changes_poller(kind: Kind) {
    logs();
    let (db, t) = changes_table(kind).await;
    let prefix = prefix();
    let rowcast = config(&db, &t, &prefix);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(rowcast.start().await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers.iter().any(leads) {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bases = Arc::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
    let (done, until_done) = watch::channel(false);
    let (followers, tasks) = spawn_clients(&bases, 6, &until_done);
    let writers = spawn_writers(&db, &t, Instant::now() + RUN);

    tokio::time::sleep(RUN / 2).await;
    let leader = servers.iter().position(leads).expect("a leader");
    let stopped = servers.remove(leader);
    let address = stopped.address;
    stopped.stop().await;
    let stopped_at = Instant::now();
    while !servers.iter().any(leads) {
        assert!(
            stopped_at.elapsed() < Duration::from_secs(4),
            "no instance took over within 4 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("takeover after a stop: {:?}", stopped_at.elapsed());
    servers.insert(leader, rowcast.start_at(address).await);
    for writer in writers {
        writer.await.unwrap();
    }
    assert_views_end_as_the_table(&db, &t, &followers, done, tasks).await;

    // The restarted instance and whoever took over polled; the third only
    // applied the bus.
    let never_led: Vec<&Server> = (servers.iter())
        .filter(|s| served(s).membership.leader_changes.load(Ordering::SeqCst) == 0)
        .collect();
    assert!(!never_led.is_empty(), "every instance led at some point");
    for server in never_led {
        let s = served(server);
        assert_eq!(s.health.counters.polls.load(Ordering::SeqCst), 0);
        assert!(s.membership.applied.load(Ordering::SeqCst) > 0);
    }
    // The client that starts over read the table.
    let catch_ups: u64 = (servers.iter())
        .map(|s| {
            served(s)
                .health
                .counters
                .catch_up_queries
                .load(Ordering::SeqCst)
        })
        .sum();
    assert!(catch_ups > 0, "no client resumed from the table");
    for server in servers {
        server.stop().await;
    }
    drop_stream(REDIS_URL, &prefix, "feed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_follow_one_changes_poller_postgres() {
    three_instances_follow_one_changes_poller(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_follow_one_changes_poller_mysql() {
    three_instances_follow_one_changes_poller(Kind::MySql).await;
}

/// Three rowcast processes; twice the leader is killed with `kill -9` and
/// restarted on its address.
async fn a_killed_changes_leader_hands_over(kind: Kind) {
    let (db, t) = changes_table(kind).await;
    let prefix = prefix();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rowcast.toml");
    std::fs::write(&path, config(&db, &t, &prefix).toml()).unwrap();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(Instance::start(&path, &free_listen()).await);
    }
    let bases = Arc::new(instances.iter().map(|i| i.base.clone()).collect::<Vec<_>>());
    let (done, until_done) = watch::channel(false);
    let (followers, tasks) = spawn_clients(&bases, 6, &until_done);
    let writers = spawn_writers(&db, &t, Instant::now() + RUN);
    let mut takeovers = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(RUN / 3).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(leader) = leader_of(&instances, "feed", None).await {
                break leader;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
        };
        let killed = Instant::now();
        instances[leader].kill();
        while leader_of(&instances, "feed", Some(leader)).await.is_none() {
            assert!(
                killed.elapsed() < Duration::from_secs(10),
                "no instance took over within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        takeovers.push(killed.elapsed());
        let listen = instances[leader].listen.clone();
        instances[leader] = Instance::start(&path, &listen).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_views_end_as_the_table(&db, &t, &followers, done, tasks).await;
    eprintln!("changes takeovers: {takeovers:?}");
    assert!(
        takeovers.iter().all(|t| *t < Duration::from_secs(4)),
        "takeovers {takeovers:?}"
    );
    drop(instances);
    drop_stream(REDIS_URL, &prefix, "feed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_changes_leader_hands_over_and_every_view_ends_right_postgres() {
    a_killed_changes_leader_hands_over(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_changes_leader_hands_over_and_every_view_ends_right_mysql() {
    a_killed_changes_leader_hands_over(Kind::MySql).await;
}

/// The bus goes away mid-run and comes back empty: followers start over
/// from the database, and every client's view still ends right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_under_a_changes_feed_leaves_every_view_right() {
    let (db, t) = changes_table(Kind::Postgres).await;
    let mut bus = PrivateBus::start(false).await;
    let rowcast = Rowcast::on(&db)
        .feed("feed", &t, |f| f.set("mode", "changes").ring_size(300))
        .cluster(&bus.url(), &prefix());
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(rowcast.start().await);
    }
    let bases = Arc::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
    let (done, until_done) = watch::channel(false);
    let (followers, tasks) = spawn_clients(&bases, 6, &until_done);
    let writers = spawn_writers(&db, &t, Instant::now() + RUN);
    tokio::time::sleep(RUN / 3).await;
    bus.kill().await;
    let health = wait_health(&bases[0], 503).await;
    assert_eq!(health["status"], "degraded", "{health}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bus.restart().await;
    for writer in writers {
        writer.await.unwrap();
    }
    assert_views_end_as_the_table(&db, &t, &followers, done, tasks).await;
    let filled: u64 = (servers.iter())
        .map(|s| served(s).membership.filled.load(Ordering::SeqCst))
        .sum();
    assert!(filled > 0, "no follower started over from the database");
    for server in servers {
        server.stop().await;
    }
}

/// A client behind a follower's ring of five resumes from its last id: the
/// bus's entries give it the very events it missed, with their ids, and the
/// database is not asked.
async fn a_follower_catches_a_changes_client_up_from_the_bus(bus: &str) {
    let db = TestDb::new(Kind::Postgres).await;
    let t = torture::table(&db).await;
    let prefix = prefix();
    let config = Rowcast::on(&db)
        .feed("feed", &t, |f| f.set("mode", "changes").ring_size(5))
        .cluster(bus, &prefix);
    let leader = config.start().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !leads(&leader) {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let follower = config.start().await;
    let url = format!("{}/events/feed", follower.url);
    let mut live = Client::connect(&url, None).await;
    for _ in 0..30 {
        db.exec(&format!("INSERT INTO {t} (writer) VALUES (1)"))
            .await;
    }
    let events = live.take(30).await;
    let ops: Vec<(String, i64)> = (events.iter())
        .map(|e| {
            let event = e.json();
            (
                event["op"].as_str().unwrap().to_owned(),
                event["row"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert!(ops.iter().all(|(op, _)| op == "insert"), "{ops:?}");
    let queries = |s: &Server| {
        served(s)
            .health
            .counters
            .catch_up_queries
            .load(Ordering::SeqCst)
    };
    let before = queries(&follower);

    // From its fourth event: far behind a ring of five.
    let mut behind = Client::connect(&url, Some(&events[3].id)).await;
    let resumed = behind.take(26).await;
    let frames = |events: &[Ev]| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (e.id.clone(), e.data.clone()))
            .collect()
    };
    assert_eq!(
        frames(&resumed),
        frames(&events[4..]),
        "the same events, ids and all"
    );
    assert_eq!(queries(&follower), before, "the bus had every entry");
    follower.stop().await;
    leader.stop().await;
    drop_stream(bus, &prefix, "feed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_a_changes_client_up_from_redis() {
    a_follower_catches_a_changes_client_up_from_the_bus(REDIS_URL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_catches_a_changes_client_up_from_nats() {
    a_follower_catches_a_changes_client_up_from_the_bus(NATS_URL).await;
}
