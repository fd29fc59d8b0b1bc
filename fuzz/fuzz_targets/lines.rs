//! Fuzz target `lines`: [`nomad_relay::fuzzing::line_splitting`] on every input (its invariant is
//! documented there).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomad_relay::fuzzing::line_splitting(data));
