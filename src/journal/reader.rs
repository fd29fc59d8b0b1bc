//! Sequential reading of the journal from a cursor, for sink workers and `replay`.
//!
//! A reader never reads past the durable head it is given, so it only sees records that are
//! complete and on disk. If retention removed the records it needs next (only possible for a
//! sink with `when_full = "drop_oldest"`), it says so with [`Read::Skipped`] and carries on
//! from the oldest record kept.

use super::record::{self, HEADER_LEN, header};
use super::{JournalError, Segment, io_error, list_segments, seek_to};
use bytes::Bytes;
use nomad_relay_sink_api::Envelope;
use std::fs::File;
use std::io::{self, BufReader, Read as _, Seek, SeekFrom};
use std::path::PathBuf;

/// Most bytes reserved for a record body before reading it (longer ones grow as they are read).
const MAX_UPFRONT: usize = 4 << 20;

/// What one call to [`JournalReader::read`] produced.
#[derive(Debug)]
pub enum Read {
    /// The next events, possibly none when the reader is at the head.
    Events(Vec<Envelope>),
    /// Records `from..to` were removed before this reader got them.
    Skipped {
        /// First missing sequence.
        from: u64,
        /// First sequence still kept.
        to: u64,
    },
    /// Records `from..to` cannot be read (a record fails its checksum); their bytes were
    /// copied to `quarantined` (when that could be written) and the reader goes on after them.
    Damaged {
        /// First damaged sequence.
        from: u64,
        /// First sequence after the damage.
        to: u64,
        /// What is wrong, and where.
        reason: String,
        /// Where the damaged bytes were copied.
        quarantined: Option<PathBuf>,
    },
}

struct Open {
    segment: Segment,
    reader: BufReader<File>,
    offset: u64,
}

/// Reads journal records in order from a starting sequence.
pub struct JournalReader {
    dir: PathBuf,
    next_seq: u64,
    open: Option<Open>,
    /// Whether damaged records are copied to the journal's `quarantine` directory.
    quarantine: bool,
}

impl JournalReader {
    /// A reader whose first record will be `next_seq`.
    pub fn new(dir: PathBuf, next_seq: u64) -> Self {
        JournalReader { dir, next_seq: next_seq.max(1), open: None, quarantine: true }
    }

    /// A reader that changes nothing: damaged records are reported, not copied aside.
    pub fn inspecting(dir: PathBuf, next_seq: u64) -> Self {
        JournalReader { quarantine: false, ..JournalReader::new(dir, next_seq) }
    }

