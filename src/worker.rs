//! A sink worker: moves one sink's cursor through the journal.
//!
//! The worker waits until the journal's durable head is past its cursor, reads a batch,
//! keeps the events its routes send to this sink, and hands them to the sink. Events the
//! sink could not deliver are sent again after a jittered, growing delay, for ever: a broker
//! outage holds back this sink only, while the journal keeps taking events for the others.
//! Rejected events are counted and logged, never silently dropped. Only when every event of
//! the batch is delivered or rejected does the cursor move, saved atomically with the sink's
//! own checkpoint state, so a crash at any point re-delivers from the last saved cursor.

use crate::config::CommonSinkConfig;
use crate::cursor::{self, Cursor};
use crate::journal::JournalError;
use crate::journal::board::{CursorBoard, Slot};
use crate::journal::reader::{Batch, JournalReader};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::stats::{SinkStats, add};
use backon::{BackoffBuilder, ExponentialBuilder};
use nomad_relay_sink_api::{Envelope, Outcome, Sink, SinkError, SinkErrorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Bytes read from the journal per batch, at most (besides `batch_size` events).
const BATCH_BYTES: usize = 16 << 20;

/// Everything a worker needs.
pub struct SinkWorker {
    /// The sink's name.
    pub name: String,
    /// The sink.
    pub sink: AnySink,
    /// Settings every sink has.
    pub settings: CommonSinkConfig,
    /// The saved cursor to start from.
    pub cursor: Cursor,
    /// Where cursors are saved.
    pub data_dir: PathBuf,
    /// Where the journal is.
    pub journal_dir: PathBuf,
    /// Routing rules.
    pub router: Arc<Router>,
    /// Shared cursor positions for retention.
    pub board: Arc<CursorBoard>,
    /// This sink's slot on the board.
    pub slot: Slot,
    /// The journal's durable head.
    pub head: watch::Receiver<u64>,
    /// This sink's counters.
    pub stats: Arc<SinkStats>,
}

/// Why delivery stopped before every event was done.
enum Interrupted {
    /// Shutdown came while `first_pending` was still undelivered.
    Shutdown { first_pending: u64 },
    /// The cursor could not be saved when the sink asked for it.
    Journal(JournalError),
}

impl SinkWorker {
    fn backoff(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_min_delay.0)
            .with_max_delay(self.settings.retry_max_delay.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Runs until `shutdown` is cancelled or the journal writer stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), JournalError> {
        let mut delays = self.backoff();
        loop {
            match self.sink.open(self.cursor.sink_state.clone()).await {
                Ok(()) => break,
                Err(error) => {
                    self.stats.set_unhealthy(format!("cannot open: {}", error.report()));
                    let delay = delays.next().unwrap_or(self.settings.retry_max_delay.0);
                    warn!(sink = %self.name, "cannot open sink: {}; retrying in {delay:.1?}", error.report());
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Record the state the sink opened with before anything is delivered: a sink without a
        // saved cursor (new, or never confirmed a batch) could otherwise not undo a batch
        // written just before a crash (the file sink cuts back to this length).
        self.save_cursor().await?;
        self.stats.healthy.store(true, Ordering::Relaxed);
        info!(sink = %self.name, guarantee = %self.sink.guarantee(), next = self.cursor.next_seq, "sink ready");
        let mut reader = Some(JournalReader::new(self.journal_dir.clone(), self.cursor.next_seq));
        loop {
            let next_seq = reader.as_ref().map(JournalReader::next_seq).unwrap_or(self.cursor.next_seq);
            while *self.head.borrow() < next_seq {
                tokio::select! {
                    _ = shutdown.cancelled() => return self.stop().await,
                    changed = self.head.changed() => if changed.is_err() { return self.stop().await },
                }
            }
            if shutdown.is_cancelled() {
                return self.stop().await;
            }
            let head = *self.head.borrow();
            let batch_size = self.settings.batch_size;
            let Some(mut taken) = reader.take() else { return self.stop().await };
            let (returned, batch) = tokio::task::spawn_blocking(move || {
                let batch = taken.read(head, batch_size, BATCH_BYTES);
                (taken, batch)
            })
            .await
            .map_err(|e| JournalError::Io {
                path: self.journal_dir.clone(),
                source: std::io::Error::other(e),
            })?;
            reader = Some(returned);
            match batch? {
                Batch::Skipped { from, to } => {
                    add(&self.stats.dropped, to - from);
                    warn!(sink = %self.name, "{} events (journal records {from}..{to}) were removed from the full journal before this sink delivered them (when_full = \"drop_oldest\")", to - from);
                    self.cursor.next_seq = to;
                    self.save_cursor().await?;
                }
                Batch::Events(events) => {
                    let Some(last) = events.last() else { continue };
                    let (last_seq, last_index) = (last.seq, last.id.index);
                    let routed: Vec<Envelope> =
                        events.into_iter().filter(|e| self.router.routes_to(&self.name, e)).collect();
                    match self.deliver(routed, &shutdown).await {
                        Ok(()) => {
                            self.cursor.next_seq = last_seq + 1;
                            self.cursor.last_index = last_index;
                            self.save_cursor().await?;
                        }
                        Err(Interrupted::Shutdown { first_pending }) => {
                            self.cursor.next_seq = first_pending;
                            self.save_cursor().await?;
                            return self.stop().await;
                        }
                        Err(Interrupted::Journal(error)) => return Err(error),
                    }
                }
            }
        }
    }

    /// Delivers `events`, retrying what the sink could not deliver until it is delivered or
    /// rejected, or until shutdown.
    async fn deliver(
        &mut self,
        mut pending: Vec<Envelope>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut delays = self.backoff();
        let mut deferred_before = false;
        while !pending.is_empty() {
            self.stats.in_flight.store(pending.len() as u64, Ordering::Relaxed);
            let mut outcomes = self.sink.send(&pending).await;
            if outcomes.len() != pending.len() {
                let message = format!(
                    "the sink returned {} outcomes for {} events (a bug in the sink); the whole batch is sent again",
                    outcomes.len(),
                    pending.len()
                );
                error!(sink = %self.name, "{message}");
                outcomes = pending
                    .iter()
                    .map(|_| Outcome::Retry(SinkError::new(SinkErrorKind::Other, message.clone())))
                    .collect();
            }
            let mut retry = Vec::new();
            let mut reason: Option<SinkError> = None;
            let mut deferred = false;
            let mut outcomes = outcomes.into_iter();
            for event in pending {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Outcome::Retry(SinkError::new(
                        SinkErrorKind::Other,
                        "the sink reported no outcome for this event",
                    ))
                });
                match outcome {
                    Outcome::Delivered => add(&self.stats.delivered, 1),
                    Outcome::Rejected(error) => {
                        add(&self.stats.rejected, 1);
                        error!(
                            sink = %self.name,
                            event = %event.id,
                            topic = %event.topic,
                            r#type = %event.event_type,
                            key = %event.key,
                            "the destination refused this event for good; it is counted as rejected and skipped: {}",
                            error.report()
                        );
                    }
                    Outcome::Retry(error) => {
                        reason.get_or_insert(error);
                        retry.push(event);
                    }
                    Outcome::Deferred => {
                        deferred = true;
                        retry.push(event);
                    }
                }
            }
            pending = retry;
            if deferred && reason.is_none() {
                if deferred_before {
                    // The contract says a sink defers once per change; one that keeps deferring
                    // is retried with a back-off rather than spun on.
                    reason = Some(SinkError::new(
                        SinkErrorKind::Other,
                        "the sink deferred the same events twice in a row (a bug in the sink)",
                    ));
                } else {
                    // Everything before the first pending event is final; saving the cursor
                    // there (not at the batch's start) keeps the sink's state and the cursor
                    // in step, as a shutdown in mid-batch does.
                    if let Some(first) = pending.first() {
                        self.cursor.next_seq = first.seq;
                    }
                    self.save_cursor().await.map_err(Interrupted::Journal)?;
                }
            }
            deferred_before = deferred;
            self.stats.in_flight.store(pending.len() as u64, Ordering::Relaxed);
            if let Some(reason) = reason {
                add(&self.stats.retried, pending.len() as u64);
                self.stats.set_unhealthy(reason.report());
                let delay = delays.next().unwrap_or(self.settings.retry_max_delay.0);
                warn!(sink = %self.name, "{} events not delivered: {}; retrying in {delay:.1?}", pending.len(), reason.report());
                let first_pending = pending.first().map(|e| e.seq).unwrap_or(0);
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(Interrupted::Shutdown { first_pending }),
                    _ = tokio::time::sleep(delay) => {}
                }
            } else {
                self.stats.healthy.store(true, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn save_cursor(&mut self) -> Result<(), JournalError> {
        self.cursor.sink_state = self.sink.checkpoint_state();
        let cursor = self.cursor.clone();
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || cursor::save(&data_dir, &cursor)).await.map_err(|e| {
            JournalError::Io { path: self.data_dir.clone(), source: std::io::Error::other(e) }
        })??;
        self.board.update(self.slot, self.cursor.next_seq);
        self.stats.cursor.store(self.cursor.next_seq, Ordering::Relaxed);
        self.stats.cursor_index.store(self.cursor.last_index, Ordering::Relaxed);
        Ok(())
    }

    async fn stop(mut self) -> Result<(), JournalError> {
        if let Err(error) = self.sink.flush().await {
            warn!(sink = %self.name, "flush at shutdown failed: {}", error.report());
        }
        Ok(())
    }
}
