//! The journal: a durable, append-only log of every event received from Nomad, between the
//! source and the sink workers.
//!
//! It lets the relay take Nomad's stream at Nomad's pace (Nomad keeps only a small buffer and
//! drops subscribers that lag), lets each sink go at its own pace from its own cursor, and
//! makes replay from an index possible for as long as retention keeps the events.
//!
//! On disk it is a directory of segment files named by the sequence number of their first
//! record (`00000000000000000001.seg`), each a run of checksummed [`record`]s. One writer
//! thread appends ([`writer`]), grouping every batch that is waiting into one write and one
//! `fsync`; readers ([`reader`]) only ever read records up to the published durable head, so
//! no sink sees an event before it is on disk.
//!
//! Recovery after a crash reads the last segment, cuts off a record torn by the crash, and
//! yields each source's [`checkpoint`]: the highest Nomad index journaled and the ids
//! journaled at it. The source hands events in through a [`handoff`] bounded in bytes.

pub mod board;
pub mod checkpoint;
pub mod handoff;
pub mod names;
pub mod reader;
pub mod record;
pub mod writer;

use crate::state_file::StateFileError;
use checkpoint::SourceCheckpoint;
pub use names::SourceName;
use record::{HEADER_LEN, header, peek};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tracing::warn;

/// A journal operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing a file failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The journal's content is not what was written.
    #[error("journal {path} is damaged at byte {offset}: {reason}")]
    Damaged {
        /// The segment.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl From<StateFileError> for JournalError {
    fn from(error: StateFileError) -> Self {
        match error {
            StateFileError::Io { path, source } => JournalError::Io { path, source },
            StateFileError::Damaged { path, reason } => JournalError::Damaged { path, offset: 0, reason },
        }
    }
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_owned(), source }
}

/// One segment file.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Sequence number of its first record.
    pub first_seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The file name of the segment starting at `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// The segments in `dir`, oldest first.
pub fn list_segments(dir: &Path) -> Result<Vec<Segment>, JournalError> {
    let mut segments = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(segments),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let Some(first_seq) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let metadata = match entry.metadata() {
            Ok(metadata) => metadata,
            // Removed by retention while we listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&path)(e)),
        };
        segments.push(Segment {
            first_seq,
            path,
            len: metadata.len(),
            modified: metadata.modified().unwrap_or_else(|_| SystemTime::now()),
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// One source's records within a scanned segment.
#[derive(Debug)]
struct SourceTail {
    /// Index of its first record in the segment.
    first_index: u64,
    /// Its highest index in the segment, and the ids at that index.
    last: SourceCheckpoint,
}

/// What a scan of one segment found.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes of whole, valid records from the start.
    valid_len: u64,
    /// Sequence of the last valid record.
    last_seq: Option<u64>,
    /// Per source: where its records in this segment start and end.
    sources: HashMap<String, SourceTail>,
    /// A reason the scan stopped before the end of the file.
    stopped: Option<String>,
}

fn scan_segment(segment: &Segment) -> Result<Scan, JournalError> {
    let file = File::open(&segment.path).map_err(io_error(&segment.path))?;
    let file_len = file.metadata().map_err(io_error(&segment.path))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan::default();
    let mut body = Vec::new();
    let mut expected_seq = segment.first_seq;
    loop {
        let mut head = [0u8; HEADER_LEN];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                if scan.valid_len < file_len {
                    scan.stopped = Some("a record header cut short".into());
                }
                break;
            }
            Err(e) => return Err(io_error(&segment.path)(e)),
        }
        let (len, crc) = header(&head);
        if scan.valid_len + (HEADER_LEN + len) as u64 > file_len {
            scan.stopped = Some("a record cut short".into());
            break;
        }
        body.resize(len, 0);
        reader.read_exact(&mut body).map_err(io_error(&segment.path))?;
        let peeked = if crc32fast::hash(&body) == crc { peek(&body).zip(record::raw(&body)) } else { None };
        let Some(((seq, id, source), raw)) = peeked else {
            let next = scan.valid_len + (HEADER_LEN + len) as u64;
            if record_follows(&segment.path, next, expected_seq + 1)? {
                // Damaged in place, with whole records after it: not a write a crash cut
                // short. It stays (readers quarantine it and report a gap); the scan goes on.
                warn!(segment = %segment.path.display(), "journal: record {expected_seq} at byte {} fails its checksum; `nomad-relay journal check` lists damaged records", scan.valid_len);
                expected_seq += 1;
                scan.valid_len = next;
                scan.last_seq = Some(expected_seq - 1);
                continue;
            }
            scan.stopped = Some("a record whose checksum does not match, at the end of the segment".into());
            break;
        };
        if seq != expected_seq {
            scan.stopped = Some(format!("sequence {seq} where {expected_seq} was expected"));
            break;
        }
        expected_seq += 1;
        scan.valid_len += (HEADER_LEN + len) as u64;
        scan.last_seq = Some(seq);
        let content = checkpoint::content(raw);
        match scan.sources.get_mut(source) {
            Some(tail) => {
                if let Err(backwards) = tail.last.advance(id, content) {
                    warn!(segment = %segment.path.display(), "journal: record {seq}: {backwards}");
                }
            }
            None => {
                let tail = SourceTail { first_index: id.index, last: SourceCheckpoint::at(id, content) };
                scan.sources.insert(source.to_owned(), tail);
            }
        }
    }
    Ok(scan)
}

/// Whether a whole, valid record with sequence `seq` starts at byte `offset` of `path`.
fn record_follows(path: &Path, offset: u64, seq: u64) -> Result<bool, JournalError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut head = [0u8; HEADER_LEN];
    if file.seek(SeekFrom::Start(offset)).is_err() || file.read_exact(&mut head).is_err() {
        return Ok(false);
    }
    let (len, crc) = header(&head);
    if offset + (HEADER_LEN + len) as u64 > file_len {
        return Ok(false);
    }
    let mut body = vec![0u8; len];
    file.read_exact(&mut body).map_err(io_error(path))?;
    Ok(crc32fast::hash(&body) == crc && peek(&body).is_some_and(|(found, _, _)| found == seq))
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovered {
    /// Sequence of the last durable record (0 when the journal is empty).
    pub head: u64,
    /// Sequence of the oldest record still kept.
    pub oldest: u64,
    /// Each source's checkpoint; a source missing here has journaled nothing yet.
    pub checkpoints: HashMap<String, SourceCheckpoint>,
    /// Each source's id scope, by name.
    pub scopes: HashMap<String, String>,
    /// The segments, oldest first.
    pub segments: Vec<Segment>,
}

/// What [`recover`] may do to the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Cut off a record torn by a crash (the writer needs a clean end).
    Repair,
    /// Only read: an unfinished record at the end (a write in progress, for `checkpoint
    /// show` on a running relay) is ignored.
    ReadOnly,
}

