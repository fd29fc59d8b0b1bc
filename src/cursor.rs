//! Sink cursors: where each sink stands in the journal, saved atomically.
//!
//! A cursor names the journal record of the first event the sink has not yet had confirmed
//! (its [`Position`]), plus whatever state the sink asked to keep with it (the file sink's
//! length). It only moves forward, through [`Cursor::pass_batch`] and [`Cursor::advance_to`],
//! which refuse to go back; and it is saved as a [`state_file`](crate::state_file), so a
//! crash leaves either the old or the new cursor, never a torn one.

use crate::journal::JournalError;
use crate::state_file::{self, StateFile};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Format version written in every cursor file.
pub const CURSOR_VERSION: u32 = 1;

/// Where a sink stands in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Journal sequence of the first event not yet delivered.
    pub next_seq: u64,
    /// Nomad index of the last event passed (for people and lag metrics; with several
    /// sources it is the index of whichever source's event came last).
    pub last_index: u64,
}

/// One sink's saved position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version.
    pub version: u32,
    /// The sink's name.
    pub sink: String,
    /// Where the sink stands.
    #[serde(flatten)]
    pub position: Position,
    /// The sink's own state, returned to it on start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_state: Option<serde_json::Value>,
}

impl StateFile for Cursor {
    const VERSION: u32 = CURSOR_VERSION;
    const WHAT: &'static str = "cursor file";
    const IF_DAMAGED: &'static str =
        "; restore it from a backup or remove it to re-deliver everything the journal holds";
}

/// A cursor asked to move back: a bug in the worker, refused rather than re-delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the cursor would move back from journal record {from} to {to} (a bug in the relay)")]
pub struct Backwards {
    /// Where it stands.
    pub from: u64,
    /// Where it was asked to go.
    pub to: u64,
}

impl Cursor {
    /// A new sink's cursor, at journal record `next_seq`.
    pub fn new(sink: &str, next_seq: u64) -> Cursor {
        Cursor {
            version: CURSOR_VERSION,
            sink: sink.to_owned(),
            position: Position { next_seq, last_index: 0 },
            sink_state: None,
        }
    }

    /// Journal sequence of the first event not yet delivered.
    pub fn next_seq(&self) -> u64 {
        self.position.next_seq
    }

    /// Moves past a whole batch that ended at journal record `last_seq`, Nomad index
    /// `last_index`.
    pub fn pass_batch(&mut self, last_seq: u64, last_index: u64) -> Result<(), Backwards> {
        self.advance_to(last_seq + 1)?;
        self.position.last_index = last_index;
        Ok(())
    }

    /// Moves to journal record `next_seq` (part-way through a batch, or past a range the
    /// journal dropped), keeping the last index.
    pub fn advance_to(&mut self, next_seq: u64) -> Result<(), Backwards> {
        if next_seq < self.position.next_seq {
            return Err(Backwards { from: self.position.next_seq, to: next_seq });
        }
        self.position.next_seq = next_seq;
        Ok(())
    }
}

/// The cursor file of `sink` under `data_dir`.
pub fn cursor_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("cursors").join(format!("{sink}.json"))
}

/// Loads a sink's cursor; `None` if it has none yet (blocking).
pub fn load(data_dir: &Path, sink: &str) -> Result<Option<Cursor>, JournalError> {
    Ok(state_file::load(&cursor_path(data_dir, sink))?)
}

/// Saves a cursor atomically (blocking).
pub fn save(data_dir: &Path, cursor: &Cursor) -> Result<(), JournalError> {
    Ok(state_file::save(&cursor_path(data_dir, &cursor.sink), cursor)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn save_and_load_round_trip_in_the_file_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path(), "out").expect("load"), None);
        let cursor = Cursor {
            sink_state: Some(serde_json::json!({"offset": 123})),
            position: Position { next_seq: 42, last_index: 1000 },
            ..Cursor::new("out", 1)
        };
        save(dir.path(), &cursor).expect("save");
        assert_eq!(load(dir.path(), "out").expect("load"), Some(cursor));
        let text = fs::read_to_string(cursor_path(dir.path(), "out")).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(json["next_seq"], 42, "{text}");
        assert_eq!(json["last_index"], 1000, "{text}");
    }

    #[test]
    fn damaged_cursor_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("cursors")).expect("mkdir");
        fs::write(cursor_path(dir.path(), "out"), b"{not json").expect("write");
        let error = load(dir.path(), "out").expect_err("damaged");
        assert!(error.to_string().contains("not a cursor file"), "{error}");
    }

    #[test]
    fn a_cursor_moves_only_forward() {
        let mut cursor = Cursor::new("out", 10);
        cursor.pass_batch(19, 500).expect("forward");
        assert_eq!(cursor.position, Position { next_seq: 20, last_index: 500 });
        cursor.advance_to(20).expect("staying is fine");
        assert_eq!(cursor.advance_to(15), Err(Backwards { from: 20, to: 15 }));
        assert_eq!(cursor.pass_batch(3, 9), Err(Backwards { from: 20, to: 4 }));
        assert_eq!(cursor.position, Position { next_seq: 20, last_index: 500 }, "unchanged");
    }
}
