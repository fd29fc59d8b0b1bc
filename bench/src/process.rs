//! The relay under measurement: a child process running the release (or debug) binary that
//! sits next to this program, with a generated configuration, watched through its `/metrics`
//! endpoint and through `/proc` for its memory and CPU time.

use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running relay.
pub struct RelayProcess {
    child: Child,
    metrics_addr: String,
    /// The working directory (journal, file sink output, log).
    pub dir: tempfile::TempDir,
}

/// The relay binary: `nomad-relay` beside this program (cargo builds both into the same
/// target directory), or `$BENCH_RELAY_BIN` (a wrapper that runs it under a profiler, say).
/// Not `NOMAD_RELAY_*`: the relay reads that prefix as configuration and refuses unknown keys.
pub fn relay_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BENCH_RELAY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let beside = me.with_file_name("nomad-relay");
    if beside.exists() {
        Ok(beside)
    } else {
        bail!(
            "{} does not exist: build the relay with the same profile first \
             (`cargo build --release -p nomad-relay -p bench`, or run scripts/bench.sh)",
            beside.display()
        )
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RelayProcess {
    /// Starts the relay reading `nomad_url` with `sinks` (TOML tables) and `extra` top-level
    /// settings. Its stdout goes to /dev/null (a stdout sink writes there), its log to
    /// `relay.log` in its directory.
    pub fn start(nomad_url: &str, sinks: &str, extra: &str) -> Result<RelayProcess> {
        let dir = tempfile::Builder::new().prefix("nomad-relay-bench-").tempdir_in(bench_dir()?)?;
        RelayProcess::start_in(dir, nomad_url, sinks, extra)
    }

    /// [`RelayProcess::start`] in the working directory of an earlier relay (from
    /// [`RelayProcess::stop_keeping_dir`]), which finds that relay's journal and cursors.
    pub fn start_in(
        dir: tempfile::TempDir,
        nomad_url: &str,
        sinks: &str,
        extra: &str,
    ) -> Result<RelayProcess> {
        let port = free_port()?;
        let config = format!(
            "data_dir = \"{data}\"\n{extra}\n[nomad]\naddress = \"{nomad_url}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{sinks}\n",
            data = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("relay.log"))?;
        let child = Command::new(relay_binary()?)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the relay")?;
        Ok(RelayProcess { child, metrics_addr: format!("127.0.0.1:{port}"), dir })
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if the relay has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the relay exited ({status}); its log ends with:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// Its current metrics, by series (name with labels) → value. Not reachable yet (still
    /// starting) is an empty map.
    pub async fn metrics(&mut self) -> Result<Metrics> {
        // The endpoint comes up shortly after the process starts; until then, wait for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            self.check_alive()?;
            match tokio::net::TcpStream::connect(&self.metrics_addr).await {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    bail!("the relay's /metrics at {} did not come up within 30 s: {e}", self.metrics_addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .map_err(|_| anyhow!("the relay's /metrics did not answer within 5 s"))??;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let values = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .filter_map(|(series, value)| Some((series.to_owned(), value.parse().ok()?)))
            .collect();
        Ok(Metrics { values })
    }

    /// Resident memory now and at its peak, and CPU seconds used so far.
    pub fn usage(&self) -> Result<Usage> {
        usage_of(self.pid())
    }

    /// Stops it with SIGKILL (its state does not matter after a measurement).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops it with SIGKILL and keeps its working directory for the next relay: what it
    /// journaled and every cursor it saved are durable, as after any crash.
    pub fn stop_keeping_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dir
    }
}

/// Where relay working directories go: `$BENCH_DIR` or the system's temporary directory.
pub fn bench_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// One scrape of `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    values: HashMap<String, f64>,
}

impl Metrics {
    /// The value of `series` (for example `nomad_relay_sink_delivered_events_total{sink="bench"}`);
    /// an error when the relay does not report it (a renamed metric must fail a run, not
    /// read as 0).
    pub fn get(&self, series: &str) -> Result<f64> {
        self.values.get(series).copied().with_context(|| format!("the relay reports no metric {series}"))
    }

    /// Events the named sink has delivered.
    pub fn delivered(&self, sink: &str) -> Result<u64> {
        Ok(self.get(&format!("nomad_relay_sink_delivered_events_total{{sink=\"{sink}\"}}"))? as u64)
    }

    /// Whether the stream is open.
    pub fn connected(&self) -> bool {
        self.get("nomad_relay_source_connected{source=\"default\"}").is_ok_and(|connected| connected == 1.0)
    }
}

/// A process's memory and CPU use, from `/proc`.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Resident set size now, bytes.
    pub rss: u64,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`.
pub fn usage_of(pid: u32) -> Result<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let cpu_seconds = (ticks(11) + ticks(12)) as f64 / clock_ticks_per_second();
    Ok(Usage { rss: kib("VmRSS:"), peak_rss: kib("VmHWM:"), cpu_seconds })
}

/// `getconf CLK_TCK` (100 on every Linux this runs on; asked rather than assumed).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Removes a file if it exists.
pub fn remove_quietly(path: &Path) {
    let _ = std::fs::remove_file(path);
}
