//! The relay's configuration: one TOML file, overridable by `NOMAD_RELAY_…` variables, with
//! Nomad's own CLI variables (`NOMAD_ADDR`, `NOMAD_TOKEN`, …) honoured underneath.
//!
//! Precedence, lowest first: built-in defaults, Nomad's CLI variables, the TOML file,
//! `NOMAD_RELAY_` variables (`__` separates levels: `NOMAD_RELAY_NOMAD__ADDRESS`). Unknown
//! keys and bad values are rejected with the key's path and a hint; every check that can be
//! made without the network is made here, at load time, so `validate` catches it.

use crate::sinks::KINDS;
pub use crate::sinks::SinkKindConfig;
pub use crate::sinks::file::FileSinkConfig;
pub use crate::sinks::stdout::StdoutSinkConfig;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use nomad_relay_sink_api::Template;
pub use nomad_relay_sink_api::units::{ByteSize, HumanDuration, OneOrMany, Secret};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The name of the only Nomad source when the configuration has a single `[nomad]` table.
pub const DEFAULT_SOURCE: &str = "default";

/// Topics subscribed to by default: every standard topic a non-management ACL token can be
/// granted. `NodePool`, the `ACL*` topics and unknown topics need a management token, and
/// `Variable` exists only from Nomad 2.0 (older servers treat it as unknown, which also needs
/// management), so they are opt-in.
pub const DEFAULT_TOPICS: &[&str] = &[
    "Job",
    "Allocation",
    "Evaluation",
    "Deployment",
    "Node",
    "Service",
    "CSIVolume",
    "CSIPlugin",
    "HostVolume",
];

/// A configuration that failed to load or validate.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        let mut lines = Vec::new();
        for error in error {
            let path = error.path.join(".");
            let mut line =
                if path.is_empty() { error.kind.to_string() } else { format!("`{path}`: {}", error.kind) };
            if let Some(metadata) = &error.metadata {
                let source = metadata.source.as_ref().map(|s| s.to_string()).unwrap_or_default();
                line.push_str(&format!(
                    " (from {}{})",
                    metadata.name,
                    if source.is_empty() { String::new() } else { format!(" {source}") }
                ));
            }
            lines.push(line);
        }
        ConfigError(format!("invalid configuration: {}", lines.join("; ")))
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the journal, cursors and lock file live.
    pub data_dir: PathBuf,
    /// The Nomad clusters or regions to follow: one `[nomad]` table, or several `[[nomad]]`
    /// tables each with its own `name`.
    pub nomad: Vec<NomadConfig>,
    /// Journal sizing and retention.
    pub journal: JournalConfig,
    /// Configured sinks, by name.
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Routing rules; empty means every event goes to every sink.
    pub routes: Vec<RouteConfig>,
    /// The metrics and health endpoint; none without an `[http]` table.
    pub http: Option<HttpConfig>,
    /// How long a shutdown (SIGTERM, SIGINT) may take to finish the batches in flight and
    /// save the cursors before the relay exits anyway.
    pub shutdown_timeout: HumanDuration,
    /// High availability; none without an `[ha]` table.
    pub ha: Option<HaConfig>,
}

/// `[ha]`: run as one of several instances, of which only the holder of a lease in Nomad's
/// Variables delivers (see `crate::ha`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Where the lease lives: `"nomad"` (a Nomad variable lock; the only backend so far).
    #[serde(default = "default_ha_backend")]
    pub backend: String,
    /// The `[[nomad]]` source whose address, token and TLS settings reach the Variables API
    /// (default: the first).
    #[serde(default)]
    pub source: Option<String>,
    /// The variable that holds the lock and the shared checkpoint, such as
    /// "nomad-relay/leader"; every instance of one relay group names the same one.
    #[serde(default = "default_ha_path")]
    pub path: String,
    /// The variable's namespace (default "default").
    #[serde(default = "default_ha_namespace")]
    pub namespace: String,
    /// The lock's TTL: Nomad accepts 10s to 24h and expires a lock not renewed for twice
    /// this (`nomad/locks.go`). The leader renews every third of it and stops delivering once
    /// its last renewal is older than 0.9 of it. Default 15s.
    #[serde(default = "default_ha_duration")]
    pub ttl: HumanDuration,
    /// How long an expired lock stays held before another instance may take it (Nomad's
    /// `LockDelay`). Default 15s.
    #[serde(default = "default_ha_duration")]
    pub lock_delay: HumanDuration,
    /// How often the leader writes the shared checkpoint (it also writes one at every clean
    /// stop). Nomad's docs advise against fast-changing variables. Default 5s.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
}

fn default_ha_backend() -> String {
    "nomad".into()
}

fn default_ha_path() -> String {
    "nomad-relay/leader".into()
}

fn default_ha_namespace() -> String {
    "default".into()
}

