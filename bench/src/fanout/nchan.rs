//! nginx with the nchan module as a child process: the fan-out server that
//! rowcast is compared with. Its own prefix directory under the temporary
//! directory, one process (`master_process off`), one subscriber location
//! (`/sub`, EventSource) and one publisher location (`/pub`) on channel
//! `bench`, on a free port. Nothing of the system's nginx is used but the
//! binary and the module.

use anyhow::{bail, Context as _};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The subscriber location: `GET` with `Accept: text/event-stream`.
pub const SUBSCRIBE_PATH: &str = "/sub";
/// The publisher location: one `POST` per message.
pub const PUBLISH_PATH: &str = "/pub";

/// A running nginx, killed on drop; its prefix directory is removed then.
pub struct Nginx {
    pub child: Child,
    pub addr: SocketAddr,
    /// The prefix directory: configuration, pid file, error log, temp dirs.
    prefix: Prefix,
}

/// A directory removed on drop.
struct Prefix(PathBuf);

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Nginx {
    /// Writes the configuration, starts nginx and waits until it accepts
    /// connections.
    /// `worker_connections` counts nchan's own internal connections too, so
    /// it may need to be above the number of subscribers.
    pub async fn start(
        nginx: &Path,
        module: &Path,
        worker_connections: usize,
    ) -> anyhow::Result<Nginx> {
        if !module.is_file() {
            bail!("{} not found (pass --nchan-module)", module.display());
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let prefix = Prefix(std::env::temp_dir().join(format!(
            "rowcast-bench-nchan-{}-{stamp}",
            std::process::id()
        )));
        std::fs::create_dir_all(&prefix.0)
            .with_context(|| format!("cannot create {}", prefix.0.display()))?;
        let addr = StdListener::bind("127.0.0.1:0")?.local_addr()?;
        let config = prefix.0.join("nginx.conf");
        std::fs::write(
            &config,
            configuration(&prefix.0, module, addr, worker_connections),
        )?;
        let error_log = prefix.0.join("error.log");
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix.0)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", nginx.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                bail!("nginx exited ({status}) before serving: {}", log.trim());
            }
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(Nginx {
                    child,
                    addr,
                    prefix,
                });
            }
            if Instant::now() > deadline {
                bail!("nginx on {addr} did not accept connections within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Errors nginx logged, for a failed run.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.0.join("error.log")).unwrap_or_default()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn configuration(
    prefix: &Path,
    module: &Path,
    addr: SocketAddr,
    worker_connections: usize,
) -> String {
    let prefix = prefix.display();
    format!(
        "load_module {module};
master_process off;
daemon off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {worker_connections}; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    server {{
        listen {addr} backlog=4096;
        location = {SUBSCRIBE_PATH} {{
            nchan_subscriber eventsource;
            nchan_channel_id bench;
            nchan_subscriber_first_message newest;
        }}
        location = {PUBLISH_PATH} {{
            nchan_publisher;
            nchan_channel_id bench;
        }}
    }}
}}
",
        module = module.display(),
    )
}
