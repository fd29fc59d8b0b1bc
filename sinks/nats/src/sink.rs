//! The NATS sink itself: connection, stream check, pipelined JetStream publishing with one
//! outcome per PubAck, and core NATS publishing.

use crate::config::{NatsSinkConfig, OnReject, StorageKind};
use crate::window::{DuplicateWindow, SEQ_HEADER};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::Stream;
use async_nats::{Client, ConnectErrorKind, ConnectOptions, HeaderMap};
use bytes::Bytes;
use nomad_relay_sink_api::{
    Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind, Submission, Template,
};
use std::collections::{BTreeMap, VecDeque};
use tokio::time::Instant;
use tracing::{info, warn};

/// The NATS sink.
pub struct NatsSink {
    config: NatsSinkConfig,
    subject: Template,
    client: Option<Client>,
    jetstream: Option<async_nats::jetstream::Context>,
    /// The stream that captures the sink's subjects, once checked.
    stream: Option<Stream>,
    /// The stream's duplicate window, and what the sink knows of its sends against it.
    window: DuplicateWindow,
    /// JetStream batches published whose PubAcks the relay has not asked for yet.
    published: VecDeque<PublishedBatch>,
    /// Events parked (no stream captures their subject) and not yet final, by journal
    /// position, with their subject: they stay pending in the duplicate window (the relay's
    /// cursor waits at the oldest), and a subject's newer events wait behind its parked ones,
    /// so the stream keeps each subject in order.
    parked: BTreeMap<u64, String>,
}

/// A batch published to JetStream, awaiting its PubAcks.
struct PublishedBatch {
    /// Per event, the outcome known so far.
    outcomes: Vec<Option<Outcome>>,
    /// Per message published and not yet acknowledged: its event's position, its subject,
    /// the PubAck to come, and when it is due (`ack_timeout` after the publish: one deadline
    /// per message from its publish, so messages waited for in turn do not add their
    /// timeouts up).
    awaiting: VecDeque<(usize, String, PublishAckFuture, Instant)>,
}

/// JetStream batches the sink may have published before the oldest is acknowledged.
const PIPELINE_DEPTH: usize = 2;

impl NatsSink {
    /// A sink for `config` (connects in [`Sink::open`]). Fails on a bad subject template.
    pub fn new(config: NatsSinkConfig) -> Result<NatsSink, String> {
        let subject = Template::parse(&config.subject).map_err(|e| e.to_string())?;
        let window = DuplicateWindow::new(config.duplicate_window.0, config.ack_timeout.0);
        Ok(NatsSink {
            config,
            subject,
            client: None,
            jetstream: None,
            stream: None,
            window,
            published: VecDeque::new(),
            parked: BTreeMap::new(),
        })
    }

