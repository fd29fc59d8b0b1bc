//! The shared checkpoint: where each sink stands, in Nomad's terms rather than one journal's,
//! so that any instance can find the same place in its own journal.
//!
//! A sink's place is its [`Frontier`]: per source, the last Nomad index it passed and the ids
//! of the events it passed at that index (journals of different instances number records
//! differently, but every instance journals one source's events in Nomad's index order, with
//! the same deterministic ids). An event is passed when its index is below its source's
//! frontier index, or equal to it with its id listed (or no ids listed: all passed). The checkpoint also carries each sink's
//! own state (what it keeps with its cursor). It is stored as one item, `checkpoint`, of the
//! lease variable, as JSON:
//!
//! ```json
//! {"version":1,"holder":"<instance>","written_unix_ms":1764590000000,
//!  "sinks":{"nats":{"frontier":{"default":{"index":1234,"ids":["1234-...-0"]}},"sink_state":null}}}
//! ```
//!
//! A variable holds at most 64 KiB of items (`maxVariableSize` in Nomad's
//! `nomad/structs/variables.go`); a checkpoint that would not fit drops the ids of partly
//! passed indexes (their events count as not passed, so they are delivered again: the
//! exactly-once sinks recognise them).

use crate::cursor::Cursor;
use crate::journal::JournalError;
use crate::journal::reader::{JournalReader, Read};
use nomad_relay_sink_api::Envelope;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The checkpoint format version.
pub const VERSION: u32 = 1;
/// The variable item holding the checkpoint.
pub const ITEM: &str = "checkpoint";
/// The largest checkpoint written with ids; Nomad refuses a variable over 64 KiB.
const MAX_BYTES: usize = 60 * 1024;
/// Records read per journal step while scanning.
const SCAN_STEP: usize = 4096;

/// One source's part of a frontier.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFrontier {
    /// The last Nomad index passed.
    pub index: u64,
    /// The ids of the events passed at `index` (`<index>-<digest>-<occurrence>`); empty when
    /// every event at `index` is passed.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ids: BTreeSet<String>,
}

/// Per source (by name), how far a sink has passed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Frontier(pub BTreeMap<String, SourceFrontier>);

impl Frontier {
    /// Whether `event` is passed.
    pub fn passes(&self, event: &Envelope) -> bool {
        self.0.get(&event.source).is_some_and(|at| {
            event.id.index < at.index
                || (event.id.index == at.index
                    && (at.ids.is_empty() || at.ids.contains(&event.id.to_string())))
        })
    }

    /// Moves past `event` (the next one of its source in journal order).
    pub fn pass(&mut self, event: &Envelope) {
        let at = self.0.entry(event.source.clone()).or_default();
        if event.id.index > at.index {
            *at = SourceFrontier { index: event.id.index, ids: BTreeSet::new() };
        }
        if event.id.index == at.index {
            at.ids.insert(event.id.to_string());
        }
    }

    /// The same frontier without the ids of partly passed indexes: each source stands at the
    /// index before (smaller, and never ahead of the full one).
    fn without_ids(&self) -> Frontier {
        Frontier(
            self.0
                .iter()
                .map(|(source, at)| {
                    let index = if at.ids.is_empty() { at.index } else { at.index.saturating_sub(1) };
                    (source.clone(), SourceFrontier { index, ids: BTreeSet::new() })
                })
                .collect(),
        )
    }
}

/// One sink's part of the checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkCheckpoint {
    /// How far the sink has passed.
    pub frontier: Frontier,
    /// The sink's own state, as saved with its cursor.
    #[serde(default)]
    pub sink_state: Option<serde_json::Value>,
}

/// The shared checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SharedCheckpoint {
    /// [`VERSION`].
    pub version: u32,
    /// The instance that wrote it.
    pub holder: String,
    /// When it was written, Unix milliseconds.
    pub written_unix_ms: u64,
    /// Per sink, by name.
    pub sinks: BTreeMap<String, SinkCheckpoint>,
}

impl SharedCheckpoint {
    /// The checkpoint in a variable's items, `None` if it has none; `Err` for one this
    /// version cannot read.
    pub fn from_items(items: &BTreeMap<String, String>) -> Result<Option<SharedCheckpoint>, String> {
        let Some(text) = items.get(ITEM) else { return Ok(None) };
        let checkpoint: SharedCheckpoint = serde_json::from_str(text)
            .map_err(|e| format!("the shared checkpoint is not one this relay can read: {e}"))?;
        if checkpoint.version != VERSION {
            return Err(format!(
                "the shared checkpoint has format version {} and this relay reads {VERSION}; run one relay version per group",
                checkpoint.version
            ));
        }
        Ok(Some(checkpoint))
    }

    /// The variable items holding the checkpoint, within Nomad's size limit.
    pub fn to_items(&self) -> BTreeMap<String, String> {
        let mut text = serde_json::to_string(self).unwrap_or_default();
        if text.len() > MAX_BYTES {
            let mut smaller = self.clone();
            for sink in smaller.sinks.values_mut() {
                sink.frontier = sink.frontier.without_ids();
            }
            text = serde_json::to_string(&smaller).unwrap_or_default();
        }
        BTreeMap::from([(ITEM.to_owned(), text)])
    }
}

