//! What the relay asks Nomad for: several addresses tried in turn, where to start on a first
//! run (`oldest`, `now`, an index), Nomad's own CLI variables, and `tail`.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::EmulatorConfig;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use support::endpoint::{free_port, metric};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_address_is_skipped_for_the_next_one() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let config = scratch.config("http://127.0.0.1:1", "", "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "address = \"http://127.0.0.1:1\"",
        &format!("address = [\"http://127.0.0.1:1\", \"{}\"]", emulator.url()),
    );
    std::fs::write(&config, text).unwrap();
    let log = relay_everything(&scratch, &config, &emulator, WAIT).await;
    let failure = log
        .lines()
        .find(|line| line.contains("event stream failed"))
        .unwrap_or_else(|| panic!("no failed connection reported: {log}"));
    assert!(failure.contains("nomad=http://127.0.0.1:1"), "the failed address is named: {failure}");
    assert_eq!(stream_requests(&emulator).len(), 1, "the second address was taken once, and kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_begins_with_the_newest_batch_nomad_has() {
    let emulator = emulator(EmulatorConfig::default()).await;
    for index in [3, 5, 8] {
        emulator.publish(job(index, &format!("old-{index}")));
    }
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "start = \"now\"", "");
    let mut relay = Relay::start(&config);
    emulator.wait_for_connections(1).await;
    emulator.publish(job(9, "new-9"));
    emulator.publish(job(12, "new-12"));
    eventually("the newest old batch and the two new events", WAIT, || {
        (scratch.lines("events.ndjson").len() >= 3).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    // Nomad cannot start strictly after the present: asked for a future index it sends its
    // newest batch (8) first. Keeping it is what makes `now` lossless on an empty buffer.
    assert_eq!(
        scratch.lines("events.ndjson"),
        vec![
            job(8, "old-8").events[0].to_json(8),
            job(9, "new-9").events[0].to_json(9),
            job(12, "new-12").events[0].to_json(12)
        ]
    );
    assert_eq!(stream_requests(&emulator)[0].index, Some(i64::MAX));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_now_on_an_empty_nomad_keeps_the_first_new_batch() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "start = \"now\"", "");
    let mut relay = Relay::start(&config);
    emulator.wait_for_connections(1).await;
    emulator.publish(job(10, "first"));
    emulator.publish(job(11, "second"));
    eventually("both events", WAIT, || (scratch.lines("events.ndjson").len() >= 2).then_some(())).await;
    assert!(relay.terminate().success());
    assert_lines_equal(
        &scratch.lines("events.ndjson"),
        &expected_lines(&emulator.published(), DEFAULT_TOPICS),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_at_an_index_is_inclusive_and_nomad_variables_are_honoured() {
    let emulator = emulator(EmulatorConfig::default()).await;
    for index in [10, 20, 30] {
        emulator.publish(job(index, &format!("job-{index}")));
    }
    let scratch = Scratch::new();
    // No address in the file: NOMAD_ADDR supplies it, as for the nomad CLI.
    let config = scratch.config("http://replaced", "start = 20", "");
    let text = std::fs::read_to_string(&config).unwrap().replace("address = \"http://replaced\"\n", "");
    std::fs::write(&config, text).unwrap();
    let stderr = std::fs::File::create(scratch.path("relay.log")).unwrap();
    let mut child = relay_command(&["run", "--config", config.to_str().unwrap()])
        .env("NOMAD_ADDR", emulator.url())
        .env("NOMAD_TOKEN", "token-from-env")
        .stderr(stderr)
        .spawn()
        .unwrap();
    eventually("events from index 20", WAIT, || (scratch.lines("events.ndjson").len() >= 2).then_some(()))
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines, vec![job(20, "job-20").events[0].to_json(20), job(30, "job-30").events[0].to_json(30)]);
    let request = &stream_requests(&emulator)[0];
    assert_eq!(request.index, Some(20));
    assert_eq!(request.token.as_deref(), Some("token-from-env"));
    assert_eq!(request.namespace.as_deref(), Some("*"));
    assert_eq!(
        request.topics,
        DEFAULT_TOPICS.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "topics listed explicitly, never *"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_stream_without_a_journal() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(4, "a"));
    emulator.publish(job(6, "b"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut child = relay_command(&["tail", "--config", config.to_str().unwrap(), "--index", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next().unwrap().unwrap())
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first, job(6, "b").events[0].to_json(6));
    assert!(!scratch.path("data").exists(), "tail keeps no journal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_created_after_subscribing_is_picked_up() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "in-default"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "namespace_refresh = \"100ms\"", "");
    let mut relay = Relay::start(&config);
    eventually("the first event", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    // Nomad froze `*` to ["default"] for the open stream; a new namespace is invisible to it.
    let added = relay.mark();
    emulator.set_namespaces(vec!["default".into(), "team-b".into()]);
    emulator.wait_for_connections(2).await;
    // The resubscription came from the namespace watcher, not from a dropped connection.
    relay.wait_for_log_after(added, "event stream ended (namespace(s) [\"team-b\"] added)", WAIT).await;
    let mut event = job(7, "in-team-b").events.remove(0);
    event.namespace = "team-b".into();
    emulator.publish(nomad_emulator::Batch { index: 7, events: vec![event] });
    eventually("the event of the new namespace", WAIT, || {
        (scratch.lines("events.ndjson").len() == 2).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(
        &scratch.lines("events.ndjson"),
        &expected_lines(&emulator.published(), DEFAULT_TOPICS),
    );
    assert!(relay.log_since(added).contains("new Nomad namespace(s) [\"team-b\"]"), "{}", relay.log());
}

/// A batch of one Job event in `namespace`.
fn job_in(index: u64, key: &str, namespace: &str) -> nomad_emulator::Batch {
    let mut batch = job(index, key);
    batch.events[0].namespace = namespace.into();
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_created_below_the_checkpoint_is_caught_up_across_a_kill() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "in-default"));
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut relay = Relay::start(&config);
    eventually("the first event", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    let mark = relay.mark();
    // The namespace list answers slowly: the relay hears of the new namespace only after its
    // first event has fallen below the checkpoint.
    emulator.hold_namespace_lists(true);
    emulator.create_namespace("team-b", 4);
    emulator.publish(job_in(5, "in-team-b", "team-b"));
    emulator.publish(job(6, "after"));
    // The open stream's frozen list leaves out team-b: index 6 arrives, 5 does not.
    eventually("index 6", WAIT, || (scratch.lines("events.ndjson").len() == 2).then_some(())).await;
    // The catch-up subscription is refused until the relay is killed, so the kill lands
    // between the saved plan and the events it fetches.
    emulator.set_reject(Some(nomad_emulator::Reject::ServerError("No path to region".into())));
    emulator.hold_namespace_lists(false);
    relay.wait_for_log_after(mark, "resubscribing from index 4 to fetch their events up to 6", WAIT).await;
    assert_eq!(metric(port, "nomad_relay_source_namespace_catch_ups_total{source=\"default\"}"), Some(1.0));
    eventually("the refused catch-up subscription", WAIT, || {
        emulator.requests().iter().any(|r| r.path == "/v1/event/stream" && r.index == Some(4)).then_some(())
    })
    .await;
    relay.kill();
    assert_eq!(scratch.lines("events.ndjson").len(), 2, "nothing of team-b before the kill");

    emulator.set_reject(None);
    let before_restart = emulator.requests().len();
    let mut relay = Relay::start(&config);
    eventually("the event of the new namespace", WAIT, || {
        (scratch.lines("events.ndjson").len() == 3).then_some(())
    })
    .await;
    emulator.publish(job(7, "later"));
    eventually("index 7", WAIT, || (scratch.lines("events.ndjson").len() == 4).then_some(())).await;
    assert!(relay.terminate().success());
    let first_stream = emulator.requests()[before_restart..]
        .iter()
        .find(|r| r.path == "/v1/event/stream")
        .and_then(|r| r.index);
    assert_eq!(first_stream, Some(4), "the restart finishes the saved catch-up");
    let mut expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    // Delivered in the order the relay received them: index 5 came after 6.
    expected.swap(1, 2);
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
}
