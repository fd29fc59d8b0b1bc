//! `[sinks.NAME] type = "nats"`: every key of the NATS sink, with its default.

use nomad_relay_sink_api::units::{HumanDuration, OneOrMany, Secret};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The NATS sink's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSinkConfig {
    /// Server URL, or several (`nats://`, `tls://`).
    pub url: OneOrMany<String>,
    /// Subject template; any event field in `{{ }}`.
    pub subject: String,
    /// Publish through JetStream and wait for each PubAck (exactly-once within the duplicate
    /// window); `false` publishes to core NATS (at-most-once).
    pub jetstream: bool,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password, with `user`.
    pub password: Option<Secret>,
    /// Authentication token.
    pub token: Option<Secret>,
    /// NKey seed (`SU...`).
    pub nkey_seed: Option<Secret>,
    /// Credentials file (JWT and NKey seed) for decentralised auth.
    pub credentials_file: Option<PathBuf>,
    /// TLS settings.
    pub tls: NatsTlsConfig,
    /// Most JetStream publishes of one batch awaiting their PubAck at once (the sink has up to
    /// two batches in flight).
    pub max_in_flight: usize,
    /// How long to wait for one PubAck before the event is sent again.
    pub ack_timeout: HumanDuration,
    /// How long to wait for the connection to be established.
    pub connect_timeout: HumanDuration,
    /// The JetStream stream to check (or create) at start; none: rely on an existing stream
    /// capturing the subjects.
    pub stream: Option<String>,
    /// Create `stream` when it does not exist.
    pub create_stream: bool,
    /// Subjects of the stream when the relay creates it (default: the subject template with
    /// each field replaced by `*`).
    pub subjects: Vec<String>,
    /// Duplicate window of a stream the relay creates: how long JetStream recognises a re-sent
    /// message id by itself. The sink reads the real window of whatever stream it uses.
    pub duplicate_window: HumanDuration,
    /// Storage of a stream the relay creates.
    pub storage: StorageKind,
    /// Replicas of a stream the relay creates.
    pub replicas: usize,
    /// What to do with an event NATS will never take (larger than `max_payload`).
    pub on_reject: OnReject,
    /// Subject for notices of rejected events when `on_reject = "dead_letter"`.
    pub dead_letter_subject: Option<String>,
}

impl Default for NatsSinkConfig {
    fn default() -> Self {
        NatsSinkConfig {
            url: OneOrMany::One("nats://127.0.0.1:4222".to_owned()),
            subject: "nomad.{{Topic}}.{{Type}}".to_owned(),
            jetstream: true,
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            tls: NatsTlsConfig::default(),
            max_in_flight: 1024,
            ack_timeout: HumanDuration(Duration::from_secs(10)),
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            stream: None,
            create_stream: false,
            subjects: Vec::new(),
            duplicate_window: HumanDuration(Duration::from_secs(600)),
            storage: StorageKind::File,
            replicas: 1,
            on_reject: OnReject::Drop,
            dead_letter_subject: None,
        }
    }
}

/// TLS for the NATS connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsTlsConfig {
    /// Require TLS even for `nats://` URLs.
    pub required: bool,
    /// PEM file of the CA(s) that signed the server certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// JetStream storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

/// What happens to an event NATS will never take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnReject {
    /// Count it, log it, move on.
    Drop,
    /// Also publish a notice naming it to `dead_letter_subject`.
    DeadLetter,
}

impl NatsSinkConfig {
    /// Checks what can be checked without a server; `key` is the table's path for messages.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        nomad_relay_sink_api::Template::parse(&self.subject).map_err(|e| format!("`{key}.subject`: {e}"))?;
        if self.url.to_vec().is_empty() {
            return Err(format!(
                "`{key}.url`: give at least one server URL, such as \"nats://127.0.0.1:4222\""
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(format!("`{key}.user` and `{key}.password` go together"));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(format!("`{key}.tls.cert_file` and `{key}.tls.key_file` go together"));
        }
        if self.max_in_flight == 0 {
            return Err(format!("`{key}.max_in_flight`: must be at least 1"));
        }
        if self.create_stream && self.stream.is_none() {
            return Err(format!("`{key}.create_stream`: set `{key}.stream` to the stream's name"));
        }
        if self.on_reject == OnReject::DeadLetter && self.dead_letter_subject.is_none() {
            return Err(format!("`{key}.on_reject = \"dead_letter\"` needs `{key}.dead_letter_subject`"));
        }
        if !self.jetstream && self.stream.is_some() {
            return Err(format!("`{key}.stream` needs `{key}.jetstream = true`"));
        }
        Ok(())
    }

    /// The subjects a created stream captures: the configured ones, or the template with
    /// each field made a wildcard (`nomad.{{Topic}}.{{Type}}` gives `nomad.*.*`).
    pub fn stream_subjects(&self) -> Vec<String> {
        if !self.subjects.is_empty() {
            return self.subjects.clone();
        }
        let mut subject = String::new();
        let mut rest = self.subject.as_str();
        while let Some(open) = rest.find("{{") {
            subject.push_str(&rest[..open]);
            match rest[open..].find("}}") {
                Some(close) => {
                    subject.push('*');
                    rest = &rest[open + close + 2..];
                }
                None => {
                    rest = "";
                }
            }
        }
        subject.push_str(rest);
        // A field inside a token (`nomad.x{{Topic}}`) still needs a whole-token wildcard.
        let tokens: Vec<String> =
            subject.split('.').map(|t| if t.contains('*') { "*".to_owned() } else { t.to_owned() }).collect();
        vec![tokens.join(".")]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_subjects_follow_the_template() {
        let config = NatsSinkConfig::default();
        assert_eq!(config.stream_subjects(), ["nomad.*.*"]);
        let config =
            NatsSinkConfig { subject: "events.{{Namespace}}-x.{{Topic}}".into(), ..Default::default() };
        assert_eq!(config.stream_subjects(), ["events.*.*"]);
    }

    #[test]
    fn validation_names_the_key() {
        let config = NatsSinkConfig { subject: "nomad.{{Topik}}".into(), ..Default::default() };
        assert!(config.validate("sinks.n").expect_err("bad template").contains("`sinks.n.subject`"));
        let config = NatsSinkConfig { create_stream: true, ..Default::default() };
        assert!(config.validate("sinks.n").expect_err("no stream").contains("sinks.n.stream"));
    }
}
