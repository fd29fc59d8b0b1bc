//! Journal tests: what is written is read back in order, a torn tail is cut at recovery, the
//! checkpoint is rebuilt across segments, and retention respects cursors.

use super::board::CursorBoard;
use super::reader::{JournalReader, Read};
use super::writer::JournalWriter;
use super::*;
use crate::config::JournalConfig;
use crate::config::{ByteSize, HumanDuration};
use bytes::Bytes;
use nomad_relay_sink_api::{Envelope, EventId};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::sync::watch;

fn event(index: u64, key: &str, size: usize) -> Envelope {
    Envelope {
        seq: 0,
        id: EventId {
            index,
            digest: crate::source::resume::digest("default", "Job", "JobRegistered", "default", key),
            occurrence: 0,
        },
        key: key.into(),
        raw: Bytes::from(format!("{{\"Key\":\"{key}\",\"Pad\":\"{}\"}}", "x".repeat(size))),
        ..Envelope::example()
    }
}

/// Sources by name, each its own id scope.
fn named(names: &[&str]) -> Vec<SourceName> {
    names.iter().map(|name| SourceName { name: (*name).into(), scope: (*name).into() }).collect()
}

fn sources() -> Vec<SourceName> {
    named(&["default"])
}

fn config(segment: u64, max: u64) -> JournalConfig {
    JournalConfig {
        max_bytes: ByteSize(max),
        max_age: HumanDuration(Duration::from_secs(3600)),
        segment_bytes: ByteSize(segment),
        ..JournalConfig::default()
    }
}

struct Running {
    sender: crate::journal::handoff::EventSender,
    head: watch::Receiver<u64>,
    thread: std::thread::JoinHandle<()>,
}

fn start(dir: &Path, config: JournalConfig, board: Arc<CursorBoard>) -> Running {
    let names = named(&["default", "eu", "us"]);
    let recovered = recover(dir, Recovery::Repair, &names).expect("recover");
    let (writer, head) = JournalWriter::open(
        dir,
        config,
        (recovered.segments, recovered.head, recovered.checkpoints),
        board,
        Arc::new(AtomicBool::new(false)),
    )
    .expect("open writer");
    let (sender, receiver) = crate::journal::handoff::handoff(16, 1 << 20);
    let thread = std::thread::spawn(move || writer.run(receiver));
    Running { sender, head, thread }
}

impl Running {
    async fn write(&mut self, batch: Vec<Envelope>) -> u64 {
        self.try_write(batch, Duration::from_secs(30)).await.expect("the write completes")
    }

    /// Writes `batch` and waits up to `timeout` for it to be durable: the new head, or `None`
    /// while the writer is held back.
    async fn try_write(&mut self, batch: Vec<Envelope>, timeout: Duration) -> Option<u64> {
        let before = *self.head.borrow();
        self.sender.send(batch).await.expect("writer alive");
        let moved = tokio::time::timeout(timeout, self.head.wait_for(|head| *head > before)).await;
        moved.ok().map(|head| *head.expect("head moves"))
    }

    fn stop(self) {
        drop(self.sender);
        self.thread.join().expect("writer thread");
    }
}

fn read_all(dir: &Path, from: u64, head: u64) -> Vec<Envelope> {
    let mut reader = JournalReader::new(dir.to_owned(), from);
    let mut events = Vec::new();
    loop {
        match reader.read(head, 7, 1 << 20).expect("read") {
            Read::Events(batch) if batch.is_empty() => return events,
            Read::Events(batch) => events.extend(batch),
            Read::Skipped { from, to } => panic!("unexpected skip {from}..{to}"),
            Read::Damaged { reason, .. } => panic!("unexpected damage: {reason}"),
        }
    }
}

#[tokio::test]
async fn events_come_back_in_order_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(4096, 1 << 30), Arc::default());
    let mut head = 0;
    for index in 1..=50u64 {
        head = journal.write(vec![event(index, "a", 300), event(index, "b", 10)]).await;
    }
    journal.stop();
    assert_eq!(head, 100);
    assert!(list_segments(dir.path()).expect("list").len() > 5, "small segments roll");
    let events = read_all(dir.path(), 1, head);
    assert_eq!(events.len(), 100);
    for (position, event) in events.iter().enumerate() {
        assert_eq!(event.seq, position as u64 + 1);
        assert_eq!(event.id.index, position as u64 / 2 + 1);
    }
    // A reader can start anywhere.
    let tail = read_all(dir.path(), 77, head);
    assert_eq!(tail.first().map(|e| e.seq), Some(77));
    assert_eq!(tail.len(), 24);
}

