//! Debian's nginx in front of rowcast, configured with the files README
//! quotes (`examples/nginx/`), as a child process with its own prefix under
//! a temporary directory.

use super::driver::collect;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const NGINX: &str = "/usr/sbin/nginx";
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nginx");
/// The address rowcast listens on in `rowcast-upstream.conf`.
const UPSTREAM_IN_EXAMPLE: &str = "127.0.0.1:8080";

/// A running nginx; killed when dropped.
pub struct Nginx {
    pub url: String,
    /// What nginx logged (its errors and warnings), shown when a test fails.
    log: Arc<Mutex<String>>,
    _child: Child,
    _prefix: tempfile::TempDir,
}

impl Nginx {
    /// Panics, with one line saying what to install, without nginx.
    pub fn require() {
        if !Path::new(NGINX).exists() {
            panic!("nginx missing ({NGINX}): `apt-get install nginx`, or run `.ci/run`");
        }
    }

    /// Starts nginx on a free port in front of rowcast at `rowcast`.
    pub async fn start(rowcast: SocketAddr) -> Nginx {
        Nginx::require();
        let upstream =
            std::fs::read_to_string(format!("{EXAMPLES}/rowcast-upstream.conf")).unwrap();
        assert_eq!(
            upstream.matches(UPSTREAM_IN_EXAMPLE).count(),
            1,
            "one rowcast address in {upstream}"
        );
        let upstream = upstream.replace(UPSTREAM_IN_EXAMPLE, &rowcast.to_string());
        let prefix = tempfile::tempdir().unwrap();
        // Another process may take the free port before nginx does: try again.
        for _ in 0..3 {
            let port = free_port();
            let conf = prefix.path().join("nginx.conf");
            std::fs::write(&conf, config(&upstream, port)).unwrap();
            let mut child = Command::new(NGINX)
                .arg("-p")
                .arg(prefix.path())
                .arg("-c")
                .arg(&conf)
                .args(["-e", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {NGINX}: {e}"));
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    return Nginx {
                        url: format!("http://{address}"),
                        log: collect(child.stderr.take().unwrap()),
                        _child: child,
                        _prefix: prefix,
                    };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    let _ = child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut stderr)
                        .await;
                    if stderr.contains("Address already in use") {
                        break;
                    }
                    panic!("nginx exited ({status}): {stderr}");
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx not listening on {address} within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no free port for nginx");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("nginx logged:\n{}", self.log.lock().unwrap());
        }
    }
}

/// nginx.conf: one process in the foreground, temporary files under the
/// prefix, a page at `/` standing for the app, and the README's files.
fn config(upstream: &str, port: u16) -> String {
    format!(
        r#"daemon off;
master_process off;
pid nginx.pid;
error_log stderr warn;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
{upstream}
    server {{
        listen 127.0.0.1:{port};
        location = / {{
            default_type text/html;
            return 200 "<!doctype html><title>the app</title>\n";
        }}
        include {EXAMPLES}/rowcast-locations.conf;
    }}
}}
"#
    )
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
