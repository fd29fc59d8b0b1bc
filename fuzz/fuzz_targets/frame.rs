//! Fuzz target `frame`: [`nomad_relay::fuzzing::frame_parsing`] on every input (its invariant is
//! documented there).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomad_relay::fuzzing::frame_parsing(data));