#[tokio::test]
async fn recovery_cuts_a_torn_record_and_rebuilds_the_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    journal.write(vec![event(10, "a", 5)]).await;
    journal.write(vec![event(11, "a", 5), event(11, "b", 5)]).await;
    journal.write(vec![event(11, "c", 5)]).await;
    journal.stop();
    // A crash in the middle of the next write leaves half a record behind.
    let last = list_segments(dir.path()).expect("list").pop().expect("segment");
    let mut torn = Vec::new();
    record::encode(5, &event(12, "d", 100), &mut torn).expect("encode");
    let mut file = fs::OpenOptions::new().append(true).open(&last.path).expect("open");
    file.write_all(&torn[..torn.len() / 2]).expect("write");
    drop(file);

    let recovered = recover(dir.path(), Recovery::Repair, &sources()).expect("recover");
    assert_eq!(recovered.head, 4);
    let checkpoint = recovered.checkpoints["default"].clone();
    assert_eq!(checkpoint.index, 11);
    assert_eq!(checkpoint.seen.len(), 3, "every id at the last index, across writes");
    assert_eq!(fs::metadata(&last.path).expect("metadata").len(), last.len, "the torn half-record is gone");
    // Writing continues cleanly after the cut.
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    assert_eq!(journal.write(vec![event(12, "d", 5)]).await, 5);
    journal.stop();
    assert_eq!(read_all(dir.path(), 1, 5).len(), 5);
}

#[tokio::test]
async fn the_checkpoint_gathers_ids_from_earlier_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(4096, 1 << 30), Arc::default());
    journal.write(vec![event(1, "first", 10)]).await;
    for key in 0..30 {
        journal.write(vec![event(2, &format!("k{key}"), 500)]).await;
    }
    journal.stop();
    assert!(list_segments(dir.path()).expect("list").len() > 2);
    let checkpoint =
        recover(dir.path(), Recovery::ReadOnly, &sources()).expect("recover").checkpoints["default"].clone();
    assert_eq!(checkpoint.index, 2);
    assert_eq!(checkpoint.seen.len(), 30);
}

#[tokio::test]
async fn retention_keeps_what_a_blocking_sink_needs_and_skips_a_dropping_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let board = Arc::new(CursorBoard::default());
    let blocking = board.register("blocking", 1, false);
    board.register("dropping", 1, true);
    let mut journal = start(dir.path(), config(4096, 16384), board.clone());
    let size = || list_segments(dir.path()).expect("list").iter().map(|s| s.len).sum::<u64>();
    // Write until a write is held back: the journal is full and `blocking` still needs
    // record 1 (a dropping sink does not hold it).
    let mut head = 0;
    loop {
        match journal.try_write(vec![event(head + 1, "a", 900)], Duration::from_millis(300)).await {
            Some(new_head) => head = new_head,
            None => break,
        }
        assert!(head < 100, "the journal took {head} records of 900 bytes within 16 KiB");
    }
    assert!(size() <= 16384 + 4096, "held within max_bytes plus a segment: {} bytes", size());
    assert_eq!(
        list_segments(dir.path()).expect("list").first().map(|s| s.first_seq),
        Some(1),
        "nothing the blocking sink needs was removed"
    );
    // The blocking sink moves on: the held write goes through, and old segments go, though
    // `dropping` never read them.
    board.update(blocking, head + 1);
    head = journal.head.wait_for(|h| *h > head).await.map(|h| *h).expect("the held write completes");
    for _ in 0..10 {
        head = journal.write(vec![event(head + 1, "a", 900)]).await;
    }
    journal.stop();
    let oldest = list_segments(dir.path()).expect("list").first().map(|s| s.first_seq).expect("segment");
    assert!(oldest > 1, "consumed segments were removed");
    let mut reader = JournalReader::new(dir.path().to_owned(), 1);
    match reader.read(head, 100, 1 << 20).expect("read") {
        Read::Skipped { from, to } => assert_eq!((from, to), (1, oldest)),
        Read::Events(_) => panic!("the dropping sink's oldest events are gone"),
        Read::Damaged { reason, .. } => panic!("unexpected damage: {reason}"),
    }
    assert!(
        matches!(reader.read(head, 100, 1 << 20).expect("read"), Read::Events(events) if events[0].seq == oldest)
    );
}

