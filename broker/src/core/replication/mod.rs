//! Partition replication, Kafka's ISR design (docs/cluster.md, "Replication"):
//!
//! - [`leader`]: what a partition's leader knows of its followers (their log ends, the high
//!   watermark, which ISR change is due), pure and tested without I/O;
//! - [`replica`]: a partition's replication state as requests see it: the high watermark
//!   consumers read below;
//! - [`divergence`]: where a follower's log parts from its leader's, by leader epochs, and
//!   where the follower truncates.

// The replication tasks that call these are being built (docs/cluster.md, "Replication"):
// until then only the tests use them.
#![cfg_attr(not(test), allow(dead_code))]

pub(crate) mod divergence;
pub(crate) mod leader;
pub(crate) mod replica;
