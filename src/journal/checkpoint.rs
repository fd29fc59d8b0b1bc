//! A Nomad source's checkpoint, `(N, ids journaled at N)`, and the file that keeps every
//! source's checkpoint when retention removes the segments that held it.
//!
//! The checkpoint is the journal's head in Nomad's terms: the highest Index journaled from a
//! source and the ids of the events journaled with it. It is folded forward, one journaled
//! event at a time, by [`SourceCheckpoint::advance`], the one rule the source (deciding what
//! is new), the journal writer (after each write) and recovery (reading segments back) all
//! use; it never moves to a lower Index, and an attempt is a typed error, [`Backwards`].
//!
//! Each id at N is kept with the [`content`] digest of the event's bytes, so that an event
//! Nomad sends again is recognised by what it is, not only by its occurrence number: when
//! Nomad has evicted the first lines at N from its buffer, the lines it still sends are
//! numbered from 0 again and their ids can match other events' (see `source::resume`).
//!
//! Normally a checkpoint is read back from the journal's newest records. A source that has
//! been quiet (one region of several, or a Nomad with nothing happening) may, though, have
//! its last records in segments retention is about to remove; so before it removes one, the
//! journal writer saves every source's checkpoint in `sources.json` beside the segments
//! ([`save`]), and recovery reads it back ([`load`]) and merges it with what the remaining
//! segments hold ([`SourceCheckpoint::merge`]).

use super::JournalError;
use crate::state_file::{self, StateFile};
use nomad_relay_sink_api::EventId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What the journal holds of one source: its highest Index and the ids journaled at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCheckpoint {
    /// Highest Index journaled (0 before anything was).
    pub index: u64,
    /// Ids journaled at that Index, each with the [`content`] digest of its event
    /// ([`UNKNOWN_CONTENT`] where it was not kept).
    pub seen: HashMap<EventId, u64>,
}

/// The content digest of an id whose event bytes were not kept (the sources file, which the
/// journal writer saves, keeps ids only).
pub const UNKNOWN_CONTENT: u64 = 0;

/// The digest of an event's raw bytes (xxh3-64; never [`UNKNOWN_CONTENT`]).
pub fn content(raw: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(raw).max(1)
}

/// An event below the checkpoint's Index: the checkpoint does not move backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {id} is below the checkpoint at index {index}; a checkpoint never moves backwards")]
pub struct Backwards {
    /// The checkpoint's Index.
    pub index: u64,
    /// The event that would have moved it back.
    pub id: EventId,
}

impl SourceCheckpoint {
    /// The checkpoint of a source whose last journaled event is `id`, with content digest
    /// `content`.
    pub fn at(id: EventId, content: u64) -> SourceCheckpoint {
        SourceCheckpoint { index: id.index, seen: HashMap::from([(id, content)]) }
    }

    /// Whether the event `id` is already journaled at the checkpoint's Index.
    pub fn contains(&self, id: &EventId) -> bool {
        id.index == self.index && self.seen.contains_key(id)
    }

    /// Folds in the journaling of `id` (content digest `content`): a higher Index starts a
    /// new set of ids, the same Index adds to it, a lower one is refused.
    pub fn advance(&mut self, id: EventId, content: u64) -> Result<(), Backwards> {
        if id.index < self.index {
            return Err(Backwards { index: self.index, id });
        }
        if id.index > self.index {
            self.index = id.index;
            self.seen.clear();
        }
        self.seen.insert(id, content);
        Ok(())
    }

    /// Combines two accounts of the same source (a newer and an older segment, or the
    /// segments and the saved file): the higher Index wins; at the same Index, the ids of
    /// both, with a known content digest over an unknown one.
    pub fn merge(&mut self, other: SourceCheckpoint) {
        if other.index > self.index {
            *self = other;
        } else if other.index == self.index {
            for (id, content) in other.seen {
                let kept = self.seen.entry(id).or_insert(content);
                if *kept == UNKNOWN_CONTENT {
                    *kept = content;
                }
            }
        }
    }
}

/// `sources.json`: every source's checkpoint as of a journal head.
#[derive(Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    /// Journal head the checkpoints reflect: every record up to it is accounted for.
    head: u64,
    sources: BTreeMap<String, Saved>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    index: u64,
    /// `(index, digest, occurrence)` of each id journaled at `index`.
    seen: Vec<(u64, u64, u32)>,
}

