//! Fuzz target `record`: [`nomad_relay::fuzzing::record_decoding`] on every input (its invariant is
//! documented there).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomad_relay::fuzzing::record_decoding(data));