fn default_ha_duration() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl HaConfig {
    /// Checks the table against the configured sources and sinks.
    fn validate(
        &self,
        sources: &[NomadConfig],
        sinks: &BTreeMap<String, SinkConfig>,
    ) -> Result<(), ConfigError> {
        if self.backend != "nomad" {
            return Err(ConfigError(format!(
                "`ha.backend`: `{}` is not a lease backend; use \"nomad\"",
                self.backend
            )));
        }
        if let Some(source) = &self.source
            && !sources.iter().any(|n| &n.name == source)
        {
            return Err(ConfigError(format!("`ha.source`: no [[nomad]] table is named `{source}`")));
        }
        let valid = (1..=128).contains(&self.path.len())
            && self.path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_~/".contains(&b));
        if !valid {
            return Err(ConfigError(format!(
                "`ha.path`: `{}` is not a Nomad variable path (1 to 128 of a-z, A-Z, 0-9, -, _, ~ and /)",
                self.path
            )));
        }
        if self.ttl.0 < Duration::from_secs(1) || self.checkpoint_interval.0 < Duration::from_millis(100) {
            return Err(ConfigError(
                "`ha.ttl` must be at least 1s and `ha.checkpoint_interval` at least 100ms".into(),
            ));
        }
        if let Some((name, _)) = sinks.iter().find(|(_, s)| s.kind.kind() == "file") {
            return Err(ConfigError(format!(
                "`sinks.{name}`: a file sink writes to one host's disk, so another instance taking over cannot see or continue its file; with [ha], send events to a broker"
            )));
        }
        Ok(())
    }
}

/// `[http]`: where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on, such as "127.0.0.1:8686".
    pub listen: std::net::SocketAddr,
    /// Connections served at once, 1 to 65,536 (default 64); one more is closed unanswered
    /// and counted in `nomad_relay_http_refused_connections_total`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

/// Most `[http] max_connections` accepted: far above any scraping setup, and below what the
/// process's file descriptors allow by default.
pub const MAX_HTTP_CONNECTIONS: usize = 65_536;

fn default_max_connections() -> usize {
    64
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    nomad: Option<Value>,
    #[serde(default)]
    journal: JournalConfig,
    #[serde(default)]
    sinks: BTreeMap<String, Dict>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    #[serde(default)]
    http: Option<HttpConfig>,
    #[serde(default = "default_shutdown_timeout")]
    shutdown_timeout: HumanDuration,
    #[serde(default)]
    ha: Option<HaConfig>,
}

fn default_shutdown_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// Where to start reading when the journal is empty (first start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The oldest event Nomad still holds in its buffer.
    #[default]
    Oldest,
    /// Nomad's newest batch at connect time, then everything after it (Nomad cannot start
    /// strictly after the present; keeping that batch is what makes this lossless).
    Now,
    /// The given index (inclusive).
    Index(u64),
}