/// Reads the journal in `dir` from record `from` up to `head`, for as long as `keep_going`
/// says of each record; returns the sequence of the first record it stopped at (or `head + 1`)
/// (blocking).
fn scan(
    dir: &Path,
    from: u64,
    head: u64,
    mut keep_going: impl FnMut(&Envelope) -> bool,
) -> Result<u64, JournalError> {
    let mut reader = JournalReader::new(dir.to_owned(), from);
    let mut next = from;
    while next <= head {
        match reader.read(head, SCAN_STEP, usize::MAX)? {
            Read::Events(events) if events.is_empty() => break,
            Read::Events(events) => {
                for event in &events {
                    if !keep_going(event) {
                        return Ok(event.seq);
                    }
                    next = event.seq + 1;
                }
            }
            Read::Skipped { to, .. } | Read::Damaged { to, .. } => next = to,
        }
    }
    Ok(next.max(from))
}

/// The first record at or after `from` in the journal in `dir` that `frontier` does not pass
/// (or `head + 1`): where a sink resumes in this instance's journal (blocking). Records of
/// another source after it that the frontier passes are delivered again.
pub fn first_unpassed(dir: &Path, from: u64, head: u64, frontier: &Frontier) -> Result<u64, JournalError> {
    scan(dir, from, head, |event| frontier.passes(event))
}

/// Moves `frontier` past the records `from..to` of the journal in `dir` (blocking).
pub fn advance(dir: &Path, from: u64, to: u64, frontier: &mut Frontier) -> Result<(), JournalError> {
    if to <= from {
        return Ok(());
    }
    scan(dir, from, to - 1, |event| {
        frontier.pass(event);
        true
    })?;
    Ok(())
}

/// A sink's place as its cursor and frontier: where the leader's tracker for it stands.
#[derive(Debug, Clone)]
pub struct Tracked {
    /// The journal record the frontier is at (everything before it is passed).
    pub next_seq: u64,
    /// The frontier there.
    pub frontier: Frontier,
}

impl Tracked {
    /// Moves the tracker to `cursor` and returns the sink's checkpoint (blocking).
    pub fn follow(&mut self, dir: &Path, cursor: &Cursor) -> Result<SinkCheckpoint, JournalError> {
        if cursor.next_seq() > self.next_seq {
            advance(dir, self.next_seq, cursor.next_seq(), &mut self.frontier)?;
            self.next_seq = cursor.next_seq();
        }
        Ok(SinkCheckpoint { frontier: self.frontier.clone(), sink_state: cursor.sink_state.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nomad_relay_sink_api::EventId;

    fn event(source: &str, index: u64, occurrence: u32) -> Envelope {
        Envelope {
            source: source.into(),
            id: EventId { index, digest: 7, occurrence },
            ..Envelope::example()
        }
    }

    #[test]
    fn a_frontier_passes_lower_indexes_and_the_ids_listed_at_its_own() {
        let mut frontier = Frontier::default();
        frontier.pass(&event("a", 10, 0));
        frontier.pass(&event("a", 11, 0));
        assert!(frontier.passes(&event("a", 10, 5)));
        assert!(frontier.passes(&event("a", 11, 0)));
        assert!(!frontier.passes(&event("a", 11, 1)), "not yet passed at the same index");
        assert!(!frontier.passes(&event("a", 12, 0)));
        assert!(!frontier.passes(&event("b", 1, 0)), "another source");
        let trimmed = frontier.without_ids();
        assert!(trimmed.passes(&event("a", 10, 0)) && !trimmed.passes(&event("a", 11, 0)));
    }

    #[test]
    fn a_checkpoint_round_trips_through_variable_items_and_refuses_other_versions() {
        let mut frontier = Frontier::default();
        frontier.pass(&event("a", 10, 0));
        let checkpoint = SharedCheckpoint {
            version: VERSION,
            holder: "x".into(),
            written_unix_ms: 1,
            sinks: BTreeMap::from([("s".into(), SinkCheckpoint { frontier, sink_state: None })]),
        };
        let items = checkpoint.to_items();
        assert_eq!(SharedCheckpoint::from_items(&items), Ok(Some(checkpoint.clone())));
        assert_eq!(SharedCheckpoint::from_items(&BTreeMap::new()), Ok(None));
        let newer = SharedCheckpoint { version: 2, ..checkpoint };
        let error = SharedCheckpoint::from_items(&newer.to_items()).expect_err("version 2");
        assert!(error.contains("format version 2"), "{error}");
    }

    #[test]
    fn a_checkpoint_too_big_for_a_variable_drops_the_ids() {
        let mut frontier = Frontier::default();
        for occurrence in 0..5_000 {
            frontier.pass(&event("a", 10, occurrence));
        }
        let checkpoint = SharedCheckpoint {
            version: VERSION,
            sinks: BTreeMap::from([("s".into(), SinkCheckpoint { frontier, sink_state: None })]),
            ..SharedCheckpoint::default()
        };
        let items = checkpoint.to_items();
        assert!(items[ITEM].len() < MAX_BYTES, "{}", items[ITEM].len());
        let read = SharedCheckpoint::from_items(&items).expect("read").expect("some");
        assert_eq!(read.sinks["s"].frontier.0["a"], SourceFrontier { index: 9, ids: BTreeSet::new() });
    }
}
