//! Reading the tails of the partitions the sink may have written to since its last saved
//! progress, to learn which events are already in Kafka.
//!
//! Blocking: runs on a `spawn_blocking` thread. The read starts at each partition's saved
//! offset and goes to the end; the end is where the broker says there is nothing more to
//! fetch (librdkafka's partition EOF), not the high watermark, which some brokers (tansu)
//! report too low. Some brokers (tansu again) answer a fetch from inside a record batch
//! with nothing at all; a partition that neither sends a record nor reports its end within
//! `request_timeout` is therefore read again from its oldest offset, which is slower but
//! finds everything.

use crate::client::{self, LogContext};
use crate::config::KafkaSinkConfig;
use crate::progress::FoundRecord;
use nomad_relay_sink_api::{SinkError, SinkErrorKind};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tracing::warn;

/// Header names the sink writes and reads.
pub mod headers {
    /// The event id.
    pub const ID: &str = "nomad-relay-id";
    /// The writing sink's id.
    pub const WRITER: &str = "nomad-relay-writer";
    /// The event's position in the writing relay's journal.
    pub const SEQ: &str = "nomad-relay-seq";
}

/// How far past a partition's reported end the read may go before it stops, and how far
/// before it a saved offset may lie before the topic counts as recreated: brokers that report
/// the end too low (tansu reports the last record batch's first offset + 1) are off by at
/// most one batch, which librdkafka keeps under `batch.num.messages` (10,000) records.
const WATERMARK_SLACK: i64 = 10_000;

/// What a tail read found.
#[derive(Debug, Default)]
pub struct Tails {
    /// Records this sink wrote, past the offsets read from.
    pub found: Vec<FoundRecord>,
    /// Per (topic, partition), the offset just past the last record read.
    pub ends: BTreeMap<(String, i32), i64>,
    /// Records read in all.
    pub records: u64,
}

/// Reads every partition in `from` (topic → partition → first offset) to its end, keeping
/// the records written by `writer`.
pub fn read_tails(
    config: &KafkaSinkConfig,
    from: &BTreeMap<String, BTreeMap<i32, i64>>,
    writer: &str,
) -> Result<Tails, SinkError> {
    let reader = client::reader(config)?;
    let mut tails = Tails::default();
    for (topic, partitions) in from {
        if !partitions.is_empty() {
            read_topic(&reader, config, topic, partitions, writer, &mut tails)?;
        }
    }
    Ok(tails)
}

fn read_topic(
    reader: &BaseConsumer<LogContext>,
    config: &KafkaSinkConfig,
    topic: &str,
    partitions: &BTreeMap<i32, i64>,
    writer: &str,
    tails: &mut Tails,
) -> Result<(), SinkError> {
    let brokers = config.bootstrap_servers();
    let bounds = assign(reader, config, topic, partitions, tails)?;
    let result = read_assigned(reader, config, topic, &bounds, writer, tails);
    let _ = reader.unassign();
    result.map_err(|error| match error {
        ReadError::Kafka(error) => unavailable(topic, &brokers, error),
        ReadError::Stalled(open) => SinkError::new(
            SinkErrorKind::Unavailable,
            format!(
                "reading the tail of `{topic}` partitions {open:?} at {brokers} made no progress for {:?}",
                config.request_timeout.0
            ),
        ),
    })
}

/// Per partition of one topic: the first offset whose records count, and where the read may
/// stop.
struct Bounds {
    counted_from: BTreeMap<i32, i64>,
    stop_at: BTreeMap<i32, i64>,
}

/// Why reading assigned partitions stopped short.
enum ReadError {
    Kafka(KafkaError),
    /// These partitions sent nothing for `request_timeout`, even read from their oldest.
    Stalled(BTreeSet<i32>),
}