    /// The sequence of the next record this reader returns.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Reads up to `max_events` records (and about `max_bytes`) with sequence at most `head`.
    pub fn read(&mut self, head: u64, max_events: usize, max_bytes: usize) -> Result<Read, JournalError> {
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut retried = false;
        while self.next_seq <= head && events.len() < max_events && bytes < max_bytes {
            if self.open.is_none()
                && let Some(to) = self.position()?
            {
                // Records next_seq..to were removed: said on a read of its own, so the events
                // before the hole and the hole are never reported as one.
                if events.is_empty() {
                    let skipped = Read::Skipped { from: self.next_seq, to };
                    self.next_seq = to;
                    return Ok(skipped);
                }
                break;
            }
            let Some(open) = self.open.as_mut() else { break };
            let mut head_bytes = [0u8; HEADER_LEN];
            match open.reader.read_exact(&mut head_bytes) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    // This segment is finished; the next record starts the next segment,
                    // which `position` finds, or reports removed by retention (a
                    // `drop_oldest` sink's reader can be inside a segment retention already
                    // removed: it reads on through its open file), or finds missing between
                    // kept ones, which is damage.
                    self.open = None;
                    continue;
                }
                Err(e) => return Err(io_error(&open.segment.path)(e)),
            }
            let (len, crc) = header(&head_bytes);
            // Read into fresh capacity rather than a zeroed buffer: `read_to_end` on a
            // buffered file does not clear the bytes it is about to overwrite. The capacity
            // is capped so a damaged length cannot ask for gigabytes up front.
            let mut body = Vec::with_capacity(len.min(MAX_UPFRONT));
            let read = (&mut open.reader).take(len as u64).read_to_end(&mut body);
            let valid = matches!(read, Ok(n) if n == len) && crc32fast::hash(&body) == crc;
            let decoded = if valid { record::decode(Bytes::from(body)).ok() } else { None };
            match decoded {
                Some(event) if event.seq == self.next_seq => {
                    open.offset += (HEADER_LEN + len) as u64;
                    bytes += event.raw.len();
                    self.next_seq += 1;
                    events.push(event);
                    retried = false;
                }
                _ if !retried => {
                    // Bytes read ahead of the head may have been rewritten after a failed
                    // write; read the record again from the file before calling it damaged.
                    retried = true;
                    open.reader.seek(SeekFrom::Start(open.offset)).map_err(io_error(&open.segment.path))?;
                }
                _ => {
                    open.reader.seek(SeekFrom::Start(open.offset)).map_err(io_error(&open.segment.path))?;
                    // The events before the damage first, then the damage on a read of its own.
                    if events.is_empty() {
                        return self.quarantine(head);
                    }
                    break;
                }
            }
        }
        Ok(Read::Events(events))
    }

    /// The record at the reader's position fails its checksum (or does not decode): copies
    /// the damaged bytes aside and moves past them. When the record's length is readable, that
    /// is one record; otherwise the rest of the segment, up to the next segment (or past
    /// `head`, when this is the last one).
    fn quarantine(&mut self, head: u64) -> Result<Read, JournalError> {
        let Some(open) = self.open.take() else { return Ok(Read::Events(Vec::new())) };
        let Open { segment, mut reader, offset } = open;
        let file_len = reader.get_ref().metadata().map_err(io_error(&segment.path))?.len();
        let mut head_bytes = [0u8; HEADER_LEN];
        let length = match reader.read_exact(&mut head_bytes) {
            Ok(()) => {
                Some(header(&head_bytes).0 as u64 + HEADER_LEN as u64).filter(|n| offset + n <= file_len)
            }
            Err(_) => None,
        };
        let from = self.next_seq;
        let (to, end) = match length {
            Some(length) => (from + 1, offset + length),
            None => {
                let next = list_segments(&self.dir)?.into_iter().find(|s| s.first_seq > segment.first_seq);
                (next.map_or(head + 1, |n| n.first_seq).max(from + 1), file_len)
            }
        };
        let quarantined = if self.quarantine { self.copy_aside(&segment, offset, end).ok() } else { None };
        let name = segment.path.display();
        let reason = match to - from {
            1 => format!("journal record {from} in {name} at byte {offset} fails its checksum"),
            n => format!(
                "journal records {from}..{to} ({n}) in {name} from byte {offset} cannot be read: the length of the first is damaged"
            ),
        };
        if length.is_some() {
            reader.seek(SeekFrom::Start(end)).map_err(io_error(&segment.path))?;
            self.open = Some(Open { segment, reader, offset: end });
        }
        self.next_seq = to;
        Ok(Read::Damaged { from, to, reason, quarantined })
    }

    /// Copies bytes `start..end` of `segment` to the journal's `quarantine` directory.
    fn copy_aside(&self, segment: &Segment, start: u64, end: u64) -> std::io::Result<PathBuf> {
        let dir = self.dir.join("quarantine");
        if !dir.exists() {
            crate::private::create_dir(&dir)?;
        }
        let stem = segment.path.file_stem().and_then(|n| n.to_str()).unwrap_or("segment");
        let path = dir.join(format!("{stem}-at-{start}.bin"));
        let mut file = File::open(&segment.path)?;
        file.seek(SeekFrom::Start(start))?;
        let mut out = crate::private::create_file(&path, crate::private::FILE_MODE)?;
        std::io::copy(&mut file.take(end.saturating_sub(start)), &mut out)?;
        out.sync_all()?;
        Ok(path)
    }

    /// Opens the segment holding `next_seq` and seeks to it. Returns the oldest record kept
    /// when `next_seq` was removed by retention (the reader does not move: the caller says
    /// so first).
    fn position(&mut self) -> Result<Option<u64>, JournalError> {
        let segments = list_segments(&self.dir)?;
        // An empty segment before the end holds nothing (a failed roll's leftover).
        let last = segments.last().map(|s| s.first_seq);
        let holds = |s: &&Segment| s.first_seq <= self.next_seq && (s.len > 0 || Some(s.first_seq) == last);
        let Some(segment) = segments.iter().rev().find(holds).cloned() else {
            return match segments.first() {
                Some(oldest) => Ok(Some(oldest.first_seq)),
                None => Err(JournalError::Damaged {
                    path: self.dir.clone(),
                    offset: 0,
                    reason: "the journal has no segments".into(),
                }),
            };
        };
        let file = match File::open(&segment.path) {
            Ok(file) => file,
            // Removed by retention between listing and opening: list again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return self.position(),
            Err(e) => return Err(io_error(&segment.path)(e)),
        };
        let mut reader = BufReader::with_capacity(256 << 10, file);
        // A segment ends where the next one starts: a record past its end is not in it.
        match seek_to(&mut reader, &segment, self.next_seq)? {
            Some(offset) if offset < segment.len => self.open = Some(Open { segment, reader, offset }),
            _ => {
                let reason = match segments.iter().find(|s| s.first_seq > self.next_seq) {
                    Some(next) => format!(
                        "record {} is missing: this segment ends before it and the next one starts at {}",
                        self.next_seq, next.first_seq
                    ),
                    None => format!("record {} should be in this segment but it ends before", self.next_seq),
                };
                return Err(JournalError::Damaged {
                    path: segment.path.clone(),
                    offset: segment.len,
                    reason,
                });
            }
        }
        Ok(None)
    }
}
