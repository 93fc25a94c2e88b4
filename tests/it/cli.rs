//! The `rowcast` command as a user runs it: start-up errors on one readable
//! line with a failing exit code, `check`, configuration from environment
//! variables, and a clean stop on SIGTERM with open streams. Other areas
//! that run the binary (`deletes`) use its [`rowcast`] and [`finish`].

use crate::common::*;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The rowcast binary, with none of the caller's `ROWCAST_*`,
/// `DATABASE_URL` or `RUST_LOG` variables, so each test sets only its own.
pub(crate) fn rowcast(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rowcast"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("ROWCAST_") || name == "DATABASE_URL" || name == "RUST_LOG" {
            command.env_remove(&*name);
        }
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a command that should end by itself within `within`.
pub(crate) async fn finish(mut command: Command, within: Duration) -> Output {
    tokio::time::timeout(within, command.output())
        .await
        .unwrap_or_else(|_| panic!("rowcast still running after {within:?}"))
        .expect("rowcast runs")
}

/// A command's output as text.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A SQLite file holding one messages table, and rowcast's URL for it.
struct SqliteFile {
    db: TestDb,
    url: String,
    table: String,
}

async fn sqlite_file() -> SqliteFile {
    let db = TestDb::new(Kind::Sqlite).await;
    let table = db.messages("messages").await;
    let path = db
        .url
        .strip_prefix("sqlite://")
        .and_then(|rest| rest.strip_suffix("?mode=rwc"))
        .unwrap_or_else(|| panic!("unexpected test URL {}", db.url))
        .to_owned();
    SqliteFile {
        url: format!("sqlite://{path}"),
        db,
        table,
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until the server answers `/healthz` with 200; panics with its
/// output if it exits first.
async fn wait_ready(child: &mut Child, base: &str) {
    tokio::select! {
        _ = wait_health(base, 200) => {}
        status = child.wait() => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            panic!("rowcast exited before it was ready ({status:?}): {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_table_fails_with_one_line_naming_the_tables() {
    let file = sqlite_file().await;
    let output = finish(
        rowcast(&["serve", "--database-url", &file.url, "--table", "nope"]),
        Duration::from_secs(5),
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{:?}: {stderr}", output.status);
    let expected = format!("rowcast: table `nope` not found; tables: {}", file.table);
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    // The message is the one line that names the problem, not a debug dump.
    assert_eq!(
        stderr.lines().filter(|l| l.contains("not found")).count(),
        1,
        "{stderr}"
    );
    assert!(stderr.ends_with(&format!("{expected}\n")), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelt_config_key_is_named_with_the_valid_ones() {
    let file = sqlite_file().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rowcast.toml");
    std::fs::write(
        &path,
        format!(
            "database_url = \"{}\"\n\n[[feed]]\ntable = \"{}\"\nid_colum = \"x\"\n",
            file.url, file.table
        ),
    )
    .unwrap();
    let output = finish(
        rowcast(&["serve", "--config", path.to_str().unwrap()]),
        Duration::from_secs(5),
    )
    .await;
    let stderr = text(&output.stderr);
    assert!(!output.status.success(), "{:?}: {stderr}", output.status);
    assert!(
        stderr.contains(&format!("rowcast: config file {}", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `id_colum`"), "{stderr}");
    assert!(stderr.contains("`id_column`"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_each_feed_and_its_query() {
    let file = sqlite_file().await;
    file.db.insert_many(&file.table, 1, 2).await;
    let output = finish(
        rowcast(&["check", "--database-url", &file.url, "--table", &file.table]),
        Duration::from_secs(5),
    )
    .await;
    let stdout = text(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {stdout}{}",
        output.status,
        text(&output.stderr)
    );
    // Compare lines with runs of spaces collapsed: the alignment is cosmetic.
    let lines: Vec<String> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let t = &file.table;
    assert!(lines.contains(&format!("feed {t}")), "{stdout}");
    assert!(
        lines.contains(&"cursor id (now at 2)".to_owned()),
        "{stdout}"
    );
    assert!(
        lines.contains(&"columns id, room_id, body".to_owned()),
        "{stdout}"
    );
    let query = lines
        .iter()
        .find_map(|l| l.strip_prefix("query "))
        .unwrap_or_else(|| panic!("no query line: {stdout}"));
    assert!(query.starts_with("SELECT "), "{query}");
    assert!(query.contains(&format!("FROM \"{t}\" AS t")), "{query}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("ok: 1 feed(s) on sqlite"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits_cleanly() {
    let file = sqlite_file().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = rowcast(&[
        "serve",
        "--database-url",
        &file.url,
        "--table",
        &file.table,
        "--listen",
        &listen,
        "--poll-interval",
        "20ms",
        "--max-poll-interval",
        "100ms",
    ])
    .spawn()
    .unwrap();
    let base = format!("http://{listen}");
    wait_ready(&mut child, &base).await;
    let mut client = Client::connect(&format!("{base}/events/{}", file.table), None).await;
    let id = file.db.insert(&file.table, 1, "before stop").await;
    assert_eq!(ids(&client.take(1).await), [id]);

    let pid = child.id().expect("rowcast is running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let stopping = Instant::now();
    client.expect_end(Duration::from_secs(5)).await;
    let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("rowcast exits within 5 s of SIGTERM")
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(5));
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        text(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_serve() {
    let file = sqlite_file().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = rowcast(&["serve"]);
    command
        .env("DATABASE_URL", &file.url)
        .env("ROWCAST_TABLE", &file.table)
        .env("ROWCAST_LISTEN", &listen);
    let mut child = command.spawn().unwrap();
    let base = format!("http://{listen}");
    wait_ready(&mut child, &base).await;
    let (status, body) = get_json(&format!("{base}/feeds")).await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["feeds"]
        .as_array()
        .unwrap_or_else(|| panic!("no feeds: {body}"))
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [file.table.as_str()]);
    child.kill().await.unwrap();
}