/// Reads the journal in `dir` and rebuilds the checkpoint of each of `sources`, from its
/// records under every name its id scope has had ([`names`]); with [`Recovery::Repair`], also
/// records the sources' current names.
///
/// A source's checkpoint is its highest journaled index and every id journaled at it. The
/// newest segment usually settles it; older segments are read only while a source's records
/// at its highest index may continue further back (or it has not been seen yet), and never
/// past the head recorded in the saved [`checkpoint`] file, which holds every checkpoint as
/// of the last time retention removed a segment.
pub fn recover(dir: &Path, recovery: Recovery, sources: &[SourceName]) -> Result<Recovered, JournalError> {
    let aliases = names::aliases(dir, sources)?;
    let all_names: Vec<String> = aliases.iter().flatten().cloned().collect();
    let mut recovered = recover_names(dir, recovery, &all_names)?;
    for (source, names) in sources.iter().zip(&aliases) {
        let mut merged: Option<SourceCheckpoint> = None;
        for name in names {
            if let Some(checkpoint) = recovered.checkpoints.remove(name) {
                merged.get_or_insert_with(SourceCheckpoint::default).merge(checkpoint);
            }
        }
        if let Some(checkpoint) = merged {
            recovered.checkpoints.insert(source.name.clone(), checkpoint);
        }
    }
    if recovery == Recovery::Repair {
        names::remember(dir, sources)?;
    }
    recovered.scopes = sources.iter().map(|s| (s.name.clone(), s.scope.clone())).collect();
    Ok(recovered)
}

