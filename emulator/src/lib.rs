//! A faithful, in-process emulator of HashiCorp Nomad's `GET /v1/event/stream`
//! endpoint, for the relay's tests, benchmarks and demos.
//!
//! It reproduces the wire behaviour described in `shared/nomad-event-stream.md`:
//! both HTTP generations ([`Framing::Modern`] hijacked/close-delimited and
//! [`Framing::Legacy`] chunked/gzip), the NDJSON framing with `{}` heartbeats,
//! the batch buffer and its `StartAtClosest` start positions, Nomad's filter
//! quirks, ACLs, and fault injection (cuts, restarts, stalls, rejections, slow
//! consumers, fragmented writes). A seeded [`Generator`] produces realistic
//! cluster activity.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use nomad_emulator::{Emulator, EmulatorConfig, GeneratorConfig};
//! let emu = Emulator::start(EmulatorConfig::default()).await?;
//! let generator = emu.generator(GeneratorConfig { total_events: Some(1000), ..Default::default() });
//! tokio::spawn(generator.run());
//! println!("stream at {}/v1/event/stream", emu.url());
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod acl;
mod body;
mod buffer;
mod config;
mod event;
mod filter;
mod generator;
mod http;
mod query;
mod server;
mod state;
mod stream;
mod variables;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use config::{AclConfig, AclToken, Cut, EmulatorConfig, Framing, Reject};
pub use event::{Batch, Event};
pub use generator::{Generator, GeneratorConfig};
pub use state::RecordedRequest;

use state::{Control, Shared, lock};

