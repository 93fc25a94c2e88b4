//! The strictest SSE clients users have, against the real server and real
//! databases: Node's `eventsource` package (on fetch, i.e. undici), the
//! browser's own EventSource in headless Chromium, Python's httpx-sse, and
//! each again through nginx configured as README says. Our own test client
//! is lenient; these are not (undici refused a stream head with two framing
//! headers that reqwest took).
//!
//! Every client follows a single-feed and a multi-feed stream while rows
//! come, rowcast restarts on the same port and rows come while it is down:
//! each stream must get exactly the rows written after it connected, once,
//! in order, with the ids rowcast sent. Two more streams are refused, with
//! a 401 (no token) and a 404 (unknown feed), and the client must report
//! the refusal and never retry. The clients are child processes
//! (`clients/driver.rs`); `.ci/run` installs them.

pub mod driver;
mod nginx;

use crate::common::*;
use driver::{Client, Driver, Saw, Stream};
use jsonwebtoken::{encode, EncodingKey, Header};
use nginx::Nginx;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECRET: &str = "the secret the app signs its tokens with";

/// How a client reaches rowcast.
#[derive(Clone, Copy)]
enum Via {
    Direct,
    Nginx,
}

/// One test per client, database and way to rowcast:
/// `name: client, database, via;`.
macro_rules! client_tests {
    ($($name:ident: $client:ident, $kind:ident, $via:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            follow_rows_across_a_restart(Client::$client, Kind::$kind, Via::$via).await
        }
    )*};
}

client_tests! {
    node_eventsource_postgres: NodeEventSource, Postgres, Direct;
    node_eventsource_mysql: NodeEventSource, MySql, Direct;
    node_eventsource_sqlite: NodeEventSource, Sqlite, Direct;
    chromium_eventsource_postgres: Chromium, Postgres, Direct;
    httpx_sse_mysql: HttpxSse, MySql, Direct;
    node_eventsource_behind_nginx_sqlite: NodeEventSource, Sqlite, Nginx;
    chromium_eventsource_behind_nginx_mysql: Chromium, MySql, Nginx;
    httpx_sse_behind_nginx_postgres: HttpxSse, Postgres, Nginx;
}

/// Changes feeds through the strictest clients: `{"op":…,"row":…}`
/// envelopes, opaque ids, a snapshot with `?after=0`, and a resume after a
/// restart that ends with the client's view equal to the table.
macro_rules! changes_client_tests {
    ($($name:ident: $client:ident, $kind:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            follow_changes_across_a_restart(Client::$client, Kind::$kind).await
        }
    )*};
}

changes_client_tests! {
    node_eventsource_changes_postgres: NodeEventSource, Postgres;
    chromium_eventsource_changes_mysql: Chromium, MySql;
    httpx_sse_changes_sqlite: HttpxSse, Sqlite;
}

