//! What an operator watches: `/metrics` scraped during a run (counters move, lag reaches 0),
//! `/readyz` flipping when a sink's broker goes away and comes back, and `nomad-relay demo`.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{EmulatorConfig, GeneratorConfig};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;
use support::endpoint::{free_port, get, parse_metrics};
use support::nats::{OwnedServer, unique};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_run_and_lag_reaches_zero() {
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\""));
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(3_000),
        seed: 61,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    let delivered =
        |samples: &BTreeMap<String, f64>| samples["nomad_relay_sink_delivered_events_total{sink=\"out\"}"];
    let early = eventually("a first scrape with deliveries", WAIT, || {
        let (status, body) = get(port, "/metrics")?;
        assert_eq!(status, 200);
        let samples = parse_metrics(&body);
        (delivered(&samples) > 0.0).then_some(samples)
    })
    .await;
    assert_eq!(early["nomad_relay_build_info{version=\"0.1.0\"}"], 1.0);
    assert_eq!(early["nomad_relay_source_connected{source=\"default\"}"], 1.0);
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS).len() as f64;
    let last_index = emulator.last_index() as f64;
    let done = eventually("every event delivered and no lag", WAIT, || {
        let samples = parse_metrics(&get(port, "/metrics")?.1);
        (delivered(&samples) == expected && samples["nomad_relay_sink_lag_index{sink=\"out\"}"] == 0.0)
            .then_some(samples)
    })
    .await;
    assert!(delivered(&done) > delivered(&early), "the counter moved as events flowed");
    assert_eq!(done["nomad_relay_source_last_index{source=\"default\"}"], last_index);
    assert_eq!(done["nomad_relay_sink_cursor_index{sink=\"out\"}"], last_index);
    assert_eq!(done["nomad_relay_source_events_total{source=\"default\"}"], expected);
    assert_eq!(done["nomad_relay_sink_backlog_records{sink=\"out\"}"], 0.0);
    assert_eq!(done["nomad_relay_sink_in_flight_events{sink=\"out\"}"], 0.0);
    assert_eq!(done["nomad_relay_sink_in_flight_batches{sink=\"out\"}"], 0.0);
    assert_eq!(done["nomad_relay_sink_duplicate_events_total{sink=\"out\"}"], 0.0);
    assert!(done["nomad_relay_source_read_bytes_total{source=\"default\"}"] > 0.0);
    assert!(done["nomad_relay_journal_bytes"] > 0.0);
    assert_eq!(done["nomad_relay_journal_entries"], done["nomad_relay_journal_head_record"]);
    assert_eq!(get(port, "/healthz").unwrap(), (200, "ok\n".to_owned()));
    assert_eq!(get(port, "/nothing").unwrap().0, 404);
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_when_a_sink_goes_down_and_back() {
    let scratch = Scratch::new();
    let mut server = OwnedServer::start(scratch.dir.path(), None);
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let port = free_port();
    let (prefix, stream) = (unique("ready"), unique("READY"));
    let sink = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\n[sinks.nats]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{prefix}.{{{{Topic}}}}\"\nstream = \"{stream}\"\ncreate_stream = true\nack_timeout = \"1s\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"200ms\"\n",
        server.url()
    );
    let config = scratch.config(&emulator.url(), "", &sink);
    let generator =
        emulator.generator(GeneratorConfig { rate: Some(200.0), seed: 62, ..GeneratorConfig::default() });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    eventually("ready while NATS is up", WAIT, || get(port, "/readyz").filter(|(status, _)| *status == 200))
        .await;

    server.stop();
    let (_, body) = eventually("not ready while NATS is down", WAIT, || {
        get(port, "/readyz").filter(|(status, _)| *status == 503)
    })
    .await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false);
    let names: Vec<&str> =
        report["not_ready"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["nats"], "{body}");
    assert_eq!(get(port, "/healthz").unwrap().0, 200, "alive all the same");

    server.resume();
    eventually("ready again once NATS is back", WAIT, || {
        get(port, "/readyz").filter(|(status, _)| *status == 200)
    })
    .await;
    publishing.abort();
    assert!(relay.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_events_without_a_nomad_cluster() {
    let mut child = relay_command(&["demo", "--rate", "500", "--events", "40"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).take(40).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(lines.len(), 40, "the demo printed 40 events");
    for line in &lines {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(event["Topic"].is_string() && event["Index"].as_u64().unwrap() > 0, "{line}");
    }
    // SIGTERM: a clean stop.
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_a_stuck_sink_ends_within_its_deadline_and_loses_nothing() {
    shutdown_with_a_stuck_sink(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_loses_nothing() {
    shutdown_with_a_stuck_sink(true).await;
}

/// A NATS sink stuck on a stopped server when the relay is asked to stop: it exits after
/// `shutdown_timeout` (2 s), or at once on a second signal (with the deadline at 60 s), and
/// after a restart with NATS back the file and the stream hold every event exactly once.
async fn shutdown_with_a_stuck_sink(second_signal: bool) {
    let scratch = Scratch::new();
    let mut server = OwnedServer::start(scratch.dir.path(), None);
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let (prefix, stream) = (unique("deadline"), unique("DEADLINE"));
    let sink = format!(
        "[sinks.nats]\ntype = \"nats\"\nurl = \"{}\"\nsubject = \"{prefix}.{{{{Topic}}}}\"\nstream = \"{stream}\"\ncreate_stream = true\nack_timeout = \"30s\"\nretry_min_delay = \"20ms\"\nretry_max_delay = \"200ms\"\n",
        server.url()
    );
    let port = free_port();
    let config =
        scratch.config(&emulator.url(), "", &format!("{sink}[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    // A top-level key goes before the first table.
    let deadline = if second_signal { "60s" } else { "2s" };
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("shutdown_timeout = \"{deadline}\"\n{text}")).unwrap();
    let generator =
        emulator.generator(GeneratorConfig { rate: Some(300.0), seed: 63, ..GeneratorConfig::default() });
    let publishing = tokio::spawn(generator.run());
    let mut relay = Relay::start(&config);
    eventually("events in NATS", WAIT, || scratch.cursor_next("nats").filter(|n| *n > 50)).await;
    server.stop();
    // The sink now waits (up to its 30 s ack_timeout) for acknowledgements that cannot come.
    eventually("the NATS sink stuck with events in flight", WAIT, || {
        let samples = parse_metrics(&get(port, "/metrics")?.1);
        (samples["nomad_relay_sink_in_flight_events{sink=\"nats\"}"] > 0.0).then_some(())
    })
    .await;
    relay.signal_terminate();
    let mut signalled = std::time::Instant::now();
    if second_signal {
        relay.wait_for_log("shutting down", WAIT).await;
        relay.signal_terminate();
        signalled = std::time::Instant::now();
    }
    let status = eventually("the relay to exit", Duration::from_secs(20), || relay.exit_status()).await;
    let took = signalled.elapsed();
    if second_signal {
        assert_eq!(status.code(), Some(130), "the second signal exits at once");
        assert!(took < Duration::from_secs(1), "the second signal took {took:?} to end the relay");
        assert!(relay.log().contains("second signal"), "{}", relay.log());
    } else {
        assert!(status.success());
        // The stuck sink is given its 2 s, and not much more.
        assert!(
            took >= Duration::from_millis(1_900) && took < Duration::from_secs(4),
            "exited {took:?} after SIGTERM with shutdown_timeout = 2s"
        );
        assert!(relay.log().contains("did not finish within shutdown_timeout"), "{}", relay.log());
    }
    publishing.abort();

    // Nothing was lost or repeated: the restarted relay delivers everything to both sinks.
    server.resume();
    let mut relay = Relay::start(&config);
    let published = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    eventually("everything delivered after the restart", WAIT, || {
        scratch.cursor_next("nats").filter(|next| *next as usize > published.len())
    })
    .await;
    eventually("everything in the file after the restart", WAIT, || {
        (scratch.lines("events.ndjson").len() >= published.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    assert_lines_equal(&scratch.lines("events.ndjson"), &published);
    let stored = support::nats::read_stream(&server.url(), &stream).await;
    let payloads: std::collections::BTreeSet<&str> = stored.iter().map(|m| m.payload.as_str()).collect();
    assert_eq!(stored.len(), published.len(), "NATS holds every event once");
    assert!(published.iter().all(|line| payloads.contains(line.as_str())), "NATS lost an event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_nomad_cannot_be_reached_and_json_logs_on_request() {
    let scratch = Scratch::new();
    let port = free_port();
    let nomad = format!("http://127.0.0.1:{}", free_port());
    let config = scratch.config(&nomad, "", &format!("[http]\nlisten = \"127.0.0.1:{port}\""));
    let log_path = scratch.path("json.log");
    let child = relay_command(&["--log-format", "json", "run", "--config", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    eventually("a failed connection to Nomad", WAIT, || log().contains("event stream failed").then_some(()))
        .await;
    let (status, body) = get(port, "/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sources: Vec<&str> = report["not_ready"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "source")
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["default"], "{body}");
    child.terminate();
    let text = log();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 2, "{text}");
    for line in lines {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(record["level"].is_string() && record["fields"]["message"].is_string(), "{line}");
    }
}

/// A relay started by hand, killed if the test fails before it exits.
struct ChildGuard(std::process::Child);

impl ChildGuard {
    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) {
        let pid = self.0.id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_configured_secret_reaches_any_output() {
    // A distinct secret in every place a configuration can hold one; nothing listens at the
    // addresses, so every connect fails and every failure path logs and reports.
    let secrets =
        ["NomadPass-41", "NomadToken-42", "NatsUrlPass-43", "NatsPassword-44", "AmqpPass-45", "KafkaPass-46"];
    let scratch = Scratch::new();
    let port = free_port();
    let dead = free_port();
    let text = format!(
        r#"data_dir = "{data}"
[nomad]
address = "http://admin:NomadPass-41@127.0.0.1:{dead}"
token = "NomadToken-42"
idle_timeout = "60s"
[nomad.reconnect]
min_delay = "50ms"
max_delay = "200ms"
[http]
listen = "127.0.0.1:{port}"
[sinks.nats]
type = "nats"
url = "nats://u:NatsUrlPass-43@127.0.0.1:{dead}"
retry_min_delay = "50ms"
retry_max_delay = "200ms"
[sinks.nats2]
type = "nats"
url = "nats://127.0.0.1:{dead}"
user = "u"
password = "NatsPassword-44"
[sinks.rabbit]
type = "amqp"
uri = "amqp://guest:AmqpPass-45@127.0.0.1:{dead}/%2f"
[sinks.kafka]
type = "kafka"
brokers = "127.0.0.1:{dead}"
topic = "t"
librdkafka = {{ "security.protocol" = "sasl_plaintext", "sasl.mechanisms" = "PLAIN", "sasl.username" = "u", "sasl.password" = "KafkaPass-46" }}
"#,
        data = scratch.path("data").display(),
    );
    let config = scratch.path("relay.toml");
    std::fs::write(&config, text).unwrap();
    let leaks = |what: &str, output: &str| {
        for secret in secrets {
            assert!(!output.contains(secret), "{what} shows {secret}:\n{output}");
        }
    };

    let validate = relay_command(&["validate", "--config", config.to_str().unwrap()]).output().unwrap();
    let printed =
        format!("{}{}", String::from_utf8_lossy(&validate.stdout), String::from_utf8_lossy(&validate.stderr));
    assert!(printed.contains("127.0.0.1"), "validate printed the addresses: {printed}");
    assert!(printed.contains("sink rabbit: RabbitMQ at amqp://guest:***@127.0.0.1"), "a summary: {printed}");
    assert!(!printed.contains("SinkConfig"), "no Rust structures: {printed}");
    leaks("validate", &printed);

    let mut relay = Relay::start(&config);
    // Every sink has failed at least once and Nomad has been tried again: the failure paths
    // have all printed what they print.
    relay.wait_for_log("event stream failed", WAIT).await;
    let ready = eventually("every sink reported not ready", WAIT, || {
        let (_, body) = get(port, "/readyz")?;
        ["nats", "nats2", "rabbit", "kafka"]
            .iter()
            .all(|sink| {
                body.contains(&format!("\"name\":\"{sink}\"")) && !body.contains("not delivering yet")
            })
            .then_some(body)
    })
    .await;
    leaks("/readyz", &ready);
    leaks("/metrics", &get(port, "/metrics").unwrap().1);
    leaks("/healthz", &get(port, "/healthz").unwrap().1);
    assert!(relay.terminate().success());
    let log = relay.log();
    assert!(log.contains("***"), "the log shows where a secret was: {log}");
    leaks("the log", &log);
}

/// A client that sends its request one byte a second holds one connection until the header
/// time runs out (then hyper closes it), and scrapes meanwhile are answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_byte_a_second_does_not_block_scrapes_and_is_cut_off() {
    use std::io::{Read, Write};
    let emulator = emulator(EmulatorConfig::default()).await;
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(&emulator.url(), "", &format!("[http]\nlisten = \"127.0.0.1:{port}\""));
    let mut relay = Relay::start(&config);
    eventually("the endpoint answers", WAIT, || get(port, "/healthz")).await;

    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let opened = std::time::Instant::now();
    let request = b"GET /metrics HTTP/1.1\r\nHost: relay\r\n\r\n";
    let trickle = std::thread::spawn(move || {
        slow.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        for byte in request {
            if slow.write_all(&[*byte]).is_err() {
                return opened.elapsed();
            }
            // A read of 0 bytes (or a reset) is the server closing the connection.
            let mut buf = [0u8; 64];
            match slow.read(&mut buf) {
                Ok(0) => return opened.elapsed(),
                Ok(_) => panic!("the slow client got an answer to a request it has not finished"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return opened.elapsed(),
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        panic!("the slow client sent its whole request without being cut off");
    });
    for _ in 0..6 {
        let started = std::time::Instant::now();
        let (status, body) = get(port, "/metrics").unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("nomad_relay_http_open_connections"));
        // Well under the 5 s a server blocked by the slow client would take (and generous
        // for a busy 2-core machine).
        assert!(started.elapsed() < Duration::from_secs(3), "a scrape took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cut_after = tokio::task::spawn_blocking(move || trickle.join().unwrap()).await.unwrap();
    assert!(
        cut_after >= Duration::from_secs(4) && cut_after < Duration::from_secs(9),
        "the slow client was cut off after {cut_after:?}; the header time is 5 s"
    );
    assert!(relay.terminate().success());
}

/// Connections beyond `max_connections` are closed as they arrive: the relay's open file
/// descriptors stay bounded while a flood holds connections open, every event is delivered
/// meanwhile, and the endpoint answers again once the flood is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_bounded_and_delivery_goes_on() {
    const MAX: usize = 8;
    let emulator = emulator(EmulatorConfig { buffer_size: 100_000, ..EmulatorConfig::default() }).await;
    let scratch = Scratch::new();
    let port = free_port();
    let config = scratch.config(
        &emulator.url(),
        "",
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {MAX}"),
    );
    let mut relay = Relay::start(&config);
    eventually("the endpoint answers", WAIT, || get(port, "/healthz")).await;
    let open_files = {
        let pid = relay.pid();
        move || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
    };
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(1_000.0),
        total_events: Some(3_000),
        seed: 67,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());
    // The relay's own files (journal, sink output, Nomad's stream) are open from here on.
    eventually("the first events delivered", WAIT, || {
        (!scratch.lines("events.ndjson").is_empty()).then_some(())
    })
    .await;
    let before = open_files();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Idle connections, opened as fast as the relay accepts them and held.
            let mut held = Vec::new();
            let mut opened = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                    held.push(stream);
                    opened += 1;
                }
                if held.len() >= 400 {
                    held.drain(..200);
                }
                // Thousands of connections a second, without taking a whole core from the
                // relay and from the tests running beside this one.
                std::thread::sleep(Duration::from_micros(200));
            }
            opened
        })
    };
    let mut most_open = 0;
    while !publishing.is_finished() {
        most_open = most_open.max(open_files());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let delivered = eventually("every event delivered during the flood", WAIT, || {
        most_open = most_open.max(open_files());
        let lines = scratch.lines("events.ndjson");
        (lines.len() >= expected.len()).then_some(lines)
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let opened = tokio::task::spawn_blocking(move || flood.join().unwrap()).await.unwrap();
    assert_lines_equal(&delivered, &expected);
    assert!(
        // A journal segment rolled meanwhile may add one; without the limit it is hundreds.
        most_open <= before + MAX + 4,
        "the relay had {most_open} files open during the flood ({before} before, max_connections {MAX})"
    );
    // Once the flood's connections are closed (or cut by the header time), only the scrape
    // itself is open: no connection was left counted.
    let samples = eventually("a scrape with the flood gone", WAIT, || {
        let samples = parse_metrics(&get(port, "/metrics")?.1);
        (samples["nomad_relay_http_open_connections"] == 1.0).then_some(samples)
    })
    .await;
    let refused = samples["nomad_relay_http_refused_connections_total"];
    assert!(refused > 0.0 && refused < opened as f64, "{refused} of {opened} connections refused");
    assert!(relay.terminate().success());
}
