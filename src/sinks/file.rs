//! The file sink: one event per line, exactly as Nomad sent it, exactly once across crashes.
//!
//! Each batch is appended with one write and one `fsync` before it is reported delivered.
//! The file's identity (device and inode) and its length after that write are the sink's
//! checkpoint state, saved with the relay's cursor. On start, the same file is cut back to
//! that length: lines written after the last saved cursor are removed, and the relay sends
//! those events again, so no line is ever repeated or lost.
//!
//! Another file at `path` (the path was pointed elsewhere, or the file was rotated by a
//! rename) is never cut: the sink appends to it and says so. Before each batch the sink checks
//! that `path` is still the file it writes to: after a rename rotation it opens the new file,
//! and a file truncated under it (copy-truncate rotation) is taken at its new length. What a
//! rotation can cost is in the README's guarantee table: a batch delivered after the last
//! saved cursor, then a crash, appears in the rotated file and again in the new one.

use nomad_relay_sink_api::{Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind};
use serde::Deserialize;
use serde_json::json;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// `type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The NDJSON file to append to (created if missing; its directory must exist).
    pub path: PathBuf,
    /// The mode a missing file is created with, in octal (`"0640"`); owner-only (`"0600"`)
    /// by default. An existing file keeps its mode.
    #[serde(default)]
    pub mode: FileMode,
}

/// A file mode written in octal, as `chmod` takes it (`"0640"`, `"640"`): permission bits only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Default for FileMode {
    fn default() -> Self {
        FileMode(crate::private::FILE_MODE)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) if mode <= 0o777 => Ok(FileMode(mode)),
            _ => Err(serde::de::Error::custom(format!(
                "`{text}` is not a file mode; write permission bits in octal, such as \"0600\" (owner only) or \"0640\""
            ))),
        }
    }
}

/// Which file: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    device: u64,
    inode: u64,
}

impl Identity {
    fn of(metadata: &std::fs::Metadata) -> Identity {
        Identity { device: metadata.dev(), inode: metadata.ino() }
    }
}

/// The state saved with the cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpoint {
    length: u64,
    /// `None` in state saved before the identity was kept.
    identity: Option<Identity>,
}

impl Checkpoint {
    fn read(state: &serde_json::Value) -> Option<Checkpoint> {
        let length = state.get("length")?.as_u64()?;
        let identity =
            match (state.get("device").and_then(|v| v.as_u64()), state.get("inode").and_then(|v| v.as_u64()))
            {
                (Some(device), Some(inode)) => Some(Identity { device, inode }),
                _ => None,
            };
        Some(Checkpoint { length, identity })
    }
}

/// What opening the file found.
struct Opened {
    file: File,
    identity: Identity,
    found: u64,
    length: u64,
}

/// The file sink.
pub struct FileSink {
    path: PathBuf,
    /// The mode the file is created with.
    mode: u32,
    file: Option<Arc<File>>,
    /// The open file's identity.
    identity: Option<Identity>,
    /// Length of the file after the last delivered batch.
    length: u64,
    /// The lines of a batch, kept from batch to batch so its memory is not allocated anew.
    buffer: Vec<u8>,
}

