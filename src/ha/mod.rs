//! High availability: several instances of one relay group follow Nomad into their own
//! journals; the one holding the [`lease`] delivers, the others are warm standbys.
//!
//! The roles, as a loop of named steps:
//!
//! - **Standby**: block on the lease variable (a blocking read wakes on every write: the
//!   leader's checkpoints, a release, the removal of an expired lock); each time, move the
//!   local cursors to the shared [`checkpoint`] (so retention frees what the leader has
//!   delivered, and a takeover starts from there), then try to acquire the lock with the items
//!   just read.
//! - **Leader**: start the sink workers from the cursors the checkpoint gave; renew the lock
//!   every third of its TTL; write the shared checkpoint every `checkpoint_interval`, with the
//!   lock (an acquire by the holder, which Nomad refuses while another instance holds it);
//!   stop the workers at once when a renewal or a write says the lock is gone, or when the last
//!   successful renewal is older than 0.9 of the TTL (a paused or cut-off leader stops before
//!   Nomad, which expires a lock at twice its TTL plus the lock delay, lets anyone else take
//!   it). On a clean stop: stop the workers, write the checkpoint, release the lock.

pub mod checkpoint;
pub mod lease;

use crate::config::HaConfig;
use crate::cursor::{self, Cursor};
use crate::journal::board::{CursorBoard, Slot};
use checkpoint::{SharedCheckpoint, SinkCheckpoint, Tracked};
use lease::{Lease, LeaseError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The share of the TTL after the last successful renewal at which the leader stops delivering.
const FENCE_AFTER: f64 = 0.9;

/// Counters and the role, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct HaStats {
    /// Whether this instance holds the lease and delivers.
    pub leader: AtomicBool,
    /// Terms as leader begun.
    pub failovers: AtomicU64,
    /// Renewals that failed (the lease may still be held).
    pub renew_failures: AtomicU64,
    /// When the shared checkpoint was last written or read, Unix milliseconds (0: never).
    pub checkpoint_unix_ms: AtomicU64,
}

/// Starts the sink workers for one term as leader, on `tracker`; they stop when `token` is
/// cancelled.
pub type StartWorkers = Box<dyn Fn(CancellationToken, &TaskTracker) + Send + Sync>;

/// One sink as the roles see it: its name, its slot on the cursor board, and where a sink
/// with no cursor file starts.
#[derive(Debug, Clone)]
pub struct HaSink {
    /// The sink's name.
    pub name: String,
    /// Its slot on the board.
    pub slot: Slot,
    /// The journal record a new sink starts at.
    pub first_seq: u64,
}

/// The roles of one instance.
pub struct Roles<L: Lease> {
    /// The lease.
    pub lease: L,
    /// `[ha]`.
    pub config: HaConfig,
    /// This instance's name in the checkpoint (its lock id).
    pub instance: String,
    /// Where cursors are saved.
    pub data_dir: PathBuf,
    /// Where the journal is.
    pub journal_dir: PathBuf,
    /// The journal's durable head.
    pub head: watch::Receiver<u64>,
    /// The sinks.
    pub sinks: Vec<HaSink>,
    /// Cursor positions, for retention.
    pub board: Arc<CursorBoard>,
    /// Counters.
    pub stats: Arc<HaStats>,
    /// Starts the workers of a term.
    pub start_workers: StartWorkers,
    /// How long workers may take to stop.
    pub shutdown_timeout: Duration,
}

/// How a term as leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Shutdown,
    Lost,
}

