//! strom-broker: the server. It will own the listeners, connections, request dispatch, the topic
//! registry, partition writers, fetch long-polling and the group coordinator (see
//! `docs/architecture.md`). Today it re-exports the crates it is built on; the server arrives with
//! the wire protocol.

pub use strom_protocol as protocol;
pub use strom_storage as storage;
