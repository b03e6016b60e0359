//! strom-protocol: the bytes strom speaks and stores.
//!
//! This crate is a pure codec: no I/O, no async runtime, no logging. It owns
//! - [`batch`]: Kafka's RecordBatch v2 layout, shared by the client (which builds batches), the
//!   broker (which validates and stamps offsets) and storage (which stores and serves them as they
//!   are);
//! - [`varint`]: the zigzag varints records are framed with.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod varint;
