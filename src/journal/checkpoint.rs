//! A Nomad source's checkpoint, `(N, ids journaled at N)`, and the file that keeps every
//! source's checkpoint when retention removes the segments that held it.
//!
//! The checkpoint is the journal's head in Nomad's terms: the highest Index journaled from a
//! source and the ids of the events journaled with it. It is folded forward, one journaled
//! event at a time, by [`SourceCheckpoint::advance`], the one rule the source (deciding what
//! is new), the journal writer (after each write) and recovery (reading segments back) all
//! use; it never moves to a lower Index, and an attempt is a typed error, [`Backwards`].
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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What the journal holds of one source: its highest Index and the ids journaled at it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCheckpoint {
    /// Highest Index journaled (0 before anything was).
    pub index: u64,
    /// Ids journaled at that Index.
    pub seen: HashSet<EventId>,
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
    /// The checkpoint of a source whose last journaled event is `id`.
    pub fn at(id: EventId) -> SourceCheckpoint {
        SourceCheckpoint { index: id.index, seen: HashSet::from([id]) }
    }

    /// Whether the event `id` is already journaled at the checkpoint's Index.
    pub fn contains(&self, id: &EventId) -> bool {
        id.index == self.index && self.seen.contains(id)
    }

    /// Folds in the journaling of `id`: a higher Index starts a new set of ids, the same
    /// Index adds to it, a lower one is refused.
    pub fn advance(&mut self, id: EventId) -> Result<(), Backwards> {
        if id.index < self.index {
            return Err(Backwards { index: self.index, id });
        }
        if id.index > self.index {
            self.index = id.index;
            self.seen.clear();
        }
        self.seen.insert(id);
        Ok(())
    }

    /// Combines two accounts of the same source (a newer and an older segment, or the
    /// segments and the saved file): the higher Index wins; at the same Index, the ids of
    /// both.
    pub fn merge(&mut self, other: SourceCheckpoint) {
        if other.index > self.index {
            *self = other;
        } else if other.index == self.index {
            self.seen.extend(other.seen);
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
                checkpoint.seen.iter().map(|id| (id.index, id.digest, id.occurrence)).collect();
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
                .map(|(index, digest, occurrence)| EventId { index, digest, occurrence })
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
        checkpoint.advance(id(5, 1)).expect("forward");
        checkpoint.advance(id(5, 2)).expect("same index");
        assert_eq!(checkpoint.seen.len(), 2);
        checkpoint.advance(id(7, 3)).expect("forward");
        assert_eq!(checkpoint, SourceCheckpoint::at(id(7, 3)), "a new index starts a new set");
        assert_eq!(checkpoint.advance(id(6, 4)), Err(Backwards { index: 7, id: id(6, 4) }));
        assert_eq!(checkpoint, SourceCheckpoint::at(id(7, 3)), "a refused event changes nothing");
        assert!(checkpoint.contains(&id(7, 3)) && !checkpoint.contains(&id(6, 4)));
    }

    #[test]
    fn merge_keeps_the_higher_index_and_unites_the_same_one() {
        let mut newer = SourceCheckpoint::at(id(9, 1));
        newer.merge(SourceCheckpoint::at(id(8, 2)));
        assert_eq!(newer, SourceCheckpoint::at(id(9, 1)));
        newer.merge(SourceCheckpoint::at(id(9, 3)));
        assert_eq!(newer.seen, HashSet::from([id(9, 1), id(9, 3)]));
        newer.merge(SourceCheckpoint::at(id(10, 4)));
        assert_eq!(newer, SourceCheckpoint::at(id(10, 4)));
    }

    #[test]
    fn saved_checkpoints_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(load(dir.path()).expect("load").is_none());
        let mut checkpoints = HashMap::new();
        let mut eu = SourceCheckpoint::at(id(4, 1));
        eu.advance(id(4, 2)).expect("same index");
        checkpoints.insert("eu".to_owned(), eu.clone());
        save(dir.path(), 77, &checkpoints).expect("save");
        let saved = load(dir.path()).expect("load").expect("saved");
        assert_eq!(saved.head, 77);
        assert_eq!(saved.checkpoints["eu"], eu);
    }
}
