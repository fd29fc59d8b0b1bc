//! What the Kafka sink knows about its partitions, and the part of it saved with the relay's
//! cursor.
//!
//! For every topic it writes to, the sink keeps the partition count it routes by and, per
//! partition, two offsets:
//!
//! - `end`: just past the last record the sink knows is there (from delivery reports and
//!   tail reads);
//! - `settled`: the `end` of the last moment every event the sink was given had a final
//!   outcome and no batch was in flight. The relay's cursor is only ever at or past such a
//!   moment, so every record written after the saved cursor lies at or past the saved
//!   `settled` offset.
//!
//! The saved form is the settled offset, lowered to where the tail read started that found
//! records whose events have not been replayed yet: a crash during a replay must find those
//! records again. Every saved offset is a record-batch boundary (the end of a delivered
//! batch, or the start of a read), because some brokers serve fetches only from there.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The checkpoint state as saved with the relay's cursor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedProgress {
    /// Format version.
    pub version: u32,
    /// This sink's writer id: records carrying it in `nomad-relay-writer` were written by
    /// this sink, and their `nomad-relay-seq` header is a position in this relay's journal.
    pub writer: String,
    /// Per topic: the partition count and, per partition, where a tail read starts.
    pub topics: BTreeMap<String, SavedTopic>,
}

/// One topic in [`SavedProgress`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedTopic {
    /// Partitions the sink routes keys over.
    pub partitions: i32,
    /// Per partition, the offset a tail read after a crash starts at.
    pub read_from: BTreeMap<i32, i64>,
}

const VERSION: u32 = 1;

/// A record written by this sink that a tail read found past the saved offsets: its event is
/// already in Kafka and must not be sent again.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundRecord {
    /// The event's journal position (`nomad-relay-seq`).
    pub seq: u64,
    /// The event id (`nomad-relay-id`), checked against the replayed event.
    pub id: String,
    /// Where the record is.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Where the tail read that found it started: a record-batch boundary, where a later
    /// read can start again (some brokers serve a fetch only from a batch's first offset).
    pub read_from: i64,
}

/// One topic as the sink tracks it.
#[derive(Debug, Clone, Default)]
pub struct TopicProgress {
    /// Partitions the sink routes keys over.
    pub partitions: i32,
    /// Per partition, just past the last record known to be there.
    pub end: BTreeMap<i32, i64>,
    /// Per partition, `end` as it was when every event had a final outcome.
    pub settled: BTreeMap<i32, i64>,
}

/// Everything the sink tracks about where its records are.
#[derive(Debug, Clone)]
pub struct Progress {
    writer: String,
    topics: BTreeMap<String, TopicProgress>,
    found: HashMap<u64, FoundRecord>,
    unsaved_layout: bool,
}

impl Progress {
    /// Progress for a sink that has never saved any (a new writer id).
    pub fn new() -> Progress {
        Progress {
            writer: format!("{:016x}", rand::random::<u64>()),
            topics: BTreeMap::new(),
            found: HashMap::new(),
            unsaved_layout: false,
        }
    }

    /// Progress from the saved state; fails on a state this version cannot read.
    pub fn restore(saved: SavedProgress) -> Result<Progress, String> {
        if saved.version != VERSION {
            return Err(format!(
                "saved Kafka progress has version {}, this relay reads {VERSION}",
                saved.version
            ));
        }
        let topics = saved
            .topics
            .into_iter()
            .map(|(name, topic)| {
                let progress = TopicProgress {
                    partitions: topic.partitions,
                    end: topic.read_from.clone(),
                    settled: topic.read_from,
                };
                (name, progress)
            })
            .collect();
        Ok(Progress { writer: saved.writer, topics, found: HashMap::new(), unsaved_layout: false })
    }

    /// The state to save with the cursor.
    pub fn saved(&self) -> SavedProgress {
        let mut topics: BTreeMap<String, SavedTopic> = self
            .topics
            .iter()
            .map(|(name, topic)| {
                (name.clone(), SavedTopic { partitions: topic.partitions, read_from: topic.settled.clone() })
            })
            .collect();
        for record in self.found.values() {
            if let Some(offset) =
                topics.get_mut(&record.topic).and_then(|topic| topic.read_from.get_mut(&record.partition))
            {
                *offset = (*offset).min(record.read_from);
            }
        }
        SavedProgress { version: VERSION, writer: self.writer.clone(), topics }
    }

    /// This sink's writer id.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The topic, if the sink knows it.
    pub fn topic(&self, name: &str) -> Option<&TopicProgress> {
        self.topics.get(name)
    }

    /// Every known topic.
    pub fn topics(&self) -> impl Iterator<Item = (&String, &TopicProgress)> {
        self.topics.iter()
    }

    /// Starts tracking `name` (or a changed partition count), with a tail read starting at
    /// `start` for each partition not tracked yet. The change must be saved before the sink
    /// writes to it.
    pub fn add_topic(&mut self, name: &str, partitions: i32, start: &BTreeMap<i32, i64>) {
        let topic = self.topics.entry(name.to_owned()).or_default();
        topic.partitions = partitions;
        for (&partition, &offset) in start {
            if let std::collections::btree_map::Entry::Vacant(entry) = topic.end.entry(partition) {
                entry.insert(offset);
                topic.settled.insert(partition, offset);
            }
        }
        self.unsaved_layout = true;
    }

    /// Stops tracking a topic that no longer exists; it is looked up again when next needed.
    pub fn forget_topic(&mut self, name: &str) {
        self.topics.remove(name);
        self.found.retain(|_, record| record.topic != name);
    }

    /// True when topics or partitions were added since [`Progress::layout_saved`].
    pub fn has_unsaved_layout(&self) -> bool {
        self.unsaved_layout
    }

