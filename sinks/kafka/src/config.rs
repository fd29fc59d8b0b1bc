//! `[sinks.NAME] type = "kafka"`: every key of the Kafka sink, with its default, and the
//! librdkafka settings the sink builds from them.

use nomad_relay_sink_api::Template;
use nomad_relay_sink_api::units::{HumanDuration, OneOrMany};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Kafka sink's configuration.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port` each.
    pub brokers: OneOrMany<String>,
    /// Topic template; any event field in `{{ }}`.
    pub topic: String,
    /// Record key template. The default, the object's id, keeps each object's updates in one
    /// partition, in order.
    pub key: String,
    /// Create missing topics with these settings; without it, a missing topic holds the sink
    /// back (nothing is lost) until an operator creates it.
    pub create_topics: Option<CreateTopics>,
    /// How long the sink waits for the delivery reports of one batch before it presumes the
    /// connection broken, drops the producer and checks the partitions' tails.
    pub delivery_timeout: HumanDuration,
    /// How long metadata, watermark and tail-read requests may take.
    pub request_timeout: HumanDuration,
    /// Passed through to librdkafka (SASL, TLS, compression, tuning), for example
    /// `"security.protocol" = "SASL_SSL"`. The settings exactly-once depends on are the
    /// sink's own and are refused here (see [`RESERVED_SETTINGS`]).
    pub librdkafka: BTreeMap<String, SettingValue>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: OneOrMany::One("127.0.0.1:9092".to_owned()),
            topic: "nomad.{{Topic}}".to_owned(),
            key: "{{Key}}".to_owned(),
            create_topics: None,
            delivery_timeout: HumanDuration(Duration::from_secs(30)),
            request_timeout: HumanDuration(Duration::from_secs(10)),
            librdkafka: BTreeMap::new(),
        }
    }
}

/// Whether a librdkafka setting's name says its value is secret (a password, key, secret,
/// token or JAAS configuration).
fn is_secret_setting(name: &str) -> bool {
    ["password", "secret", "key", "token", "jaas"].iter().any(|word| name.contains(word))
}

impl KafkaSinkConfig {
    /// The values of the librdkafka settings whose names say they are secret.
    pub fn secret_settings(&self) -> Vec<String> {
        self.librdkafka
            .iter()
            .filter(|(name, _)| is_secret_setting(name))
            .map(|(_, v)| v.to_setting())
            .collect()
    }
}

impl std::fmt::Debug for KafkaSinkConfig {
    /// Shows every key, with the values of secret librdkafka settings (passwords, keys,
    /// secrets) replaced, so `validate` and logs never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let settings: BTreeMap<&str, String> = self
            .librdkafka
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str(),
                    if is_secret_setting(name) { "<redacted>".to_owned() } else { value.to_setting() },
                )
            })
            .collect();
        f.debug_struct("KafkaSinkConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("create_topics", &self.create_topics)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("librdkafka", &settings)
            .finish()
    }
}

/// How the sink creates a topic that does not exist yet.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTopics {
    /// Partitions of a created topic.
    pub partitions: i32,
    /// Replicas of each partition.
    pub replication: i32,
}

/// A librdkafka setting's value as written in TOML: text, number or boolean.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    /// `"SASL_SSL"`.
    Text(String),
    /// `5`.
    Integer(i64),
    /// `0.5`.
    Float(f64),
    /// `true`.
    Bool(bool),
}

impl SettingValue {
    /// The value as librdkafka reads it.
    pub fn to_setting(&self) -> String {
        match self {
            SettingValue::Text(text) => text.clone(),
            SettingValue::Integer(number) => number.to_string(),
            SettingValue::Float(number) => number.to_string(),
            SettingValue::Bool(flag) => flag.to_string(),
        }
    }
}

/// librdkafka settings the sink sets itself, with the reason an operator may not change them.
pub const RESERVED_SETTINGS: &[(&str, &str)] = &[
    ("bootstrap.servers", "set the sink's `brokers` key instead"),
    ("metadata.broker.list", "set the sink's `brokers` key instead"),
    ("enable.idempotence", "the idempotent producer is what keeps each partition free of repeats and gaps"),
    (
        "enable.gapless.guarantee",
        "a record refused for good must stop the producer, or the records behind it would land before its retry",
    ),
    ("acks", "the sink needs acks=all: a record counts as delivered only once every in-sync replica has it"),
    (
        "request.required.acks",
        "the sink needs acks=all: a record counts as delivered only once every in-sync replica has it",
    ),
    (
        "message.timeout.ms",
        "librdkafka's own timeout can leave gaps in a partition; set the sink's `delivery_timeout` instead",
    ),
    (
        "delivery.timeout.ms",
        "librdkafka's own timeout can leave gaps in a partition; set the sink's `delivery_timeout` instead",
    ),
    ("transactional.id", "the sink does not use transactions (see the sink's documentation)"),
    (
        "partitioner",
        "the sink chooses each record's partition itself (murmur2 of the key, as Java clients do)",
    ),
    ("enable.auto.commit", "the sink reads partition tails without a consumer group"),
    ("group.id", "the sink reads partition tails without a consumer group"),
    ("isolation.level", "the sink reads partition tails as written"),
];

/// Settings that only a producer understands, left out of the tail reader's configuration.
const PRODUCER_ONLY_PREFIXES: &[&str] = &[
    "linger.ms",
    "queue.buffering.",
    "batch.",
    "compression.",
    "message.send.max.retries",
    "retries",
    "retry.backoff",
    "max.in.flight",
    "sticky.partitioning",
    "queuing.strategy",
    "request.timeout.ms",
];