impl<'de> Deserialize<'de> for StartAt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Index(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Index(index) => Ok(StartAt::Index(index)),
            Raw::Text(text) => match text.as_str() {
                "oldest" => Ok(StartAt::Oldest),
                "now" => Ok(StartAt::Now),
                other => other.parse().map(StartAt::Index).map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{other}` is not a start position; use \"oldest\", \"now\" or an index number"
                    ))
                }),
            },
        }
    }
}

/// How to reach Nomad and what to ask it for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NomadConfig {
    /// The source's name, shown in logs, metrics, gap markers and the `Source` template field:
    /// required with several `[[nomad]]` tables, `default` with one. Renaming it changes
    /// none of the event ids.
    pub name: String,
    /// What the source's event ids are made from, besides the event itself (raft indexes
    /// belong to one cluster, so two clusters need different scopes). Unset, the journal
    /// settles it (`journal::names`): the scope the source had, or `default` for a single
    /// source and its name for several. Changing it changes every id.
    pub id_scope: Option<String>,
    /// One address or several, tried in turn (`http://` or `https://`).
    pub address: OneOrMany<String>,
    /// ACL token sent as `X-Nomad-Token`.
    pub token: Option<Secret>,
    /// File holding the token, re-read before every connection (takes precedence over
    /// `token`).
    pub token_file: Option<PathBuf>,
    /// Region to stream from (default: the agent's own).
    pub region: Option<String>,
    /// Namespace filter; `*` means every namespace.
    pub namespace: String,
    /// With `namespace = "*"`: how often, at most, to ask Nomad for its namespace list, so a
    /// new namespace leads to a resubscription that includes it.
    pub namespace_refresh: HumanDuration,
    /// Topics to subscribe to, as `Topic` or `Topic:Key`.
    pub topics: Vec<String>,
    /// Where to start when the journal is empty.
    pub start: StartAt,
    /// Reconnect when no byte arrived for this long (Nomad heartbeats every 30 s).
    pub idle_timeout: HumanDuration,
    /// How long a stream may stay below the checkpoint before its index is taken to have
    /// gone backwards (a lagging server catches up well within it).
    pub index_reset_after: HumanDuration,
    /// Time allowed to connect and receive response headers.
    pub connect_timeout: HumanDuration,
    /// Longest NDJSON line accepted; a longer one is skipped and recorded as a gap.
    pub max_line_bytes: ByteSize,
    /// Ask for gzip (only servers before 1.11.2 compress the stream).
    pub compression: bool,
    /// Journal a `NomadRelay`/`GapDetected` event when Nomad may have dropped events.
    pub gap_markers: bool,
    /// TLS settings for `https://` addresses.
    pub tls: TlsConfig,
    /// Reconnect back-off.
    pub reconnect: ReconnectConfig,
}

impl Default for NomadConfig {
    fn default() -> Self {
        NomadConfig {
            name: DEFAULT_SOURCE.to_owned(),
            id_scope: None,
            address: OneOrMany::One("http://127.0.0.1:4646".to_owned()),
            token: None,
            token_file: None,
            region: None,
            namespace: "*".to_owned(),
            namespace_refresh: HumanDuration(Duration::from_secs(10)),
            topics: DEFAULT_TOPICS.iter().map(|t| (*t).to_owned()).collect(),
            start: StartAt::Oldest,
            idle_timeout: HumanDuration(Duration::from_secs(90)),
            index_reset_after: HumanDuration(Duration::from_secs(60)),
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            max_line_bytes: ByteSize(64 << 20),
            compression: true,
            gap_markers: true,
            tls: TlsConfig::default(),
            reconnect: ReconnectConfig::default(),
        }
    }
}

impl NomadConfig {
    /// Checks this source's settings; errors name keys under `key` (`nomad`, `nomad[1]`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.name.is_empty()
            || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return fail(format!("`{key}.name`: `{}` must be letters, digits, `-`, `_` or `.`", self.name));
        }
        if self.id_scope.as_deref() == Some("") {
            return fail(format!("`{key}.id_scope`: must not be empty; leave it out for `default`"));
        }
        let addresses = self.address.to_vec();
        if addresses.is_empty() {
            return fail(format!(
                "`{key}.address`: give at least one address, such as \"http://127.0.0.1:4646\""
            ));
        }
        for address in &addresses {
            let Ok(url) = reqwest::Url::parse(address) else {
                return fail(format!(
                    "`{key}.address`: `{address}` is not a URL; write it like \"http://127.0.0.1:4646\""
                ));
            };
            if url.scheme() != "http" && url.scheme() != "https" {
                return fail(format!("`{key}.address`: `{address}` must start with http:// or https://"));
            }
        }
        self.validate_topics(key)?;
        if self.idle_timeout.0 < Duration::from_millis(100) {
            return fail(format!(
                "`{key}.idle_timeout`: too short; Nomad heartbeats every 30 s, so use at least \"60s\" in production"
            ));
        }
        if self.index_reset_after.0 < Duration::from_secs(1) {
            return fail(format!(
                "`{key}.index_reset_after`: too short; a server that lags behind another needs time to catch up, so use at least \"30s\" in production"
            ));
        }
        if self.max_line_bytes.0 < 1024 {
            return fail(format!(
                "`{key}.max_line_bytes`: must be at least 1KiB; Nomad lines can be many MB (default 64MiB)"
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return fail(format!(
                "`{key}.tls`: `cert_file` and `key_file` go together for mTLS; set both or neither"
            ));
        }
        Ok(())
    }

    /// Topics are `Topic` or `Topic:Key` (Nomad refuses more `:`), and never one topic both
    /// whole and keyed (Nomad then drops the wildcard).
    fn validate_topics(&self, key: &str) -> Result<(), ConfigError> {
        if self.topics.is_empty() {
            return Err(ConfigError(format!(
                "`{key}.topics`: subscribe to at least one topic (remove the key for the defaults)"
            )));
        }
        let mut wildcard_topics = BTreeSet::new();
        let mut keyed_topics = BTreeSet::new();
        for topic in &self.topics {
            let parts: Vec<&str> = topic.split(':').collect();
            match parts.as_slice() {
                [name] | [name, "*"] if !name.is_empty() => {
                    wildcard_topics.insert(*name);
                }
                [name, _key] if !name.is_empty() => {
                    keyed_topics.insert(*name);
                }
                _ => {
                    return Err(ConfigError(format!(
                        "`{key}.topics`: `{topic}` is not `Topic` or `Topic:Key` (Nomad refuses more than one `:`)"
                    )));
                }
            }
        }
        if let Some(topic) = wildcard_topics.intersection(&keyed_topics).next() {
            return Err(ConfigError(format!(
                "`{key}.topics`: `{topic}` is listed both whole and with a key; Nomad then delivers only the keyed events (the wildcard is lost), so list it one way"
            )));
        }
        Ok(())
    }
}

/// TLS and mTLS settings for the Nomad connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed Nomad's certificate (default: the system's roots).
    /// Takes precedence over `ca_path`, as in Nomad's CLI (go-rootcerts' `LoadCACerts`).
    pub ca_file: Option<PathBuf>,
    /// Directory of PEM CA certificates (`NOMAD_CAPATH`), read recursively; every file in it
    /// must hold at least one certificate, as Nomad's CLI requires (go-rootcerts'
    /// `LoadCAPath`).
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate for mTLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Name to verify the server certificate against instead of the address's host (Nomad's
    /// certificates name `server.<region>.nomad`).
    pub server_name: Option<String>,
    /// Accept any server certificate. For testing only: it removes the protection TLS gives.
    pub skip_verify: bool,
}

