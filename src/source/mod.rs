//! The Nomad source: follows `GET /v1/event/stream` for ever and hands every new event to
//! the journal.
//!
//! One connection at a time, to one of the configured addresses (tried in turn on failure).
//! The source asks to resume at the journal's checkpoint (see [`resume`] for the contract),
//! splits the body into lines whatever the chunking ([`lines`]), parses only envelopes
//! ([`frame`]), and sends each line's new events to the journal writer, waiting when the
//! journal is full: Nomad then drops this subscriber once it lags past its buffer, which the
//! next connection reports as a gap, rather than the relay losing events silently.
//!
//! Every byte received resets an idle watchdog. Connections that fail are retried with
//! jittered exponential back-off that never gives up; a subscription Nomad refuses (401/403,
//! or the modern server's "200 then close before the first heartbeat") is explained in terms
//! of the ACL each topic needs and retried on a longer back-off, never in a hot loop.

pub mod catch_up;
pub mod frame;
pub mod lines;
pub mod namespaces;
pub mod permissions;
pub mod resume;
pub mod tls;

use crate::config::NomadConfig;
use crate::journal::handoff::EventSender;
use crate::stats::{SourceStats, add};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use frame::{Frame, index_from_prefix, parse_line};
use futures_util::StreamExt;
use lines::{LineSplitter, Piece};
use namespaces::Namespaces;
use nomad_relay_sink_api::Envelope;
use resume::{LineOutcome, Resume};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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
    /// The token `nomad.token` or `nomad.token_file` of `config` gives.
    pub fn from_config(config: &NomadConfig) -> TokenSource {
        TokenSource { token: config.token.as_ref().map(|t| t.0.clone()), file: config.token_file.clone() }
    }

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

/// The HTTP client for one Nomad source's servers: its TLS settings, compression and
/// connect timeout; HTTP/1.1 only, no idle connections kept (a new stream after a cut opens a
/// new connection, and so may reach another server).
pub fn http_client(config: &NomadConfig) -> Result<reqwest::Client, SourceError> {
    let tls = tls::client_config(&config.tls).map_err(|e| SourceError(e.to_string()))?;
    reqwest::Client::builder()
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
        .map_err(|e| SourceError(format!("cannot build the HTTP client: {e}")))
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
    /// Nomad's namespaces, as the watcher last listed them (with `namespace = "*"`).
    namespaces: Option<watch::Receiver<Namespaces>>,
    /// Where a namespace catch-up is saved.
    catch_up_file: Option<PathBuf>,
}

impl Source {
    /// Prepares a source that resumes as `resume` says and sends events to `out`.
    pub fn new(
        config: NomadConfig,
        resume: Resume,
        out: EventSender,
        stats: Arc<SourceStats>,
    ) -> Result<Source, SourceError> {
        let client = http_client(&config)?;
        let addresses = config.address.to_vec();
        let token = TokenSource::from_config(&config);
        Ok(Source {
            config,
            addresses,
            client,
            token,
            resume,
            out,
            stats,
            namespaces: None,
            catch_up_file: None,
        })
    }

    /// Saves namespace catch-ups in `path` ([`catch_up`]), so that a restart finishes them.
    pub fn with_catch_up_file(mut self, path: PathBuf) -> Self {
        self.catch_up_file = Some(path);
        self
    }

