//! The worker's rules, tested alone: a real journal in a temporary directory, the worker
//! driving a scripted in-memory sink, and the calls it made and the cursors it saved read
//! back.

use super::*;
use crate::config::HumanDuration;
use crate::journal::handoff::handoff;
use crate::journal::writer::JournalWriter;
use crate::journal::{Recovery, recover};
use crate::stats::FAILURE_KINDS;
use nomad_relay_sink_api::EventId;
use nomad_relay_sink_api::testing::{Answer, Call, Kind, Method, ScriptedSink};
use std::sync::atomic::AtomicBool;

/// A journal holding events 1..=count (event n at Nomad index 100 + n), in a temporary
/// directory that lives as long as this.
struct Journal {
    dir: tempfile::TempDir,
    head: watch::Receiver<u64>,
    board: Arc<CursorBoard>,
}

async fn journal(count: u64) -> Journal {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal_dir = dir.path().join("journal");
    let sources = [crate::journal::SourceName { name: "default".into(), scope: "default".into() }];
    let recovered = recover(&journal_dir, Recovery::Repair, &sources).expect("recover");
    let board = Arc::new(CursorBoard::default());
    let (writer, mut head) = JournalWriter::open(
        &journal_dir,
        crate::config::JournalConfig::default(),
        (recovered.segments, recovered.head, recovered.checkpoints),
        board.clone(),
        Arc::new(AtomicBool::new(false)),
    )
    .expect("writer");
    let (sender, receiver) = handoff(16, 1 << 20);
    std::thread::spawn(move || writer.run(receiver));
    for n in 1..=count {
        let id = EventId { index: 100 + n, digest: n, occurrence: 0 };
        sender.send(vec![Envelope { id, ..Envelope::example() }]).await.expect("writer alive");
    }
    head.wait_for(|head| *head == count).await.expect("journaled");
    // The writer stops when the sender goes; the head it published stays readable.
    drop(sender);
    Journal { dir, head, board }
}

impl Journal {
    fn data_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A worker over this journal for `sink`, reading `batch_size` events at a time and
    /// retrying after `retry` (1 ms to 5 ms when `None`).
    fn worker(
        &self,
        sink: ScriptedSink,
        batch_size: usize,
        retry: Option<Duration>,
    ) -> SinkWorker<ScriptedSink> {
        let retry = retry.unwrap_or(Duration::from_millis(1));
        let settings = CommonSinkConfig {
            batch_size,
            retry_min_delay: HumanDuration(retry),
            retry_max_delay: HumanDuration(retry * 5),
            ..CommonSinkConfig::default()
        };
        SinkWorker {
            name: "test".into(),
            sink,
            settings,
            cursor: Cursor::new("test", 1),
            data_dir: self.data_dir(),
            journal_dir: self.dir.path().join("journal"),
            router: Arc::new(Router::new(Vec::new())),
            slot: self.board.register("test", 1, false),
            board: self.board.clone(),
            head: self.head.clone(),
            stats: Arc::default(),
            parked: Parked::default(),
        }
    }

    /// The worker's saved cursor: (next_seq, the delivered count the scripted sink saved).
    fn saved(&self) -> (u64, u64) {
        let cursor = cursor::load(&self.data_dir(), "test").expect("load").expect("a saved cursor");
        let state = cursor.sink_state.as_ref().and_then(|s| s["delivered"].as_u64()).unwrap_or(0);
        (cursor.next_seq(), state)
    }
}

/// Runs `worker` until its cursor is past `last` (the whole journal), then stops it; the
/// worker's counters.
async fn run_to_end(worker: SinkWorker<ScriptedSink>, last: u64) -> Arc<SinkStats> {
    let stats = worker.stats.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while stats.cursor.load(Ordering::Relaxed) <= last {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    shutdown.cancel();
    running.await.expect("worker task").expect("worker");
    assert!(waited.is_ok(), "the cursor did not get past {last}");
    stats
}

fn call(method: Method, seqs: impl IntoIterator<Item = u64>) -> Call {
    Call { method, seqs: seqs.into_iter().collect() }
}

use Method::{Confirm, Send as Sent, Submit};

#[tokio::test]
async fn failed_events_are_sent_again_alone_in_journal_order_then_the_cursor_moves() {
    let journal = journal(8).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Each(vec![Kind::Delivered, Kind::Retry, Kind::Delivered, Kind::Retry])]);
    let stats = run_to_end(journal.worker(sink, 4, None), 8).await;
    assert_eq!(script.calls(), [call(Sent, 1..=4), call(Sent, [2, 4]), call(Sent, 5..=8)]);
    assert_eq!(script.delivered(), [1, 3, 2, 4, 5, 6, 7, 8]);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 8);
    assert_eq!(journal.saved(), (9, 8));
}

