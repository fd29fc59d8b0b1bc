//! Wires the relay together for `run`: lock the data directory, recover the journal, start
//! the journal writer, the Nomad sources and one worker per sink, and stop them in order when
//! asked: the sources stop reading, the writer makes what it has durable, workers finish the
//! batch in hand and save their cursors.

use crate::config::{Config, WhenFull};
use crate::cursor::{self, Cursor};
use crate::journal::board::CursorBoard;
use crate::journal::handoff::{EventSender, handoff};
use crate::journal::names::Configured;
use crate::journal::writer::JournalWriter;
use crate::journal::{self, JournalError, Recovered, Recovery, SourceName};
use crate::routing::Router;
use crate::sinks::AnySink;
use crate::source::resume::Resume;
use crate::source::{Source, catch_up};
use crate::stats::{SinkStats, SourceStats};
use crate::worker::SinkWorker;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

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
    crate::state_file::create_dir_durably(data_dir)
        .map_err(|e| RelayError::Other(format!("cannot create data_dir: {e}")))?;
    if let Err(e) = crate::private::restrict_dir(data_dir) {
        warn!("cannot make {} owner-only ({e}); other local users may read the journal", data_dir.display());
    }
    let path = data_dir.join("LOCK");
    let file = crate::private::create_file(&path, crate::private::FILE_MODE)
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

/// Runs the relay until `shutdown` is cancelled (or a part of it fails, which cancels it).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let _lock = lock_data_dir(&config.data_dir)?;
    let listener = match &config.http {
        Some(http) => Some(crate::http::bind(http.listen).await.map_err(RelayError::Other)?),
        None => None,
    };
    let running = Running::start(&config, listener, &shutdown).await?;
    shutdown.cancelled().await;
    running.stop(config.shutdown_timeout.0).await
}

/// The first failure of a part of the relay; recording it stops the relay.
#[derive(Clone)]
struct Failure {
    reason: Arc<Mutex<Option<String>>>,
    shutdown: CancellationToken,
}

impl Failure {
    fn fail(&self, reason: String) {
        error!("{reason}; stopping");
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(reason);
        self.shutdown.cancel();
    }

