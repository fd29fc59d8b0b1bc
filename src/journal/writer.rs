//! The journal's single writer: appends batches from the source with one `fsync` per group,
//! publishes the durable head, rolls segments, and applies retention.
//!
//! It runs on its own thread (every call here blocks on the disk). Batches that arrive while
//! a write is in progress are grouped into the next write, so the number of `fsync`s per
//! event falls as the rate rises. When the journal is full of events some sink still needs,
//! the writer stops taking batches; the source's channel fills and the source stops reading
//! Nomad, and the writer says so. A failed write (a full disk, say) is logged with what to
//! do, cut back, and retried; nothing is published until it is on disk.

use super::board::{CursorBoard, Keep};
use super::checkpoint::{self, SourceCheckpoint};
use super::handoff::Handoff;
use super::record::encode;
use super::{JournalError, Segment, io_error, segment_path};
use crate::config::JournalConfig;
use crate::state_file::sync_dir;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

/// Longest wait for room before a failed journal write is tried again.
const MAX_WRITE_WAIT: Duration = Duration::from_secs(10);
/// Most bytes grouped into one write.
const GROUP_BYTES: usize = 8 << 20;

/// Bytes kept in `RESERVE` beside the segments: given back when the disk is full, so that
/// the saved checkpoints and the sinks' cursors can still be written while the journal makes
/// room.
const RESERVE_BYTES: usize = 1 << 20;

/// What the writer reports about itself (the metrics endpoint reads it).
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Writes that failed (a full disk, an I/O error) and were retried.
    pub write_errors: AtomicU64,
    /// True while the writer cannot take events: the journal is full of undelivered events,
    /// or writes fail.
    pub blocked: AtomicBool,
}

/// The journal writer (run with [`JournalWriter::run`] on a dedicated thread).
pub struct JournalWriter {
    dir: PathBuf,
    config: JournalConfig,
    segments: VecDeque<Segment>,
    active: File,
    next_seq: u64,
    total_bytes: u64,
    head: watch::Sender<u64>,
    board: Arc<CursorBoard>,
    stopping: Arc<AtomicBool>,
    full: bool,
    /// Every source's checkpoint as of the durable head, saved before segments are removed.
    checkpoints: HashMap<String, SourceCheckpoint>,
    stats: Arc<JournalStats>,
    /// When the reserve was last found missing and not yet written again.
    reserve_missing_since: Option<std::time::Instant>,
}

