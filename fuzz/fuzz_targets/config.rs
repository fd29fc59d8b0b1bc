//! Fuzz target `config`: [`nomad_relay::fuzzing::config_loading`] on every input (its invariant is
//! documented there).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomad_relay::fuzzing::config_loading(data));
