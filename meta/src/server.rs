//! The controller listener: accepts connections from other brokers' controllers and answers
//! each framed request in order, handing each to its [`Dispatch`] (the controller, which gives
//! Raft's messages to openraft and answers the rest).
//!
//! A connection that sends a bad frame is closed (the peer reconnects); it never affects the
//! listener or other connections.

use std::sync::Arc;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::rpc::{self, Envelope, Request, Response};
use crate::types::BrokerId;

/// What answers the listener's requests: the controller.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// This member's id: requests for any other are refused.
    fn id(&self) -> BrokerId;

    /// Answers one request.
    fn dispatch(&self, request: Request) -> impl Future<Output = Response> + Send;
}

/// Accepts until `stop` turns true.
pub(crate) async fn serve<D: Dispatch>(
    listener: TcpListener,
    inner: Arc<D>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let inner = Arc::clone(&inner);
                let stop = stop.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, inner, stop).await {
                        tracing::debug!(%peer, error = %e, "controller connection closed");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or similar: the next accept may succeed.
                tracing::warn!(error = %e, "controller listener accept failed");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn connection<D: Dispatch>(
    stream: TcpStream,
    inner: Arc<D>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    loop {
        let envelope: Envelope = tokio::select! {
            read = rpc::read_frame(&mut stream) => match read? {
                Some(envelope) => envelope,
                None => return Ok(()),
            },
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        };
        let response = if envelope.to != inner.id() {
            Response::WrongNode { actual: inner.id() }
        } else {
            inner.dispatch(envelope.request).await
        };
        rpc::write_frame(stream.get_mut(), &response).await?;
    }
}
