//! The relay is SIGKILLed at random moments while Nomad (the emulator) publishes tens of
//! thousands of events with lines split at random byte offsets; after the run the file sink
//! must hold every event exactly once, in Index order, byte for byte as Nomad sent it.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{EmulatorConfig, Framing, GeneratorConfig};
use rand::{Rng, SeedableRng};
use std::time::Duration;
use support::*;

async fn survive_kills(framing: Framing, compression: bool, seed: u64) {
    let emulator = emulator(EmulatorConfig {
        framing,
        buffer_size: 1_000_000,
        fragment_writes: Some(seed),
        heartbeat_interval: Duration::from_millis(500),
        ..EmulatorConfig::default()
    })
    .await;
    let scratch = Scratch::new();
    let config = scratch.config(&emulator.url(), &format!("compression = {compression}"), "");
    let generator = emulator.generator(GeneratorConfig {
        rate: Some(2_500.0),
        total_events: Some(30_000),
        seed,
        ..GeneratorConfig::default()
    });
    let publishing = tokio::spawn(generator.run());

    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut relay = Relay::start(&config);
    let mut kills = 0;
    while kills < 24 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(80..400))).await;
        relay.kill();
        kills += 1;
        relay = Relay::start(&config);
    }
    let published_count = publishing.await.unwrap();
    assert!(published_count >= 30_000);
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    assert!(expected.len() > 20_000, "the run should relay tens of thousands of events");
    eventually("every event in the file", Duration::from_secs(120), || {
        (scratch.lines("events.ndjson").len() >= expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let log = relay.log();
    assert!(!log.contains("possible gap"), "no gap may be reported: Nomad kept every event");
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    assert!(kills >= 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_repeats_nothing_modern_framing() {
    survive_kills(Framing::Modern, false, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_repeats_nothing_legacy_gzip_framing() {
    survive_kills(Framing::Legacy, true, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_each_resume_from_their_own_checkpoint_across_kills() {
    let config_for = |seed| EmulatorConfig {
        buffer_size: 1_000_000,
        fragment_writes: Some(seed),
        ..EmulatorConfig::default()
    };
    let eu = emulator(config_for(21)).await;
    let us = emulator(config_for(22)).await;
    let scratch = Scratch::new();
    // Two [[nomad]] tables instead of the template's single [nomad] one.
    let config = scratch.config("http://unused", "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let single = text[text.find("[nomad]").unwrap()..text.find("[sinks.out]").unwrap()].to_owned();
    let two = format!(
        "[[nomad]]\nname = \"eu\"\naddress = \"{}\"\n[nomad.reconnect]\nmin_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n[[nomad]]\nname = \"us\"\naddress = \"{}\"\n[nomad.reconnect]\nmin_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n",
        eu.url(),
        us.url()
    );
    std::fs::write(&config, text.replace(&single, &two)).unwrap();
    let runs = [eu.clone(), us.clone()].map(|emulator| {
        let generator = emulator.generator(GeneratorConfig {
            rate: Some(1_000.0),
            total_events: Some(6_000),
            seed: emulator.addr().port() as u64,
            ..GeneratorConfig::default()
        });
        tokio::spawn(generator.run())
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut relay = Relay::start(&config);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        relay.kill();
        relay = Relay::start(&config);
    }
    for run in runs {
        run.await.unwrap();
    }
    let expected_eu = expected_lines(&eu.published(), DEFAULT_TOPICS);
    let expected_us = expected_lines(&us.published(), DEFAULT_TOPICS);
    let total = expected_eu.len() + expected_us.len();
    eventually("every event of both clusters", Duration::from_secs(120), || {
        (scratch.lines("events.ndjson").len() >= total).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let lines = scratch.lines("events.ndjson");
    assert_eq!(lines.len(), total, "nothing repeated");
    let eu_set: std::collections::HashSet<&String> = expected_eu.iter().collect();
    let (from_eu, from_us): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|line| eu_set.contains(line));
    assert_lines_equal(&from_eu, &expected_eu);
    assert_lines_equal(&from_us, &expected_us);
    assert!(!relay.log().contains("possible gap"));
}
