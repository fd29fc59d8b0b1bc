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

/// A one-event `AllocationUpdated` line for allocation `key`.
#[allow(dead_code)]
pub fn allocation(index: u64, key: &str) -> Batch {
    let event = nomad_emulator::Event {
        topic: "Allocation".into(),
        event_type: "AllocationUpdated".into(),
        key: key.into(),
        namespace: "default".into(),
        filter_keys: None,
        payload: format!(r#"{{"Allocation":{{"ID":"{key}"}}}}"#),
    };
    Batch { index, events: vec![event] }
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
            // Above Nomad's 30 s heartbeat, as in production: a test must not pass on a reconnect
            // the watchdog made on a quiet stream.
            idle = if nomad_extra.contains("idle_timeout") { "" } else { "idle_timeout = \"60s\"" },
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

    /// Waits until the file sink `sink`'s file `name` holds bytes its saved cursor does not
    /// cover: a batch written (perhaps fsynced) whose cursor save has not happened yet, the
    /// window a crash must survive. Polled without pause, off the async runtime; false after
    /// `timeout`.
    pub async fn wait_for_write_ahead_of_cursor(&self, sink: &str, name: &str, timeout: Duration) -> bool {
        let file = self.path(name);
        let cursor = self.path(&format!("data/cursors/{sink}.json"));
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                // The file first: it only grows while the sink runs, so a cursor read after
                // it that covers less means the window was open at that moment.
                let written = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                let saved = fs::read(&cursor)
                    .ok()
                    .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
                    .and_then(|cursor| cursor["sink_state"]["length"].as_u64());
                if saved.is_some_and(|saved| written > saved) {
                    return true;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            false
        })
        .await
        .unwrap()
    }
}

/// What the file sink logs on start when it cut back lines written after its last saved
/// cursor: the recovery path a kill inside the write-to-cursor window must lead to.
pub const CUT_BACK: &str = "bytes written after the last checkpoint; those events are sent again";

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
    /// Where this process's part of the shared log begins.
    started_at: LogMark,
}

