//! strom's metadata quorum (strom-meta): the one Raft group, on openraft, that every broker of a
//! cluster embeds, and the metadata it agrees on.
//!
//! - [`types`]: the Raft type configuration and the metadata commands (KRaft's records);
//!   [`rejection`]: why a command or request changed nothing;
//! - [`image`]: the metadata image and the deterministic function that applies a command;
//! - [`placement`], [`election`] and [`isr`]: the controller's decisions as pure functions:
//!   where replicas go; who leads and who stays in sync as brokers fail, return and shut down
//!   (ISR-only, unclean and preferred elections); which ISR changes a leader may make
//!   (AlterPartition);
//! - [`topic_config`]: the topic settings the controller reads (`min.insync.replicas`,
//!   `unclean.leader.election.enable`);
//! - [`liveness`]: the active controller's heartbeat table, fencing and controlled shutdown
//!   (soft state, never logged);
//! - [`log_store`] and [`state_machine`]: openraft's storage traits on strom's own files
//!   ([`durable`] owns their record format);
//! - [`rpc`], [`network`] and the listener: the controller protocol between brokers;
//! - [`controller`]: the member every broker runs and the call that reaches the active
//!   controller from anywhere; `active` holds what the active controller does.
//!
//! openraft's types stay inside this crate's API surface so that a move to openraft 0.10 touches
//! this crate only.

mod active;
pub mod controller;
pub mod durable;
pub mod election;
pub mod error;
pub mod image;
pub mod isr;
pub mod liveness;
pub mod log_store;
pub mod network;
pub mod placement;
pub mod rejection;
pub mod rpc;
mod server;
pub mod state_machine;
pub mod topic_config;
pub mod types;
