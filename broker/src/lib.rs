//! strom-broker: the server. One core, several protocol front-ends:
//!
//! - [`config`]: the broker's settings and their defaults;
//! - `core`: everything a request does once decoded, whatever its protocol: topics, partition
//!   writers, produce, fetch and long polls, idempotent producers, the group coordinator;
//! - `net`: what every listener shares: binding, the accept loop and connection limit, framing,
//!   in-flight budgets, timeouts, ordered zero-copy responses;
//! - `native`: strom's own protocol (protobuf envelopes) over the core;
//! - `kafka`: the Apache Kafka protocol over the core;
//! - `server`: start-up and shutdown of the whole;
//! - [`error`]: the crate's error type and the storage-to-wire error mapping.
//!
//! Imports point one way: `server` -> `native`, `kafka` -> `net`, `core` -> storage, protocol.

//! ```no_run
//! # async fn run() -> Result<(), strom_broker::BrokerError> {
//! let config = strom_broker::BrokerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     kafka_listen: "127.0.0.1:0".into(),
//!     http_listen: "127.0.0.1:0".into(),
//!     ..Default::default()
//! };
//! let broker = strom_broker::Broker::start(config).await?;
//! println!("listening on {}", broker.local_addr());
//! println!("kafka listening on {:?}", broker.kafka_addr());
//! println!("http listening on {:?}", broker.http_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
mod core;
pub mod error;
mod http;
mod kafka;
mod native;
mod net;
mod server;
mod stats;

pub use config::BrokerConfig;

/// Entry points for the fuzz targets (`fuzz/`) and their corpus replay in the test suite.
#[doc(hidden)]
pub mod fuzzing {
    /// Parses a Kafka request frame (the bytes after the length prefix) as the Kafka listener
    /// does, and decodes its body when it is a supported request. Never panics.
    pub fn kafka_request(data: &[u8]) {
        crate::kafka::request::fuzz_one(data);
    }
}
pub use error::BrokerError;
pub use server::Broker;
