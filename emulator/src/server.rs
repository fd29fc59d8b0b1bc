//! The accept loop and per-connection request handling: routing, parameter
//! validation (the errors Nomad returns before streaming), the modern and legacy
//! response heads, authorization and subscription, then [`crate::stream::run`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::acl::authorize;
use crate::body::{BodyWriter, Delimit};
use crate::config::{Framing, Reject};
use crate::filter::Filter;
use crate::http::{self, HeadError, Request, SimpleResponse};
use crate::query::{self, Topics};
use crate::state::{Gauge, RecordedRequest, Shared, lock};
use crate::stream::{self, ReadSide, StreamEnd, Subscription};
use crate::variables::{Reply, VarRequest, Variables, Watch};

/// The only route.
pub(crate) const STREAM_PATH: &str = "/v1/event/stream";
/// The namespace list, which relays poll to notice namespaces `namespace=*` cannot see.
pub(crate) const NAMESPACES_PATH: &str = "/v1/namespaces";

/// Accepts connections until shutdown.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = until_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => {
                    tracing::debug!(%peer, "connection accepted");
                    let shared = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let _alive = Gauge::new(&shared.alive);
                        let mut shutdown = shared.shutdown.subscribe();
                        tokio::select! {
                            () = serve(&shared, sock) => {}
                            () = until_shutdown(&mut shutdown) => {}
                        }
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Resolves once shutdown was requested.
async fn until_shutdown(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves requests on one connection until it must close.
async fn serve(shared: &Shared, sock: TcpStream) {
    let _ = sock.set_nodelay(true);
    let conn_id = shared.next_conn_id();
    let (mut rd, wr) = sock.into_split();
    let mut wr = Some(wr);
    let mut pending = Vec::new();
    while let Some(mut w) = wr.take() {
        let req = match http::read_request(&mut rd, &mut pending).await {
            Ok(Some(req)) => req,
            Ok(None) | Err(HeadError::Io) => return,
            Err(err) => {
                tracing::debug!(?err, "bad request head");
                let _ = w.write_all(&http::bad_request(&err)).await;
                let _ = w.shutdown().await;
                return;
            }
        };
        let keep = is_variables_path(&req.path);
        let (reusable_body, body) = match req.body_len() {
            Ok(n) => take_body(&mut rd, &mut pending, n, keep).await,
            Err(()) => (false, None),
        };
        record(shared, &req);
        if keep {
            let reply = variables(shared, &req, body).await;
            wr = reply_variables(w, &req, &reply, reusable_body && req.keep_alive()).await;
            continue;
        }
        wr = handle(shared, conn_id, req, &mut rd, &mut pending, w, reusable_body).await;
    }
}

/// Reads a request body of `n` bytes, keeping it when `keep` and it is at most
/// [`MAX_KEPT_BODY`] (else skipping it). Returns whether the connection is still usable, and
/// the body (`None` for no body, as Go's `http.NoBody`, or a skipped one).
async fn take_body(
    rd: &mut OwnedReadHalf,
    pending: &mut Vec<u8>,
    mut n: usize,
    keep: bool,
) -> (bool, Option<Vec<u8>>) {
    let keep = keep && n > 0 && n <= MAX_KEPT_BODY;
    let mut body = Vec::new();
    let from_pending = n.min(pending.len());
    if keep {
        body.extend_from_slice(&pending[..from_pending]);
    }
    pending.drain(..from_pending);
    n -= from_pending;
    let mut chunk = [0u8; 8192];
    while n > 0 {
        match rd.read(&mut chunk[..n.min(8192)]).await {
            Ok(0) | Err(_) => return (false, None),
            Ok(k) => {
                if keep {
                    body.extend_from_slice(&chunk[..k]);
                }
                n -= k;
            }
        }
    }
    (true, keep.then_some(body))
}

/// The largest variables request body read; a variable holds at most 64 KiB of items.
const MAX_KEPT_BODY: usize = 1 << 20;

/// `/v1/vars` and `/v1/var/...` (and `/v1/var/`, which Nomad answers 400).
fn is_variables_path(path: &str) -> bool {
    path == "/v1/vars" || path.starts_with("/v1/var/")
}

/// Serves a variables request ([`crate::variables`]): ACL check, then a blocking read waits
/// for its index to pass `index` (or `wait`), then the request is applied as one raft write.
async fn variables(shared: &Shared, req: &Request, body: Option<Vec<u8>>) -> Reply {
    let pairs = query::parse_query(&req.query);
    let var_req = VarRequest { method: &req.method, path: &req.path, query: &pairs, body: body.as_deref() };
    if let Some(acl) = lock(&shared.acl).as_ref() {
        let token = query::parse_token(&req.headers);
        if !acl.tokens.iter().any(|t| t.management && Some(&t.secret) == token.as_ref()) {
            return Reply {
                status: 403,
                body: "Permission denied".into(),
                json: false,
                index: None,
                next_token: None,
            };
        }
    }
    match Variables::watch(&var_req) {
        Err(reply) => return reply,
        Ok(Watch::None) => {}
        Ok(Watch::Until { min_index, wait }) => {
            let deadline = tokio::time::Instant::now() + wait;
            let mut changed = shared.variables_changed.subscribe();
            let mut shutdown = shared.shutdown.subscribe();
            while lock(&shared.variables).read_index(&var_req) <= min_index {
                tokio::select! {
                    woke = tokio::time::timeout_at(deadline, changed.changed()) => if !matches!(woke, Ok(Ok(()))) { break },
                    () = until_shutdown(&mut shutdown) => break,
                }
            }
        }
    }
    let wall_ns = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    shared.write_variables(|vars, index| {
        let applied = vars.apply(&var_req, index, Instant::now(), wall_ns);
        (applied.reply, applied.event)
    })
}

/// Writes a variables reply, with `X-Nomad-Index` and `X-Nomad-NextToken` as Nomad sets them.
async fn reply_variables(
    wr: OwnedWriteHalf,
    req: &Request,
    answer: &Reply,
    keep_alive: bool,
) -> Option<OwnedWriteHalf> {
    let reply_json = answer.json;
    let content_type = if reply_json { "application/json" } else { "text/plain; charset=utf-8" };
    let resp = SimpleResponse {
        code: answer.status,
        body: &answer.body,
        content_type,
        no_cache: false,
        index: answer.index,
        next_token: answer.next_token.as_deref(),
    };
    reply(wr, req, &resp, keep_alive).await
}

/// Runs the variable lock timers (Nomad's leader-only `lockTTLTimer` and lock-delay
/// callbacks) until shutdown: each due timer is applied as a raft write.
pub(crate) async fn run_lock_timers(shared: Arc<Shared>) {
    const TICK: std::time::Duration = std::time::Duration::from_millis(50);
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = until_shutdown(&mut shutdown) => return,
        }
        while shared.write_variables(|vars, index| {
            let event = vars.expire(Instant::now(), index);
            (event.is_some(), event)
        }) {}
    }
}

