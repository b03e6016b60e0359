//! strom-broker: the server.
//!
//! - [`config`]: the broker's settings and their defaults;
//! - `server`: start-up, the accept loop, the connection limit, maintenance and shutdown;
//! - `connection`: one client connection: framing, pipelining, in-flight limits, ordered
//!   zero-copy responses;
//! - `handlers`: one function per API;
//! - `groups`: the group coordinator: membership, incremental assignment, committed offsets;
//! - `topics`: the topic registry and its metadata files;
//! - `partition`: a partition's single writer task and the handles connections use;
//! - `producers`: idempotent producers: id allocation, per-partition sequence state, snapshots;
//! - [`error`]: the crate's error type and the storage-to-wire error mapping.
//!
//! ```no_run
//! # async fn run() -> Result<(), strom_broker::BrokerError> {
//! let config = strom_broker::BrokerConfig { listen: "127.0.0.1:0".into(), ..Default::default() };
//! let broker = strom_broker::Broker::start(config).await?;
//! println!("listening on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
mod connection;
pub mod error;
mod groups;
mod handlers;
mod partition;
mod producers;
mod server;
mod topics;

pub use config::BrokerConfig;
pub use error::BrokerError;
pub use server::Broker;