/// Reconnect back-off for the Nomad connection: jittered, exponential, never giving up.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First delay after a dropped connection.
    pub min_delay: HumanDuration,
    /// Longest delay between attempts.
    pub max_delay: HumanDuration,
    /// First delay after Nomad refused the token or the topics.
    pub denied_min_delay: HumanDuration,
    /// Longest delay between attempts while Nomad keeps refusing.
    pub denied_max_delay: HumanDuration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min_delay: HumanDuration(Duration::from_millis(500)),
            max_delay: HumanDuration(Duration::from_secs(30)),
            denied_min_delay: HumanDuration(Duration::from_secs(30)),
            denied_max_delay: HumanDuration(Duration::from_secs(300)),
        }
    }
}

/// Journal sizing and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Most bytes the journal may hold. Delivered events are removed to stay under it; when
    /// undelivered events fill it, the relay stops reading Nomad (or drops the oldest events
    /// of sinks set to `when_full = "drop_oldest"`).
    pub max_bytes: ByteSize,
    /// Delivered events are kept for replay at most this long.
    pub max_age: HumanDuration,
    /// Size at which a journal segment file is closed and a new one started.
    pub segment_bytes: ByteSize,
    /// Most bytes of received events (their JSON) held in memory on their way to the journal
    /// (a single line larger than that still passes, alone). While it is full the relay reads
    /// no more from Nomad.
    pub buffer_bytes: ByteSize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_bytes: ByteSize(2 << 30),
            max_age: HumanDuration(Duration::from_secs(24 * 3600)),
            segment_bytes: ByteSize(64 << 20),
            buffer_bytes: ByteSize(64 << 20),
        }
    }
}

impl JournalConfig {
    /// Checks the sizes against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.segment_bytes.0 < 4096 {
            return Err(ConfigError("`journal.segment_bytes`: must be at least 4KiB".into()));
        }
        if self.buffer_bytes.0 < 1 << 20 || self.buffer_bytes.0 > u64::from(u32::MAX) {
            return Err(ConfigError(
                "`journal.buffer_bytes`: must be between 1MiB and 4GiB (default 64MiB)".into(),
            ));
        }
        if self.max_bytes.0 < self.segment_bytes.0.saturating_mul(2) {
            return Err(ConfigError(format!(
                "`journal.max_bytes`: must be at least twice `journal.segment_bytes` ({} bytes)",
                self.segment_bytes.0
            )));
        }
        Ok(())
    }
}

/// What a sink does when the journal is full because it is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Keep every event for this sink; the relay stops reading Nomad until it catches up.
    #[default]
    Block,
    /// Let the journal drop this sink's oldest undelivered events (counted and logged).
    DropOldest,
}

/// Settings every sink has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommonSinkConfig {
    /// What to do when the journal is full because this sink is behind.
    pub when_full: WhenFull,
    /// Most events handed to the sink in one batch.
    pub batch_size: usize,
    /// First delay before re-sending events the sink could not deliver.
    pub retry_min_delay: HumanDuration,
    /// Longest delay between re-sends (retries never stop).
    pub retry_max_delay: HumanDuration,
    /// Most bytes of events (their JSON) in one batch, besides `batch_size` events; a single
    /// larger event still goes, alone.
    pub batch_bytes: ByteSize,
    /// Most bytes of events the worker sets aside, in memory, while their destination alone is
    /// broken (`Outcome::Parked`); past it the sink waits as for a retry. `0`: never set aside.
    pub max_parked_bytes: ByteSize,
}

impl Default for CommonSinkConfig {
    fn default() -> Self {
        CommonSinkConfig {
            when_full: WhenFull::Block,
            batch_size: 1000,
            retry_min_delay: HumanDuration(Duration::from_millis(200)),
            retry_max_delay: HumanDuration(Duration::from_secs(30)),
            batch_bytes: ByteSize(16 << 20),
            max_parked_bytes: ByteSize(8 << 20),
        }
    }
}

impl CommonSinkConfig {
    /// The keys of these settings, as a sink table spells them: read from the struct's own
    /// `Deserialize`, so the list cannot drift from the fields.
    pub fn keys() -> &'static [&'static str] {
        struct_fields::<CommonSinkConfig>()
    }

    /// Checks the settings of sink `name`.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(ConfigError(format!("`sinks.{name}.batch_size`: must be at least 1")));
        }
        if self.batch_bytes.0 < 64 << 10 {
            return Err(ConfigError(format!(
                "`sinks.{name}.batch_bytes`: must be at least 64KiB (default 16MiB)"
            )));
        }
        Ok(())
    }
}

/// One configured sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Settings every sink has.
    pub common: CommonSinkConfig,
    /// The sink's own settings, by type.
    pub kind: SinkKindConfig,
}

impl SinkConfig {
    /// Checks sink `name`: its name, the common settings, then its kind's own.
    pub fn validate(&self, name: &str) -> Result<(), ConfigError> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(ConfigError(format!(
                "`sinks.{name}`: a sink name may use only letters, digits, `-` and `_` (it names the sink's cursor file)"
            )));
        }
        self.common.validate(name)?;
        self.kind.validate(&format!("sinks.{name}")).map_err(ConfigError)
    }
}