fn record(shared: &Shared, req: &Request) {
    let pairs = query::parse_query(&req.query);
    let index = match query::first(&pairs, "index") {
        None | Some("") => None,
        Some(v) => query::atoi(v).ok(),
    };
    let recorded = RecordedRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        index,
        topics: pairs.iter().filter(|(k, _)| k == "topic").map(|(_, v)| v.clone()).collect(),
        namespace: query::first(&pairs, "namespace").map(str::to_string),
        token: query::parse_token(&req.headers),
        accept_encoding: req.header("Accept-Encoding").map(str::to_string),
        http_version: req.proto().to_string(),
        headers: req.headers.clone(),
        at: Instant::now(),
    };
    lock(&shared.requests).push(recorded);
}

/// Handles one request; returns the write half when the connection may be reused.
async fn handle(
    shared: &Shared,
    conn_id: u64,
    req: Request,
    rd: &mut OwnedReadHalf,
    pending: &mut Vec<u8>,
    wr: OwnedWriteHalf,
    reusable_body: bool,
) -> Option<OwnedWriteHalf> {
    let keep_alive = reusable_body && req.keep_alive();
    let plain = "text/plain; charset=utf-8";
    if req.path == NAMESPACES_PATH && req.method == "GET" {
        let resp = list_namespaces(shared, &query::parse_query(&req.query)).await;
        let resp = SimpleResponse {
            code: resp.0,
            body: &resp.1,
            content_type: if resp.0 == 200 { "application/json" } else { plain },
            no_cache: false,
            index: resp.2,
            next_token: None,
        };
        return reply(wr, &req, &resp, keep_alive).await;
    }
    if req.path != STREAM_PATH {
        let resp = SimpleResponse {
            code: 404,
            body: "Invalid URL path",
            content_type: plain,
            no_cache: false,
            index: None,
            next_token: None,
        };
        return reply(wr, &req, &resp, keep_alive).await;
    }
    let pairs = query::parse_query(&req.query);
    let params = match validate(&req, &pairs) {
        Ok(params) => params,
        Err((code, msg)) => {
            tracing::debug!(code, %msg, "stream request rejected");
            shared.count_connection();
            let resp = SimpleResponse {
                code,
                body: &msg,
                content_type: plain,
                no_cache: false,
                index: None,
                next_token: None,
            };
            return reply(wr, &req, &resp, keep_alive).await;
        }
    };
    let fragment_seed =
        shared.config.fragment_writes.map(|seed| seed ^ conn_id.wrapping_mul(0x9E37_79B9_7F4A_7C15));

    match shared.config.framing {
        Framing::Modern => {
            // The status line goes out before authentication (hijacked connection).
            let mut body =
                BodyWriter::new(wr, Delimit::Close, None, fragment_seed, Some(shared.config.write_deadline));
            if body.write_raw(&modern_head(&req)).await.is_err() {
                shared.count_connection();
                return None;
            }
            match subscribe(shared, &params) {
                Ok(sub) => {
                    let _open = Gauge::new(&shared.open_streams);
                    shared.count_connection();
                    let read = ReadSide { rd, pending };
                    stream::run(shared, sub, &mut body, read).await;
                }
                Err(denial) => {
                    tracing::debug!(?denial, "subscription refused after 200");
                    shared.count_connection();
                }
            }
            body.shutdown().await;
            None
        }
        Framing::Legacy => match subscribe(shared, &params) {
            Err(denial) => {
                shared.count_connection();
                let (code, msg) = match denial {
                    Denial::PermissionDenied => {
                        (shared.config.legacy_denial_status, "Permission denied".to_string())
                    }
                    Denial::ServerError(msg) => (500, msg),
                };
                let resp = SimpleResponse {
                    code,
                    body: &msg,
                    content_type: "application/json",
                    no_cache: true,
                    index: None,
                    next_token: None,
                };
                reply(wr, &req, &resp, keep_alive).await
            }
            Ok(sub) => {
                let chunked = req.minor >= 1;
                let delimit = if chunked { Delimit::Chunked } else { Delimit::Close };
                let encoding = req.compression();
                let mut body = BodyWriter::new(wr, delimit, encoding, fragment_seed, None);
                body.defer_head(legacy_head(&req, chunked));
                let _open = Gauge::new(&shared.open_streams);
                shared.count_connection();
                let read = ReadSide { rd, pending };
                let end = stream::run(shared, sub, &mut body, read).await;
                if end == StreamEnd::Reusable && chunked && keep_alive {
                    Some(body.into_inner())
                } else {
                    body.shutdown().await;
                    None
                }
            }
        },
    }
}

