//! The broker as a whole: start-up (load the core, bind every listener), and graceful shutdown.
//!
//! Shutdown is a `CancellationToken`: the accept loops stop, each connection stops reading and
//! writes the responses of the requests it already started, then every partition log is closed
//! cleanly (fsync + clean-shutdown marker) so the next start scans nothing. Connections still
//! busy after `shutdown_timeout_ms` are abandoned; the logs are closed regardless.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::core::Core;
use crate::error::BrokerError;
use crate::kafka::Kafka;
use crate::native::Native;
use crate::net::{Net, listener};

/// A running broker.
#[derive(Debug)]
pub struct Broker {
    local_addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    core: Arc<Core>,
    task: JoinHandle<()>,
}

impl Broker {
    /// Loads the data directory, binds the listeners and starts serving. When this returns, the
    /// broker accepts connections at [`Broker::local_addr`] (and [`Broker::kafka_addr`]).
    pub async fn start(config: BrokerConfig) -> Result<Self, BrokerError> {
        let started = std::time::Instant::now();
        let shutdown = CancellationToken::new();
        // Bind first: a port in use fails start-up before any log is opened.
        config.validate()?;
        let (native_listener, local_addr) = bind("listen", &config.listen).await?;
        let kafka = match config.kafka_listen() {
            Some(addr) => Some(bind("kafka_listen", addr).await?),
            None => None,
        };
        let kafka_addr = kafka.as_ref().map(|(_, a)| *a);
        let http = match config.http_listen() {
            Some(addr) => Some(bind("http_listen", addr).await?),
            None => None,
        };
        let http_addr = http.as_ref().map(|(_, a)| *a);
        let endpoints = strom_meta::types::Endpoints {
            native: Some(local_addr.to_string()),
            kafka: kafka_addr.map(|a| a.to_string()),
            http: http_addr.map(|a| a.to_string()),
        };
        let core = Core::load(config, endpoints, shutdown.clone()).await?;
        tracing::info!(
            addr = %local_addr,
            kafka_addr = ?kafka_addr,
            http_addr = ?http_addr,
            data_dir = %core.config.data_dir.display(),
            topics = core.topics.all().len(),
            startup_ms = started.elapsed().as_millis() as u64,
            "broker started"
        );
        let net = Net::new(&core.config, core.stats.clone(), shutdown.clone());
        let mut loops = vec![tokio::spawn(listener::accept_loop(
            native_listener,
            Arc::new(Native::new(core.clone(), local_addr)),
            net.clone(),
            "native",
        ))];
        if let Some((l, addr)) = kafka {
            loops.push(tokio::spawn(listener::accept_loop(
                l,
                Arc::new(Kafka::new(core.clone(), addr)),
                net.clone(),
                "kafka",
            )));
        }
        if let Some((l, _)) = http {
            loops.push(tokio::spawn(crate::http::serve(
                l,
                core.clone(),
                net.clone(),
                shutdown.clone(),
            )));
        }
        let task = tokio::spawn(run(core.clone(), net, loops));
        Ok(Self {
            local_addr,
            kafka_addr,
            http_addr,
            shutdown,
            core,
            task,
        })
    }

    /// The address the native listener accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the Kafka listener accepts connections on, unless it is turned off.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// The address the HTTP listener accepts connections on, unless it is turned off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops the broker gracefully and waits until every log is closed. A broker of a larger
    /// cluster first hands its leaderships to other in-sync replicas (controlled shutdown).
    pub async fn shutdown(self) {
        self.core.controlled_shutdown().await;
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

async fn bind(setting: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), BrokerError> {
    let err = |source| BrokerError::Listen {
        setting,
        addr: addr.to_string(),
        source,
    };
    let l = listener::bind(addr).await.map_err(err)?;
    let a = l.local_addr().map_err(err)?;
    Ok((l, a))
}

/// Runs the core's background work until shutdown, then closes everything in order.
async fn run(core: Arc<Core>, net: Arc<Net>, loops: Vec<JoinHandle<()>>) {
    let background = tokio::spawn(core.clone().run_background());
    for l in loops {
        let _ = l.await;
    }
    net.tracker.close();
    let timeout = Duration::from_millis(core.config.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, net.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_ms = core.config.shutdown_timeout_ms,
            "connections still busy at the shutdown deadline; closing logs anyway"
        );
    }
    let _ = background.await;
    core.fetchers.stop();
    core.cluster.shutdown().await;
    core.topics.close_all().await;
    tracing::info!("broker stopped");
}
