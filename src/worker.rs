//! A sink worker: moves one sink's cursor through the journal.
//!
//! The worker waits until the journal's durable head is past its cursor, reads a batch,
//! keeps the events its routes send to this sink, and hands them to the sink. Events the
//! sink could not deliver are sent again after a jittered, growing delay, for ever: a broker
//! outage holds back this sink only, while the journal keeps taking events for the others.
//! Rejected events are counted and logged, never silently dropped. Only when every event of
//! a batch is delivered or rejected does the cursor move past it, saved atomically with the
//! sink's own checkpoint state, so a crash at any point re-delivers from the last saved
//! cursor.
//!
//! Every batch goes the one way the sink contract describes: it is submitted, and stays in
//! the pipeline (with the batches that had no events for this sink) until confirmed. A sink
//! that does not pipeline has one batch in flight at most, confirmed before the next is read
//! (most settle it in `submit` itself: the contract's default sends it whole). A sink that
//! pipelines is handed the next batch while earlier ones still await their confirmations, up
//! to its depth; after any failure the worker confirms everything in flight, then delivers
//! the leftovers in journal order, unpipelined, before it submits anything new.
//!
//! An event the sink parks (its own destination is broken, the sink's others work) is set
//! aside ([`parked`]) rather than retried in place: the worker goes on, offers it again after
//! a back-off, and never saves the cursor past it.
//!
//! The worker's log lines, and those of the sink it drives, carry the `sink` span the relay
//! runs it in.

use crate::config::CommonSinkConfig;
use crate::cursor::{self, Cursor};
use crate::journal::JournalError;
use crate::journal::board::{CursorBoard, Slot};
use crate::journal::reader::{JournalReader, Read};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::source::resume::{GAP_TYPE, RELAY_TOPIC, gap_marker};
use crate::stats::{SinkStats, add};
use backon::{BackoffBuilder, ExponentialBuilder};
use nomad_relay_sink_api::{
    DRAIN_EVERY, Envelope, EventId, Outcome, Sink, SinkError, SinkErrorKind, Submission,
};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub mod parked;
pub use parked::Parked;

/// Everything a worker needs.
pub struct SinkWorker<S: Sink = AnySink> {
    /// The sink's name.
    pub name: String,
    /// The sink.
    pub sink: S,
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
    /// Events set aside (none at start: `Parked::default()`).
    pub parked: Parked,
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The journal could not be read, or the cursor saved.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The cursor was asked to move back (a bug, refused rather than acted on).
    #[error(transparent)]
    Cursor(#[from] cursor::Backwards),
}

/// Why delivery stopped before every event was done.
enum Interrupted {
    /// Shutdown came while `first_pending` was still undelivered.
    Shutdown { first_pending: u64 },
    /// The journal or the cursor failed.
    Failed(WorkerError),
}

impl From<WorkerError> for Interrupted {
    fn from(error: WorkerError) -> Self {
        Interrupted::Failed(error)
    }
}

impl From<JournalError> for Interrupted {
    fn from(error: JournalError) -> Self {
        Interrupted::Failed(error.into())
    }
}

impl From<cursor::Backwards> for Interrupted {
    fn from(error: cursor::Backwards) -> Self {
        Interrupted::Failed(error.into())
    }
}

/// A batch read from the journal: the events routed to this sink, and the journal position
/// and Nomad index the batch ends at (where the cursor goes once all of them are final).
struct Batch {
    events: Vec<Envelope>,
    last_seq: u64,
    last_index: u64,
}

/// A batch in the pipeline, awaiting its outcomes.
struct Submitted {
    batch: Batch,
    /// False for a batch with no events for this sink: nothing to confirm, but the cursor
    /// still passes it only after the batches before it.
    with_sink: bool,
}

/// The batches read and not yet final, oldest first: those handed to the sink, and those
/// with no events for it, which wait for the batches before them.
#[derive(Default)]
struct Pipeline {
    batches: VecDeque<Submitted>,
    /// Batches added since the pipeline was last empty.
    since_empty: usize,
}

impl Pipeline {
    fn push(&mut self, batch: Batch, with_sink: bool) {
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
    /// Why the first retried event failed; `None` when nothing failed.
    reason: Option<SinkError>,
    /// The sink deferred events until its checkpoint state is saved.
    deferred: bool,
    /// The sink parked events there was no room to set aside: they are retried in place,
    /// together with the parked ones (the sink may hold them behind those).
    overflow: bool,
}

/// What the worker does next in its loop.
enum Step {
    /// Records were read from the journal.
    Read(Read),
    /// Parked events are due to be offered again.
    OfferParked,
}

impl Attempt {
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
        self.overflow |= later.overflow;
    }
}

/// The journal reader, moved onto a blocking thread for each read.
struct Reader {
    reader: Option<JournalReader>,
    dir: PathBuf,
}

impl Reader {
    fn new(dir: PathBuf, next_seq: u64) -> Reader {
        Reader { reader: Some(JournalReader::new(dir.clone(), next_seq)), dir }
    }

