//! Fuzz target `kafka_request`: arbitrary bytes as a Kafka request frame (the bytes after the
//! length prefix) through the Kafka listener's request reader: the fixed header fields, the API
//! and version check, the per-API size cap, the request header and the body's decoder
//! (`strom_broker::fuzzing::kafka_request`, which must never panic nor allocate beyond what
//! the input justifies). The corpus replay of the normal test suite is
//! `tests/kafka_fuzz_corpus.rs`; see `docs/fuzzing.md`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strom_broker::fuzzing::kafka_request(data));
