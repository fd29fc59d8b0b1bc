//! The [`Sink`] trait and the types it speaks in: [`Outcome`], [`Guarantee`] and
//! [`SinkError`].
//!
//! # The contract
//!
//! The relay owns ordering, durability of its input and the cursor; a sink owns the broker.
//! The relay calls [`Sink::open`] once with the state the sink asked to keep at the last
//! checkpoint, then hands it batches of envelopes in journal order, never concurrently: with
//! [`Sink::submit`] (whose default sends the batch whole with [`Sink::send`]), and with
//! `send` for what it sends again. For every envelope of a batch, the sink gives exactly one
//! [`Outcome`], in the same order:
//!
//! - [`Outcome::Delivered`]: the broker has confirmed the event as durably as the sink's
//!   [`Guarantee`] says (a Kafka delivery report with `acks=all`, a JetStream PubAck, an AMQP
//!   publisher confirm, an `fsync` for a file). A sink must never report an event delivered on
//!   the strength of having written it to a socket or a client-side buffer alone, unless its
//!   guarantee is [`Guarantee::AtMostOnce`] and it says so.
//! - [`Outcome::Duplicate`]: the destination already held this event from an earlier send
//!   (a JetStream PubAck marked duplicate, a Kafka record the sink found by reading back what
//!   it wrote before a crash), so it was not stored again. Final like `Delivered`, counted
//!   apart so that an operator (and a test) sees the re-sends a broker absorbed.
//! - [`Outcome::Retry`]: the event was not delivered and may be on a later attempt (broker
//!   down, timeout, back-pressure). The relay backs off and sends it again, and never moves its
//!   cursor past it until it is delivered or rejected.
//! - [`Outcome::Rejected`]: the broker will never take this event as it is (too large,
//!   unroutable, refused by policy). The relay counts it, logs the reason, and moves on; it is
//!   never silently dropped.
//! - [`Outcome::Deferred`]: not sent, because the sink must have new checkpoint state saved
//!   before it may send this event (the Kafka sink records a topic's partition offsets before
//!   its first write there, so that a crash right after that write can still be undone). The
//!   relay saves the state returned by [`Sink::checkpoint_state`] at once, with the cursor at
//!   the first event of the batch that is not yet delivered or rejected, and sends the
//!   deferred events again without a back-off. A sink defers only on such a change, never
//!   twice in a row for the same reason.
//! - [`Outcome::Parked`]: not delivered, because this event's own destination is broken (a
//!   Kafka topic that does not exist or cannot be described, a subject no JetStream stream
//!   captures), while the sink's other
//!   destinations work. The relay sets the event aside and goes on with later events; it
//!   offers the parked events again with [`Sink::send`], in journal order among themselves,
//!   after a growing back-off, until each is delivered or rejected. The cursor stays at the
//!   first parked event, so a crash sends again everything after it, and the events already
//!   delivered after it must be recognised (an exactly-once sink keeps the state that finds
//!   them, and must describe it in [`Sink::checkpoint_state`] for a cursor at the first
//!   parked event). A sink parks only for a failure that concerns the event's destination;
//!   when the broker itself fails, it answers [`Outcome::Retry`]. The relay parks at most
//!   `max_parked_bytes` of events per sink; past that it stops reading the journal until the
//!   parked events are delivered, as with a retry.
//!
//! After `send` returns, the relay calls [`Sink::checkpoint_state`] and stores the value
//! atomically with its cursor (the cursor is the position of the first event not yet delivered
//! or rejected). On a restart, that value comes back through [`Sink::open`], which lets a sink
//! undo writes that went out after the last checkpoint: the file sink cuts its file back to
//! the length it had at the checkpoint, so a crash never leaves a repeated line.
//!
//! # Pipelining
//!
//! A sink whose broker confirms asynchronously (Kafka delivery reports, JetStream PubAcks)
//! would sit idle while it waits for the last confirmation of each batch. Such a sink says
//! through [`Sink::pipeline_depth`] how many batches may be awaiting their outcomes at once,
//! and implements [`Sink::submit`] and [`Sink::confirm`]. The relay then hands it batch n+1
//! with `submit` while batch n's confirmations are still outstanding, and calls `confirm` once
//! per submitted batch, oldest first, with the same events, for that batch's outcomes. The
//! rules above hold per batch, with these additions:
//!
//! - `submit` either returns [`Submission::InFlight`] (the batch is with the broker client;
//!   its outcomes come from `confirm`) or [`Submission::Done`] with one outcome per event
//!   (settled in `submit` itself: the default's whole send, a deferral, a failure before
//!   sending).
//! - The cursor moves only past batches whose events are all delivered or rejected, and
//!   [`Sink::checkpoint_state`] is saved with it while later batches are still in flight: the
//!   state must therefore be valid for a cursor at the first event of any batch not yet
//!   confirmed. A sink that can only describe its state when nothing is in flight keeps the
//!   state of its last such moment; the relay lets the pipeline run empty at least every
//!   [`DRAIN_EVERY`] batches, so that moment is never far behind.
//! - After any outcome other than delivered or rejected, the relay confirms every batch
//!   still in flight and submits nothing more until all the events left over are final; it
//!   sends those again with [`Sink::send`], in journal order, as for an unpipelined sink.
//!   `send` is never called while a batch is in flight.
//!
//! # Logging
//!
//! The relay runs each sink inside a `sink` span (`sink` = its configured name, `kind` = its
//! type), so every line a sink logs names the sink without saying so itself. Work a sink
//! moves off the task (a blocking thread, a client library's callbacks) must carry
//! `tracing::Span::current()` along and enter it, or its lines lose that name.
//!
//! Because the relay re-sends every event past the cursor after a crash, a sink whose
//! broker cannot tell repeats apart offers at-least-once delivery; a sink that can (JetStream
//! message ids, Kafka tail reads, file truncation) offers exactly-once. Each sink states which
//! through [`Sink::guarantee`], and the README's table repeats it.

