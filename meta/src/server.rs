//! The controller listener: accepts connections from other brokers' controllers and answers
//! each framed request in order, handing Raft's messages to openraft and the rest to the
//! [`crate::controller::Controller`].
//!
//! A connection that sends a bad frame is closed (the peer reconnects); it never affects the
//! listener or other connections.

use std::sync::Arc;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::controller::Inner;
use crate::rpc::{self, Envelope, Request, Response};

/// Accepts until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    inner: Arc<Inner>,
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

async fn connection(
    stream: TcpStream,
    inner: Arc<Inner>,
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
        let response = if envelope.to != inner.id {
            Response::WrongNode { actual: inner.id }
        } else {
            dispatch(&inner, envelope.request).await
        };
        rpc::write_frame(stream.get_mut(), &response).await?;
    }
}

async fn dispatch(inner: &Arc<Inner>, request: Request) -> Response {
    match request {
        Request::AppendEntries(rpc) => {
            Response::AppendEntries(inner.raft.append_entries(rpc).await)
        }
        Request::Vote(rpc) => Response::Vote(inner.raft.vote(rpc).await),
        Request::InstallSnapshot(rpc) => {
            Response::InstallSnapshot(inner.raft.install_snapshot(rpc).await)
        }
        Request::Controller(request) => Response::Controller(inner.handle(request).await),
    }
}