/// Assigns the reader to each partition at its saved offset (or its start, when the topic
/// was recreated below it), and notes where each read counts from and may stop.
fn assign(
    reader: &BaseConsumer<LogContext>,
    config: &KafkaSinkConfig,
    topic: &str,
    partitions: &BTreeMap<i32, i64>,
    tails: &mut Tails,
) -> Result<Bounds, SinkError> {
    let brokers = config.bootstrap_servers();
    let mut assignment = TopicPartitionList::new();
    let mut bounds = Bounds { counted_from: BTreeMap::new(), stop_at: BTreeMap::new() };
    for (&partition, &offset) in partitions {
        let (low, high) =
            reader.fetch_watermarks(topic, partition, config.request_timeout.0).map_err(|e| {
                SinkError::with_source(
                    SinkErrorKind::Unavailable,
                    format!("cannot read the offsets of `{topic}` partition {partition} at {brokers}"),
                    e,
                )
            })?;
        let start = if offset > high.saturating_add(WATERMARK_SLACK) {
            warn!(
                "Kafka topic `{topic}` partition {partition} ends at {high}, before the saved offset {offset}: the topic was deleted and created again; reading it from its start"
            );
            low
        } else {
            offset.max(low)
        };
        bounds.counted_from.insert(partition, start);
        // Records written after the read began are not this sink's (its own are all known by
        // then); stopping past them keeps a busy shared topic from holding the read forever.
        bounds.stop_at.insert(partition, high.saturating_add(WATERMARK_SLACK));
        assignment.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(|e| {
            SinkError::with_source(SinkErrorKind::Other, "cannot build the tail read's assignment", e)
        })?;
        tails.ends.insert((topic.to_owned(), partition), start);
    }
    reader.assign(&assignment).map_err(|e| unavailable(topic, &brokers, e))?;
    Ok(bounds)
}

/// Reads the assigned partitions to their ends, keeping `writer`'s records. A partition
/// that neither sends a record nor reports its end within `request_timeout` is read again
/// from its oldest record, once.
fn read_assigned(
    reader: &BaseConsumer<LogContext>,
    config: &KafkaSinkConfig,
    topic: &str,
    bounds: &Bounds,
    writer: &str,
    tails: &mut Tails,
) -> Result<(), ReadError> {
    let timeout = config.request_timeout.0;
    let mut open: BTreeSet<i32> = bounds.counted_from.keys().copied().collect();
    let mut silent: BTreeSet<i32> = open.clone();
    let mut read_from_start = false;
    // Quiet partitions answer at once; the deadline only ends a read that stopped making
    // progress (it restarts whenever a record arrives).
    let mut deadline = Instant::now() + timeout;
    while !open.is_empty() {
        if Instant::now() > deadline {
            if read_from_start || silent != open {
                return Err(ReadError::Stalled(open));
            }
            read_from_start = true;
            warn!(
                "Kafka at {} sent nothing for `{topic}` partitions {open:?} from the saved offsets; reading them from their oldest record instead",
                config.bootstrap_servers()
            );
            let mut again = TopicPartitionList::new();
            for &partition in &open {
                let _ = again.add_partition_offset(topic, partition, Offset::Beginning);
            }
            reader.assign(&again).map_err(ReadError::Kafka)?;
            deadline = Instant::now() + timeout;
            continue;
        }
        let Some(polled) = reader.poll(Duration::from_millis(100)) else { continue };
        match polled {
            Ok(message) => {
                deadline = Instant::now() + timeout;
                let partition = message.partition();
                if !open.contains(&partition) {
                    continue;
                }
                tails.records += 1;
                silent.remove(&partition);
                if message.offset() >= bounds.stop_at.get(&partition).copied().unwrap_or(i64::MAX) {
                    open.remove(&partition);
                }
                let saved_start = bounds.counted_from.get(&partition).copied().unwrap_or(0);
                let end = tails.ends.entry((topic.to_owned(), partition)).or_insert(0);
                *end = (*end).max(message.offset() + 1);
                // Records before the saved offset were written before the cursor was saved:
                // their events are never sent again by `run`, and a replay means to send them.
                if message.offset() < saved_start {
                    continue;
                }
                let read_start = if read_from_start { 0 } else { saved_start };
                if let Some(record) = own_record(&message, writer, topic, read_start) {
                    tails.found.push(record);
                }
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                silent.remove(&partition);
                open.remove(&partition);
            }
            Err(error) => return Err(ReadError::Kafka(error)),
        }
    }
    Ok(())
}

fn unavailable(topic: &str, brokers: &str, error: KafkaError) -> SinkError {
    SinkError::with_source(
        SinkErrorKind::Unavailable,
        format!("cannot read the tail of `{topic}` at {brokers}"),
        error,
    )
}

/// The record as a [`FoundRecord`] if `writer` wrote it; `read_from` is where its read began.
fn own_record(message: &impl Message, writer: &str, topic: &str, read_from: i64) -> Option<FoundRecord> {
    let headers = message.headers()?;
    let (mut id, mut seq, mut written_by) = (None, None, None);
    for header in headers.iter() {
        let value = header.value.and_then(|v| std::str::from_utf8(v).ok());
        match header.key {
            headers::ID => id = value,
            headers::SEQ => seq = value.and_then(|v| v.parse::<u64>().ok()),
            headers::WRITER => written_by = value,
            _ => {}
        }
    }
    if written_by != Some(writer) {
        return None;
    }
    Some(FoundRecord {
        seq: seq?,
        id: id?.to_owned(),
        topic: topic.to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        read_from,
    })
}
