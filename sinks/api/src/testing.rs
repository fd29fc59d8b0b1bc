//! A scripted in-memory sink, for testing code that drives a [`Sink`] (the relay's worker)
//! without a broker. Enabled by the `test-util` feature.
//!
//! Each call that returns outcomes ([`Sink::send`], [`Sink::confirm`]) takes the next
//! [`Answer`] from the script (delivering everything once the script is empty); a pipelined
//! sink's [`Sink::submit`] takes the next answer of its own script, if any, to settle the
//! batch at once (`Submission::Done`), and otherwise keeps it in flight. Every call is
//! recorded as a [`Call`] with the journal positions of its events, so a test can check what
//! the driver sent, in what order, and what it did after each answer. The checkpoint state
//! it reports counts the events it has delivered, so a test can see which state was saved
//! with which cursor.
//!
//! A driver that breaks the contract (a `send` while batches are in flight, a `confirm` of
//! another batch than the oldest) and a script that does not fit its batch (an
//! [`Answer::Each`] of another length) panic, so a test cannot pass by the sink quietly
//! recovering from them.

use crate::{Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind, Submission};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// What the scripted sink answers for one batch.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Every event delivered.
    Deliver,
    /// Every event to be retried (the broker is unavailable).
    Fail,
    /// Every event deferred (the sink needs its state saved first).
    Defer,
    /// One outcome per event, in order.
    Each(Vec<Kind>),
    /// This many outcomes, all delivered, whatever the batch's length (a sink bug).
    Count(usize),
    /// Never answers (a broker that hangs), until the future is dropped.
    Hang,
    /// For `submit` only: the batch stays in flight, as without a submit answer.
    InFlight,
}

/// One outcome, for [`Answer::Each`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`Outcome::Delivered`].
    Delivered,
    /// [`Outcome::Duplicate`].
    Duplicate,
    /// [`Outcome::Retry`].
    Retry,
    /// [`Outcome::Rejected`].
    Rejected,
    /// [`Outcome::Deferred`].
    Deferred,
    /// [`Outcome::Parked`].
    Parked,
}

/// Which method was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// [`Sink::send`].
    Send,
    /// [`Sink::submit`].
    Submit,
    /// [`Sink::confirm`].
    Confirm,
}

/// One recorded call: the method and the journal positions (`seq`) of the events given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// `seq` of each event, in order.
    pub seqs: Vec<u64>,
}

/// What a test keeps to script and inspect a [`ScriptedSink`] it handed away.
#[derive(Clone, Default)]
pub struct Script {
    answers: Arc<Mutex<VecDeque<Answer>>>,
    submit_answers: Arc<Mutex<VecDeque<Answer>>>,
    calls: Arc<Mutex<Vec<Call>>>,
    delivered: Arc<Mutex<Vec<u64>>>,
}

impl Script {
    /// Adds answers, in the order they are to be given.
    pub fn then(&self, answers: impl IntoIterator<Item = Answer>) -> &Script {
        lock(&self.answers).extend(answers);
        self
    }

    /// Adds answers for `submit` calls of a pipelined sink: each settles one submitted
    /// batch at once instead of keeping it in flight.
    pub fn then_on_submit(&self, answers: impl IntoIterator<Item = Answer>) -> &Script {
        lock(&self.submit_answers).extend(answers);
        self
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    /// `seq` of every event reported delivered (or duplicate), in the order reported.
    pub fn delivered(&self) -> Vec<u64> {
        lock(&self.delivered).clone()
    }
}

/// The scripted sink.
pub struct ScriptedSink {
    script: Script,
    depth: usize,
    /// Batches submitted and not yet confirmed.
    in_flight: VecDeque<Vec<u64>>,
}

impl ScriptedSink {
    /// A sink that pipelines `depth` batches (1: it only sends), and the script that drives
    /// it.
    pub fn new(depth: usize) -> (ScriptedSink, Script) {
        let script = Script::default();
        (ScriptedSink { script: script.clone(), depth: depth.max(1), in_flight: VecDeque::new() }, script)
    }

    fn record(&self, method: Method, batch: &[Envelope]) {
        lock(&self.script.calls).push(Call { method, seqs: batch.iter().map(|e| e.seq).collect() });
    }

    async fn answer(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let answer = lock(&self.script.answers).pop_front().unwrap_or(Answer::Deliver);
        self.apply(answer, batch).await
    }

    async fn apply(&mut self, answer: Answer, batch: &[Envelope]) -> Vec<Outcome> {
        let kinds = match answer {
            Answer::Deliver => vec![Kind::Delivered; batch.len()],
            Answer::Fail => vec![Kind::Retry; batch.len()],
            Answer::Defer => vec![Kind::Deferred; batch.len()],
            Answer::Each(kinds) => {
                assert_eq!(
                    kinds.len(),
                    batch.len(),
                    "the script answers {kinds:?} for a batch of {}",
                    batch.len()
                );
                kinds
            }
            Answer::Count(count) => vec![Kind::Delivered; count],
            Answer::Hang => std::future::pending().await,
            Answer::InFlight => panic!("Answer::InFlight answers a submit, not a send or confirm"),
        };
        let outcomes: Vec<Outcome> = kinds.iter().map(|kind| outcome(*kind)).collect();
        if outcomes.len() == batch.len() {
            let mut delivered = lock(&self.script.delivered);
            for (event, outcome) in batch.iter().zip(&outcomes) {
                if outcome.is_delivered() {
                    delivered.push(event.seq);
                }
            }
        }
        outcomes
    }
}

fn outcome(kind: Kind) -> Outcome {
    match kind {
        Kind::Delivered => Outcome::Delivered,
        Kind::Duplicate => Outcome::Duplicate,
        Kind::Retry => Outcome::Retry(SinkError::new(SinkErrorKind::Unavailable, "scripted failure")),
        Kind::Rejected => Outcome::Rejected(SinkError::new(SinkErrorKind::Refused, "scripted refusal")),
        Kind::Deferred => Outcome::Deferred,
        Kind::Parked => {
            Outcome::Parked(SinkError::new(SinkErrorKind::Refused, "scripted broken destination"))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sink for ScriptedSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    async fn open(&mut self, _saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        Ok(())
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        self.record(Method::Send, batch);
        assert!(self.in_flight.is_empty(), "send while {} batches are in flight", self.in_flight.len());
        self.answer(batch).await
    }

    fn pipeline_depth(&self) -> usize {
        self.depth
    }

    async fn submit(&mut self, batch: &[Envelope]) -> Submission {
        if self.depth == 1 {
            return Submission::Done(self.send(batch).await);
        }
        self.record(Method::Submit, batch);
        let settled = lock(&self.script.submit_answers).pop_front();
        if let Some(answer) = settled.filter(|a| !matches!(a, Answer::InFlight)) {
            return Submission::Done(self.apply(answer, batch).await);
        }
        self.in_flight.push_back(batch.iter().map(|e| e.seq).collect());
        Submission::InFlight
    }

    async fn confirm(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        self.record(Method::Confirm, batch);
        let oldest = self.in_flight.pop_front();
        let given: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        assert_eq!(oldest.as_ref(), Some(&given), "confirm of another batch than the oldest in flight");
        self.answer(batch).await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "delivered": lock(&self.script.delivered).len() }))
    }
}