    /// The journal record the next read starts at.
    fn next_seq(&self) -> Option<u64> {
        self.reader.as_ref().map(JournalReader::next_seq)
    }

    /// Up to `max_events` records up to `head`, read off the async runtime.
    async fn read(&mut self, head: u64, max_events: usize, max_bytes: usize) -> Result<Read, JournalError> {
        let failed =
            |e: String| JournalError::Io { path: self.dir.clone(), source: std::io::Error::other(e) };
        let Some(mut reader) = self.reader.take() else {
            return Err(failed("the journal reader was lost to an earlier failure".into()));
        };
        let (reader, read) = tokio::task::spawn_blocking(move || {
            let read = reader.read(head, max_events, max_bytes);
            (reader, read)
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        self.reader = Some(reader);
        read
    }
}

impl<S: Sink> SinkWorker<S> {
    /// Runs until `shutdown` is cancelled or the journal writer stops.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        if !self.open(&shutdown).await? {
            return Ok(());
        }
        let mut pipeline = Pipeline::default();
        match self.deliver_journal(&mut pipeline, &shutdown).await {
            Ok(()) => {}
            Err(Interrupted::Shutdown { first_pending }) => {
                self.cursor.advance_to(first_pending)?;
                if let Err(error) = self.try_save_cursor().await {
                    warn!(
                        "cannot save the cursor at shutdown: {error}; the last saved one stands, and what follows it is delivered again after the restart"
                    );
                }
            }
            Err(Interrupted::Failed(error)) => return Err(error),
        }
        self.stop().await;
        Ok(())
    }

