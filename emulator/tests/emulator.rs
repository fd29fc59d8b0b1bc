//! End-to-end tests of the emulator over real TCP connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::{connect_small, get, raw_request, send, within};
use nomad_emulator::{AclConfig, AclToken, Batch, Cut, Emulator, EmulatorConfig, Event, Framing, Reject};

const STREAM: &str = "/v1/event/stream";
const CLOSED: &str = "subscription closed by server, client should resubscribe";

fn config(framing: Framing) -> EmulatorConfig {
    EmulatorConfig { framing, heartbeat_interval: Duration::from_secs(3600), ..EmulatorConfig::default() }
}

async fn start(framing: Framing) -> Emulator {
    Emulator::start(config(framing)).await.unwrap()
}

fn ev(topic: &str, key: &str, ns: &str, fks: Option<&[&str]>) -> Event {
    Event::new(
        topic,
        "TestType",
        key,
        ns,
        fks.map(|f| f.iter().map(|s| s.to_string()).collect()),
        format!(r#"{{"{topic}":{{"ID":"{key}"}}}}"#),
    )
}

fn job(index: u64, key: &str) -> Batch {
    Batch::new(index, vec![ev("Job", key, "default", None)])
}

// ---------------------------------------------------------------------------
// Framing

#[tokio::test]
async fn modern_head_first_heartbeat_data_and_eof_on_clean_cut() {
    let emu = start(Framing::Modern).await;
    let (b1, b2, b3) = (job(10, "a"), job(20, "b"), job(30, "c"));
    emu.publish(b1.clone());
    emu.publish(b2.clone());
    let mut resp =
        within(get(emu.addr(), &format!("{STREAM}?index=0"), &[("Accept-Encoding", "gzip")])).await;
    assert_eq!(resp.status_line, "HTTP/1.1 200 OK");
    let names: Vec<&str> = resp.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["Connection", "Cache-Control", "Content-Type", "Vary"]);
    assert_eq!(resp.header("Connection"), Some("close"));
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.header("Cache-Control"), Some("no-cache"));
    assert_eq!(resp.header("Content-Encoding"), None, "modern never compresses");
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    assert_eq!(within(resp.read_line()).await, Some(b1.to_line()));
    assert_eq!(within(resp.read_line()).await, Some(b2.to_line()));
    emu.wait_for_connections(1).await;
    assert_eq!(emu.open_streams(), 1);
    emu.publish(b3.clone());
    assert_eq!(within(resp.read_line()).await, Some(b3.to_line()));
    emu.cut_connections(Cut::Clean);
    assert_eq!(within(resp.read_line()).await, None);
    assert!(resp.eof);
    assert_eq!(resp.rest().await, "");
    within(emu.wait_for_open_streams(0)).await;
    assert_eq!(emu.last_index(), 30);
    assert_eq!(emu.published(), vec![b1, b2, b3]);
}

#[tokio::test]
async fn http10_request_gets_http10_status_line() {
    let emu = start(Framing::Modern).await;
    let mut resp = within(raw_request(emu.addr(), "GET /v1/event/stream HTTP/1.0\r\n\r\n")).await;
    assert_eq!(resp.status_line, "HTTP/1.0 200 OK");
    assert_eq!(resp.header("Connection"), None);
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
}

#[tokio::test]
async fn legacy_gzip_chunked_frames_and_appended_error_text() {
    let emu = start(Framing::Legacy).await;
    let b1 = job(5, "web");
    emu.publish(b1.clone());
    let mut resp = within(get(emu.addr(), STREAM, &[("Accept-Encoding", "gzip, deflate")])).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(resp.header("Content-Encoding"), Some("gzip"));
    assert_eq!(resp.header("Content-Type"), Some("application/json"));
    assert_eq!(resp.header("Vary"), Some("Accept-Encoding"));
    assert!(resp.header("Date").is_some());
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    assert_eq!(within(resp.read_line()).await, Some(b1.to_line()));
    emu.wait_for_connections(1).await;
    emu.cut_connections(Cut::Clean);
    assert_eq!(within(resp.rest()).await, CLOSED);
    assert!(resp.terminated, "the chunked body ends with the last chunk");
}

