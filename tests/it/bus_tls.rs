//! The bus over TLS: a Redis (`rediss://`) and a NATS (`tls://`) server
//! whose certificate a private CA signed. Instances that trust that CA (by
//! `SSL_CERT_FILE`, as every TLS client on the machine would) share a feed
//! over it; an instance that does not trust it keeps serving, and says
//! that the bus is unavailable.

use crate::cluster::{free_listen, leader_of, Instance};
use crate::common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// A CA, a certificate it signed for 127.0.0.1, and another CA that
/// signed nothing, as PEM files.
struct Certs {
    dir: tempfile::TempDir,
}

/// A CA of its own.
fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    (ca.self_signed(&key).unwrap(), key)
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = ca("rowcast test CA");
        let (other, _) = self::ca("another CA");
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("other.pem"), other.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A bus server that speaks only TLS, on a port of its own.
fn tls_server(nats: bool, certs: &Certs, port: u16, store: &Path) -> Child {
    let (cert, key, ca) = (
        certs.path("server.pem"),
        certs.path("server.key"),
        certs.path("ca.pem"),
    );
    let mut command = match nats {
        true => {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(store)
                .arg("--tls")
                .arg("--tlscert")
                .arg(&cert)
                .arg("--tlskey")
                .arg(&key);
            c
        }
        false => {
            let mut c = Command::new("redis-server");
            c.args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca);
            c
        }
    };
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the bus server runs (Debian packages redis-server, nats-server)")
}

async fn port_listens(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the bus server did not listen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_feed_crosses_a_tls_bus(nats: bool) {
    let certs = Certs::new();
    let port: u16 = free_listen().rsplit_once(':').unwrap().1.parse().unwrap();
    let store = tempfile::tempdir().unwrap();
    let _server = tls_server(nats, &certs, port, store.path());
    port_listens(port).await;
    let url = match nats {
        true => format!("tls://127.0.0.1:{port}"),
        false => format!("rediss://127.0.0.1:{port}"),
    };

    let db = TestDb::new(Kind::Postgres).await;
    let table = db.messages("messages").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rowcast.toml");
    let config = Rowcast::on(&db)
        .feed("messages", &table, |f| f)
        .cluster(&url, &crate::cluster::prefix());
    std::fs::write(&path, config.toml()).unwrap();
    let ca = certs.path("ca.pem");
    let trusted = [("SSL_CERT_FILE", ca.as_path())];
    let mut instances = Vec::new();
    for _ in 0..2 {
        instances.push(Instance::start_with(&path, &free_listen(), &trusted).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(leader) = leader_of(&instances, "messages", None).await {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let follower = &instances[1 - leader];
    let mut client = Client::connect(&format!("{}/events/messages", follower.base), None).await;
    let mut written = Vec::new();
    for i in 0..20 {
        written.push(db.insert(&table, 1, &format!("over tls {i}")).await);
    }
    let mut got = Vec::new();
    while got.len() < written.len() {
        let event = client
            .next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("the follower's client got {got:?} of {written:?}"));
        got.push(event.json()["id"].as_i64().unwrap());
    }
    assert_eq!(
        got, written,
        "the follower's client got every row once, in order"
    );
    let health = wait_health(&follower.base, 200).await;
    assert_eq!(health["feeds"]["messages"]["role"], "follower", "{health}");

    // Trusting another CA only, the instance does not trust the server's
    // certificate: it serves its clients, and says the bus is unavailable.
    let listen = free_listen();
    let mut untrusting = crate::cli::rowcast(&[
        "serve",
        "--config",
        path.to_str().unwrap(),
        "--listen",
        &listen,
    ])
    .env("SSL_CERT_FILE", certs.path("other.pem"))
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    let health = wait_health(&format!("http://{listen}"), 503).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(
        health["feeds"]["messages"]["error"], "bus unavailable",
        "{health}"
    );
    untrusting.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_crosses_redis_over_tls() {
    a_feed_crosses_a_tls_bus(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_crosses_nats_over_tls() {
    a_feed_crosses_a_tls_bus(true).await;
}
