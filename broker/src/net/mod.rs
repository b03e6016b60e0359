//! What every TCP listener shares, whatever protocol it speaks: binding, the accept loop with the
//! broker-wide connection limit, and the connection machinery (length-prefixed frames checked
//! before allocating, in-flight byte budgets, read and idle timeouts, pipelined requests with
//! responses written in order, zero-copy vectored writes).
//!
//! A protocol plugs in as a [`Frontend`]: it turns one frame into a started request and encodes
//! responses into chunks. Both strom's protocol and Kafka's frame requests the same way (a 4-byte
//! big-endian length, then the payload), so every limit holds on every listener.

pub(crate) mod connection;
pub(crate) mod listener;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BrokerConfig;
use crate::stats::Stats;

/// The part of a request left after its in-order start: its response, or a future that
/// completes it (an acknowledgement or a long poll).
pub(crate) enum Started<R> {
    /// Answered (`None`: a request that gets no response, such as a produce with acks 0).
    Ready(Option<R>),
    /// Still running; the connection runs it concurrently with later requests.
    Pending(Pin<Box<dyn Future<Output = Option<R>> + Send>>),
}

/// A wire protocol on top of the shared connection machinery.
pub(crate) trait Frontend: Send + Sync + 'static {
    /// A response, ready to encode.
    type Response: Send + 'static;
    /// What one connection's requests share.
    type Connection: Send + Sync + 'static;

    /// The state of a new connection from `peer`.
    fn connect(&self, peer: std::net::SocketAddr) -> Self::Connection;

    /// Starts the request in `frame` (the payload after the length prefix). This part runs in
    /// request order; `Err` closes the connection with the reason (a request without a readable
    /// header has no correlation id to answer with).
    fn start(
        &self,
        conn: &Arc<Self::Connection>,
        frame: Bytes,
    ) -> impl Future<Output = Result<Started<Self::Response>, String>> + Send;

    /// Counts an answered request for `/metrics`: its API, error codes and latency (from the
    /// request read whole to its response ready to write). Requests that get no response (a
    /// produce with acks 0) are not counted.
    fn observe(&self, response: &Self::Response, elapsed: Duration);

    /// Encodes a response, with its length prefix, as chunks: small parts written into
    /// `scratch`, large payloads (record batches) pushed as the very `Bytes` they are.
    fn encode(
        &self,
        response: &Self::Response,
        scratch: &mut BytesMut,
        chunks: &mut Vec<Bytes>,
    ) -> Result<(), String>;
}

/// The per-connection limits, from the broker's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_frame_bytes: u32,
    pub max_inflight_bytes: usize,
    pub max_pipelined_requests: usize,
    pub write_timeout: Duration,
    pub request_read_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(c: &BrokerConfig) -> Self {
        Self {
            max_frame_bytes: c.max_frame_bytes,
            max_inflight_bytes: c.max_inflight_bytes,
            max_pipelined_requests: c.max_pipelined_requests,
            write_timeout: Duration::from_millis(c.write_timeout_ms),
            request_read_timeout: Duration::from_millis(c.request_read_timeout_ms),
            idle_timeout: Duration::from_millis(c.connections_max_idle_ms),
        }
    }
}

/// What every listener and connection of the broker shares.
#[derive(Debug)]
pub(crate) struct Net {
    pub limits: Limits,
    /// Open connections over all listeners (`max_connections`).
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    /// Request bytes in flight over all connections (`max_inflight_bytes_total`).
    pub inflight: Arc<Semaphore>,
    pub max_inflight: usize,
    /// Connections counted per listener (`/metrics`).
    pub stats: Arc<Stats>,
    /// Every connection task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Net {
    /// Open connections over all listeners.
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.connections.available_permits()
    }

    /// Request bytes in flight over all connections.
    pub fn inflight_bytes(&self) -> usize {
        self.max_inflight - self.inflight.available_permits()
    }

    pub fn new(config: &BrokerConfig, stats: Arc<Stats>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            limits: Limits::from_config(config),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            max_connections: config.max_connections,
            inflight: Arc::new(Semaphore::new(config.max_inflight_bytes_total)),
            max_inflight: config.max_inflight_bytes_total,
            stats,
            tracker: TaskTracker::new(),
            shutdown,
        })
    }
}
