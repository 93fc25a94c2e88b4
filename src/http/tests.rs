//! The router on its own, without a database or a socket: requests go in
//! with `oneshot`, answers come out as a client would read them, and rows
//! are published on a feed built in memory.

use super::*;
use crate::cursor::Cursor;
use crate::feed::testing;
use crate::source::Row;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use futures::StreamExt;
use tower::ServiceExt;

fn context() -> (ApiContext, Arc<Feed>) {
    let feed = testing::feed(100, Cursor::At(0));
    let served = Served::new(feed.clone(), Default::default());
    let ctx = ApiContext {
        feeds: Arc::new(vec![served]),
        settings: Arc::new(StreamSettings {
            keep_alive: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            max_limit: 1000,
            max_wait: Duration::from_secs(60),
            cors_origins: Vec::new(),
            send_timeout: Duration::from_secs(30),
        }),
        shutdown: CancellationToken::new(),
        auth: None,
        limits: Arc::new(limits::Limits::new(0, 0, 0)),
        connections: Arc::new(connections::Connections::new(10)),
        metrics_apart: false,
    };
    (ctx, feed)
}

async fn get(ctx: &ApiContext, uri: &str) -> axum::response::Response {
    let mut request = Request::get(uri).body(Body::empty()).unwrap();
    let peer: std::net::SocketAddr = ([127, 0, 0, 1], 4000).into();
    request.extensions_mut().insert(ConnectInfo(peer));
    app(ctx.clone()).oneshot(request).await.unwrap()
}

async fn json(response: axum::response::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn errors_name_the_problem_without_a_database() {
    let (ctx, _) = context();
    assert_eq!(
        json(get(&ctx, "/events/nope").await).await,
        (
            404,
            json!({"error": "unknown_feed", "detail": "no feed named `nope`; feeds: messages"})
        )
    );
    assert_eq!(
        json(get(&ctx, "/events/messages?roomid=1").await).await,
        (
            400,
            json!({"error": "unknown_filter", "detail": "`roomid` is not a filter of feed `messages`; filters: room_id"})
        )
    );
}

#[tokio::test]
async fn feeds_and_health_answer_from_memory() {
    let (ctx, feed) = context();
    feed.publish(
        vec![Row {
            id: 7,
            json: Some("{\"id\":7}".into()),
            filters: vec![Some("1".into())],
            unless_filters: None,
            event: None,
        }],
        Cursor::At(7),
    );
    let (status, body) = json(get(&ctx, "/feeds").await).await;
    assert_eq!(status, 200);
    assert_eq!(body["feeds"][0]["name"], "messages");
    assert_eq!(body["feeds"][0]["cursor"], "7");
    assert_eq!(
        json(get(&ctx, "/healthz").await).await,
        (
            200,
            json!({"status": "ok", "feeds": {"messages": {"status": "ok", "cursor": "7"}}})
        )
    );
    let metrics = get(&ctx, "/metrics").await;
    let text = axum::body::to_bytes(metrics.into_body(), usize::MAX)
        .await
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    assert!(
        text.contains("\nrowcast_feed_up{feed=\"messages\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn a_stream_through_the_router_gets_what_the_feed_publishes() {
    let (ctx, feed) = context();
    let response = get(&ctx, "/events/messages?room_id=1").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body().into_data_stream();
    let opening = body.next().await.unwrap().unwrap();
    assert_eq!(&opening[..], b"retry: 3000\n\nid: 0\n\n");
    let row = |id: i128, room: &str| Row {
        id,
        json: Some(format!("{{\"id\":{id}}}")),
        filters: vec![Some(room.into())],
        unless_filters: None,
        event: None,
    };
    feed.publish(vec![row(1, "2"), row(2, "1")], Cursor::At(2));
    let chunk = body.next().await.unwrap().unwrap();
    assert_eq!(&chunk[..], b"id: 2\ndata: {\"id\":2}\n\n");
    assert_eq!(feed.clients(), 1);
    ctx.shutdown.cancel();
    assert!(body.next().await.is_none(), "the stream ends at shutdown");
}