    /// Follows the stream until `shutdown` is cancelled or the receiver of events is gone.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.config.namespace == "*" {
            let (list, mut listed) = watch::channel(Namespaces::default());
            tokio::spawn(namespaces::watch_namespaces(
                self.client.clone(),
                self.addresses.clone(),
                self.token.clone(),
                self.config.namespace_refresh.0,
                list,
                shutdown.clone(),
            ));
            // The first subscription includes the namespaces listed before it (and maybe
            // more); wait a little for that list, never for ever.
            let wait = self.config.connect_timeout.0.saturating_mul(2);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::timeout(wait, listed.wait_for(|n| n.answered)) => {}
            }
            self.namespaces = Some(listed);
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

    /// One connection: connect, then take each piece of the body in turn until the stream
    /// ends.
    async fn stream_once(&mut self, address: &str, shutdown: &CancellationToken) -> Ended {
        // The namespaces listed before subscribing are in the subscription's list; without a
        // list yet, those created at or below the checkpoint are taken to be (they existed
        // when Nomad froze the list; with no checkpoint, none is).
        let subscribed_at = if self.resume.has_checkpoint() { self.resume.checkpoint().index } else { 0 };
        let namespaces = self.namespaces.clone().map(|mut list| {
            let known = list.borrow_and_update();
            let covered = known.listed.then(|| known.created.keys().cloned().collect());
            drop(known);
            Covered { list, covered, subscribed_at }
        });
        let response = match self.connect(address, shutdown).await {
            Ok(response) => response,
            Err(ended) => return ended,
        };
        self.resume.on_connect();
        let mut connection = Connection::new(response, &self.config, namespaces);
        let mut pieces = Vec::new();
        loop {
            let next =
                connection.next_chunk(self.config.idle_timeout.0, self.config.index_reset_after.0, shutdown);
            let chunk = match next.await {
                Ok(Next::Chunk(chunk)) => chunk,
                Ok(Next::Namespaces(added)) => match self.include_namespaces(added).await {
                    Some(ended) => return ended,
                    None => continue,
                },
                Ok(Next::IndexReset) => {
                    let outcome = self.index_reset(&mut connection, address);
                    if let Err(ended) = self.journal(outcome.events, shutdown).await {
                        return ended;
                    }
                    continue;
                }
                Err(ended) => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    return ended;
                }
            };
            add(&self.stats.bytes_read, chunk.len() as u64);
            connection.splitter.push(&chunk, &mut pieces);
            for piece in pieces.drain(..) {
                if let Err(ended) = self.take_piece(piece, &mut connection, address, shutdown).await {
                    return ended;
                }
            }
        }
    }

    /// The stream has stayed below the checkpoint for `index_reset_after`: not a server that
    /// lags (it would have caught up), but a raft index that went backwards. Reported once per
    /// connection, and journaled once per checkpoint.
    fn index_reset(&mut self, connection: &mut Connection, address: &str) -> LineOutcome {
        let Some(below) = connection.below.as_mut() else { return LineOutcome::default() };
        below.reported = true;
        let resumed = below.index;
        let checkpoint = self.resume.checkpoint().index;
        add(&self.stats.index_resets, 1);
        error!(
            source = %self.config.name, nomad = %address,
            "Nomad's raft index went backwards: the relay has index {checkpoint}, and for {:?} this server has sent only lines below it (up to {resumed}). The cluster was rebuilt, or restored from an older snapshot; its events up to index {checkpoint} are skipped. To follow the new cluster from its start, stop the relay and give this source a new `id_scope` (or move data_dir aside)",
            self.config.index_reset_after.0
        );
        self.resume.on_index_reset(resumed)
    }

    /// Namespaces (name and `CreateIndex`) created after this subscription's list was
    /// taken: those it has delivered events of are in it; for the others, the connection ends
    /// so that the next one includes them, from their `CreateIndex` when their events may lie
    /// below the checkpoint (the catch-up is saved first).
    async fn include_namespaces(&mut self, added: Vec<(String, u64)>) -> Option<Ended> {
        let missing: Vec<(String, u64)> =
            added.into_iter().filter(|(name, _)| !self.resume.saw_namespace(name)).collect();
        if missing.is_empty() {
            return None;
        }
        let names: Vec<&str> = missing.iter().map(|(name, _)| name.as_str()).collect();
        let checkpoint = self.resume.checkpoint().index;
        let before = self.resume.catch_up().cloned();
        let plan = self.resume.include_namespaces(&missing).cloned();
        match &plan {
            Some(plan) if before.as_ref() != Some(plan) => {
                add(&self.stats.namespace_catch_ups, 1);
                info!(
                    source = %self.config.name,
                    "Nomad namespace(s) {names:?} were created at or below index {checkpoint}, which the relay has: resubscribing from index {} to fetch their events up to {checkpoint}",
                    plan.from
                );
                self.save_catch_up(plan).await;
            }
            _ => {
                info!(source = %self.config.name, "new Nomad namespace(s) {names:?}: resubscribing so that namespace = \"*\" includes them")
            }
        }
        Some(Ended::Dropped { streamed: true, reason: format!("namespace(s) {names:?} added") })
    }

    /// Saves a planned catch-up before the resubscription that runs it; a failure is logged
    /// and the catch-up still runs, but a crash before it ends would not finish it.
    async fn save_catch_up(&self, plan: &catch_up::CatchUp) {
        let Some(path) = self.catch_up_file.clone() else { return };
        let plan = plan.clone();
        let saved = tokio::task::spawn_blocking(move || catch_up::save(&path, Some(&plan))).await;
        if let Some(e) = match saved {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        } {
            error!(source = %self.config.name, "cannot save the namespace catch-up ({e}); it runs, but if the relay stops before it ends, events of the new namespace(s) below the checkpoint are not fetched again");
        }
    }

    /// Sends the request and checks the status; a refusal or failure is how it ended.
    async fn connect(&self, address: &str, shutdown: &CancellationToken) -> Result<reqwest::Response, Ended> {
        let dropped = |reason: String| Ended::Dropped { streamed: false, reason };
        let url = self.url(address).map_err(dropped)?;
        let mut request = self.client.get(url.clone());
        if let Some(token) = self.token.read().await.map_err(dropped)? {
            request = request.header("X-Nomad-Token", token);
        }
        debug!(%url, "connecting to Nomad's event stream");
        let wait = self.config.connect_timeout.0.saturating_mul(2);
        let response = tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            response = tokio::time::timeout(wait, request.send()) => response,
        };
        let response = match response {
            Err(_) => return Err(dropped(format!("no response headers within {wait:?}"))),
            Ok(Err(e)) => return Err(dropped(error_chain(&e))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            body = tokio::time::timeout(self.config.connect_timeout.0, response.text()) => {
                body.ok().and_then(Result::ok).unwrap_or_default()
            }
        };
        Err(refusal(status, body.trim().chars().take(500).collect()))
    }

    /// One piece of the body: a heartbeat, a data line, or a line that cannot be read; new
    /// events go to the journal.
    async fn take_piece(
        &mut self,
        piece: Piece,
        connection: &mut Connection,
        address: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Ended> {
        if !connection.saw_line {
            connection.saw_line = true;
            self.stats.connected.store(true, Ordering::Relaxed);
            info!(source = %self.config.name, nomad = %address, index = self.resume.request_index(), "following Nomad's event stream");
        }
        let outcome = match piece {
            Piece::Line(line) => match parse_off_runtime(line.clone()).await {
                Ok(Frame::Heartbeat) => return Ok(()),
                Ok(Frame::Data { index, events }) => self.take_data(index, events, connection, address),
                Err(e) => self.skip_malformed(&line, &e, address),
            },
            Piece::Oversized { length, prefix } => self.skip_oversized(length, &prefix, address),
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
        self.journal(outcome.events, shutdown).await
    }

    /// A data line: the resume logic decides which of its events are new.
    fn take_data(
        &mut self,
        index: u64,
        events: Vec<frame::RawEvent>,
        connection: &mut Connection,
        address: &str,
    ) -> LineOutcome {
        self.stats.last_index.fetch_max(index, Ordering::Relaxed);
        connection.data_lines += 1;
        let outcome = self.resume.on_line(index, events);
        // Below a start index (no checkpoint yet) is not below anything the relay had.
        connection.track_below(outcome.stale && self.resume.has_checkpoint(), index);
        if outcome.stale {
            add(&self.stats.lines_stale, 1);
            // The first line after a connect may be Nomad's newest batch (asked for an index
            // it does not have yet); later ones mean this server is behind, or its index went
            // backwards.
            if connection.data_lines > 1 && !connection.stale_reported {
                connection.stale_reported = true;
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

    /// A line that is not a valid frame: reported, and a gap marker in its place.
    fn skip_malformed(&mut self, line: &Bytes, error: &frame::FrameError, address: &str) -> LineOutcome {
        add(&self.stats.lines_skipped, 1);
        error!(source = %self.config.name, nomad = %address, "skipping a line Nomad sent that is not a valid event frame: {error}");
        let reason = format!("a malformed line of {} bytes was skipped: {}", line.len(), error.reason);
        self.resume.on_skipped_line(index_from_prefix(line), &reason)
    }

    /// A line over `max_line_bytes`: reported, and a gap marker in its place.
    fn skip_oversized(&mut self, length: u64, prefix: &[u8], address: &str) -> LineOutcome {
        add(&self.stats.lines_skipped, 1);
        let index = index_from_prefix(prefix);
        error!(
            source = %self.config.name, nomad = %address,
            "skipping a line of {length} bytes at index {} : it exceeds `nomad.max_line_bytes` ({} bytes); raise the limit to receive such lines",
            index.map(|i| i.to_string()).unwrap_or_else(|| "?".into()),
            self.config.max_line_bytes.0
        );
        let reason = format!("a line of {length} bytes exceeds nomad.max_line_bytes and was skipped");
        self.resume.on_skipped_line(index, &reason)
    }

    /// Hands a line's new events to the journal writer, waiting while the journal is full.
    async fn journal(&mut self, events: Vec<Envelope>, shutdown: &CancellationToken) -> Result<(), Ended> {
        if events.is_empty() {
            return Ok(());
        }
        let count = events.len() as u64;
        let sent = tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            sent = self.out.send(events) => sent,
        };
        sent.map_err(|()| Ended::Shutdown)?;
        add(&self.stats.events_journaled, count);
        Ok(())
    }
}

/// How a non-success status ends a connection: a refusal (explained in ACL terms) or a
/// failure to retry.
fn refusal(status: reqwest::StatusCode, body: String) -> Ended {
    match status.as_u16() {
        401 | 403 => Ended::Refused(format!("HTTP {status}: {body}")),
        400 => Ended::Refused(format!(
            "HTTP {status} (check `nomad.topics`, `nomad.namespace` and `nomad.region`): {body}"
        )),
        // Nomad before 1.9.6 answered a permission denial with 500.
        500 if body.contains("Permission denied") => Ended::Refused(format!("HTTP {status}: {body}")),
        _ => Ended::Dropped { streamed: false, reason: format!("HTTP {status}: {body}") },
    }
}

/// One open stream: its body, the lines being assembled from it, and what it has shown so
/// far.
struct Connection {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    splitter: LineSplitter,
    /// Nomad's namespace list, and the namespaces this subscription's list includes.
    namespaces: Option<Covered>,
    /// A line (a heartbeat at least) arrived: the subscription was accepted.
    saw_line: bool,
    /// Since when the stream's lines have all been below the checkpoint.
    below: Option<Below>,
    data_lines: u64,
    stale_reported: bool,
}

impl Connection {
    fn new(response: reqwest::Response, config: &NomadConfig, namespaces: Option<Covered>) -> Connection {
        Connection {
            body: Box::pin(response.bytes_stream()),
            splitter: LineSplitter::new(config.max_line_bytes.0 as usize),
            namespaces,
            saw_line: false,
            below: None,
            data_lines: 0,
            stale_reported: false,
        }
    }

    /// Notes whether a data line (at `index`) was below the checkpoint.
    fn track_below(&mut self, stale: bool, index: u64) {
        if !stale {
            self.below = None;
        } else if let Some(below) = &mut self.below {
            below.index = below.index.max(index);
        } else {
            self.below = Some(Below { since: tokio::time::Instant::now(), index, reported: false });
        }
    }

    /// The next bytes of the body, namespaces created since the subscription's list was
    /// taken, or the moment the stream has stayed below the checkpoint for `reset_after`; or
    /// how the stream ended: shutdown, no byte for `idle` (the watchdog), a read error, or
    /// the end of the body.
    async fn next_chunk(
        &mut self,
        idle: Duration,
        reset_after: Duration,
        shutdown: &CancellationToken,
    ) -> Result<Next, Ended> {
        let reset_at = self.below.as_ref().filter(|b| !b.reported).map(|b| b.since + reset_after);
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Err(Ended::Shutdown),
            Some(added) = added_namespaces(&mut self.namespaces) => return Ok(Next::Namespaces(added)),
            () = sleep_until(reset_at) => return Ok(Next::IndexReset),
            next = tokio::time::timeout(idle, self.body.next()) => next,
        };
        match next {
            Ok(Some(Ok(chunk))) => Ok(Next::Chunk(chunk)),
            Err(_) => Err(Ended::Dropped {
                streamed: self.saw_line,
                reason: format!(
                    "no data for {idle:?} (Nomad sends a heartbeat every 30 s); the connection is presumed dead"
                ),
            }),
            Ok(Some(Err(e))) => Err(Ended::Dropped {
                streamed: self.saw_line,
                reason: format!(
                    "{} ({} bytes of an unfinished line discarded)",
                    error_chain(&e),
                    self.splitter.pending()
                ),
            }),
            Ok(None) => Err(self.ended()),
        }
    }

    /// How the end of the body reads: before any line, Nomad's modern refusal; after, a close,
    /// with legacy Nomad's appended error text if there is one.
    fn ended(&mut self) -> Ended {
        let rest = self.splitter.finish();
        if !self.saw_line {
            return Ended::Refused(
                "Nomad answered 200 and closed the stream before its first heartbeat, which is how Nomad 1.11.2+ reports a refused token, a missing capability, an unknown region or a disabled event broker".to_owned(),
            );
        }
        let reason = if rest.is_empty() {
            "Nomad closed the connection".to_owned()
        } else if rest.iter().all(|b| b.is_ascii_graphic() || *b == b' ') && !rest.starts_with(b"{") {
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
        Ended::Dropped { streamed: true, reason }
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

/// What a connection yields next.
enum Next {
    /// Bytes of the body.
    Chunk(Bytes),
    /// Namespaces (name and `CreateIndex`) not in the subscription's list.
    Namespaces(Vec<(String, u64)>),
    /// The stream has stayed below the checkpoint for `index_reset_after`.
    IndexReset,
}

/// A stretch of lines below the checkpoint.
struct Below {
    since: tokio::time::Instant,
    /// The highest index among them.
    index: u64,
    /// Whether it was reported as an index reset.
    reported: bool,
}

/// Sleeps until `at`; never without one.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The namespaces one subscription includes, as far as the relay can tell.
struct Covered {
    /// Nomad's namespace list, as the watcher follows it.
    list: watch::Receiver<Namespaces>,
    /// The namespaces in the subscription's list; `None` while no list was read.
    covered: Option<BTreeSet<String>>,
    /// An index below which every namespace existed when the subscription started.
    subscribed_at: u64,
}

/// Resolves with the namespaces the watcher lists that the subscription does not hold (and
/// then holds); never without a watcher, or while the watcher is gone. Without a list read
/// before the subscription, the first one read counts the namespaces created at or below
/// `subscribed_at` as included (they existed when Nomad froze the subscription's list).
async fn added_namespaces(namespaces: &mut Option<Covered>) -> Option<Vec<(String, u64)>> {
    let Some(Covered { list, covered, subscribed_at }) = namespaces else {
        return std::future::pending().await;
    };
    loop {
        if list.changed().await.is_err() {
            return std::future::pending().await;
        }
        let known = list.borrow_and_update().clone();
        if !known.listed {
            continue;
        }
        let covered = covered.get_or_insert_with(|| {
            known.created.iter().filter(|(_, c)| **c <= *subscribed_at).map(|(n, _)| n.clone()).collect()
        });
        let added: Vec<(String, u64)> = known
            .created
            .iter()
            .filter(|(name, _)| !covered.contains(*name))
            .map(|(name, created)| (name.clone(), *created))
            .collect();
        if !added.is_empty() {
            covered.extend(added.iter().map(|(name, _)| name.clone()));
            return Some(added);
        }
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

    fn listed(created: &[(&str, u64)]) -> Namespaces {
        Namespaces {
            answered: true,
            listed: true,
            created: created.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
        }
    }

    #[tokio::test]
    async fn without_a_list_before_subscribing_namespaces_created_at_or_below_its_index_count_as_included() {
        // The first listing failed: the subscription at index 10 was made with no list.
        let (sender, list) = watch::channel(Namespaces { answered: true, ..Namespaces::default() });
        let mut covered = Some(Covered { list, covered: None, subscribed_at: 10 });
        sender.send_replace(listed(&[("default", 1), ("quiet", 4), ("new", 12)]));
        let added = tokio::time::timeout(Duration::from_secs(5), added_namespaces(&mut covered)).await;
        assert_eq!(
            added.expect("an answer"),
            Some(vec![("new".to_owned(), 12)]),
            "only the one created after it"
        );
        // A later list with nothing new resolves nothing.
        sender.send_replace(listed(&[("default", 1), ("quiet", 4), ("new", 12)]));
        let nothing = tokio::time::timeout(Duration::from_millis(50), added_namespaces(&mut covered)).await;
        assert!(nothing.is_err(), "{nothing:?}");
    }
}
