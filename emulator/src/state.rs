//! State shared by the public handle, the accept loop and every connection task:
//! the buffer, the fault-injection switches, counters with change notification,
//! and the request log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{broadcast, watch};

use crate::buffer::Buffer;
use crate::config::{AclConfig, Cut, EmulatorConfig, Reject};
use crate::event::{Batch, Event};
use crate::variables::Variables;

/// One HTTP request the emulator received (any path).
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Decoded path, e.g. `/v1/event/stream`.
    pub path: String,
    /// Raw query string, e.g. `topic=Job&index=5`.
    pub query: String,
    /// `index` parsed as Go's `Atoi` would; `None` when absent, empty or invalid.
    pub index: Option<i64>,
    /// Raw (decoded) `topic` values in request order, e.g. `["Job", "Allocation:x"]`.
    pub topics: Vec<String>,
    /// Raw `namespace` value; `None` when absent (Nomad then uses `default`).
    pub namespace: Option<String>,
    /// Token from `X-Nomad-Token` or `Authorization: Bearer`.
    pub token: Option<String>,
    /// Raw `Accept-Encoding` header.
    pub accept_encoding: Option<String>,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub http_version: String,
    /// All headers, in order.
    pub headers: Vec<(String, String)>,
    /// When the request head was parsed.
    pub at: Instant,
}

/// A message to every open stream.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// [`crate::Emulator::cut_connections`].
    Cut(Cut),
    /// [`crate::Emulator::restart`]: end like a clean cut, then close the connection.
    Restart,
    /// A token was deleted: its streams end with "subscription closed by server".
    Revoke(String),
}

/// Everything the tasks share.
pub(crate) struct Shared {
    /// Immutable settings.
    pub config: EmulatorConfig,
    /// The event buffer.
    pub buffer: Buffer,
    /// Highest index ever published.
    pub last_index: AtomicU64,
    /// Existing namespaces (what `namespace=*` expands to), in creation order.
    pub namespaces: Mutex<Vec<Namespace>>,
    /// Raft index of the last write to the namespace table, as `X-Nomad-Index` on
    /// `/v1/namespaces`; blocking queries wait on it.
    pub namespaces_index: watch::Sender<u64>,
    /// While `true`, namespace list answers are held back (a slow server or network).
    pub namespaces_held: watch::Sender<bool>,
    /// ACL system, `None` = disabled.
    pub acl: Mutex<Option<AclConfig>>,
    /// Failure every new subscription meets.
    pub reject: Mutex<Option<Reject>>,
    /// Stall switch.
    pub stalled: watch::Sender<bool>,
    /// Messages to open streams.
    pub control: broadcast::Sender<Control>,
    /// Stream requests handled so far.
    pub connections: watch::Sender<u64>,
    /// Streams currently subscribed.
    pub open_streams: watch::Sender<usize>,
    /// Connection tasks alive.
    pub alive: watch::Sender<usize>,
    /// Set once to stop the server.
    pub shutdown: watch::Sender<bool>,
    /// Every request seen.
    pub requests: Mutex<Vec<RecordedRequest>>,
    /// Numbers connections (seeds per-connection randomness).
    pub conn_seq: AtomicU64,
    /// Serializes raft writes: taking an index and appending its batch happen together.
    pub raft: Mutex<()>,
    /// The variables table (taken after `raft`, never before it).
    pub variables: Mutex<Variables>,
    /// Bumped on every variables write; blocking variable reads wait on it.
    pub variables_changed: watch::Sender<u64>,
}

/// One row of the namespace table.
#[derive(Debug, Clone)]
pub(crate) struct Namespace {
    /// `Name`.
    pub name: String,
    /// `CreateIndex` (and `ModifyIndex`: the emulator never updates a namespace): the raft
    /// index of its creation; the namespaces of the configuration exist from index 1, as
    /// Nomad's `default` namespace does from bootstrap.
    pub create_index: u64,
}

/// Locks a mutex, ignoring poisoning (the guarded data is always consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Fresh state for `config`.
    pub fn new(config: EmulatorConfig) -> Shared {
        Shared {
            buffer: Buffer::new(config.buffer_size),
            last_index: AtomicU64::new(0),
            namespaces: Mutex::new(
                config
                    .namespaces
                    .iter()
                    .map(|name| Namespace { name: name.clone(), create_index: 1 })
                    .collect(),
            ),
            namespaces_index: watch::Sender::new(1),
            namespaces_held: watch::Sender::new(false),
            acl: Mutex::new(config.acl.clone()),
            reject: Mutex::new(None),
            stalled: watch::Sender::new(false),
            control: broadcast::channel(64).0,
            connections: watch::Sender::new(0),
            open_streams: watch::Sender::new(0),
            alive: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            requests: Mutex::new(Vec::new()),
            conn_seq: AtomicU64::new(0),
            raft: Mutex::new(()),
            variables: Mutex::new(Variables::new(config.min_lock_ttl, 0x5EED_0F10_C6C6)),
            variables_changed: watch::Sender::new(0),
            config,
        }
    }

    /// Counts one handled stream request.
    pub fn count_connection(&self) {
        self.connections.send_modify(|c| *c += 1);
    }

    /// Appends `batch` as one raft write. With `at_head`, an index below the last one is
    /// raised to it, so a generator that chose its index before a concurrent variables write
    /// stays in order.
    pub fn publish(&self, mut batch: Batch, at_head: bool) {
        let _raft = lock(&self.raft);
        let last = self.last_index.load(Ordering::Relaxed);
        if at_head {
            batch.index = batch.index.max(last);
        }
        self.last_index.store(last.max(batch.index), Ordering::Relaxed);
        self.buffer.append(batch);
    }

    /// Makes one variables write at the next raft index: `write` gets the table and the index
    /// and returns its result and, when it wrote, its event, which is published at that index.
    pub fn write_variables<T>(&self, write: impl FnOnce(&mut Variables, u64) -> (T, Option<Event>)) -> T {
        let _raft = lock(&self.raft);
        let index = self.last_index.load(Ordering::Relaxed) + 1;
        let (result, event) = write(&mut lock(&self.variables), index);
        if let Some(event) = event {
            self.last_index.store(index, Ordering::Relaxed);
            self.buffer.append(Batch::new(index, vec![event]));
            self.variables_changed.send_modify(|n| *n += 1);
        }
        result
    }

    /// Next connection number.
    pub fn next_conn_id(&self) -> u64 {
        self.conn_seq.fetch_add(1, Ordering::Relaxed)
    }
}

/// Increments a counter now and decrements it when dropped.
pub(crate) struct Gauge<'a>(&'a watch::Sender<usize>);

impl<'a> Gauge<'a> {
    /// Increments `counter`.
    pub fn new(counter: &'a watch::Sender<usize>) -> Gauge<'a> {
        counter.send_modify(|c| *c += 1);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|c| *c = c.saturating_sub(1));
    }
}