impl StateFile for CheckpointFile {
    const VERSION: u32 = 1;
    const WHAT: &'static str = "sources file";
    const IF_DAMAGED: &'static str = "";
}

/// Checkpoints saved at some journal head.
#[derive(Debug, Default)]
pub struct SavedCheckpoints {
    /// The journal head they reflect.
    pub head: u64,
    /// By source name.
    pub checkpoints: HashMap<String, SourceCheckpoint>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("sources.json")
}

/// Saves `checkpoints` as of journal head `head`, atomically (blocking).
pub fn save(
    dir: &Path,
    head: u64,
    checkpoints: &HashMap<String, SourceCheckpoint>,
) -> Result<(), JournalError> {
    let sources = checkpoints
        .iter()
        .map(|(name, checkpoint)| {
            let mut seen: Vec<(u64, u64, u32)> =
                checkpoint.seen.keys().map(|id| (id.index, id.digest, id.occurrence)).collect();
            seen.sort_unstable();
            (name.clone(), Saved { index: checkpoint.index, seen })
        })
        .collect();
    let file = CheckpointFile { version: CheckpointFile::VERSION, head, sources };
    Ok(state_file::save(&path(dir), &file)?)
}

/// Loads the saved checkpoints, `None` if retention never had to save them (blocking).
pub fn load(dir: &Path) -> Result<Option<SavedCheckpoints>, JournalError> {
    let Some(file) = state_file::load::<CheckpointFile>(&path(dir))? else { return Ok(None) };
    let checkpoints = file
        .sources
        .into_iter()
        .map(|(name, saved)| {
            let seen = saved
                .seen
                .into_iter()
                .map(|(index, digest, occurrence)| (EventId { index, digest, occurrence }, UNKNOWN_CONTENT))
                .collect();
            (name, SourceCheckpoint { index: saved.index, seen })
        })
        .collect();
    Ok(Some(SavedCheckpoints { head: file.head, checkpoints }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(index: u64, digest: u64) -> EventId {
        EventId { index, digest, occurrence: 0 }
    }

    #[test]
    fn advance_moves_forward_and_refuses_to_go_back() {
        let mut checkpoint = SourceCheckpoint::default();
        checkpoint.advance(id(5, 1), 11).expect("forward");
        checkpoint.advance(id(5, 2), 12).expect("same index");
        assert_eq!(checkpoint.seen.len(), 2);
        checkpoint.advance(id(7, 3), 13).expect("forward");
        assert_eq!(checkpoint, SourceCheckpoint::at(id(7, 3), 13), "a new index starts a new set");
        assert_eq!(checkpoint.advance(id(6, 4), 14), Err(Backwards { index: 7, id: id(6, 4) }));
        assert_eq!(checkpoint, SourceCheckpoint::at(id(7, 3), 13), "a refused event changes nothing");
        assert!(checkpoint.contains(&id(7, 3)) && !checkpoint.contains(&id(6, 4)));
    }

    #[test]
    fn merge_keeps_the_higher_index_and_unites_the_same_one() {
        let mut newer = SourceCheckpoint::at(id(9, 1), 11);
        newer.merge(SourceCheckpoint::at(id(8, 2), 12));
        assert_eq!(newer, SourceCheckpoint::at(id(9, 1), 11));
        newer.merge(SourceCheckpoint::at(id(9, 3), UNKNOWN_CONTENT));
        newer.merge(SourceCheckpoint::at(id(9, 3), 13));
        newer.merge(SourceCheckpoint::at(id(9, 1), UNKNOWN_CONTENT));
        assert_eq!(newer.seen, HashMap::from([(id(9, 1), 11), (id(9, 3), 13)]), "known contents win");
        newer.merge(SourceCheckpoint::at(id(10, 4), 14));
        assert_eq!(newer, SourceCheckpoint::at(id(10, 4), 14));
    }

    #[test]
    fn saved_checkpoints_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        let mut checkpoints = HashMap::new();
        let mut eu = SourceCheckpoint::at(id(4, 1), UNKNOWN_CONTENT);
        eu.advance(id(4, 2), UNKNOWN_CONTENT).expect("same index");
        checkpoints.insert("eu".to_owned(), eu.clone());
        save(dir.path(), 77, &checkpoints).expect("save");
        let saved = load(dir.path()).expect("load").expect("saved");
        assert_eq!(saved.head, 77);
        assert_eq!(saved.checkpoints["eu"], eu);
    }
}
