//! A sink worker: moves one sink's cursor through the journal.
//!
//! The worker waits until the journal's durable head is past its cursor, reads a batch,
//! keeps the events its routes send to this sink, and hands them to the sink. Events the
//! sink could not deliver are sent again after a jittered, growing delay, for ever: a broker
//! outage holds back this sink only, while the journal keeps taking events for the others.
//! Rejected events are counted and logged, never silently dropped. Only when every event of
//! the batch is delivered or rejected does the cursor move, saved atomically with the sink's
//! own checkpoint state, so a crash at any point re-delivers from the last saved cursor.
//!
//! A sink that pipelines (see the sink contract) is handed the next batch while earlier
//! batches still await their confirmations, up to its depth. The cursor moves past a batch
//! only once it and every batch before it are final; after any failure the worker confirms
//! everything in flight, then delivers the leftovers in journal order, unpipelined, before it
//! submits anything new.

use crate::config::CommonSinkConfig;
use crate::cursor::{self, Cursor};
use crate::journal::JournalError;
use crate::journal::board::{CursorBoard, Slot};
use crate::journal::reader::{Batch, JournalReader};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::stats::{SinkStats, add};
use backon::{BackoffBuilder, ExponentialBuilder};
use nomad_relay_sink_api::{DRAIN_EVERY, Envelope, Outcome, Sink, SinkError, SinkErrorKind, Submission};
use std::collections::VecDeque;
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

/// A batch read from the journal: the events routed to this sink, and the journal position
/// and Nomad index the batch ends at (where the cursor goes once all of them are final).
struct JournalBatch {
    events: Vec<Envelope>,
    last_seq: u64,
    last_index: u64,
}

/// A batch in the pipeline, awaiting its outcomes.
struct Submitted {
    batch: JournalBatch,
    /// False for a batch with no events for this sink: nothing to confirm, but the cursor
    /// still passes it only after the batches before it.
    with_sink: bool,
}

/// The batches a pipelined sink has in flight, oldest first.
#[derive(Default)]
struct Pipeline {
    batches: VecDeque<Submitted>,
    /// Batches added since the pipeline was last empty.
    since_empty: usize,
}

impl Pipeline {
    fn push(&mut self, batch: JournalBatch, with_sink: bool) {
        self.batches.push_back(Submitted { batch, with_sink });
        self.since_empty += 1;
    }

    fn pop(&mut self) -> Option<Submitted> {
        let oldest = self.batches.pop_front();
        if self.batches.is_empty() {
            self.since_empty = 0;
        }
        oldest
    }

    fn len(&self) -> usize {
        self.batches.len()
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// True once [`DRAIN_EVERY`] batches went in since the pipeline was last empty: it is
    /// confirmed to the end before more go in.
    fn due_to_drain(&self) -> bool {
        self.since_empty >= DRAIN_EVERY
    }

    /// Batches handed to the sink.
    fn submitted(&self) -> usize {
        self.batches.iter().filter(|b| b.with_sink).count()
    }

    /// Events handed to the sink.
    fn events(&self) -> u64 {
        self.batches.iter().map(|b| b.batch.events.len() as u64).sum()
    }
}

/// What one attempt at a set of events left to do.
#[derive(Default)]
struct Attempt {
    /// Events to send again, in journal order.
    retry: Vec<Envelope>,
    /// Why the first retried event failed; `None` when nothing failed (or nothing was sent
    /// yet).
    reason: Option<SinkError>,
    /// The sink deferred events until its checkpoint state is saved.
    deferred: bool,
}

impl Attempt {
    /// Events not sent yet: [`SinkWorker::deliver`] starts by sending them.
    fn untried(events: Vec<Envelope>) -> Attempt {
        Attempt { retry: events, ..Attempt::default() }
    }

    /// True when every event is delivered or rejected.
    fn is_final(&self) -> bool {
        self.retry.is_empty()
    }

