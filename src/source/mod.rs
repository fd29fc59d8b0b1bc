//! The Nomad source: follows `GET /v1/event/stream` for ever and hands every new event to
//! the journal.
//!
//! One connection at a time, to one of the configured addresses (tried in turn on failure).
//! The source asks to resume at the journal's checkpoint (see [`resume`] for the contract),
//! splits the body into lines whatever the chunking ([`framing`]), parses only envelopes
//! ([`frame`]), and sends each line's new events to the journal writer, waiting when the
//! journal is full: Nomad then drops this subscriber once it lags past its buffer, which the
//! next connection reports as a gap, rather than the relay losing events silently.
//!
//! Every byte received resets an idle watchdog. Connections that fail are retried with
//! jittered exponential back-off that never gives up; a subscription Nomad refuses (401/403,
//! or the modern server's "200 then close before the first heartbeat") is explained in terms
//! of the ACL each topic needs and retried on a longer back-off, never in a hot loop.

pub mod frame;
pub mod framing;
pub mod namespaces;
pub mod permissions;
pub mod resume;
pub mod tls;

use crate::config::NomadConfig;
use crate::stats::{SourceStats, add};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use frame::{Frame, index_from_prefix, parse_line};
use framing::{LineSplitter, Piece};
use futures_util::StreamExt;
use nomad_relay_sink_api::Envelope;
use resume::Resume;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// One line's new events on their way to the journal, holding their share of the byte
/// budget until the receiver drops them (after writing them).
pub struct Handoff {
    /// The events, in order.
    pub events: Vec<Envelope>,
    _budget: OwnedSemaphorePermit,
}

/// Where the source sends each line's new events: a channel bounded in lines and in bytes,
/// so a run of multi-megabyte lines waits for the journal instead of piling up in memory.
#[derive(Clone)]
pub struct EventSender {
    lines: mpsc::Sender<Handoff>,
    budget: Arc<Semaphore>,
    budget_bytes: u32,
}

/// A channel for at most `lines` lines and about `bytes` bytes of events (a single line
/// larger than that still passes, alone).
pub fn handoff(lines: usize, bytes: u32) -> (EventSender, mpsc::Receiver<Handoff>) {
    let (sender, receiver) = mpsc::channel(lines);
    let budget = Arc::new(Semaphore::new(bytes as usize));
    (EventSender { lines: sender, budget, budget_bytes: bytes }, receiver)
}

impl EventSender {
    /// Sends one line's events, waiting for room; `Err` when the receiver is gone.
    pub async fn send(&self, events: Vec<Envelope>) -> Result<(), ()> {
        let bytes: usize = events.iter().map(|e| e.raw.len()).sum();
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.budget_bytes);
        let budget = self.budget.clone().acquire_many_owned(permits).await.map_err(|_| ())?;
        self.lines.send(Handoff { events, _budget: budget }).await.map_err(|_| ())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.lines.is_closed()
    }
}

/// A source that cannot start (bad TLS files, for example).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(String);

/// How one connection ended.
enum Ended {
    /// The stream ran and ended (EOF, reset, idle timeout).
    Dropped { streamed: bool, reason: String },
    /// Nomad refused the subscription.
    Refused(String),
    /// Shutdown was requested.
    Shutdown,
}

