//! The SSE clients users have, run as child processes: each follows the
//! streams it is given and prints one JSON object a line for what it sees
//! (`{"stream":"rows","kind":"event","type":"message","id":"7","data":"…"}`),
//! and this module reads them back as [`Saw`] values.
//!
//! A client whose packages or program are missing fails the test with one
//! line naming what to install; it never skips.

use crate::common::{Ev, WAIT};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const CLIENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/clients");
const CHROMIUM: &str = "/usr/bin/chromium";

/// A real client, with what it needs installed (`.ci/run` installs it all).
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// The `eventsource` npm package on Node, built on fetch (undici).
    NodeEventSource,
    /// The browser's own `EventSource`, in Debian's headless Chromium.
    Chromium,
    /// httpx with httpx-sse, and the reconnect loop its README suggests.
    HttpxSse,
    /// Tabs of headless Chromium, opened, reloaded and closed on command
    /// ([`Driver::command`]), each with one `EventSource`.
    ChromiumTabs,
}

impl Client {
    /// Panics, with one line naming what to install, unless everything this
    /// client needs is there.
    pub fn require(self) {
        let clients = Path::new(CLIENTS);
        match self {
            Client::NodeEventSource | Client::Chromium | Client::ChromiumTabs => {
                let node = clients.join("node");
                let packages = [
                    "node_modules/.bin/node",
                    "node_modules/eventsource",
                    "node_modules/playwright-core",
                ];
                if let Some(missing) = packages.iter().find(|p| !node.join(p).exists()) {
                    panic!("Node packages missing in tests/it/clients/node (no {missing}): run `npm ci` there, or `.ci/run`");
                }
                if matches!(self, Client::Chromium | Client::ChromiumTabs)
                    && !Path::new(CHROMIUM).exists()
                {
                    panic!("Chromium missing ({CHROMIUM}): `apt-get install chromium`, or run `.ci/run`");
                }
            }
            Client::HttpxSse => {
                let venv = clients.join("python/.venv");
                if !venv.join("bin/python").exists()
                    || !site_packages_have(&venv.join("lib"), "httpx_sse")
                {
                    panic!("Python packages missing in tests/it/clients/python/.venv: run `python3 -m venv .venv && .venv/bin/pip install -r requirements.txt` there, or `.ci/run`");
                }
            }
        }
    }

    /// The program and the script that run this client.
    fn command(self) -> (PathBuf, PathBuf) {
        self.require();
        let clients = Path::new(CLIENTS);
        let node = clients.join("node/node_modules/.bin/node");
        match self {
            Client::NodeEventSource => (node, clients.join("node/eventsource.mjs")),
            Client::Chromium => (node, clients.join("node/chromium.mjs")),
            Client::ChromiumTabs => (node, clients.join("node/tabs.mjs")),
            Client::HttpxSse => (
                clients.join("python/.venv/bin/python"),
                clients.join("python/driver.py"),
            ),
        }
    }
}

/// Whether a venv's `lib/python3.X/site-packages` holds `package`.
fn site_packages_have(lib: &Path, package: &str) -> bool {
    std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .any(|version| version.path().join("site-packages").join(package).is_dir())
}

/// One stream a client follows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stream {
    /// Names the stream in what the client prints.
    pub name: String,
    /// Path and query, after the base URL.
    pub path: String,
    /// Event types to listen for: `message`, or the feeds' names.
    pub events: Vec<String>,
    /// A JWT, sent the way this client sends one: a header, or
    /// `?access_token=` from a browser.
    pub token: Option<String>,
}

impl Stream {
    pub fn new(name: &str, path: &str) -> Stream {
        Stream {
            name: name.to_owned(),
            path: path.to_owned(),
            events: vec!["message".to_owned()],
            token: None,
        }
    }

    pub fn events(mut self, events: &[&str]) -> Stream {
        self.events = events.iter().map(|e| (*e).to_owned()).collect();
        self
    }

    pub fn token(mut self, token: &str) -> Stream {
        self.token = Some(token.to_owned());
        self
    }
}

/// What a client saw on one stream, as it printed it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Saw {
    /// It (re)connected, sending this `Last-Event-ID`.
    Request { last_event_id: Option<String> },
    /// The status of an answer (Chromium's network log only).
    Response { status: u16 },
    /// The stream opened.
    Open,
    /// An event was dispatched.
    Event {
        #[serde(rename = "type")]
        event: String,
        id: String,
        data: String,
    },
    /// An error: `ready_state` 0 means it will retry, 2 that it gave up.
    Error {
        status: Option<u16>,
        message: Option<String>,
        ready_state: Option<u8>,
        body: Option<serde_json::Value>,
    },
    /// The client gave up on the stream for good.
    Closed,
    /// A command ([`Driver::command`]) was carried out.
    Done { op: String },
}

#[derive(Debug, Deserialize)]
struct Line {
    stream: String,
    #[serde(flatten)]
    saw: Saw,
}

