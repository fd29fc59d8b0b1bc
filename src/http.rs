//! The operations endpoint on `[http] listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (connected to Nomad and every sink delivering, or 503 with
//! a JSON body naming what is not).
//!
//! Routing is axum's; connections are served by hyper's HTTP/1.1 server under limits that
//! keep a slow or hostile client from costing more than one connection slot for a bounded
//! time:
//!
//! - at most `[http] max_connections` connections at once (default 64); one over the limit
//!   is closed as soon as it is accepted, and counted;
//! - a request head must arrive within [`HEADER_TIME`], and the same limit closes a kept-alive
//!   connection that sends nothing ([hyper's `header_read_timeout`], which restarts before
//!   each request);
//! - a request head is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] header fields (hyper
//!   answers 431 past them);
//! - a connection lives at most [`CONNECTION_TIME`], however busy (then, as when the relay
//!   stops, it gets [`DRAIN_TIME`] to finish the request in hand).
//!
//! Everything the endpoint answers passes [`crate::redact::scrub`] first.
//!
//! [hyper's `header_read_timeout`]: https://docs.rs/hyper/1/hyper/server/conn/http1/struct.Builder.html#method.header_read_timeout

use crate::metrics::Telemetry;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Time a client has to send a whole request head, and the longest a kept-alive connection
/// may sit idle between requests.
pub const HEADER_TIME: Duration = Duration::from_secs(5);
/// Longest request head read, in bytes (hyper's read buffer; its minimum is 8 KiB).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in one request.
pub const MAX_HEADERS: usize = 32;
/// Longest a connection is served, however many requests it sends.
pub const CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Time a connection gets to finish the request in hand when it is closed (its time is up,
/// or the relay stops; the process's exit closes whatever is still open).
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The endpoint's own counters, rendered with the other metrics.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections being served now.
    pub open_connections: AtomicU64,
    /// Connections closed unanswered because `max_connections` were open.
    pub refused_connections: AtomicU64,
}

/// Binds `listen`; fails with the reason (address in use, not permitted).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!("cannot listen on {listen} for `[http] listen`: {e}; choose another address or free the port")
    })
}

/// Serves until `shutdown` is cancelled, at most `max_connections` connections at once.
pub async fn serve(
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(
            "serving /metrics, /healthz and /readyz on http://{addr} (at most {max_connections} connections)"
        );
    }
    let stats = telemetry.http.clone();
    let routes = router(telemetry);
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    debug!("accepting an HTTP connection failed: {e}");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused_connections.fetch_add(1, Ordering::Relaxed);
            debug!(
                "{max_connections} HTTP connections open already; closing a new one (`[http] max_connections`)"
            );
            continue;
        };
        let service = TowerToHyperService::new(routes.clone());
        let (stats, shutdown) = (stats.clone(), shutdown.clone());
        tokio::spawn(async move {
            // Holds the slot and the count together, released however the task ends.
            let _open = OpenConnection::new(slot, stats);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .max_buf_size(MAX_HEAD)
                .max_headers(MAX_HEADERS)
                .serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep(CONNECTION_TIME) => {}
                _ = shutdown.cancelled() => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(DRAIN_TIME, connection).await;
        });
    }
}

/// A connection being served: its slot under `max_connections` and its place in
/// `open_connections`, given back together when dropped.
struct OpenConnection {
    _slot: tokio::sync::OwnedSemaphorePermit,
    stats: Arc<HttpStats>,
}

impl OpenConnection {
    fn new(slot: tokio::sync::OwnedSemaphorePermit, stats: Arc<HttpStats>) -> Self {
        stats.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection { _slot: slot, stats }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The three paths; `GET` and `HEAD` only (axum answers 405 with `Allow` otherwise).
fn router(telemetry: Arc<Telemetry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .fallback(|| async { (StatusCode::NOT_FOUND, "/metrics, /healthz or /readyz\n") })
        .with_state(telemetry)
}

async fn metrics(State(telemetry): State<Arc<Telemetry>>) -> Response {
    // Rendering reads the journal directory's size from the disk.
    match tokio::task::spawn_blocking(move || telemetry.render()).await {
        Ok(text) => {
            let content_type = "text/plain; version=0.0.4; charset=utf-8";
            ([(header::CONTENT_TYPE, content_type)], crate::redact::scrub(&text).into_owned()).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn readiness(State(telemetry): State<Arc<Telemetry>>) -> Response {
    let problems = telemetry.not_ready();
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body =
        serde_json::json!({ "ready": problems.is_empty(), "role": telemetry.role(), "not_ready": problems })
            .to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], crate::redact::scrub(&body).into_owned())
        .into_response()
}