#[tokio::test]
async fn rejected_and_duplicate_events_are_final_and_counted_apart() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Each(vec![Kind::Rejected, Kind::Duplicate, Kind::Delivered, Kind::Duplicate])]);
    let stats = run_to_end(journal.worker(sink, 4, None), 4).await;
    assert_eq!(script.calls(), [call(Sent, 1..=4)], "nothing is sent again");
    assert_eq!(stats.rejected.load(Ordering::Relaxed), 1);
    assert_eq!(stats.duplicates.load(Ordering::Relaxed), 2);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    assert_eq!(journal.saved().0, 5);
}

#[tokio::test]
async fn a_deferral_saves_the_cursor_at_the_first_pending_event_with_the_sinks_state_first() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    // Event 1 goes; 2..4 wait for the state to be saved; the re-send then hangs, so the
    // cursor saved for the deferral can be read.
    script.then([
        Answer::Each(vec![Kind::Delivered, Kind::Deferred, Kind::Deferred, Kind::Deferred]),
        Answer::Hang,
    ]);
    let worker = journal.worker(sink, 4, Some(Duration::from_secs(60)));
    let running = tokio::spawn(worker.run(CancellationToken::new()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while script.calls().len() < 2 {
        assert!(std::time::Instant::now() < deadline, "no second send: {:?}", script.calls());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.abort();
    assert_eq!(script.calls(), [call(Sent, 1..=4), call(Sent, 2..=4)], "sent again at once, not after 60 s");
    assert_eq!(journal.saved(), (2, 1), "the cursor at event 2, saved with the state after event 1");
}

#[tokio::test]
async fn a_sink_that_defers_twice_in_a_row_is_backed_off_not_spun_on() {
    let journal = journal(2).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Defer, Answer::Defer]);
    let stats = run_to_end(journal.worker(sink, 2, None), 2).await;
    assert_eq!(script.calls(), [call(Sent, 1..=2), call(Sent, 1..=2), call(Sent, 1..=2)]);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2, "the second deferral counts as a failed attempt");
}

#[tokio::test]
async fn an_outcome_count_that_does_not_match_the_batch_sends_the_whole_batch_again() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Count(2)]);
    let stats = run_to_end(journal.worker(sink, 4, None), 4).await;
    assert_eq!(script.calls(), [call(Sent, 1..=4), call(Sent, 1..=4)]);
    assert_eq!(script.delivered(), [1, 2, 3, 4], "nothing counted from the malformed answer");
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn a_failure_in_the_pipeline_confirms_everything_in_flight_then_resends_in_order() {
    let journal = journal(12).await;
    let (sink, script) = ScriptedSink::new(2);
    // Confirms: batch 1 delivered, batch 2 fails, batch 3 (in flight meanwhile) delivered.
    script.then([Answer::Deliver, Answer::Fail, Answer::Deliver]);
    run_to_end(journal.worker(sink, 4, None), 12).await;
    assert_eq!(
        script.calls(),
        [
            call(Submit, 1..=4),
            call(Submit, 5..=8),
            call(Confirm, 1..=4),
            call(Submit, 9..=12),
            call(Confirm, 5..=8),
            call(Confirm, 9..=12),
            call(Sent, 5..=8),
        ]
    );
    assert_eq!(script.delivered(), [1, 2, 3, 4, 9, 10, 11, 12, 5, 6, 7, 8]);
    assert_eq!(journal.saved().0, 13);
}

#[tokio::test]
async fn a_batch_settled_at_submit_waits_for_the_batches_in_flight_before_it() {
    let journal = journal(8).await;
    let (sink, script) = ScriptedSink::new(2);
    // Batch 1 goes in flight; batch 2 is deferred at once (as the Kafka sink defers a batch
    // for a new topic): batch 1 is confirmed first, and the cursor saved past it, with the
    // state after it, before batch 2 is sent again.
    script.then_on_submit([Answer::InFlight, Answer::Defer]);
    run_to_end(journal.worker(sink, 4, None), 8).await;
    assert_eq!(
        script.calls(),
        [call(Submit, 1..=4), call(Submit, 5..=8), call(Confirm, 1..=4), call(Sent, 5..=8)]
    );
    assert_eq!(script.delivered(), (1..=8).collect::<Vec<_>>());
    assert_eq!(journal.saved(), (9, 8));
}