    fn take(&self) -> Option<String> {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A sink ready to run: its worker's parts.
struct Prepared {
    name: String,
    sink: AnySink,
    cursor: Cursor,
    slot: crate::journal::board::Slot,
}

/// The relay, running.
struct Running {
    tracker: TaskTracker,
    failure: Failure,
    stopping: Arc<AtomicBool>,
    board: Arc<CursorBoard>,
    source_shutdown: CancellationToken,
    worker_shutdown: CancellationToken,
    http_shutdown: CancellationToken,
    writer: std::thread::JoinHandle<()>,
}

impl Running {
    /// Recovers the journal and starts the writer, the sources, the workers and the endpoint.
    async fn start(
        config: &Config,
        listener: Option<TcpListener>,
        shutdown: &CancellationToken,
    ) -> Result<Running, RelayError> {
        let journal_dir = journal_dir(&config.data_dir);
        let mut recovered = recover(config, &journal_dir).await?;
        let cursors = load_cursors(config)?;
        let head = check_cursors(config, &journal_dir, &recovered, &cursors)?;
        log_resume(config, &recovered, head);
        let board = Arc::new(CursorBoard::default());
        let oldest = if recovered.segments.is_empty() { head + 1 } else { recovered.oldest };
        let prepared = prepare_sinks(config, cursors, oldest, &board)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let (writer, head_rx) = JournalWriter::open(
            &journal_dir,
            config.journal.clone(),
            (std::mem::take(&mut recovered.segments), head, recovered.checkpoints.clone()),
            board.clone(),
            stopping.clone(),
        )?;
        let journal_stats = writer.stats();
        // Bounded in lines and bytes; the writer takes every waiting line in one write.
        let buffer_bytes = u32::try_from(config.journal.buffer_bytes.0).unwrap_or(u32::MAX);
        let (events_tx, events_rx) = handoff(256, buffer_bytes);
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer.run(events_rx))
            .map_err(|e| RelayError::Other(format!("cannot start the journal writer: {e}")))?;
        let failure = Failure { reason: Arc::default(), shutdown: shutdown.clone() };
        let mut running = Running {
            tracker: TaskTracker::new(),
            failure,
            stopping,
            board,
            source_shutdown: shutdown.child_token(),
            worker_shutdown: CancellationToken::new(),
            http_shutdown: CancellationToken::new(),
            writer,
        };
        let source_stats = running.start_sources(config, &mut recovered, events_tx)?;
        let (sink_stats, ha_stats) = match &config.ha {
            None => (running.start_workers(config, prepared, &journal_dir, &head_rx), None),
            Some(ha) => {
                let (sink_stats, ha_stats) =
                    running.start_roles(config, ha, prepared, &journal_dir, &head_rx)?;
                (sink_stats, Some(ha_stats))
            }
        };
        running.tracker.close();
        if let (Some(listener), Some(http)) = (listener, &config.http) {
            let telemetry = Arc::new(crate::metrics::Telemetry {
                sources: source_stats,
                sinks: sink_stats,
                journal_dir,
                journal: journal_stats,
                head: head_rx,
                stopping: running.stopping.clone(),
                http: Arc::default(),
                ha: ha_stats,
            });
            tokio::spawn(crate::http::serve(
                listener,
                telemetry,
                http.max_connections,
                running.http_shutdown.clone(),
            ));
        }
        Ok(running)
    }

    /// Starts one source per `[nomad]` table, each resuming from its checkpoint; none starts
    /// unless every one could be built.
    fn start_sources(
        &mut self,
        config: &Config,
        recovered: &mut Recovered,
        events: EventSender,
    ) -> Result<Vec<(String, Arc<SourceStats>)>, RelayError> {
        let mut sources = Vec::new();
        for nomad in &config.nomad {
            let checkpoint = recovered.checkpoints.remove(&nomad.name);
            let stats = Arc::new(SourceStats::default());
            if let Some(checkpoint) = &checkpoint {
                // Lag is measured against the last index seen; after a restart that is at
                // least the checkpoint, before the stream has sent anything new.
                stats.last_index.store(checkpoint.index, Ordering::Relaxed);
            }
            let scope = recovered.scopes.get(&nomad.name).cloned().unwrap_or_else(|| nomad.name.clone());
            let name = SourceName { name: nomad.name.clone(), scope };
            let catch_up_file = catch_up::path(&config.data_dir, &name.scope);
            let saved = catch_up::load(&catch_up_file).map_err(|e| RelayError::Other(e.to_string()))?;
            let resume =
                Resume::new(&name, checkpoint, nomad.start, nomad.gap_markers).with_catch_up(saved.clone());
            if saved.is_some() && resume.catch_up().is_none() {
                // Finished before the last stop (the checkpoint is past it).
                catch_up::save(&catch_up_file, None).map_err(|e| RelayError::Other(e.to_string()))?;
            }
            let source = Source::new(nomad.clone(), resume, events.clone(), stats.clone())
                .map_err(|e| RelayError::Other(format!("Nomad source `{}`: {e}", nomad.name)))?
                .with_catch_up_file(catch_up_file);
            sources.push((nomad.name.clone(), stats, source));
        }
        let mut all_stats = Vec::new();
        for (name, stats, source) in sources {
            all_stats.push((name.clone(), stats));
            let (token, failure) = (self.source_shutdown.clone(), self.failure.clone());
            self.tracker.spawn(async move {
                // Spawned on its own so that a panic is seen here rather than leaving a relay
                // that looks alive but reads nothing.
                match tokio::spawn(source.run(token.clone())).await {
                    Err(e) => failure.fail(format!("Nomad source `{name}` crashed: {e}")),
                    Ok(()) if !token.is_cancelled() => failure.fail(format!(
                        "Nomad source `{name}` stopped: the journal writer no longer takes events"
                    )),
                    Ok(()) => {}
                }
            });
        }
        Ok(all_stats)
    }

    /// Starts one worker per sink, each in its `sink` span (`sink`, `kind`), which the lines
    /// the sink itself logs inherit.
    fn start_workers(
        &mut self,
        config: &Config,
        prepared: Vec<Prepared>,
        journal_dir: &Path,
        head: &tokio::sync::watch::Receiver<u64>,
    ) -> Vec<(String, Arc<SinkStats>)> {
        let router = Arc::new(router(config));
        let mut all_stats = Vec::new();
        for Prepared { name, sink, cursor, slot } in prepared {
            let stats = Arc::new(SinkStats::default());
            all_stats.push((name.clone(), stats.clone()));
            let parts = WorkerParts {
                config: config.clone(),
                journal_dir: journal_dir.to_owned(),
                router: router.clone(),
                board: self.board.clone(),
                head: head.clone(),
                failure: self.failure.clone(),
            };
            parts.spawn(&self.tracker, name, sink, cursor, slot, stats, self.worker_shutdown.clone());
        }
        all_stats
    }

    /// Starts the high-availability roles ([`crate::ha`]): the sink workers run only in a
    /// term as leader, each term from the cursors the shared checkpoint gives.
    fn start_roles(
        &mut self,
        config: &Config,
        ha: &crate::config::HaConfig,
        prepared: Vec<Prepared>,
        journal_dir: &Path,
        head: &tokio::sync::watch::Receiver<u64>,
    ) -> Result<(SinkStatsList, Arc<crate::ha::HaStats>), RelayError> {
        let source = match &ha.source {
            Some(name) => config.nomad.iter().find(|n| &n.name == name),
            None => config.nomad.first(),
        }
        .ok_or_else(|| RelayError::Other("`ha.source` names no [[nomad]] table".into()))?;
        let instance = format!("{:032x}", rand::random::<u128>());
        let instance = format!(
            "{}-{}-{}-{}-{}",
            &instance[..8],
            &instance[8..12],
            &instance[12..16],
            &instance[16..20],
            &instance[20..]
        );
        let lease =
            crate::ha::lease::NomadLease::new(ha, source, instance.clone()).map_err(RelayError::Other)?;
        let parts = WorkerParts {
            config: config.clone(),
            journal_dir: journal_dir.to_owned(),
            router: Arc::new(router(config)),
            board: self.board.clone(),
            head: head.clone(),
            failure: self.failure.clone(),
        };
        let mut sinks = Vec::new();
        let mut all_stats = Vec::new();
        for Prepared { name, cursor, slot, .. } in prepared {
            let stats = Arc::new(SinkStats::default());
            all_stats.push((name.clone(), stats.clone()));
            sinks.push((crate::ha::HaSink { name, slot, first_seq: cursor.next_seq() }, stats));
        }
        let ha_sinks = sinks.iter().map(|(sink, _)| sink.clone()).collect();
        let start_workers: crate::ha::StartWorkers = Box::new(move |token, tracker| {
            for (sink, stats) in &sinks {
                parts.spawn_loading(tracker, sink, stats.clone(), token.clone());
            }
        });
        let stats = Arc::new(crate::ha::HaStats::default());
        let roles = crate::ha::Roles {
            lease,
            config: ha.clone(),
            instance,
            data_dir: config.data_dir.clone(),
            journal_dir: journal_dir.to_owned(),
            head: head.clone(),
            sinks: ha_sinks,
            board: self.board.clone(),
            stats: stats.clone(),
            start_workers,
            shutdown_timeout: config.shutdown_timeout.0,
        };
        let (token, failure) = (self.worker_shutdown.clone(), self.failure.clone());
        self.tracker.spawn(async move {
            match tokio::spawn(roles.run(token)).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => failure.fail(format!("high availability: {reason}")),
                Err(e) => failure.fail(format!("high availability crashed: {e}")),
            }
        });
        Ok((all_stats, stats))
    }

