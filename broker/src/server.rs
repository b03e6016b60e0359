//! The broker as a whole: start-up (load topics, bind), the accept loop with its connection
//! limit, periodic maintenance, and graceful shutdown.
//!
//! Shutdown is a `CancellationToken`: the accept loop stops, each connection stops reading and
//! writes the responses of the requests it already started, then every partition log is closed
//! cleanly (fsync + clean-shutdown marker) so the next start scans nothing. Connections still
//! busy after `shutdown_timeout_ms` are abandoned; the logs are closed regardless.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BrokerConfig;
use crate::connection;
use crate::error::BrokerError;
use crate::groups::{Coordinator, SessionBounds};
use crate::producers::ProducerIds;
use crate::topics::Topics;

/// What request handlers share.
#[derive(Debug)]
pub(crate) struct Context {
    pub config: BrokerConfig,
    pub topics: Topics,
    pub producer_ids: ProducerIds,
    pub groups: Coordinator,
    pub shutdown: CancellationToken,
    /// Request bytes in flight over all connections (`max_inflight_bytes_total`).
    pub inflight: Arc<Semaphore>,
    /// The address clients reach this broker at (for Metadata).
    pub advertised: SocketAddr,
}

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Broker {
    /// Loads the data directory, binds the listener and starts serving. When this returns, the
    /// broker accepts connections at [`Broker::local_addr`].
    pub async fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        config.validate()?;
        let defaults = config.topic_defaults()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::Io {
            op: "create dir",
            path: config.data_dir.clone(),
            source,
        })?;
        let started = std::time::Instant::now();
        let topics = Topics::load(
            &config.data_dir,
            defaults,
            config.max_partitions,
            config.io_faults.clone(),
        )
        .await?;
        let producer_ids = ProducerIds::load(&config.data_dir.join("meta"))?;
        let groups = Coordinator::load(
            &topics,
            SessionBounds {
                min_ms: config.group_min_session_timeout_ms,
                max_ms: config.group_max_session_timeout_ms,
                default_ms: config.group_default_session_timeout_ms,
            },
        )
        .await?;
        let listener = bind(&config.listen)
            .await
            .map_err(|source| BrokerError::Io {
                op: "listen on",
                path: config.listen.clone().into(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| BrokerError::Io {
            op: "listen on",
            path: config.listen.clone().into(),
            source,
        })?;
        tracing::info!(
            addr = %local_addr,
            data_dir = %config.data_dir.display(),
            topics = topics.all().len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "broker started"
        );
        let shutdown = CancellationToken::new();
        let inflight = Arc::new(Semaphore::new(config.max_inflight_bytes_total));
        let ctx = Arc::new(Context {
            config,
            topics,
            producer_ids,
            groups,
            inflight,
            shutdown: shutdown.clone(),
            advertised: local_addr,
        });
        let task = tokio::spawn(run(listener, ctx));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// The address the broker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the broker gracefully and waits until every log is closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Listens on the first address `addr` resolves to, with a backlog deep enough for a burst of
/// thousands of connects (tokio's default of 1024 overflows, and each dropped SYN costs the
/// client a one-second retransmit).
async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

/// Pending connections the kernel queues before the broker accepts them (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 8192;

async fn run(listener: TcpListener, ctx: Arc<Context>) {
    let tracker = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(ctx.config.max_connections));
    let maintenance = tokio::spawn(maintain(ctx.clone()));
    let sessions = tokio::spawn(crate::groups::expire_sessions(
        ctx.clone(),
        Duration::from_millis(100),
    ));
    let over_limit_logged = AtomicBool::new(false);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = ctx.shutdown.cancelled() => break,
                }
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            if !over_limit_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(%peer, max_connections = ctx.config.max_connections, "connection limit reached; closing new connections until one ends");
            }
            drop(stream);
            continue;
        };
        over_limit_logged.store(false, Ordering::Relaxed);
        tracing::info!(%peer, "connection opened");
        let ctx = ctx.clone();
        tracker.spawn(async move {
            connection::serve(stream, ctx).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    let timeout = Duration::from_millis(ctx.config.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        tracing::warn!(
            timeout_ms = ctx.config.shutdown_timeout_ms,
            "connections still busy at the shutdown deadline; closing logs anyway"
        );
    }
    maintenance.abort();
    sessions.abort();
    ctx.topics.close_all().await;
    tracing::info!("broker stopped");
}

/// Runs retention and compaction on every partition, periodically.
async fn maintain(ctx: Arc<Context>) {
    let period = Duration::from_millis(ctx.config.retention_check_interval_ms);
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => ctx.topics.maintain().await,
            _ = ctx.shutdown.cancelled() => return,
        }
    }
}