#[tokio::test]
async fn the_pipeline_runs_empty_at_least_every_drain_every_batches() {
    let journal = journal(60).await;
    let (sink, script) = ScriptedSink::new(2);
    run_to_end(journal.worker(sink, 2, None), 60).await;
    let (mut in_flight, mut since_empty, mut most) = (0usize, 0usize, 0usize);
    for call in script.calls() {
        match call.method {
            Submit => {
                in_flight += 1;
                since_empty += 1;
                most = most.max(since_empty);
            }
            Confirm => in_flight -= 1,
            Sent => {}
        }
        assert!(in_flight <= 2, "more batches in flight than the sink's depth");
        if in_flight == 0 {
            since_empty = 0;
        }
    }
    assert!(most <= DRAIN_EVERY, "{most} batches went in without the pipeline running empty");
    assert!(most >= 2, "the pipeline was never used");
}

#[tokio::test]
async fn shutdown_during_a_retry_saves_the_cursor_at_the_first_undelivered_event() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Each(vec![Kind::Delivered, Kind::Delivered, Kind::Retry, Kind::Retry])]);
    let worker = journal.worker(sink, 4, Some(Duration::from_secs(60)));
    let stats = worker.stats.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.retried.load(Ordering::Relaxed) == 0 {
        assert!(std::time::Instant::now() < deadline, "no retry");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), running).await;
    stopped.expect("stopped without waiting out the 60 s back-off").expect("task").expect("worker");
    assert_eq!(journal.saved(), (3, 2), "events 1 and 2 passed, 3 first to send after a restart");
    assert_eq!(script.calls().len(), 1);
}

#[tokio::test]
async fn the_saved_cursor_never_moves_backwards() {
    let journal = journal(40).await;
    let (sink, script) = ScriptedSink::new(2);
    // Batches of 3, two deep: batch 2 (events 4-6) defers one event and fails another while
    // batch 3 (7-9) is in flight and fails; the five left over (4, 6, 7, 8, 9) are deferred
    // once more, then three of them fail again.
    script.then([
        Answer::Deliver,
        Answer::Each(vec![Kind::Deferred, Kind::Delivered, Kind::Retry]),
        Answer::Fail,
        Answer::Defer,
        Answer::Each(vec![Kind::Retry, Kind::Delivered, Kind::Retry, Kind::Delivered, Kind::Retry]),
    ]);
    let path = cursor::cursor_path(&journal.data_dir(), "test");
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = std::thread::spawn({
        let watching = watching.clone();
        move || {
            let mut seen = Vec::new();
            while watching.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read(&path)
                    && let Ok(cursor) = serde_json::from_slice::<Cursor>(&text)
                {
                    seen.push(cursor.next_seq());
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            seen
        }
    });
    run_to_end(journal.worker(sink, 3, None), 40).await;
    watching.store(false, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    assert!(seen.windows(2).all(|pair| pair[0] <= pair[1]), "the cursor went back: {seen:?}");
    assert_eq!(seen.last(), Some(&41));
    let mut delivered = script.delivered();
    delivered.sort_unstable();
    delivered.dedup();
    assert_eq!(delivered, (1..=40).collect::<Vec<_>>(), "every event delivered");
}

#[tokio::test]
async fn a_cursor_that_cannot_be_saved_holds_the_sink_back_until_it_can_not_the_relay() {
    let journal = journal(8).await;
    // `cursors` is a file, so no cursor can be written (as on a full disk).
    let blocked = journal.data_dir().join("cursors");
    std::fs::write(&blocked, b"in the way").expect("write");
    let (sink, script) = ScriptedSink::new(1);
    let worker = journal.worker(sink, 4, None);
    let stats = worker.stats.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.failures[FAILURE_KINDS.iter().position(|k| *k == SinkErrorKind::Io).expect("io")]
        .load(Ordering::Relaxed)
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "no failed save counted");
        assert!(!running.is_finished(), "the worker stopped on a failed cursor save");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(!stats.healthy.load(Ordering::Relaxed), "unhealthy while its cursor cannot be saved");
    assert!(script.calls().is_empty(), "nothing delivered past a cursor that could not be saved");
    std::fs::remove_file(&blocked).expect("remove");
    while stats.cursor.load(Ordering::Relaxed) <= 8 {
        assert!(std::time::Instant::now() < deadline, "the cursor never got saved");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    running.await.expect("task").expect("worker");
    assert_eq!(journal.saved(), (9, 8));
}

#[tokio::test]
async fn a_parked_event_is_set_aside_the_rest_go_on_and_the_cursor_waits_for_it() {
    let journal = journal(6).await;
    let (sink, script) = ScriptedSink::new(1);
    // Event 2's destination is broken: parked. Offered again, it fails once more, then goes.
    script.then([
        Answer::Each(vec![Kind::Delivered, Kind::Parked]),
        Answer::Deliver,
        Answer::Deliver,
        Answer::Fail,
        Answer::Deliver,
    ]);
    let worker = journal.worker(sink, 2, Some(Duration::from_millis(100)));
    let stats = worker.stats.clone();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while script.calls().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "no offer of the parked event: {:?}", script.calls());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Events 3..6 are delivered, but the saved cursor stays at the parked event.
    assert_eq!(journal.saved().0, 2, "{:?}", script.calls());
    assert_eq!(stats.parked.load(Ordering::Relaxed), 1);
    while stats.cursor.load(Ordering::Relaxed) <= 6 {
        assert!(std::time::Instant::now() < deadline, "the cursor did not pass the parked event");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    running.await.expect("worker task").expect("worker");
    assert_eq!(
        script.calls(),
        [call(Sent, 1..=2), call(Sent, 3..=4), call(Sent, 5..=6), call(Sent, [2]), call(Sent, [2])]
    );
    assert_eq!(script.delivered(), [1, 3, 4, 5, 6, 2]);
    assert_eq!(stats.parked.load(Ordering::Relaxed), 0);
    assert_eq!(journal.saved().0, 7);
}

#[tokio::test]
async fn parked_events_past_their_bound_stop_the_reading_until_they_go() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Each(vec![Kind::Parked, Kind::Delivered])]);
    let mut worker = journal.worker(sink, 2, None);
    worker.settings.max_parked_bytes = crate::config::ByteSize(1);
    run_to_end(worker, 4).await;
    // One parked event fills a bound of one byte: it is offered before anything more is read.
    assert_eq!(script.calls(), [call(Sent, 1..=2), call(Sent, [1]), call(Sent, 3..=4)]);
    assert_eq!(journal.saved().0, 5);
}