/// One routing rule: events matching every non-empty selector go to `sinks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Topic globs (`Allocation`, `ACL*`); empty matches every topic.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Type globs (`Job*`, `PlanResult`); empty matches every type.
    #[serde(default)]
    pub types: Vec<String>,
    /// Namespace globs; empty matches every namespace.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Key globs (object ids); empty matches every key.
    #[serde(default)]
    pub keys: Vec<String>,
    /// Names of the sinks that receive matching events.
    pub sinks: Vec<String>,
}

impl RouteConfig {
    /// Checks route number `position` against the configured `sinks`.
    pub fn validate(&self, position: usize, sinks: &BTreeMap<String, SinkConfig>) -> Result<(), ConfigError> {
        if self.sinks.is_empty() {
            return Err(ConfigError(format!("`routes[{position}].sinks`: name at least one sink")));
        }
        if let Some(sink) = self.sinks.iter().find(|sink| !sinks.contains_key(*sink)) {
            let known: Vec<&str> = sinks.keys().map(String::as_str).collect();
            return Err(ConfigError(format!(
                "`routes[{position}].sinks`: no sink named `{sink}`; configured sinks are {}",
                known.join(", ")
            )));
        }
        Ok(())
    }
}

/// Where [`Config::load`] reads from.
#[derive(Debug, Clone, Default)]
pub struct LoadFrom<'a> {
    /// The TOML file, if any.
    pub file: Option<&'a Path>,
    /// Read Nomad's and the relay's environment variables.
    pub environment: bool,
}

/// Nomad's CLI variables and the config keys they set.
const NOMAD_VARIABLES: &[(&str, &str)] = &[
    ("NOMAD_ADDR", "nomad.address"),
    ("NOMAD_TOKEN", "nomad.token"),
    ("NOMAD_REGION", "nomad.region"),
    ("NOMAD_NAMESPACE", "nomad.namespace"),
    ("NOMAD_CACERT", "nomad.tls.ca_file"),
    ("NOMAD_CAPATH", "nomad.tls.ca_path"),
    ("NOMAD_CLIENT_CERT", "nomad.tls.cert_file"),
    ("NOMAD_CLIENT_KEY", "nomad.tls.key_file"),
    ("NOMAD_TLS_SERVER_NAME", "nomad.tls.server_name"),
    ("NOMAD_SKIP_VERIFY", "nomad.tls.skip_verify"),
];

/// What Nomad sets in a task's environment about the task itself (hashicorp/nomad
/// `client/taskenv/env.go`): not configuration, so never reported as unused. Entries ending
/// in `_` are prefixes.
const NOMAD_TASK_VARIABLES: &[&str] = &[
    "NOMAD_TASK_DIR",
    "NOMAD_SECRETS_DIR",
    "NOMAD_MEMORY_LIMIT",
    "NOMAD_MEMORY_MAX_LIMIT",
    "NOMAD_CPU_LIMIT",
    "NOMAD_CPU_CORES",
    "NOMAD_SHORT_ALLOC_ID",
    "NOMAD_TASK_NAME",
    "NOMAD_GROUP_NAME",
    "NOMAD_JOB_ID",
    "NOMAD_JOB_NAME",
    "NOMAD_JOB_PARENT_ID",
    "NOMAD_DC",
    "NOMAD_PARENT_CGROUP",
    "NOMAD_UNIX_ADDR",
    "NOMAD_ADDR_",
    "NOMAD_HOST_ADDR_",
    "NOMAD_IP_",
    "NOMAD_HOST_IP_",
    "NOMAD_IPv4_",
    "NOMAD_IPv6_",
    "NOMAD_PORT_",
    // NOMAD_ALLOC_DIR, _ID, _NAME, _INDEX and the NOMAD_ALLOC_PORT_/IP_/ADDR_ families.
    "NOMAD_ALLOC_",
    "NOMAD_HOST_PORT_",
    "NOMAD_META_",
    "NOMAD_UPSTREAM_",
];