    /// Stops in order: sources stop reading, workers finish the batch in hand (within
    /// `deadline`), the endpoint closes, the writer makes what it has durable.
    async fn stop(self, deadline: Duration) -> Result<(), RelayError> {
        info!("shutting down: no longer reading from Nomad; finishing batches in flight and saving cursors");
        self.stopping.store(true, Ordering::Relaxed);
        self.board.wake();
        self.source_shutdown.cancel();
        self.worker_shutdown.cancel();
        if tokio::time::timeout(deadline, self.tracker.wait()).await.is_err() {
            warn!(
                "some sinks did not finish within shutdown_timeout ({deadline:?}); their cursors stay at the last confirmed batch, and what follows is delivered after the restart"
            );
        }
        self.http_shutdown.cancel();
        let writer = self.writer;
        let joined = tokio::task::spawn_blocking(move || writer.join()).await;
        if !matches!(joined, Ok(Ok(()))) {
            error!("the journal writer ended abnormally");
        }
        match self.failure.take() {
            Some(reason) => Err(RelayError::Other(reason)),
            None => {
                info!("stopped");
                Ok(())
            }
        }
    }
}

/// The router of `config`: its routes, and never the `Variable` events of the relay's own
/// lease variable (its checkpoint writes).
fn router(config: &Config) -> Router {
    let router = Router::new(config.routes.clone());
    match &config.ha {
        Some(ha) => router.ignoring_variable(&ha.namespace, ha.path.trim_matches('/')),
        None => router,
    }
}

