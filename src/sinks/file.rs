//! The file sink: one event per line, exactly as Nomad sent it, exactly once across crashes.
//!
//! Each batch is appended with one write and one `fsync` before it is reported delivered.
//! The file's length after that write is the sink's checkpoint state, saved with the relay's
//! cursor. On start the file is cut back to that length: lines written after the last saved
//! cursor are removed, and the relay sends those events again, so no line is ever repeated
//! or lost. If the file is shorter than the checkpoint (someone rotated or truncated it), the
//! sink appends to what is there and says so.

use nomad_relay_sink_api::{Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind};
use serde::Deserialize;
use serde_json::json;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use tracing::{info, warn};

/// `type = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The NDJSON file to append to (created if missing; its directory must exist).
    pub path: PathBuf,
}

/// The file sink.
pub struct FileSink {
    path: PathBuf,
    file: Option<Arc<File>>,
    /// Length of the file after the last delivered batch.
    length: u64,
    /// The lines of a batch, kept from batch to batch so its memory is not allocated anew.
    buffer: Vec<u8>,
}

impl FileSink {
    /// A sink writing to `path` (opened by [`Sink::open`]).
    pub fn new(path: PathBuf) -> Self {
        FileSink { path, file: None, length: 0, buffer: Vec::new() }
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
}

impl Sink for FileSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::ExactlyOnce
    }

    async fn open(&mut self, saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        let checkpoint = saved_state.as_ref().and_then(|state| state.get("length")).and_then(|v| v.as_u64());
        let path = self.path.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64, u64)> {
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let found = file.metadata()?.len();
            let length = match checkpoint {
                Some(checkpoint) if found > checkpoint => {
                    file.set_len(checkpoint)?;
                    file.sync_all()?;
                    checkpoint
                }
                _ => found,
            };
            Ok((file, found, length))
        })
        .await
        .map_err(|e| SinkError::with_source(SinkErrorKind::Other, "file sink task failed", e))?;
        let (file, found, length) = opened.map_err(|e| self.io_error("open", e))?;
        match checkpoint {
            Some(checkpoint) if found > checkpoint => info!(
                path = %self.path.display(),
                "file sink: removed {} bytes written after the last checkpoint; those events are sent again",
                found - checkpoint
            ),
            Some(checkpoint) if found < checkpoint => warn!(
                path = %self.path.display(),
                "file sink: the file is shorter ({found} bytes) than at the last checkpoint ({checkpoint} bytes); it was truncated or rotated, appending to it as it is"
            ),
            _ => {}
        }
        self.file = Some(Arc::new(file));
        self.length = length;
        Ok(())
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let retry_all = |error: SinkError| Outcome::retry_all(batch.len(), &error);
        if self.file.is_none()
            && let Err(error) = self.open(Some(json!({ "length": self.length }))).await
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
        Some(json!({ "length": self.length }))
    }
}
