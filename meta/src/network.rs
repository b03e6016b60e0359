//! The client side of the controller protocol: openraft's [`RaftNetwork`] to each peer, and the
//! plain call a broker makes to whichever controller it believes is active.
//!
//! A peer connection is opened lazily on the first call (openraft's rule: `new_client` never
//! connects), kept while it works and dropped on any error, so the next call reconnects. Every
//! call has a deadline; a refused or timed-out connect is `Unreachable` (openraft backs off),
//! a failure on an open connection is a `NetworkError` (openraft retries).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::BufReader;
use tokio::net::{TcpSocket, TcpStream};

use crate::rpc::{self, ControllerRequest, ControllerResponse, Envelope, Request, Response};
use crate::types::{BrokerId, ControllerNode, TypeConfig};

/// How long a connect may take before the peer counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a call to a controller failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect.
    #[error("cannot reach controller {node} at {addr}: {source}")]
    Unreachable {
        /// The node.
        node: BrokerId,
        /// Its address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or timed out during the call.
    #[error("controller {node} at {addr}: {source}")]
    Network {
        /// The node.
        node: BrokerId,
        /// Its address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The address belongs to another node.
    #[error("{addr} is controller {actual}, not {node}: check --controller-voters")]
    WrongNode {
        /// The node meant.
        node: BrokerId,
        /// The address.
        addr: String,
        /// The node that answered.
        actual: BrokerId,
    },
    /// The answer was not of the kind asked for.
    #[error("controller {node} answered a {asked} call with something else")]
    Unexpected {
        /// The node.
        node: BrokerId,
        /// What was asked.
        asked: &'static str,
    },
}

/// One connection to one controller, opened on first use.
#[derive(Debug)]
pub struct Connection {
    node: BrokerId,
    addr: String,
    source: Option<IpAddr>,
    stream: Option<BufReader<TcpStream>>,
}

impl Connection {
    /// A connection to `node` at `addr` that connects on its first call.
    pub fn new(node: BrokerId, addr: String) -> Self {
        Self {
            node,
            addr,
            source: None,
            stream: None,
        }
    }

    /// Makes the connection leave from `source` (the local controller listener's address), so
    /// the peer, and any network policy between them, sees which controller is calling. `None`
    /// lets the system choose.
    #[must_use]
    pub fn from_source(mut self, source: Option<IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// The address this connection dials.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `request` and waits for the answer, for at most `timeout`.
    pub async fn call(
        &mut self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let attempt = tokio::time::timeout(timeout, self.exchange(request)).await;
        let result = match attempt {
            Ok(result) => result,
            Err(_) => Err(CallError::Network {
                node: self.node,
                addr: self.addr.clone(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ),
            }),
        };
        if result.is_err() {
            self.stream = None;
        }
        match result? {
            Response::WrongNode { actual } => Err(CallError::WrongNode {
                node: self.node,
                addr: self.addr.clone(),
                actual,
            }),
            response => Ok(response),
        }
    }

    /// Sends a [`ControllerRequest`].
    pub async fn controller(
        &mut self,
        request: ControllerRequest,
        timeout: Duration,
    ) -> Result<ControllerResponse, CallError> {
        match self.call(Request::Controller(request), timeout).await? {
            Response::Controller(response) => Ok(response),
            _ => Err(CallError::Unexpected {
                node: self.node,
                asked: "controller",
            }),
        }
    }

    async fn exchange(&mut self, request: Request) -> Result<Response, CallError> {
        if self.stream.is_none() {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, dial(&self.addr, self.source))
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))
                })
                .map_err(|source| CallError::Unreachable {
                    node: self.node,
                    addr: self.addr.clone(),
                    source,
                })?;
            // Raft's messages are small and latency-bound.
            let _ = stream.set_nodelay(true);
            self.stream = Some(BufReader::new(stream));
        }
        let network = |source| CallError::Network {
            node: self.node,
            addr: self.addr.clone(),
            source,
        };
        let Some(stream) = self.stream.as_mut() else {
            return Err(network(io::Error::other("no connection")));
        };
        let envelope = Envelope {
            to: self.node,
            request,
        };
        rpc::write_frame(stream.get_mut(), &envelope)
            .await
            .map_err(network)?;
        match rpc::read_frame(stream).await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(network(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the controller closed the connection",
            ))),
            Err(e) => Err(network(e)),
        }
    }
}