/// A position in the relay's log (bytes), so a test can look only at what was logged after
/// it: restarts append to one log, and an earlier, unrelated line must not satisfy a match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogMark(usize);

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
        Relay::spawn(config, relay_command(&["run", "--config", config.to_str().unwrap()]))
    }

    /// Starts `run` with `environment` added to the process's environment.
    #[allow(dead_code)]
    pub fn start_with_env(config: &Path, environment: &[(&str, &str)]) -> Relay {
        let mut command = relay_command(&["run", "--config", config.to_str().unwrap()]);
        command.envs(environment.iter().copied());
        Relay::spawn(config, command)
    }

    /// Starts `run` with the process umask set to `umask` (octal, as the shell takes it).
    #[allow(dead_code)]
    pub fn start_with_umask(config: &Path, umask: &str) -> Relay {
        let command = relay_command(&[]);
        let program = command.get_program().to_owned();
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(format!("umask {umask} && exec \"$0\" run --config \"$1\""))
            .arg(program)
            .arg(config);
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => shell.env(key, value),
                None => shell.env_remove(key),
            };
        }
        Relay::spawn(config, shell)
    }

    fn spawn(config: &Path, mut command: Command) -> Relay {
        let stderr_path = config.with_file_name("relay.log");
        let stderr = File::options().create(true).append(true).open(&stderr_path).unwrap();
        let started_at = LogMark(stderr.metadata().map(|m| m.len() as usize).unwrap_or(0));
        let child = command.stdout(Stdio::null()).stderr(Stdio::from(stderr)).spawn().unwrap();
        Relay { child, stderr_path, started_at }
    }

    /// The process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting for the exit.
    pub fn signal_terminate(&self) {
        self.signal("-TERM");
    }

    /// Sends `signal` (`-STOP`, `-CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([signal, &pid]).status();
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_terminate();
        self.child.wait().unwrap()
    }

    /// The whole log, of this process and of every earlier one started with the same config.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The end of the log now: [`Relay::wait_for_log_after`] and [`Relay::log_since`] look
    /// only at what comes after it.
    pub fn mark(&self) -> LogMark {
        LogMark(fs::metadata(&self.stderr_path).map(|m| m.len() as usize).unwrap_or(0))
    }

    /// What was logged after `mark`.
    pub fn log_since(&self, mark: LogMark) -> String {
        let log = fs::read(&self.stderr_path).unwrap_or_default();
        String::from_utf8_lossy(log.get(mark.0..).unwrap_or_default()).into_owned()
    }

    /// What this process logged (not the processes before it).
    pub fn own_log(&self) -> String {
        self.log_since(self.started_at)
    }

    /// Waits until this process logs `needle`, and returns what it logged.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_after(self.started_at, needle, timeout).await
    }

    /// Waits until `needle` is logged after `mark`, and returns the log from `mark` on.
    pub async fn wait_for_log_after(&self, mark: LogMark, needle: &str, timeout: Duration) -> String {
        eventually(&format!("the relay to log {needle:?}"), timeout, || {
            let log = self.log_since(mark);
            log.contains(needle).then_some(log)
        })
        .await
    }

    /// The most memory the process has had resident so far (`VmHWM`), in bytes.
    pub fn peak_resident_bytes(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"));
        kib * 1024
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

/// How a run under SIGKILLs went (see [`deliver_through_sigkills`]).
pub struct Kills {
    /// Every event line the sink must hold (default topics), in order.
    pub expected: Vec<String>,
    /// The last relay, stopped with SIGTERM after it delivered everything.
    pub relay: Relay,
    /// SIGKILLs sent.
    pub total: usize,
    /// SIGKILLs that landed while the sink had events handed over and not yet confirmed
    /// (`nomad_relay_sink_in_flight_events` above 0 just before the kill).
    pub in_flight: usize,
}

/// Runs the relay on `config` (whose `[http]` endpoint listens on `port`) while `generator`
/// publishes, SIGKILLing it again and again until publishing ends: each time after the
/// restarted relay's sink `sink` made progress (its cursor moved), at the moment the sink has
/// events in flight (handed to the broker, unconfirmed), the window a crash must not turn
/// into a loss or a repeat. Then waits until the sink is past every published event and
/// stops the relay with SIGTERM.
pub async fn deliver_through_sigkills(
    scratch: &Scratch,
    config: &Path,
    port: u16,
    emulator: &Emulator,
    generator: nomad_emulator::GeneratorConfig,
    sink: &str,
) -> Kills {
    deliver_through_sigkills_down_for(scratch, config, port, emulator, generator, sink, Duration::ZERO).await
}

/// [`deliver_through_sigkills`], with the relay left down for `down_for` after each kill (a
/// broker's memory of what it was sent can run out meanwhile).
pub async fn deliver_through_sigkills_down_for(
    scratch: &Scratch,
    config: &Path,
    port: u16,
    emulator: &Emulator,
    generator: nomad_emulator::GeneratorConfig,
    sink: &str,
    down_for: Duration,
) -> Kills {
    let publishing = tokio::spawn(emulator.generator(generator).run());
    let in_flight_series = format!("nomad_relay_sink_in_flight_events{{sink=\"{sink}\"}}");
    let mut relay = Relay::start(config);
    let (mut total, mut in_flight) = (0, 0);
    while !publishing.is_finished() {
        let before = scratch.cursor_next(sink).unwrap_or(0);
        eventually("the restarted relay to deliver", Duration::from_secs(60), || {
            let moved = scratch.cursor_next(sink).is_some_and(|next| next > before);
            (moved || publishing.is_finished()).then_some(())
        })
        .await;
        let landed = endpoint::wait_for_metric(port, &in_flight_series, Duration::from_secs(10), |n| n > 0.0)
            .await
            .is_some();
        relay.kill();
        total += 1;
        in_flight += usize::from(landed);
        tokio::time::sleep(down_for).await;
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
    eprintln!("{total} SIGKILLs, {in_flight} of them with events in flight");
    assert!(
        in_flight >= 5,
        "only {in_flight} of {total} kills landed with events in flight: the test proved little"
    );
    Kills { expected, relay, total, in_flight }
}

/// The id the relay gives each expected event line of `published` (default topics, source
/// `default`): Index, digest of the identity fields, and occurrence at that Index, computed
/// here from the emulator's own record of what it sent, to check what a broker stored.
pub fn expected_ids(published: &[Batch]) -> Vec<(String, String)> {
    use nomad_relay::source::resume::digest;
    let mut ids = Vec::new();
    let mut occurrences: std::collections::HashMap<(u64, u64), u32> = Default::default();
    for batch in published {
        let mut in_line = std::collections::HashSet::new();
        for event in batch.events.iter().filter(|e| DEFAULT_TOPICS.contains(&e.topic.as_str())) {
            let digest = digest("default", &event.topic, &event.event_type, &event.namespace, &event.key);
            if !in_line.insert(digest) {
                continue;
            }
            let count = occurrences.entry((batch.index, digest)).or_insert(0);
            ids.push((event.to_json(batch.index), format!("{}-{digest:016x}-{count}", batch.index)));
            *count += 1;
        }
    }
    ids
}

/// Freezes a sink's broker (`freeze`) at the moment the sink has at least `at_least` events
/// handed over and unconfirmed, and returns how long the relay took to report the sink
/// unhealthy: one deadline for the whole batch bounds it by the sink's timeout, where a
/// timeout per message awaited in turn would multiply it by the events in flight.
pub async fn time_until_a_hang_is_noticed(
    port: u16,
    sink: &str,
    at_least: f64,
    freeze: impl FnOnce(),
) -> Duration {
    let series = format!("nomad_relay_sink_in_flight_events{{sink=\"{sink}\"}}");
    let in_flight =
        endpoint::wait_for_metric(port, &series, Duration::from_secs(60), move |n| n >= at_least).await;
    assert!(in_flight.is_some(), "sink `{sink}` never had {at_least} events in flight");
    freeze();
    let frozen_at = Instant::now();
    endpoint::wait_until_unhealthy(port, sink, Duration::from_secs(120)).await;
    frozen_at.elapsed()
}

/// A small filesystem of the test's own: a tmpfs of `mib` MiB mounted at `path` (the tests
/// run as root, as CI does), unmounted when dropped.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, mib: u32) -> SmallDisk {
        fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .expect("the mount command");
        assert!(
            status.success(),
            "cannot mount a {mib} MiB tmpfs at {} (the tests need root)",
            path.display()
        );
        SmallDisk { path: path.to_owned() }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