    async fn connect(&mut self) -> Result<(), SinkError> {
        let config = &self.config;
        let mut options = ConnectOptions::new()
            .name("nomad-relay")
            .connection_timeout(config.connect_timeout.0)
            .max_reconnects(None)
            .require_tls(config.tls.required);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.0.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.0.clone());
        }
        if let Some(seed) = &config.nkey_seed {
            options = options.nkey(seed.0.clone());
        }
        if let Some(path) = &config.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                SinkError::with_source(
                    SinkErrorKind::Config,
                    format!("cannot read the NATS credentials file {}", path.display()),
                    e,
                )
            })?;
        }
        if let Some(ca) = &config.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let urls = config.url.to_vec();
        let client = options.connect(urls.as_slice()).await.map_err(|e| {
            let hint = match e.kind() {
                ConnectErrorKind::AuthorizationViolation => {
                    "NATS refused the credentials; check user/password, token, nkey_seed or credentials_file"
                }
                ConnectErrorKind::Tls => "the TLS handshake failed; check tls.ca_file and the certificates",
                ConnectErrorKind::TimedOut => "no answer in time; is nats-server running there?",
                _ => "is nats-server running there?",
            };
            SinkError::with_source(
                SinkErrorKind::Unavailable,
                format!("cannot connect to NATS at {}: {hint}", urls.join(", ")),
                e,
            )
        })?;
        if config.jetstream {
            // The client holds a permit per publish until its PubAck is read, and blocks the
            // next publish when none is left: it must have room for every batch in flight.
            let context = async_nats::jetstream::ContextBuilder::new()
                .timeout(config.ack_timeout.0)
                .max_ack_inflight(config.max_in_flight.saturating_mul(PIPELINE_DEPTH))
                .build(client.clone());
            self.jetstream = Some(context);
        }
        self.client = Some(client);
        Ok(())
    }

    /// Checks (or creates) the configured stream and that it captures the subjects this sink
    /// publishes to (without a configured stream, asks the server which stream captures
    /// them), and reads its duplicate window.
    async fn check_stream(&mut self) -> Result<(), SinkError> {
        let Some(context) = &self.jetstream else { return Ok(()) };
        let sample = self.subject.render(&Envelope::example());
        let config_error = |message: String| SinkError::new(SinkErrorKind::Config, message);
        let name = match &self.config.stream {
            Some(name) => name.clone(),
            None => context.stream_by_subject(sample.clone()).await.map_err(|e| {
                config_error(format!(
                    "no JetStream stream captures subject {sample} ({e}); create one, or set `stream` and `create_stream = true` on this sink"
                ))
            })?,
        };
        let name = &name;
        let mut stream = if self.config.stream.is_some() && self.config.create_stream {
            let stream_config = async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: self.config.stream_subjects(),
                duplicate_window: self.config.duplicate_window.0,
                storage: match self.config.storage {
                    StorageKind::File => async_nats::jetstream::stream::StorageType::File,
                    StorageKind::Memory => async_nats::jetstream::stream::StorageType::Memory,
                },
                num_replicas: self.config.replicas,
                ..Default::default()
            };
            context.get_or_create_stream(stream_config).await.map_err(|e| {
                SinkError::with_source(
                    SinkErrorKind::Config,
                    format!("cannot create JetStream stream `{name}`"),
                    e,
                )
            })?
        } else {
            context.get_stream(name).await.map_err(|e| {
                config_error(format!(
                    "JetStream stream `{name}` is not there ({e}); create it, or set `create_stream = true`"
                ))
            })?
        };
        let info = stream.info().await.map_err(|e| {
            SinkError::with_source(
                SinkErrorKind::Unavailable,
                format!("cannot read JetStream stream `{name}`"),
                e,
            )
        })?;
        let subjects = info.config.subjects.clone();
        if !subjects.iter().any(|pattern| subject_matches(pattern, &sample)) {
            return Err(config_error(format!(
                "JetStream stream `{name}` captures {subjects:?}, but this sink publishes to subjects like {sample}; add them to the stream or change `subject`"
            )));
        }
        let window = info.config.duplicate_window;
        info!(
            "JetStream stream `{name}` captures subject {sample} and keeps message ids for {window:?} (its duplicate_window): an event sent again within that time is dropped by JetStream; after longer, the sink first reads what the stream holds"
        );
        self.window = DuplicateWindow::new(window, self.config.ack_timeout.0);
        self.stream = Some(stream);
        Ok(())
    }

    /// Before events are sent again: if they may have been stored longer ago than the
    /// stream's duplicate window, reads which of them it holds.
    async fn check_window(&mut self) -> Result<(), SinkError> {
        match &mut self.stream {
            Some(stream) if self.window.check_due() => self.window.check(stream).await,
            _ => Ok(()),
        }
    }

    fn headers(event: &Envelope) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        headers.insert("Nomad-Index", event.id.index.to_string().as_str());
        headers.insert("Nomad-Topic", event.topic.as_str());
        headers.insert("Nomad-Type", event.event_type.as_str());
        headers.insert("Nomad-Namespace", event.namespace.as_str());
        headers.insert("Nomad-Key", event.key.as_str());
        headers.insert("Nomad-Source", event.source.as_str());
        headers.insert(SEQ_HEADER, event.seq.to_string().as_str());
        headers
    }

    /// Publishes `batch` to JetStream, waiting for PubAcks only to keep at most
    /// `max_in_flight` of its messages unacknowledged; `confirm_jetstream` collects the rest.
    async fn submit_jetstream(&mut self, batch: &[Envelope]) -> Submission {
        let Some(context) = self.jetstream.clone() else {
            return Submission::Done(Outcome::retry_all(
                batch.len(),
                &SinkError::new(SinkErrorKind::Unavailable, "not connected to NATS"),
            ));
        };
        if self.window.defer_until_saved() {
            return Submission::Done(batch.iter().map(|_| Outcome::Deferred).collect());
        }
        let mut submitted =
            PublishedBatch { outcomes: batch.iter().map(|_| None).collect(), awaiting: VecDeque::new() };
        let held_back = nomad_relay_sink_api::held_back(&self.parked, batch);
        for (position, event) in batch.iter().enumerate() {
            if self.window.already_stored(event) {
                submitted.outcomes[position] = Some(Outcome::Duplicate);
                continue;
            }
            let subject = self.subject.render(event);
            if let Some(&oldest) = held_back.get(&subject).filter(|oldest| **oldest < event.seq) {
                let outcome = Outcome::Parked(SinkError::new(
                    SinkErrorKind::Config,
                    format!(
                        "held behind the parked event at journal position {oldest} for {subject}, so the stream keeps the subject in order"
                    ),
                ));
                self.settle(event.seq, &subject, &outcome);
                submitted.outcomes[position] = Some(outcome);
                continue;
            }
            self.window.publishing(event.seq);
            let message = PublishMessage::build()
                .payload(event.raw.clone())
                .headers(Self::headers(event))
                .message_id(event.id.to_string());
            match context.send_publish(subject.clone(), message).await {
                Ok(ack) => {
                    let due = Instant::now() + self.config.ack_timeout.0;
                    submitted.awaiting.push_back((position, subject, ack, due))
                }
                Err(e) => {
                    let outcome = self.failed(event, &subject, e.kind(), e.to_string()).await;
                    self.settle(event.seq, &subject, &outcome);
                    submitted.outcomes[position] = Some(outcome)
                }
            }
            while submitted.awaiting.len() >= self.config.max_in_flight {
                if let Some((position, subject, ack, due)) = submitted.awaiting.pop_front() {
                    submitted.outcomes[position] =
                        Some(self.acknowledged(&batch[position], &subject, ack, due).await);
                }
            }
        }
        self.published.push_back(submitted);
        Submission::InFlight
    }

    /// Waits for the PubAcks of the oldest published batch, `batch`.
    async fn confirm_jetstream(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let published = self.published.pop_front();
        let Some(PublishedBatch { mut outcomes, mut awaiting }) =
            published.filter(|published| published.outcomes.len() == batch.len())
        else {
            let error = SinkError::new(
                SinkErrorKind::Other,
                "the NATS sink was asked to confirm a batch it was not given (a bug in the relay); it is published again",
            );
            return Outcome::retry_all(batch.len(), &error);
        };
        while let Some((position, subject, ack, due)) = awaiting.pop_front() {
            outcomes[position] = Some(self.acknowledged(&batch[position], &subject, ack, due).await);
        }
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Outcome::Retry(SinkError::new(SinkErrorKind::Other, "no acknowledgement"))
                })
            })
            .collect();
        outcomes
    }

    /// The outcome of one publish, from its PubAck (or its absence by `due`).
    async fn acknowledged(
        &mut self,
        event: &Envelope,
        subject: &str,
        ack: PublishAckFuture,
        due: Instant,
    ) -> Outcome {
        let outcome = self.await_ack(event, subject, ack, due).await;
        self.settle(event.seq, subject, &outcome);
        outcome
    }

    /// Notes the outcome of the event at `seq`, published to `subject`: a parked one stays
    /// pending in the duplicate window and holds its subject's newer events back.
    fn settle(&mut self, seq: u64, subject: &str, outcome: &Outcome) {
        let parked = matches!(outcome, Outcome::Parked(_));
        if parked {
            self.parked.insert(seq, subject.to_owned());
        } else if !matches!(outcome, Outcome::Retry(_)) {
            self.parked.remove(&seq);
        }
        self.window.settled(seq, !parked && !matches!(outcome, Outcome::Retry(_)));
    }

    async fn await_ack(
        &mut self,
        event: &Envelope,
        subject: &str,
        ack: PublishAckFuture,
        due: Instant,
    ) -> Outcome {
        let Ok(acked) = tokio::time::timeout_at(due, ack).await else {
            return Outcome::Retry(SinkError::new(
                SinkErrorKind::Unavailable,
                format!(
                    "JetStream did not acknowledge {subject} within ack_timeout ({:?})",
                    self.config.ack_timeout.0
                ),
            ));
        };
        if let Ok(ack) = &acked {
            self.window.acknowledged(ack.sequence);
        }
        match acked {
            // The stream already stored this Nats-Msg-Id inside its duplicate window.
            Ok(ack) if ack.duplicate => Outcome::Duplicate,
            Ok(_) => Outcome::Delivered,
            Err(e) => match permanent_refusal(&e) {
                Some(why) => {
                    let reason = format!("event {} ({} bytes): {why}", event.id, event.raw.len());
                    self.reject(event, reason).await
                }
                None => self.failed(event, subject, e.kind(), e.to_string()).await,
            },
        }
    }

    async fn failed(&self, event: &Envelope, subject: &str, kind: PublishErrorKind, text: String) -> Outcome {
        match kind {
            PublishErrorKind::MaxPayloadExceeded => {
                let max = self.client.as_ref().map(|c| c.server_info().max_payload).unwrap_or(0);
                let reason = format!(
                    "event {} ({} bytes with headers) is larger than the NATS server's max_payload ({max} bytes); raise max_payload on the server to relay such events",
                    event.id,
                    event.raw.len()
                );
                self.reject(event, reason).await
            }
            // This subject alone has no stream: its events wait apart, the others go on.
            PublishErrorKind::StreamNotFound => Outcome::Parked(SinkError::new(
                SinkErrorKind::Config,
                format!(
                    "no JetStream stream captures subject {subject}; create one, or set `stream` and `create_stream = true` on this sink"
                ),
            )),
            _ => Outcome::Retry(SinkError::new(
                SinkErrorKind::Unavailable,
                format!("JetStream did not acknowledge {subject}: {text}"),
            )),
        }
    }

    /// A refused event: counted and dropped, or noted on the dead-letter subject first (if
    /// that notice cannot be stored, the event is retried rather than lost unseen).
    async fn reject(&self, event: &Envelope, reason: String) -> Outcome {
        if self.config.on_reject == OnReject::DeadLetter
            && let (Some(subject), Some(client)) = (&self.config.dead_letter_subject, &self.client)
        {
            let notice = serde_json::json!({
                "Id": event.id.to_string(), "Index": event.id.index, "Topic": event.topic,
                "Type": event.event_type, "Key": event.key, "Namespace": event.namespace,
                "Bytes": event.raw.len(), "Reason": reason,
            });
            let body = Bytes::from(notice.to_string());
            let stored = match &self.jetstream {
                Some(context) => match context.publish(subject.clone(), body).await {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                None => client.publish(subject.clone(), body).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = stored {
                return Outcome::Retry(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!("cannot publish the dead-letter notice for {} to {subject}: {e}", event.id),
                ));
            }
        }
        Outcome::Rejected(SinkError::new(SinkErrorKind::Refused, reason))
    }

    async fn send_core(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let Some(client) = self.client.clone() else {
            return Outcome::retry_all(
                batch.len(),
                &SinkError::new(SinkErrorKind::Unavailable, "not connected to NATS"),
            );
        };
        let max_payload = client.server_info().max_payload;
        let mut outcomes = Vec::with_capacity(batch.len());
        for event in batch {
            let subject = self.subject.render(event);
            if max_payload > 0 && event.raw.len() > max_payload {
                let reason = format!(
                    "event {} ({} bytes) is larger than the NATS server's max_payload ({max_payload} bytes)",
                    event.id,
                    event.raw.len()
                );
                outcomes.push(self.reject(event, reason).await);
                continue;
            }
            match client.publish_with_headers(subject.clone(), Self::headers(event), event.raw.clone()).await
            {
                Ok(()) => outcomes.push(Outcome::Delivered),
                Err(e) => outcomes.push(Outcome::Retry(SinkError::with_source(
                    SinkErrorKind::Unavailable,
                    format!("cannot publish to {subject}"),
                    e,
                ))),
            }
        }
        if let Err(e) = client.flush().await {
            let error = SinkError::with_source(SinkErrorKind::Unavailable, "cannot flush to NATS", e);
            let text = error.report();
            for outcome in &mut outcomes {
                if outcome.is_delivered() {
                    *outcome = Outcome::Retry(SinkError::new(SinkErrorKind::Unavailable, text.clone()));
                }
            }
        }
        outcomes
    }
}

