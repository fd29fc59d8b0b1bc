//! TLS and mTLS to Nomad: a CA file, a server-name override (Nomad's certificates name
//! `server.<region>.nomad`, not the address), a client certificate, and a clear failure when
//! the server's certificate is not trusted.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::EmulatorConfig;
use std::time::Duration;
use support::tls::tls_front;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_a_ca_file_and_a_server_name_override() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(5, "web"));
    let scratch = Scratch::new();
    let (addr, files) = tls_front(emulator.addr(), "server.global.nomad", true, scratch.dir.path()).await;
    let tls = format!(
        "[nomad.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nserver_name = \"server.global.nomad\"\n",
        files.ca.display(),
        files.client_cert.display(),
        files.client_key.display()
    );
    let config = scratch.config(&format!("https://127.0.0.1:{}", addr.port()), "", &tls);
    relay_everything(&scratch, &config, &emulator, Duration::from_secs(30)).await;
    assert_eq!(scratch.lines("events.ndjson").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_with_a_reason() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(5, "web"));
    let scratch = Scratch::new();
    let (addr, _files) = tls_front(emulator.addr(), "localhost", false, scratch.dir.path()).await;
    // No ca_file: the system's roots do not know the test CA.
    let config = scratch.config(&format!("https://localhost:{}", addr.port()), "", "");
    let mut relay = Relay::start(&config);
    let log = relay.wait_for_log("event stream failed", Duration::from_secs(30)).await;
    assert!(log.to_lowercase().contains("certificate"), "{log}");
    assert!(relay.is_running(), "a TLS failure is retried, not fatal");
    assert!(scratch.lines("events.ndjson").is_empty());
    assert!(relay.terminate().success());
}

/// `NOMAD_CAPATH`, as Nomad's CLI reads it: a directory (here with a subdirectory) of CA
/// certificates. And a `NOMAD_*` variable the relay does not use is reported at start, while
/// the task environment Nomad sets is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nomad_capath_is_a_directory_of_cas_and_unused_nomad_variables_are_reported() {
    let emulator = emulator(EmulatorConfig::default()).await;
    emulator.publish(job(5, "web"));
    let scratch = Scratch::new();
    let (addr, files) = tls_front(emulator.addr(), "localhost", false, scratch.dir.path()).await;
    let cas = scratch.path("cas");
    std::fs::create_dir_all(cas.join("private")).unwrap();
    std::fs::copy(&files.ca, cas.join("private/nomad-ca.pem")).unwrap();
    let config = scratch.config(&format!("https://localhost:{}", addr.port()), "", "");
    let mut relay = Relay::start_with_env(
        &config,
        &[
            ("NOMAD_CAPATH", cas.to_str().unwrap()),
            ("NOMAD_CACRT", "/etc/typo.pem"),
            ("NOMAD_ALLOC_ID", "6f1c9a4e"),
            ("NOMAD_PORT_http", "8686"),
        ],
    );
    eventually("the event over TLS", Duration::from_secs(30), || {
        (scratch.lines("events.ndjson").len() == 1).then_some(())
    })
    .await;
    let log = relay.log();
    assert!(log.contains("NOMAD_CACRT is set but nomad-relay does not use it"), "{log}");
    for used_or_task in ["NOMAD_CAPATH", "NOMAD_ALLOC_ID", "NOMAD_PORT_http"] {
        assert!(!log.contains(&format!("{used_or_task} is set")), "{used_or_task} reported: {log}");
    }
    assert!(!log.contains("UnknownIssuer"), "{log}");
    assert!(relay.terminate().success());
}
