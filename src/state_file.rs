//! Small state files written whole and atomically: versioned JSON written to a temporary
//! file, `fsync`ed, renamed over the old one, and the directory `fsync`ed, so a crash leaves
//! the old file or the new one, never a torn one. The sink cursors and the journal's saved
//! source checkpoints are such files.
//!
//! A file carries a `version` field; a file of another version is refused with an error that
//! says so, before the rest of it is read.

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A kind of state file.
pub trait StateFile: Serialize + DeserializeOwned {
    /// The version this build writes and reads.
    const VERSION: u32;
    /// What the file is, for messages (`cursor file`).
    const WHAT: &'static str;
    /// What to do about a damaged file, appended to the error (may be empty).
    const IF_DAMAGED: &'static str;
}

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is there but is not what this build writes.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StateFileError + '_ {
    move |source| StateFileError::Io { path: path.to_owned(), source }
}

/// Writes `value` to `path` atomically, creating its directory if needed (blocking).
pub fn save<T: StateFile>(path: &Path, value: &T) -> Result<(), StateFileError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let temp = dir.join(format!(".{name}.tmp"));
    create_dir_durably(dir)?;
    let text = serde_json::to_vec(value).map_err(|e| io_error(&temp)(io::Error::other(e)))?;
    let mut file = crate::private::create_file(&temp, crate::private::FILE_MODE).map_err(io_error(&temp))?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(io_error(&temp))?;
    fs::rename(&temp, path).map_err(io_error(path))?;
    sync_dir(dir)
}

/// Reads the file at `path`; `None` when there is none (blocking).
pub fn load<T: StateFile>(path: &Path) -> Result<Option<T>, StateFileError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let damaged = |reason: String| StateFileError::Damaged { path: path.to_owned(), reason };
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u32,
    }
    let version = serde_json::from_slice::<Versioned>(&text)
        .map_err(|e| damaged(format!("not a {} ({e}){}", T::WHAT, T::IF_DAMAGED)))?
        .version;
    if version != T::VERSION {
        return Err(damaged(format!(
            "{} format version {version} is not supported (expected {})",
            T::WHAT,
            T::VERSION
        )));
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| damaged(format!("not a {} ({e}){}", T::WHAT, T::IF_DAMAGED)))
}

/// Creates `dir` and any missing parents, owner-only ([`crate::private`]), each made durable
/// in its own parent (a directory created but not yet in its parent's entries on disk can
/// vanish in a power loss, with the files written in it), blocking.
pub fn create_dir_durably(dir: &Path) -> Result<(), StateFileError> {
    let mut missing = Vec::new();
    let mut next = Some(dir);
    while let Some(path) = next.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        next = path.parent();
    }
    for path in missing.into_iter().rev() {
        match crate::private::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(path)(e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Makes a directory's entries (new or renamed files) durable (blocking).
pub fn sync_dir(dir: &Path) -> Result<(), StateFileError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Example {
        version: u32,
        value: String,
    }

    impl StateFile for Example {
        const VERSION: u32 = 2;
        const WHAT: &'static str = "sample file";
        const IF_DAMAGED: &'static str = "; remove it";
    }

    #[test]
    fn round_trip_and_nothing_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deep/example.json");
        assert!(load::<Example>(&path).expect("load").is_none());
        let example = Example { version: 2, value: "x".into() };
        save(&path, &example).expect("save");
        assert_eq!(load::<Example>(&path).expect("load"), Some(example));
        let names: Vec<_> =
            fs::read_dir(dir.path().join("deep")).expect("dir").map(|e| e.expect("e").file_name()).collect();
        assert_eq!(names, ["example.json"], "no temporary file remains");
    }

    #[test]
    fn missing_directories_are_created_from_the_top() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        create_dir_durably(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durably(&deep).expect("already there is fine");
    }

    #[test]
    fn another_version_or_garbage_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("example.json");
        fs::write(&path, br#"{"version":3,"other":true}"#).expect("write");
        let error = load::<Example>(&path).expect_err("version").to_string();
        assert!(error.contains("sample file format version 3 is not supported (expected 2)"), "{error}");
        fs::write(&path, b"{not json").expect("write");
        let error = load::<Example>(&path).expect_err("garbage").to_string();
        assert!(error.contains("not a sample file") && error.ends_with("; remove it"), "{error}");
    }
}