/// Writes a complete response; keeps the connection when allowed.
async fn reply(
    mut wr: OwnedWriteHalf,
    req: &Request,
    resp: &SimpleResponse<'_>,
    keep_alive: bool,
) -> Option<OwnedWriteHalf> {
    if wr.write_all(&resp.render(req, keep_alive)).await.is_err() {
        return None;
    }
    if keep_alive {
        Some(wr)
    } else {
        let _ = wr.shutdown().await;
        None
    }
}

/// Validated stream parameters.
#[derive(Debug)]
struct Params {
    index: u64,
    topics: Topics,
    namespace: String,
    token: Option<String>,
}

/// The checks `EventStream` makes before streaming, with Nomad's codes and texts.
fn validate(req: &Request, pairs: &[(String, String)]) -> Result<Params, (u16, String)> {
    if req.method != "GET" {
        return Err((405, "Invalid method".to_string()));
    }
    let raw_index = match query::first(pairs, "index") {
        None | Some("") => "0",
        Some(v) => v,
    };
    let index = query::atoi(raw_index).map_err(|e| (400, format!("Unable to parse index: {e}")))?;
    let topics = query::parse_topics(pairs).map_err(|e| (400, e))?;
    let namespace = match query::first(pairs, "namespace") {
        None | Some("") => "default".to_string(),
        Some(ns) => ns.to_string(),
    };
    Ok(Params {
        // Negative indexes make Nomad write a malformed response; treat them as 0.
        index: u64::try_from(index).unwrap_or(0),
        topics,
        namespace,
        token: query::parse_token(&req.headers),
    })
}

/// Why a subscription was refused.
#[derive(Debug)]
enum Denial {
    PermissionDenied,
    ServerError(String),
}

