//! Shared helpers for the end-to-end tests: a scratch directory with a relay config, the
//! relay binary run as a child process (so tests can SIGKILL it), and the expected file
//! contents computed from what the emulator published.

#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use nomad_emulator::{Batch, Emulator, EmulatorConfig, Event};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod amqp;
pub mod endpoint;
pub mod kafka;
pub mod nats;
pub mod proxy;
pub mod tls;

#[allow(unused_imports)]
pub use nomad_relay::config::DEFAULT_TOPICS;

/// A Job event with a payload padded to about `payload_bytes`.
pub fn job_event(key: &str, event_type: &str, payload_bytes: usize) -> Event {
    Event {
        topic: "Job".into(),
        event_type: event_type.into(),
        key: key.into(),
        namespace: "default".into(),
        filter_keys: None,
        payload: format!(r#"{{"Job":{{"ID":"{key}","Meta":{{"pad":"{}"}}}}}}"#, "x".repeat(payload_bytes)),
    }
}

/// A one-event `JobRegistered` line.
pub fn job(index: u64, key: &str) -> Batch {
    Batch { index, events: vec![job_event(key, "JobRegistered", 100)] }
}

/// A scratch directory for one test.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Scratch { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `relay.toml`: the emulator as Nomad, fast reconnects and retries, a file sink
    /// `out` at `events.ndjson`, plus `extra` TOML appended (more sinks, overrides of tables
    /// not already written).
    pub fn config(&self, nomad_url: &str, nomad_extra: &str, extra: &str) -> PathBuf {
        let text = format!(
            r#"data_dir = "{data}"
[nomad]
address = "{nomad_url}"
{idle}
{nomad_extra}
[nomad.reconnect]
min_delay = "20ms"
max_delay = "200ms"
denied_min_delay = "1s"
denied_max_delay = "2s"

[sinks.out]
type = "file"
path = "{out}"
retry_min_delay = "20ms"
retry_max_delay = "200ms"
{extra}
"#,
            idle = if nomad_extra.contains("idle_timeout") { "" } else { "idle_timeout = \"10s\"" },
            data = self.path("data").display(),
            out = self.path("events.ndjson").display(),
        );
        let path = self.path("relay.toml");
        fs::write(&path, text).unwrap();
        path
    }

    /// The journal record a sink delivers next, from its cursor file (`None` before it has one).
    pub fn cursor_next(&self, sink: &str) -> Option<u64> {
        let text = fs::read(self.path(&format!("data/cursors/{sink}.json"))).ok()?;
        let cursor: serde_json::Value = serde_json::from_slice(&text).ok()?;
        cursor["next_seq"].as_u64()
    }

    pub fn lines(&self, name: &str) -> Vec<String> {
        read_lines(&self.path(name))
    }
}

pub fn read_lines(path: &Path) -> Vec<String> {
    match fs::read_to_string(path) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// The relay running as a child process, its stderr in a file.
pub struct Relay {
    child: Child,
    stderr_path: PathBuf,
}

pub fn relay_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nomad-relay"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("NOMAD_") {
            command.env_remove(key);
        }
    }
    command.env("NOMAD_RELAY_LOG", "info,nomad_relay=debug");
    command
}

impl Relay {
    /// Starts `nomad-relay run --config <config>`; stderr is appended to `relay.log` beside
    /// the config, so restarts add to one log.
    pub fn start(config: &Path) -> Relay {
        let stderr_path = config.with_file_name("relay.log");
        let stderr = File::options().create(true).append(true).open(&stderr_path).unwrap();
        let child = relay_command(&["run", "--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        Relay { child, stderr_path }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_terminate(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().unwrap()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits until the relay's log contains `needle`, and returns the log.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        eventually(&format!("the relay to log {needle:?}"), timeout, || {
            let log = self.log();
            log.contains(needle).then_some(log)
        })
        .await
    }

    /// The exit status once the relay has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` returns `Some`, polling a file or log written by another process.
pub async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the relay on `config` until the file sink holds every event the emulator published
/// (default topics), stops it with SIGTERM, and checks the file line for line. Returns the
/// relay's log.
pub async fn relay_everything(
    scratch: &Scratch,
    config: &Path,
    emulator: &Emulator,
    timeout: Duration,
) -> String {
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    let mut relay = Relay::start(config);
    eventually("every published event in the file", timeout, || {
        (scratch.lines("events.ndjson").len() >= expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success(), "SIGTERM is a clean exit");
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    relay.log()
}

/// Every event line the relay should write for `published`, in order, for the given topics.
pub fn expected_lines(published: &[Batch], topics: &[&str]) -> Vec<String> {
    published
        .iter()
        .flat_map(|batch| {
            batch
                .events
                .iter()
                .filter(|event| topics.contains(&event.topic.as_str()))
                .map(|event| event.to_json(batch.index))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Asserts the file holds exactly `expected`, reporting the first difference readably.
pub fn assert_lines_equal(actual: &[String], expected: &[String]) {
    if actual == expected {
        return;
    }
    let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
    let describe = |line: Option<&String>| {
        line.map(|l| l.chars().take(160).collect::<String>()).unwrap_or_else(|| "<none>".into())
    };
    match first_difference {
        Some(at) => panic!(
            "line {at} differs ({} lines written, {} expected):\n  got:      {}\n  expected: {}",
            actual.len(),
            expected.len(),
            describe(actual.get(at)),
            describe(expected.get(at))
        ),
        None => panic!(
            "{} lines written, {} expected; first extra/missing line: {}",
            actual.len(),
            expected.len(),
            describe(actual.get(expected.len()).or(expected.get(actual.len())))
        ),
    }
}

/// The event-stream requests the emulator received (not the namespace-list polls).
pub fn stream_requests(emulator: &Emulator) -> Vec<nomad_emulator::RecordedRequest> {
    emulator.requests().into_iter().filter(|r| r.path == "/v1/event/stream").collect()
}

pub async fn emulator(config: EmulatorConfig) -> Emulator {
    Emulator::start(config).await.unwrap()
}

/// The `Index` and `Type` of a line written by a sink.
pub fn index_and_type(line: &str) -> (u64, String) {
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    (value["Index"].as_u64().unwrap(), value["Type"].as_str().unwrap().to_owned())
}

/// Runs the relay on `config` while `generator` publishes 30,000 events, SIGKILLing it twenty
/// times, each time while the sink `sink` delivers (its cursor has moved since the restart),
/// then waits until that sink is past every published event and stops the relay with SIGTERM.
/// Returns the expected event lines (default topics) and the relay.
pub async fn deliver_through_sigkills(
    scratch: &Scratch,
    config: &Path,
    emulator: &Emulator,
    generator: nomad_emulator::GeneratorConfig,
    sink: &str,
) -> (Vec<String>, Relay) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(generator.seed);
    let publishing = tokio::spawn(emulator.generator(generator).run());
    let mut relay = Relay::start(config);
    for _ in 0..20 {
        let before = scratch.cursor_next(sink).unwrap_or(0);
        eventually("the restarted relay to deliver", Duration::from_secs(60), || {
            let moved = scratch.cursor_next(sink).is_some_and(|next| next > before);
            (moved || publishing.is_finished()).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        relay.kill();
        relay = Relay::start(config);
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    assert!(expected.len() > 20_000, "tens of thousands of events, got {}", expected.len());
    let head = expected.len() as u64;
    eventually(&format!("sink {sink} to deliver everything"), Duration::from_secs(180), || {
        scratch.cursor_next(sink).filter(|next| *next > head)
    })
    .await;
    assert!(relay.terminate().success());
    (expected, relay)
}
