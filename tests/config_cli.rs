//! The configuration file and the command line as an operator meets them.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_relay::config::{Config, LoadFrom};
use std::path::Path;
use support::*;

#[test]
fn the_example_config_documents_a_valid_configuration() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = Config::load(LoadFrom { file: Some(&path), environment: false }).unwrap();
    assert_eq!(config.sinks.len(), 5);
    assert_eq!(config.routes.len(), 2);
    let nomad_relay::config::SinkKindConfig::Kafka(kafka) = &config.sinks["kafka"].kind else {
        panic!("sinks.kafka is a Kafka sink")
    };
    assert_eq!(kafka.create_topics.map(|c| c.partitions), Some(6));
    assert_eq!(kafka.librdkafka.len(), 3);
    assert_eq!(config.http.map(|h| h.listen.port()), Some(8686));
    assert_eq!(config.shutdown_timeout.0, std::time::Duration::from_secs(30));
    assert_eq!(config.nomad[0].topics.len(), 9);
}

#[test]
fn validate_names_the_bad_key_and_exits_2() {
    let scratch = Scratch::new();
    let path = scratch.path("bad.toml");
    std::fs::write(
        &path,
        "[nomad]\naddress = \"http://127.0.0.1:4646\"\n[sinks.out]\ntype = \"file\"\npaht = \"x\"\n",
    )
    .unwrap();
    let output = relay_command(&["validate", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("sinks.out") && stderr.contains("paht") && stderr.contains("path"), "{stderr}");
}

#[test]
fn environment_overrides_the_file_and_nomad_variables_fill_in() {
    let scratch = Scratch::new();
    let path = scratch.path("relay.toml");
    std::fs::write(&path, "[sinks.out]\ntype = \"stdout\"\n").unwrap();
    let output = relay_command(&["validate", "--config", path.to_str().unwrap()])
        .env("NOMAD_ADDR", "https://nomad.example:4646")
        .env("NOMAD_RELAY_NOMAD__NAMESPACE", "prod")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("nomad default: https://nomad.example:4646 (namespace prod"), "{stdout}");
}

#[test]
fn validate_without_a_file_uses_the_embedded_defaults() {
    let output = relay_command(&["validate"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("sink stdout"), "{stdout}");
}

#[tokio::test]
async fn a_second_relay_on_the_same_data_dir_is_refused() {
    let scratch = Scratch::new();
    let path = scratch.path("relay.toml");
    std::fs::write(&path, format!("data_dir = \"{}\"\n[nomad]\naddress = \"http://127.0.0.1:9\"\n[sinks.out]\ntype = \"file\"\npath = \"{}\"\n", scratch.path("data").display(), scratch.path("out.ndjson").display())).unwrap();
    let first = Relay::start(&path);
    eventually("the first relay to hold the lock", std::time::Duration::from_secs(30), || {
        first.log().contains("first start").then_some(())
    })
    .await;
    let second = relay_command(&["run", "--config", path.to_str().unwrap()]).output().unwrap();
    drop(first);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use by another nomad-relay"));
}
