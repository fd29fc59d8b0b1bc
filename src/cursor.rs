//! Sink cursors: where each sink stands in the journal, saved atomically.
//!
//! A cursor names the journal sequence of the first event the sink has not yet had
//! confirmed, plus whatever state the sink asked to keep with it (the file sink's length).
//! It only moves forward, and it is written as versioned JSON through a temporary file,
//! `fsync`, rename and a directory `fsync`, so a crash leaves either the old or the new
//! cursor, never a torn one.

use crate::journal::JournalError;
use crate::journal::writer::sync_dir;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Format version written in every cursor file.
pub const CURSOR_VERSION: u32 = 1;

/// One sink's saved position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// Format version.
    pub version: u32,
    /// The sink's name.
    pub sink: String,
    /// Journal sequence of the first event not yet delivered.
    pub next_seq: u64,
    /// Nomad index of the last event passed (for people and lag metrics).
    pub last_index: u64,
    /// The sink's own state, returned to it on start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_state: Option<serde_json::Value>,
}

/// The cursor file of `sink` under `data_dir`.
pub fn cursor_path(data_dir: &Path, sink: &str) -> PathBuf {
    data_dir.join("cursors").join(format!("{sink}.json"))
}

/// Loads a sink's cursor; `None` if it has none yet.
pub fn load(data_dir: &Path, sink: &str) -> Result<Option<Cursor>, JournalError> {
    let path = cursor_path(data_dir, sink);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let cursor: Cursor = serde_json::from_str(&text).map_err(|e| JournalError::Damaged {
        path: path.clone(),
        offset: 0,
        reason: format!("not a cursor file ({e}); restore it from a backup or remove it to re-deliver everything the journal holds"),
    })?;
    if cursor.version != CURSOR_VERSION {
        return Err(JournalError::Damaged {
            path,
            offset: 0,
            reason: format!(
                "cursor format version {} is not supported (expected {CURSOR_VERSION})",
                cursor.version
            ),
        });
    }
    Ok(Some(cursor))
}

/// Saves a cursor atomically (blocking; call from a blocking context).
pub fn save(data_dir: &Path, cursor: &Cursor) -> Result<(), JournalError> {
    let path = cursor_path(data_dir, &cursor.sink);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| data_dir.to_owned());
    let temp = dir.join(format!(".{}.json.tmp", cursor.sink));
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JournalError::Io { path, source }
    };
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let text = serde_json::to_vec(cursor).map_err(|e| io(&temp)(io::Error::other(e)))?;
    let mut file = fs::File::create(&temp).map_err(io(&temp))?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(io(&temp))?;
    fs::rename(&temp, &path).map_err(io(&path))?;
    sync_dir(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path(), "out").expect("load"), None);
        let cursor = Cursor {
            version: CURSOR_VERSION,
            sink: "out".into(),
            next_seq: 42,
            last_index: 1000,
            sink_state: Some(serde_json::json!({"offset": 123})),
        };
        save(dir.path(), &cursor).expect("save");
        assert_eq!(load(dir.path(), "out").expect("load"), Some(cursor));
    }

    #[test]
    fn damaged_cursor_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("cursors")).expect("mkdir");
        fs::write(cursor_path(dir.path(), "out"), b"{not json").expect("write");
        let error = load(dir.path(), "out").expect_err("damaged");
        assert!(error.to_string().contains("not a cursor file"), "{error}");
    }
}