impl KafkaSinkConfig {
    /// Checks what can be checked without a broker; `key` is the table's path for messages.
    pub fn validate(&self, key: &str) -> Result<(), String> {
        Template::parse(&self.topic).map_err(|e| format!("`{key}.topic`: {e}"))?;
        Template::parse(&self.key).map_err(|e| format!("`{key}.key`: {e}"))?;
        let brokers = self.brokers.to_vec();
        if brokers.is_empty() {
            return Err(format!("`{key}.brokers`: give at least one broker, such as \"127.0.0.1:9092\""));
        }
        for broker in &brokers {
            check_broker_address(broker).map_err(|e| format!("`{key}.brokers`: {e}"))?;
        }
        if let Some(create) = &self.create_topics
            && (create.partitions < 1 || create.replication < 1)
        {
            return Err(format!(
                "`{key}.create_topics`: `partitions` and `replication` must both be at least 1"
            ));
        }
        for setting in self.librdkafka.keys() {
            if let Some((_, reason)) = RESERVED_SETTINGS.iter().find(|(name, _)| name == setting) {
                return Err(format!("`{key}.librdkafka.\"{setting}\"` cannot be set: {reason}"));
            }
        }
        if self.delivery_timeout.0 < Duration::from_secs(1) {
            return Err(format!("`{key}.delivery_timeout`: must be at least 1s"));
        }
        if self.request_timeout.0 < Duration::from_millis(100)
            || self.request_timeout.0 > Duration::from_secs(3600)
        {
            return Err(format!("`{key}.request_timeout`: must be between 100ms and 1h"));
        }
        if self.delivery_timeout.0 > Duration::from_secs(24 * 3600) {
            return Err(format!("`{key}.delivery_timeout`: must be at most 24h"));
        }
        Ok(())
    }

    /// The bootstrap list as librdkafka takes it.
    pub fn bootstrap_servers(&self) -> String {
        self.brokers.to_vec().join(",")
    }

    /// The operator's pass-through settings for the producer.
    pub fn producer_settings(&self) -> impl Iterator<Item = (&str, String)> {
        self.librdkafka.iter().map(|(name, value)| (name.as_str(), value.to_setting()))
    }

    /// The pass-through settings that also apply to a consumer (security, networking).
    pub fn reader_settings(&self) -> impl Iterator<Item = (&str, String)> {
        self.producer_settings()
            .filter(|(name, _)| !PRODUCER_ONLY_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
    }
}

/// `host:port`, `[v6]:port` or a bare host (librdkafka then uses port 9092).
fn check_broker_address(address: &str) -> Result<(), String> {
    let address = address.trim();
    let without_scheme = address.split_once("://").map_or(address, |(_, rest)| rest);
    if without_scheme.is_empty() {
        return Err("an empty broker address".to_owned());
    }
    let port = if let Some(rest) = without_scheme.strip_prefix('[') {
        match rest.split_once(']') {
            Some((_, tail)) => tail.strip_prefix(':'),
            None => return Err(format!("`{address}`: an IPv6 address needs its closing `]`")),
        }
    } else {
        without_scheme.rsplit_once(':').map(|(_, port)| port)
    };
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |port| port == 0)
    {
        return Err(format!("`{address}`: `{port}` is not a port number (write host:port)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_settings_are_refused_with_the_reason() {
        let mut config = KafkaSinkConfig::default();
        config.librdkafka.insert("acks".into(), SettingValue::Integer(1));
        let error = config.validate("sinks.k").expect_err("acks is the sink's");
        assert!(error.contains("`sinks.k.librdkafka.\"acks\"`") && error.contains("acks=all"), "{error}");
    }

    #[test]
    fn broker_addresses_are_checked() {
        assert!(check_broker_address("127.0.0.1:9092").is_ok());
        assert!(check_broker_address("kafka").is_ok());
        assert!(check_broker_address("[::1]:9092").is_ok());
        assert!(check_broker_address("kafka:port").expect_err("no port").contains("not a port"));
        assert!(check_broker_address("kafka:0").is_err());
        assert!(check_broker_address("").is_err());
    }

    #[test]
    fn reader_settings_leave_producer_tuning_out() {
        let mut config = KafkaSinkConfig::default();
        config.librdkafka.insert("linger.ms".into(), SettingValue::Integer(20));
        config.librdkafka.insert("security.protocol".into(), SettingValue::Text("SSL".into()));
        let reader: Vec<_> = config.reader_settings().collect();
        assert_eq!(reader, [("security.protocol", "SSL".to_owned())]);
        assert_eq!(config.producer_settings().count(), 2);
    }

    #[test]
    fn secret_settings_are_never_shown() {
        let mut config = KafkaSinkConfig::default();
        config.librdkafka.insert("sasl.password".into(), SettingValue::Text("hunter2".into()));
        config.librdkafka.insert("ssl.key.pem".into(), SettingValue::Text("-----BEGIN".into()));
        config.librdkafka.insert("sasl.username".into(), SettingValue::Text("relay".into()));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("BEGIN"), "{shown}");
        assert!(shown.contains("relay") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn templates_are_checked() {
        let config = KafkaSinkConfig { topic: "nomad.{{Topik}}".into(), ..Default::default() };
        assert!(config.validate("sinks.k").expect_err("bad field").contains("`sinks.k.topic`"));
    }
}
