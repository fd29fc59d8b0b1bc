//! How the relay copes with what Nomad does on the wire: evicted checkpoints (gaps), a
//! restarted server with an empty buffer, refused subscriptions in both framings, a silent
//! connection, huge and malformed lines, and several lines sharing one Index.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{AclConfig, AclToken, Batch, Cut, EmulatorConfig, Event, Framing};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::endpoint::{free_port, metric};
use support::*;

fn gap_line(last: u64, resumed: u64) -> String {
    format!(
        r#"{{"Topic":"NomadRelay","Type":"GapDetected","Key":"","Namespace":"","FilterKeys":null,"Index":{resumed},"Payload":{{"Gap":{{"LastIndex":{last},"ResumedIndex":{resumed}}}}}}}"#
    )
}

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_checkpoint_is_reported_as_a_gap_marker_every_sink_receives() {
    let emulator = emulator(EmulatorConfig { buffer_size: 10, ..EmulatorConfig::default() }).await;
    for index in [5, 8, 9] {
        emulator.publish(job(index, &format!("before-{index}")));
    }
    let scratch = Scratch::new();
    let extra = format!(
        "[sinks.audit]\ntype = \"file\"\npath = \"{}\"\n[[routes]]\ntopics = [\"Node\"]\nsinks = [\"audit\"]\n[[routes]]\ntopics = [\"*\"]\nsinks = [\"out\"]\n",
        scratch.path("audit.ndjson").display()
    );
    let config = scratch.config(&emulator.url(), "", &extra);
    let mut relay = Relay::start(&config);
    eventually("3 events", WAIT, || (scratch.lines("events.ndjson").len() == 3).then_some(())).await;
    assert!(relay.terminate().success());

    // While the relay is down, Nomad moves on and evicts index 9 from its 10-batch buffer.
    for index in 20..40 {
        emulator.publish(job(index, &format!("after-{index}")));
    }
    let mut relay = Relay::start(&config);
    eventually("the events Nomad still had", WAIT, || {
        (scratch.lines("events.ndjson").len() == 3 + 1 + 10).then_some(())
    })
    .await;
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines[3], gap_line(9, 30));
    let retained: Vec<Batch> = emulator.published().into_iter().filter(|b| b.index >= 30).collect();
    assert_lines_equal(&lines[4..], &expected_lines(&retained, DEFAULT_TOPICS));
    // The route sends only Node events to `audit`, but the gap marker reaches it too.
    eventually("the marker in the audit sink", WAIT, || {
        (scratch.lines("audit.ndjson") == vec![gap_line(9, 30)]).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    // Read again once the relay has stopped: nothing came late or twice.
    assert_eq!(scratch.lines("events.ndjson"), lines);
    assert_eq!(scratch.lines("audit.ndjson"), vec![gap_line(9, 30)]);
    assert!(relay.own_log().contains("possible gap"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_index_nomad_evicted_is_reported_as_a_gap() {
    // Nomad keeps 10 batches: 1..=10 are evicted by 11..=20.
    let emulator = emulator(EmulatorConfig { buffer_size: 10, ..EmulatorConfig::default() }).await;
    for index in 1..=20 {
        emulator.publish(job(index, &format!("job-{index}")));
    }
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "start = 5", "");
    let mut relay = Relay::start(&config);
    eventually("the marker and the ten events Nomad still has", WAIT, || {
        (scratch.lines("events.ndjson").len() >= 11).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 11);
    assert_eq!(index_and_type(&lines[0]), (11, "GapDetected".to_owned()));
    assert!(
        lines[0].contains("\"Gap\":{\"LastIndex\":4,\"ResumedIndex\":11,\"Reason\":\"start = 5: Nomad's first event is at Index 11"),
        "{}",
        lines[0]
    );
    assert_eq!(stream_requests(&emulator)[0].index, Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_nomad_with_an_empty_buffer_is_followed_and_flagged() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(100, "a"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    eventually("first event", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    emulator.restart(false);
    emulator.wait_for_connections(2).await;
    emulator.publish(job(150, "b"));
    eventually("the marker and the new event", WAIT, || {
        (scratch.lines("events.ndjson").len() == 3).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 3, "nothing more after the relay stopped");
    assert_eq!(lines[1], gap_line(100, 150));
    assert_eq!(lines[2], job(150, "b").events[0].to_json(150));
}

fn acl_emulator_config(framing: Framing) -> EmulatorConfig {
    EmulatorConfig {
        framing,
        acl: Some(AclConfig {
            tokens: vec![AclToken {
                secret: "good-token".into(),
                management: false,
                namespace_capabilities: HashMap::from([("default".to_owned(), vec!["read-job".to_owned()])]),
                node_read: true,
                expires_at: None,
            }],
        }),
        ..EmulatorConfig::default()
    }
}

async fn refused_subscription_is_explained_and_retried_slowly(framing: Framing, expected_text: &str) {
    let emulator = emulator(acl_emulator_config(framing)).await;
    emulator.publish(job(10, "web"));
    let scratch = Scratch::new();
    let token_file = scratch.path("token");
    std::fs::write(&token_file, "wrong-token\n").unwrap();
    let config = scratch.config(
        &emulator.url(),
        &format!(
            "namespace = \"default\"\ntopics = [\"Job\", \"Node\"]\ntoken_file = \"{}\"",
            token_file.display()
        ),
        "",
    );
    let mut relay = Relay::start(&config);
    emulator.wait_for_connections(2).await;
    let requests = stream_requests(&emulator);
    let pause = requests[1].at.duration_since(requests[0].at);
    assert!(
        pause >= Duration::from_millis(900),
        "a refusal must back off (denied_min_delay = 1s), got {pause:?}"
    );
    let log = relay.wait_for_log("refused", WAIT).await;
    assert!(log.contains(expected_text), "{log}");
    assert!(log.contains("Job need namespace capability `read-job` in namespace `default`"), "{log}");
    assert!(log.contains("Node need `node { policy = \"read\" }`"), "{log}");
    assert!(!log.contains("wrong-token"), "tokens never appear in logs");
    assert_eq!(requests[0].token.as_deref(), Some("wrong-token"));

    // The operator fixes the token file; the next attempt reads it again and gets through.
    std::fs::write(&token_file, "good-token\n").unwrap();
    eventually("the event after the fix", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(()))
        .await;
    assert!(relay.terminate().success());
    let log = relay.log();
    assert!(!log.contains("wrong-token") && !log.contains("good-token"), "tokens never appear in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_refusal_200_then_close_is_reported_as_a_permission_problem() {
    refused_subscription_is_explained_and_retried_slowly(
        Framing::Modern,
        "closed the stream before its first heartbeat",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_refusal_403_is_reported_as_a_permission_problem() {
    refused_subscription_is_explained_and_retried_slowly(
        Framing::Legacy,
        "HTTP 403 Forbidden: Permission denied",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_dropped_by_the_watchdog() {
    // Heartbeats well inside the idle timeout keep a quiet stream open; silence does not.
    let emulator = emulator(EmulatorConfig {
        heartbeat_interval: Duration::from_millis(200),
        ..EmulatorConfig::default()
    })
    .await;
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "idle_timeout = \"1s\"", "");
    let mut relay = Relay::start(&config);
    emulator.wait_for_open_streams(1).await;
    // An observation window: heartbeats alone, three idle timeouts long, and no reconnect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(emulator.connection_count(), 1, "a stream with heartbeats was dropped as idle");
    let stall = relay.mark();
    emulator.set_stalled(true);
    let stalled_at = Instant::now();
    emulator.wait_for_connections(2).await;
    // The timer runs from the last byte received, a heartbeat at most 200 ms before the stall.
    let silent = stalled_at.elapsed();
    assert!(
        silent >= Duration::from_millis(750),
        "reconnected {silent:?} into the stall, before the idle timeout"
    );
    emulator.set_stalled(false);
    emulator.publish(job(7, "after-stall"));
    eventually("the event after the stall", WAIT, || {
        (scratch.lines("events.ndjson").len() == 1).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert!(relay.log_since(stall).contains("no data for 1s"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_many_megabytes_is_relayed_intact() {
    let emulator = emulator(EmulatorConfig { fragment_writes: Some(3), ..EmulatorConfig::default() }).await;
    let huge = Batch {
        index: 42,
        events: (0..40)
            .map(|i| Event {
                topic: "Allocation".into(),
                key: format!("alloc-{i}"),
                ..job_event("x", "PlanResult", 512 << 10)
            })
            .collect(),
    };
    emulator.publish(huge);
    emulator.publish(job(43, "after"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    relay_everything(&scratch, &config, &emulator, Duration::from_secs(60)).await;
    assert_eq!(scratch.lines("events.ndjson").len(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_limit_becomes_a_gap_marker_not_a_crash() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(10, "small"));
    emulator.publish(Batch { index: 11, events: vec![job_event("big", "JobRegistered", 2 << 20)] });
    emulator.publish(job(12, "next"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "max_line_bytes = \"1MiB\"", "");
    let mut relay = Relay::start(&config);
    eventually("3 lines", WAIT, || (scratch.lines("events.ndjson").len() == 3).then_some(())).await;
    assert!(relay.is_running());
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 3, "nothing more after the relay stopped");
    assert_eq!(lines[0], job(10, "small").events[0].to_json(10));
    assert_eq!(index_and_type(&lines[1]), (11, "GapDetected".to_owned()));
    assert!(lines[1].contains("exceeds nomad.max_line_bytes"), "{}", lines[1]);
    assert_eq!(lines[2], job(12, "next").events[0].to_json(12));
    assert!(relay.log().contains("exceeds `nomad.max_line_bytes`"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_is_reported_and_skipped() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(10, "good"));
    let mut broken = job_event("broken", "JobRegistered", 10);
    broken.payload = "{\"Job\":".into();
    emulator.publish(Batch { index: 11, events: vec![broken] });
    emulator.publish(job(12, "also-good"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    eventually("3 lines", WAIT, || (scratch.lines("events.ndjson").len() == 3).then_some(())).await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 3, "nothing more after the relay stopped");
    assert_eq!(lines[0], job(10, "good").events[0].to_json(10));
    assert_eq!(index_and_type(&lines[1]), (11, "GapDetected".to_owned()));
    assert!(lines[1].contains("malformed line"), "{}", lines[1]);
    assert_eq!(lines[2], job(12, "also-good").events[0].to_json(12));
    assert!(relay.log().contains("not a valid event frame"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_lines_with_one_index_survive_a_cut_between_them() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(10, "web"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    eventually("the job line", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    // The evaluation line of the same raft index is cut half-way; the relay must reconnect
    // with index=10 (inclusive), skip the job line it has, and take the evaluation line.
    emulator.cut_connections(Cut::MidLine);
    let evaluation = Event {
        topic: "Evaluation".into(),
        event_type: "JobRegistered".into(),
        key: "eval-1".into(),
        namespace: "default".into(),
        filter_keys: Some(vec!["web".into(), "".into()]),
        payload: r#"{"Evaluation":{"ID":"eval-1","JobID":"web"}}"#.into(),
    };
    emulator.publish(Batch { index: 10, events: vec![evaluation] });
    emulator.wait_for_connections(2).await;
    emulator.publish(job(11, "next"));
    eventually("3 events", WAIT, || (scratch.lines("events.ndjson").len() >= 3).then_some(())).await;
    assert!(relay.terminate().success());
    assert_lines_equal(
        &scratch.lines("events.ndjson"),
        &expected_lines(&emulator.published(), DEFAULT_TOPICS),
    );
    let second = &stream_requests(&emulator)[1];
    assert_eq!(second.index, Some(10), "resume is inclusive: index=N, not N+1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_evicted_from_the_start_of_an_index_are_a_gap_and_the_rest_is_not_taken_for_them() {
    // Nomad keeps 3 lines. Two lines share index 10; the second changes `web` again (same
    // Topic, Type, Namespace and Key) after another job: the relay has the first line when it
    // is killed.
    let emulator = emulator(EmulatorConfig { buffer_size: 3, ..EmulatorConfig::default() }).await;
    let first = Batch { index: 10, events: vec![job_event("web", "JobRegistered", 1)] };
    let second = Batch {
        index: 10,
        events: vec![job_event("api", "JobRegistered", 1), job_event("web", "JobRegistered", 2)],
    };
    emulator.publish(first.clone());
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    eventually("the first line at 10", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(()))
        .await;
    relay.kill();
    // While it is down, the second line at 10 arrives and the first is evicted.
    emulator.publish(second.clone());
    emulator.publish(job(11, "a"));
    emulator.publish(job(12, "b"));
    assert_eq!(emulator.buffered().first().map(|b| b.index), Some(10), "one line at 10 is left");
    assert_eq!(emulator.buffered().len(), 3);
    let mut relay = Relay::start(&config);
    eventually("the marker and the lines Nomad still had", WAIT, || {
        (scratch.lines("events.ndjson").len() >= 6).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 6, "{lines:#?}");
    assert_eq!(lines[0], first.events[0].to_json(10));
    assert_eq!(index_and_type(&lines[1]), (10, "GapDetected".to_owned()));
    assert!(lines[1].contains("no longer holds the first lines at this Index"), "{}", lines[1]);
    // The second change of `web` was not taken for the first (the same id once renumbered).
    assert_lines_equal(&lines[2..4], &expected_lines(&[second], DEFAULT_TOPICS));
    assert_lines_equal(&lines[4..], &expected_lines(&emulator.buffered()[1..], DEFAULT_TOPICS));
    assert!(relay.own_log().contains("possible gap"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_that_goes_backwards_is_reported_not_silently_dropped() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(5000, "before-rebuild"));
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(
        &emulator.url(),
        "index_reset_after = \"1s\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut relay = Relay::start(&config);
    eventually("the first event", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    // The cluster is rebuilt: a new raft log starts from low indexes.
    emulator.rebuild();
    emulator.wait_for_connections(2).await;
    for index in 10..20 {
        emulator.publish(job(index, &format!("after-{index}")));
    }
    let log = relay.wait_for_log("went backwards", WAIT).await;
    assert!(log.contains("below the index the relay already has (5000)"), "{log}");
    // Still below after `index_reset_after`: journaled as an IndexReset event, once.
    eventually("the IndexReset event", WAIT, || (scratch.lines("events.ndjson").len() == 2).then_some(()))
        .await;
    let series = "nomad_relay_source_index_resets_total{source=\"default\"}";
    assert_eq!(metric(port, series), Some(1.0));
    let reconnected = emulator.connection_count();
    emulator.cut_connections(Cut::Clean);
    emulator.wait_for_connections(reconnected + 1).await;
    emulator.publish(job(20, "after-20"));
    eventually("a second report after the reconnect", WAIT, || {
        (metric(port, series) == Some(2.0)).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(
        lines.len(),
        2,
        "lines below the checkpoint are not journaled, the event is journaled once: {lines:#?}"
    );
    let reset: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(
        (reset["Topic"].as_str(), reset["Type"].as_str(), reset["Index"].as_u64()),
        (Some("NomadRelay"), Some("IndexReset"), Some(5000))
    );
    assert_eq!(reset["Payload"]["IndexReset"]["LastIndex"], 5000);
    let resumed = reset["Payload"]["IndexReset"]["ResumedIndex"].as_u64().unwrap();
    assert!((10..20).contains(&resumed), "{resumed}");
    assert!(relay.own_log().contains("give this source a new `id_scope`"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lags_and_catches_up_is_not_an_index_reset() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(100, "a"));
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(
        &emulator.url(),
        "index_reset_after = \"2s\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut relay = Relay::start(&config);
    eventually("the first event", WAIT, || (scratch.lines("events.ndjson").len() == 1).then_some(())).await;
    // The relay reconnects to a server that is behind: its lines are below 100 for a while.
    emulator.restart(false);
    emulator.wait_for_connections(2).await;
    emulator.publish(job(97, "behind"));
    emulator.publish(job(98, "behind"));
    relay.wait_for_log("below the index the relay already has (100)", WAIT).await;
    emulator.publish(job(101, "caught-up"));
    eventually("the next event", WAIT, || (scratch.lines("events.ndjson").len() == 2).then_some(())).await;
    // What is under test is a duration: past `index_reset_after` from the first line below
    // the checkpoint, nothing is reported, since the server caught up.
    emulator.publish(job(102, "later"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(port, "nomad_relay_source_index_resets_total{source=\"default\"}"), Some(0.0));
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(!lines.iter().any(|l| l.contains("IndexReset")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_index_above_nomads_is_not_an_index_reset() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(5, "old"));
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(
        &emulator.url(),
        "start = 1000\nindex_reset_after = \"1s\"",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut relay = Relay::start(&config);
    emulator.wait_for_connections(1).await;
    // Nomad answers a start index it does not have yet with its newest batch (5), below it.
    // What is under test is a duration: past `index_reset_after`, nothing is reported.
    tokio::time::sleep(Duration::from_secs(2)).await;
    emulator.publish(job(1000, "wanted"));
    eventually("the event at the start index", WAIT, || {
        (scratch.lines("events.ndjson").len() == 1).then_some(())
    })
    .await;
    assert_eq!(metric(port, "nomad_relay_source_index_resets_total{source=\"default\"}"), Some(0.0));
    assert!(relay.terminate().success());
    assert_eq!(scratch.lines("events.ndjson"), vec![job(1000, "wanted").events[0].to_json(1000)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_cut_at_max_line_bytes_after_decompression() {
    // Nomad before 1.11.2 compresses the stream when asked: a 64 MiB line of one repeated
    // byte arrives as about 64 KiB of gzip.
    let emulator = emulator(EmulatorConfig { framing: Framing::Legacy, ..EmulatorConfig::default() }).await;
    emulator.publish(job(10, "small"));
    emulator.publish(Batch { index: 11, events: vec![job_event("bomb", "JobRegistered", 64 << 20)] });
    emulator.publish(job(12, "next"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "max_line_bytes = \"1MiB\"", "");
    let mut relay = Relay::start(&config);
    eventually("3 lines", WAIT, || (scratch.lines("events.ndjson").len() == 3).then_some(())).await;
    let peak = relay.peak_resident_bytes();
    assert!(relay.terminate().success());
    assert!(stream_requests(&emulator)[0].accept_encoding.as_deref().is_some_and(|e| e.contains("gzip")));
    let lines = scratch.lines("events.ndjson");
    assert_eq!(index_and_type(&lines[1]), (11, "GapDetected".to_owned()));
    assert!(lines[1].contains("exceeds nomad.max_line_bytes"), "{}", lines[1]);
    assert_eq!(lines[2], job(12, "next").events[0].to_json(12));
    // The line was dropped as it was decompressed, never held whole.
    assert!(peak < 48 << 20, "the relay peaked at {} MiB", peak >> 20);
}

/// What a broken or malicious server can send, each line after a good one: an `Index` that is
/// a string, negative or beyond u64; invalid UTF-8 and a raw NUL in a key; an event that is
/// not an object. Each is logged and becomes a gap marker; a payload nested 100,000 deep and
/// a line of 10,000 events are valid and relayed whole; the relay runs on to the last line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_lines_are_each_a_logged_gap_and_valid_extremes_are_relayed() {
    let emulator = emulator(EmulatorConfig::default()).await;
    let event = |key: &str| {
        format!(r#"{{"Topic":"Job","Type":"JobRegistered","Key":"{key}","Index":11,"Payload":{{}}}}"#)
    };
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("a string Index", format!(r#"{{"Index":"11","Events":[{}]}}"#, event("a")).into_bytes()),
        ("a negative Index", format!(r#"{{"Index":-11,"Events":[{}]}}"#, event("b")).into_bytes()),
        (
            "an Index beyond u64",
            format!(r#"{{"Index":18446744073709551616,"Events":[{}]}}"#, event("c")).into_bytes(),
        ),
        (
            "invalid UTF-8",
            [
                &br#"{"Index":11,"Events":[{"Topic":"Job","Type":"T","Key":""#[..],
                b"\xff\xfe",
                br#"","Payload":{}}]}"#,
            ]
            .concat(),
        ),
        (
            "a raw NUL",
            [
                &br#"{"Index":11,"Events":[{"Topic":"Job","Type":"T","Key":"a"#[..],
                b"\0",
                br#"b","Payload":{}}]}"#,
            ]
            .concat(),
        ),
        ("an event that is a number", br#"{"Index":11,"Events":[7]}"#.to_vec()),
    ];
    emulator.publish(job(10, "before"));
    for (_, line) in &hostile {
        emulator.publish_hostile_line(11, line.clone());
    }
    let depth = 100_000;
    let mut deep = job_event("deep", "JobRegistered", 0);
    deep.payload = format!(r#"{{"Job":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    emulator.publish(Batch { index: 12, events: vec![deep.clone()] });
    let many: Vec<Event> = (0..10_000).map(|n| job_event(&format!("job-{n}"), "JobRegistered", 0)).collect();
    emulator.publish(Batch { index: 13, events: many });
    emulator.publish(job(14, "after"));

    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "", "");
    let mut relay = Relay::start(&config);
    let expected = 1 + hostile.len() + 1 + 10_000 + 1;
    eventually("every line relayed or marked", WAIT, || {
        (scratch.lines("events.ndjson").len() >= expected).then_some(())
    })
    .await;
    assert!(relay.is_running());
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), expected, "nothing more after the relay stopped");
    assert_eq!(lines[0], job(10, "before").events[0].to_json(10));
    for (n, (what, _)) in hostile.iter().enumerate() {
        let marker = &lines[1 + n];
        assert_eq!(index_and_type(marker).1, "GapDetected", "{what}: {marker}");
        assert!(marker.contains("a malformed line of"), "{what}: {marker}");
    }
    assert_eq!(lines[1 + hostile.len()], deep.to_json(12), "the deep payload byte for byte");
    assert_eq!(index_and_type(&lines[expected - 2]), (13, "JobRegistered".to_owned()));
    assert_eq!(lines[expected - 1], job(14, "after").events[0].to_json(14));
    let log = relay.log();
    let skipped = log.matches("skipping a line Nomad sent that is not a valid event frame").count();
    assert_eq!(skipped, hostile.len(), "one log line per hostile line: {log}");
}

/// A server that answers the subscription's headers and then never sends a byte: the
/// watchdog reconnects after `idle_timeout`, says so, and the stream resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_after_the_headers_is_left_after_the_idle_timeout() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.set_stalled(true);
    emulator.publish(job(5, "waiting"));
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), "idle_timeout = \"1s\"", "");
    let mut relay = Relay::start(&config);
    emulator.wait_for_connections(2).await;
    assert!(scratch.lines("events.ndjson").is_empty(), "nothing came through the silent stream");
    emulator.set_stalled(false);
    eventually("the event once the server speaks", WAIT, || {
        (scratch.lines("events.ndjson").len() == 1).then_some(())
    })
    .await;
    assert!(relay.is_running());
    assert!(relay.terminate().success());
    assert!(relay.log().contains("no data for 1s"), "{}", relay.log());
}
