//! The Kafka sink itself: producer lifecycle, topic resolution, one outcome per delivery
//! report, and the tail check that makes a re-sent event a no-op.

use crate::broken::{self, BrokenTopics};
use crate::client::{self, LogContext, TopicLayout};
use crate::config::KafkaSinkConfig;
use crate::partition::partition_for;
use crate::progress::{FoundRecord, Progress, SavedProgress};
use crate::tail::{self, headers};
use nomad_relay_sink_api::{
    Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind, Submission, Template,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::types::RDKafkaErrorCode;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// Batches the sink may have handed to the producer before the oldest is confirmed: one
/// being sent while the previous one's last delivery reports come in.
const PIPELINE_DEPTH: usize = 2;

/// The Kafka sink. See the crate documentation for how it delivers exactly once.
pub struct KafkaSink {
    config: KafkaSinkConfig,
    topic: Template,
    key: Template,
    producer: Option<FutureProducer<LogContext>>,
    progress: Progress,
    /// False after a start or a delivery error: the partitions' tails must be read before
    /// anything is sent.
    tails_checked: bool,
    /// A record failed or went unreported: the producer is replaced once `in_flight` is empty.
    producer_failed: bool,
    /// Records of failed batches still awaiting their delivery report.
    in_flight: Vec<InFlight>,
    /// Batches handed to the producer whose outcomes the relay has not asked for yet.
    submitted: VecDeque<SubmittedBatch>,
    /// Whether a batch may be handed over before the previous one is confirmed; turned off
    /// when librdkafka's queue is too small to hold two batches.
    pipelining: bool,
    /// Events parked and not yet final, by journal position, with their topic: while there
    /// are any, the relay's cursor waits at the oldest, so the offsets a tail read starts at
    /// are not settled past what was written since; and a topic's newer events wait behind
    /// its parked ones, so they reach its partitions in order.
    parked: BTreeMap<u64, String>,
    /// Topics broken on their own: their events are parked until they are tried again.
    broken: BrokenTopics,
}

/// What `prepare` decided for a batch.
enum Prepared {
    /// Send, with each event's topic, except to the topics that are broken (why, by name):
    /// their events are parked.
    Send(FutureProducer<LogContext>, Vec<String>, BTreeMap<String, SinkError>),
    /// Topics or partitions were added: the relay must save the progress first.
    Defer,
}

impl KafkaSink {
    /// A sink for `config` (connects in [`Sink::open`]). Fails on a bad template.
    pub fn new(config: KafkaSinkConfig) -> Result<KafkaSink, String> {
        let topic = Template::parse(&config.topic).map_err(|e| format!("topic: {e}"))?;
        let key = Template::parse(&config.key).map_err(|e| format!("key: {e}"))?;
        Ok(KafkaSink {
            config,
            topic,
            key,
            producer: None,
            progress: Progress::new(),
            tails_checked: false,
            producer_failed: false,
            in_flight: Vec::new(),
            submitted: VecDeque::new(),
            pipelining: true,
            parked: BTreeMap::new(),
            broken: BrokenTopics::default(),
        })
    }

    fn brokers(&self) -> String {
        self.config.bootstrap_servers()
    }

    /// The producer, created (and the brokers reached) if there is none.
    async fn producer(&mut self) -> Result<FutureProducer<LogContext>, SinkError> {
        if let Some(producer) = &self.producer {
            return Ok(producer.clone());
        }
        let (config, brokers) = (self.config.clone(), self.brokers());
        let producer = blocking(move || {
            let producer = client::producer(&config)?;
            producer
                .client()
                .fetch_metadata(None, config.request_timeout.0)
                .map_err(|e| client::unreachable_error(&brokers, e))?;
            Ok(producer)
        })
        .await?;
        self.producer = Some(producer.clone());
        Ok(producer)
    }

    /// Drops the producer (purging whatever it still holds) off the runtime: after a delivery
    /// error nothing more may reach a partition from this producer, or a retried event could
    /// land behind a later one.
    async fn discard_producer(&mut self) {
        self.tails_checked = false;
        self.producer_failed = false;
        if let Some(producer) = self.producer.take() {
            let _ = tokio::task::spawn_blocking(move || drop(producer)).await;
        }
    }

    /// Reads every tracked partition from its saved offset to the end, keeping the records
    /// this sink wrote there; refreshes each tracked topic's partition count.
    async fn check_tails(&mut self) -> Result<(), SinkError> {
        let saved = self.progress.saved();
        let config = self.config.clone();
        let known: Vec<(String, i32)> =
            self.progress.topics().map(|(name, topic)| (name.clone(), topic.partitions)).collect();
        let brokers = self.brokers();
        let writer = self.progress.writer().to_owned();
        let (layouts, unreadable, tails) = blocking(move || {
            let reader = client::reader(&config)?;
            let mut layouts = BTreeMap::new();
            let mut unreadable = Vec::new();
            for (name, _) in &known {
                match describe_known_topic(reader.client(), name, &config, &brokers) {
                    Ok(layout) => {
                        layouts.insert(name.clone(), layout);
                    }
                    // This topic alone: its events are parked, and it is read when tried again.
                    Err(error) if error.kind != SinkErrorKind::Unavailable => {
                        unreadable.push((name.clone(), error))
                    }
                    Err(error) => return Err(error),
                }
            }
            drop(reader);
            let from: BTreeMap<String, BTreeMap<i32, i64>> = saved
                .topics
                .into_iter()
                .filter_map(|(name, topic)| {
                    // A topic that is gone, or partitions it no longer has, cannot be read.
                    let partitions = layouts.get(&name)?.as_ref()?.partitions;
                    let read_from = topic.read_from.into_iter().filter(|(p, _)| *p < partitions).collect();
                    Some((name, read_from))
                })
                .collect();
            let tails = tail::read_tails(&config, &from, &writer)?;
            Ok((layouts, unreadable, tails))
        })
        .await?;
        for (name, error) in unreadable {
            warn!(
                "Kafka topic `{name}` cannot be read back: {}; its events are set aside until it can",
                error.report()
            );
            self.broken.mark(&name, &error);
        }
        // The topics described were read; records found before in the others are kept.
        let read: BTreeSet<String> = layouts.keys().cloned().collect();
        for (name, layout) in layouts {
            let Some(layout) = layout else {
                warn!(
                    "Kafka topic `{name}` no longer exists at {}; it is looked up again before the next event for it",
                    self.brokers()
                );
                self.progress.forget_topic(&name);
                continue;
            };
            let tracked = self.progress.topic(&name).map_or(0, |topic| topic.partitions);
            if layout.partitions != tracked {
                warn!(
                    "Kafka topic `{name}` now has {} partitions (was {tracked}): keys are spread over all of them from now on, so one key's records before and after this change are in different partitions",
                    layout.partitions
                );
                self.progress.add_topic(&name, layout.partitions, &layout.read_start());
            }
        }
        let found = tails.found.len();
        for ((topic, partition), end) in &tails.ends {
            self.progress.read_to(topic, *partition, *end);
        }
        self.progress.set_found(tails.found, &read);
        if found > 0 {
            info!(
                "Kafka tail check: {found} events sent before the last saved cursor are already in Kafka and are not sent again ({} records read past the saved offsets)",
                tails.records
            );
        } else if tails.records > 0 {
            info!(
                "Kafka tail check: {} records past the saved offsets, none of them this relay's",
                tails.records
            );
        }
        self.tails_checked = true;
        Ok(())
    }

    /// Looks up (or creates) topics the sink has not written to yet. Gives the ones that are
    /// broken on their own (missing and not to be created, refused, or with a metadata error),
    /// with why; fails when the brokers cannot be reached at all.
    async fn resolve_topics(
        &mut self,
        names: BTreeSet<String>,
    ) -> Result<BTreeMap<String, SinkError>, SinkError> {
        let config = self.config.clone();
        let brokers = self.brokers();
        let layouts = blocking(move || {
            let mut layouts = Vec::new();
            for name in names {
                match find_or_create_topic(&config, &name, &brokers) {
                    Err(error) if error.kind == SinkErrorKind::Unavailable => return Err(error),
                    found => layouts.push((name, found)),
                }
            }
            Ok(layouts)
        })
        .await?;
        let mut broken = BTreeMap::new();
        for (name, layout) in layouts {
            match layout {
                Ok(layout) => {
                    info!(
                        "Kafka topic `{name}`: {} partitions; records are keyed with `{}`",
                        layout.partitions, self.config.key
                    );
                    self.progress.add_topic(&name, layout.partitions, &layout.read_start());
                }
                Err(error) => {
                    broken.insert(name, error);
                }
            }
        }
        Ok(broken)
    }

    /// Everything that must hold before a batch is sent: a producer, checked tails, known
    /// topics, and saved progress for them.
    async fn prepare(&mut self, batch: &[Envelope]) -> Result<Prepared, SinkError> {
        if !self.in_flight.is_empty() || self.producer_failed {
            self.settle_in_flight().await?;
        }
        let producer = self.producer().await?;
        let now = Instant::now();
        let topics: Vec<String> = batch.iter().map(|event| self.topic.render(event)).collect();
        // A broken topic due to be tried again goes the whole way, its partitions read back
        // first.
        if topics.iter().any(|name| self.broken.due(name, now) && self.progress.topic(name).is_some()) {
            self.tails_checked = false;
        }
        if !self.tails_checked {
            self.check_tails().await?;
        }
        // Found records hold the saved offsets back until the cursor is past their events: the
        // cursor can still be saved at the first event of the oldest batch in flight.
        let first_unconfirmed = self.submitted.front().map(|b| b.first_seq).or(batch.first().map(|e| e.seq));
        if let Some(seq) = first_unconfirmed {
            self.progress.expire_found(seq);
        }
        let unknown: BTreeSet<String> = topics
            .iter()
            .filter(|name| self.progress.topic(name).is_none() && self.broken.parks(name, now).is_none())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            for (name, error) in self.resolve_topics(unknown).await? {
                self.broken.mark(&name, &error);
            }
        }
        if self.progress.has_unsaved_layout() {
            self.progress.layout_saved();
            return Ok(Prepared::Defer);
        }
        let parked: BTreeMap<String, SinkError> =
            topics.iter().filter_map(|name| Some((name.clone(), self.broken.parks(name, now)?))).collect();
        Ok(Prepared::Send(producer, topics, parked))
    }

    fn headers(&self, event: &Envelope, id: &str) -> OwnedHeaders {
        let index = event.id.index.to_string();
        let seq = event.seq.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(9);
        for (key, value) in [
            (headers::ID, id),
            ("nomad-index", index.as_str()),
            ("nomad-topic", event.topic.as_str()),
            ("nomad-type", event.event_type.as_str()),
            ("nomad-namespace", event.namespace.as_str()),
            ("nomad-key", event.key.as_str()),
            ("nomad-source", event.source.as_str()),
            (headers::WRITER, self.progress.writer()),
            (headers::SEQ, seq.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        headers
    }

    /// Hands every record of `batch` to the producer (waiting for this batch's own reports only
    /// when librdkafka's queue is full) and keeps what `confirm_batch` needs.
    async fn submit_batch(
        &mut self,
        producer: FutureProducer<LogContext>,
        batch: &[Envelope],
        topics: Vec<String>,
        broken: BTreeMap<String, SinkError>,
    ) {
        let mut submitted = SubmittedBatch {
            first_seq: batch.first().map_or(0, |e| e.seq),
            seqs: batch.iter().map(|e| e.seq).collect(),
            outcomes: batch.iter().map(|_| None).collect(),
            pending: VecDeque::new(),
            topics: Vec::new(),
            failed: false,
            unsent: None,
        };
        let held_back = nomad_relay_sink_api::held_back(&self.parked, batch);
        for (position, event) in batch.iter().enumerate() {
            let id = event.id.to_string();
            if self.progress.is_found(event.seq, &id) {
                submitted.outcomes[position] = Some(Outcome::Duplicate);
                continue;
            }
            let topic = &topics[position];
            let error = match (broken.get(topic), held_back.get(topic)) {
                (Some(error), _) => Some(SinkError::new(error.kind, error.report())),
                (None, Some(&oldest)) if oldest < event.seq => Some(SinkError::new(
                    SinkErrorKind::Unavailable,
                    format!(
                        "held behind the parked event at journal position {oldest} for `{topic}`, so its records stay in order"
                    ),
                )),
                _ => None,
            };
            if let Some(error) = error {
                // Known at once, so a later batch's events for the topic wait behind it.
                self.parked.insert(event.seq, topic.clone());
                submitted.outcomes[position] = Some(Outcome::Parked(error));
                continue;
            }
            self.enqueue(&producer, &mut submitted, &topics, position, event, id).await;
            if submitted.failed || submitted.unsent.is_some() {
                break;
            }
        }
        submitted.topics = topics;
        if submitted.failed {
            // Nothing more may reach a partition from this producer: later batches are
            // refused until the failure is dealt with.
            self.producer_failed = true;
            purge_queue(&producer).await;
        }
        // The sink keeps its own handle; the last one is dropped off the runtime.
        drop(producer);
        self.submitted.push_back(submitted);
    }

    /// Hands the record of `event` (the batch's `position`th) to the producer, or records why
    /// it could not be: refused for good (too large), failed, or waiting behind a full queue.
    async fn enqueue(
        &mut self,
        producer: &FutureProducer<LogContext>,
        submitted: &mut SubmittedBatch,
        topics: &[String],
        position: usize,
        event: &Envelope,
        id: String,
    ) {
        let topic = &topics[position];
        let key = self.key.render(event);
        let partitions = self.progress.topic(topic).map_or(1, |t| t.partitions);
        let mut record = FutureRecord::to(topic)
            .partition(partition_for(key.as_bytes(), partitions))
            .payload(&event.raw[..])
            .headers(self.headers(event, &id));
        if !key.is_empty() {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    let due = Instant::now() + self.config.delivery_timeout.0;
                    submitted.pending.push_back(PendingRecord {
                        position,
                        seq: event.seq,
                        id,
                        delivery,
                        due,
                    });
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if !self.make_room(submitted, topics, event.seq).await {
                        return;
                    }
                    record = returned;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    submitted.outcomes[position] = Some(Outcome::Rejected(SinkError::new(
                        SinkErrorKind::Refused,
                        format!(
                            "event {id} ({} bytes) is larger than the producer's message.max.bytes; raise `librdkafka.\"message.max.bytes\"` on this sink (and the topic's max.message.bytes) to relay such events",
                            event.raw.len()
                        ),
                    )));
                    return;
                }
                Err((error, _)) => {
                    submitted.failed = true;
                    submitted.outcomes[position] = Some(Outcome::Retry(SinkError::with_source(
                        SinkErrorKind::Unavailable,
                        format!("cannot hand event {id} to the Kafka producer for `{topic}`"),
                        error,
                    )));
                    return;
                }
            }
        }
    }

    /// librdkafka's queue is full: waits for this batch's oldest report, so the record of
    /// journal position `seq` can be enqueued again. False when it cannot: that report
    /// failed, or the queue is full with none of this batch's records in it (earlier
    /// batches' records fill it: the queue is set too small for two batches, and the sink
    /// stops pipelining; this batch waits its turn).
    async fn make_room(&mut self, submitted: &mut SubmittedBatch, topics: &[String], seq: u64) -> bool {
        let Some(waited) = submitted.pending.pop_front() else {
            let cause = if self.submitted.is_empty() {
                "with none of this batch's records in it"
            } else {
                self.pipelining = false;
                "with the previous batch's records, so the sink no longer hands over a batch before the previous one is confirmed"
            };
            let reason = format!(
                "not sent: librdkafka's queue is full {cause}; raise `librdkafka.\"queue.buffering.max.messages\"` and `queue.buffering.max.kbytes` above two batches (the event at journal position {seq} waits)"
            );
            warn!("{reason}");
            submitted.unsent = Some(reason);
            return false;
        };
        let position = waited.position;
        match self.await_delivery(waited, &topics[position]).await {
            Report::Done(outcome) => {
                submitted.failed |= matches!(outcome, Outcome::Retry(_) | Outcome::Parked(_));
                submitted.outcomes[position] = Some(outcome);
            }
            Report::Late(record) => {
                submitted.pending.push_front(record);
                submitted.failed = true;
            }
        }
        !submitted.failed
    }

    /// Waits for the delivery reports of the oldest submitted batch and gives one outcome per
    /// event it was given.
    async fn confirm_batch(&mut self) -> Vec<Outcome> {
        let Some(submitted) = self.submitted.pop_front() else { return Vec::new() };
        let SubmittedBatch { outcomes, mut pending, topics, mut failed, unsent, seqs, .. } = submitted;
        let mut outcomes = outcomes;
        while let Some(record) = pending.pop_front() {
            let position = record.position;
            match self.await_delivery(record, &topics[position]).await {
                Report::Done(outcome) => {
                    // A record refused for its topic's sake fails the producer too: nothing
                    // queued after it may overtake it in its partition.
                    if matches!(outcome, Outcome::Retry(_) | Outcome::Parked(_)) && !failed {
                        failed = true;
                        // Nothing not yet sent may follow a failed record: drop what is still
                        // queued. Records in flight are left to finish (their fate must be known
                        // before the partitions are read back).
                        self.fail_producer().await;
                    }
                    outcomes[position] = Some(outcome);
                }
                Report::Late(record) => {
                    if !failed {
                        failed = true;
                        self.fail_producer().await;
                    }
                    self.in_flight.push(InFlight {
                        seq: record.seq,
                        id: record.id,
                        topic: topics[position].clone(),
                        delivery: record.delivery,
                    });
                    outcomes[position] = Some(Outcome::Retry(SinkError::new(
                        SinkErrorKind::Unavailable,
                        format!(
                            "no delivery report within {:?} from {}; the producer keeps the record and the sink waits for its report before sending more",
                            self.config.delivery_timeout.0,
                            self.brokers()
                        ),
                    )));
                }
            }
        }
        let not_sent = unsent.unwrap_or_else(|| {
            "not sent: an earlier event failed, and the sink checks the partitions before sending more"
                .to_owned()
        });
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Outcome::Retry(SinkError::new(SinkErrorKind::Unavailable, not_sent.clone()))
                })
            })
            .collect();
        for ((seq, outcome), topic) in seqs.iter().zip(&outcomes).zip(&topics) {
            match outcome {
                Outcome::Parked(_) => {
                    self.parked.insert(*seq, topic.clone());
                }
                Outcome::Delivered | Outcome::Duplicate | Outcome::Rejected(_) => {
                    self.parked.remove(seq);
                }
                Outcome::Retry(_) | Outcome::Deferred => {}
            }
        }
        if self.submitted.is_empty() {
            if !self.producer_failed {
                // Nothing is in flight and every record handed over is reported: the offsets
                // reached are where a tail read may start, unless events are parked (the
                // cursor waits before what was written since).
                if self.parked.is_empty() {
                    self.progress.settle();
                }
            } else if self.in_flight.is_empty() {
                self.discard_producer().await;
            }
        }
        outcomes
    }

    /// A record failed: purges what the producer still queues and refuses later batches until
    /// the failure is dealt with.
    async fn fail_producer(&mut self) {
        self.producer_failed = true;
        if let Some(producer) = &self.producer {
            purge_queue(producer).await;
        }
    }

    /// Waits for the reports of records a failed batch left in flight. Each delivered one is
    /// remembered as found, so its event is not sent again; once all are known, the producer
    /// is dropped and the tails are read. Fails while reports are still missing.
    async fn settle_in_flight(&mut self) -> Result<(), SinkError> {
        let waiting = std::mem::take(&mut self.in_flight);
        let deadline = tokio::time::Instant::now() + self.config.delivery_timeout.0;
        for record in waiting {
            if !self.in_flight.is_empty() {
                self.in_flight.push(record);
                continue;
            }
            let InFlight { seq, id, topic, mut delivery } = record;
            match tokio::time::timeout_at(deadline, &mut delivery).await {
                Ok(Ok(Ok(delivered))) => {
                    self.progress.delivered(&topic, delivered.partition, delivered.offset);
                    self.progress.add_found(FoundRecord {
                        seq,
                        id,
                        read_from: self.progress.settled_offset(&topic, delivered.partition),
                        topic,
                        partition: delivered.partition,
                        offset: delivered.offset,
                    });
                }
                Ok(_) => {}
                Err(_) => self.in_flight.push(InFlight { seq, id, topic, delivery }),
            }
        }
        if !self.in_flight.is_empty() {
            return Err(SinkError::new(
                SinkErrorKind::Unavailable,
                format!(
                    "waiting for the delivery reports of {} records from {}; nothing more is sent until they are known",
                    self.in_flight.len(),
                    self.brokers()
                ),
            ));
        }
        if self.producer_failed {
            self.discard_producer().await;
        }
        Ok(())
    }

    async fn await_delivery(&mut self, record: PendingRecord, topic: &str) -> Report {
        let mut record = record;
        let outcome = match tokio::time::timeout_at(record.due, &mut record.delivery).await {
            Ok(Ok(Ok(delivered))) => {
                self.progress.delivered(topic, delivered.partition, delivered.offset);
                self.broken.healed(topic);
                Outcome::Delivered
            }
            Ok(Ok(Err((error, _)))) if error.rdkafka_error_code().is_some_and(broken::concerns_the_topic) => {
                let error = delivery_error(&record.id, topic, error);
                self.broken.mark(topic, &error);
                Outcome::Parked(error)
            }
            Ok(Ok(Err((error, _)))) => Outcome::Retry(delivery_error(&record.id, topic, error)),
            Ok(Err(_canceled)) => Outcome::Retry(SinkError::new(
                SinkErrorKind::Unavailable,
                format!(
                    "the Kafka producer was closed before it reported on event {} to `{topic}`",
                    record.id
                ),
            )),
            Err(_elapsed) => return Report::Late(record),
        };
        Report::Done(outcome)
    }
}