#[tokio::test]
async fn each_source_gets_its_own_checkpoint_even_when_it_was_quiet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(4096, 1 << 30), Arc::default());
    // `eu` writes twice at index 7, then only `us` writes for several segments.
    journal.write(vec![from("eu", 7, "a")]).await;
    journal.write(vec![from("eu", 7, "b")]).await;
    for index in 100..140 {
        journal.write(vec![from("us", index, "x")]).await;
    }
    journal.stop();
    assert!(list_segments(dir.path()).expect("list").len() > 3);
    let names = named(&["eu", "us", "asia"]);
    let recovered = recover(dir.path(), Recovery::ReadOnly, &names).expect("recover");
    assert_eq!(recovered.checkpoints["eu"].index, 7);
    assert_eq!(recovered.checkpoints["eu"].seen.len(), 2);
    assert_eq!(recovered.checkpoints["us"].index, 139);
    assert!(!recovered.checkpoints.contains_key("asia"), "a source that never wrote starts fresh");
}

/// An event of `source` at `index`.
fn from(source: &str, index: u64, key: &str) -> Envelope {
    let mut event = event(index, key, 400);
    event.source = source.to_owned();
    event
}

/// Journals two events of `eu` at index 7, then `us` at 100..200 with a sink keeping up, until
/// retention removed eu's records (a quiet source). The board, the sink's slot, the head.
async fn a_quiet_source_behind_a_busy_one(dir: &Path) -> (Arc<CursorBoard>, super::board::Slot, u64) {
    let board = Arc::new(CursorBoard::default());
    let sink = board.register("out", 1, false);
    let mut journal = start(dir, config(4096, 16384), board.clone());
    let mut head = journal.write(vec![from("eu", 7, "a"), from("eu", 7, "b")]).await;
    for index in 100..200 {
        board.update(sink, head + 1);
        head = journal.write(vec![from("us", index, "x")]).await;
    }
    journal.stop();
    (board, sink, head)
}

#[tokio::test]
async fn retention_never_takes_a_quiet_sources_checkpoint_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (board, sink, mut head) = a_quiet_source_behind_a_busy_one(dir.path()).await;
    assert!(list_segments(dir.path()).expect("list")[0].first_seq > 2, "eu's records were removed");
    let names = named(&["eu", "us"]);
    let recovered = recover(dir.path(), Recovery::Repair, &names).expect("recover");
    assert_eq!(recovered.checkpoints["eu"].index, 7);
    assert_eq!(recovered.checkpoints["eu"].seen.len(), 2);
    assert_eq!(recovered.checkpoints["us"].index, 199);
    // And after more writes and removals, on a restarted writer.
    let mut journal = start(dir.path(), config(4096, 16384), board.clone());
    for index in 200..300 {
        board.update(sink, head + 1);
        head = journal.write(vec![from("us", index, "x")]).await;
    }
    journal.stop();
    let recovered = recover(dir.path(), Recovery::ReadOnly, &names).expect("recover");
    assert_eq!(recovered.checkpoints["eu"].index, 7);
    assert_eq!(recovered.checkpoints["us"].index, 299);
}