use crate::Envelope;
use std::fmt;
use std::future::Future;

/// The relay lets a pipelined sink's batches all be confirmed at least once every this many
/// batches (see the module documentation).
pub const DRAIN_EVERY: usize = 8;

/// What [`Sink::submit`] did with a batch.
#[derive(Debug)]
pub enum Submission {
    /// The batch is with the broker client; [`Sink::confirm`] gives its outcomes.
    InFlight,
    /// Settled in `submit` itself (sent whole and confirmed, deferred, or failed before it was
    /// sent): one outcome per event, in order. [`Sink::confirm`] is not called for this batch.
    Done(Vec<Outcome>),
}

/// What a sink promises about each event the relay hands it, across crashes of the relay and
/// outages of the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// Every event reaches the destination once: repeats after a crash are detected and
    /// removed by the sink.
    ExactlyOnce,
    /// Every event reaches the destination at least once; after a crash the events that were
    /// sent but not yet confirmed are sent again.
    AtLeastOnce,
    /// An event reaches the destination at most once; it can be lost if the broker or the
    /// connection fails after the relay handed it over.
    AtMostOnce,
}

impl fmt::Display for Guarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarantee::ExactlyOnce => "exactly-once",
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::AtMostOnce => "at-most-once",
        })
    }
}

/// The fate of one event handed to [`Sink::send`].
#[derive(Debug)]
pub enum Outcome {
    /// Confirmed by the destination.
    Delivered,
    /// Already at the destination from an earlier send, not stored again.
    Duplicate,
    /// Not delivered this time; the relay will send it again after a back-off.
    Retry(SinkError),
    /// Refused for good; the relay counts and logs it and moves on.
    Rejected(SinkError),
    /// Not sent yet: the relay saves the sink's checkpoint state, then sends it again at once.
    Deferred,
    /// Not delivered: this event's destination is broken while the sink's others work; the
    /// relay sets it aside, goes on with later events, and offers it again after a back-off.
    Parked(SinkError),
}

impl Outcome {
    /// True when the destination holds the event: [`Outcome::Delivered`] or
    /// [`Outcome::Duplicate`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered | Outcome::Duplicate)
    }

    /// A retry for each of `count` events, for a failure that hit the whole batch.
    pub fn retry_all(count: usize, error: &SinkError) -> Vec<Outcome> {
        let text = error.report();
        (0..count).map(|_| Outcome::Retry(SinkError::new(error.kind, text.clone()))).collect()
    }
}