#[tokio::test]
async fn without_room_to_park_an_event_is_retried_in_place() {
    let journal = journal(2).await;
    let (sink, script) = ScriptedSink::new(1);
    script.then([Answer::Each(vec![Kind::Parked, Kind::Delivered])]);
    let mut worker = journal.worker(sink, 2, None);
    worker.settings.max_parked_bytes = crate::config::ByteSize(0);
    run_to_end(worker, 2).await;
    assert_eq!(script.calls(), [call(Sent, 1..=2), call(Sent, [1])]);
}

#[tokio::test]
async fn a_deferral_while_parked_events_are_offered_keeps_the_cursor_before_them() {
    let journal = journal(4).await;
    let (sink, script) = ScriptedSink::new(1);
    // Event 2 is parked; 3 and 4 go. Offered again, it is deferred (the sink found its
    // destination and must save its state first), then its second send hangs.
    script.then([
        Answer::Each(vec![Kind::Delivered, Kind::Parked]),
        Answer::Deliver,
        Answer::Defer,
        Answer::Hang,
    ]);
    let worker = journal.worker(sink, 2, Some(Duration::from_millis(20)));
    let running = tokio::spawn(worker.run(CancellationToken::new()));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while script.calls().len() < 4 {
        assert!(std::time::Instant::now() < deadline, "no second send of the offer: {:?}", script.calls());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.abort();
    assert_eq!(script.calls()[2..], [call(Sent, [2]), call(Sent, [2])]);
    assert_eq!(journal.saved().0, 2, "the cursor saved for the deferral is not past the offered event");
}

#[tokio::test]
async fn a_parked_event_without_room_is_retried_together_with_the_parked_ones() {
    let journal = journal(2).await;
    let (sink, script) = ScriptedSink::new(1);
    // Both events parked; a one-byte bound takes the first only, so the second is retried in
    // place, and the parked one goes with it (a sink holding newer events behind parked ones
    // would otherwise park it again for ever).
    script.then([Answer::Each(vec![Kind::Parked, Kind::Parked]), Answer::Deliver]);
    let mut worker = journal.worker(sink, 2, None);
    worker.settings.max_parked_bytes = crate::config::ByteSize(1);
    let stats = run_to_end(worker, 2).await;
    assert_eq!(script.calls(), [call(Sent, 1..=2), call(Sent, 1..=2)]);
    assert_eq!(stats.parked.load(Ordering::Relaxed), 0);
    assert_eq!(journal.saved().0, 3);
}