/// JetStream's answers that a message will never be stored as it is, by error code (from
/// nats-server's `server/errors.json`), with what to do. Every other answer is retried: a
/// stream that is full with `discard: new` (10077, "maximum messages exceeded" and the like)
/// takes messages again once it has room, and a sealed stream (10109) is the operator's to
/// unseal, not a reason to drop events.
const PERMANENT_REFUSALS: &[(u64, &str)] = &[(
    10054,
    "larger than the stream's max_msg_size (JetStream error 10054, message size exceeds maximum allowed); raise the stream's max_msg_size to store such events",
)];

/// Why JetStream will never take the message `error` answered, if it says so.
fn permanent_refusal(error: &async_nats::jetstream::context::PublishError) -> Option<&'static str> {
    let refused = std::error::Error::source(error)?.downcast_ref::<async_nats::jetstream::Error>()?;
    let code = refused.error_code().0;
    PERMANENT_REFUSALS.iter().find(|(known, _)| *known == code).map(|(_, why)| *why)
}

/// NATS subject matching: `*` matches one token, `>` the rest.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

impl Sink for NatsSink {
    fn guarantee(&self) -> Guarantee {
        if self.config.jetstream { Guarantee::ExactlyOnce } else { Guarantee::AtMostOnce }
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        if self.client.is_none() {
            self.connect().await?;
        }
        self.check_stream().await?;
        self.window.restore(saved_state.as_ref());
        if let Some(stream) = &self.stream {
            self.window.opened_at(stream.cached_info().state.last_sequence);
        }
        self.check_window().await?;
        if !self.config.jetstream {
            warn!(
                "NATS sink in core mode: delivery is at-most-once (events are lost if NATS or the connection fails after the relay hands them over)"
            );
        }
        Ok(())
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        if self.config.jetstream && !self.published.is_empty() {
            let error = SinkError::new(
                SinkErrorKind::Other,
                "the NATS sink was sent a batch while others were in flight (a bug in the relay)",
            );
            return Outcome::retry_all(batch.len(), &error);
        }
        if let Err(error) = self.check_window().await {
            return Outcome::retry_all(batch.len(), &error);
        }
        match self.submit(batch).await {
            Submission::InFlight => self.confirm_jetstream(batch).await,
            Submission::Done(outcomes) => outcomes,
        }
    }

