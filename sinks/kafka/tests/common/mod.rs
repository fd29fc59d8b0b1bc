//! Helpers for the Kafka sink's tests: events, sink configs, and a plain consumer that reads
//! back everything a topic holds.

#![allow(dead_code)]

use bytes::Bytes;
use nomad_relay_sink_api::units::{HumanDuration, OneOrMany};
use nomad_relay_sink_api::{Envelope, EventId, Outcome, Sink};
use nomad_relay_sink_kafka::{CreateTopics, KafkaSink, KafkaSinkConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The test broker (tansu), started by `scripts/services.sh kafka`.
pub fn tansu() -> String {
    let address = std::env::var("NOMAD_RELAY_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    if std::net::TcpStream::connect(&address).is_err() {
        panic!(
            "Kafka (tansu) is not running on {address}; start it with `scripts/services.sh kafka` (it installs tansu the first time)"
        );
    }
    address
}

/// A topic name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A sink config for `brokers` and `topic`, creating topics with `partitions`.
pub fn config(brokers: &str, topic: &str, partitions: i32) -> KafkaSinkConfig {
    KafkaSinkConfig {
        brokers: OneOrMany::One(brokers.to_owned()),
        topic: topic.to_owned(),
        create_topics: Some(CreateTopics { partitions, replication: 1 }),
        delivery_timeout: HumanDuration(Duration::from_secs(5)),
        request_timeout: HumanDuration(Duration::from_secs(5)),
        ..Default::default()
    }
}

/// An event at journal position `seq`, Nomad index `index`, for object `key`.
pub fn event(seq: u64, index: u64, key: &str) -> Envelope {
    let raw = format!(
        r#"{{"Topic":"Allocation","Type":"AllocationUpdated","Key":"{key}","Namespace":"default","Index":{index},"Payload":{{"Seq":{seq}}}}}"#
    );
    Envelope {
        seq,
        id: EventId { index, digest: xx(key), occurrence: 0 },
        topic: "Allocation".into(),
        event_type: "AllocationUpdated".into(),
        key: key.into(),
        raw: Bytes::from(raw),
        ..Envelope::example()
    }
}

fn xx(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100000001b3))
}

/// `count` events from `first_seq` over five keys, one Nomad index each.
pub fn events(first_seq: u64, count: u64) -> Vec<Envelope> {
    (first_seq..first_seq + count).map(|seq| event(seq, 1000 + seq, &format!("alloc-{}", seq % 5))).collect()
}

/// Sends `batch` as the relay does: again at once after a deferral, and asserts every event
/// was delivered.
pub async fn deliver(sink: &mut KafkaSink, batch: &[Envelope]) {
    let mut outcomes = sink.send(batch).await;
    if outcomes.iter().all(|o| matches!(o, Outcome::Deferred)) {
        outcomes = sink.send(batch).await;
    }
    for (event, outcome) in batch.iter().zip(&outcomes) {
        assert!(outcome.is_delivered(), "event {} not delivered: {outcome:?}", event.seq);
    }
}

/// Sends `batch` again and again as the relay's worker does (only the events not yet
/// delivered, at most `attempts` times) and asserts everything was delivered in the end.
pub async fn deliver_with_retries(sink: &mut KafkaSink, batch: &[Envelope], attempts: usize) {
    let mut pending = batch.to_vec();
    for _ in 0..attempts {
        if pending.is_empty() {
            break;
        }
        let outcomes = sink.send(&pending).await;
        pending =
            pending.into_iter().zip(outcomes).filter(|(_, o)| !o.is_delivered()).map(|(e, _)| e).collect();
    }
    let left: Vec<u64> = pending.iter().map(|e| e.seq).collect();
    assert!(left.is_empty(), "still undelivered after {attempts} attempts: {left:?}");
}

/// One record as a plain consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

impl Record {
    /// The journal position the sink wrote into the record.
    pub fn seq(&self) -> u64 {
        self.headers["nomad-relay-seq"].parse().expect("seq header")
    }
}

/// Every record of `topic`, read from the start of each partition to its end.
pub fn read_all(brokers: &str, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("test-reader"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        // Everything the topic holds, also behind another producer's open transaction.
        .set("isolation.level", "read_uncommitted")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!partitions.is_empty(), "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut open: std::collections::BTreeSet<i32> = partitions.into_iter().collect();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} did not reach the end of partitions {open:?}");
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|headers| {
                        headers
                            .iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
                    headers,
                });
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
        }
    }
    records
}

/// Asserts `records` hold each of `expected` seqs exactly once, and each key's records in
/// increasing seq order within its partition.
pub fn assert_exactly_once(records: &[Record], expected: impl IntoIterator<Item = u64>) {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for record in records {
        *counts.entry(record.seq()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|&(_, &n)| n > 1).map(|(s, n)| (*s, *n)).collect();
    assert!(repeated.is_empty(), "events written more than once (seq, times): {repeated:?}");
    let expected: Vec<u64> = expected.into_iter().collect();
    let missing: Vec<_> = expected.iter().filter(|s| !counts.contains_key(s)).collect();
    assert!(missing.is_empty(), "events missing: {missing:?}");
    assert_eq!(counts.len(), expected.len(), "unexpected extra events");
    let mut by_key: BTreeMap<(String, i32), Vec<(i64, u64)>> = BTreeMap::new();
    for record in records {
        let key = record.key.clone().unwrap_or_default();
        by_key.entry((key, record.partition)).or_default().push((record.offset, record.seq()));
    }
    for ((key, partition), mut entries) in by_key {
        entries.sort();
        assert!(
            entries.windows(2).all(|pair| pair[0].1 < pair[1].1),
            "key {key} in partition {partition} out of order: {entries:?}"
        );
    }
}
