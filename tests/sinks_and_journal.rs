//! Sink workers and the journal: a failing sink retries without holding back the others, a
//! full journal stops the source (or drops a sink's oldest events when it chose that), and
//! `replay` and `checkpoint show` work on what the journal holds.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{EmulatorConfig, GeneratorConfig};
use std::time::Duration;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn file_sink(scratch: &Scratch, name: &str, path: &std::path::Path, extra: &str) -> String {
    let _ = scratch;
    format!(
        "[sinks.{name}]\ntype = \"file\"\npath = \"{}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"100ms\"\n{extra}\n",
        path.display()
    )
}

async fn published(emulator: &nomad_emulator::Emulator, events: u64, seed: u64) -> Vec<String> {
    let generator = emulator.generator(GeneratorConfig {
        rate: None,
        total_events: Some(events),
        seed,
        ..GeneratorConfig::default()
    });
    generator.run().await;
    expected_lines(&emulator.published(), DEFAULT_TOPICS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_retries_until_it_recovers_while_the_others_keep_going() {
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let expected = published(&emulator, 2_000, 1).await;
    let scratch = Scratch::new();
    let missing_dir = scratch.path("not-yet");
    let flaky = missing_dir.join("events.ndjson");
    let config = scratch.config(&emulator.url(), "", &file_sink(&scratch, "flaky", &flaky, ""));
    let mut relay = Relay::start(&config);
    eventually("every event in the healthy sink", WAIT, || {
        (scratch.lines("events.ndjson").len() == expected.len()).then_some(())
    })
    .await;
    assert!(read_lines(&flaky).is_empty());
    let log = relay.wait_for_log("create its directory", WAIT).await;
    assert!(log.contains("sink=flaky"), "{log}");
    std::fs::create_dir_all(&missing_dir).unwrap();
    eventually("every event in the recovered sink", WAIT, || {
        (read_lines(&flaky).len() == expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    assert_lines_equal(&read_lines(&flaky), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_journal_stops_reading_nomad_until_the_stuck_sink_recovers() {
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let expected = published(&emulator, 1_500, 2).await;
    let scratch = Scratch::new();
    let missing_dir = scratch.path("later");
    let stuck = missing_dir.join("events.ndjson");
    let extra = format!(
        "{}[journal]\nsegment_bytes = \"64KiB\"\nmax_bytes = \"256KiB\"\n",
        file_sink(&scratch, "stuck", &stuck, "")
    );
    let config = scratch.config(&emulator.url(), "", &extra);
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("journal full", WAIT).await;
    assert!(log.contains("`stuck`"), "the warning names the sink holding the journal: {log}");
    // While full, the healthy sink cannot get past what the journal took in.
    let while_full = scratch.lines("events.ndjson").len();
    assert!(while_full < expected.len(), "the source must stop reading while the journal is full");
    std::fs::create_dir_all(&missing_dir).unwrap();
    eventually("every event in both sinks", WAIT, || {
        (scratch.lines("events.ndjson").len() == expected.len() && read_lines(&stuck).len() == expected.len())
            .then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    assert_lines_equal(&read_lines(&stuck), &expected);
    assert!(relay.log().contains("journal has room again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_accepts_drops_loses_its_oldest_events_and_holds_back_nobody() {
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let expected = published(&emulator, 1_500, 3).await;
    let scratch = Scratch::new();
    let missing_dir = scratch.path("later");
    let lossy = missing_dir.join("events.ndjson");
    let extra = format!(
        "{}[journal]\nsegment_bytes = \"64KiB\"\nmax_bytes = \"256KiB\"\n",
        file_sink(&scratch, "lossy", &lossy, "when_full = \"drop_oldest\"")
    );
    let config = scratch.config(&emulator.url(), "", &extra);
    let mut relay = Relay::start(&config);
    eventually("every event in the blocking sink", WAIT, || {
        (scratch.lines("events.ndjson").len() == expected.len()).then_some(())
    })
    .await;
    std::fs::create_dir_all(&missing_dir).unwrap();
    let log =
        relay.wait_for_log("were removed from the full journal before this sink delivered them", WAIT).await;
    assert!(log.contains("sink=lossy"), "{log}");
    let tail = eventually("the lossy sink catches up to the end", WAIT, || {
        let lines = read_lines(&lossy);
        (lines.last() == expected.last()).then_some(lines)
    })
    .await;
    assert!(tail.len() < expected.len(), "old events were dropped for the lossy sink");
    assert_lines_equal(&tail, &expected[expected.len() - tail.len()..]);
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_loses_nothing_and_the_restart_repeats_nothing() {
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(3_000.0),
        total_events: Some(6_000),
        seed: 4,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    let mut seen = 0;
    for _ in 0..3 {
        // Wait for this instance's own progress, so the signal arrives mid-run.
        seen = eventually("some progress", WAIT, || {
            let now = scratch.lines("events.ndjson").len();
            (now > seen + 100).then_some(now)
        })
        .await;
        let status = relay.terminate();
        assert!(status.success(), "SIGTERM is a clean exit, got {status:?}: {}", relay.log());
        relay = Relay::start(&config);
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    eventually("every event", WAIT, || {
        (scratch.lines("events.ndjson").len() >= expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_redelivers_a_range_and_the_next_run_keeps_it() {
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let expected = published(&emulator, 300, 5).await;
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    eventually("every event", WAIT, || {
        (scratch.lines("events.ndjson").len() == expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());

    let from = index_and_type(&expected[100]).0;
    let to = index_and_type(&expected[200]).0;
    let output = relay_command(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--sink",
        "out",
        "--from-index",
        &from.to_string(),
        "--to-index",
        &to.to_string(),
    ])
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replayed: Vec<String> =
        expected.iter().filter(|l| (from..=to).contains(&index_and_type(l).0)).cloned().collect();
    assert!(String::from_utf8_lossy(&output.stdout).contains(&format!("replayed {} events", replayed.len())));
    let mut want = expected.clone();
    want.extend(replayed);
    assert_lines_equal(&scratch.lines("events.ndjson"), &want);

    // The next run neither cuts the replayed lines (its checkpoint moved with them) nor
    // repeats anything; new events follow them.
    let more = published(&emulator, 50, 6).await;
    want.extend(more[expected.len()..].iter().cloned());
    let mut relay = Relay::start(&config);
    eventually("the new events", WAIT, || (scratch.lines("events.ndjson").len() == want.len()).then_some(()))
        .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &want);

    let output =
        relay_command(&["checkpoint", "show", "--config", config.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let last_index = index_and_type(want.last().unwrap()).0;
    assert!(text.contains(&format!("resumes at Nomad index {last_index}")), "{text}");
    assert!(text.contains(&format!("last Nomad index {last_index}, 0 records pending")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sink_is_exactly_once_from_its_very_first_batch() {
    // The file already has content when the sink is first configured: the sink must only
    // ever cut back to what it found, and a crash right after its first batch must not
    // leave that batch twice.
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    std::fs::write(scratch.path("events.ndjson"), "operator's own line\n").unwrap();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    let cursor_path = scratch.path("data/cursors/out.json");
    eventually("the sink's first cursor", WAIT, || cursor_path.exists().then_some(())).await;
    let cursor: serde_json::Value = serde_json::from_slice(&std::fs::read(&cursor_path).unwrap()).unwrap();
    assert_eq!(cursor["sink_state"]["length"], 20, "the length the sink found is saved before any delivery");
    let expected = published(&emulator, 200, 8).await;
    eventually("the first batch", WAIT, || (scratch.lines("events.ndjson").len() > 1).then_some(())).await;
    relay.kill();
    let mut relay = Relay::start(&config);
    eventually("every event", WAIT, || (scratch.lines("events.ndjson").len() > expected.len()).then_some(()))
        .await;
    // The first run may have written everything before it was killed: wait for the restart
    // to be up (its own "sink ready") before asking it to stop.
    eventually("the restarted relay's sink", WAIT, || {
        (relay.log().matches("sink ready").count() >= 2).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let mut want = vec!["operator's own line".to_owned()];
    want.extend(expected);
    assert_lines_equal(&scratch.lines("events.ndjson"), &want);
}
