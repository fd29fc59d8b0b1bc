//! The stdout sink: one event per line on standard output, exactly as Nomad sent it. Logs go
//! to standard error, so stdout carries events only and can be piped. Events after the last
//! saved cursor are printed again after a crash: at-least-once.

use nomad_relay_sink_api::{Envelope, Guarantee, Outcome, Sink, SinkError, SinkErrorKind};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// `type = "stdout"`: no settings of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

/// The stdout sink.
pub struct StdoutSink {
    out: tokio::io::Stdout,
}

impl StdoutSink {
    /// A sink writing to the process's standard output.
    pub fn new() -> Self {
        StdoutSink { out: tokio::io::stdout() }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for StdoutSink {
    fn guarantee(&self) -> Guarantee {
        Guarantee::AtLeastOnce
    }

    async fn open(&mut self, _saved_state: Option<serde_json::Value>) -> Result<(), SinkError> {
        Ok(())
    }

    async fn send(&mut self, batch: &[Envelope]) -> Vec<Outcome> {
        let mut buffer = Vec::with_capacity(batch.iter().map(|e| e.raw.len() + 1).sum());
        for event in batch {
            buffer.extend_from_slice(&event.raw);
            buffer.push(b'\n');
        }
        let result = async {
            self.out.write_all(&buffer).await?;
            self.out.flush().await
        }
        .await;
        match result {
            Ok(()) => batch.iter().map(|_| Outcome::Delivered).collect(),
            Err(e) => {
                let message = format!("cannot write to standard output: {e}");
                batch
                    .iter()
                    .map(|_| Outcome::Retry(SinkError::new(SinkErrorKind::Io, message.clone())))
                    .collect()
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out
            .flush()
            .await
            .map_err(|e| SinkError::with_source(SinkErrorKind::Io, "cannot flush standard output", e))
    }
}