    /// Opens the sink, retrying until it opens (true) or shutdown comes (false), and saves
    /// the state it opened with: a sink without a saved cursor (new, or never confirmed a
    /// batch) could otherwise not undo a batch written just before a crash (the file sink
    /// cuts back to this length).
    async fn open(&mut self, shutdown: &CancellationToken) -> Result<bool, WorkerError> {
        let mut delays = self.backoff();
        while let Err(error) = self.sink.open(self.cursor.sink_state.clone()).await {
            self.stats.failed(error.kind, format!("cannot open: {}", error.report()));
            let delay = delays.next().unwrap_or(self.settings.retry_max_delay.0);
            warn!(
                error_kind = error.kind.name(),
                "cannot open sink: {}; retrying in {delay:.1?}",
                error.report()
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        match self.save_cursor(shutdown).await {
            Ok(()) => {}
            Err(Interrupted::Shutdown { .. }) => return Ok(false),
            Err(Interrupted::Failed(error)) => return Err(error),
        }
        self.stats.healthy.store(true, Ordering::Relaxed);
        let depth = self.sink.pipeline_depth().max(1);
        info!(guarantee = %self.sink.guarantee(), next = self.cursor.next_seq(), pipeline_depth = depth, "sink ready");
        Ok(true)
    }

    /// Delivers the journal from the cursor on until shutdown (or the writer stops): confirm
    /// what must be confirmed, else read the next batch and submit it.
    async fn deliver_journal(
        &mut self,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut reader = Reader::new(self.journal_dir.clone(), self.cursor.next_seq());
        loop {
            if self.must_confirm(pipeline, &reader, shutdown) {
                self.confirm_oldest(pipeline, shutdown).await?;
                continue;
            }
            let read = match self.next_step(&mut reader, shutdown).await? {
                None => return Ok(()),
                Some(Step::OfferParked) => {
                    while !pipeline.is_empty() {
                        self.confirm_oldest(pipeline, shutdown).await?;
                    }
                    self.offer_parked(shutdown).await?;
                    continue;
                }
                Some(Step::Read(read)) => read,
            };
            match read {
                Read::Skipped { from, to } => self.skip(from, to, pipeline, shutdown).await?,
                Read::Damaged { from, to, reason, quarantined } => {
                    self.step_over_damage(from, to, &reason, quarantined, pipeline, shutdown).await?
                }
                Read::Events(events) => {
                    let Some(batch) = self.route(events) else { continue };
                    self.submit(batch, pipeline, shutdown).await?;
                }
            }
        }
    }

    /// Whether the oldest batch in flight is to be confirmed before anything more is read:
    /// when no more may be submitted, when the pipeline is due to run empty, when there is
    /// nothing new to submit meanwhile, or at shutdown.
    fn must_confirm(&self, pipeline: &Pipeline, reader: &Reader, shutdown: &CancellationToken) -> bool {
        if pipeline.is_empty() {
            return false;
        }
        // A sink may lower its depth as it runs (the Kafka sink does when its queue is small).
        let depth = self.sink.pipeline_depth().max(1);
        let next_seq = reader.next_seq().unwrap_or(self.cursor.next_seq());
        let nothing_new = *self.head.borrow() < next_seq;
        pipeline.len() >= depth || pipeline.due_to_drain() || nothing_new || shutdown.is_cancelled()
    }

    /// Waits until the journal holds records past the reader, and reads them, or until the
    /// parked events are due (at once while they fill their bound: nothing more is read
    /// then); `None` at shutdown or when the writer is gone.
    async fn next_step(
        &mut self,
        reader: &mut Reader,
        shutdown: &CancellationToken,
    ) -> Result<Option<Step>, WorkerError> {
        let Some(next_seq) = reader.next_seq() else { return Ok(None) };
        // Due parked events go before more is read, also under a steady flow of new ones.
        if self.parked.is_due(tokio::time::Instant::now()) {
            return Ok(Some(Step::OfferParked));
        }
        let full = self.parked.is_full(self.settings.max_parked_bytes.0);
        while full || *self.head.borrow() < next_seq {
            if self.parked.is_due(tokio::time::Instant::now()) {
                return Ok(Some(Step::OfferParked));
            }
            // Once the writer is gone nothing new comes; parked events are still offered.
            let writer_alive = self.head.has_changed().is_ok();
            if !writer_alive && self.parked.is_empty() {
                return Ok(None);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = self.head.changed(), if !full && writer_alive => {}
                () = parked_due(self.parked.due()) => {}
            }
        }
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let head = *self.head.borrow();
        let max_bytes = usize::try_from(self.settings.batch_bytes.0).unwrap_or(usize::MAX);
        Ok(Some(Step::Read(reader.read(head, self.settings.batch_size, max_bytes).await?)))
    }

    /// Offers the parked events again, oldest first: those delivered or rejected are done,
    /// the rest stay parked for a longer back-off; then the cursor is saved, which moves it
    /// up to the oldest event still parked.
    async fn offer_parked(&mut self, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        let events = self.parked.take();
        let offered = events.len();
        let outcomes = self.sink.send(&events).await;
        let mut attempt = self.judge(events, outcomes);
        if attempt.deferred {
            // The sink needs its state saved before it sends these (a Kafka topic it now
            // found): saved with the cursor still before them (the offer holds it at the
            // oldest), then sent at once.
            self.save_cursor(shutdown).await?;
            let again = std::mem::take(&mut attempt.retry);
            let outcomes = self.sink.send(&again).await;
            attempt = self.judge(again, outcomes);
        }
        // Whatever is still not final waits with the parked ones, not in place.
        let reason = attempt.reason.take();
        for event in attempt.retry {
            let reason = reason.as_ref().map_or_else(
                || SinkError::new(SinkErrorKind::Other, "deferred again"),
                |r| SinkError::new(r.kind, r.report()),
            );
            self.parked.park(event, reason);
        }
        let (min, max) = (self.settings.retry_min_delay.0, self.settings.retry_max_delay.0);
        self.parked.offered(min, max);
        self.stats.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        match self.parked.reason() {
            None => info!(offered, "every parked event was delivered (or rejected); the cursor moves on"),
            Some(reason) => warn!(
                offered,
                parked = self.parked.len(),
                "parked events still cannot be delivered: {}; offered again in up to {max:.0?}",
                reason.report()
            ),
        }
        self.save_cursor(shutdown).await
    }

    /// The events of a read that go to this sink, with where the read ends; `None` for an
    /// empty read.
    fn route(&self, events: Vec<Envelope>) -> Option<Batch> {
        let last = events.last()?;
        let (last_seq, last_index) = (last.seq, last.id.index);
        let events = events.into_iter().filter(|e| self.router.routes_to(&self.name, e)).collect();
        Some(Batch { events, last_seq, last_index })
    }

    /// Moves past records the journal dropped before this sink had them (`when_full =
    /// "drop_oldest"`), once everything before them is final.
    async fn skip(
        &mut self,
        from: u64,
        to: u64,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        while !pipeline.is_empty() {
            self.confirm_oldest(pipeline, shutdown).await?;
        }
        add(&self.stats.dropped, to - from);
        warn!(
            dropped = to - from,
            "{} events (journal records {from}..{to}) were removed from the full journal before this sink delivered them (when_full = \"drop_oldest\")",
            to - from
        );
        self.cursor.advance_to(to)?;
        self.save_cursor(shutdown).await
    }

    /// Moves past journal records that cannot be read (quarantined by the reader), once
    /// everything before them is final, after delivering a `GapDetected` marker in their place
    /// so the sink's consumers see the loss.
    async fn step_over_damage(
        &mut self,
        from: u64,
        to: u64,
        reason: &str,
        quarantined: Option<PathBuf>,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        while !pipeline.is_empty() {
            self.confirm_oldest(pipeline, shutdown).await?;
        }
        add(&self.stats.damaged, to - from);
        let kept = quarantined.map_or_else(
            || "they could not be copied aside".to_owned(),
            |p| format!("their bytes are in {}", p.display()),
        );
        error!(
            damaged = to - from,
            "{reason}; the events are lost to this sink and a GapDetected marker goes in their place ({kept}; `nomad-relay journal check` lists every damaged record)"
        );
        let index = self.cursor.position.last_index;
        let digest = crate::source::resume::digest("journal", RELAY_TOPIC, GAP_TYPE, "", &from.to_string());
        let payload =
            serde_json::json!({ "Gap": { "LastIndex": index, "ResumedIndex": index, "Reason": reason } });
        let mut marker =
            gap_marker("journal", EventId { index, digest, occurrence: 0 }, &payload.to_string());
        marker.seq = from;
        self.deliver(Attempt { retry: vec![marker], ..Attempt::default() }, shutdown).await?;
        self.cursor.advance_to(to)?;
        self.save_cursor(shutdown).await
    }

    /// Hands `batch` to the sink. A batch in flight joins the pipeline; a batch the sink
    /// settled at once (in `submit` itself, as unpipelined sinks do, or deferred or failed
    /// before it was sent) is delivered to the end, after everything in flight, and the
    /// cursor saved past it.
    async fn submit(
        &mut self,
        batch: Batch,
        pipeline: &mut Pipeline,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.events.is_empty() {
            // Nothing for this sink: final at once, but the cursor still waits for the
            // batches before it.
            pipeline.push(batch, false);
            return Ok(());
        }
        self.stats.in_flight.store(pipeline.events() + batch.events.len() as u64, Ordering::Relaxed);
        match self.sink.submit(&batch.events).await {
            Submission::InFlight => {
                pipeline.push(batch, true);
                self.show_pipeline(pipeline);
                Ok(())
            }
            Submission::Done(outcomes) => {
                let Batch { events, last_seq, last_index } = batch;
                let mut attempt = Attempt::default();
                self.confirm_all(pipeline, &mut attempt).await;
                self.show_pipeline(pipeline);
                attempt.merge(self.judge(events, outcomes));
                self.deliver(attempt, shutdown).await?;
                self.cursor.pass_batch(last_seq, last_index)?;
                self.save_cursor(shutdown).await
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
        self.cursor.pass_batch(last.0, last.1)?;
        self.show_pipeline(pipeline);
        self.save_cursor(shutdown).await
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
    async fn confirm(&mut self, submitted: Submitted) -> (Attempt, (u64, u64)) {
        let Submitted { batch: Batch { events, last_seq, last_index }, with_sink } = submitted;
        let attempt = if with_sink {
            let outcomes = self.sink.confirm(&events).await;
            self.judge(events, outcomes)
        } else {
            Attempt::default()
        };
        (attempt, (last_seq, last_index))
    }

    /// Counts and logs the final outcomes of an attempt, sets aside the events the sink
    /// parked (while the bound allows; past it they are retried in place), and keeps the
    /// events to send again.
    fn judge(&mut self, events: Vec<Envelope>, outcomes: Vec<Outcome>) -> Attempt {
        let mut outcomes = outcomes;
        if outcomes.len() != events.len() {
            let message = format!(
                "the sink returned {} outcomes for {} events (a bug in the sink); the whole batch is sent again",
                outcomes.len(),
                events.len()
            );
            error!("{message}");
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
                        event = %event.id,
                        topic = %event.topic,
                        r#type = %event.event_type,
                        key = %event.key,
                        error_kind = error.kind.name(),
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
                Outcome::Parked(error) => {
                    if self.parked.accepts(self.settings.max_parked_bytes.0) {
                        self.set_aside(event, error);
                    } else {
                        attempt.reason.get_or_insert(error);
                        attempt.overflow = true;
                        attempt.retry.push(event);
                    }
                }
            }
        }
        if duplicates > 0 {
            add(&self.stats.duplicates, duplicates);
            info!(duplicates, "events sent again were already at the destination and were not stored again");
        }
        attempt
    }

    /// Parks `event`: counted as a failure of its kind, logged, and offered again no sooner
    /// than the first back-off.
    fn set_aside(&mut self, event: Envelope, error: SinkError) {
        // Said once when events start being parked, not again at each offer of them.
        if self.parked.first_seq().is_none() {
            warn!(
                event = %event.id,
                topic = %event.topic,
                error_kind = error.kind.name(),
                "setting events aside: {}; the sink goes on with events for its other destinations, and the cursor waits at journal record {}",
                error.report(),
                event.seq
            );
        }
        self.stats.count_failure(error.kind);
        self.parked.park(event, error);
        self.parked.wait_at_least(self.settings.retry_min_delay.0);
        self.stats.parked.store(self.parked.len() as u64, Ordering::Relaxed);
    }

    /// Sends what `attempt` left over until every event is delivered or rejected, or until
    /// shutdown.
    async fn deliver(
        &mut self,
        mut attempt: Attempt,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        let mut delays = self.backoff();
        let mut deferred_before = false;
        loop {
            if attempt.deferred {
                self.save_for_deferred(&attempt, shutdown).await?;
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
            match attempt.reason {
                Some(reason) => {
                    let first_pending = pending.first().map_or(self.cursor.next_seq(), |e| e.seq);
                    let delay = delays.next().unwrap_or(self.settings.retry_max_delay.0);
                    self.back_off(&reason, pending.len(), delay, first_pending, shutdown).await?;
                }
                None => self.stats.healthy.store(true, Ordering::Relaxed),
            }
            if pending.is_empty() {
                return Ok(());
            }
            attempt = if attempt.overflow {
                self.send_with_parked(pending).await
            } else {
                let outcomes = self.sink.send(&pending).await;
                self.judge(pending, outcomes)
            };
        }
    }

    /// Sends `pending` (which holds parked outcomes there was no room to set aside) together
    /// with the parked events, in journal order: a sink that holds a destination's newer
    /// events behind its parked ones would otherwise park them again for ever. The parked
    /// events that are still not final are set aside again, whatever the bound; what is left
    /// of `pending` is retried in place.
    async fn send_with_parked(&mut self, pending: Vec<Envelope>) -> Attempt {
        let parked = self.parked.take();
        let offered: std::collections::BTreeSet<u64> = parked.iter().map(|e| e.seq).collect();
        let mut events = pending;
        events.extend(parked);
        events.sort_by_key(|e| e.seq);
        let outcomes = self.sink.send(&events).await;
        let mut attempt = self.judge(events, outcomes);
        let (again, own): (Vec<Envelope>, Vec<Envelope>) =
            std::mem::take(&mut attempt.retry).into_iter().partition(|e| offered.contains(&e.seq));
        for event in again {
            let reason = attempt.reason.as_ref().map_or_else(
                || SinkError::new(SinkErrorKind::Other, "deferred again"),
                |r| SinkError::new(r.kind, r.report()),
            );
            self.parked.park(event, reason);
        }
        attempt.retry = own;
        let (min, max) = (self.settings.retry_min_delay.0, self.settings.retry_max_delay.0);
        self.parked.offered(min, max);
        self.stats.parked.store(self.parked.len() as u64, Ordering::Relaxed);
        attempt
    }

    /// Saves the cursor at the first event still pending, with the sink's new state, as a
    /// deferral asks (everything before that event is final, so the cursor and the sink's
    /// state stay in step, as a shutdown in mid-batch leaves them).
    async fn save_for_deferred(
        &mut self,
        attempt: &Attempt,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if let Some(first) = attempt.retry.first() {
            self.cursor.advance_to(first.seq)?;
        }
        self.save_cursor(shutdown).await
    }

    /// Records a failed attempt and waits `delay` before the next one; shutdown during the
    /// wait interrupts delivery with `first_pending` still to do.
    async fn back_off(
        &self,
        reason: &SinkError,
        pending: usize,
        delay: Duration,
        first_pending: u64,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        add(&self.stats.retried, pending as u64);
        self.stats.failed(reason.kind, reason.report());
        warn!(
            error_kind = reason.kind.name(),
            "{pending} events not delivered: {}; retrying in {delay:.1?}",
            reason.report()
        );
        tokio::select! {
            _ = shutdown.cancelled() => Err(Interrupted::Shutdown { first_pending }),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> + use<S> {
        ExponentialBuilder::default()
            .with_min_delay(self.settings.retry_min_delay.0)
            .with_max_delay(self.settings.retry_max_delay.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Saves the cursor with the sink's state. A save that fails (a full disk, say) is tried
    /// again after a back-off, with the sink reported unhealthy, until it succeeds: the last
    /// saved cursor stays valid meanwhile (a crash re-delivers from it), and retention keeps
    /// everything after it (the board moves only with a saved cursor). Shutdown ends the
    /// attempts.
    async fn save_cursor(&mut self, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        let mut delays = self.backoff();
        let mut failed = false;
        loop {
            let error = match self.try_save_cursor().await {
                Ok(()) if failed => {
                    info!("the cursor is saved again");
                    self.stats.healthy.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            failed = true;
            let delay = delays.next().unwrap_or(self.settings.retry_max_delay.0);
            self.stats.failed(SinkErrorKind::Io, format!("cannot save its cursor: {error}"));
            error!(
                "cannot save the cursor: {error}; this sink waits until it can (the last saved cursor still holds); free space in {}. Retrying in {delay:.1?}",
                self.data_dir.display()
            );
            tokio::select! {
                _ = shutdown.cancelled() => return Err(Interrupted::Shutdown { first_pending: self.cursor.next_seq() }),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn try_save_cursor(&mut self) -> Result<(), JournalError> {
        self.cursor.sink_state = self.sink.checkpoint_state();
        let mut cursor = self.cursor.clone();
        if let Some(first) = self.parked.first_seq() {
            // Never past a parked event: a crash sends it (and what came after it) again.
            cursor.position.next_seq = cursor.position.next_seq.min(first);
        }
        let saved_seq = cursor.next_seq();
        let data_dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || cursor::save(&data_dir, &cursor)).await.map_err(|e| {
            JournalError::Io { path: self.data_dir.clone(), source: std::io::Error::other(e) }
        })??;
        self.board.update(self.slot, saved_seq);
        self.stats.cursor.store(saved_seq, Ordering::Relaxed);
        self.stats.cursor_index.store(self.cursor.position.last_index, Ordering::Relaxed);
        Ok(())
    }

    async fn stop(mut self) {
        if let Err(error) = self.sink.flush().await {
            warn!("flush at shutdown failed: {}", error.report());
        }
    }
}

/// Sleeps until `due`; never without one.
async fn parked_due(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
