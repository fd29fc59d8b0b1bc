//! Property tests (proptest) for every parser of outside input, checking the invariants in
//! `nomad_relay::fuzzing` that the fuzz targets in `fuzz/` check for longer, and the replay
//! of every input a fuzzer found (`fuzz/regressions/<target>/`), so a crash once fixed stays
//! fixed.

#![allow(clippy::unwrap_used)]

use nomad_relay::fuzzing;
use proptest::prelude::*;
use std::path::Path;

/// Bytes that make up JSON and Nomad's frames, weighted towards structure, so random lines
/// reach deep into the scanner instead of failing at the first byte.
fn json_ish() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        8 => prop::sample::select(vec![
            &b"{"[..], b"}", b"[", b"]", b",", b":", b"\"", b" ", b"\\", b"\\u00e9", b"\\ud800",
            b"0", b"-1", b"12.5e-3", b"01", b"1.", b"true", b"nul", b"null", b"false",
            b"\"Index\"", b"\"Events\"", b"\"Topic\"", b"\"Type\"", b"\"Key\"", b"\"Namespace\"",
            b"\"Payload\"", b"\"Job\"", b"18446744073709551616", b"\x00", b"\xff", b"\t", b"\n",
        ]).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ];
    prop::collection::vec(token, 0..60).prop_map(|tokens| tokens.concat())
}

/// Any JSON value, nested a few levels, rendered as text.
fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| serde_json::json!(f).to_string()),
        "[ -~\u{e9}\u{1F600}]{0,8}".prop_map(|text| serde_json::json!(text).to_string()),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec(("[A-Za-z]{1,6}", inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("{}:{value}", serde_json::json!(key)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A valid frame of one or two events with random payloads, then damaged at one place with a
/// piece of JSON syntax (or left whole).
fn damaged_frame() -> impl Strategy<Value = Vec<u8>> {
    let frame = (1u64..u64::MAX, "[a-zA-Z]{1,8}", "[ -~]{0,12}", json_value(), prop::option::of(json_value()))
        .prop_map(|(index, topic, key, payload, second)| {
            let event = |payload: &str| {
                format!(
                    r#"{{"Topic":{},"Type":"T","Key":{},"Namespace":"default","Index":{index},"Payload":{payload}}}"#,
                    serde_json::json!(topic),
                    serde_json::json!(key)
                )
            };
            let events = match second {
                Some(second) => format!("{},{}", event(&payload), event(&second)),
                None => event(&payload),
            };
            format!(r#"{{"Index":{index},"Events":[{events}]}}"#).into_bytes()
        });
    let damage = prop::sample::select(vec![
        &b""[..],
        b"0",
        b"01",
        b"-",
        b"-0",
        b".",
        b"e",
        b"E+",
        b"1e",
        b"+",
        b"\"",
        b"\\",
        b"\\u12",
        b"\\x",
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"]",
        b" ",
        b"tru",
        b"nulll",
        b"x",
        b"\x00",
        b"\x1f",
        b"\xff",
        b"\"Topic\":\"J\",",
        b"\"Index\":1,",
    ]);
    (frame, any::<prop::sample::Index>(), damage, 0..3usize).prop_map(|(mut line, at, damage, how)| {
        let at = at.index(line.len());
        match how {
            0 => {
                line.splice(at..at + 1, damage.iter().copied());
            }
            1 => {
                line.splice(at..at, damage.iter().copied());
            }
            _ => {}
        }
        line
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5_000, ..ProptestConfig::default() })]

    #[test]
    fn frames_read_as_serde_reads_them(line in prop_oneof![json_ish(), damaged_frame()]) {
        fuzzing::frame_parsing(&line);
    }

    #[test]
    fn lines_do_not_depend_on_chunk_boundaries(
        data in prop::collection::vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\n')], 0..3_000)
    ) {
        fuzzing::line_splitting(&data);
    }

    #[test]
    fn journal_records_decode_or_refuse_and_round_trip(
        body in prop::collection::vec(any::<u8>(), 0..200),
        lengths in prop::collection::vec(0u8..6, 5),
    ) {
        fuzzing::record_decoding(&body);
        // Also bodies whose length fields fit, so decoding gets past its checks.
        let mut fitted = vec![0u8; 40];
        for (n, length) in lengths.iter().enumerate().take(4) {
            fitted[28 + 2 * n] = *length;
        }
        fitted[36] = lengths[4];
        fitted.extend_from_slice(&body);
        fuzzing::record_decoding(&fitted);
    }

    #[test]
    fn any_text_as_configuration_loads_or_is_an_error(
        text in prop_oneof![
            "[ -~\n]{0,200}",
            prop::sample::select(vec![
                "[sinks.out]\ntype = \"file\"\npath = \"x\"\n",
                "[sinks.k]\ntype = \"kafka\"\nbrokers = \"b:9092\"\ntopic = \"{{Topic}}\"\n",
                "[sinks.n]\ntype = \"nats\"\nurl = \"nats://u:p@h:4222\"\nsubject = \"a.{{Type}}\"\n",
                "[[routes]]\nsinks = [\"out\"]\ntopics = [\"Job\"]\n",
                "[nomad]\naddress = \"http://n:4646\"\ntopics = [\"Job:*\"]\n",
                "[journal]\nmax_bytes = \"1 GiB\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            ]).prop_flat_map(|base| (Just(base), "[ -~\n]{0,30}", 0..64usize))
              .prop_map(|(base, noise, at)| {
                  let at = (0..=at.min(base.len())).rev().find(|at| base.is_char_boundary(*at)).unwrap_or(0);
                  format!("{}{noise}{}", &base[..at], &base[at..])
              }),
        ]
    ) {
        fuzzing::config_loading(text.as_bytes());
    }

    #[test]
    fn any_template_parses_or_is_an_error_and_renders(
        data in "([{}]{0,3}|Topic|Type|Key|Index|Id|Source|Namespace| |[a-z.]{1,3}|\u{0}){0,16}"
    ) {
        fuzzing::template_rendering(data.as_bytes());
    }
}

/// Every input a fuzzer ever found is replayed against its target's invariant. A target's
/// directory must exist (an empty one says the fuzzer found nothing yet), so a renamed
/// directory cannot silently turn the replay off.
#[test]
fn every_input_a_fuzzer_found_still_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 5] = [
        ("frame", fuzzing::frame_parsing),
        ("lines", fuzzing::line_splitting),
        ("record", fuzzing::record_decoding),
        ("config", fuzzing::config_loading),
        ("template", fuzzing::template_rendering),
    ];
    let mut replayed = 0;
    for (target, check) in targets {
        let dir = root.join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if !path.is_file() || path.file_name().is_some_and(|name| name == ".gitkeep") {
                continue;
            }
            let input = std::fs::read(&path).unwrap();
            if let Err(panic) = std::panic::catch_unwind(|| check(&input)) {
                panic!("{} fails again: {panic:?}", path.display());
            }
            replayed += 1;
        }
    }
    eprintln!("replayed {replayed} fuzzer inputs");
}
