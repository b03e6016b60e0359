//! Fuzz target `frame_decode`: arbitrary bytes through the frame reader and every request and
//! response decoder. The check lives in `protocol/tests/fuzz_checks/mod.rs`, shared with the
//! corpus replay of the normal test suite; see `docs/fuzzing.md`.
#![no_main]

#[path = "../../protocol/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::frame_decode(data));