/// A running client and everything it printed so far.
pub struct Driver {
    kind: Client,
    child: Child,
    /// The client's process group (it leads it): all of it dies with it.
    group: i32,
    /// Closing it tells the client to stop (and close its browser).
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    /// What it printed, in order.
    seen: Vec<(String, Saw)>,
    /// HOME and TMPDIR of the client (Chromium's profile goes there).
    _home: tempfile::TempDir,
}

impl Driver {
    /// Starts `client` on `streams` of `base`; a browser opens `page` first.
    pub fn start(client: Client, base: &str, page: &str, streams: &[Stream]) -> Driver {
        let (program, script) = client.command();
        let home = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({ "base": base, "page": page, "streams": streams });
        let mut child = Command::new(&program)
            .arg(&script)
            .arg(spec.to_string())
            .env("HOME", home.path())
            .env("TMPDIR", home.path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
        let group = child.id().expect("a running child") as i32;
        let stderr = collect(child.stderr.take().unwrap());
        Driver {
            kind: client,
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()).lines(),
            child,
            group,
            stderr,
            seen: Vec::new(),
            _home: home,
        }
    }

    /// Which client this is.
    pub fn kind(&self) -> Client {
        self.kind
    }

    /// What the client saw on `stream` so far.
    pub fn saw(&self, stream: &str) -> Vec<Saw> {
        self.saw_since(stream, 0)
    }

    /// What the client saw on `stream` after the first `mark` lines.
    pub fn saw_since(&self, stream: &str, mark: usize) -> Vec<Saw> {
        self.seen[mark.min(self.seen.len())..]
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, saw)| saw.clone())
            .collect()
    }

    /// How many lines it printed so far, for [`Driver::saw_since`].
    pub fn mark(&self) -> usize {
        self.seen.len()
    }

    /// The events dispatched on `stream` so far.
    pub fn events(&self, stream: &str) -> Vec<Ev> {
        self.saw(stream)
            .into_iter()
            .filter_map(|saw| match saw {
                Saw::Event { event, id, data } => Some(Ev { id, event, data }),
                _ => None,
            })
            .collect()
    }

    /// Reads what the client prints until `done` holds; panics with all it
    /// printed when that takes longer than [`WAIT`] or the client exits.
    pub async fn wait_for(&mut self, what: &str, done: impl Fn(&Driver) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => self.record(&line),
                Ok(_) => {
                    let status = self.child.try_wait();
                    self.fail(&format!("the client exited ({status:?}) before {what}"))
                }
                Err(_) => self.fail(&format!("no {what} within {WAIT:?}")),
            }
        }
    }

    /// Tells the client to carry out `op` on `stream` (`{"op":…, "tab":…}`
    /// and `extra`'s fields) and waits until it has.
    pub async fn command(&mut self, op: &str, stream: &str, extra: serde_json::Value) {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::json!({ "op": op, "tab": stream });
        if let (Some(line), Some(extra)) = (line.as_object_mut(), extra.as_object()) {
            line.extend(extra.clone());
        }
        let stdin = self.stdin.as_mut().expect("the client is running");
        let text = format!("{line}\n");
        if stdin.write_all(text.as_bytes()).await.is_err() {
            self.fail(&format!("the client took no command {line}"));
        }
        let mark = self.mark();
        let done = Saw::Done { op: op.to_owned() };
        self.wait_for(&format!("{op} of {stream}"), |d| {
            d.saw_since(stream, mark).contains(&done)
        })
        .await;
    }

    /// Reads what the client prints for `window`, for a check that nothing
    /// more comes.
    pub async fn settle(&mut self, window: Duration) {
        let until = tokio::time::Instant::now() + window;
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(until, self.stdout.next_line()).await
        {
            self.record(&line);
        }
    }

    fn record(&mut self, line: &str) {
        let Line { stream, saw } = serde_json::from_str(line)
            .unwrap_or_else(|e| self.fail(&format!("unreadable line {line:?} ({e})")));
        self.seen.push((stream, saw));
    }

    /// Panics with `problem`, everything the client printed and its stderr.
    pub fn fail(&self, problem: &str) -> ! {
        let seen: Vec<String> = self
            .seen
            .iter()
            .map(|(s, saw)| format!("  {s}: {saw:?}"))
            .collect();
        let stderr = self.stderr.lock().unwrap().clone();
        panic!(
            "{problem}\nthe client saw:\n{}\nits stderr:\n{stderr}",
            seen.join("\n")
        );
    }
}

/// Everything `pipe` gives, as it comes, e.g. a child's stderr, read so
/// that the child never blocks on a full pipe.
pub fn collect(mut pipe: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    tokio::spawn(async move {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Drop for Driver {
    fn drop(&mut self) {
        // End of input asks the client to stop, so a browser closes its own
        // processes; whatever is left after a moment is killed.
        self.stdin.take();
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on a process group this driver started.
        unsafe { libc::kill(-self.group, libc::SIGKILL) };
    }
}