#[tokio::test]
async fn legacy_plain_body_ends_and_connection_is_reused() {
    let emu = start(Framing::Legacy).await;
    let mut resp = within(get(emu.addr(), &format!("{STREAM}?topic=Job"), &[])).await;
    assert_eq!(resp.header("Content-Encoding"), None);
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    emu.wait_for_connections(1).await;
    emu.cut_connections(Cut::Clean);
    assert_eq!(within(resp.rest()).await, CLOSED);
    assert!(resp.terminated && !resp.eof);
    let mut again = within(resp.next_request("GET", &format!("{STREAM}?index=x"))).await;
    assert_eq!(again.status, 400);
    assert_eq!(
        within(again.rest()).await,
        "Unable to parse index: strconv.Atoi: parsing \"x\": invalid syntax"
    );
}

#[tokio::test]
async fn heartbeats_come_from_a_free_running_ticker() {
    let period = Duration::from_millis(300);
    let emu = Emulator::start(EmulatorConfig { heartbeat_interval: period, ..EmulatorConfig::default() })
        .await
        .unwrap();
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    for _ in 0..3 {
        assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    }
    let last_heartbeat = std::time::Instant::now();
    // Data half-way through a period: a ticker reset by data would wait a whole period
    // after it; Nomad's free-running one sends the next heartbeat on its schedule.
    tokio::time::sleep(period / 2).await;
    emu.publish(job(3, "a"));
    assert_eq!(within(resp.read_data_line()).await, Some(job(3, "a").to_line()));
    let data_at = std::time::Instant::now();
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    let after_data = data_at.elapsed();
    assert!(
        after_data < period * 5 / 6,
        "the heartbeat came {after_data:?} after the data ({:?} after the previous one): the ticker was reset",
        last_heartbeat.elapsed()
    );
}

// ---------------------------------------------------------------------------
// Buffer start positions (StartAtClosest)

/// Publishes `batches`, subscribes with `index`, and returns the data lines received
/// before a marker published after the subscription.
async fn lines_for(batches: &[Batch], buffer_size: usize, index: u64) -> Vec<String> {
    let emu = Emulator::start(EmulatorConfig { buffer_size, ..config(Framing::Modern) }).await.unwrap();
    for b in batches {
        emu.publish(b.clone());
    }
    let mut resp = within(get(emu.addr(), &format!("{STREAM}?index={index}"), &[])).await;
    emu.wait_for_connections(1).await;
    let marker = job(99_999, "marker");
    emu.publish(marker.clone());
    let mut lines = Vec::new();
    loop {
        let line = within(resp.read_data_line()).await.unwrap();
        if line == marker.to_line() {
            return lines;
        }
        lines.push(line);
    }
}