#[tokio::test]
async fn a_reader_whose_segments_retention_removed_under_it_skips_to_the_oldest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(4096, 1 << 30), Arc::default());
    let mut head = 0;
    for index in 1..=60u64 {
        head = journal.write(vec![event(index, "a", 300)]).await;
    }
    journal.stop();
    let segments = list_segments(dir.path()).expect("list");
    assert!(segments.len() > 4, "small segments roll");
    // A `drop_oldest` sink's reader is inside the first segment when retention removes it
    // and the next one (the reader keeps the first open, and reads it to its end).
    let mut reader = JournalReader::new(dir.path().to_owned(), 1);
    let first = match reader.read(head, 2, 1 << 20).expect("read") {
        Read::Events(events) => events,
        other => panic!("nothing removed yet: {other:?}"),
    };
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    fs::remove_file(&segments[0].path).expect("remove");
    fs::remove_file(&segments[1].path).expect("remove");
    let mut seqs = Vec::new();
    let skipped = loop {
        match reader.read(head, 100, 1 << 20).expect("no error: the records were removed, not damaged") {
            Read::Events(events) => seqs.extend(events.iter().map(|e| e.seq)),
            Read::Skipped { from, to } => break (from, to),
            Read::Damaged { reason, .. } => panic!("unexpected damage: {reason}"),
        }
    };
    assert_eq!(seqs, (3..segments[1].first_seq).collect::<Vec<_>>(), "the open segment is read to its end");
    assert_eq!(skipped, (segments[1].first_seq, segments[2].first_seq));
    match reader.read(head, 1, 1 << 20).expect("read") {
        Read::Events(events) => assert_eq!(events[0].seq, segments[2].first_seq),
        other => panic!("not the next events: {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_segment_between_two_kept_ones_is_damage_not_a_skip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(4096, 1 << 30), Arc::default());
    let mut head = 0;
    for index in 1..=60u64 {
        head = journal.write(vec![event(index, "a", 300)]).await;
    }
    journal.stop();
    let segments = list_segments(dir.path()).expect("list");
    fs::remove_file(&segments[1].path).expect("remove");
    let mut reader = JournalReader::new(dir.path().to_owned(), 1);
    let error = loop {
        match reader.read(head, 100, 1 << 20) {
            Ok(Read::Events(_)) => {}
            Ok(Read::Skipped { from, to }) => {
                panic!("records {from}..{to} skipped: retention never leaves a hole")
            }
            Ok(Read::Damaged { reason, .. }) => panic!("a missing segment is not a damaged record: {reason}"),
            Err(error) => break error.to_string(),
        }
    };
    assert!(error.contains(&format!("record {}", segments[1].first_seq)), "{error}");
}

#[tokio::test]
async fn an_empty_segment_left_by_a_failed_roll_is_neither_read_nor_written_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    let mut head = 0;
    for index in 1..=20u64 {
        head = journal.write(vec![event(index, "a", 100)]).await;
    }
    journal.stop();
    // A roll at record 11 created its file and then failed; the writer went on in the old
    // segment, so records 11..=20 are there and `11.seg` is empty.
    File::create(segment_path(dir.path(), 11)).expect("stray segment");
    let recovered = recover(dir.path(), Recovery::Repair, &sources()).expect("recover");
    assert_eq!(recovered.head, 20, "the head is the last record written, not the stray file's start");
    assert_eq!(
        read_all(dir.path(), 1, head).len(),
        20,
        "records 11..=20 are read from the segment that holds them"
    );
    // A writer opened on it continues at 21, never writing 11 again.
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    assert_eq!(journal.write(vec![event(21, "a", 100)]).await, 21);
    journal.stop();
    let events = read_all(dir.path(), 1, 21);
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=21).collect::<Vec<_>>());
}

/// Flips a byte in the body of record `seq` of the journal's first segment.
fn damage_record(dir: &Path, seq: u64) {
    let segment = list_segments(dir).expect("list").into_iter().next().expect("a segment");
    let mut bytes = fs::read(&segment.path).expect("read");
    let mut offset = 0usize;
    for _ in segment.first_seq..seq {
        let (len, _) = record::header(bytes[offset..offset + record::HEADER_LEN].try_into().expect("header"));
        offset += record::HEADER_LEN + len;
    }
    bytes[offset + record::HEADER_LEN + 40] ^= 0xff;
    fs::write(&segment.path, bytes).expect("write");
}

#[tokio::test]
async fn a_damaged_record_is_quarantined_and_reading_goes_on_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    let mut head = 0;
    for index in 1..=10u64 {
        head = journal.write(vec![event(index, "a", 200)]).await;
    }
    journal.stop();
    damage_record(dir.path(), 5);
    let mut reader = JournalReader::new(dir.path().to_owned(), 1);
    let mut seen = Vec::new();
    let mut damage = None;
    loop {
        match reader.read(head, 100, 1 << 20).expect("no error: damage is reported, not fatal") {
            Read::Events(events) if events.is_empty() => break,
            Read::Events(events) => seen.extend(events.iter().map(|e| e.seq)),
            Read::Damaged { from, to, reason, quarantined } => damage = Some((from, to, reason, quarantined)),
            Read::Skipped { from, to } => panic!("skipped {from}..{to}"),
        }
    }
    assert_eq!(seen, [1, 2, 3, 4, 6, 7, 8, 9, 10]);
    let (from, to, reason, quarantined) = damage.expect("the damage is reported");
    assert_eq!((from, to), (5, 6));
    assert!(reason.contains("journal record 5") && reason.contains("fails its checksum"), "{reason}");
    let quarantined = quarantined.expect("copied aside");
    assert!(fs::metadata(&quarantined).expect("quarantine file").len() > 200);
}