impl<L: Lease> Roles<L> {
    /// Runs the roles until `shutdown`; `Err` when the lease store refuses this instance's
    /// requests (a configuration to fix) or the shared checkpoint cannot be read.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), String> {
        info!(lease = %self.lease.describe(), ttl = ?self.config.ttl.0, lock_delay = ?self.config.lock_delay.0, "high availability: starting as a standby");
        while let Some(checkpoint) = self.stand_by(&shutdown).await? {
            if self.lead(checkpoint, &shutdown).await? == Ended::Shutdown {
                break;
            }
        }
        Ok(())
    }

    /// Follows the shared checkpoint until the lock is acquired (`Some`, with the checkpoint
    /// read just before) or shutdown (`None`).
    async fn stand_by(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Option<SharedCheckpoint>>, String> {
        let mut after = None;
        let mut delay = Duration::from_millis(200);
        loop {
            let wait = self.config.ttl.0;
            let observed = tokio::select! {
                () = shutdown.cancelled() => return Ok(None),
                observed = self.lease.read(after, wait) => observed,
            };
            let step = match observed {
                Ok(observed) => {
                    let checkpoint = SharedCheckpoint::from_items(&observed.items)?;
                    self.follow(checkpoint.as_ref()).await?;
                    after = Some(observed.index);
                    match self.lease.acquire(&observed.items).await {
                        Ok(()) => return Ok(Some(checkpoint)),
                        Err(LeaseError::Held) => Ok(()),
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(error),
            };
            match step {
                Ok(()) => delay = Duration::from_millis(200),
                Err(LeaseError::Refused(reason)) => return Err(reason),
                Err(error) => {
                    warn!(lease = %self.lease.describe(), "standby: {error}; trying again in {delay:?}");
                    after = None;
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(None),
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(self.config.ttl.0);
                }
            }
        }
    }

    /// One term as leader, from the lock's acquisition until it is lost or shutdown.
    async fn lead(
        &mut self,
        checkpoint: Option<SharedCheckpoint>,
        shutdown: &CancellationToken,
    ) -> Result<Ended, String> {
        let mut last_renewal = Instant::now();
        let mut trackers = self.follow(checkpoint.as_ref()).await?;
        let workers_token = CancellationToken::new();
        let workers = TaskTracker::new();
        (self.start_workers)(workers_token.clone(), &workers);
        workers.close();
        self.stats.leader.store(true, Ordering::Relaxed);
        self.stats.failovers.fetch_add(1, Ordering::Relaxed);
        info!(lease = %self.lease.describe(), "took the lease: this instance delivers");
        let ttl = self.config.ttl.0;
        let mut renewals = tokio::time::interval(ttl / 3);
        let mut checkpoints = tokio::time::interval(self.config.checkpoint_interval.0);
        renewals.reset();
        checkpoints.reset();
        let ended = loop {
            let fence_at = last_renewal + ttl.mul_f64(FENCE_AFTER);
            tokio::select! {
                () = shutdown.cancelled() => break Ended::Shutdown,
                () = tokio::time::sleep_until(fence_at) => {
                    error!(lease = %self.lease.describe(), "the lease was last renewed {:?} ago, over {FENCE_AFTER} of its TTL: stopping delivery so that another instance can take over safely", last_renewal.elapsed());
                    break Ended::Lost;
                }
                _ = renewals.tick() => {
                    let sent = Instant::now();
                    match tokio::time::timeout_at(fence_at, self.lease.renew()).await {
                        Ok(Ok(())) => last_renewal = sent,
                        Ok(Err(LeaseError::Lost(reason))) => {
                            error!(lease = %self.lease.describe(), "lost the lease ({reason}): stopping delivery");
                            break Ended::Lost;
                        }
                        Ok(Err(error)) => self.renew_failed(&error.to_string()),
                        Err(_) => self.renew_failed("no answer before the fence"),
                    }
                }
                _ = checkpoints.tick() => {
                    match self.write_checkpoint(&mut trackers, fence_at).await {
                        Ok(()) => {}
                        Err(LeaseError::Held) => {
                            error!(lease = %self.lease.describe(), "lost the lease (another instance holds it): stopping delivery");
                            break Ended::Lost;
                        }
                        Err(error) => warn!(lease = %self.lease.describe(), "cannot write the shared checkpoint: {error}; the next one carries it"),
                    }
                }
            }
        };
        workers_token.cancel();
        if tokio::time::timeout(self.shutdown_timeout, workers.wait()).await.is_err() {
            warn!(
                "some sinks did not stop within shutdown_timeout; their cursors stay at the last confirmed batch"
            );
        }
        self.stats.leader.store(false, Ordering::Relaxed);
        if ended == Ended::Shutdown {
            self.hand_over(&mut trackers, last_renewal + ttl.mul_f64(FENCE_AFTER)).await;
        } else {
            info!("now a standby");
        }
        Ok(ended)
    }

    fn renew_failed(&self, reason: &str) {
        self.stats.renew_failures.fetch_add(1, Ordering::Relaxed);
        warn!(lease = %self.lease.describe(), "cannot renew the lease: {reason}; delivery stops if no renewal succeeds in time");
    }

    /// On a clean stop: the last checkpoint, then the lock released so a standby takes over
    /// at once.
    async fn hand_over(&mut self, trackers: &mut BTreeMap<String, Tracked>, fence_at: Instant) {
        if let Err(error) = self.write_checkpoint(trackers, fence_at).await {
            warn!(lease = %self.lease.describe(), "cannot write the last shared checkpoint: {error}; the next leader repeats what followed the previous one");
        }
        match self.lease.release().await {
            Ok(()) => info!(lease = %self.lease.describe(), "released the lease"),
            Err(error) => {
                warn!(lease = %self.lease.describe(), "cannot release the lease: {error}; it expires after twice its TTL and the lock delay")
            }
        }
    }

    /// Writes the shared checkpoint from the cursors saved now, unless the fence is past.
    async fn write_checkpoint(
        &mut self,
        trackers: &mut BTreeMap<String, Tracked>,
        fence_at: Instant,
    ) -> Result<(), LeaseError> {
        let (data_dir, journal_dir) = (self.data_dir.clone(), self.journal_dir.clone());
        let mut moved = std::mem::take(trackers);
        let computed = tokio::task::spawn_blocking(move || {
            let mut sinks = BTreeMap::new();
            for (name, tracked) in &mut moved {
                let cursor = cursor::load(&data_dir, name)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_else(|| Cursor::new(name, tracked.next_seq));
                sinks.insert(name.clone(), tracked.follow(&journal_dir, &cursor).map_err(|e| e.to_string())?);
            }
            Ok::<_, String>((moved, sinks))
        })
        .await
        .map_err(|e| LeaseError::Unreachable(e.to_string()))?;
        let (moved, sinks) = computed.map_err(LeaseError::Unreachable)?;
        *trackers = moved;
        let checkpoint = SharedCheckpoint {
            version: checkpoint::VERSION,
            holder: self.instance.clone(),
            written_unix_ms: unix_ms(),
            sinks,
        };
        match tokio::time::timeout_at(fence_at, self.lease.acquire(&checkpoint.to_items())).await {
            Ok(Ok(())) => {
                self.stats.checkpoint_unix_ms.store(checkpoint.written_unix_ms, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(LeaseError::Unreachable("no answer before the fence".into())),
        }
    }

    /// Moves each sink's local cursor to where the shared checkpoint says it stands in this
    /// instance's journal (never back), and returns the trackers a term starts from.
    async fn follow(
        &self,
        checkpoint: Option<&SharedCheckpoint>,
    ) -> Result<BTreeMap<String, Tracked>, String> {
        let head = *self.head.borrow();
        let shared: BTreeMap<String, SinkCheckpoint> =
            checkpoint.map(|c| c.sinks.clone()).unwrap_or_default();
        let (data_dir, journal_dir, sinks) =
            (self.data_dir.clone(), self.journal_dir.clone(), self.sinks.clone());
        let board = self.board.clone();
        let trackers = tokio::task::spawn_blocking(move || {
            let mut trackers = BTreeMap::new();
            for sink in &sinks {
                let local = cursor::load(&data_dir, &sink.name)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_else(|| Cursor::new(&sink.name, sink.first_seq));
                let Some(at) = shared.get(&sink.name) else {
                    trackers.insert(
                        sink.name.clone(),
                        Tracked { next_seq: local.next_seq(), frontier: Default::default() },
                    );
                    continue;
                };
                let start = checkpoint::first_unpassed(&journal_dir, local.next_seq(), head, &at.frontier)
                    .map_err(|e| e.to_string())?;
                if start != local.next_seq() || local.sink_state != at.sink_state {
                    let mut moved = local.clone();
                    moved.advance_to(start).map_err(|e| e.to_string())?;
                    moved.sink_state.clone_from(&at.sink_state);
                    cursor::save(&data_dir, &moved).map_err(|e| e.to_string())?;
                    board.update(sink.slot, start);
                }
                trackers
                    .insert(sink.name.clone(), Tracked { next_seq: start, frontier: at.frontier.clone() });
            }
            Ok::<_, String>(trackers)
        })
        .await
        .map_err(|e| e.to_string())??;
        if let Some(checkpoint) = checkpoint {
            self.stats.checkpoint_unix_ms.store(checkpoint.written_unix_ms, Ordering::Relaxed);
        }
        Ok(trackers)
    }
}

/// Now, Unix milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