#[tokio::test]
async fn index_semantics_follow_start_at_closest() {
    let b10 = job(10, "a");
    let b20_job = job(20, "b");
    let b20_eval = Batch::new(20, vec![ev("Evaluation", "e", "default", Some(&["b", ""]))]);
    let b30 = job(30, "c");
    let all = [b10.clone(), b20_job.clone(), b20_eval.clone(), b30.clone()];
    let lines = |bs: &[&Batch]| bs.iter().map(|b| b.to_line()).collect::<Vec<_>>();

    // index=0: the whole buffer.
    assert_eq!(lines_for(&all, 100, 0).await, lines(&[&b10, &b20_job, &b20_eval, &b30]));
    // Exact index: the first item with it, then its same-index sibling.
    assert_eq!(lines_for(&all, 100, 20).await, lines(&[&b20_job, &b20_eval, &b30]));
    // Between two indexes: the first item above.
    assert_eq!(lines_for(&all, 100, 15).await, lines(&[&b20_job, &b20_eval, &b30]));
    assert_eq!(lines_for(&all, 100, 25).await, lines(&[&b30]));
    // Future index: the tail, although its index is lower.
    assert_eq!(lines_for(&all, 100, 31).await, lines(&[&b30]));
    // Too old (head evicted): silently the head.
    assert_eq!(lines_for(&all, 3, 5).await, lines(&[&b20_job, &b20_eval, &b30]));
    assert_eq!(lines_for(&all, 3, 10).await, lines(&[&b20_job, &b20_eval, &b30]));
    // Empty buffer: only what comes next.
    assert_eq!(lines_for(&[], 100, 7).await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Filtering

fn mixed_batch(index: u64) -> Batch {
    Batch::new(
        index,
        vec![
            ev("Job", "web", "default", None),
            ev("Allocation", "a1", "default", Some(&["web", "d1"])),
            ev("Node", "n1", "", None),
            ev("Job", "api", "prod", None),
        ],
    )
}

async fn first_data_line(emu: &Emulator, query: &str, n: u64) -> serde_json::Value {
    let mut resp = within(get(emu.addr(), &format!("{STREAM}?{query}"), &[])).await;
    emu.wait_for_connections(n).await;
    emu.publish(mixed_batch(100 + n));
    loop {
        // Earlier batches are replayed first (index=0 starts at the head).
        let frame: serde_json::Value =
            serde_json::from_str(&within(resp.read_data_line()).await.unwrap()).unwrap();
        if frame["Index"] == 100 + n {
            return frame;
        }
    }
}

fn keys(frame: &serde_json::Value) -> Vec<String> {
    frame["Events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}/{}", e["Topic"].as_str().unwrap(), e["Key"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn filter_quirks() {
    let emu = Emulator::start(EmulatorConfig {
        namespaces: vec!["default".into(), "prod".into()],
        ..config(Framing::Modern)
    })
    .await
    .unwrap();
    // Wildcard lost when mixed with a key on the same topic.
    let f = first_data_line(&emu, "topic=Job&topic=Job:web", 1).await;
    assert_eq!(keys(&f), ["Job/web"]);
    // An event matching two requested keys appears twice in the frame.
    let f = first_data_line(&emu, "topic=Allocation:web&topic=Allocation:d1", 2).await;
    assert_eq!(keys(&f), ["Allocation/a1", "Allocation/a1"]);
    // Default namespace gate: "" passes, other namespaces do not.
    let f = first_data_line(&emu, "", 3).await;
    assert_eq!(keys(&f), ["Job/web", "Allocation/a1", "Node/n1"]);
    // Percent-encoded keys.
    let f = first_data_line(&emu, "topic=Allocation%3Ad1", 4).await;
    assert_eq!(keys(&f), ["Allocation/a1"]);
    let f = first_data_line(&emu, "topic=Job%3Aapi&namespace=prod", 5).await;
    assert_eq!(keys(&f), ["Job/api"]);
    // namespace=* expands to the namespaces existing now.
    let f = first_data_line(&emu, "namespace=*", 6).await;
    assert_eq!(keys(&f), ["Job/web", "Allocation/a1", "Node/n1", "Job/api"]);
    assert_eq!(f["Index"], 106);
    assert!(f["Events"].as_array().unwrap().iter().all(|e| e["Index"] == 106));
}

#[tokio::test]
async fn star_namespace_list_is_frozen_and_filtered_lines_are_skipped() {
    let emu = start(Framing::Modern).await;
    let mut old = within(get(emu.addr(), &format!("{STREAM}?namespace=*"), &[])).await;
    emu.wait_for_connections(1).await;
    emu.set_namespaces(vec!["default".into(), "new".into()]);
    let mut fresh = within(get(emu.addr(), &format!("{STREAM}?namespace=*"), &[])).await;
    emu.wait_for_connections(2).await;
    let in_new = Batch::new(7, vec![ev("Job", "x", "new", None)]);
    let marker = job(8, "m");
    emu.publish(in_new.clone());
    emu.publish(marker.clone());
    assert_eq!(within(old.read_data_line()).await, Some(marker.to_line()));
    assert_eq!(within(fresh.read_data_line()).await, Some(in_new.to_line()));
    assert_eq!(within(fresh.read_data_line()).await, Some(marker.to_line()));
}

#[tokio::test]
async fn namespace_list_is_a_blocking_query_with_create_indexes() {
    let emu = start(Framing::Modern).await;
    let addr = emu.addr();
    let list = |mut r: common::Response| async move {
        let index = r.header("X-Nomad-Index").map(str::to_owned);
        let body: serde_json::Value = serde_json::from_str(&r.rest().await).unwrap();
        let names: Vec<(String, u64)> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|ns| (ns["Name"].as_str().unwrap().to_owned(), ns["CreateIndex"].as_u64().unwrap()))
            .collect();
        (r.status, index, names)
    };
    let now = within(list(within(get(addr, "/v1/namespaces", &[])).await)).await;
    assert_eq!(now, (200, Some("1".to_owned()), vec![("default".to_owned(), 1)]));

    // A query at the table's index waits for the next write to the table.
    let blocked =
        tokio::spawn(async move { list(get(addr, "/v1/namespaces?index=1&wait=60s", &[]).await).await });
    within(async {
        while !emu.requests().iter().any(|r| r.query.contains("wait=60s")) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    emu.create_namespace("team-b", 42);
    let after = within(blocked).await.unwrap();
    assert_eq!(
        after,
        (200, Some("42".to_owned()), vec![("default".to_owned(), 1), ("team-b".to_owned(), 42)])
    );
    assert_eq!(emu.last_index(), 42, "a namespace write takes a raft index");

    // Nothing changes: the query returns when `wait` runs out, with the same index.
    let started = std::time::Instant::now();
    let idle = within(list(within(get(addr, "/v1/namespaces?index=42&wait=200ms", &[])).await)).await;
    assert_eq!(idle.1.as_deref(), Some("42"));
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "returned before `wait`: {:?}",
        started.elapsed()
    );

    let mut bad = within(get(addr, "/v1/namespaces?wait=5", &[])).await;
    assert_eq!((bad.status, within(bad.rest()).await.as_str()), (400, "Invalid wait time"));
    let mut bad = within(get(addr, "/v1/namespaces?index=-1", &[])).await;
    assert_eq!((bad.status, within(bad.rest()).await.as_str()), (400, "Invalid index"));
}

// ---------------------------------------------------------------------------
// Parameter errors and request recording

#[tokio::test]
async fn parameter_errors_and_recorded_requests() {
    let emu = start(Framing::Modern).await;
    let addr = emu.addr();
    let mut r = within(get(addr, &format!("{STREAM}?topic=Job:a:b"), &[])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("Content-Type"), Some("text/plain; charset=utf-8"));
    assert_eq!(
        within(r.rest()).await,
        "Invalid topic query: error parsing topics: Invalid key value pair for topic, topic: Job:a:b"
    );
    let mut r = within(get(addr, &format!("{STREAM}?index=abc"), &[])).await;
    assert_eq!(
        (r.status, within(r.rest()).await.as_str()),
        (400, "Unable to parse index: strconv.Atoi: parsing \"abc\": invalid syntax")
    );
    let mut r = within(get(addr, &format!("{STREAM}?index=99999999999999999999"), &[])).await;
    assert_eq!(
        within(r.rest()).await,
        "Unable to parse index: strconv.Atoi: parsing \"99999999999999999999\": value out of range"
    );
    let mut r = within(send(common::connect(addr).await, "POST", STREAM, &[])).await;
    assert_eq!((r.status, within(r.rest()).await.as_str()), (405, "Invalid method"));
    let r = within(get(addr, "/v1/jobs", &[])).await;
    assert_eq!(r.status, 404);
    let mut r = within(raw_request(addr, "GET /v1/event/stream HTTP/1.1\r\n\r\n")).await;
    assert_eq!(r.status, 400, "HTTP/1.1 without Host");
    assert!(within(r.rest()).await.contains("missing required Host header"));
    let mut r = within(raw_request(addr, "NONSENSE\r\n\r\n")).await;
    assert_eq!(r.status, 400);
    let _ = within(r.rest()).await;
    assert_eq!(emu.connection_count(), 4, "404 and unparsable heads are not stream requests");

    let _ok = within(get(
        addr,
        &format!("{STREAM}?topic=Job&topic=Allocation%3Ax&index=-4&namespace=prod&region=eu"),
        &[("X-Nomad-Token", " secret "), ("Accept-Encoding", "gzip")],
    ))
    .await;
    emu.wait_for_connections(5).await;
    let reqs = emu.requests();
    assert_eq!(reqs.len(), 6, "unparsable heads are not recorded");
    let last = reqs.last().unwrap();
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, STREAM);
    assert_eq!(last.index, Some(-4));
    assert_eq!(last.topics, ["Job", "Allocation:x"]);
    assert_eq!(last.namespace.as_deref(), Some("prod"));
    assert_eq!(last.token.as_deref(), Some("secret"));
    assert_eq!(last.accept_encoding.as_deref(), Some("gzip"));
    assert_eq!(reqs[1].index, None);
}

// ---------------------------------------------------------------------------
// ACL

fn acl() -> AclConfig {
    acl_expiring_at(SystemTime::now() + Duration::from_millis(800))
}

fn acl_expiring_at(expiry: SystemTime) -> AclConfig {
    AclConfig {
        tokens: vec![
            AclToken { secret: "mgmt".into(), management: true, ..AclToken::default() },
            AclToken {
                secret: "reader".into(),
                namespace_capabilities: HashMap::from([(
                    "default".to_string(),
                    vec!["read-job".to_string()],
                )]),
                ..AclToken::default()
            },
            AclToken {
                secret: "short".into(),
                management: true,
                expires_at: Some(expiry),
                ..AclToken::default()
            },
        ],
    }
}

async fn start_acl(framing: Framing, denial: u16) -> Emulator {
    Emulator::start(EmulatorConfig { acl: Some(acl()), legacy_denial_status: denial, ..config(framing) })
        .await
        .unwrap()
}

#[tokio::test]
async fn modern_acl_denial_is_200_then_eof_without_heartbeat() {
    let emu = start_acl(Framing::Modern, 403).await;
    let mut denied = within(get(emu.addr(), STREAM, &[("X-Nomad-Token", "reader")])).await;
    assert_eq!(denied.status, 200);
    assert_eq!(within(denied.rest()).await, "");
    assert!(denied.eof);
    let mut anonymous = within(get(emu.addr(), &format!("{STREAM}?topic=Job"), &[])).await;
    assert_eq!(within(anonymous.rest()).await, "");
    let mut ok = within(get(
        emu.addr(),
        &format!("{STREAM}?topic=Job&topic=Allocation"),
        &[("Authorization", "Bearer reader")],
    ))
    .await;
    assert_eq!(within(ok.read_line()).await.as_deref(), Some("{}"));
    let mut ok = within(get(emu.addr(), STREAM, &[("X-Nomad-Token", "mgmt")])).await;
    assert_eq!(within(ok.read_line()).await.as_deref(), Some("{}"));
}

#[tokio::test]
async fn legacy_acl_denial_is_a_real_status() {
    for status in [403, 500] {
        let emu = start_acl(Framing::Legacy, status).await;
        let mut r = within(get(
            emu.addr(),
            &format!("{STREAM}?topic=Job&namespace=*"),
            &[("X-Nomad-Token", "unknown")],
        ))
        .await;
        assert_eq!(r.status, status);
        assert_eq!(within(r.rest()).await, "Permission denied");
        // Node needs node:read, which "reader" lacks.
        let mut r =
            within(get(emu.addr(), &format!("{STREAM}?topic=Node"), &[("X-Nomad-Token", "reader")])).await;
        assert_eq!(r.status, status);
        let _ = within(r.rest()).await;
    }
}

#[tokio::test]
async fn token_expiry_and_deletion_end_legacy_streams() {
    let expiry = SystemTime::now() + Duration::from_millis(800);
    let emu =
        Emulator::start(EmulatorConfig { acl: Some(acl_expiring_at(expiry)), ..config(Framing::Legacy) })
            .await
            .unwrap();
    let mut short = within(get(emu.addr(), STREAM, &[("X-Nomad-Token", "short")])).await;
    let mut reader =
        within(get(emu.addr(), &format!("{STREAM}?topic=Job"), &[("X-Nomad-Token", "reader")])).await;
    assert_eq!(within(short.read_line()).await.as_deref(), Some("{}"));
    assert_eq!(within(reader.read_line()).await.as_deref(), Some("{}"));
    // Expiry is a point in time: wait for it to pass, then send a data batch.
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(20)).await;
    emu.publish(job(1, "a"));
    assert_eq!(within(short.rest()).await, "ACL token expired");
    assert_eq!(within(reader.read_line()).await, Some(job(1, "a").to_line()));
    emu.remove_token("reader");
    assert_eq!(within(reader.rest()).await, CLOSED);
    let mut again =
        within(get(emu.addr(), &format!("{STREAM}?topic=Job"), &[("X-Nomad-Token", "reader")])).await;
    assert_eq!(again.status, 403);
    let _ = within(again.rest()).await;
}

#[tokio::test]
async fn injected_rejections() {
    let emu = start(Framing::Modern).await;
    emu.set_reject(Some(Reject::PermissionDenied));
    let mut r = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(within(r.rest()).await, "");

    let emu = start(Framing::Legacy).await;
    emu.set_reject(Some(Reject::ServerError("No path to region".into())));
    let mut r = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(r.status, 500);
    assert_eq!(within(r.rest()).await, "No path to region");
    emu.set_reject(Some(Reject::PermissionDenied));
    let r = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(r.status, 403);
    emu.set_reject(None);
    let mut r = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(within(r.read_line()).await.as_deref(), Some("{}"));
    assert_eq!(emu.connection_count(), 3);
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn lagging_subscriber_gets_event_dropped_from_buffer() {
    for framing in [Framing::Modern, Framing::Legacy] {
        let emu = Emulator::start(EmulatorConfig { buffer_size: 4, ..config(framing) }).await.unwrap();
        let mut resp = within(get(emu.addr(), STREAM, &[])).await;
        assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
        // This single-threaded test runtime does not run the stream task while
        // publishing, so the subscriber falls 10 batches behind a buffer of 4.
        for i in 1..=10 {
            emu.publish(job(i, "x"));
        }
        let rest = within(resp.rest()).await;
        match framing {
            Framing::Modern => assert_eq!(rest, ""),
            Framing::Legacy => assert_eq!(rest, "event dropped from buffer"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_blocks_neither_publish_nor_other_streams() {
    let emu = Emulator::start(EmulatorConfig { buffer_size: 8, ..config(Framing::Legacy) }).await.unwrap();
    let slow = within(send(connect_small(emu.addr()).await, "GET", STREAM, &[])).await;
    let fast = within(get(emu.addr(), STREAM, &[])).await;
    emu.wait_for_connections(2).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut fast = fast;
        while let Some(line) = fast.read_data_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let payload = format!(r#"{{"Job":{{"Blob":"{}"}}}}"#, "x".repeat(256 * 1024));
    let mut sent = Vec::new();
    for i in 1..=60u64 {
        let b =
            Batch::new(i, vec![Event::new("Job", "JobRegistered", "j", "default", None, payload.clone())]);
        emu.publish(b.clone());
        sent.push(b.to_line());
        // Pace on the fast reader so that it never lags; the slow one does.
        assert_eq!(within(rx.recv()).await.as_ref(), sent.last());
    }
    let mut slow = slow;
    let mut got = 0;
    while let Some(line) = within(slow.read_line()).await {
        if line != "{}" {
            got += 1;
        }
    }
    assert!(got < 60, "the slow reader was dropped after {got} lines");
    assert_eq!(within(slow.rest()).await, "event dropped from buffer");
    assert!(slow.terminated);
    reader.abort();
}

#[tokio::test]
async fn slow_reader_hits_the_modern_write_deadline() {
    let emu = Emulator::start(EmulatorConfig {
        write_deadline: Duration::from_millis(200),
        ..config(Framing::Modern)
    })
    .await
    .unwrap();
    let _stuck = within(send(connect_small(emu.addr()).await, "GET", STREAM, &[])).await;
    emu.wait_for_connections(1).await;
    let payload = format!(r#"{{"Job":{{"Blob":"{}"}}}}"#, "y".repeat(512 * 1024));
    for i in 1..=40 {
        emu.publish(Batch::new(
            i,
            vec![Event::new("Job", "JobRegistered", "j", "default", None, payload.clone())],
        ));
    }
    within(emu.wait_for_open_streams(0)).await;
}

#[tokio::test]
async fn fragmented_writes_still_yield_identical_lines() {
    for (framing, enc) in [(Framing::Modern, ""), (Framing::Legacy, "gzip"), (Framing::Legacy, "")] {
        let emu =
            Emulator::start(EmulatorConfig { fragment_writes: Some(7), ..config(framing) }).await.unwrap();
        let mut generator = emu.generator(nomad_emulator::GeneratorConfig { seed: 3, ..Default::default() });
        let mut expected = Vec::new();
        for _ in 0..15 {
            for b in generator.next_batches() {
                expected.push(b.to_line());
                emu.publish(b);
            }
        }
        let mut resp = within(get(emu.addr(), STREAM, &[("Accept-Encoding", enc)])).await;
        for line in &expected {
            assert_eq!(within(resp.read_data_line()).await.as_ref(), Some(line));
        }
    }
}

#[tokio::test]
async fn stalled_server_sends_head_but_nothing_else() {
    let emu = start(Framing::Modern).await;
    emu.publish(job(1, "a"));
    emu.set_stalled(true);
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(resp.status, 200);
    // Absence of output can only be observed over some time.
    assert!(resp.silent_for(Duration::from_millis(300)).await);
    emu.set_stalled(false);
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    assert_eq!(within(resp.read_line()).await, Some(job(1, "a").to_line()));

    let emu = start(Framing::Legacy).await;
    emu.set_stalled(true);
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(resp.header("Transfer-Encoding"), Some("chunked"));
    assert!(resp.silent_for(Duration::from_millis(200)).await);
    emu.set_stalled(false);
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
}

#[tokio::test]
async fn mid_line_cut_sends_half_a_line_then_closes() {
    let big = Batch::new(9, vec![ev("Job", &"k".repeat(500), "default", None)]);
    let line = big.to_line();
    let emu = start(Framing::Modern).await;
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    emu.wait_for_connections(1).await;
    emu.cut_connections(Cut::MidLine);
    emu.publish(big.clone());
    assert_eq!(within(resp.rest()).await, line[..line.len() / 2]);
    assert!(resp.eof);

    let emu = start(Framing::Legacy).await;
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    emu.wait_for_connections(1).await;
    emu.cut_connections(Cut::MidLine);
    emu.publish(big);
    assert_eq!(within(resp.rest()).await, line[..line.len() / 2]);
    assert!(!resp.terminated && resp.eof);
}

#[tokio::test]
async fn restart_closes_streams_and_optionally_empties_the_buffer() {
    let emu = start(Framing::Legacy).await;
    emu.publish(job(1, "a"));
    emu.publish(job(2, "b"));
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(within(resp.read_data_line()).await, Some(job(1, "a").to_line()));
    assert_eq!(within(resp.read_data_line()).await, Some(job(2, "b").to_line()));
    emu.restart(false);
    assert_eq!(within(resp.rest()).await, CLOSED);
    assert!(within(resp.closed()).await, "a restart closes the connection");
    assert!(emu.buffered().is_empty());

    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    emu.wait_for_connections(2).await;
    emu.publish(job(5, "c"));
    assert_eq!(within(resp.read_data_line()).await, Some(job(5, "c").to_line()));
    emu.restart(true);
    assert_eq!(within(resp.rest()).await, CLOSED);
    let mut resp = within(get(emu.addr(), STREAM, &[])).await;
    assert_eq!(within(resp.read_data_line()).await, Some(job(5, "c").to_line()));
    assert_eq!(emu.published().len(), 3);
    assert_eq!(emu.last_index(), 5);
}

#[tokio::test]
async fn shutdown_closes_connections() {
    let emu = start(Framing::Modern).await;
    let addr = emu.addr();
    let mut resp = within(get(addr, STREAM, &[])).await;
    assert_eq!(within(resp.read_line()).await.as_deref(), Some("{}"));
    within(emu.shutdown()).await;
    assert_eq!(within(resp.rest()).await, "");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
