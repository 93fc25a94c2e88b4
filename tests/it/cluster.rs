//! Several instances on one database: one polls each feed (the holder of
//! its database lock) and appends to the bus, the others follow the bus.
//! Clients spread over the instances, and moving between them with their
//! `Last-Event-ID`, get every row once, in order, through concurrent
//! writers, the leader's death (kill -9, its session terminated) and a
//! restart of the bus.

use crate::cli::rowcast;
use crate::common::*;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::watch;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// Concurrent writers, each committing one row at a time with a short
/// random pause inside its transaction, so that ids commit out of order.
const WRITERS: usize = 16;

/// A bus prefix of this test alone.
pub fn prefix() -> String {
    format!("t{:08x}", rand::random::<u32>())
}

/// Deletes a feed's stream from the bus: the Redis key, or the prefix's
/// JetStream stream.
pub async fn drop_stream(url: &str, prefix: &str, feed: &str) {
    if url.starts_with("nats") {
        if let Ok(client) = async_nats::connect(url).await {
            let _ = async_nats::jetstream::new(client)
                .delete_stream(format!("{prefix}_feeds"))
                .await;
        }
        return;
    }
    if let Ok(client) = redis::Client::open(url) {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            let _: Result<i64, _> = redis::cmd("DEL")
                .arg(format!("{prefix}:{feed}"))
                .query_async(&mut c)
                .await;
        }
    }
}