/// What waiting for one delivery report gave.
enum Report {
    /// The report arrived.
    Done(Outcome),
    /// None within `delivery_timeout`: the record may still be written.
    Late(PendingRecord),
}

/// A batch handed to the producer, awaiting its delivery reports.
struct SubmittedBatch {
    /// The journal position of the batch's first event.
    first_seq: u64,
    /// Each event's journal position.
    seqs: Vec<u64>,
    /// Per event, the outcome known so far (found already in Kafka, rejected by the client,
    /// failed before it was handed over).
    outcomes: Vec<Option<Outcome>>,
    /// The records handed over whose reports have not been read, in the order sent.
    pending: VecDeque<PendingRecord>,
    /// Each event's topic.
    topics: Vec<String>,
    /// A record failed while the batch was handed over.
    failed: bool,
    /// Why the rest of the batch was not handed over, when it was not for a failure.
    unsent: Option<String>,
}

/// A record handed to the producer, and the report that will say where it went.
struct PendingRecord {
    /// Its event's position in the batch.
    position: usize,
    /// Its event's journal position.
    seq: u64,
    /// Its event's id.
    id: String,
    delivery: DeliveryFuture,
    /// When its report is due: `delivery_timeout` after it was handed over (one deadline per
    /// record from its hand-over, so reports waited for in turn do not add their timeouts up).
    due: Instant,
}

