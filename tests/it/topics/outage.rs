//! A Redis that goes away mid-stream: a private `redis-server` the test
//! starts, kills and starts again, empty.

use super::{ids_of, redis_at, xadd};
use crate::common::*;
use serde_json::json;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A Redis server of one test's own, which it may stop and start.
struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again, empty: it keeps nothing on disk.
    async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_degrades_the_feed_and_loses_no_entry() {
    let mut redis = PrivateRedis::start().await;
    let server = Rowcast::without_database()
        .topic("events", "redis-stream", &redis.url(), |f| {
            f.set("stream", "events")
        })
        .start()
        .await;
    let mut client = Client::connect(&format!("{}/events/events", server.url), None).await;
    let mut c = redis_at(&redis.url()).await;
    let first = xadd(&mut c, "events", &[("data", json!({ "n": 1 }).to_string())]).await;
    assert_eq!(ids_of(&client.take(1).await), [first]);

    redis.kill().await;
    let health = wait_health(&server.url, 503).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(
        health["feeds"]["events"],
        json!({ "status": "failing", "error": "Redis unavailable" })
    );
    let (status, _) = get_json(&format!("{}/feeds", server.url)).await;
    assert_eq!(status, 200, "the server stays up");

    // Back, empty; entries added before rowcast reconnects arrive too.
    redis.restart().await;
    let mut c = redis_at(&redis.url()).await;
    let mut added = Vec::new();
    for n in 2..5 {
        added.push(xadd(&mut c, "events", &[("data", json!({ "n": n }).to_string())]).await);
    }
    let events = client.take(3).await;
    assert_eq!(ids_of(&events), added);
    assert_eq!(events[2].json(), json!({ "n": 4 }));
    wait_health(&server.url, 200).await;
    let metrics = metrics(&server).await;
    assert!(
        !metrics.contains("rowcast_query_errors_total{feed=\"events\"} 0\n"),
        "{metrics}"
    );
    server.stop().await;
    redis.kill().await;
}
