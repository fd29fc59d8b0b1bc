//! Counters the relay keeps about itself: the source's connection and gaps, each sink's
//! deliveries. Plain atomics shared by reference; the metrics endpoint and the logs read them.

use nomad_relay_sink_api::SinkErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The Nomad source's counters.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Whether a stream is open and has sent its first line.
    pub connected: AtomicBool,
    /// Connections attempted after the first.
    pub reconnects: AtomicU64,
    /// Highest Index seen on the stream.
    pub last_index: AtomicU64,
    /// Possible losses detected (jumps past the checkpoint, skipped lines).
    pub gaps: AtomicU64,
    /// Body bytes received.
    pub bytes_read: AtomicU64,
    /// Events journaled.
    pub events_journaled: AtomicU64,
    /// Lines that could not be read (malformed or too long).
    pub lines_skipped: AtomicU64,
    /// Lines below the checkpoint, skipped as already journaled.
    pub lines_stale: AtomicU64,
    /// Resubscriptions below the checkpoint for namespaces the stream did not include.
    pub namespace_catch_ups: AtomicU64,
    /// Times a stream stayed below the checkpoint long enough to mean Nomad's index went
    /// backwards.
    pub index_resets: AtomicU64,
}

/// One sink's counters.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Events the sink confirmed.
    pub delivered: AtomicU64,
    /// Events the destination already held from an earlier send (not stored again).
    pub duplicates: AtomicU64,
    /// Delivery attempts that had to be retried.
    pub retried: AtomicU64,
    /// Events the destination refused for good.
    pub rejected: AtomicU64,
    /// Events dropped from the journal before this sink got them (`when_full = "drop_oldest"`).
    pub dropped: AtomicU64,
    /// Journal records this sink could not read (damaged on disk, quarantined).
    pub damaged: AtomicU64,
    /// Journal sequence of the next event to deliver.
    pub cursor: AtomicU64,
    /// Nomad index of the last event passed.
    pub cursor_index: AtomicU64,
    /// Whether the last attempt succeeded.
    pub healthy: AtomicBool,
    /// Events handed to the sink and not yet delivered or rejected.
    pub in_flight: AtomicU64,
    /// Batches a pipelined sink has been handed and not yet confirmed.
    pub batches_in_flight: AtomicU64,
    /// Events set aside because their destination alone is broken (`Outcome::Parked`).
    pub parked: AtomicU64,
    /// Why the sink last failed, for the readiness endpoint.
    pub last_problem: Mutex<Option<String>>,
    /// Failed attempts (open, send, confirm) by kind of failure, in [`FAILURE_KINDS`] order.
    pub failures: [AtomicU64; FAILURE_KINDS.len()],
}

/// The kinds of sink failure, in the order the failure counter keeps them.
pub const FAILURE_KINDS: [SinkErrorKind; 5] = [
    SinkErrorKind::Unavailable,
    SinkErrorKind::Refused,
    SinkErrorKind::Io,
    SinkErrorKind::Config,
    SinkErrorKind::Other,
];

impl SinkStats {
    /// Records a failed attempt: counted by kind, and the sink unhealthy for `reason`.
    pub fn failed(&self, kind: SinkErrorKind, reason: String) {
        self.count_failure(kind);
        self.set_unhealthy(reason);
    }

    /// Counts a failed attempt by kind, leaving health as it is (a parked destination: the
    /// sink's others still work).
    pub fn count_failure(&self, kind: SinkErrorKind) {
        if let Some(position) = FAILURE_KINDS.iter().position(|k| *k == kind) {
            self.failures[position].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the sink unhealthy for `reason`.
    fn set_unhealthy(&self, reason: String) {
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }

    /// Why the sink is unhealthy, as last recorded.
    pub fn problem(&self) -> String {
        self.last_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "not delivering yet".to_owned())
    }
}

/// Adds `n` to a counter.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