/// A record whose delivery report had not come when its batch returned.
struct InFlight {
    seq: u64,
    id: String,
    topic: String,
    delivery: DeliveryFuture,
}

/// Drops the records the producer has not sent yet, off the runtime; their reports fail at
/// once. Records in flight are left alone: purging them would leave their fate unknown while
/// the broker may still write them.
async fn purge_queue(producer: &FutureProducer<LogContext>) {
    let producer = producer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        producer.purge(PurgeConfig::default().queue());
        producer.poll(Duration::ZERO);
    })
    .await;
}

/// The error for a failed delivery report, with what to do about it.
fn delivery_error(id: &str, topic: &str, error: KafkaError) -> SinkError {
    let hint = match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            "the broker refused the record batch as too large; set `librdkafka.\"message.max.bytes\"` on this sink at or below the topic's max.message.bytes"
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed) => {
            "the broker refused to let this client write the topic; grant it WRITE on the topic"
        }
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => {
            "the topic or partition is gone; the sink looks it up again"
        }
        _ => "the sink checks the partitions and sends again",
    };
    SinkError::with_source(
        SinkErrorKind::Unavailable,
        format!("Kafka did not take event {id} for `{topic}`: {hint}"),
        error,
    )
}

/// Describes `name`, creating it first when it is missing and the sink may create topics.
fn find_or_create_topic(
    config: &KafkaSinkConfig,
    name: &str,
    brokers: &str,
) -> Result<TopicLayout, SinkError> {
    let reader = client::reader(config)?;
    let timeout = config.request_timeout.0;
    if let Some(layout) = client::describe_topic(reader.client(), name, timeout, brokers)? {
        return Ok(layout);
    }
    let Some(create) = config.create_topics else {
        return Err(SinkError::new(
            SinkErrorKind::Config,
            format!(
                "Kafka topic `{name}` does not exist at {brokers}; create it, or set `create_topics = {{ partitions = N, replication = N }}` on this sink. Its events wait in the journal until then"
            ),
        ));
    };
    let admin: AdminClient<LogContext> = client::admin(config)?;
    let topic = NewTopic::new(name, create.partitions, TopicReplication::Fixed(create.replication));
    let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
    let results =
        tokio::runtime::Handle::current().block_on(admin.create_topics([&topic], &options)).map_err(|e| {
            SinkError::with_source(
                SinkErrorKind::Unavailable,
                format!("cannot create Kafka topic `{name}`"),
                e,
            )
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(SinkError::new(
                    SinkErrorKind::Config,
                    format!(
                        "Kafka refused to create topic `{name}` ({} partitions, replication {}): {code}",
                        create.partitions, create.replication
                    ),
                ));
            }
        }
    }
    info!(
        "created Kafka topic `{name}` with {} partitions, replication {}",
        create.partitions, create.replication
    );
    // A new topic's metadata can take a moment to reach every broker.
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(layout) = client::describe_topic(reader.client(), name, timeout, brokers)? {
            return Ok(layout);
        }
        if std::time::Instant::now() > deadline {
            return Err(SinkError::new(
                SinkErrorKind::Unavailable,
                format!("Kafka topic `{name}` was created but is not visible in the metadata yet"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Describes a topic the sink has written to; `None` only when it is really gone: a
/// broker's metadata can call a topic unknown for a moment (one that has not caught up after
/// a leader change), and forgetting a topic drops its saved offsets and the records found in
/// it, so an absent topic is looked up again, [`GONE_LOOKUPS`] times over about two seconds.
fn describe_known_topic<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    name: &str,
    config: &KafkaSinkConfig,
    brokers: &str,
) -> Result<Option<client::TopicLayout>, SinkError> {
    for lookup in 1..=GONE_LOOKUPS {
        if let Some(layout) = client::describe_topic(client, name, config.request_timeout.0, brokers)? {
            return Ok(Some(layout));
        }
        if lookup < GONE_LOOKUPS {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    Ok(None)
}

/// Metadata lookups that must all miss a known topic before it counts as gone.
const GONE_LOOKUPS: u32 = 5;

/// Runs blocking librdkafka work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SinkError> + Send + 'static,
) -> Result<T, SinkError> {
    // The sink's span (the worker's `sink` span) goes with the work, and into the librdkafka
    // clients created there (see `LogContext`).
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| SinkError::with_source(SinkErrorKind::Other, "a Kafka client task failed", e))?
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Destroying a librdkafka client blocks (purge, flush, joining its threads); a sink
        // dropped without `flush` (a task torn down) must not do that on the async runtime.
        if let Some(producer) = self.producer.take() {
            let _ = std::thread::Builder::new().name("kafka-close".into()).spawn(move || drop(producer));
        }
    }
}

impl Sink for KafkaSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        self.progress = match saved_state {
            None => Progress::new(),
            Some(value) => serde_json::from_value::<SavedProgress>(value)
                .map_err(|e| e.to_string())
                .and_then(Progress::restore)
                .map_err(|e| {
                    SinkError::new(
                        SinkErrorKind::Config,
                        format!(
                            "the Kafka progress saved with this sink's cursor cannot be read ({e}); if the sink was of another type before, delete its cursor file to start it afresh"
                        ),
                    )
                })?,
        };
        let result = async {
            self.producer().await.map(drop)?;
            self.check_tails().await
        }
        .await;
        if let Err(error) = result {
            self.discard_producer().await;
            return Err(error);
        }
        // The relay saves the state right after `open`.
        self.progress.layout_saved();
        Ok(())
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        if !self.submitted.is_empty() {
            let error = SinkError::new(
                SinkErrorKind::Other,
                "the Kafka sink was sent a batch while others were in flight (a bug in the relay)",
            );
            return Outcome::retry_all(batch.len(), &error);
        }
        match self.submit(batch).await {
            Submission::InFlight => self.confirm_batch().await,
            Submission::Done(outcomes) => outcomes,
        }
    }

    fn pipeline_depth(&self) -> usize {
        if self.pipelining { PIPELINE_DEPTH } else { 1 }
    }

    async fn submit(&mut self, batch: &[Envelope]) -> Submission {
        if !self.submitted.is_empty() && (self.producer_failed || !self.in_flight.is_empty()) {
            let error = SinkError::new(
                SinkErrorKind::Unavailable,
                "not sent: a record of an earlier batch failed, and the sink checks the partitions before sending more",
            );
            return Submission::Done(Outcome::retry_all(batch.len(), &error));
        }
        match self.prepare(batch).await {
            Ok(Prepared::Send(producer, topics, broken)) => {
                self.submit_batch(producer, batch, topics, broken).await;
                Submission::InFlight
            }
            Ok(Prepared::Defer) => Submission::Done(batch.iter().map(|_| Outcome::Deferred).collect()),
            Err(error) => {
                if error.kind != SinkErrorKind::Config
                    && self.in_flight.is_empty()
                    && self.submitted.is_empty()
                {
                    self.discard_producer().await;
                }
                Submission::Done(Outcome::retry_all(batch.len(), &error))
            }
        }
    }

    async fn confirm(&mut self, _batch: &[Envelope]) -> Vec<Outcome> {
        self.confirm_batch().await
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(producer) = self.producer.take() {
            let timeout = self.config.delivery_timeout.0;
            blocking(move || {
                producer.flush(timeout).map_err(|e| {
                    SinkError::with_source(SinkErrorKind::Unavailable, "cannot flush the Kafka producer", e)
                })
            })
            .await?;
        }
        Ok(())
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.progress.saved()).ok()
    }
}
