//! With auth on, a client learns nothing of a feed its token may not read:
//! the token is checked before anything else, a feed it may not read is
//! answered exactly like one that does not exist, and `/healthz` and
//! `/metrics` name only the feeds it may read — none on the clients'
//! listener when operators give them a listener of their own.

use crate::common::auth::*;
use crate::common::proxy::Proxy;
use crate::common::*;
use serde_json::{json, Value};

const MISSING: &str = "a token is required: send `Authorization: Bearer <token>`, `?access_token=` or the `rowcast_token` cookie";

fn error(status: u16, code: &str, detail: &str) -> (u16, Value) {
    (status, json!({ "error": code, "detail": detail }))
}

fn member() -> String {
    hs256(json!({"sub": "u1", "room_ids": [1], "exp": now() + 600}))
}

fn admin() -> String {
    hs256(json!({"sub": "root", "role": "admin", "room_ids": [], "exp": now() + 600}))
}

#[tokio::test]
async fn the_token_is_checked_before_anything_else() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t).auth("secret", SECRET).start().await;
    // Unknown and hidden feeds, filters, cursors and parameters: all 401,
    // so a client without a token learns no feed name or filter column.
    for path in [
        "/events/audit",
        "/events/nope",
        "/events",
        "/events?feed=audit",
        "/events?feed=messages&feed=messages",
        "/events/messages?bogus=1",
        "/events/messages?after=x",
        "/feeds/audit",
        "/feeds/nope/rows",
        "/feeds/messages/rows?limit=0",
        "/metrics",
    ] {
        let url = format!("{}{path}", server.url);
        assert_eq!(
            get(&url, None, None).await,
            error(401, "unauthorized", MISSING),
            "{path}"
        );
        assert_eq!(
            get(&url, Some("not.a.token"), None).await,
            error(401, "unauthorized", "the token is not valid: malformed"),
            "{path}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_feed_the_token_may_not_read_is_unknown_on_every_endpoint() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let server = rules(&db.url, &t).auth("secret", SECRET).start().await;
    let base = &server.url;
    let member = member();
    let hidden = error(
        404,
        "unknown_feed",
        "no feed named `audit`; feeds: messages",
    );
    for path in [
        "/events/audit",
        "/events/audit?after=start",
        "/events?feed=audit",
        "/events?feed=messages&feed=audit",
        "/feeds/audit",
        "/feeds/audit/rows",
        "/feeds/audit/rows?after=start",
    ] {
        assert_eq!(
            get(&format!("{base}{path}"), Some(&member), None).await,
            hidden,
            "{path}"
        );
    }
    // Exactly as a feed that does not exist, and lists only readable ones.
    assert_eq!(
        get(&format!("{base}/events/nope"), Some(&member), None).await,
        error(404, "unknown_feed", "no feed named `nope`; feeds: messages")
    );
    assert_eq!(
        get(&format!("{base}/events"), Some(&member), None).await,
        error(
            400,
            "no_feed",
            "no feed requested: add ?feed=<name> (repeat it for several feeds); feeds: messages"
        )
    );
    // An admin reads both, and is told of both.
    let admin = admin();
    assert_eq!(
        get(&format!("{base}/feeds/audit"), Some(&admin), None)
            .await
            .0,
        200
    );
    assert_eq!(
        get(&format!("{base}/events/nope"), Some(&admin), None).await,
        error(
            404,
            "unknown_feed",
            "no feed named `nope`; feeds: messages, audit"
        )
    );

    // A refused value as long as a request target may be is quoted cut short.
    let value = "9".repeat(8_000);
    assert_eq!(
        get(
            &format!("{base}/events/messages?room_id={value}"),
            Some(&member),
            None
        )
        .await,
        error(
            403,
            "forbidden",
            &format!(
                "`room_id={}…` (8008 characters) is outside what the token allows",
                "9".repeat(56)
            )
        )
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_metrics_name_only_the_feeds_a_token_may_read() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let id = db.insert(&t, 1, "x").await.to_string();
    let server = rules(&db.url, &t).auth("secret", SECRET).start().await;
    let health = format!("{}/healthz", server.url);
    let ok = json!({ "status": "ok", "cursor": id });
    wait_health(&server.url, 200).await;
    // A probe without a token, or with a bad one, learns the status only.
    assert_eq!(
        get(&health, None, None).await,
        (200, json!({ "status": "ok" }))
    );
    assert_eq!(
        get(&health, Some("not.a.token"), None).await,
        (200, json!({ "status": "ok" }))
    );
    assert_eq!(
        get(&health, Some(&member()), None).await,
        (200, json!({ "status": "ok", "feeds": { "messages": ok } }))
    );
    assert_eq!(
        get(&health, Some(&admin()), None).await,
        (
            200,
            json!({ "status": "ok", "feeds": { "messages": ok, "audit": ok } })
        )
    );

    let metrics = format!("{}/metrics", server.url);
    let (status, _, text) = get_text(&metrics, Some(&member()), None).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("rowcast_feed_up{feed=\"messages\"} 1\n"),
        "{text}"
    );
    assert!(!text.contains("audit"), "{text}");
    let (_, _, text) = get_text(&metrics, Some(&admin()), None).await;
    assert!(
        text.contains("rowcast_feed_up{feed=\"audit\"} 1\n"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_degraded_server_says_so_without_naming_feeds() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let server = rules(&proxy.url(&db.url), &t)
        .auth("secret", SECRET)
        .start()
        .await;
    proxy.down();
    wait_health(&server.url, 503).await;
    let health = format!("{}/healthz", server.url);
    assert_eq!(
        get(&health, None, None).await,
        (503, json!({ "status": "degraded" }))
    );
    // Both feeds fail, each at its next poll: the first that does makes
    // the server degraded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (status, body) = get(&health, Some(&member()), None).await;
        assert_eq!((status, &body["status"]), (503, &json!("degraded")));
        let feeds: Vec<&String> = body["feeds"].as_object().unwrap().keys().collect();
        assert_eq!(feeds, ["messages"]);
        if body["feeds"]["messages"]["status"] != "ok" || tokio::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(body["feeds"]["messages"]["status"], "failing");
    server.stop().await;
}

#[tokio::test]
async fn the_operators_listener_shows_every_feed_without_a_token() {
    let db = TestDb::new(Kind::Postgres).await;
    let t = db.messages("messages").await;
    let id = db.insert(&t, 1, "x").await.to_string();
    let server = rules(&db.url, &t)
        .auth("secret", SECRET)
        .start_with_metrics_listener()
        .await;
    let ops = server.metrics_url.clone().unwrap();
    let admin = admin();
    // The clients' listener: no metrics, and health without feeds, even
    // for an admin.
    assert_eq!(
        get(&format!("{}/metrics", server.url), Some(&admin), None).await,
        error(404, "not_found", "no route for this path; try /events/{feed}, /events?feed=…, /feeds, /feeds/{feed}/rows, /presence/{feed}, /healthz or /metrics")
    );
    wait_health(&server.url, 200).await;
    assert_eq!(
        get(&format!("{}/healthz", server.url), Some(&admin), None).await,
        (200, json!({ "status": "ok" }))
    );
    // The operators' listener needs no token.
    let ok = json!({ "status": "ok", "cursor": id });
    assert_eq!(
        get(&format!("{ops}/healthz"), None, None).await,
        (
            200,
            json!({ "status": "ok", "feeds": { "messages": ok, "audit": ok } })
        )
    );
    let (status, _, text) = get_text(&format!("{ops}/metrics"), None, None).await;
    assert_eq!(status, 200);
    for feed in ["messages", "audit"] {
        assert!(
            text.contains(&format!("rowcast_feed_up{{feed=\"{feed}\"}} 1\n")),
            "{text}"
        );
    }
    server.stop().await;
}
