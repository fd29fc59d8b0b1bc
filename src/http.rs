//! The operations endpoint on `[http] listen`: `/metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (connected to Nomad and every sink delivering, or 503 with
//! a JSON body naming what is not).
//!
//! A deliberately small HTTP/1.1 server: GET and HEAD only, one request per connection, a
//! bounded request head, a time limit per connection and a bounded number of connections, so
//! a slow or hostile client costs one task and nothing else.

use crate::metrics::Telemetry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_TIME: Duration = Duration::from_secs(2);
/// Time a client has to send its request and read the answer.
const CONNECTION_TIME: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 64;

/// Binds `listen`; fails with the reason (address in use, not permitted).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(listen).await.map_err(|e| {
        format!("cannot listen on {listen} for `[http] listen`: {e}; choose another address or free the port")
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, telemetry: Arc<Telemetry>, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!("serving /metrics, /healthz and /readyz on http://{addr}");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, typically: wait rather than spin.
                    debug!("accepting an HTTP connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("{MAX_CONNECTIONS} HTTP connections open already; answering a new one with 503");
            tokio::spawn(async move {
                let mut stream = stream;
                let busy = respond(&mut stream, "503 Service Unavailable", "text/plain", b"busy\n", true);
                let _ = tokio::time::timeout(HEAD_TIME, busy).await;
            });
            continue;
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIME, answer(stream, telemetry)).await;
            drop(slot);
        });
    }
}

async fn answer(mut stream: TcpStream, telemetry: Arc<Telemetry>) -> std::io::Result<()> {
    let Ok(head) = tokio::time::timeout(HEAD_TIME, read_head(&mut stream)).await else {
        return respond(&mut stream, "408 Request Timeout", "text/plain", b"", true).await;
    };
    let Some(head) = head? else {
        return respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"", true).await;
    };
    if head.is_empty() {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let with_body = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        let head = "HTTP/1.1 405 Method Not Allowed\r\nallow: GET, HEAD\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        stream.write_all(head.as_bytes()).await?;
        return stream.shutdown().await;
    }
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => match tokio::task::spawn_blocking(move || telemetry.render()).await {
            Ok(text) => {
                let text = crate::redact::scrub(&text);
                let content_type = "text/plain; version=0.0.4; charset=utf-8";
                respond(&mut stream, "200 OK", content_type, text.as_bytes(), with_body).await
            }
            Err(_) => respond(&mut stream, "500 Internal Server Error", "text/plain", b"", with_body).await,
        },
        "/healthz" => respond(&mut stream, "200 OK", "text/plain", b"ok\n", with_body).await,
        "/readyz" => {
            let problems = telemetry.not_ready();
            let body = serde_json::json!({ "ready": problems.is_empty(), "not_ready": problems }).to_string();
            let body = crate::redact::scrub(&body);
            let status = if problems.is_empty() { "200 OK" } else { "503 Service Unavailable" };
            respond(&mut stream, status, "application/json", body.as_bytes(), with_body).await
        }
        _ => {
            respond(&mut stream, "404 Not Found", "text/plain", b"/metrics, /healthz or /readyz\n", with_body)
                .await
        }
    }
}

/// Reads up to the blank line that ends a request head (CRLF or bare LF). `None` when the
/// head is too long; an empty head when the client closed first.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(Some(head));
        }
        head.extend_from_slice(&chunk[..read]);
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}
