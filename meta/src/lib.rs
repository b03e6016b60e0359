//! strom's metadata quorum (strom-meta): the one Raft group, on openraft, that every broker of a
//! cluster embeds, and the metadata it agrees on.
//!
//! - [`types`]: the Raft type configuration and the metadata commands (KRaft's records);
//! - [`image`]: the metadata image and the deterministic function that applies a command;
//! - [`placement`]: the controller's decisions (replica placement, leader choice, fencing) as
//!   pure functions;
//! - [`liveness`]: the active controller's heartbeat table (soft state, never logged);
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
pub mod error;
pub mod image;
pub mod liveness;
pub mod log_store;
pub mod network;
pub mod placement;
pub mod rpc;
mod server;
pub mod state_machine;
pub mod types;