impl FileSink {
    /// A sink writing to `path` (opened by [`Sink::open`]), creating it with mode `mode`.
    pub fn new(path: PathBuf, mode: FileMode) -> Self {
        FileSink { path, mode: mode.0, file: None, identity: None, length: 0, buffer: Vec::new() }
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> SinkError {
        let hint = match error.kind() {
            std::io::ErrorKind::NotFound => "; create its directory",
            std::io::ErrorKind::PermissionDenied => "; give the relay write access",
            std::io::ErrorKind::StorageFull => "; free disk space",
            _ => "",
        };
        SinkError::with_source(
            SinkErrorKind::Io,
            format!("cannot {what} {}{hint}", self.path.display()),
            error,
        )
    }

    /// Opens (or creates) the file at `path`; cuts it back to the checkpoint's length only
    /// when it is the file the checkpoint was taken of.
    async fn open_file(&mut self, checkpoint: Option<Checkpoint>) -> Result<(), SinkError> {
        let (path, mode) = (self.path.clone(), self.mode);
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<Opened> {
            let file = crate::private::open_append(&path, mode)?;
            let metadata = file.metadata()?;
            let (identity, found) = (Identity::of(&metadata), metadata.len());
            let same = checkpoint.is_some_and(|c| c.identity.is_none_or(|saved| saved == identity));
            let length = match checkpoint {
                Some(checkpoint) if same && found > checkpoint.length => {
                    file.set_len(checkpoint.length)?;
                    file.sync_all()?;
                    checkpoint.length
                }
                _ => found,
            };
            Ok(Opened { file, identity, found, length })
        })
        .await
        .map_err(|e| SinkError::with_source(SinkErrorKind::Other, "file sink task failed", e))?;
        let Opened { file, identity, found, length } = opened.map_err(|e| self.io_error("open", e))?;
        let path = self.path.display();
        match checkpoint {
            Some(checkpoint) if checkpoint.identity.is_some_and(|saved| saved != identity) => warn!(
                %path,
                "file sink: this is not the file the last checkpoint was taken of (it was rotated, replaced, or `path` now names another file); appending to it and cutting nothing back. A batch written after the last checkpoint may be in the old file and come again here"
            ),
            Some(checkpoint) if found > checkpoint.length => info!(
                %path,
                "file sink: removed {} bytes written after the last checkpoint; those events are sent again",
                found - checkpoint.length
            ),
            Some(checkpoint) if found < checkpoint.length => warn!(
                %path,
                "file sink: the file is shorter ({found} bytes) than at the last checkpoint ({} bytes); it was truncated, appending to it as it is",
                checkpoint.length
            ),
            _ => {}
        }
        self.file = Some(Arc::new(file));
        self.identity = Some(identity);
        self.length = length;
        Ok(())
    }

    /// Before a batch: the file at `path` must still be the one open. A new file there (a
    /// rename rotation) is to be opened (true); a file shorter than what was written
    /// (copy-truncate) is taken at its length.
    async fn follow_rotation(&mut self) -> bool {
        let path = self.path.clone();
        let now = tokio::task::spawn_blocking(move || std::fs::metadata(&path).ok()).await.ok().flatten();
        match now {
            Some(metadata) if Some(Identity::of(&metadata)) != self.identity => {
                info!(path = %self.path.display(), "file sink: the file was rotated (a new file is at the path); writing to the new one");
                self.file = None;
                true
            }
            None => {
                info!(path = %self.path.display(), "file sink: the file was moved away; creating it again");
                self.file = None;
                true
            }
            Some(metadata) if metadata.len() < self.length => {
                info!(path = %self.path.display(), "file sink: the file was truncated (copy-truncate rotation); appending from its new end");
                self.length = metadata.len();
                false
            }
            Some(_) => false,
        }
    }
}

impl Sink for FileSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        self.open_file(saved_state.as_ref().and_then(Checkpoint::read)).await
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let retry_all = |error: SinkError| Outcome::retry_all(batch.len(), &error);
        // Reopened after a failed write, the same file is cut back to what was delivered (a
        // partial write is never left); a file rotated in its place is appended to.
        let mut reopen = Some(Checkpoint { length: self.length, identity: self.identity });
        if self.file.is_some() && self.follow_rotation().await {
            reopen = None;
        }
        if self.file.is_none()
            && let Err(error) = self.open_file(reopen).await
        {
            return retry_all(error);
        }
        let Some(file) = self.file.clone() else {
            return retry_all(SinkError::new(SinkErrorKind::Io, "file not open"));
        };
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.clear();
        for event in batch {
            buffer.extend_from_slice(&event.raw);
            buffer.push(b'\n');
        }
        let length = self.length;
        let written = buffer.len() as u64;
        let result = tokio::task::spawn_blocking(move || -> (std::io::Result<()>, Vec<u8>) {
            let result = (&*file).write_all(&buffer).and_then(|()| file.sync_data());
            if result.is_err() {
                // Leave no partial batch behind: the whole batch is sent again.
                let _ = file.set_len(length);
            }
            (result, buffer)
        })
        .await
        .map(|(result, buffer)| {
            self.buffer = buffer;
            result
        });
        match result {
            Ok(Ok(())) => {
                self.length += written;
                batch.iter().map(|_| Outcome::Delivered).collect()
            }
            Ok(Err(e)) => {
                let error = self.io_error("write to", e);
                self.file = None;
                retry_all(error)
            }
            Err(e) => retry_all(SinkError::with_source(SinkErrorKind::Other, "file sink task failed", e)),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    fn checkpoint_state(&self) -> Option<serde_json::Value> {
        Some(match self.identity {
            Some(Identity { device, inode }) => {
                json!({ "length": self.length, "device": device, "inode": inode })
            }
            None => json!({ "length": self.length }),
        })
    }
}
