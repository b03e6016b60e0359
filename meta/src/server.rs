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

use crate::rpc::{self, ControllerRequest, Envelope, Request, Response};
use crate::types::BrokerId;

/// What answers the listener's requests: the controller.
pub(crate) trait Dispatch: Send + Sync + 'static {
    /// This member's id: requests for any other are refused.
    fn id(&self) -> BrokerId;

    /// Answers one request.
    fn dispatch(&self, request: Request) -> impl Future<Output = Response> + Send;

    /// A connection on which `broker` heartbeated with `epoch` (last) has closed.
    fn heartbeats_stopped(&self, broker: BrokerId, epoch: u64) -> impl Future<Output = ()> + Send;
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

/// Serves one connection; when it ends, the broker that heartbeated on it (if one did) is
/// reported to the controller, which ends its session at once (a crashed process closes its
/// sockets long before its session would run out).
async fn connection<D: Dispatch>(
    stream: TcpStream,
    inner: Arc<D>,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut heartbeater = None;
    let served = requests(stream, &inner, stop, &mut heartbeater).await;
    if let Some((broker, epoch)) = heartbeater {
        inner.heartbeats_stopped(broker, epoch).await;
    }
    served
}

async fn requests<D: Dispatch>(
    stream: TcpStream,
    inner: &Arc<D>,
    mut stop: watch::Receiver<bool>,
    heartbeater: &mut Option<(BrokerId, u64)>,
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
            if let Request::Controller(ControllerRequest::Heartbeat { broker, epoch, .. }) =
                &envelope.request
            {
                *heartbeater = Some((*broker, *epoch));
            }
            inner.dispatch(envelope.request).await
        };
        rpc::write_frame(stream.get_mut(), &response).await?;
    }
}