/// The `NOMAD_*` variables in `environment` that the relay does not use, each with what to
/// do instead: a Nomad CLI variable the relay does not support (`NOMAD_HTTP_AUTH`), or a name
/// neither Nomad's API client nor its task environment defines (a typo, most often). The
/// relay's own `NOMAD_RELAY_*` variables, the ones it maps from Nomad's CLI and the task
/// environment Nomad provides are not reported.
pub fn unused_nomad_variables(
    environment: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<String> {
    let mut unused = Vec::new();
    for (name, value) in environment {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("NOMAD_") || name.starts_with("NOMAD_RELAY_") || value.is_empty() {
            continue;
        }
        let used = NOMAD_VARIABLES.iter().any(|(variable, _)| *variable == name);
        let task = NOMAD_TASK_VARIABLES
            .iter()
            .any(|known| if known.ends_with('_') { name.starts_with(known) } else { name == *known });
        if used || task {
            continue;
        }
        unused.push(match name {
            "NOMAD_HTTP_AUTH" => format!(
                "{name} is set but nomad-relay does not send HTTP basic authentication; put a proxy's credentials in `nomad.address` or use `nomad.token`"
            ),
            _ => format!(
                "{name} is set but nomad-relay does not use it (it reads {}; its own settings are NOMAD_RELAY_*)",
                NOMAD_VARIABLES.iter().map(|(variable, _)| *variable).collect::<Vec<_>>().join(", ")
            ),
        });
    }
    unused.sort();
    unused
}

/// Built-in configuration used when no file is given: stdout sink, journal in `./data`.
pub const EMBEDDED_DEFAULTS: &str = r#"
data_dir = "./data"
[sinks.stdout]
type = "stdout"
"#;

impl Config {
    /// Loads and validates the configuration.
    pub fn load(from: LoadFrom<'_>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if from.environment {
            for (variable, key) in NOMAD_VARIABLES {
                if let Ok(value) = std::env::var(variable) {
                    if value.is_empty() {
                        continue;
                    }
                    let value = if *variable == "NOMAD_SKIP_VERIFY" {
                        Value::from(matches!(value.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
                    } else {
                        Value::from(value)
                    };
                    figment = figment.merge(Serialized::default(key, value));
                }
            }
        }
        match from.file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError(format!(
                        "configuration file {} does not exist; write one (see config.example.toml) or run without --config for the built-in defaults",
                        path.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(path));
            }
            None => figment = figment.merge(Toml::string(EMBEDDED_DEFAULTS)),
        }
        if from.environment {
            // NOMAD_RELAY_LOG, NOMAD_RELAY_LOG_FORMAT and NOMAD_RELAY_CONFIG belong to the
            // command line, not to the file's keys.
            figment = figment
                .merge(Env::prefixed("NOMAD_RELAY_").ignore(&["LOG", "LOG_FORMAT", "CONFIG"]).split("__"));
        }
        let raw: RawConfig = figment.extract()?;
        Config::from_raw(raw)
    }

    /// Loads a configuration from TOML text only (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = Figment::from(Toml::string(text)).extract()?;
        Config::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let mut sinks = BTreeMap::new();
        for (name, table) in raw.sinks {
            sinks.insert(name.clone(), parse_sink(&name, table)?);
        }
        let nomad = match raw.nomad {
            None => vec![NomadConfig::default()],
            Some(Value::Array(_, tables)) => {
                let mut sources = Vec::new();
                for (position, table) in tables.into_iter().enumerate() {
                    let has_name = matches!(&table, Value::Dict(_, dict) if dict.contains_key("name"));
                    if !has_name {
                        return Err(ConfigError(format!(
                            "`nomad[{position}].name`: missing; with several [[nomad]] tables each needs a name (it is part of every event id)"
                        )));
                    }
                    sources.push(
                        table
                            .deserialize::<NomadConfig>()
                            .map_err(|e| with_path(&format!("nomad[{position}]"), e))?,
                    );
                }
                sources
            }
            Some(table) => vec![table.deserialize::<NomadConfig>().map_err(|e| with_path("nomad", e))?],
        };
        let config = Config {
            data_dir: raw.data_dir,
            nomad,
            journal: raw.journal,
            sinks,
            routes: raw.routes,
            http: raw.http,
            shutdown_timeout: raw.shutdown_timeout,
            ha: raw.ha,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole tree: each part checks itself, then what ties parts together
    /// (sink and source names, routes naming sinks).
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(http) = &self.http
            && !(1..=MAX_HTTP_CONNECTIONS).contains(&http.max_connections)
        {
            return Err(ConfigError(format!(
                "`http.max_connections`: {} is out of range; give 1 to {MAX_HTTP_CONNECTIONS}",
                http.max_connections
            )));
        }
        if self.sinks.is_empty() {
            return Err(ConfigError(format!(
                "no sinks configured: add a `[sinks.NAME]` table with `type` one of {}",
                KINDS.join(", ")
            )));
        }
        for (name, sink) in &self.sinks {
            sink.validate(name)?;
        }
        if self.nomad.is_empty() {
            return Err(ConfigError("`nomad`: give at least one [nomad] table".into()));
        }
        let mut names = BTreeSet::new();
        let mut scopes = BTreeMap::new();
        for (position, nomad) in self.nomad.iter().enumerate() {
            let key = if self.nomad.len() == 1 { "nomad".to_owned() } else { format!("nomad[{position}]") };
            nomad.validate(&key)?;
            if !names.insert(nomad.name.as_str()) {
                return Err(ConfigError(format!(
                    "`{key}.name`: `{}` is used by two [[nomad]] tables; each source needs its own name",
                    nomad.name
                )));
            }
            if let Some(scope) = &nomad.id_scope
                && let Some(other) = scopes.insert(scope.as_str(), nomad.name.as_str())
            {
                return Err(ConfigError(format!(
                    "`{key}.id_scope`: sources `{other}` and `{}` both have id scope `{scope}`, so their events would get the same ids (raft indexes are per cluster); give each [[nomad]] table its own `id_scope`",
                    nomad.name
                )));
            }
        }
        if self.shutdown_timeout.0 < Duration::from_secs(1) {
            return Err(ConfigError(
                "`shutdown_timeout`: must be at least 1s (sinks need time to finish their batch)".into(),
            ));
        }
        self.journal.validate()?;
        for (position, route) in self.routes.iter().enumerate() {
            route.validate(position, &self.sinks)?;
        }
        if let Some(ha) = &self.ha {
            ha.validate(&self.nomad, &self.sinks)?;
        }
        Ok(())
    }

    /// Parses a template from a config value, naming the key on error.
    pub fn template(key: &str, source: &str) -> Result<Template, ConfigError> {
        Template::parse(source).map_err(|error| ConfigError(format!("`{key}`: {error}")))
    }
}

/// Prefixes each error of a sub-table's deserialisation with the table's key path.
fn with_path(prefix: &str, error: figment::Error) -> ConfigError {
    let mut text = String::new();
    for error in error {
        let path = error.path.join(".");
        if !text.is_empty() {
            text.push_str("; ");
        }
        if path.is_empty() {
            text.push_str(&format!("`{prefix}`: {}", error.kind));
        } else {
            text.push_str(&format!("`{prefix}.{path}`: {}", error.kind));
        }
    }
    ConfigError(format!("invalid configuration: {text}"))
}

/// The field names a `Deserialize` struct asks for, read by handing it a deserializer that
/// records them.
fn struct_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only structs are read"))
        }
        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

