//! The relay's HTTP endpoint as a test sees it: a free port to put it on, a plain `GET`, and
//! the Prometheus text parsed into samples.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` on the relay's endpoint: (status code, body), or `None` if nothing answers.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Prometheus text as `name{labels}` → value, checking every line is well formed.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            assert!(comment.starts_with(" HELP ") || comment.starts_with(" TYPE "), "bad comment: {line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample: {line}"));
        samples.insert(series.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value: {line}")));
    }
    samples
}

/// One series of the relay's `/metrics` (`name{labels}` as rendered), or `None` when the
/// endpoint does not answer or has no such series.
pub fn metric(port: u16, series: &str) -> Option<f64> {
    let (status, body) = get(port, "/metrics")?;
    (status == 200).then(|| parse_metrics(&body).get(series).copied()).flatten()
}

/// Polls `series` about every millisecond (off the async runtime) until `condition` holds
/// for its value; the value, or `None` after `timeout`.
pub async fn wait_for_metric(
    port: u16,
    series: &str,
    timeout: Duration,
    condition: impl Fn(f64) -> bool + Send + 'static,
) -> Option<f64> {
    let series = series.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(value) = metric(port, &series).filter(|v| condition(*v)) {
                return Some(value);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    })
    .await
    .unwrap()
}

/// Waits until the relay reports sink `sink` unhealthy (`nomad_relay_sink_healthy` 0): an
/// outage a test injects must last at least this long, or the sink never noticed it.
pub async fn wait_until_unhealthy(port: u16, sink: &str, timeout: Duration) {
    let series = format!("nomad_relay_sink_healthy{{sink=\"{sink}\"}}");
    if wait_for_metric(port, &series, timeout, |healthy| healthy == 0.0).await.is_none() {
        panic!("sink `{sink}` was not reported unhealthy within {timeout:?}: the outage went unnoticed");
    }
}
