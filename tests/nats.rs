//! The NATS sink against real nats-server processes: JetStream exactly-once across SIGKILLs
//! and across a broker restart, core NATS, and the failures an operator meets (bad
//! credentials, no stream, a message over max_payload).

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{Batch, EmulatorConfig, GeneratorConfig};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use support::endpoint::{free_port, wait_until_unhealthy};
use support::nats::{OwnedServer, Stored, delete_stream, read_stream, read_stream_as, shared_url, unique};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn nats_sink(url: &str, prefix: &str, stream: &str, extra: &str) -> String {
    format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Topic}}}}.{{{{Type}}}}\"\nstream = \"{stream}\"\ncreate_stream = true\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\n{extra}\n"
    )
}

fn topic_and_type(line: &str) -> (String, String) {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    (value["Topic"].as_str().unwrap().to_owned(), value["Type"].as_str().unwrap().to_owned())
}

/// Every expected event stored exactly once, in order within each subject, each under the
/// `Nats-Msg-Id` its event's identity gives (computed here from what Nomad sent, not read
/// from the relay), which is what lets JetStream recognise a re-send.
fn assert_exactly_once_in_subject_order(
    stored: &[Stored],
    expected: &[String],
    ids: &[(String, String)],
    prefix: &str,
) {
    let mut want_ids: HashMap<&str, Vec<&str>> = HashMap::new();
    for (line, id) in ids {
        want_ids.entry(line).or_default().push(id);
    }
    let mut got_ids: HashMap<&str, Vec<&str>> = HashMap::new();
    for message in stored {
        got_ids.entry(&message.payload).or_default().push(&message.msg_id);
    }
    for (line, got) in &mut got_ids {
        let want = want_ids.get_mut(line).unwrap_or_else(|| panic!("stored an event never sent: {line}"));
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "Nats-Msg-Id of {line}");
    }
    assert_eq!(
        stored.len(),
        expected.len(),
        "stored {} messages for {} events",
        stored.len(),
        expected.len()
    );
    let mut by_subject: HashMap<String, Vec<&str>> = HashMap::new();
    for message in stored {
        by_subject.entry(message.subject.clone()).or_default().push(&message.payload);
    }
    let mut expected_by_subject: HashMap<String, Vec<&str>> = HashMap::new();
    for line in expected {
        let (topic, event_type) = topic_and_type(line);
        expected_by_subject.entry(format!("{prefix}.{topic}.{event_type}")).or_default().push(line);
    }
    assert_eq!(by_subject.len(), expected_by_subject.len());
    for (subject, want) in expected_by_subject {
        assert_eq!(
            by_subject.get(&subject),
            Some(&want),
            "subject {subject}: events missing, repeated or out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_exactly_once_across_sigkills() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig {
        buffer_size: 1_000_000,
        fragment_writes: Some(31),
        ..EmulatorConfig::default()
    })
    .await;
    let scratch = Scratch::new();
    let (prefix, stream) = (unique("kill"), unique("KILL"));
    let port = free_port();
    let sink = nats_sink(&url, &prefix, &stream, "");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(30_000),
        seed: 31,
        ..GeneratorConfig::default()
    };
    let kills = deliver_through_sigkills(&scratch, &config, port, &emulator, generator, "nats").await;
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    // Kills landed between a publish and its cursor save: the restarts re-sent events that
    // JetStream already held, and it said so.
    let absorbed = kills.relay.log().matches(RE_SENT).count();
    assert!(
        absorbed > 0,
        "no duplicate PubAck after {} kills: no re-send happened, so the test proved nothing",
        kills.total
    );
    assert_exactly_once_in_subject_order(
        &stored,
        &kills.expected,
        &expected_ids(&emulator.published()),
        &prefix,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_after_the_duplicate_window_send_nothing_the_stream_already_holds() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let (prefix, stream) = (unique("window"), unique("WINDOW"));
    let port = free_port();
    // JetStream forgets a message id 1 s after storing it; the relay stays down 2 s after each
    // kill, so every event it had in flight is forgotten by the time it is sent again.
    let sink = nats_sink(&url, &prefix, &stream, "duplicate_window = \"1s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = GeneratorConfig {
        rate: Some(2_000.0),
        total_events: Some(32_000),
        seed: 33,
        ..GeneratorConfig::default()
    };
    let kills = deliver_through_sigkills_down_for(
        &scratch,
        &config,
        port,
        &emulator,
        generator,
        "nats",
        Duration::from_secs(2),
    )
    .await;
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    // The restarts read the stream and found events they had sent before the kill: the fault
    // landed where the window matters, and the sink, not JetStream, kept them single.
    let log = kills.relay.log();
    let found: usize = log
        .lines()
        .filter_map(|line| {
            line.split(" messages, ").nth(1)?.split(" of them the relay's").next()?.parse::<usize>().ok()
        })
        .sum();
    assert!(found > 0, "no restart found events the stream already held after {} kills", kills.total);
    assert!(log.contains(RE_SENT), "the events found were counted as already at the destination");
    assert_exactly_once_in_subject_order(
        &stored,
        &kills.expected,
        &expected_ids(&emulator.published()),
        &prefix,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_the_source_keeps_event_ids_and_its_place_in_the_journal() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let (prefix, stream) = (unique("rename"), unique("RENAME"));
    let config = scratch.config(&emulator.url(), "", &nats_sink(&url, &prefix, &stream, ""));
    let publish = |seed| {
        emulator.generator(GeneratorConfig {
            rate: Some(5_000.0),
            total_events: Some(2_000),
            seed,
            ..GeneratorConfig::default()
        })
    };
    publish(41).run().await;
    relay_everything(&scratch, &config, &emulator, WAIT).await;
    let first_run = stream_requests(&emulator).len();
    // `[nomad]` becomes `[[nomad]] name = "east"`, as an operator adding a second cluster
    // would start; Nomad still holds every event in its buffer.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("[nomad]\n", "[[nomad]]\nname = \"east\"\n", 1)).unwrap();
    publish(42).run().await;
    // The file sink holds each event once (the renamed source resumed from its old name's
    // checkpoint rather than journaling Nomad's buffer again) ...
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let mut relay = Relay::start(&config);
    eventually("every event in the file and in JetStream", WAIT, || {
        let file_done = scratch.lines("events.ndjson").len() >= expected.len();
        (file_done && scratch.cursor_next("nats") == scratch.cursor_next("out")).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    assert!(relay.log().contains("source=east"), "the source runs under its new name");
    let resumed = &stream_requests(&emulator)[first_run..];
    assert!(
        resumed.first().and_then(|r| r.index).is_some_and(|index| index > 0),
        "the renamed source asked Nomad for its old checkpoint: {:?}",
        resumed.first().map(|r| r.index)
    );
    // ... and JetStream holds each event once, under the id it had before the rename.
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    assert_exactly_once_in_subject_order(&stored, &expected, &expected_ids(&emulator.published()), &prefix);
}

/// What the worker logs when the destination already held events it sent again.
const RE_SENT: &str = "events sent again were already at the destination";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_run_loses_and_repeats_nothing() {
    let scratch = Scratch::new();
    let mut server = OwnedServer::start(scratch.dir.path(), None);
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let (prefix, stream) = (unique("cut"), unique("CUT"));
    let port = free_port();
    let sink = nats_sink(&server.url(), &prefix, &stream, "ack_timeout = \"2s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_500.0),
        total_events: Some(9_000),
        seed: 32,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    let progress = || scratch.cursor_next("nats");
    eventually("some events in NATS", WAIT, || progress().filter(|n| *n > 1_000)).await;
    let outage = relay.mark();
    server.stop();
    // NATS stays down, as events keep arriving from Nomad, until the sink has noticed (its
    // PubAcks timed out and it reports itself unhealthy).
    wait_until_unhealthy(port, "nats", WAIT).await;
    let stalled = progress().unwrap();
    server.resume();
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    eventually("everything delivered after the restart", Duration::from_secs(120), || {
        progress().filter(|n| *n as usize > expected.len())
    })
    .await;
    assert!(relay.terminate().success());
    let stored = read_stream(&server.url(), &stream).await;
    let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "nothing stored twice");
    let payloads: HashSet<&str> = stored.iter().map(|m| m.payload.as_str()).collect();
    let missing = expected.iter().filter(|line| !payloads.contains(line.as_str())).count();
    assert_eq!(missing, 0, "nothing lost");
    assert_eq!(stored.len(), expected.len());
    assert!((stalled as usize) < expected.len(), "the outage began mid-run");
    let during = relay.log_since(outage);
    assert!(
        during.contains("JetStream did not acknowledge") && during.contains("sink=nats"),
        "the outage was noticed: {during}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_publishes_every_event_with_headers() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    emulator.publish(job(4, "api"));
    let scratch = Scratch::new();
    let prefix = unique("core");
    let client = async_nats::connect(&url).await.unwrap();
    let mut subscription = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Namespace}}}}.{{{{Key}}}}\"\njetstream = false\n"
    );
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    use futures_util::StreamExt;
    let mut received = Vec::new();
    for _ in 0..2 {
        received.push(tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap());
    }
    assert!(relay.terminate().success());
    assert_eq!(received[0].subject.as_str(), format!("{prefix}.default.web"));
    assert_eq!(received[0].payload, job(3, "web").events[0].to_json(3).as_bytes());
    let headers = received[1].headers.clone().unwrap();
    assert_eq!(headers.get("Nomad-Index").unwrap().as_str(), "4");
    assert_eq!(headers.get("Nomad-Topic").unwrap().as_str(), "Job");
    assert_eq!(headers.get("Nomad-Type").unwrap().as_str(), "JobRegistered");
    assert_eq!(headers.get("Nomad-Namespace").unwrap().as_str(), "default");
    assert_eq!(headers.get("Nomad-Key").unwrap().as_str(), "api");
    let ids = expected_ids(&emulator.published());
    assert_eq!(headers.get("Nats-Msg-Id").unwrap().as_str(), ids[1].1);
    assert!(
        relay.log().contains("NATS sink in core mode: delivery is at-most-once"),
        "core mode says what it guarantees"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_reported_and_retried() {
    let scratch = Scratch::new();
    let mut server =
        OwnedServer::start(scratch.dir.path(), Some("authorization { user: relay, password: other }\n"));
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let (prefix, stream) = (unique("creds"), unique("CREDS"));
    let sink = nats_sink(&server.url(), &prefix, &stream, "user = \"relay\"\npassword = \"relay-secret\"");
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    const REFUSED: &str = "NATS refused the credentials";
    // Refused, and tried again: the refusal is logged on every attempt.
    eventually("two refused attempts", WAIT, || (relay.log().matches(REFUSED).count() >= 2).then_some(()))
        .await;
    assert!(relay.is_running());
    eventually("the file sink unaffected", WAIT, || {
        (scratch.lines("events.ndjson").len() == 1).then_some(())
    })
    .await;
    // The operator gives NATS the relay's password; the next attempt gets through.
    server.stop();
    server.set_config(scratch.dir.path(), "authorization { user: relay, password: relay-secret }\n");
    server.resume();
    eventually("the event in NATS after the fix", WAIT, || scratch.cursor_next("nats").filter(|n| *n > 1))
        .await;
    assert!(relay.terminate().success());
    let stored = read_stream_as(&server.url(), "relay", "relay-secret", &stream).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].payload, job(3, "web").events[0].to_json(3));
    assert!(!relay.log().contains("relay-secret"), "passwords never appear in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_is_a_clear_error() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let scratch = Scratch::new();
    let prefix = unique("nostream");
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Topic}}}}\"\nretry_min_delay = \"50ms\"\n"
    );
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("no JetStream stream captures subject", WAIT).await;
    assert!(log.contains(&format!("{prefix}.Job")), "{log}");
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_payload_is_rejected_with_a_dead_letter_notice() {
    let scratch = Scratch::new();
    let server = OwnedServer::start(scratch.dir.path(), Some("max_payload: 8192\n"));
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "small"));
    emulator.publish(Batch { index: 4, events: vec![job_event("huge", "JobRegistered", 20_000)] });
    emulator.publish(job(5, "after"));
    let (prefix, stream) = (unique("big"), unique("BIG"));
    let extra = format!(
        "subjects = [\"{prefix}.>\"]\non_reject = \"dead_letter\"\ndead_letter_subject = \"{prefix}.dead\""
    );
    let config = scratch.config(&emulator.url(), "", &nats_sink(&server.url(), &prefix, &stream, &extra));
    let mut relay = Relay::start(&config);
    eventually("all three events passed", WAIT, || scratch.cursor_next("nats").filter(|next| *next > 3))
        .await;
    assert!(relay.terminate().success());
    let stored = read_stream(&server.url(), &stream).await;
    let subjects: Vec<&str> = stored.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            format!("{prefix}.Job.JobRegistered"),
            format!("{prefix}.dead"),
            format!("{prefix}.Job.JobRegistered")
        ]
    );
    let notice: serde_json::Value = serde_json::from_str(&stored[1].payload).unwrap();
    assert_eq!(notice["Key"], "huge");
    assert!(notice["Reason"].as_str().unwrap().contains("max_payload (8192 bytes)"), "{notice}");
    assert!(relay.log().contains("refused this event for good"), "{}", relay.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_to_nats() {
    let scratch = Scratch::new();
    let (files, _) = support::tls::make_certs(scratch.dir.path(), "localhost");
    let server_config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        files.server_cert.display(),
        files.server_key.display(),
        files.ca.display()
    );
    let server = OwnedServer::start(scratch.dir.path(), Some(&server_config));
    let url = format!("tls://localhost:{}", server.port);
    let client = async_nats::ConnectOptions::new()
        .add_root_certificates(files.ca.clone())
        .add_client_certificate(files.client_cert.clone(), files.client_key.clone())
        .require_tls(true)
        .connect(&url)
        .await
        .unwrap();
    let prefix = unique("tls");
    let mut subscription = client.subscribe(format!("{prefix}.>")).await.unwrap();
    client.flush().await.unwrap();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "web"));
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Topic}}}}\"\njetstream = false\n[sinks.nats.tls]\nrequired = true\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        files.ca.display(),
        files.client_cert.display(),
        files.client_key.display()
    );
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    use futures_util::StreamExt;
    let message = tokio::time::timeout(WAIT, subscription.next()).await.unwrap().unwrap();
    assert!(relay.terminate().success());
    assert_eq!(message.payload, job(3, "web").events[0].to_json(3).as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_oldest_sink_behind_a_full_journal_skips_what_was_dropped_and_nobody_else_notices() {
    let scratch = Scratch::new();
    let mut server = OwnedServer::start(scratch.dir.path(), None);
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    let (prefix, stream) = (unique("drop"), unique("DROP"));
    let port = free_port();
    let sink =
        nats_sink(&server.url(), &prefix, &stream, "when_full = \"drop_oldest\"\nack_timeout = \"1s\"");
    let extra = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[journal]\nmax_bytes = \"4MiB\"\nsegment_bytes = \"1MiB\"\n{sink}"
    );
    let config = scratch.config(&emulator.url(), "", &extra);
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_500.0),
        total_events: Some(15_000),
        seed: 33,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    eventually("some events in NATS", WAIT, || scratch.cursor_next("nats").filter(|n| *n > 500)).await;
    let outage = relay.mark();
    server.stop();
    // NATS stays away until the full journal has dropped records the JetStream sink had not
    // delivered (the file sink, `block`, keeps up and holds nothing back), and more after
    // them, so the sink's reader is inside removed segments when NATS is back.
    let dropping = "has not delivered";
    let log = relay.wait_for_log_after(outage, dropping, Duration::from_secs(60)).await;
    assert!(log.contains("sink `nats` (when_full = \"drop_oldest\")"), "{log}");
    eventually("more segments dropped", Duration::from_secs(60), || {
        (relay.log_since(outage).matches(dropping).count() >= 3).then_some(())
    })
    .await;
    server.resume();
    let dropped = "nomad_relay_sink_dropped_events_total{sink=\"nats\"}";
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    eventually("the JetStream sink past every event", Duration::from_secs(120), || {
        assert!(relay.is_running(), "the relay exited: {}", relay.log());
        scratch.cursor_next("nats").filter(|n| *n as usize > expected.len())
    })
    .await;
    eventually("every event in the file", WAIT, || {
        (scratch.lines("events.ndjson").len() >= expected.len()).then_some(())
    })
    .await;
    assert!(relay.is_running(), "the relay kept running: {}", relay.log());
    let dropped = support::endpoint::metric(port, dropped).unwrap();
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    // The stream holds every event but the dropped ones, each once. (Not necessarily in
    // order: a publish lost with the server is sent again after those behind it, as the
    // README says; consumers order by Nomad-Index.)
    let stored = read_stream(&server.url(), &stream).await;
    let position: HashMap<&str, usize> =
        expected.iter().enumerate().map(|(n, line)| (line.as_str(), n)).collect();
    let mut order: Vec<usize> = stored
        .iter()
        .map(|m| *position.get(m.payload.as_str()).unwrap_or_else(|| panic!("never sent: {}", m.payload)))
        .collect();
    assert_eq!(order.len() + dropped as usize, expected.len(), "stored plus dropped is everything");
    order.sort_unstable();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "nothing twice");
    let log = relay.log();
    assert!(log.contains("were removed from the full journal before this sink delivered them"), "{log}");
    assert!(!log.contains("the worker of sink"), "no worker failed: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_jetstream_is_noticed_within_ack_timeout_and_nothing_is_lost_or_repeated() {
    let scratch = Scratch::new();
    let server = OwnedServer::start(scratch.dir.path(), None);
    let proxy = support::proxy::Proxy::start(format!("127.0.0.1:{}", server.port).parse().unwrap()).await;
    let emulator = emulator(EmulatorConfig { buffer_size: 1_000_000, ..EmulatorConfig::default() }).await;
    emulator
        .generator(GeneratorConfig {
            rate: None,
            total_events: Some(8_000),
            seed: 34,
            ..GeneratorConfig::default()
        })
        .run()
        .await;
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let (prefix, stream) = (unique("hang"), unique("HANG"));
    let port = free_port();
    let url = format!("nats://{}", proxy.addr);
    let sink = nats_sink(&url, &prefix, &stream, "ack_timeout = \"2s\"");
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let mut relay = Relay::start(&config);
    let took = time_until_a_hang_is_noticed(port, "nats", 200.0, || proxy.freeze()).await;
    assert!(took < Duration::from_secs(6), "a hung JetStream was noticed after {took:?} (ack_timeout 2s)");
    proxy.thaw();
    eventually("everything delivered after the hang", Duration::from_secs(120), || {
        scratch.cursor_next("nats").filter(|n| *n as usize > expected.len())
    })
    .await;
    assert!(relay.terminate().success());
    let stored = read_stream(&server.url(), &stream).await;
    assert_exactly_once_in_subject_order(&stored, &expected, &expected_ids(&emulator.published()), &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_streams_max_msg_size_is_rejected_and_the_rest_go_on() {
    let url = shared_url();
    let (prefix, stream) = (unique("maxmsg"), unique("MAXMSG"));
    let client = async_nats::connect(&url).await.unwrap();
    let context = async_nats::jetstream::new(client);
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_message_size: 4096,
            ..Default::default()
        })
        .await
        .unwrap();
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(3, "small"));
    emulator.publish(Batch { index: 4, events: vec![job_event("large", "JobRegistered", 6_000)] });
    emulator.publish(job(5, "after"));
    let scratch = Scratch::new();
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Topic}}}}\"\nstream = \"{stream}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"200ms\"\n"
    );
    let config = scratch.config(&emulator.url(), "", &sink);
    let mut relay = Relay::start(&config);
    eventually("all three events passed", WAIT, || scratch.cursor_next("nats").filter(|next| *next > 3))
        .await;
    assert!(relay.terminate().success());
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    let keys: Vec<String> = stored
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()["Key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys, ["small", "after"]);
    let log = relay.log();
    assert!(
        log.contains("refused this event for good") && log.contains("max_msg_size (JetStream error 10054"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_says_what_jetstream_already_had_and_republish_stores_it_again() {
    let url = shared_url();
    let emulator = emulator(EmulatorConfig::default()).await;
    for index in 3..8 {
        emulator.publish(job(index, &format!("job-{index}")));
    }
    let scratch = Scratch::new();
    let (prefix, stream) = (unique("replay"), unique("REPLAY"));
    let config = scratch.config(&emulator.url(), "", &nats_sink(&url, &prefix, &stream, ""));
    let mut relay = Relay::start(&config);
    eventually("five events in NATS", WAIT, || scratch.cursor_next("nats").filter(|n| *n > 5)).await;
    assert!(relay.terminate().success());
    // The stream is purged; JetStream still remembers the message ids for its window.
    let context = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    context.get_stream(&stream).await.unwrap().purge().await.unwrap();
    let replay = |extra: &[&str]| {
        let mut args =
            vec!["replay", "--config", config.to_str().unwrap(), "--sink", "nats", "--from-index", "3"];
        args.extend_from_slice(extra);
        let output = relay_command(&args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let plain = replay(&[]);
    assert!(
        plain.contains("replayed 0 events") && plain.contains("5 were already at the destination"),
        "{plain}"
    );
    assert_eq!(read_stream(&url, &stream).await.len(), 0, "nothing stored twice");
    let again = replay(&["--republish"]);
    assert!(
        again.contains("replayed 5 events")
            && again.contains("published again with ids of this replay's own"),
        "{again}"
    );
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    assert_eq!(stored.len(), 5);
    let originals = expected_ids(&emulator.published());
    assert!(stored.iter().all(|m| originals.iter().all(|(_, id)| *id != m.msg_id)), "new ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_holds_back_only_its_own_events_across_a_sigkill() {
    let url = shared_url();
    let (prefix, stream) = (unique("park"), unique("PARK"));
    // The stream captures the Job subjects only: the Allocation ones have no stream.
    let context = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
    let mut stream_config = async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.Job.>")],
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    };
    context.create_stream(stream_config.clone()).await.unwrap();
    let emulator = emulator(EmulatorConfig::default()).await;
    for n in 0..10u64 {
        emulator.publish(job(100 + 2 * n, &format!("job-{n}")));
        emulator.publish(allocation(101 + 2 * n, &format!("alloc-{n}")));
    }
    let scratch = Scratch::new();
    let port = free_port();
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{url}\"\nsubject = \"{prefix}.{{{{Topic}}}}.{{{{Type}}}}\"\nstream = \"{stream}\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"500ms\"\n"
    );
    let config =
        scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{sink}"));
    let parked = "nomad_relay_sink_parked_events{sink=\"nats\"}";
    let duplicates = "nomad_relay_sink_duplicate_events_total{sink=\"nats\"}";

    let mut relay = Relay::start(&config);
    // The Job events go through while the Allocation events, before and between them, wait.
    assert_eq!(support::endpoint::wait_for_metric(port, parked, WAIT, |n| n == 10.0).await, Some(10.0));
    eventually_async_stream_len(&url, &stream, 10).await;
    relay.kill();
    // Past the stream's duplicate window (what is waited for here), only the sink's own read
    // of the stream can recognise what it stored after the parked events.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The saved cursor waited at the first parked event: the restart publishes the 9 Job
    // events after it again, and the read of the stream finds them.
    let mut relay = Relay::start(&config);
    assert_eq!(support::endpoint::wait_for_metric(port, duplicates, WAIT, |n| n >= 9.0).await, Some(9.0));
    assert_eq!(support::endpoint::wait_for_metric(port, parked, WAIT, |n| n == 10.0).await, Some(10.0));

    stream_config.subjects = vec![format!("{prefix}.>")];
    context.update_stream(stream_config).await.unwrap();
    assert_eq!(support::endpoint::wait_for_metric(port, parked, WAIT, |n| n == 0.0).await, Some(0.0));
    assert!(relay.terminate().success());
    let stored = read_stream(&url, &stream).await;
    delete_stream(&url, &stream).await;
    let published = emulator.published();
    let expected = expected_lines(&published, DEFAULT_TOPICS);
    assert_exactly_once_in_subject_order(&stored, &expected, &expected_ids(&published), &prefix);
}

/// Waits until `stream` holds `count` messages.
async fn eventually_async_stream_len(url: &str, stream: &str, count: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    while read_stream(url, stream).await.len() != count {
        assert!(std::time::Instant::now() < deadline, "the stream never held {count} messages");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