/// What kind of failure a [`SinkError`] is, so callers can decide without parsing messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SinkErrorKind {
    /// The destination could not be reached or dropped the connection.
    Unavailable,
    /// The destination refused the event or the request (policy, size, routing).
    Refused,
    /// Local input/output failed (disk full, permission denied, missing directory).
    Io,
    /// The sink is misconfigured; retrying will not help until the operator changes it.
    Config,
    /// Anything else.
    Other,
}

impl SinkErrorKind {
    /// The kind in lower case, as logs and metric labels show it (`unavailable`).
    pub fn name(self) -> &'static str {
        match self {
            SinkErrorKind::Unavailable => "unavailable",
            SinkErrorKind::Refused => "refused",
            SinkErrorKind::Io => "io",
            SinkErrorKind::Config => "config",
            SinkErrorKind::Other => "other",
        }
    }
}

/// An error from a sink: a kind to match on, a message for the operator, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    /// What kind of failure this is.
    pub kind: SinkErrorKind,
    /// What happened and, where it helps, what to do about it.
    pub message: String,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// A new error with no underlying cause.
    pub fn new(kind: SinkErrorKind, message: impl Into<String>) -> Self {
        SinkError { kind, message: message.into(), source: None }
    }

    /// A new error caused by `source`.
    pub fn with_source(
        kind: SinkErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SinkError { kind, message: message.into(), source: Some(Box::new(source)) }
    }

    /// The message followed by every cause in the chain, for logs.
    pub fn report(&self) -> String {
        let mut text = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

/// A destination for Nomad events. See the module documentation for the full contract.
pub trait Sink: Send {
    /// The guarantee this sink offers with its current configuration.
    fn guarantee(&self) -> Guarantee;

    /// Prepares the sink, given the state it returned from [`Sink::checkpoint_state`] at the
    /// last saved cursor (`None` on a first start). Called once, before any `send`.
    fn open(
        &mut self,
        saved_state: Option<serde_json::Value>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Delivers a batch and returns one outcome per envelope, in order. Must not return until
    /// each outcome is final for this attempt.
    fn send(&mut self, batch: &[Envelope]) -> impl Future<Output = Vec<Outcome>> + Send;

    /// How many batches may be submitted and awaiting their outcomes at once. With the
    /// default, 1, the next batch is read only once the last one is final.
    fn pipeline_depth(&self) -> usize {
        1
    }

    /// Hands a batch to the broker, without waiting for its confirmations if the sink
    /// pipelines. The default sends it whole.
    fn submit(&mut self, batch: &[Envelope]) -> impl Future<Output = Submission> + Send {
        async move { Submission::Done(self.send(batch).await) }
    }

    /// Waits for the outcomes of the oldest batch [`Sink::submit`] left in flight, given the
    /// same events again; one outcome per envelope, in order, each final for this attempt.
    /// Never called for a sink whose `submit` never returns [`Submission::InFlight`].
    fn confirm(&mut self, batch: &[Envelope]) -> impl Future<Output = Vec<Outcome>> + Send {
        async move {
            let error = SinkError::new(
                SinkErrorKind::Other,
                "the sink has no batch in flight to confirm (a bug in the relay or the sink)",
            );
            Outcome::retry_all(batch.len(), &error)
        }
    }

    /// Pushes out anything buffered and releases what the sink holds, before shutdown.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// State to keep atomically with the relay's cursor, returned to [`Sink::open`] on the
    /// next start. `None` if the sink keeps none.
    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        None
    }
}

/// For a sink that parks events per destination (a Kafka topic, a JetStream subject): given
/// the parked events (journal position to destination) and the batch being submitted, the
/// oldest parked event of each destination that the batch does not offer again. The batch's
/// newer events for that destination must wait behind it, so per-destination order holds.
/// Allocates nothing while nothing is parked.
pub fn held_back(
    parked: &std::collections::BTreeMap<u64, String>,
    batch: &[Envelope],
) -> std::collections::BTreeMap<String, u64> {
    let mut oldest = std::collections::BTreeMap::new();
    if parked.is_empty() {
        return oldest;
    }
    let offered: std::collections::BTreeSet<u64> = batch.iter().map(|e| e.seq).collect();
    for (seq, destination) in parked {
        if !offered.contains(seq) {
            oldest.entry(destination.clone()).or_insert(*seq);
        }
    }
    oldest
}
