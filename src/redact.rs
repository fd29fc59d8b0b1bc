//! One redaction rule for everything the relay prints: the secrets a configuration holds are
//! replaced by `***` in every log line (the relay's own and its client libraries', whose
//! errors often embed a URL), in every result a command prints, and in every HTTP response.
//!
//! The secrets are the configuration's [`Secret`] values (the Nomad token, NATS passwords,
//! tokens and NKey seeds, the AMQP URI's password), the passwords and tokens in the user-info
//! of every URL (Nomad addresses, NATS URLs, the AMQP URI), raw and percent-decoded, and the
//! values of Kafka's librdkafka settings whose names look secret. They are installed once,
//! after the configuration is read ([`install`]); before that nothing is known to hide, and
//! the configuration's own errors never quote a value. Values shorter than
//! [`MIN_SECRET_LEN`] are not scrubbed (they would blank out ordinary words); such a secret
//! is no secret anyway.

use crate::config::Config;
use crate::sinks::SinkKindConfig;
use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::OnceLock;

/// Shorter values are left alone.
pub const MIN_SECRET_LEN: usize = 4;

/// What replaces a secret.
pub const MASK: &str = "***";

static SECRETS: OnceLock<Vec<String>> = OnceLock::new();

/// Every secret `config` holds, longest first.
pub fn secrets_of(config: &Config) -> Vec<String> {
    let mut secrets = Vec::new();
    for nomad in &config.nomad {
        for address in nomad.address.to_vec() {
            url_secrets(&address, &mut secrets);
        }
        secrets.extend(nomad.token.iter().map(|t| t.0.clone()));
    }
    for sink in config.sinks.values() {
        match &sink.kind {
            SinkKindConfig::Nats(nats) => {
                for url in nats.url.to_vec() {
                    url_secrets(&url, &mut secrets);
                }
                for secret in [&nats.password, &nats.token, &nats.nkey_seed].into_iter().flatten() {
                    secrets.push(secret.0.clone());
                }
            }
            SinkKindConfig::Amqp(amqp) => url_secrets(&amqp.uri.0, &mut secrets),
            SinkKindConfig::Kafka(kafka) => secrets.extend(kafka.secret_settings()),
            SinkKindConfig::File(_) | SinkKindConfig::Stdout(_) => {}
        }
    }
    secrets.retain(|s| s.len() >= MIN_SECRET_LEN);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// The password (or, alone, the user: a token) in a URL's user-info, raw and decoded.
fn url_secrets(url: &str, out: &mut Vec<String>) {
    let Ok(parsed) = reqwest::Url::parse(url) else { return };
    let raw = match parsed.password() {
        Some(password) => password.to_owned(),
        None if !parsed.username().is_empty() => parsed.username().to_owned(),
        None => return,
    };
    if let Ok(decoded) = percent_decode(&raw) {
        out.push(decoded);
    }
    out.push(raw);
}

fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Makes `secrets` the ones scrubbed from now on (the first call wins).
pub fn install(secrets: Vec<String>) {
    let _ = SECRETS.set(secrets);
}

/// `text` with every installed secret replaced by [`MASK`].
pub fn scrub(text: &str) -> Cow<'_, str> {
    scrub_with(SECRETS.get().map_or(&[][..], Vec::as_slice), text)
}

fn scrub_with<'a>(secrets: &[String], text: &'a str) -> Cow<'a, str> {
    let mut out = Cow::Borrowed(text);
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = Cow::Owned(out.replace(secret.as_str(), MASK));
        }
    }
    out
}

/// Standard error with every installed secret scrubbed, for the log subscriber: the log
/// formatter writes each line whole, so a secret never straddles two writes.
pub struct ScrubbedStderr;

impl Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => io::stderr().write_all(scrub(text).as_bytes())?,
            Err(_) => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_tokens_and_settings_are_found_and_scrubbed() {
        let config = Config::from_toml(
            r#"
[nomad]
address = ["http://admin:n0mad%2Fpass@127.0.0.1:1", "http://tok3n-only@127.0.0.1:2"]
token = "nomad-token-1"
[sinks.n]
type = "nats"
url = "nats://u:natspass@127.0.0.1:1"
user = "u"
password = "natspassword2"
[sinks.r]
type = "amqp"
uri = "amqp://guest:amqppass@127.0.0.1:1/%2f"
[sinks.k]
type = "kafka"
brokers = "127.0.0.1:1"
topic = "t"
librdkafka = { "sasl.password" = "kafkapass", "client.id" = "visible" }
"#,
        )
        .expect("config");
        let secrets = secrets_of(&config);
        for wanted in [
            "n0mad/pass",
            "n0mad%2Fpass",
            "tok3n-only",
            "nomad-token-1",
            "natspass",
            "natspassword2",
            "amqppass",
            "kafkapass",
        ] {
            assert!(secrets.iter().any(|s| s == wanted), "{wanted} not in {secrets:?}");
        }
        assert!(!secrets.iter().any(|s| s == "visible"));
        let text = "connect to nats://u:natspass@127.0.0.1:1 failed; password natspassword2";
        assert_eq!(scrub_with(&secrets, text), "connect to nats://u:***@127.0.0.1:1 failed; password ***");
        assert!(matches!(scrub_with(&secrets, "nothing here"), Cow::Borrowed(_)));
    }
}