    /// The relay is about to save the state (the sink deferred its batch for that).
    pub fn layout_saved(&mut self) {
        self.unsaved_layout = false;
    }

    /// A delivery report: the record is at `offset`.
    pub fn delivered(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(topic) = self.topics.get_mut(topic) {
            let end = topic.end.entry(partition).or_insert(offset + 1);
            *end = (*end).max(offset + 1);
        }
    }

    /// A tail read reached `end` in this partition.
    pub fn read_to(&mut self, topic: &str, partition: i32, end: i64) {
        self.delivered(topic, partition, end - 1);
    }

    /// Every event handed to the sink so far has a final outcome.
    pub fn settle(&mut self) {
        for topic in self.topics.values_mut() {
            topic.settled = topic.end.clone();
        }
    }

    /// Records found by a tail read of `read` topics replace those an earlier read found in
    /// them; records found before in topics not read this time are kept (they still hold
    /// their saved offsets back).
    pub fn set_found(&mut self, found: Vec<FoundRecord>, read: &BTreeSet<String>) {
        self.found.retain(|_, record| !read.contains(&record.topic));
        self.found.extend(found.into_iter().map(|record| (record.seq, record)));
    }

    /// Forgets found records of events before `seq`: the relay is past them.
    pub fn expire_found(&mut self, seq: u64) {
        self.found.retain(|&found_seq, _| found_seq >= seq);
    }

    /// True if the event at `seq` with `id` is already in Kafka. The record keeps holding the
    /// saved offset back until [`Progress::expire_found`] passes it: the relay's cursor may
    /// still be saved before its event (a batch that fails later on), and a crash then must
    /// find the record again.
    pub fn is_found(&self, seq: u64, id: &str) -> bool {
        self.found.get(&seq).is_some_and(|record| record.id == id)
    }

    /// Remembers a record the sink learned of from a late delivery report.
    pub fn add_found(&mut self, record: FoundRecord) {
        self.found.insert(record.seq, record);
    }

    /// The settled offset of a partition (0 when untracked).
    pub fn settled_offset(&self, topic: &str, partition: i32) -> i64 {
        self.topics.get(topic).and_then(|t| t.settled.get(&partition)).copied().unwrap_or(0)
    }

    /// How many found records wait for their event.
    pub fn found_count(&self) -> usize {
        self.found.len()
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(pairs: &[(i32, i64)]) -> BTreeMap<i32, i64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn saved_offsets_move_only_when_settled() {
        let mut progress = Progress::new();
        progress.add_topic("t", 2, &offsets(&[(0, 10), (1, 5)]));
        progress.delivered("t", 0, 10);
        progress.delivered("t", 0, 11);
        assert_eq!(progress.saved().topics["t"].read_from, offsets(&[(0, 10), (1, 5)]));
        progress.settle();
        assert_eq!(progress.saved().topics["t"].read_from, offsets(&[(0, 12), (1, 5)]));
    }

    #[test]
    fn found_records_hold_the_saved_offset_back_until_replayed() {
        let mut progress = Progress::new();
        progress.add_topic("t", 1, &offsets(&[(0, 10)]));
        let found = |seq, offset| FoundRecord {
            seq,
            id: format!("id{seq}"),
            topic: "t".into(),
            partition: 0,
            offset,
            read_from: 10,
        };
        progress.set_found(vec![found(100, 10), found(101, 11)], &BTreeSet::from(["t".to_owned()]));
        progress.read_to("t", 0, 12);
        progress.settle();
        assert_eq!(progress.saved().topics["t"].read_from[&0], 10);
        assert!(!progress.is_found(100, "other id"), "the id must match too");
        assert!(progress.is_found(100, "id100"));
        assert_eq!(progress.saved().topics["t"].read_from[&0], 10, "held back until expired");
        progress.expire_found(101);
        assert!(!progress.is_found(100, "id100"));
        assert_eq!(progress.saved().topics["t"].read_from[&0], 10, "101 is still waiting");
        progress.expire_found(102);
        assert_eq!(progress.found_count(), 0);
        assert_eq!(progress.saved().topics["t"].read_from[&0], 12);
    }

    #[test]
    fn a_tail_read_that_skips_a_topic_keeps_the_records_found_there() {
        let mut progress = Progress::new();
        progress.add_topic("a", 1, &offsets(&[(0, 10)]));
        progress.add_topic("b", 1, &offsets(&[(0, 0)]));
        let found = |seq, topic: &str| FoundRecord {
            seq,
            id: format!("id{seq}"),
            topic: topic.into(),
            partition: 0,
            offset: 10,
            read_from: 10,
        };
        progress
            .set_found(vec![found(5, "a"), found(6, "b")], &BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        // A second read could not read `a` (Kafka would not describe it): what was found there
        // still counts, and still holds `a`'s saved offset back.
        progress.set_found(vec![], &BTreeSet::from(["b".to_owned()]));
        assert!(progress.is_found(5, "id5") && !progress.is_found(6, "id6"));
        progress.read_to("a", 0, 20);
        progress.settle();
        assert_eq!(progress.saved().topics["a"].read_from[&0], 10);
    }

    #[test]
    fn restored_progress_round_trips() {
        let mut progress = Progress::new();
        progress.add_topic("t", 3, &offsets(&[(0, 1), (1, 2), (2, 3)]));
        let saved = progress.saved();
        let text = serde_json::to_value(&saved).expect("serialise");
        let back: SavedProgress = serde_json::from_value(text).expect("parse");
        let restored = Progress::restore(back).expect("restore");
        assert_eq!(restored.saved(), saved);
        assert_eq!(restored.writer(), progress.writer());
    }
}