impl JournalWriter {
    /// Opens the writer on a recovered journal whose last durable record is `head`, with the
    /// sources' checkpoints recovery found.
    pub fn open(
        dir: &Path,
        config: JournalConfig,
        recovered: (Vec<Segment>, u64, HashMap<String, SourceCheckpoint>),
        board: Arc<CursorBoard>,
        stopping: Arc<AtomicBool>,
    ) -> Result<(JournalWriter, watch::Receiver<u64>), JournalError> {
        let (segments, head, checkpoints) = recovered;
        crate::state_file::create_dir_durably(dir)?;
        let mut segments: VecDeque<Segment> = segments.into();
        if segments.is_empty() {
            segments.push_back(create_segment(dir, head + 1)?);
        }
        let last = segments.back().cloned().ok_or_else(|| JournalError::Damaged {
            path: dir.to_owned(),
            offset: 0,
            reason: "no segment to write to".into(),
        })?;
        let active = OpenOptions::new().append(true).open(&last.path).map_err(io_error(&last.path))?;
        let total_bytes = segments.iter().map(|s| s.len).sum();
        let (head_tx, head_rx) = watch::channel(head);
        Ok((
            JournalWriter {
                dir: dir.to_owned(),
                config,
                segments,
                active,
                next_seq: head + 1,
                total_bytes,
                head: head_tx,
                board,
                stopping,
                full: false,
                checkpoints,
                stats: Arc::default(),
                reserve_missing_since: Some(std::time::Instant::now() - Duration::from_secs(60)),
            },
            head_rx,
        ))
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    /// Writes batches from `batches` until every sender is gone.
    pub fn run(mut self, mut batches: mpsc::Receiver<Handoff>) {
        let mut encoded = Vec::with_capacity(1 << 20);
        // A group is written whole, also into a journal of one segment: it is no larger than a
        // segment, so the journal keeps within `max_bytes` plus a segment.
        let group_bytes =
            GROUP_BYTES.min(usize::try_from(self.config.segment_bytes.0).unwrap_or(GROUP_BYTES));
        while let Some(first) = batches.blocking_recv() {
            let mut size: usize = first.events.iter().map(|e| e.raw.len()).sum();
            let mut group = vec![first];
            while size < group_bytes {
                match batches.try_recv() {
                    Ok(batch) => {
                        size += batch.events.iter().map(|e| e.raw.len()).sum::<usize>();
                        group.push(batch);
                    }
                    Err(_) => break,
                }
            }
            encoded.clear();
            let mut seq = self.next_seq;
            let mut written = Vec::with_capacity(group.iter().map(|h| h.events.len()).sum());
            for event in group.iter().flat_map(|h| &h.events) {
                match encode(seq, event, &mut encoded) {
                    Ok(()) => {
                        seq += 1;
                        written.push(event);
                    }
                    Err(e) => error!("journal: dropping event {}: {e}", event.id),
                }
            }
            if written.is_empty() {
                continue;
            }
            // Room for the records as written (headers and identity fields included), so the
            // journal stays within `max_bytes`.
            self.wait_for_room(encoded.len() as u64);
            if !self.append(&encoded) {
                continue;
            }
            self.keep_reserve();
            for event in written {
                let checkpoint = self.checkpoints.entry(event.source.clone()).or_default();
                // Ids only: the sources file keeps no content digests (see `checkpoint`).
                if let Err(backwards) = checkpoint.advance(event.id, checkpoint::UNKNOWN_CONTENT) {
                    error!("journal: source `{}`: {backwards} (a bug in the source)", event.source);
                }
            }
            self.next_seq = seq;
            self.head.send_replace(seq - 1);
            if self.segments.back().map(|s| s.len).unwrap_or(0) >= self.config.segment_bytes.0 {
                self.roll();
            }
        }
        if let Err(e) = self.active.sync_all() {
            error!("journal: final sync failed: {e}");
        }
    }

    /// Writes and syncs `bytes` to the active segment, retrying until it succeeds. Returns
    /// false, with nothing written, if the relay is stopping before it could (nothing was
    /// published, so nothing is lost: the source fetches those events again on restart).
    fn append(&mut self, bytes: &[u8]) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            let result = self.active.write_all(bytes).and_then(|()| self.active.sync_data());
            let Some(segment) = self.segments.back_mut() else { return false };
            match result {
                Ok(()) => {
                    segment.len += bytes.len() as u64;
                    segment.modified = SystemTime::now();
                    self.total_bytes += bytes.len() as u64;
                    self.stats.blocked.store(self.full, Ordering::Relaxed);
                    return true;
                }
                Err(e) => {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.blocked.store(true, Ordering::Relaxed);
                    error!(
                        segment = %segment.path.display(),
                        "journal: cannot write {} bytes: {e}. The relay is not reading Nomad until this succeeds; it frees what every sink has delivered, but if that is not enough, free disk space in {} or fix its permissions. Retrying in {delay:?}.",
                        bytes.len(),
                        self.dir.display()
                    );
                    // Cut off whatever part of the write landed, so the segment stays whole.
                    let (path, len) = (segment.path.clone(), segment.len);
                    if let Err(e) = self.active.set_len(len) {
                        error!("journal: cannot cut back {}: {e}", path.display());
                    }
                }
            }
            // The write is tried again once segments were removed (or after 10 s, for space
            // freed by someone else): retried at once, it would take the reserve just given
            // back, which the sinks need to save the cursors that let segments go.
            let mut waited = Duration::ZERO;
            while !self.make_space() && waited < MAX_WRITE_WAIT {
                if self.stopping.load(Ordering::Relaxed) {
                    return false;
                }
                self.board.wait_moved(delay);
                waited += delay;
                delay = (delay * 2).min(MAX_WRITE_WAIT);
            }
            if self.stopping.load(Ordering::Relaxed) {
                return false;
            }
        }
    }

    /// After a failed write: delivered segments may be what filled the disk. Whether any
    /// segment was removed. The reserve is
    /// given back (so the saved checkpoints and cursors can be written), the active segment
    /// is closed if it holds records (a segment in use cannot be removed, and with the
    /// default segment size it can be the whole journal), and every segment all sinks have
    /// passed is removed.
    fn make_space(&mut self) -> bool {
        if self.reserve_missing_since.is_none() {
            let reserve = self.dir.join("RESERVE");
            match fs::remove_file(&reserve) {
                Ok(()) => {
                    warn!("journal: gave back the {} KiB kept in reserve to make room", RESERVE_BYTES >> 10)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => error!("journal: cannot remove {}: {e}", reserve.display()),
            }
            self.reserve_missing_since = Some(std::time::Instant::now());
        }
        if self.segments.back().is_some_and(|s| s.len > 0) {
            self.try_roll();
        }
        self.remove_segments(u64::MAX / 4, Keep::ForEverySink)
    }

    /// Writes the reserve again when it is missing (at most once a second while that fails).
    fn keep_reserve(&mut self) {
        let Some(since) = self.reserve_missing_since else { return };
        if since.elapsed() < Duration::from_secs(1) {
            return;
        }
        let reserve = self.dir.join("RESERVE");
        let written = crate::private::create_file(&reserve, crate::private::FILE_MODE)
            .and_then(|mut file| file.write_all(&[0; RESERVE_BYTES]).and_then(|()| file.sync_all()));
        match written {
            Ok(()) => self.reserve_missing_since = None,
            Err(_) => {
                let _ = fs::remove_file(&reserve);
                self.reserve_missing_since = Some(std::time::Instant::now());
            }
        }
    }

    /// Starts a new segment, retrying until it can.
    fn roll(&mut self) {
        let mut delay = Duration::from_millis(100);
        loop {
            if self.try_roll() {
                return;
            }
            if self.stopping.load(Ordering::Relaxed) {
                // The active segment stays in use; it simply grows past `segment_bytes`.
                return;
            }
            self.remove_segments(u64::MAX / 4, Keep::ForEverySink);
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// Starts a new segment at the next record; false, logged, when it cannot.
    fn try_roll(&mut self) -> bool {
        match create_segment(&self.dir, self.next_seq) {
            Ok(segment) => match OpenOptions::new().append(true).open(&segment.path) {
                Ok(file) => {
                    if let Err(e) = self.active.sync_all() {
                        warn!("journal: sync before roll failed: {e}");
                    }
                    self.active = file;
                    self.segments.push_back(segment);
                    true
                }
                Err(e) => {
                    error!("journal: cannot open new segment {}: {e}", segment.path.display());
                    // Leave no empty segment behind while records go on in the current one.
                    let _ = fs::remove_file(&segment.path);
                    false
                }
            },
            Err(e) => {
                error!("journal: cannot start a new segment: {e}");
                false
            }
        }
    }

    /// Applies retention and, while the journal is too full for `incoming` more bytes,
    /// waits for sinks to move.
    fn wait_for_room(&mut self, incoming: u64) {
        loop {
            self.remove_segments(incoming, Keep::ForEverySink);
            if self.total_bytes + incoming <= self.config.max_bytes.0 || self.segments.len() <= 1 {
                break;
            }
            // Full of events every sink needs; sinks that accept drops give theirs up first.
            if self.remove_segments(incoming, Keep::ForBlockingSinks) {
                continue;
            }
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            if !self.full {
                self.full = true;
                self.stats.blocked.store(true, Ordering::Relaxed);
                let oldest_end = self.segments.get(1).map(|s| s.first_seq).unwrap_or(self.next_seq);
                let behind: Vec<String> = self
                    .board
                    .behind(oldest_end, Keep::ForBlockingSinks)
                    .into_iter()
                    .map(|(name, seq)| format!("`{name}` (at journal record {seq})"))
                    .collect();
                warn!(
                    "journal full: {} bytes of events not yet delivered reach `journal.max_bytes` ({}); waiting for sink {} before reading more from Nomad. Nomad drops a subscriber that lags past its event buffer, which will show as a gap. Fix the sink, raise `journal.max_bytes`, or set `when_full = \"drop_oldest\"` on sinks that may lose old events.",
                    self.total_bytes,
                    self.config.max_bytes.0,
                    behind.join(", ")
                );
            }
            self.board.wait_moved(Duration::from_secs(1));
        }
        if self.full {
            self.full = false;
            self.stats.blocked.store(false, Ordering::Relaxed);
            info!("journal has room again; reading from Nomad resumes");
        }
    }

    /// Removes segments every sink `keep` names has passed when they are older than the
    /// replay window or the journal needs room. Returns whether any was removed.
    fn remove_segments(&mut self, incoming: u64, keep: Keep) -> bool {
        let min_next = self.board.min_next_seq(keep).unwrap_or(u64::MAX);
        let max_age = self.config.max_age.0;
        let now = SystemTime::now();
        let mut removed = false;
        while self.segments.len() > 1 {
            let (Some(oldest), Some(next)) = (self.segments.front(), self.segments.get(1)) else { break };
            let passed = next.first_seq <= min_next;
            let needs_room = self.total_bytes.saturating_add(incoming) > self.config.max_bytes.0;
            let too_old = now.duration_since(oldest.modified).map(|age| age > max_age).unwrap_or(false);
            if !passed || !(needs_room || too_old) {
                break;
            }
            if keep == Keep::ForBlockingSinks {
                for (name, seq) in self.board.behind(next.first_seq, Keep::ForEverySink) {
                    warn!(
                        "journal full: dropping records {}..{} that sink `{name}` (when_full = \"drop_oldest\") has not delivered",
                        seq.max(oldest.first_seq),
                        next.first_seq
                    );
                }
            }
            let path = oldest.path.clone();
            let len = oldest.len;
            if !removed && let Err(e) = checkpoint::save(&self.dir, self.next_seq - 1, &self.checkpoints) {
                error!("journal: cannot save the sources' checkpoints, so no segment is removed: {e}");
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    error!("journal: cannot remove {}: {e}", path.display());
                    break;
                }
            }
            self.segments.pop_front();
            self.total_bytes -= len;
            removed = true;
        }
        removed
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment, JournalError> {
    let path = segment_path(dir, first_seq);
    crate::private::create_file(&path, crate::private::FILE_MODE)
        .and_then(|f| f.sync_all())
        .map_err(io_error(&path))?;
    sync_dir(dir)?;
    Ok(Segment { first_seq, path, len: 0, modified: SystemTime::now() })
}
