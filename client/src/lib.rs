//! strom-client: the Rust library services use to talk to a strom broker.
//!
//! - [`Producer`]: batched, pipelined, idempotent sends with Kafka's partitioner
//!   (`producer` module: accumulator, sender, delivery futures);
//! - [`Consumer`]: assigned partitions, `poll`, `seek`, background fetching bounded in memory
//!   (`consumer` module); consumer groups with [`Consumer::subscribe`]: coordinator-assigned
//!   partitions, incremental rebalancing with [`RebalanceListener`] callbacks, auto-commit or
//!   [`Consumer::commit`] / [`Consumer::commit_async`] / [`Consumer::commit_offsets`]
//!   (at-least-once; see the `consumer` module docs for where duplicates come from);
//! - [`QueueConsumer`]: a member of a queue group: records handed out one member at a time
//!   under a lease, each answered on its own (ack, nack with backoff, reject to the dead-letter
//!   topic, release, extend);
//! - [`Admin`]: create, delete and describe topics, describe and alter configs, list offsets;
//!   list, describe and delete groups, read their committed offsets, reset them; describe
//!   queue groups and reset them; describe the cluster (brokers, active controller, metadata
//!   quorum);
//! - [`partitioner`]: Kafka's murmur2 partitioner, bit for bit;
//! - [`Error`]: one error type with retriable and fatal kinds (`error` module);
//! - config structs ([`ProducerConfig`], [`ConsumerConfig`] with its [`GroupConfig`],
//!   [`ClientConfig`]) with Kafka's names and defaults;
//! - record types ([`ProducerRecord`], [`RecordMetadata`], [`ConsumerRecord`],
//!   [`TopicPartition`]);
//! - internal: `connection` (one framed, pipelined TCP connection), `control` (the reconnecting
//!   connection for metadata and admin requests), `batches` (compression, producer stamps,
//!   decompression of record batches).
//!
//! Everything runs on tokio; each client owns a few background tasks (listed in the module docs
//! of `producer` and `consumer`). The wire format is `strom-protocol`, re-exported as
//! [`protocol`].
//!
//! ```no_run
//! use std::time::Duration;
//! use strom_client::{AutoOffsetReset, Consumer, ConsumerConfig, Producer, ProducerConfig};
//!
//! # async fn run() -> Result<(), strom_client::Error> {
//! let producer = Producer::connect(ProducerConfig::new("127.0.0.1:9494")).await?;
//! let meta = producer.send("orders", Some(b"order-1"), Some(b"placed"), &[]).await?.await?;
//! producer.close().await?;
//!
//! let mut consumer = Consumer::connect(ConsumerConfig {
//!     auto_offset_reset: AutoOffsetReset::Earliest,
//!     ..ConsumerConfig::new("127.0.0.1:9494")
//! })
//! .await?;
//! consumer.assign(&[("orders", meta.partition)]);
//! for record in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{} {:?}", record.offset(), record.value());
//! }
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod admin;
mod backoff;
mod batches;
pub mod config;
mod connection;
mod consumer;
mod control;
pub mod error;
pub mod partitioner;
mod producer;
mod queue;
mod record;
mod routes;

pub use admin::{
    Admin, BrokerDescription, ClusterDescription, ConfigEntry, ConfigSource, GroupDescription,
    GroupListing, GroupOffset, GroupState, ListedOffset, MemberDescription, NewTopic, OffsetSpec,
    PartitionDescription, QueueGroupDescription, QueueMemberDescription, QueuePartitionDescription,
    QueueResetTo, QuorumRole, RedriveStatus, ResetTo, TopicDescription,
};
pub use config::{
    Acks, Assignor, AutoOffsetReset, ClientConfig, CompressionType, ConsumerConfig,
    DEFAULT_BOOTSTRAP, GroupConfig, ProducerConfig,
};
pub use consumer::{CommitHandle, Consumer, GroupMetadata, ListenerFuture, RebalanceListener};
pub use error::{Error, Result};
pub use producer::{DeliveryFuture, Producer};
pub use queue::{QueueConfig, QueueConsumer, QueueRecord, Refused};
pub use record::{
    ConsumerRecord, MAX_DELIVERY_DELAY, ProducerRecord, RecordMetadata, TopicPartition,
};
pub use strom_protocol as protocol;
pub use strom_protocol::batch::HeaderRef;