/// [`recover`] for the records written under `sources`, by name.
fn recover_names(dir: &Path, recovery: Recovery, sources: &[String]) -> Result<Recovered, JournalError> {
    let mut segments = list_segments(dir)?;
    if recovery == Recovery::Repair {
        remove_stray_segments(&mut segments)?;
    }
    let saved = checkpoint::load(dir)?;
    let Some(last) = segments.last().cloned() else {
        let checkpoints = saved.map(|saved| saved.checkpoints).unwrap_or_default();
        return Ok(Recovered { head: 0, oldest: 1, checkpoints, segments, scopes: HashMap::new() });
    };
    let scan = scan_segment(&last)?;
    if let Some(reason) = scan.stopped.as_ref().filter(|_| recovery == Recovery::Repair) {
        let cut = last.len - scan.valid_len;
        warn!(
            segment = %last.path.display(),
            "journal: discarding the last {cut} bytes of the newest segment ({reason}); this is what a crash during a write leaves, and those events are fetched from Nomad again (or reported as a gap if Nomad no longer has them)"
        );
        let file = fs::OpenOptions::new().write(true).open(&last.path).map_err(io_error(&last.path))?;
        file.set_len(scan.valid_len).map_err(io_error(&last.path))?;
        file.sync_all().map_err(io_error(&last.path))?;
        if let Some(segment) = segments.last_mut() {
            segment.len = scan.valid_len;
        }
    }
    let head = scan.last_seq.unwrap_or(last.first_seq - 1);
    let oldest = segments.first().map(|s| s.first_seq).unwrap_or(1);
    // Per source: the checkpoint so far, and whether older segments can add nothing to it
    // (its records at the checkpoint's Index begin inside a newer segment).
    let mut found: HashMap<String, (SourceCheckpoint, bool)> = HashMap::new();
    let mut merge = |mut scan: Scan| {
        for name in sources {
            let Some(tail) = scan.sources.remove(name) else { continue };
            let begins_here = tail.first_index < tail.last.index;
            match found.get_mut(name) {
                None => {
                    found.insert(name.clone(), (tail.last, begins_here));
                }
                Some((checkpoint, settled @ false)) => {
                    *settled = tail.last.index != checkpoint.index || begins_here;
                    if tail.last.index == checkpoint.index {
                        checkpoint.merge(tail.last);
                    }
                }
                Some(_) => {}
            }
        }
        sources.iter().all(|name| found.get(name).is_some_and(|(_, settled)| *settled))
    };
    // Records up to the saved head are already reflected in the sources file.
    let covered = |segment: &Segment| saved.as_ref().is_some_and(|saved| segment.first_seq <= saved.head + 1);
    let mut settled = merge(scan) || covered(&last);
    for segment in segments.iter().rev().skip(1) {
        if settled {
            break;
        }
        settled = merge(scan_segment(segment)?) || covered(segment);
    }
    let mut checkpoints: HashMap<String, SourceCheckpoint> =
        found.into_iter().map(|(name, (checkpoint, _))| (name, checkpoint)).collect();
    for (name, saved) in saved.map(|saved| saved.checkpoints).unwrap_or_default() {
        checkpoints.entry(name).or_default().merge(saved);
    }
    Ok(Recovered { head, oldest, checkpoints, segments, scopes: HashMap::new() })
}

/// Removes empty segments that are not the journal's end: a roll that created its file and
/// then failed leaves one, while the writer went on in the segment before it (so its records
/// are there). Read as the end of the journal, such a file would have the writer number
/// records again from its start. The newest segment stays when it is empty and starts right
/// after the one before: that is an ordinary fresh segment.
fn remove_stray_segments(segments: &mut Vec<Segment>) -> Result<(), JournalError> {
    let mut kept: Vec<Segment> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (position, segment) in std::mem::take(segments).into_iter().enumerate() {
        let stray = segment.len == 0
            && (position < last || kept.last().is_some_and(|before| ends_after(before, segment.first_seq)));
        if stray {
            warn!(segment = %segment.path.display(), "journal: removing an empty segment a failed roll left behind");
            fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            continue;
        }
        kept.push(segment);
    }
    *segments = kept;
    Ok(())
}

/// Whether `segment` holds a record at `seq` or later (its last record is at least `seq`).
fn ends_after(segment: &Segment, seq: u64) -> bool {
    let Ok(file) = File::open(&segment.path) else { return false };
    let mut reader = BufReader::new(file);
    matches!(seek_to(&mut reader, segment, seq), Ok(Some(offset)) if offset < segment.len)
}

/// Seeks `reader` to the record with sequence `seq` in `segment`, returning its offset, or
/// `None` if the segment ends before it.
fn seek_to(reader: &mut BufReader<File>, segment: &Segment, seq: u64) -> Result<Option<u64>, JournalError> {
    let mut offset = 0u64;
    let mut current = segment.first_seq;
    while current < seq {
        reader.seek(SeekFrom::Start(offset)).map_err(io_error(&segment.path))?;
        let mut head = [0u8; HEADER_LEN];
        match reader.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_error(&segment.path)(e)),
        }
        let (len, _) = header(&head);
        offset += (HEADER_LEN + len) as u64;
        current += 1;
    }
    reader.seek(SeekFrom::Start(offset)).map_err(io_error(&segment.path))?;
    Ok(Some(offset))
}

#[cfg(test)]
mod tests;