/// Writes rows until `end`; returns nothing (the table says what
/// committed).
fn spawn_writers(db: &TestDb, table: &str, end: Instant) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (pool, table) = (db.pool.clone(), table.to_owned());
            let body = format!("w{w}");
            let kind = db.kind;
            tokio::spawn(async move {
                let sql = match kind {
                    Kind::Postgres => format!("INSERT INTO {table} (room_id, body) VALUES (1, $1)"),
                    _ => format!("INSERT INTO {table} (room_id, body) VALUES (1, ?)"),
                };
                while Instant::now() < end {
                    let mut tx = pool.begin().await.unwrap();
                    sqlx::query(&sql)
                        .bind(&body)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    let pause = rand::random::<u64>() % 30;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect()
}

async fn committed(db: &TestDb, table: &str) -> Vec<i64> {
    sqlx::query_scalar(&format!("SELECT id FROM {table} ORDER BY id"))
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// A client that reads `/events/{feed}` from the instances at `bases`,
/// starting at the `start`th, from `?after=0`; when a stream ends, fails or
/// stays quiet for [`QUIET`] it goes on at the next instance with its
/// `Last-Event-ID`. Returns the row ids it got once it has got as many as
/// `expected` holds.
fn roam(
    bases: Arc<Vec<String>>,
    feed: String,
    start: usize,
    mut expected: watch::Receiver<Option<usize>>,
) -> tokio::task::JoinHandle<Vec<i64>> {
    tokio::spawn(async move {
        let mut got: Vec<i64> = Vec::new();
        let mut last: Option<String> = None;
        let mut at = start;
        let deadline = Instant::now() + Duration::from_secs(60);
        let complete = |got: &Vec<i64>, expected: &watch::Receiver<Option<usize>>| {
            expected.borrow().is_some_and(|n| got.len() >= n)
        };
        loop {
            assert!(
                Instant::now() < deadline,
                "gave up after {} rows",
                got.len()
            );
            let base = &bases[at % bases.len()];
            let url = match &last {
                Some(_) => format!("{base}/events/{feed}"),
                None => format!("{base}/events/{feed}?after=0"),
            };
            let Some(mut client) = Client::try_connect(&url, last.as_deref()).await else {
                at += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            loop {
                let event = tokio::select! {
                    event = client.next(QUIET) => event,
                    _ = expected.changed() => {
                        if complete(&got, &expected) {
                            return got;
                        }
                        continue;
                    }
                };
                let Some(event) = event else { break };
                if event.data.is_empty() {
                    continue;
                }
                got.push(event.json()["id"].as_i64().expect("rows have an id"));
                if !event.id.is_empty() {
                    last = Some(event.id.clone());
                }
                if complete(&got, &expected) {
                    return got;
                }
            }
            if complete(&got, &expected) {
                return got;
            }
            // Ended, failed or quiet: go on elsewhere, from the cursor.
            at += 1;
        }
    })
}

/// How long a roaming client waits for a row before it tries another
/// instance: longer than a bus outage of the tests, so that a client
/// stays on its instance through it.
const QUIET: Duration = Duration::from_secs(6);

/// Checks that every client got exactly the committed rows, in order.
async fn assert_every_row_once(clients: Vec<tokio::task::JoinHandle<Vec<i64>>>, rows: &[i64]) {
    for (i, client) in clients.into_iter().enumerate() {
        let got = client.await.unwrap();
        if got != rows {
            let missing: Vec<_> = rows.iter().filter(|r| !got.contains(r)).collect();
            let mut sorted = got.clone();
            sorted.sort();
            sorted.dedup();
            panic!(
                "client {i}: {} rows, {} committed; missing {missing:?}; duplicated or out of order: {}",
                got.len(),
                rows.len(),
                sorted.len() != got.len() || sorted != got
            );
        }
    }
}

pub fn served(server: &Server) -> &rowcast::http::Served {
    &server.feeds[0]
}

/// Waits until `server` leads its feed; panics after 10 s.
async fn wait_until_leader(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(server).membership.role() != rowcast::cluster::Role::Leader {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three in-process instances of one feed on one bus, clients on each,
/// sixteen writers: one instance polls, the others only apply the bus.
async fn three_instances_poll_once(kind: Kind, bus: &str) {
    let db = TestDb::new(kind).await;
    let table = db.messages("messages").await;
    let prefix = prefix();
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| f)
        .cluster(bus, &prefix);
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(config.start().await);
    }
    // One of them takes the lock; wait for it before writing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !servers
        .iter()
        .any(|s| served(s).membership.role() == rowcast::cluster::Role::Leader)
    {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bases = Arc::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
    let (done, expected) = watch::channel(None);
    let clients: Vec<_> = (0..6)
        .map(|i| roam(bases.clone(), "messages".into(), i, expected.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writers = spawn_writers(&db, &table, Instant::now() + Duration::from_secs(3));
    for w in writers {
        w.await.unwrap();
    }
    let rows = committed(&db, &table).await;
    assert!(rows.len() > 100, "only {} rows written", rows.len());
    done.send_replace(Some(rows.len()));
    assert_every_row_once(clients, &rows).await;

    let leaders: Vec<&Server> = (servers.iter())
        .filter(|s| served(s).membership.role() == rowcast::cluster::Role::Leader)
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    // One bus entry per batch, whatever the number of clients: no more
    // entries than rows, and every follower applied each of them once.
    let appended = served(leaders[0])
        .membership
        .appended
        .load(Ordering::SeqCst);
    assert!(
        appended > 0 && appended <= rows.len() as u64,
        "{appended} entries for {} rows",
        rows.len()
    );
    for server in &servers {
        let s = served(server);
        let polls = s.health.counters.polls.load(Ordering::SeqCst);
        let queries = s.health.counters.queries.load(Ordering::SeqCst);
        if s.membership.role() == rowcast::cluster::Role::Leader {
            assert!(polls > 0 && s.membership.appended.load(Ordering::SeqCst) > 0);
        } else {
            // Followers ask the database nothing about the feed's rows:
            // the database sees one instance's polls.
            assert_eq!((polls, queries), (0, 0), "a follower queried the table");
            assert_eq!(s.membership.applied.load(Ordering::SeqCst), appended);
        }
    }
    let health = wait_health(&bases[0], 200).await;
    let role = health["feeds"]["messages"]["role"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(role == "leader" || role == "follower", "{health}");
    for server in servers {
        server.stop().await;
    }
    drop_stream(bus, &prefix, "messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_once_postgres() {
    three_instances_poll_once(Kind::Postgres, REDIS_URL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_once_mysql() {
    three_instances_poll_once(Kind::MySql, REDIS_URL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_once_on_nats_postgres() {
    three_instances_poll_once(Kind::Postgres, NATS_URL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_poll_once_on_nats_mysql() {
    three_instances_poll_once(Kind::MySql, NATS_URL).await
}

/// A rowcast process of a clustered configuration.
pub struct Instance {
    child: Child,
    pub base: String,
    pub listen: String,
}

impl Instance {
    pub async fn start(config: &std::path::Path, listen: &str) -> Instance {
        Instance::start_with(config, listen, &[]).await
    }

    /// An instance with these environment variables besides.
    pub async fn start_with(
        config: &std::path::Path,
        listen: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Instance {
        let mut child = rowcast(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            listen,
        ])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let base = format!("http://{listen}");
        tokio::select! {
            _ = wait_health(&base, 200) => {}
            status = child.wait() => panic!("rowcast exited before it was ready: {status:?}"),
        }
        Instance {
            child,
            base,
            listen: listen.to_owned(),
        }
    }

    /// The instance's role for `feed`, from `/healthz`.
    async fn role(&self, feed: &str) -> Option<String> {
        let response = reqwest::get(format!("{}/healthz", self.base)).await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["feeds"][feed]["role"].as_str().map(str::to_owned)
    }

    pub fn kill(&mut self) {
        let pid = self.child.id().expect("running").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    }
}

pub async fn leader_of(instances: &[Instance], feed: &str, skip: Option<usize>) -> Option<usize> {
    for (i, instance) in instances.iter().enumerate() {
        if Some(i) != skip && instance.role(feed).await.as_deref() == Some("leader") {
            return Some(i);
        }
    }
    None
}

pub fn free_listen() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// How the leader is taken away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takeover {
    /// `kill -9` of its process.
    Kill,
    /// `pg_terminate_backend` of its lock session.
    Terminate,
}

/// Three rowcast processes of one `messages` feed on Redis, six clients
/// roaming over them, and sixteen writers.
pub struct Processes {
    pub db: TestDb,
    pub prefix: String,
    /// The instances' configuration file.
    pub path: std::path::PathBuf,
    pub instances: Vec<Instance>,
    table: String,
    clients: Vec<tokio::task::JoinHandle<Vec<i64>>>,
    done: watch::Sender<Option<usize>>,
    writers: Vec<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Processes {
    /// Starts the instances and the clients, then writers for `writing`.
    pub async fn start(kind: Kind, writing: Duration) -> Processes {
        let db = TestDb::new(kind).await;
        let table = db.messages("messages").await;
        let prefix = prefix();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rowcast.toml");
        let config = Rowcast::on(&db)
            .feed("messages", &table, |f| f)
            .cluster(REDIS_URL, &prefix);
        std::fs::write(&path, config.toml()).unwrap();
        let mut instances = Vec::new();
        for _ in 0..3 {
            instances.push(Instance::start(&path, &free_listen()).await);
        }
        let bases = Arc::new(instances.iter().map(|i| i.base.clone()).collect::<Vec<_>>());
        let (done, expected) = watch::channel(None);
        let clients: Vec<_> = (0..6)
            .map(|i| roam(bases.clone(), "messages".into(), i, expected.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let writers = spawn_writers(&db, &table, Instant::now() + writing);
        Processes {
            db,
            prefix,
            path,
            instances,
            table,
            clients,
            done,
            writers,
            _dir: dir,
        }
    }

    /// The instance that leads the feed now; panics after 10 s without.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(leader) = leader_of(&self.instances, "messages", None).await {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the writers, checks that every client got every committed
    /// row once, in order, and stops the instances.
    pub async fn finish(self) {
        for w in self.writers {
            w.await.unwrap();
        }
        let rows = committed(&self.db, &self.table).await;
        self.done.send_replace(Some(rows.len()));
        assert_every_row_once(self.clients, &rows).await;
        drop(self.instances);
        drop_stream(REDIS_URL, &self.prefix, "messages").await;
    }
}

/// Three rowcast processes, clients roaming over them, sixteen writers;
/// three times in a row the leader is taken away: another takes over within
/// about two seconds, and no client misses or repeats a row.
async fn failover(kind: Kind, takeover: Takeover) {
    let mut cluster = Processes::start(kind, Duration::from_secs(9)).await;
    let mut takeovers = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // A leader that could not tell within a second that it still holds
        // its lock (a loaded machine) steps down: wait for the next one.
        let leader = cluster.leader().await;
        let taken = Instant::now();
        match takeover {
            Takeover::Kill => cluster.instances[leader].kill(),
            Takeover::Terminate => {
                let name = "rowcast leader messages";
                let ended: Vec<bool> = sqlx::query_scalar(&format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}' AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
                ))
                .fetch_all(&cluster.db.pool)
                .await
                .unwrap();
                assert!(!ended.is_empty(), "no lock session to terminate");
            }
        }
        let skip = (takeover == Takeover::Kill).then_some(leader);
        loop {
            if let Some(new) = leader_of(&cluster.instances, "messages", skip).await {
                if takeover == Takeover::Kill
                    || new != leader
                    || taken.elapsed() > Duration::from_secs(1)
                {
                    break;
                }
            }
            assert!(
                taken.elapsed() < Duration::from_secs(10),
                "no instance took over within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        takeovers.push(taken.elapsed());
        if takeover == Takeover::Kill {
            // Back on its address, as a supervisor would restart it.
            let listen = cluster.instances[leader].listen.clone();
            cluster.instances[leader] = Instance::start(&cluster.path, &listen).await;
        }
    }
    cluster.finish().await;
    eprintln!("takeovers: {takeovers:?}");
    assert!(
        takeovers.iter().all(|t| *t < Duration::from_secs(4)),
        "takeovers {takeovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_hands_over_and_nothing_is_lost_postgres() {
    failover(Kind::Postgres, Takeover::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_hands_over_and_nothing_is_lost_mysql() {
    failover(Kind::MySql, Takeover::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_lock_session_hands_over_and_nothing_is_lost() {
    failover(Kind::Postgres, Takeover::Terminate).await
}

/// A bus server of one test's own, which it may stop and start: Redis
/// keeping nothing on disk (as this machine's), or NATS with JetStream
/// keeping its streams in a directory of the test.
pub struct PrivateBus {
    nats: bool,
    /// Redis: the password it asks for, if any.
    password: Option<&'static str>,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateBus {
    pub async fn start(nats: bool) -> PrivateBus {
        let port = free_listen().rsplit_once(':').unwrap().1.parse().unwrap();
        let store = tempfile::tempdir().unwrap();
        let mut bus = PrivateBus {
            nats,
            password: None,
            port,
            store,
            child: None,
        };
        bus.restart().await;
        bus
    }

    pub fn url(&self) -> String {
        match self.nats {
            true => format!("nats://127.0.0.1:{}", self.port),
            false => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        let mut command = match self.nats {
            true => {
                let mut c = tokio::process::Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.store.path());
                c
            }
            false => {
                let mut c = tokio::process::Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1"]).args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                if let Some(password) = self.password {
                    c.args(["--requirepass", password]);
                }
                c
            }
        };
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the bus server runs (Debian packages redis-server, nats-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the bus server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// The bus goes away mid-run and comes back (Redis: empty): the streams
/// stay open, `/healthz` says degraded meanwhile, and once it is back
/// followers read what they missed from the database.
async fn a_bus_restart_loses_no_row(nats: bool) {
    let db = TestDb::new(Kind::Postgres).await;
    let table = db.messages("messages").await;
    let mut bus = PrivateBus::start(nats).await;
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| f)
        .cluster(&bus.url(), &prefix());
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(config.start().await);
    }
    let bases = Arc::new(servers.iter().map(|s| s.url.clone()).collect::<Vec<_>>());
    let (done, expected) = watch::channel(None);
    let clients: Vec<_> = (0..6)
        .map(|i| roam(bases.clone(), "messages".into(), i, expected.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writers = spawn_writers(&db, &table, Instant::now() + Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bus.kill().await;
    let health = wait_health(&bases[0], 503).await;
    assert_eq!(health["status"], "degraded", "{health}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bus.restart().await;
    for w in writers {
        w.await.unwrap();
    }
    let rows = committed(&db, &table).await;
    done.send_replace(Some(rows.len()));
    assert_every_row_once(clients, &rows).await;
    wait_health(&bases[0], 200).await;
    let filled: u64 = (servers.iter())
        .map(|s| served(s).membership.filled.load(Ordering::SeqCst))
        .sum();
    assert!(filled > 0, "no follower read what the bus missed");
    for server in servers {
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_row() {
    a_bus_restart_loses_no_row(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_row() {
    a_bus_restart_loses_no_row(true).await
}

/// A client behind a follower's ring is caught up from the bus's retained
/// entries, without a query; once the bus has lost them, from the database.
async fn catch_up_reads_the_bus_before_the_database(bus: &str) {
    logs();
    let db = TestDb::new(Kind::Postgres).await;
    let table = db.messages("messages").await;
    let prefix = prefix();
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| f.ring_size(5))
        .cluster(bus, &prefix);
    let leader = config.start().await;
    wait_until_leader(&leader).await;
    let follower = config.start().await;
    let mut live = Client::connect(&format!("{}/events/messages", follower.url), None).await;
    let mut written = Vec::new();
    for i in 0..30 {
        written.push(db.insert(&table, 1, &format!("m{i}")).await);
    }
    assert_eq!(ids(&live.take(30).await), written);
    let queries = |s: &Server| served(s).health.counters.queries.load(Ordering::SeqCst);
    assert_eq!(queries(&follower), 0);

    // From the first row: far behind a ring of five.
    let url = format!("{}/events/messages", follower.url);
    let first = written[0].to_string();
    let mut behind = Client::connect(&url, Some(&first)).await;
    assert_eq!(ids(&behind.take(29).await), written[1..]);
    assert_eq!(queries(&follower), 0, "the bus had every entry");

    drop_stream(bus, &prefix, "messages").await;
    let mut behind = Client::connect(&url, Some(&written[9].to_string())).await;
    assert_eq!(ids(&behind.take(20).await), written[10..]);
    assert!(
        queries(&follower) > 0,
        "the bus lost its entries: the database was read"
    );
    follower.stop().await;
    leader.stop().await;
    drop_stream(bus, &prefix, "messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_redis_before_the_database() {
    catch_up_reads_the_bus_before_the_database(REDIS_URL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_reads_nats_before_the_database() {
    catch_up_reads_the_bus_before_the_database(NATS_URL).await;
}

/// A Redis that asks for a password: the bus URL's password lets the
/// instances in; a wrong one makes the feed degraded without crashing the
/// server, and no answer shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_password_in_the_bus_url_is_used_and_kept_out_of_sight() {
    let db = TestDb::new(Kind::Postgres).await;
    let table = db.messages("messages").await;
    let mut bus = PrivateBus::start(false).await;
    bus.kill().await;
    bus.password = Some("s3cret-pass");
    bus.restart().await;
    let good = format!("redis://:s3cret-pass@127.0.0.1:{}", bus.port);
    let prefix = prefix();
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| f)
        .cluster(&good, &prefix);
    let leader = config.start().await;
    let follower = config.start().await;
    let mut client = Client::connect(&format!("{}/events/messages", follower.url), None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while served(&leader).membership.role() != rowcast::cluster::Role::Leader
        && served(&follower).membership.role() != rowcast::cluster::Role::Leader
    {
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = db.insert(&table, 1, "through a password").await;
    assert_eq!(ids(&client.take(1).await), [id]);

    let bad = format!("redis://:wrong-pass@127.0.0.1:{}", bus.port);
    let wrong = Rowcast::on(&db)
        .feed("messages", &table, |f| f)
        .cluster(&bad, &prefix)
        .start()
        .await;
    let health = wait_health(&wrong.url, 503).await;
    assert_eq!(
        health["feeds"]["messages"]["error"], "bus unavailable",
        "{health}"
    );
    assert!(!health.to_string().contains("wrong-pass"), "{health}");
    for server in [wrong, follower, leader] {
        server.stop().await;
    }
}

/// The leader loses its database (its connections break, new ones are
/// refused) while the other instance still reaches it: the other takes
/// over, and the old leader's clients, their streams still open, get every
/// row through the bus.
async fn a_leader_cut_off_from_its_database_hands_over(kind: Kind) {
    let db = TestDb::new(kind).await;
    let table = db.messages("messages").await;
    let address = match kind {
        Kind::Postgres => "127.0.0.1:5432",
        _ => "127.0.0.1:3306",
    };
    let proxy = crate::common::proxy::Proxy::start(address.parse().unwrap()).await;
    let prefix = prefix();
    let feed = |config: Rowcast| {
        config
            .feed("messages", &table, |f| f)
            .cluster(REDIS_URL, &prefix)
    };
    let cut = feed(Rowcast::at(&proxy.url(&db.url))).start().await;
    wait_until_leader(&cut).await;
    let other = feed(Rowcast::on(&db)).start().await;
    let mut client = Client::connect(&format!("{}/events/messages", cut.url), None).await;
    let mut written = vec![db.insert(&table, 1, "before").await];
    assert_eq!(ids(&client.take(1).await), written);

    proxy.down();
    let taken = Instant::now();
    while served(&other).membership.role() != rowcast::cluster::Role::Leader {
        assert!(
            taken.elapsed() < Duration::from_secs(10),
            "no takeover within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("takeover after the cut: {:?}", taken.elapsed());
    // The cut leader finds out at its next check of its lock session.
    while served(&cut).membership.role() != rowcast::cluster::Role::Follower {
        assert!(
            taken.elapsed() < Duration::from_secs(5),
            "the cut leader still leads"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the cut leader stepped down after {:?}", taken.elapsed());
    for i in 0..10 {
        written.push(db.insert(&table, 1, &format!("after {i}")).await);
    }
    assert_eq!(ids(&client.take(10).await), written[1..]);
    proxy.up();
    other.stop().await;
    cut.stop().await;
    drop_stream(REDIS_URL, &prefix, "messages").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_database_hands_over_postgres() {
    a_leader_cut_off_from_its_database_hands_over(Kind::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_database_hands_over_mysql() {
    a_leader_cut_off_from_its_database_hands_over(Kind::MySql).await
}

/// A row that commits after the leader passed over its gap reaches the
/// followers' clients too, late and without an id, as it does the
/// leader's; when it commits while the bus is down, once the bus is back
/// (the leader keeps the late batch and appends it after its marker).
async fn a_late_row_reaches_the_followers_clients(bus_down: bool) {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let mut bus = PrivateBus::start(false).await;
    let config = Rowcast::on(&db)
        .feed("messages", &t, |f| {
            f.set("hold_cap", "1s").set("late_check_interval", "200ms")
        })
        .cluster(&bus.url(), &prefix());
    let first = db.insert(&t, 1, "first").await;
    let leader = config.start().await;
    wait_until_leader(&leader).await;
    let follower = config.start().await;
    let mut client = Client::connect(&format!("{}/events/messages", follower.url), None).await;

    // A transaction takes the next id and stays open past the hold cap.
    let mut open = db.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO {t} (room_id, body) VALUES (1, 'open')"
    ))
    .execute(&mut *open)
    .await
    .unwrap();
    let after = db.insert_many(&t, 1, 2).await;
    assert_eq!(
        ids(&client.take(2).await),
        after,
        "rows after the gap arrive"
    );
    if bus_down {
        bus.kill().await;
    }
    open.commit().await.unwrap();
    if bus_down {
        // The leader finds the late row and cannot append it.
        let late_rows = || (served(&leader).health.counters.late_rows).load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while late_rows() == 0 {
            assert!(
                Instant::now() < deadline,
                "the leader did not find the late row"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.expect_quiet(Duration::from_millis(500)).await;
        bus.restart().await;
    }
    let late = client.take(1).await;
    assert_eq!(late[0].json()["id"], serde_json::json!(first + 1));
    assert_eq!(late[0].json()["body"], "open");
    assert_eq!(
        late[0].id,
        after[1].to_string(),
        "the late event carries no id"
    );
    client.expect_quiet(Duration::from_millis(500)).await;
    follower.stop().await;
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_row_reaches_the_followers_clients_through_the_bus() {
    a_late_row_reaches_the_followers_clients(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_row_while_the_bus_is_down_reaches_the_followers_clients() {
    a_late_row_reaches_the_followers_clients(true).await;
}
