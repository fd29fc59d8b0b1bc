//! Configuration value types shared by the relay and every sink: human-friendly durations
//! (`"90s"`, `"500ms"`, `"7d"`), sizes (`"64MiB"`, `1048576`), secrets that never print, and
//! "one or many" lists, with errors that say which forms are accepted.

use serde::{Deserialize, Deserializer, de};
use std::fmt;
use std::time::Duration;

/// A duration written as `"<number><unit>"` with unit `ms`, `s`, `m`, `h` or `d`, or as a
/// plain number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

/// A byte count written as a plain integer or as `"<number><unit>"` with unit `B`, `KiB`,
/// `MiB`, `GiB` or `TiB` (`KB`, `MB`, `GB` are read as their binary counterparts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// Splits `"64MiB"` into `("64", "MiB")`.
fn number_and_unit(text: &str) -> (&str, &str) {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    (number, unit.trim())
}

/// Parses a duration such as `90s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration; write it like \"500ms\", \"90s\", \"5m\", \"24h\" or \"7d\"")
    })?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!("unknown duration unit `{other}` in `{text}`; use ms, s, m, h or d"));
        }
    };
    if !seconds.is_finite() || !(0.0..=1e12).contains(&seconds) {
        return Err(format!("duration `{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a size such as `64MiB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = number_and_unit(text);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a size; write it like 1048576, \"512KiB\", \"64MiB\" or \"2GiB\"")
    })?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!("unknown size unit `{other}` in `{text}`; use B, KiB, MiB, GiB or TiB"));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("size `{text}` is out of range"));
    }
    Ok(bytes as u64)
}

struct NumberOrText<T> {
    expecting: &'static str,
    from_number: fn(u64) -> T,
    from_text: fn(&str) -> Result<T, String>,
}

impl<'de, T> de::Visitor<'de> for NumberOrText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        Ok((self.from_number)(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        u64::try_from(value)
            .map(self.from_number)
            .map_err(|_| E::custom(format!("{value} is negative; {}", self.expecting)))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        (self.from_text)(value).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(NumberOrText {
                expecting: "a duration such as \"90s\" or a number of seconds",
                from_number: |seconds| Duration::from_secs(seconds.min(1_000_000_000_000)),
                from_text: parse_duration,
            })
            .map(HumanDuration)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(NumberOrText {
                expecting: "a size such as \"64MiB\" or a number of bytes",
                from_number: |bytes| bytes,
                from_text: parse_size,
            })
            .map(ByteSize)
    }
}

/// A secret string (token, password, key seed): never printed by `Debug`.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// A value that may be written as one item or a list of items.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

/// A URL with the secret in its user-info hidden, for messages: `scheme://user:secret@host/x`
/// becomes `scheme://user:***@host/x`, and `scheme://token@host` (a NATS token) becomes
/// `scheme://***@host`; a URL without user-info is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') { "<url>".to_owned() } else { url.to_owned() };
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((credentials, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let shown = match credentials.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{scheme}://{shown}@{host}{path}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_secrets_are_hidden() {
        use super::redact_url;
        assert_eq!(redact_url("nats://u:s3cr3t@127.0.0.1:4222"), "nats://u:***@127.0.0.1:4222");
        assert_eq!(redact_url("nats://t0ken@127.0.0.1:4222"), "nats://***@127.0.0.1:4222");
        assert_eq!(redact_url("http://127.0.0.1:4646/v1"), "http://127.0.0.1:4646/v1");
        assert_eq!(redact_url("user:pass@host"), "<url>");
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn huge_numbers_are_clamped_not_overflowing() {
        let value: HumanDuration = serde_json::from_str("18446744073709551615").expect("number");
        assert_eq!(value.0, Duration::from_secs(1_000_000_000_000));
        let _ = value.0.saturating_mul(2);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
    }
}
