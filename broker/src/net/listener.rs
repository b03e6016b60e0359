//! Binding a listener and its accept loop: each accepted connection takes a permit of the
//! broker-wide connection limit (a connection over the limit is closed at once, logged once per
//! burst) and is served by [`super::connection::serve`] on a tracked task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Frontend, Net, connection};

/// Pending connections the kernel queues before the broker accepts them (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 8192;

/// Listens on the first address `addr` resolves to, with a backlog deep enough for a burst of
/// thousands of connects (tokio's default of 1024 overflows, and each dropped SYN costs the
/// client a one-second retransmit).
pub(crate) async fn bind(addr: &str) -> std::io::Result<TcpListener> {
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

/// Accepts connections until shutdown and serves each with `frontend`.
pub(crate) async fn accept_loop<F: Frontend>(
    listener: TcpListener,
    frontend: Arc<F>,
    net: Arc<Net>,
    protocol: &'static str,
) {
    let over_limit_logged = AtomicBool::new(false);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = net.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(protocol, error = %e, "accept failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    _ = net.shutdown.cancelled() => break,
                }
            }
        };
        let counted = net.stats.connections(protocol);
        let Ok(permit) = net.connections.clone().try_acquire_owned() else {
            counted.rejected.fetch_add(1, Ordering::Relaxed);
            if !over_limit_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(protocol, %peer, max_connections = net.max_connections, "connection limit reached; closing new connections until one ends");
            }
            drop(stream);
            continue;
        };
        over_limit_logged.store(false, Ordering::Relaxed);
        tracing::info!(protocol, %peer, "connection opened");
        let frontend = frontend.clone();
        let shared = net.clone();
        counted.open.fetch_add(1, Ordering::Relaxed);
        net.tracker.spawn(async move {
            connection::serve(stream, frontend, shared.clone(), protocol).await;
            shared
                .stats
                .connections(protocol)
                .open
                .fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}