/// Each sink's name and counters.
type SinkStatsList = Vec<(String, Arc<SinkStats>)>;

/// What every sink worker shares: enough to start one whenever it is needed.
#[derive(Clone)]
struct WorkerParts {
    config: Config,
    journal_dir: PathBuf,
    router: Arc<Router>,
    board: Arc<CursorBoard>,
    head: tokio::sync::watch::Receiver<u64>,
    failure: Failure,
}

impl WorkerParts {
    /// Runs sink `name`'s worker on `tracker` until `token` is cancelled, in its `sink` span
    /// (`sink`, `kind`), which the lines the sink itself logs inherit.
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &self,
        tracker: &TaskTracker,
        name: String,
        sink: AnySink,
        cursor: Cursor,
        slot: crate::journal::board::Slot,
        stats: Arc<SinkStats>,
        token: CancellationToken,
    ) {
        let sink_config = &self.config.sinks[&name];
        stats.cursor.store(cursor.next_seq(), Ordering::Relaxed);
        stats.cursor_index.store(cursor.position.last_index, Ordering::Relaxed);
        let span = info_span!("sink", sink = %name, kind = sink_config.kind.kind());
        let worker = SinkWorker {
            name: name.clone(),
            sink,
            settings: sink_config.common.clone(),
            cursor,
            data_dir: self.config.data_dir.clone(),
            journal_dir: self.journal_dir.clone(),
            router: self.router.clone(),
            board: self.board.clone(),
            slot,
            head: self.head.clone(),
            stats,
            parked: crate::worker::Parked::default(),
        };
        let failure = self.failure.clone();
        tracker.spawn(async move {
            match tokio::spawn(worker.run(token).instrument(span)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure.fail(format!("the worker of sink `{name}` failed: {e}")),
                Err(e) => failure.fail(format!("the worker of sink `{name}` crashed: {e}")),
            }
        });
    }

    /// [`WorkerParts::spawn`] for a term as leader: the sink is built anew and its cursor
    /// loaded from the file the roles just moved.
    fn spawn_loading(
        &self,
        tracker: &TaskTracker,
        sink: &crate::ha::HaSink,
        stats: Arc<SinkStats>,
        token: CancellationToken,
    ) {
        let (parts, sink, inner) = (self.clone(), sink.clone(), tracker.clone());
        tracker.spawn(async move {
            let (data_dir, name) = (parts.config.data_dir.clone(), sink.name.clone());
            let loaded = tokio::task::spawn_blocking(move || cursor::load(&data_dir, &name)).await;
            let cursor = match loaded {
                Ok(Ok(cursor)) => cursor.unwrap_or_else(|| Cursor::new(&sink.name, sink.first_seq)),
                Ok(Err(e)) => return parts.failure.fail(format!("sink `{}`: {e}", sink.name)),
                Err(e) => return parts.failure.fail(format!("sink `{}`: {e}", sink.name)),
            };
            match AnySink::from_config(&parts.config.sinks[&sink.name].kind) {
                Ok(built) => parts.spawn(&inner, sink.name.clone(), built, cursor, sink.slot, stats, token),
                Err(e) => parts.failure.fail(format!("sink `{}`: {e}", sink.name)),
            }
        });
    }
}

