//! The sources file (`sources.json` beside the segments): every Nomad source's checkpoint,
//! as of a given journal head.
//!
//! Normally a source's checkpoint is read from the journal's newest records. Retention,
//! though, removes whole segments once every sink has passed them, and a source that has been
//! quiet (one region of several, or a Nomad with nothing happening) may have its last records
//! in exactly those segments. So before it removes a segment, the journal writer saves every
//! source's checkpoint here, atomically; recovery reads it and then only the records written
//! after it, so a checkpoint never disappears with the segment that held it.

use super::{JournalError, io_error, writer::sync_dir};
use crate::source::resume::Checkpoint;
use nomad_relay_sink_api::EventId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct SourcesFile {
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

/// Checkpoints saved at some journal head.
#[derive(Debug, Default)]
pub struct SavedCheckpoints {
    /// The journal head they reflect.
    pub head: u64,
    /// By source name.
    pub checkpoints: HashMap<String, Checkpoint>,
}

fn path(dir: &Path) -> PathBuf {
    dir.join("sources.json")
}

/// Saves `checkpoints` as of journal head `head` (temp file, fsync, rename, directory fsync).
pub fn save(dir: &Path, head: u64, checkpoints: &HashMap<String, Checkpoint>) -> Result<(), JournalError> {
    let file = SourcesFile {
        version: VERSION,
        head,
        sources: checkpoints
            .iter()
            .map(|(name, checkpoint)| {
                let mut seen: Vec<(u64, u64, u32)> =
                    checkpoint.seen.iter().map(|id| (id.index, id.digest, id.occurrence)).collect();
                seen.sort_unstable();
                (name.clone(), Saved { index: checkpoint.index, seen })
            })
            .collect(),
    };
    let target = path(dir);
    let temp = dir.join(".sources.json.tmp");
    let text = serde_json::to_vec(&file).map_err(|e| io_error(&temp)(std::io::Error::other(e)))?;
    let mut out = fs::File::create(&temp).map_err(io_error(&temp))?;
    out.write_all(&text).and_then(|()| out.sync_all()).map_err(io_error(&temp))?;
    fs::rename(&temp, &target).map_err(io_error(&target))?;
    sync_dir(dir)
}

/// Loads the saved checkpoints, `None` if retention never had to save them.
pub fn load(dir: &Path) -> Result<Option<SavedCheckpoints>, JournalError> {
    let target = path(dir);
    let text = match fs::read(&target) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&target)(e)),
    };
    let file: SourcesFile = serde_json::from_slice(&text).map_err(|e| JournalError::Damaged {
        path: target.clone(),
        offset: 0,
        reason: format!("not a sources file ({e})"),
    })?;
    if file.version != VERSION {
        return Err(JournalError::Damaged {
            path: target,
            offset: 0,
            reason: format!("sources file version {} is not supported (expected {VERSION})", file.version),
        });
    }
    let checkpoints = file
        .sources
        .into_iter()
        .map(|(name, saved)| {
            let seen = saved
                .seen
                .into_iter()
                .map(|(index, digest, occurrence)| EventId { index, digest, occurrence })
                .collect();
            (name, Checkpoint { index: saved.index, seen })
        })
        .collect();
    Ok(Some(SavedCheckpoints { head: file.head, checkpoints }))
}
