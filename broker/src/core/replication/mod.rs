//! Partition replication, Kafka's ISR design (docs/cluster.md, "Replication"):
//!
//! - [`leader`]: what a partition's leader knows of its followers (their log ends, the high
//!   watermark, which ISR change is due), pure and tested without I/O;
//! - [`replica`]: a partition's replication state as requests see it: leader or follower, the
//!   high watermark consumers read below, what `acks=all` waits on;
//! - [`divergence`]: where a follower's log parts from its leader's, by leader epochs, and
//!   where the follower truncates;
//! - [`serve`]: the leader's side of ReplicaFetch;
//! - [`fetcher`]: the follower's side, one fetcher per leader broker;
//! - [`isr`]: the leaders' ISR changes, asked of the controller;
//! - `sim` (tests): the leader, its followers and the controller together, under proptest.

pub(crate) mod divergence;
pub(crate) mod fetcher;
pub(crate) mod isr;
pub(crate) mod leader;
pub(crate) mod replica;
pub(crate) mod serve;
#[cfg(test)]
mod sim;