/// Recovers the journal (off the async runtime), cutting off a record a crash tore.
async fn recover(config: &Config, journal_dir: &Path) -> Result<Recovered, RelayError> {
    let dir = journal_dir.to_owned();
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        Ok(journal::recover(&dir, Recovery::Repair, &source_names(&config)?)?)
    })
    .await
    .map_err(|e| RelayError::Other(format!("journal recovery failed: {e}")))?
}

/// Every configured source as the journal knows it: its name and its id scope, settled from
/// the configuration and what the journal recorded (blocking; [`journal::names`]). Two sources
/// with one scope are an error.
pub fn source_names(config: &Config) -> Result<Vec<SourceName>, RelayError> {
    let configured: Vec<Configured> = config
        .nomad
        .iter()
        .map(|nomad| Configured { name: nomad.name.clone(), id_scope: nomad.id_scope.clone() })
        .collect();
    let sources = journal::names::resolve(&journal_dir(&config.data_dir), &configured)?;
    let mut scopes = std::collections::BTreeMap::new();
    for source in &sources {
        if let Some(other) = scopes.insert(source.scope.as_str(), source.name.as_str()) {
            return Err(RelayError::Other(format!(
                "sources `{other}` and `{}` would both have id scope `{}`, so their events would get the same ids (raft indexes are per cluster); give each [[nomad]] table its own `id_scope`",
                source.name, source.scope
            )));
        }
    }
    Ok(sources)
}

/// Every configured sink's saved cursor (`None` for a new sink).
fn load_cursors(config: &Config) -> Result<Vec<(String, Option<Cursor>)>, RelayError> {
    let mut cursors = Vec::new();
    for name in config.sinks.keys() {
        cursors.push((name.clone(), cursor::load(&config.data_dir, name)?));
    }
    Ok(cursors)
}

/// The journal head to continue from. A journal that is empty but whose sinks have cursors
/// was removed by hand: numbering continues after the furthest cursor so no cursor points
/// into the future. A cursor past a non-empty journal's head means the journal was replaced.
fn check_cursors(
    config: &Config,
    journal_dir: &Path,
    recovered: &Recovered,
    cursors: &[(String, Option<Cursor>)],
) -> Result<u64, RelayError> {
    let head = recovered.head;
    let furthest = cursors.iter().filter_map(|(_, c)| c.as_ref().map(Cursor::next_seq)).max().unwrap_or(1);
    if recovered.segments.is_empty() {
        return Ok(head.max(furthest.saturating_sub(1)));
    }
    if furthest > head + 1 {
        return Err(RelayError::Other(format!(
            "a sink cursor is at journal record {furthest} but the journal in {} ends at {head}; the journal was replaced or restored from an older copy. Remove the cursors in {} to re-deliver everything it holds",
            journal_dir.display(),
            config.data_dir.join("cursors").display()
        )));
    }
    Ok(head)
}

/// Says where each source resumes.
fn log_resume(config: &Config, recovered: &Recovered, head: u64) {
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
}

/// Builds every sink and registers its cursor with the board (a new sink starts at the
/// oldest record the journal holds).
fn prepare_sinks(
    config: &Config,
    cursors: Vec<(String, Option<Cursor>)>,
    oldest: u64,
    board: &CursorBoard,
) -> Result<Vec<Prepared>, RelayError> {
    let mut prepared = Vec::new();
    for (name, saved) in cursors {
        let sink_config = &config.sinks[&name];
        let cursor = saved.unwrap_or_else(|| Cursor::new(&name, oldest));
        let sink = AnySink::from_config(&sink_config.kind)
            .map_err(|e| RelayError::Other(format!("sink `{name}`: {e}")))?;
        let drop_oldest = sink_config.common.when_full == WhenFull::DropOldest;
        let slot = board.register(&name, cursor.next_seq(), drop_oldest);
        prepared.push(Prepared { name, sink, cursor, slot });
    }
    Ok(prepared)
}
