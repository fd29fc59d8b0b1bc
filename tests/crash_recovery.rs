//! The relay is SIGKILLed again and again while Nomad (the emulator) publishes tens of
//! thousands of events with lines split at random byte offsets, each kill timed to land
//! inside the window a crash must survive; after the run the file sink must hold every event
//! exactly once, in Index order, byte for byte as Nomad sent it.

#![allow(clippy::unwrap_used)]

mod support;

use nomad_emulator::{Batch, EmulatorConfig, Framing, GeneratorConfig};
use std::collections::HashSet;
use std::time::Duration;
use support::endpoint::{free_port, metric};
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

    let mut relay = Relay::start(&config);
    let (mut kills, mut in_window) = (0, 0);
    while !publishing.is_finished() {
        // This relay delivers (its cursor moved since it started), then a batch is written
        // and not yet covered by a saved cursor: kill it there.
        let before = scratch.cursor_next("out").unwrap_or(0);
        eventually("the restarted relay to deliver", Duration::from_secs(60), || {
            let moved = scratch.cursor_next("out").is_some_and(|next| next > before);
            (moved || publishing.is_finished()).then_some(())
        })
        .await;
        let landed =
            scratch.wait_for_write_ahead_of_cursor("out", "events.ndjson", Duration::from_secs(5)).await;
        relay.kill();
        kills += 1;
        in_window += usize::from(landed);
        relay = Relay::start(&config);
    }
    publishing.await.unwrap();
    let expected = expected_lines(&emulator.published(), DEFAULT_TOPICS);
    assert!(expected.len() > 20_000, "the run should relay tens of thousands of events");
    eventually("every event in the file", Duration::from_secs(120), || {
        (scratch.lines("events.ndjson").len() >= expected.len()).then_some(())
    })
    .await;
    assert!(relay.terminate().success());
    let log = relay.log();
    let cut_backs = log.matches(CUT_BACK).count();
    eprintln!("{kills} SIGKILLs, {in_window} seen inside the write-to-cursor window, {cut_backs} cut-backs");
    assert!(!log.contains("possible gap"), "no gap may be reported: Nomad kept every event");
    assert_lines_equal(&scratch.lines("events.ndjson"), &expected);
    // The recovery path ran: restarts found lines past their cursor and removed them, for
    // most kills (one seen inside the window can still land just after the cursor save).
    assert!(
        cut_backs * 2 >= kills && cut_backs <= kills,
        "{cut_backs} cut-backs after {kills} kills ({in_window} inside the window)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_write_and_cursor_save_loses_and_repeats_nothing_modern_framing() {
    survive_kills(Framing::Modern, false, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_write_and_cursor_save_loses_and_repeats_nothing_legacy_gzip_framing() {
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
    // Far apart index ranges, so a request at the other cluster's checkpoint (or at 0) shows.
    us.publish(job(1_000_000, "us-first"));
    let scratch = Scratch::new();
    let port = free_port();
    // Two [[nomad]] tables instead of the template's single [nomad] one.
    let config = scratch.config("http://unused", "", &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"));
    let text = std::fs::read_to_string(&config).unwrap();
    let single = text[text.find("[nomad]").unwrap()..text.find("[sinks.out]").unwrap()].to_owned();
    let two = format!(
        "[[nomad]]\nname = \"eu\"\nid_scope = \"eu\"\naddress = \"{}\"\n[nomad.reconnect]\nmin_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n[[nomad]]\nname = \"us\"\nid_scope = \"us\"\naddress = \"{}\"\n[nomad.reconnect]\nmin_delay = \"20ms\"\nmax_delay = \"200ms\"\n\n",
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
    let journaled =
        |source: &str| metric(port, &format!("nomad_relay_source_events_total{{source=\"{source}\"}}"));
    let mut relay = Relay::start(&config);
    for _ in 0..10 {
        // Kill once this relay has journaled new events from both clusters.
        eventually("events from both clusters", Duration::from_secs(60), || {
            (journaled("eu")? > 0.0 && journaled("us")? > 0.0).then_some(())
        })
        .await;
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
    let eu_set: HashSet<&String> = expected_eu.iter().collect();
    let (from_eu, from_us): (Vec<String>, Vec<String>) =
        lines.into_iter().partition(|line| eu_set.contains(line));
    assert_lines_equal(&from_eu, &expected_eu);
    assert_lines_equal(&from_us, &expected_us);
    assert!(!relay.log().contains("possible gap"));

    // Each restart asked each cluster for its own checkpoint: an index that cluster sent,
    // never going back, never 0 again after the first start.
    for (name, emulator) in [("eu", &eu), ("us", &us)] {
        let own: HashSet<i64> = emulator.published().iter().map(|b: &Batch| b.index as i64).collect();
        let requested: Vec<i64> = stream_requests(emulator).iter().map(|r| r.index.unwrap_or(-1)).collect();
        assert!(requested.len() >= 11, "{name}: {} stream requests for 11 starts", requested.len());
        assert_eq!(requested[0], 0, "{name}: a first start asks for the oldest");
        for pair in requested[1..].windows(2) {
            assert!(pair[0] <= pair[1], "{name}: resumed further back ({requested:?})");
        }
        for index in &requested[1..] {
            assert!(
                own.contains(index),
                "{name}: asked for index {index}, which it never sent ({requested:?})"
            );
        }
    }
}