async fn follow_changes_across_a_restart(client: Client, kind: Kind) {
    use crate::changes::{install_deletes, Orders};
    client.require();
    let db = TestDb::new(kind).await;
    let orders = Orders::create(&db, "orders").await;
    install_deletes(&db, &orders.t).await;
    let a = orders.insert(1, "new").await;
    let b = orders.insert(1, "new").await;
    let rowcast = Rowcast::on(&db)
        .set("retry", "200ms")
        .feed("orders", &orders.t, |f| f.set("mode", "changes"));
    let mut server = rowcast.start().await;
    let mut client = Driver::start(
        client,
        &server.url,
        "/healthz",
        &[Stream::new("orders", "/events/orders?after=0")],
    );
    let ops = |c: &Driver| -> Vec<(String, i64, String)> {
        c.events("orders")
            .iter()
            .map(|e| {
                let v = e.json();
                let status = v["row"]["status"].as_str().unwrap_or_default().to_owned();
                (
                    v["op"].as_str().unwrap_or_default().to_owned(),
                    v["row"]["id"].as_i64().unwrap_or(0),
                    status,
                )
            })
            .collect()
    };
    client
        .wait_for("the snapshot", |c| c.events("orders").len() >= 2)
        .await;
    orders.update(a, "paid").await;
    client
        .wait_for("an update", |c| c.events("orders").len() >= 3)
        .await;
    let address = server.address;
    server.stop().await;
    // While rowcast is down: a change, a soft delete, a hard delete.
    orders.update(a, "shipped").await;
    let fresh = orders.insert(2, "new").await;
    db.exec(&format!("DELETE FROM {} WHERE id = {b}", orders.t))
        .await;
    server = rowcast.start_at(address).await;
    client
        .wait_for("the changes made while down", |c| {
            let seen = ops(c);
            seen.contains(&("update".into(), a, "shipped".into()))
                && seen.iter().any(|(op, id, _)| op == "delete" && *id == b)
                && seen.iter().any(|(_, id, _)| *id == fresh)
        })
        .await;
    client.settle(Duration::from_millis(500)).await;
    let seen = ops(&client);
    let own = |s: &str| s.to_owned();
    assert_eq!(
        seen[..3],
        [
            (own("insert"), a, own("new")),
            (own("insert"), b, own("new")),
            (own("update"), a, own("paid"))
        ],
        "{seen:?}"
    );
    // Applied in order, the events leave exactly the table's rows.
    let mut view = std::collections::BTreeMap::new();
    for (op, id, status) in &seen {
        match op.as_str() {
            "delete" => view.remove(id),
            _ => view.insert(*id, status.clone()),
        };
    }
    let expected: std::collections::BTreeMap<i64, String> =
        [(a, own("shipped")), (fresh, own("new"))]
            .into_iter()
            .collect();
    if view != expected {
        client.fail(&format!("the view {view:?} is not the table {expected:?}"));
    }
    // Every event has an opaque id of rowcast's, and the reconnect sent it.
    let events = client.events("orders");
    if events.iter().any(|e| e.id.split('.').count() != 3) {
        client.fail("every event has a changes id");
    }
    drop(client);
    server.stop().await;
}

/// README quotes the nginx files and the Python loop the tests run, so
/// they cannot drift apart.
#[test]
fn readme_quotes_the_tested_files_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    for (file, language) in [
        ("examples/nginx/rowcast-upstream.conf", "nginx"),
        ("examples/nginx/rowcast-locations.conf", "nginx"),
        ("tests/it/clients/python/follow.py", "python"),
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        assert!(
            readme.contains(&format!("```{language}\n{text}```\n")),
            "README.md does not quote {file} as it is"
        );
    }
}

/// A row the test wrote, as a client must receive it.
#[derive(Clone, Debug)]
struct Row {
    id: i64,
    json: Value,
}

async fn insert(db: &TestDb, table: &str, body: &str) -> Row {
    let id = db.insert(table, 1, body).await;
    Row {
        id,
        json: json!({ "id": id, "room_id": 1, "body": body }),
    }
}