/// A running emulated Nomad server. Cheap to clone; all clones control the same
/// server. The server stops on [`Emulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Emulator {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept_task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.handle.addr)
            .field("framing", &self.handle.shared.config.framing)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts a server on `127.0.0.1` with an ephemeral port.
    pub async fn start(config: EmulatorConfig) -> std::io::Result<Emulator> {
        Emulator::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on `addr`.
    pub async fn start_on(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let accept_task = tokio::spawn(server::accept_loop(Arc::clone(&shared), listener));
        tokio::spawn(server::run_lock_timers(Arc::clone(&shared)));
        tracing::info!(%addr, framing = ?shared.config.framing, "nomad emulator listening");
        Ok(Emulator {
            handle: Arc::new(Handle { shared, addr, accept_task: std::sync::Mutex::new(Some(accept_task)) }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }

    /// `http://IP:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.handle.addr)
    }

    /// The settings the server was started with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.shared().config
    }

    /// Appends one batch (one buffer item, one line) and wakes subscribers. Never
    /// blocks on readers. Indexes are not checked: keeping them non-decreasing is the
    /// caller's job, as it is Nomad's FSM's.
    pub fn publish(&self, batch: Batch) {
        self.shared().publish(batch, false);
    }

    /// [`Emulator::publish`] for a generator, which picked `batch.index` before a concurrent
    /// variables write may have taken a higher one: an index below the last published is
    /// raised to it.
    pub(crate) fn publish_generated(&self, batch: Batch) {
        self.shared().publish(batch, true);
    }

    /// A hook for tests of a broken or malicious server, not something Nomad does: sends
    /// `line` byte for byte (then a newline) to every subscriber, unfiltered, where a frame of
    /// index `index` would be in the buffer. `index` only orders it for resumption.
    pub fn publish_hostile_line(&self, index: u64, line: Vec<u8>) {
        self.shared().last_index.fetch_max(index, Ordering::Relaxed);
        self.shared().buffer.append_hostile(index, line);
    }

    /// Highest index ever published (0 if none); survives [`Emulator::restart`].
    pub fn last_index(&self) -> u64 {
        self.shared().last_index.load(Ordering::Relaxed)
    }

    /// Every batch published since start (across restarts), in order. Empty after
    /// `set_record_history(false)`.
    pub fn published(&self) -> Vec<Batch> {
        self.shared().buffer.history()
    }

    /// The batches currently in the buffer, oldest first.
    pub fn buffered(&self) -> Vec<Batch> {
        self.shared().buffer.buffered()
    }

    /// Turns the publish history behind [`Emulator::published`] on (default) or off.
    /// Turn it off for long high-rate runs: it keeps every batch in memory.
    pub fn set_record_history(&self, on: bool) {
        self.shared().buffer.set_record_history(on);
    }

    /// A seeded generator of realistic activity that publishes into this server.
    pub fn generator(&self, config: GeneratorConfig) -> Generator {
        Generator::attached(self.clone(), config)
    }

    /// Ends every open stream (see [`Cut`]).
    pub fn cut_connections(&self, how: Cut) {
        let _ = self.shared().control.send(Control::Cut(how));
    }

    /// Emulates a server restart: every open stream ends as with [`Cut::Clean`] and its
    /// connection closes; unless `keep_buffer`, the buffer is emptied (snapshot
    /// restore). [`Emulator::published`] keeps the history; indexes continue upward.
    pub fn restart(&self, keep_buffer: bool) {
        let _ = self.shared().control.send(Control::Restart);
        if !keep_buffer {
            self.shared().buffer.clear();
        }
    }

    /// Emulates a cluster rebuilt at the same address (a new raft log, or a restore from an
    /// older snapshot): a restart with an empty buffer after which the raft index starts over
    /// from 0, so [`Emulator::last_index`] is 0 and batches may be published below earlier
    /// ones. [`Emulator::published`] keeps the history.
    pub fn rebuild(&self) {
        self.restart(false);
        self.shared().last_index.store(0, Ordering::Relaxed);
    }

    /// While `true`, open streams write nothing (no heartbeats, no data) but stay
    /// open; new connections get their response head and nothing after it.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared().stalled.send_replace(stalled);
    }

    /// Makes every new subscription fail (see [`Reject`]); `None` restores service.
    pub fn set_reject(&self, reject: Option<Reject>) {
        *lock(&self.shared().reject) = reject;
    }

    /// Replaces the set of existing namespaces (what `namespace=*` expands to for new
    /// subscriptions; running ones keep their frozen list). Namespaces not there before are
    /// created at the next raft index, as by [`Emulator::create_namespace`].
    pub fn set_namespaces(&self, namespaces: Vec<String>) {
        let shared = self.shared();
        lock(&shared.namespaces).retain(|ns| namespaces.contains(&ns.name));
        for name in namespaces {
            let index = self.last_index().max(*shared.namespaces_index.borrow()) + 1;
            self.create_namespace(&name, index);
        }
        shared.namespaces_index.send_modify(|index| *index += 1);
    }

    /// While `true`, answers to `GET /v1/namespaces` are held back until it is `false` again,
    /// as from a slow server or network: a client hears of namespace changes late.
    pub fn hold_namespace_lists(&self, held: bool) {
        self.shared().namespaces_held.send_replace(held);
    }

    /// Creates namespace `name` at raft index `index` (its `CreateIndex`), as `nomad
    /// namespace apply` does: later subscriptions with `namespace=*` include it, open ones do
    /// not, and a blocking query on `/v1/namespaces` returns. Like [`Emulator::publish`], the
    /// index is the caller's to keep increasing; it also counts as published, so generated
    /// events come after it. An existing namespace is left as it is.
    pub fn create_namespace(&self, name: &str, index: u64) {
        let shared = self.shared();
        {
            let mut namespaces = lock(&shared.namespaces);
            if namespaces.iter().any(|ns| ns.name == name) {
                return;
            }
            namespaces.push(state::Namespace { name: name.to_owned(), create_index: index });
        }
        shared.last_index.fetch_max(index, Ordering::Relaxed);
        shared.namespaces_index.send_modify(|table| *table = (*table).max(index));
    }

    /// Deletes a token: later requests with it are denied, and its open streams end
    /// with `subscription closed by server, client should resubscribe`.
    pub fn remove_token(&self, secret: &str) {
        if let Some(acl) = lock(&self.shared().acl).as_mut() {
            acl.tokens.retain(|t| t.secret != secret);
        }
        let _ = self.shared().control.send(Control::Revoke(secret.to_string()));
    }

    /// Stream requests handled so far (successful or not, including 400/405 answers).
    pub fn connection_count(&self) -> u64 {
        *self.shared().connections.borrow()
    }

    /// Resolves once [`Emulator::connection_count`] is at least `n`. A stream counted
    /// here is already subscribed: batches published afterwards reach it.
    pub async fn wait_for_connections(&self, n: u64) {
        let mut rx = self.shared().connections.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Every request received so far (any path), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared().requests).clone()
    }

    /// Number of streams currently subscribed.
    pub fn open_streams(&self) -> usize {
        *self.shared().open_streams.borrow()
    }

    /// Resolves once exactly `n` streams are open.
    pub async fn wait_for_open_streams(&self, n: usize) {
        let mut rx = self.shared().open_streams.subscribe();
        let _ = rx.wait_for(|c| *c == n).await;
    }

    /// Stops accepting, closes every connection, and waits (up to 5 s) for the
    /// connection tasks to finish.
    pub async fn shutdown(self) {
        let shared = Arc::clone(&self.handle.shared);
        shared.shutdown.send_replace(true);
        let task = lock(&self.handle.accept_task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        let mut alive = shared.alive.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), alive.wait_for(|n| *n == 0)).await;
    }
}