/// Where the ACL token comes from: the config, or a file read again before every request
/// (so a rotated token is picked up without a restart).
#[derive(Clone)]
pub struct TokenSource {
    token: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl TokenSource {
    /// The token to send now, if any.
    pub async fn read(&self) -> Result<Option<String>, String> {
        if let Some(path) = &self.file {
            return tokio::fs::read_to_string(path)
                .await
                .map(|text| Some(text.trim().to_owned()).filter(|t| !t.is_empty()))
                .map_err(|e| format!("cannot read `nomad.token_file` {}: {e}", path.display()));
        }
        Ok(self.token.clone().filter(|t| !t.is_empty()))
    }
}

/// The Nomad source.
pub struct Source {
    config: NomadConfig,
    addresses: Vec<String>,
    client: reqwest::Client,
    token: TokenSource,
    resume: Resume,
    out: EventSender,
    stats: Arc<SourceStats>,
    namespace_changes: Option<watch::Receiver<u64>>,
}

impl Source {
    /// Prepares a source that resumes as `resume` says and sends events to `out`.
    pub fn new(
        config: NomadConfig,
        resume: Resume,
        out: EventSender,
        stats: Arc<SourceStats>,
    ) -> Result<Source, SourceError> {
        let tls = tls::client_config(&config.tls).map_err(|e| SourceError(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .gzip(config.compression)
            .deflate(config.compression)
            .connect_timeout(config.connect_timeout.0)
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("nomad-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError(format!("cannot build the HTTP client: {e}")))?;
        let addresses = config.address.to_vec();
        let token = TokenSource {
            token: config.token.as_ref().map(|t| t.0.clone()),
            file: config.token_file.clone(),
        };
        Ok(Source { config, addresses, client, token, resume, out, stats, namespace_changes: None })
    }

    /// Follows the stream until `shutdown` is cancelled or the receiver of events is gone.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.config.namespace == "*" {
            let (changed, changes) = watch::channel(0);
            self.namespace_changes = Some(changes);
            tokio::spawn(namespaces::watch_namespaces(
                self.client.clone(),
                self.addresses.clone(),
                self.token.clone(),
                self.config.namespace_refresh.0,
                changed,
                shutdown.clone(),
            ));
        }
        let reconnect = self.config.reconnect.clone();
        let builder = |min: Duration, max: Duration| {
            ExponentialBuilder::default()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times()
        };
        let normal = builder(reconnect.min_delay.0, reconnect.max_delay.0);
        let denied = builder(reconnect.denied_min_delay.0, reconnect.denied_max_delay.0);
        let mut normal_delays = normal.build();
        let mut denied_delays = denied.build();
        let mut address = 0usize;
        let mut attempts = 0u64;
        loop {
            if attempts > 0 {
                add(&self.stats.reconnects, 1);
            }
            attempts += 1;
            let url = self.addresses[address % self.addresses.len()].clone();
            let delay = match self.stream_once(&url, &shutdown).await {
                Ended::Shutdown => return,
                Ended::Dropped { streamed, reason } => {
                    denied_delays = denied.build();
                    if streamed {
                        normal_delays = normal.build();
                        info!(source = %self.config.name, nomad = %url, "event stream ended ({reason}); reconnecting at index {}", self.resume.request_index());
                    } else {
                        address += 1;
                        warn!(source = %self.config.name, nomad = %url, "event stream failed: {reason}");
                    }
                    normal_delays.next().unwrap_or(reconnect.max_delay.0)
                }
                Ended::Refused(reason) => {
                    address += 1;
                    let delay = denied_delays.next().unwrap_or(reconnect.denied_max_delay.0);
                    error!(
                        source = %self.config.name, nomad = %url,
                        "Nomad refused the event stream subscription: {reason}. {}. Retrying in {:.0?}.",
                        permissions::explain(&self.config.topics, &self.config.namespace),
                        delay
                    );
                    delay
                }
            };
            if self.out.is_closed() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn url(&self, address: &str) -> Result<reqwest::Url, String> {
        let mut url = reqwest::Url::parse(&format!("{}/v1/event/stream", address.trim_end_matches('/')))
            .map_err(|e| format!("bad address `{address}`: {e}"))?;
        {
            let mut query = url.query_pairs_mut();
            for topic in &self.config.topics {
                query.append_pair("topic", topic);
            }
            query.append_pair("namespace", &self.config.namespace);
            if let Some(region) = &self.config.region {
                query.append_pair("region", region);
            }
            query.append_pair("index", &self.resume.request_index().to_string());
        }
        Ok(url)
    }

    async fn stream_once(&mut self, address: &str, shutdown: &CancellationToken) -> Ended {
        let url = match self.url(address) {
            Ok(url) => url,
            Err(reason) => return Ended::Dropped { streamed: false, reason },
        };
        let mut request = self.client.get(url.clone());
        match self.token.read().await {
            Ok(Some(token)) => request = request.header("X-Nomad-Token", token),
            Ok(None) => {}
            Err(reason) => return Ended::Dropped { streamed: false, reason },
        }
        debug!(%url, "connecting to Nomad's event stream");
        let response = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Shutdown,
            response = tokio::time::timeout(self.config.connect_timeout.0.saturating_mul(2), request.send()) => response,
        };
        let response = match response {
            Err(_) => {
                return Ended::Dropped {
                    streamed: false,
                    reason: format!(
                        "no response headers within {:?}",
                        self.config.connect_timeout.0.saturating_mul(2)
                    ),
                };
            }
            Ok(Err(e)) => return Ended::Dropped { streamed: false, reason: error_chain(&e) },
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let body = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                body = tokio::time::timeout(self.config.connect_timeout.0, response.text()) => {
                    body.ok().and_then(Result::ok).unwrap_or_default()
                }
            };
            let body: String = body.trim().chars().take(500).collect();
            return match status.as_u16() {
                401 | 403 => Ended::Refused(format!("HTTP {status}: {body}")),
                400 => Ended::Refused(format!(
                    "HTTP {status} (check `nomad.topics`, `nomad.namespace` and `nomad.region`): {body}"
                )),
                // Nomad before 1.9.6 answered a permission denial with 500.
                500 if body.contains("Permission denied") => Ended::Refused(format!("HTTP {status}: {body}")),
                _ => Ended::Dropped { streamed: false, reason: format!("HTTP {status}: {body}") },
            };
        }
        self.resume.on_connect();
        let mut splitter = LineSplitter::new(self.config.max_line_bytes.0 as usize);
        let mut pieces = Vec::new();
        let mut saw_line = false;
        let mut data_lines = 0u64;
        let mut stale_reported = false;
        let mut body = response.bytes_stream();
        let idle = self.config.idle_timeout.0;
        let mut namespace_changes = self.namespace_changes.clone();
        if let Some(changes) = &mut namespace_changes {
            changes.borrow_and_update();
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                Some(()) = namespaces_changed(&mut namespace_changes) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    return Ended::Dropped { streamed: true, reason: "a namespace was added".to_owned() };
                }
                next = tokio::time::timeout(idle, body.next()) => next,
            };
            let chunk: Bytes = match next {
                Err(_) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    return Ended::Dropped {
                        streamed: saw_line,
                        reason: format!(
                            "no data for {idle:?} (Nomad sends a heartbeat every 30 s); the connection is presumed dead"
                        ),
                    };
                }
                Ok(Some(Ok(chunk))) => chunk,
                Ok(Some(Err(e))) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    let partial = splitter.pending();
                    return Ended::Dropped {
                        streamed: saw_line,
                        reason: format!(
                            "{} ({partial} bytes of an unfinished line discarded)",
                            error_chain(&e)
                        ),
                    };
                }
                Ok(None) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    let rest = splitter.finish();
                    if !saw_line {
                        return Ended::Refused(
                            "Nomad answered 200 and closed the stream before its first heartbeat, which is how Nomad 1.11.2+ reports a refused token, a missing capability, an unknown region or a disabled event broker".to_owned(),
                        );
                    }
                    let reason = if rest.is_empty() {
                        "Nomad closed the connection".to_owned()
                    } else if rest.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
                        && !rest.starts_with(b"{")
                    {
                        format!(
                            "Nomad ended the stream saying: {}",
                            String::from_utf8_lossy(&rest[..rest.len().min(300)])
                        )
                    } else {
                        format!(
                            "Nomad closed the connection mid-line ({} bytes of an unfinished line discarded)",
                            rest.len()
                        )
                    };
                    return Ended::Dropped { streamed: true, reason };
                }
            };
            add(&self.stats.bytes_read, chunk.len() as u64);
            splitter.push(&chunk, &mut pieces);
            for piece in pieces.drain(..) {
                if !saw_line {
                    saw_line = true;
                    self.stats.connected.store(true, Ordering::Relaxed);
                    info!(source = %self.config.name, nomad = %address, index = self.resume.request_index(), "following Nomad's event stream");
                }
                let outcome = match piece {
                    Piece::Line(line) => match parse_off_runtime(line.clone()).await {
                        Ok(Frame::Heartbeat) => continue,
                        Ok(Frame::Data { index, events }) => {
                            self.stats.last_index.fetch_max(index, Ordering::Relaxed);
                            data_lines += 1;
                            let outcome = self.resume.on_line(index, events);
                            if outcome.stale {
                                add(&self.stats.lines_stale, 1);
                                // The first line after a connect may be Nomad's newest batch
                                // (asked for an index it does not have yet); later ones mean
                                // this server is behind, or its index went backwards.
                                if data_lines > 1 && !stale_reported {
                                    stale_reported = true;
                                    warn!(
                                        source = %self.config.name,
                                        nomad = %address,
                                        "Nomad sent index {index}, below the index the relay already has ({}); such lines are skipped. Either this server is behind the one the relay read before (it catches up by itself), or Nomad's raft index went backwards (the cluster was rebuilt): then stop the relay and move its data_dir aside to start over",
                                        self.resume.checkpoint().index
                                    );
                                }
                            }
                            outcome
                        }
                        Err(e) => {
                            add(&self.stats.lines_skipped, 1);
                            error!(source = %self.config.name, nomad = %address, "skipping a line Nomad sent that is not a valid event frame: {e}");
                            let index = index_from_prefix(&line);
                            self.resume.on_skipped_line(
                                index,
                                &format!(
                                    "a malformed line of {} bytes was skipped: {}",
                                    line.len(),
                                    e.reason
                                ),
                            )
                        }
                    },
                    Piece::Oversized { length, prefix } => {
                        add(&self.stats.lines_skipped, 1);
                        let index = index_from_prefix(&prefix);
                        error!(
                            source = %self.config.name, nomad = %address,
                            "skipping a line of {length} bytes at index {} : it exceeds `nomad.max_line_bytes` ({} bytes); raise the limit to receive such lines",
                            index.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
                            self.config.max_line_bytes.0
                        );
                        self.resume.on_skipped_line(
                            index,
                            &format!("a line of {length} bytes exceeds nomad.max_line_bytes and was skipped"),
                        )
                    }
                };
                if let Some(gap) = outcome.gap {
                    add(&self.stats.gaps, 1);
                    warn!(
                        source = %self.config.name,
                        last_index = gap.last_index,
                        resumed_index = gap.resumed_index,
                        "possible gap in Nomad's events: the relay had index {} and Nomad resumed at {}; events in between may have been dropped from Nomad's buffer",
                        gap.last_index,
                        gap.resumed_index
                    );
                }
                if outcome.events.is_empty() {
                    continue;
                }
                let count = outcome.events.len() as u64;
                let sent = tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    sent = self.out.send(outcome.events) => sent,
                };
                if sent.is_err() {
                    return Ended::Shutdown;
                }
                add(&self.stats.events_journaled, count);
            }
        }
    }
}