/// `Namespace.ListNamespaces` as `GET /v1/namespaces` serves it: a blocking query
/// (`parseWait` in `command/agent/http.go`: `wait` a Go duration, else 400 `Invalid wait
/// time`; `index` a u64, else 400 `Invalid index`; with `index` > 0 the answer waits until the
/// namespace table's index passes it, at most `wait`, default and maximum 300 s, per
/// `QueryOptions.TimeToBlock` in `nomad/structs/structs.go`; Nomad adds up to 1/16 of jitter,
/// the emulator does not). `X-Nomad-Index` is the table's index, never 0. Returns the status,
/// the body and the index header.
async fn list_namespaces(shared: &Shared, pairs: &[(String, String)]) -> (u16, String, Option<u64>) {
    const MAX_BLOCK: std::time::Duration = std::time::Duration::from_secs(300);
    let wait = match query::first(pairs, "wait").filter(|w| !w.is_empty()) {
        None => MAX_BLOCK,
        Some(text) => match query::parse_duration(text) {
            Some(wait) if wait.is_zero() => MAX_BLOCK,
            Some(wait) => wait.min(MAX_BLOCK),
            None => return (400, "Invalid wait time".to_owned(), None),
        },
    };
    let min_index = match query::first(pairs, "index").filter(|i| !i.is_empty()) {
        None => 0,
        Some(text) => match text.parse::<u64>() {
            Ok(index) => index,
            Err(_) => return (400, "Invalid index".to_owned(), None),
        },
    };
    if min_index > 0 {
        let mut table = shared.namespaces_index.subscribe();
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(wait, table.wait_for(|index| *index > min_index)) => {}
            () = until_shutdown(&mut shutdown) => {}
        }
    }
    let mut held = shared.namespaces_held.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    tokio::select! {
        _ = held.wait_for(|held| !held) => {}
        () = until_shutdown(&mut shutdown) => {}
    }
    let index = (*shared.namespaces_index.borrow()).max(1);
    let list: Vec<serde_json::Value> = lock(&shared.namespaces)
        .iter()
        .map(|ns| {
            serde_json::json!({
                "Name": ns.name, "Description": "", "Quota": "", "Meta": null,
                "CreateIndex": ns.create_index, "ModifyIndex": ns.create_index,
            })
        })
        .collect();
    (200, serde_json::Value::from(list).to_string(), Some(index))
}

/// `Event.stream`: injected rejection, ACL check, namespace expansion, start position.
fn subscribe(shared: &Shared, params: &Params) -> Result<Subscription, Denial> {
    match lock(&shared.reject).clone() {
        Some(Reject::PermissionDenied) => return Err(Denial::PermissionDenied),
        Some(Reject::ServerError(msg)) => return Err(Denial::ServerError(msg)),
        None => {}
    }
    let namespaces = if params.namespace == "*" {
        lock(&shared.namespaces).iter().map(|ns| ns.name.clone()).collect()
    } else {
        vec![params.namespace.clone()]
    };
    let token = authorize(
        lock(&shared.acl).as_ref(),
        params.token.as_deref(),
        &params.topics,
        &namespaces,
        SystemTime::now(),
    )
    .map_err(|()| Denial::PermissionDenied)?;
    let control = shared.control.subscribe();
    Ok(Subscription {
        filter: Filter::new(params.topics.clone(), &namespaces),
        start_seq: shared.buffer.start_seq(params.index),
        token,
        control,
    })
}

/// The head Nomad ≥ 1.11.3 writes with `http.Response.Write` on the hijacked socket.
fn modern_head(req: &Request) -> Vec<u8> {
    let mut head = format!("{} 200 OK\r\n", req.proto());
    if req.minor >= 1 {
        head.push_str("Connection: close\r\n");
    }
    head.push_str(
        "Cache-Control: no-cache\r\nContent-Type: application/json\r\nVary: Accept-Encoding\r\n\r\n",
    );
    head.into_bytes()
}

/// The head Go's `net/http` writes for the legacy streaming response.
fn legacy_head(req: &Request, chunked: bool) -> Vec<u8> {
    let mut head = format!("{} 200 OK\r\nCache-Control: no-cache\r\n", req.proto());
    if let Some(enc) = req.compression() {
        head.push_str(&format!("Content-Encoding: {}\r\n", enc.token()));
    }
    head.push_str("Content-Type: application/json\r\nVary: Accept-Encoding\r\n");
    head.push_str(&format!("Date: {}\r\n", http::http_date(SystemTime::now())));
    if chunked && !req.keep_alive() {
        head.push_str("Connection: close\r\n");
    }
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}