async fn follow_rows_across_a_restart(client: Client, kind: Kind, via: Via) {
    client.require();
    if let Via::Nginx = via {
        Nginx::require();
    }
    let db = TestDb::new(kind).await;
    let alpha_table = db.messages("alpha").await;
    let beta_table = db.messages("beta").await;
    // A client that gives no cursor starts live: these are not its to see.
    let before = *db.insert_many(&alpha_table, 1, 2).await.last().unwrap();
    let rowcast = Rowcast::on(&db)
        .set("retry", "200ms")
        .auth("secret", SECRET)
        .feed("alpha", &alpha_table, |f| f)
        .feed("beta", &beta_table, |f| f);
    let mut server = rowcast.start().await;
    let nginx = match via {
        Via::Nginx => Some(Nginx::start(server.address).await),
        Via::Direct => None,
    };
    // A browser opens a page of the same origin first: the app's behind
    // nginx, one of rowcast's own otherwise.
    let (base, page) = match &nginx {
        Some(nginx) => (nginx.url.clone(), "/"),
        None => (server.url.clone(), "/healthz"),
    };
    let token = token();
    let mut client = Driver::start(
        client,
        &base,
        page,
        &[
            Stream::new("alpha", "/events/alpha").token(&token),
            Stream::new("both", "/events?feed=alpha&feed=beta")
                .events(&["alpha", "beta"])
                .token(&token),
            Stream::new("no_token", "/events/alpha"),
            Stream::new("unknown", "/events/nope").token(&token),
        ],
    );
    client
        .wait_for("two open streams and two refusals", |c| {
            [
                ("alpha", Saw::Open),
                ("both", Saw::Open),
                ("no_token", Saw::Closed),
                ("unknown", Saw::Closed),
            ]
            .iter()
            .all(|(stream, saw)| c.saw(stream).contains(saw))
        })
        .await;

    // Live rows; text that framing or JSON could get wrong.
    let mut alpha = Vec::new();
    let mut beta = Vec::new();
    alpha.push(insert(&db, &alpha_table, "line one\nline two").await);
    alpha.push(insert(&db, &alpha_table, "ünïcödé 🎉, \"quotes\" and \\n").await);
    wait_events(&mut client, alpha.len(), alpha.len()).await;
    beta.push(insert(&db, &beta_table, "beta one").await);
    wait_events(&mut client, alpha.len(), alpha.len() + beta.len()).await;
    alpha.push(insert(&db, &alpha_table, "data: not a field\n\nid: 999").await);
    wait_events(&mut client, alpha.len(), alpha.len() + beta.len()).await;

    // Restart rowcast on the same port, with rows written while it is down.
    let mark = client.mark();
    let last_ids =
        ["alpha", "both"].map(|stream| (stream, client.events(stream).last().unwrap().id.clone()));
    let address = server.address;
    server.stop().await;
    client
        .wait_for("reconnect attempts while rowcast is down", |c| {
            ["alpha", "both"].iter().all(|stream| {
                c.saw_since(stream, mark)
                    .iter()
                    .any(|saw| matches!(saw, Saw::Request { .. }))
            })
        })
        .await;
    alpha.push(insert(&db, &alpha_table, "written while down").await);
    beta.push(insert(&db, &beta_table, "beta written while down").await);
    alpha.push(insert(&db, &alpha_table, "also written while down").await);
    server = rowcast.start_at(address).await;
    wait_events(&mut client, alpha.len(), alpha.len() + beta.len()).await;
    alpha.push(insert(&db, &alpha_table, "after the restart").await);
    beta.push(insert(&db, &beta_table, "beta after the restart").await);
    wait_events(&mut client, alpha.len(), alpha.len() + beta.len()).await;
    // Anything duplicated, or a refused stream retrying, would come now.
    client.settle(Duration::from_millis(500)).await;

    check_single_feed(&client, "alpha", &alpha);
    check_multi_feed(
        &client,
        &[
            ("alpha", &alpha, before.to_string()),
            ("beta", &beta, "start".to_owned()),
        ],
    );
    check_resumed(&client, mark, &last_ids);
    check_refusals(&client);
    drop(client);
    server.stop().await;
}

/// Waits until the `alpha` stream has `alpha` events and `both` has `both`.
async fn wait_events(client: &mut Driver, alpha: usize, both: usize) {
    client
        .wait_for(
            &format!("{alpha} events on alpha and {both} on both"),
            |c| c.events("alpha").len() >= alpha && c.events("both").len() >= both,
        )
        .await
}

/// `stream` got exactly `rows`, in order, as plain messages with the row
/// ids as event ids.
fn check_single_feed(client: &Driver, stream: &str, rows: &[Row]) {
    let got: Vec<(String, String, Value)> = client
        .events(stream)
        .iter()
        .map(|e| (e.event.clone(), e.id.clone(), e.json()))
        .collect();
    let expected: Vec<(String, String, Value)> = rows
        .iter()
        .map(|row| ("message".to_owned(), row.id.to_string(), row.json.clone()))
        .collect();
    if got != expected {
        client.fail(&format!("{stream}: expected {expected:?}"));
    }
}