    fn pipeline_depth(&self) -> usize {
        if self.config.jetstream { PIPELINE_DEPTH } else { 1 }
    }

    async fn submit(&mut self, batch: &[Envelope]) -> Submission {
        if self.client.is_none()
            && let Err(error) = self.connect().await
        {
            return Submission::Done(Outcome::retry_all(batch.len(), &error));
        }
        if self.config.jetstream {
            self.submit_jetstream(batch).await
        } else {
            Submission::Done(self.send_core(batch).await)
        }
    }

    async fn confirm(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        self.confirm_jetstream(batch).await
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        self.config.jetstream.then(|| self.window.checkpoint_state())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(client) = &self.client {
            client
                .flush()
                .await
                .map_err(|e| SinkError::with_source(SinkErrorKind::Unavailable, "cannot flush to NATS", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_wildcards() {
        assert!(subject_matches("nomad.*.*", "nomad.Job.JobRegistered"));
        assert!(subject_matches("nomad.>", "nomad.Job.JobRegistered"));
        assert!(!subject_matches("nomad.*", "nomad.Job.JobRegistered"));
        assert!(!subject_matches("other.>", "nomad.Job"));
        assert!(subject_matches("nomad.Job.JobRegistered", "nomad.Job.JobRegistered"));
    }
}
