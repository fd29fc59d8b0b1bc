//! Wires the relay together for `run`: lock the data directory, recover the journal, start
//! the journal writer, the Nomad source and one worker per sink, and stop them in order when
//! asked: the source stops reading, the writer makes what it has durable, workers finish the
//! batch in hand and save their cursors.

use crate::config::{Config, WhenFull};
use crate::cursor::{self, CURSOR_VERSION, Cursor};
use crate::journal::board::CursorBoard;
use crate::journal::writer::JournalWriter;
use crate::journal::{self, JournalError};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::source::Source;
use crate::source::resume::Resume;
use crate::stats::{SinkStats, SourceStats};
use crate::worker::SinkWorker;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Bytes of received events that may wait for the journal writer.
const HANDOFF_BYTES: u32 = 64 << 20;

/// Why the relay could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The journal or a cursor.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Anything else, with the reason.
    #[error("{0}")]
    Other(String),
}

/// Holds the data directory's lock file for as long as it lives.
pub struct DataDirLock {
    _file: File,
}

/// Creates `data_dir` and takes its lock, so two relays never share one journal.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, RelayError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| RelayError::Other(format!("cannot create data_dir {}: {e}", data_dir.display())))?;
    let path = data_dir.join("LOCK");
    let file = File::create(&path)
        .map_err(|e| RelayError::Other(format!("cannot create {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(RelayError::Other(format!(
            "{} is in use by another nomad-relay process; stop it first, or give this one its own `data_dir`",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(RelayError::Other(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// The journal directory under `data_dir`.
pub fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("journal")
}

/// Runs the relay until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let listener = match &config.http {
        Some(http) => Some(crate::http::bind(http.listen).await.map_err(RelayError::Other)?),
        None => None,
    };
    let journal_dir = journal_dir(&config.data_dir);
    let dir = journal_dir.clone();
    let source_names: Vec<String> = config.nomad.iter().map(|n| n.name.clone()).collect();
    let mut recovered = tokio::task::spawn_blocking(move || journal::recover(&dir, true, &source_names))
        .await
        .map_err(|e| RelayError::Other(format!("journal recovery failed: {e}")))??;

    let mut cursors = Vec::new();
    for name in config.sinks.keys() {
        let cursor = cursor::load(&config.data_dir, name)?;
        cursors.push((name.clone(), cursor));
    }
    // A journal that is empty but whose sinks have cursors was removed by hand: continue
    // numbering after the furthest cursor so no cursor points into the future.
    let mut head = recovered.head;
    let furthest = cursors.iter().filter_map(|(_, c)| c.as_ref().map(|c| c.next_seq)).max().unwrap_or(1);
    if recovered.segments.is_empty() {
        head = head.max(furthest.saturating_sub(1));
    } else if furthest > head + 1 {
        return Err(RelayError::Other(format!(
            "a sink cursor is at journal record {furthest} but the journal in {} ends at {head}; the journal was replaced or restored from an older copy. Remove the cursors in {} to re-deliver everything it holds",
            journal_dir.display(),
            config.data_dir.join("cursors").display()
        )));
    }
    let oldest = if recovered.segments.is_empty() { head + 1 } else { recovered.oldest };
    for nomad in &config.nomad {
        match recovered.checkpoints.get(&nomad.name) {
            Some(checkpoint) => {
                info!(source = %nomad.name, index = checkpoint.index, journal_head = head, "resuming from the journal")
            }
            None => {
                info!(source = %nomad.name, start = ?nomad.start, "nothing journaled from this source yet; first start")
            }
        }
    }

    let board = Arc::new(CursorBoard::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let router = Arc::new(Router::new(config.routes.clone()));
    let mut workers = Vec::new();
    for (name, saved) in cursors {
        let sink_config = &config.sinks[&name];
        let cursor = saved.unwrap_or(Cursor {
            version: CURSOR_VERSION,
            sink: name.clone(),
            next_seq: oldest,
            last_index: 0,
            sink_state: None,
        });
        let sink = AnySink::from_config(&sink_config.kind)
            .map_err(|e| RelayError::Other(format!("sink `{name}`: {e}")))?;
        let slot =
            board.register(&name, cursor.next_seq, sink_config.common.when_full == WhenFull::DropOldest);
        workers.push((name.clone(), sink, cursor, slot));
    }
    let (writer, head_rx) = JournalWriter::open(
        &journal_dir,
        config.journal.clone(),
        (std::mem::take(&mut recovered.segments), head, recovered.checkpoints.clone()),
        board.clone(),
        stopping.clone(),
    )?;
    // Bounded in lines and bytes; the writer takes every waiting line in one write.
    let (events_tx, events_rx) = crate::source::handoff(256, HANDOFF_BYTES);
    let writer_thread = std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || writer.run(events_rx))
        .map_err(|e| RelayError::Other(format!("cannot start the journal writer: {e}")))?;

    let mut sources = Vec::new();
    let mut source_stats = Vec::new();
    for nomad in &config.nomad {
        let checkpoint = recovered.checkpoints.remove(&nomad.name);
        let stats = Arc::new(SourceStats::default());
        if let Some(checkpoint) = &checkpoint {
            // Lag is measured against the last index seen; after a restart that is at least
            // the checkpoint, before the stream has sent anything new.
            stats.last_index.store(checkpoint.index, std::sync::atomic::Ordering::Relaxed);
        }
        let resume = Resume::new(&nomad.name, checkpoint, nomad.start, nomad.gap_markers);
        source_stats.push((nomad.name.clone(), stats.clone()));
        let source = Source::new(nomad.clone(), resume, events_tx.clone(), stats)
            .map_err(|e| RelayError::Other(format!("Nomad source `{}`: {e}", nomad.name)))?;
        sources.push((nomad.name.clone(), source));
    }
    drop(events_tx);

    let tracker = TaskTracker::new();
    let failure: Arc<Mutex<Option<String>>> = Arc::default();
    let fail = {
        let failure = failure.clone();
        let shutdown = shutdown.clone();
        move |reason: String| {
            error!("{reason}; stopping");
            failure.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
            shutdown.cancel();
        }
    };
    let source_shutdown = shutdown.child_token();
    for (name, source) in sources {
        let source_shutdown = source_shutdown.clone();
        let fail = fail.clone();
        tracker.spawn(async move {
            // Spawned on its own so that a panic is seen here rather than leaving a relay
            // that looks alive but reads nothing.
            match tokio::spawn(source.run(source_shutdown.clone())).await {
                Err(e) => fail(format!("Nomad source `{name}` crashed: {e}")),
                Ok(()) if !source_shutdown.is_cancelled() => {
                    fail(format!("Nomad source `{name}` stopped: the journal writer no longer takes events"))
                }
                Ok(()) => {}
            }
        });
    }
    let worker_shutdown = CancellationToken::new();
    let mut sink_stats = Vec::new();
    for (name, sink, cursor, slot) in workers {
        let sink_config = &config.sinks[&name];
        let stats = Arc::new(SinkStats::default());
        stats.cursor.store(cursor.next_seq, std::sync::atomic::Ordering::Relaxed);
        stats.cursor_index.store(cursor.last_index, std::sync::atomic::Ordering::Relaxed);
        sink_stats.push((name.clone(), stats.clone()));
        let worker = SinkWorker {
            name: name.clone(),
            sink,
            settings: sink_config.common.clone(),
            cursor,
            data_dir: config.data_dir.clone(),
            journal_dir: journal_dir.clone(),
            router: router.clone(),
            board: board.clone(),
            slot,
            head: head_rx.clone(),
            stats,
        };
        let token = worker_shutdown.clone();
        let fail = fail.clone();
        tracker.spawn(async move {
            match tokio::spawn(worker.run(token)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => fail(format!("the worker of sink `{name}` failed: {e}")),
                Err(e) => fail(format!("the worker of sink `{name}` crashed: {e}")),
            }
        });
    }
    tracker.close();
    let http_shutdown = CancellationToken::new();
    if let Some(listener) = listener {
        let telemetry = Arc::new(crate::metrics::Telemetry {
            sources: source_stats,
            sinks: sink_stats,
            journal_dir: journal_dir.clone(),
            head: head_rx.clone(),
            stopping: stopping.clone(),
        });
        tokio::spawn(crate::http::serve(listener, telemetry, http_shutdown.clone()));
    }

    shutdown.cancelled().await;
    info!("shutting down: no longer reading from Nomad; finishing batches in flight and saving cursors");
    stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    board.wake();
    source_shutdown.cancel();
    worker_shutdown.cancel();
    let deadline = config.shutdown_timeout.0;
    if tokio::time::timeout(deadline, tracker.wait()).await.is_err() {
        warn!(
            "some sinks did not finish within shutdown_timeout ({deadline:?}); their cursors stay at the last confirmed batch, and what follows is delivered after the restart"
        );
    }
    http_shutdown.cancel();
    let joined = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        error!("the journal writer ended abnormally");
    }
    let failure = failure.lock().unwrap_or_else(PoisonError::into_inner).take();
    match failure {
        Some(reason) => Err(RelayError::Other(reason)),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}