fn parse_sink(name: &str, mut table: Dict) -> Result<SinkConfig, ConfigError> {
    let mut common = Dict::new();
    for key in CommonSinkConfig::keys() {
        if let Some(value) = table.remove(*key) {
            common.insert((*key).to_owned(), value);
        }
    }
    let prefix = format!("sinks.{name}");
    let context = |error: figment::Error| with_path(&prefix, error);
    if !table.contains_key("type") {
        return Err(ConfigError(format!(
            "`sinks.{name}.type`: missing; set it to one of {}",
            KINDS.join(", ")
        )));
    }
    let common: CommonSinkConfig = Value::from(common).deserialize().map_err(context)?;
    let kind: SinkKindConfig = Value::from(table).deserialize().map_err(context)?;
    Ok(SinkConfig { common, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_nomad_variables_skip_the_relays_own_and_the_task_environment() {
        let environment = [
            ("NOMAD_ADDR", "http://n:4646"),
            ("NOMAD_CAPATH", "/etc/nomad.d/ca"),
            ("NOMAD_HTTP_AUTH", "user:pass"),
            ("NOMAD_TOKNE", "typo"),
            ("NOMAD_ALLOC_ID", "x"),
            ("NOMAD_META_owner", "ops"),
            ("NOMAD_ADDR_http", "10.0.0.1:8686"),
            ("NOMAD_RELAY_DATA_DIR", "/d"),
            ("NOMAD_EMPTY", ""),
            ("HOME", "/root"),
        ]
        .map(|(name, value)| (name.into(), value.into()));
        let unused = unused_nomad_variables(environment);
        assert_eq!(unused.len(), 2, "{unused:?}");
        assert!(unused[0].starts_with("NOMAD_HTTP_AUTH is set but") && !unused[0].contains("user:pass"));
        assert!(unused[1].starts_with("NOMAD_TOKNE is set but") && unused[1].contains("NOMAD_TOKEN"));
    }

    #[test]
    fn a_file_sink_mode_is_octal_permission_bits() {
        let parse = |mode: &str| {
            Config::from_toml(&format!("[sinks.out]\ntype = \"file\"\npath = \"x\"\nmode = \"{mode}\"\n"))
        };
        let config = parse("0640").expect("octal");
        let SinkKindConfig::File(file) = &config.sinks["out"].kind else { panic!("a file sink") };
        assert_eq!(file.mode.0, 0o640);
        for bad in ["0800", "1777", "rw-r--r--"] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.contains("is not a file mode"), "{error}");
        }
    }

    #[test]
    fn the_common_sink_keys_are_the_structs_fields() {
        assert_eq!(
            CommonSinkConfig::keys(),
            [
                "when_full",
                "batch_size",
                "retry_min_delay",
                "retry_max_delay",
                "batch_bytes",
                "max_parked_bytes"
            ]
        );
        // A common key is taken out of the sink's table before its kind's own settings are
        // read, so `deny_unknown_fields` there does not refuse it.
        let config = Config::from_toml(
            "[sinks.out]\ntype = \"stdout\"\nbatch_size = 7\nwhen_full = \"drop_oldest\"\nretry_min_delay = \"1s\"\nretry_max_delay = \"2s\"\n",
        )
        .expect("every common key accepted");
        assert_eq!(config.sinks["out"].common.batch_size, 7);
    }

    #[test]
    fn minimal_config_from_the_issue_loads() {
        let config = Config::from_toml(
            r#"
            data_dir = "./data"
            [nomad]
            address = "http://127.0.0.1:4646"
            [sinks.out]
            type = "file"
            path = "./events.ndjson"
            "#,
        )
        .expect("minimal config");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.nomad[0].namespace, "*");
        assert_eq!(config.nomad[0].name, "default");
        assert_eq!(config.nomad[0].topics.len(), DEFAULT_TOPICS.len());
        assert!(
            matches!(&config.sinks["out"].kind, SinkKindConfig::File(file) if file.path == Path::new("./events.ndjson"))
        );
        assert_eq!(config.sinks["out"].common.when_full, WhenFull::Block);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let error = Config::from_toml(
            r#"
            [nomad]
            adress = "http://x"
            [sinks.out]
            type = "stdout"
            "#,
        )
        .expect_err("typo");
        assert!(error.to_string().contains("nomad"), "{error}");
        assert!(error.to_string().contains("adress"), "{error}");
    }

    #[test]
    fn unknown_sink_key_names_the_sink() {
        let error = Config::from_toml(
            r#"
            [sinks.out]
            type = "file"
            pth = "x"
            "#,
        )
        .expect_err("typo");
        let text = error.to_string();
        assert!(text.contains("sinks.out"), "{text}");
        assert!(text.contains("pth"), "{text}");
    }

    #[test]
    fn unknown_sink_type_lists_the_known_ones() {
        let error = Config::from_toml("[sinks.out]\ntype = \"fiel\"\n").expect_err("bad type");
        let text = error.to_string();
        assert!(text.contains("fiel") && text.contains("file") && text.contains("stdout"), "{text}");
    }

    #[test]
    fn route_to_missing_sink_is_rejected() {
        let error = Config::from_toml(
            "[sinks.out]\ntype = \"stdout\"\n[[routes]]\ntopics = [\"Job\"]\nsinks = [\"nope\"]\n",
        )
        .expect_err("missing sink");
        assert!(error.to_string().contains("no sink named `nope`"), "{error}");
    }

    #[test]
    fn mixed_wildcard_and_keyed_topic_is_rejected() {
        let error =
            Config::from_toml("[nomad]\ntopics = [\"Job\", \"Job:web\"]\n[sinks.out]\ntype = \"stdout\"\n")
                .expect_err("wildcard loss");
        assert!(error.to_string().contains("wildcard is lost"), "{error}");
    }

    #[test]
    fn bad_duration_and_start_are_explained() {
        let error =
            Config::from_toml("[nomad]\nidle_timeout = \"5 fortnights\"\n[sinks.out]\ntype = \"stdout\"\n")
                .expect_err("bad duration");
        assert!(error.to_string().contains("nomad.idle_timeout"), "{error}");
        let error = Config::from_toml("[nomad]\nstart = \"yesterday\"\n[sinks.out]\ntype = \"stdout\"\n")
            .expect_err("bad start");
        assert!(error.to_string().contains("oldest"), "{error}");
        let config =
            Config::from_toml("[nomad]\nstart = 1234\n[sinks.out]\ntype = \"stdout\"\n").expect("index");
        assert_eq!(config.nomad[0].start, StartAt::Index(1234));
    }

    #[test]
    fn several_clusters_need_distinct_names() {
        let config = Config::from_toml(
            "[[nomad]]\nname = \"eu\"\nid_scope = \"eu\"\naddress = \"http://eu:4646\"\n[[nomad]]\nname = \"us\"\nid_scope = \"us\"\naddress = \"http://us:4646\"\n[sinks.out]\ntype = \"stdout\"\n",
        )
        .expect("two clusters");
        assert_eq!(config.nomad.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["eu", "us"]);
        Config::from_toml(
            "[[nomad]]\nname = \"eu\"\n[[nomad]]\nname = \"us\"\n[sinks.out]\ntype = \"stdout\"\n",
        )
        .expect("scopes left for the journal to settle");
        let error = Config::from_toml(
            "[[nomad]]\nname = \"eu\"\nid_scope = \"x\"\n[[nomad]]\nname = \"us\"\nid_scope = \"x\"\n[sinks.out]\ntype = \"stdout\"\n",
        )
        .expect_err("one id scope for two clusters");
        assert!(
            error.to_string().contains("`nomad[1].id_scope`: sources `eu` and `us` both have id scope `x`"),
            "{error}"
        );
        let error =
            Config::from_toml("[[nomad]]\naddress = \"http://eu:4646\"\n[sinks.out]\ntype = \"stdout\"\n")
                .expect_err("unnamed");
        assert!(error.to_string().contains("`nomad[0].name`: missing"), "{error}");
        let error = Config::from_toml(
            "[[nomad]]\nname = \"eu\"\n[[nomad]]\nname = \"eu\"\n[sinks.out]\ntype = \"stdout\"\n",
        )
        .expect_err("duplicate");
        assert!(error.to_string().contains("used by two"), "{error}");
        let error =
            Config::from_toml("[[nomad]]\nname = \"eu\"\nadress = \"x\"\n[sinks.out]\ntype = \"stdout\"\n")
                .expect_err("typo");
        assert!(error.to_string().contains("`nomad[0]") && error.to_string().contains("adress"), "{error}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let config = Config::from_toml("[nomad]\ntoken = \"s3cr3t\"\n[sinks.out]\ntype = \"stdout\"\n")
            .expect("token");
        assert!(!format!("{config:?}").contains("s3cr3t"));
    }
}
