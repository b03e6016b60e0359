//! strom-client: the Rust library services use to talk to a strom broker (producer, consumer,
//! admin). It is built on strom-protocol and arrives with the broker.

pub use strom_protocol as protocol;
