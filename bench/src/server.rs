//! `rowcast serve` as a child process.

use anyhow::{bail, Context as _};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A `rowcast serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts rowcast on a free port and waits until `/healthz` answers 200.
    pub async fn start(rowcast: &Path, mut args: Vec<String>) -> anyhow::Result<Server> {
        let addr = StdListener::bind("127.0.0.1:0")?.local_addr()?;
        args.push(format!("--listen={addr}"));
        let mut child = Command::new(rowcast)
            .args(&args)
            // Flags win over the environment, except a config file's feeds.
            .env_remove("ROWCAST_CONFIG")
            .env("RUST_LOG", "rowcast=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", rowcast.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("rowcast exited ({status}) before serving; its log is above");
            }
            if healthz(addr).await.unwrap_or(false) {
                return Ok(Server { child, addr });
            }
            if Instant::now() > deadline {
                bail!("rowcast on {addr} did not answer /healthz with 200 within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        // The benchmark is over; a clean shutdown is not what it measures.
        let _ = self.child.kill().await;
    }
}

/// One of rowcast's metrics of `feed`, from `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str, feed: &str) -> anyhow::Result<f64> {
    let response = crate::http::Connection::new(addr).get("/metrics").await?;
    if response.status != 200 {
        bail!("/metrics answered {}", response.status);
    }
    series(&String::from_utf8_lossy(&response.body), name, feed)
}

/// The value of metric `name` for `feed` in a `/metrics` text.
pub fn series(metrics: &str, name: &str, feed: &str) -> anyhow::Result<f64> {
    let prefix = format!("{name}{{feed=\"{feed}\"}} ");
    let value = metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .with_context(|| format!("no {name} of feed {feed} in /metrics"))?;
    Ok(value.trim().parse()?)
}

async fn healthz(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 200 "))
}