    /// Adds a later attempt's leftovers after this one's.
    fn merge(&mut self, later: Attempt) {
        self.retry.extend(later.retry);
        if self.reason.is_none() {
            self.reason = later.reason;
        }
        self.deferred |= later.deferred;
    }
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
        let depth = self.sink.pipeline_depth().max(1);
        info!(sink = %self.name, guarantee = %self.sink.guarantee(), next = self.cursor.next_seq, pipeline_depth = depth, "sink ready");
        let mut reader = Some(JournalReader::new(self.journal_dir.clone(), self.cursor.next_seq));
        let mut pipeline = Pipeline::default();
        loop {
            // A sink may lower its depth as it runs (the Kafka sink does when its queue is small).
            let depth = self.sink.pipeline_depth().max(1);
            let next_seq = reader.as_ref().map(JournalReader::next_seq).unwrap_or(self.cursor.next_seq);
            if !pipeline.is_empty() {
                // Confirm the oldest batch when no more may be submitted, when the pipeline is
                // due to run empty, or when there is nothing new to submit meanwhile.
                let nothing_new = *self.head.borrow() < next_seq;
                if pipeline.len() >= depth
                    || pipeline.due_to_drain()
                    || nothing_new
                    || shutdown.is_cancelled()
                {
                    if let Err(interrupted) = self.confirm_oldest(&mut pipeline, &shutdown).await {
                        return self.finish(interrupted).await;
                    }
                    continue;
                }
            }
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
                    // The cursor jumps: everything before the gap must be final first.
                    while !pipeline.is_empty() {
                        if let Err(interrupted) = self.confirm_oldest(&mut pipeline, &shutdown).await {
                            return self.finish(interrupted).await;
                        }
                    }
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
                    let batch = JournalBatch { events: routed, last_seq, last_index };
                    let result = if depth > 1 {
                        self.submit(batch, &mut pipeline, &shutdown).await
                    } else {
                        self.deliver(Attempt::untried(batch.events), &shutdown).await.map(|()| {
                            self.cursor.next_seq = last_seq + 1;
                            self.cursor.last_index = last_index;
                        })
                    };
                    match result {
                        Ok(()) if pipeline.is_empty() => self.save_cursor().await?,
                        Ok(()) => {}
                        Err(interrupted) => return self.finish(interrupted).await,
                    }
                }
            }
        }
    }

    /// Ends the worker after an interruption: on shutdown the cursor is saved at the first
    /// event not yet final and the sink flushed.
    async fn finish(mut self, interrupted: Interrupted) -> Result<(), JournalError> {
        match interrupted {
            Interrupted::Shutdown { first_pending } => {
                self.cursor.next_seq = first_pending;
                self.save_cursor().await?;
                self.stop().await
            }
            Interrupted::Journal(error) => Err(error),
        }
    }

    /// Hands `batch` to a pipelined sink. A batch the sink settled at once (deferred, or
    /// failed before sending) is delivered the unpipelined way, after everything in flight.
    async fn submit(
        &mut self,
        batch: JournalBatch,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.events.is_empty() {
            // Nothing for this sink: final at once, but the cursor still waits for the
            // batches before it.
            pipeline.push(batch, false);
            return Ok(());
        }
        match self.sink.submit(&batch.events).await {
            Submission::InFlight => {
                pipeline.push(batch, true);
                self.show_pipeline(pipeline);
                Ok(())
            }
            Submission::Done(outcomes) => {
                let JournalBatch { events, last_seq, last_index } = batch;
                let mut attempt = Attempt::default();
                self.confirm_all(pipeline, &mut attempt).await;
                attempt.merge(self.judge(events, outcomes));
                self.deliver(attempt, shutdown).await?;
                self.cursor.next_seq = last_seq + 1;
                self.cursor.last_index = last_index;
                Ok(())
            }
        }
    }

    /// Confirms the oldest batch in flight and moves the cursor past it when all its events
    /// are final. Otherwise confirms every later batch too and delivers what is left over,
    /// in journal order, before anything more is submitted.
    async fn confirm_oldest(
        &mut self,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let Some(oldest) = pipeline.pop() else { return Ok(()) };
        let (mut attempt, mut last) = self.confirm(oldest).await;
        if !attempt.is_final() {
            last = self.confirm_all(pipeline, &mut attempt).await.unwrap_or(last);
            self.deliver(attempt, shutdown).await?;
        }
        self.cursor.next_seq = last.0 + 1;
        self.cursor.last_index = last.1;
        self.show_pipeline(pipeline);
        self.save_cursor().await.map_err(Interrupted::Journal)
    }

    /// Confirms every batch left in the pipeline, adding their leftovers to `attempt`; gives
    /// the last batch's journal position, if there was one.
    async fn confirm_all(&mut self, pipeline: &mut Pipeline, attempt: &mut Attempt) -> Option<(u64, u64)> {
        let mut last = None;
        while let Some(batch) = pipeline.pop() {
            let (leftovers, position) = self.confirm(batch).await;
            attempt.merge(leftovers);
            last = Some(position);
        }
        last
    }

    /// Publishes what the pipeline holds to the sink's gauges.
    fn show_pipeline(&self, pipeline: &Pipeline) {
        self.stats.in_flight.store(pipeline.events(), Ordering::Relaxed);
        self.stats.batches_in_flight.store(pipeline.submitted() as u64, Ordering::Relaxed);
    }

    /// The outcomes of one batch from the pipeline, and its last journal position.
    async fn confirm(&mut self, batch: Submitted) -> (Attempt, (u64, u64)) {
        let Submitted { batch: JournalBatch { events, last_seq, last_index }, with_sink } = batch;
        let attempt = if with_sink {
            let outcomes = self.sink.confirm(&events).await;
            self.judge(events, outcomes)
        } else {
            Attempt::default()
        };
        (attempt, (last_seq, last_index))
    }

    /// Counts and logs the final outcomes of an attempt and keeps the events to send again.
    fn judge(&self, events: Vec<Envelope>, outcomes: Vec<Outcome>) -> Attempt {
        let mut outcomes = outcomes;
        if outcomes.len() != events.len() {
            let message = format!(
                "the sink returned {} outcomes for {} events (a bug in the sink); the whole batch is sent again",
                outcomes.len(),
                events.len()
            );
            error!(sink = %self.name, "{message}");
            outcomes = events
                .iter()
                .map(|_| Outcome::Retry(SinkError::new(SinkErrorKind::Other, message.clone())))
                .collect();
        }
        let mut attempt = Attempt::default();
        let mut duplicates = 0;
        for (event, outcome) in events.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => add(&self.stats.delivered, 1),
                Outcome::Duplicate => duplicates += 1,
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
                    attempt.reason.get_or_insert(error);
                    attempt.retry.push(event);
                }
                Outcome::Deferred => {
                    attempt.deferred = true;
                    attempt.retry.push(event);
                }
            }
        }
        if duplicates > 0 {
            add(&self.stats.duplicates, duplicates);
            info!(sink = %self.name, duplicates, "events sent again were already at the destination and were not stored again");
        }
        attempt
    }

    /// Sends what `attempt` left over until every event is delivered or rejected, or until
    /// shutdown. An attempt with nothing done yet ([`Attempt::untried`]) starts with a send.
    async fn deliver(
        &mut self,
        mut attempt: Attempt,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut delays = self.backoff();
        let mut deferred_before = false;
        loop {
            if attempt.deferred {
                // Everything before the first pending event is final; saving the cursor there
                // (not at the batch's start) keeps the sink's state and the cursor in step, as
                // a shutdown in mid-batch does.
                if let Some(first) = attempt.retry.first() {
                    self.cursor.next_seq = first.seq;
                }
                self.save_cursor().await.map_err(Interrupted::Journal)?;
                if deferred_before && attempt.reason.is_none() {
                    // The contract says a sink defers once per change; one that keeps deferring
                    // is retried with a back-off rather than spun on.
                    attempt.reason = Some(SinkError::new(
                        SinkErrorKind::Other,
                        "the sink deferred the same events twice in a row (a bug in the sink)",
                    ));
                }
            }
            deferred_before = attempt.deferred;
            let pending = attempt.retry;
            self.stats.in_flight.store(pending.len() as u64, Ordering::Relaxed);
            if let Some(reason) = attempt.reason {
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
            if pending.is_empty() {
                return Ok(());
            }
            let outcomes = self.sink.send(&pending).await;
            attempt = self.judge(pending, outcomes);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(last_seq: u64) -> JournalBatch {
        JournalBatch { events: Vec::new(), last_seq, last_index: last_seq }
    }

    #[test]
    fn the_pipeline_runs_empty_at_least_every_drain_every_batches() {
        let mut pipeline = Pipeline::default();
        let mut seq = 0;
        // Kept two deep: one in, one out, never empty.
        pipeline.push(batch(seq), true);
        while !pipeline.due_to_drain() {
            seq += 1;
            pipeline.push(batch(seq), true);
            assert_eq!(pipeline.len(), 2);
            pipeline.pop();
        }
        assert_eq!(seq as usize, DRAIN_EVERY - 1, "due after {DRAIN_EVERY} batches went in");
        pipeline.pop();
        assert!(pipeline.is_empty() && !pipeline.due_to_drain(), "the count starts again once empty");
    }

    #[test]
    fn leftovers_keep_journal_order_and_the_first_reason() {
        let event = |seq| Envelope {
            seq,
            id: nomad_relay_sink_api::EventId { index: seq, digest: 0, occurrence: 0 },
            source: "default".into(),
            topic: "Job".into(),
            event_type: "JobRegistered".into(),
            key: "web".into(),
            namespace: "default".into(),
            raw: bytes::Bytes::from_static(b"{}"),
        };
        let mut earlier = Attempt { retry: vec![event(1)], reason: None, deferred: true };
        let later = Attempt {
            retry: vec![event(5), event(6)],
            reason: Some(SinkError::new(SinkErrorKind::Unavailable, "down")),
            deferred: false,
        };
        earlier.merge(later);
        assert_eq!(earlier.retry.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 5, 6]);
        assert!(earlier.deferred && !earlier.is_final());
        assert_eq!(earlier.reason.map(|r| r.message), Some("down".to_owned()));
    }
}
