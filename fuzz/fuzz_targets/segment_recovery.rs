//! Fuzz target `segment_recovery`: a small log whose files are damaged by the input, then
//! reopened, read, looked up, appended to and reopened. The check lives in
//! `storage/tests/fuzz_checks/mod.rs`, shared with the corpus replay of the normal test suite;
//! see `docs/fuzzing.md`.
#![no_main]

#[path = "../../storage/tests/fuzz_checks/mod.rs"]
mod fuzz_checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::segment_recovery(data));