/// Connects to `addr`, from `source` when one is given and it can reach `addr` (the system's
/// choice otherwise: a listener bound to an address that cannot reach a peer must not cut the
/// quorum apart).
async fn dial(addr: &str, source: Option<IpAddr>) -> io::Result<TcpStream> {
    if let Some(source) = source {
        let mut last = None;
        for target in tokio::net::lookup_host(addr).await? {
            if target.is_ipv4() != source.is_ipv4() {
                continue;
            }
            let attempt = async {
                let socket = if target.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                // Binding picks the local port now, from the range listeners on port 0 get
                // theirs from too; SO_REUSEADDR lets such a listener still bind a port that an
                // outgoing connection holds (a restarted controller, say).
                socket.set_reuseaddr(true)?;
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(target).await
            };
            match attempt.await {
                Ok(stream) => return Ok(stream),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::debug!(%addr, %source, error = %e, "cannot connect from the listener's address; letting the system choose");
        }
    }
    TcpStream::connect(addr).await
}

/// Makes a [`Peer`] for each node openraft replicates to; connections leave from `source`
/// (see [`Connection::from_source`]).
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// The local address outgoing connections leave from, if any.
    pub source: Option<IpAddr>,
    /// Told the node whenever a connection to it is refused (nothing listens: its process is
    /// gone), for the active controller's liveness table.
    pub refused: Option<tokio::sync::mpsc::UnboundedSender<BrokerId>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: BrokerId, node: &ControllerNode) -> Peer {
        Peer {
            connection: Connection::new(target, node.addr.clone()).from_source(self.source),
            refused: self.refused.clone(),
        }
    }
}

/// openraft's view of one peer.
#[derive(Debug)]
pub struct Peer {
    connection: Connection,
    refused: Option<tokio::sync::mpsc::UnboundedSender<BrokerId>>,
}

type RaftRpcError<E = openraft::error::Infallible> =
    RPCError<BrokerId, ControllerNode, RaftError<BrokerId, E>>;

impl Peer {
    async fn raft_call<E: std::error::Error>(
        &mut self,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<BrokerId, ControllerNode, RaftError<BrokerId, E>>> {
        self.connection
            .call(request, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable { ref source, .. } => {
                    if source.kind() == io::ErrorKind::ConnectionRefused
                        && let Some(refused) = &self.refused
                    {
                        let _ = refused.send(self.connection.node);
                    }
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                CallError::WrongNode { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                CallError::Network { .. } | CallError::Unexpected { .. } => {
                    RPCError::Network(NetworkError::new(&e))
                }
            })
    }

    fn unexpected<E: std::error::Error>(
        &self,
        asked: &'static str,
    ) -> RPCError<BrokerId, ControllerNode, RaftError<BrokerId, E>> {
        RPCError::Network(NetworkError::new(&CallError::Unexpected {
            node: self.connection.node,
            asked,
        }))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<BrokerId>, RaftRpcError> {
        match self.raft_call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.connection.node, e)))
            }
            _ => Err(self.unexpected("append entries")),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<BrokerId>, RaftRpcError<InstallSnapshotError>> {
        match self
            .raft_call(Request::InstallSnapshot(rpc), &option)
            .await?
        {
            Response::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.connection.node, e)))
            }
            _ => Err(self.unexpected("install snapshot")),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<BrokerId>,
        option: RPCOption,
    ) -> Result<VoteResponse<BrokerId>, RaftRpcError> {
        match self.raft_call(Request::Vote(rpc), &option).await? {
            Response::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.connection.node, e)))
            }
            _ => Err(self.unexpected("vote")),
        }
    }
}