/// Lines at least this long are parsed on a blocking thread rather than the async runtime.
const BLOCKING_PARSE_BYTES: usize = 1 << 20;

/// Parses a line, moving multi-megabyte ones off the async runtime.
async fn parse_off_runtime(line: Bytes) -> Result<Frame, frame::FrameError> {
    if line.len() < BLOCKING_PARSE_BYTES {
        return parse_line(&line);
    }
    let length = line.len();
    tokio::task::spawn_blocking(move || parse_line(&line)).await.unwrap_or_else(|e| {
        Err(frame::FrameError { length, start: String::new(), reason: format!("parser task failed: {e}") })
    })
}

/// Resolves when the namespace watcher reports a change; never without a watcher.
async fn namespaces_changed(changes: &mut Option<watch::Receiver<u64>>) -> Option<()> {
    match changes {
        Some(changes) => changes.changed().await.ok(),
        None => std::future::pending().await,
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomad_relay_sink_api::EventId;

    fn events(bytes: usize) -> Vec<Envelope> {
        vec![Envelope {
            seq: 0,
            id: EventId { index: 1, digest: 0, occurrence: 0 },
            source: "default".into(),
            topic: "Job".into(),
            event_type: "JobRegistered".into(),
            key: "k".into(),
            namespace: "default".into(),
            raw: Bytes::from(vec![b'x'; bytes]),
        }]
    }

    #[tokio::test]
    async fn the_handoff_holds_back_lines_beyond_its_byte_budget() {
        let (sender, mut receiver) = handoff(100, 1000);
        sender.send(events(600)).await.expect("fits");
        // A second 600-byte line must wait until the first is written (dropped).
        let second = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(events(600)).await }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "over budget: waits");
        let first = receiver.recv().await.expect("first line");
        drop(first);
        second.await.expect("task").expect("sent once room was freed");
        // A line larger than the whole budget still passes, alone.
        drop(receiver.recv().await);
        sender.send(events(5000)).await.expect("a huge line passes alone");
    }
}