/// The `both` stream got each feed's rows in order, as events named after
/// the feed, each with the composite id of every feed's last row so far
/// (or where the feed started: `feeds` gives that as the third member).
fn check_multi_feed(client: &Driver, feeds: &[(&str, &Vec<Row>, String)]) {
    let mut cursors: Vec<String> = feeds.iter().map(|(_, _, start)| start.clone()).collect();
    let mut taken = vec![0; feeds.len()];
    for event in client.events("both") {
        let Some(f) = feeds.iter().position(|(name, ..)| *name == event.event) else {
            client.fail(&format!("both: an event of no requested feed: {event:?}"))
        };
        let Some(row) = feeds[f].1.get(taken[f]) else {
            client.fail(&format!(
                "both: more {} events than rows: {event:?}",
                feeds[f].0
            ))
        };
        taken[f] += 1;
        cursors[f] = row.id.to_string();
        let id: Vec<String> = feeds
            .iter()
            .zip(&cursors)
            .map(|((name, ..), at)| format!("{name}:{at}"))
            .collect();
        let id = id.join(",");
        if event.json() != row.json || event.id != id {
            client.fail(&format!(
                "both: expected {:?} with id {id}, got {event:?}",
                row.json
            ));
        }
    }
    for ((name, rows, _), taken) in feeds.iter().zip(taken) {
        if taken != rows.len() {
            client.fail(&format!("both: {taken} of {} {name} rows", rows.len()));
        }
    }
}

/// The reconnect that resumed each stream after the restart (its last
/// one since `mark`) sent the id of the last event before it. Chromium
/// cannot tell the headers of the attempts that found no server.
fn check_resumed(client: &Driver, mark: usize, last_ids: &[(&str, String)]) {
    for (stream, last) in last_ids {
        let resumed = client
            .saw_since(stream, mark)
            .into_iter()
            .rev()
            .find_map(|saw| match saw {
                Saw::Request { last_event_id } => Some(last_event_id),
                _ => None,
            });
        if resumed != Some(Some(last.clone())) {
            client.fail(&format!(
                "{stream} resumed with Last-Event-ID {resumed:?}, not {last}"
            ));
        }
    }
}

/// The refused streams: each saw its refusal, and nothing more (no retry).
fn check_refusals(client: &Driver) {
    let unauthorized = json!({
        "error": "unauthorized",
        "detail": "a token is required: send `Authorization: Bearer <token>`, `?access_token=` or the `rowcast_token` cookie",
    });
    let unknown =
        json!({ "error": "unknown_feed", "detail": "no feed named `nope`; feeds: alpha, beta" });
    for (stream, status, body) in [("no_token", 401, unauthorized), ("unknown", 404, unknown)] {
        // The page's and the network's reports of one refusal come in no
        // fixed order: compare them as sets.
        let sorted = |saw: &[Saw]| {
            let mut all: Vec<String> = saw.iter().map(|s| format!("{s:?}")).collect();
            all.sort();
            all
        };
        let expected = sorted(&refusal(client.kind(), status, body));
        if sorted(&client.saw(stream)) != expected {
            client.fail(&format!("{stream}: expected exactly {expected:?}"));
        }
    }
}

/// Everything a client reports for a stream refused with `status` and
/// `body`: one request, the refusal as the client tells it, and the end.
fn refusal(client: Client, status: u16, body: Value) -> Vec<Saw> {
    let request = Saw::Request {
        last_event_id: None,
    };
    match client {
        // The package's error event carries the status; CLOSED: no retry.
        Client::NodeEventSource => vec![
            request,
            Saw::Error {
                status: Some(status),
                message: Some(format!("Non-200 status code ({status})")),
                ready_state: Some(2),
                body: None,
            },
            Saw::Closed,
        ],
        // The page sees only an error and CLOSED; the status is the
        // network's.
        Client::Chromium | Client::ChromiumTabs => vec![
            request,
            Saw::Response { status },
            Saw::Error {
                status: None,
                message: None,
                ready_state: Some(2),
                body: None,
            },
            Saw::Closed,
        ],
        // httpx has the status and the JSON body.
        Client::HttpxSse => vec![
            request,
            Saw::Error {
                status: Some(status),
                message: None,
                ready_state: None,
                body: Some(body),
            },
            Saw::Closed,
        ],
    }
}

/// A token the app would issue, valid for ten minutes.
fn token() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    encode(
        &Header::default(),
        &json!({ "sub": "clients", "exp": now + 600 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}
