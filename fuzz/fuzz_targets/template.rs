//! Fuzz target `template`: [`nomad_relay::fuzzing::template_rendering`] on every input (its invariant is
//! documented there).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nomad_relay::fuzzing::template_rendering(data));