#[tokio::test]
async fn a_renamed_source_keeps_the_checkpoint_its_old_name_left_including_a_saved_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `eu` (scope `eu`) writes at index 7; `us` writes until retention removed eu's records.
    a_quiet_source_behind_a_busy_one(dir.path()).await;
    // `eu` becomes `europe`, same scope; `us` becomes `america` and takes scope `us` too.
    let renamed = [
        SourceName { name: "europe".into(), scope: "eu".into() },
        SourceName { name: "america".into(), scope: "us".into() },
    ];
    let recovered = recover(dir.path(), Recovery::Repair, &renamed).expect("recover");
    assert_eq!(recovered.checkpoints["europe"].index, 7, "from the saved checkpoints file");
    assert_eq!(recovered.checkpoints["europe"].seen.len(), 2);
    assert_eq!(recovered.checkpoints["america"].index, 199, "from the records");
    // The old names are remembered beside the new ones, so a second rename still finds them.
    let again = [SourceName { name: "emea".into(), scope: "eu".into() }];
    let recovered = recover(dir.path(), Recovery::ReadOnly, &again).expect("recover");
    assert_eq!(recovered.checkpoints["emea"].index, 7);
    // A name's own records count whatever its scope (an id_scope changed in place keeps the
    // cluster's position; only the ids change).
    let rescoped = [SourceName { name: "us".into(), scope: "asia".into() }];
    let recovered = recover(dir.path(), Recovery::ReadOnly, &rescoped).expect("recover");
    assert_eq!(recovered.checkpoints["us"].index, 199);
    let fresh = [SourceName { name: "asia".into(), scope: "asia".into() }];
    let recovered = recover(dir.path(), Recovery::ReadOnly, &fresh).expect("recover");
    assert!(!recovered.checkpoints.contains_key("asia"), "a new source starts fresh");
}

#[tokio::test]
async fn a_source_without_id_scope_keeps_the_scope_its_events_had() {
    use super::names::{Configured, resolve};
    let configured = |sources: &[(&str, Option<&str>)]| -> Vec<Configured> {
        sources
            .iter()
            .map(|(name, scope)| Configured { name: (*name).into(), id_scope: scope.map(String::from) })
            .collect()
    };
    let scopes = |dir: &Path, sources: &[(&str, Option<&str>)]| -> Vec<String> {
        resolve(dir, &configured(sources)).expect("resolve").into_iter().map(|s| s.scope).collect()
    };
    // A fresh data_dir: `default` for one source, the names for several.
    let fresh = tempfile::tempdir().expect("tempdir");
    assert_eq!(scopes(fresh.path(), &[("east", None)]), ["default"]);
    assert_eq!(scopes(fresh.path(), &[("eu", None), ("us", None)]), ["eu", "us"]);
    assert_eq!(scopes(fresh.path(), &[("eu", Some("x")), ("us", None)]), ["x", "us"]);
    // A journal an older relay wrote (no names.json): its records' name was the scope.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut journal = start(dir.path(), config(1 << 20, 1 << 30), Arc::default());
    let mut from_eu = event(7, "a", 100);
    from_eu.source = "eu".into();
    journal.write(vec![from_eu]).await;
    journal.stop();
    let _ = std::fs::remove_file(dir.path().join("names.json"));
    assert_eq!(scopes(dir.path(), &[("eu", None)]), ["eu"], "the same name keeps its ids");
    assert_eq!(scopes(dir.path(), &[("europe", None)]), ["eu"], "the only source, renamed");
    assert_eq!(scopes(dir.path(), &[("europe", None), ("us", None)]), ["europe", "us"]);
    // Once names.json records it, a rename of the only source keeps the scope.
    let names = [SourceName { name: "eu".into(), scope: "eu".into() }];
    recover(dir.path(), Recovery::Repair, &names).expect("recover");
    assert_eq!(scopes(dir.path(), &[("emea", None)]), ["eu"]);
    assert_eq!(scopes(dir.path(), &[("eu", None), ("us", None)]), ["eu", "us"]);
}
