//! The hand-written short-polling endpoint that `GET /feeds/{feed}/rows`
//! replaces: `GET /rows?after=N` runs one query per request,
//! `SELECT … WHERE id > N ORDER BY id LIMIT 100`, on a pool of ten
//! connections, and answers `{"rows":[…],"cursor":"…"}`.
//!
//! It runs in the benchmark's process, on a runtime of its own with two
//! worker threads named [`THREAD_NAME`] (as rowcast has one worker per
//! core), so that its CPU time can be told apart from the clients'.

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::runtime::Runtime;

/// The name of the endpoint's threads.
pub const THREAD_NAME: &str = "naive-endpoint";
/// The pool's size, a usual one for a web application.
const CONNECTIONS: u32 = 10;
/// Rows per answer, as rowcast's `limit=100`.
const LIMIT: u32 = 100;

/// The endpoint, serving on 127.0.0.1.
pub struct Naive {
    pub addr: SocketAddr,
    /// Queries run so far.
    queries: Arc<AtomicU64>,
    pool: PgPool,
    /// Always there until dropped.
    runtime: Option<Runtime>,
}

/// What a request needs.
struct Endpoint {
    pool: PgPool,
    sql: String,
    queries: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct Params {
    after: i64,
}

impl Naive {
    /// Connects the pool and starts serving the rows of `table`.
    pub async fn start(url: &str, table: &str) -> anyhow::Result<Naive> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let url = url.to_owned();
        // The pool and the listener belong to the endpoint's runtime.
        let pool = runtime
            .spawn(async move {
                PgPoolOptions::new()
                    .max_connections(CONNECTIONS)
                    .connect(&url)
                    .await
            })
            .await??;
        let listener = runtime
            .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .await??;
        let addr = listener.local_addr()?;
        let queries = Arc::new(AtomicU64::new(0));
        let endpoint = Arc::new(Endpoint {
            pool: pool.clone(),
            sql: format!(
                "SELECT id, row_to_json(t)::text FROM {table} t WHERE id > $1 ORDER BY id LIMIT {LIMIT}"
            ),
            queries: queries.clone(),
        });
        let app = Router::new().route("/rows", get(rows)).with_state(endpoint);
        runtime.spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("rowcast-bench: the naive endpoint failed: {err}");
            }
        });
        Ok(Naive {
            addr,
            queries,
            pool,
            runtime: Some(runtime),
        })
    }

    /// Queries of the table run so far, as the endpoint counts them.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Closes the pool, which ends its backends, and stops serving.
    pub async fn stop(self) {
        if let Some(runtime) = &self.runtime {
            let pool = self.pool.clone();
            let _ = runtime.spawn(async move { pool.close().await }).await;
        }
    }
}

impl Drop for Naive {
    fn drop(&mut self) {
        // Dropping a runtime would wait for it, which an async context
        // must not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `GET /rows?after=N`: one query, the answer built from the JSON that
/// Postgres rendered.
async fn rows(State(endpoint): State<Arc<Endpoint>>, Query(params): Query<Params>) -> Response {
    endpoint.queries.fetch_add(1, Ordering::Relaxed);
    let rows: Vec<(i64, String)> = match sqlx::query_as(&endpoint.sql)
        .bind(params.after)
        .fetch_all(&endpoint.pool)
        .await
    {
        Ok(rows) => rows,
        Err(err) => return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    };
    let cursor = rows.last().map_or(params.after, |&(id, _)| id);
    let mut body = String::with_capacity(40 + rows.iter().map(|(_, j)| j.len() + 1).sum::<usize>());
    body.push_str("{\"rows\":[");
    for (i, (_, json)) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(json);
    }
    let _ = write!(body, "],\"cursor\":\"{cursor}\"}}");
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
