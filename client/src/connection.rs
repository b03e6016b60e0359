//! One TCP connection to a broker: framed protobuf envelopes, pipelined requests, responses
//! matched in order.
//!
//! The broker answers one connection's requests in the order it received them, so a FIFO of
//! waiters is all the matching needed; each response's correlation id is still checked against
//! the waiter's, and a mismatch (or an unsolicited response) closes the connection. A produce
//! with `ACKS_NONE` gets no response at all: it gets no place in the FIFO, and its caller is told
//! when the request has been written instead.
//!
//! Two tasks per connection, so that a full socket in one direction never stops the other (the
//! broker stops reading a client that does not read its responses):
//! - the writer takes encoded frames from a channel, registers their waiters with the reader
//!   first, then writes everything queued with vectored writes;
//! - the reader cuts frames out of one reusable buffer ([`decode_frame`] checks the length
//!   against `max_response_bytes` before allocating), decodes them (record batches stay slices
//!   of the read buffer) and completes the waiters.
//!
//! Requests are encoded by the caller, so encoding runs on the caller's task. When either task
//! fails, the connection is dead: every waiter gets [`Error::Disconnected`] and callers open a
//! new connection. Dropping the last handle closes the connection gracefully: the writer
//! finishes writing, shuts the socket down for writing, and the reader delivers the responses
//! still due until the broker closes its side.

use std::io::IoSlice;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use strom_protocol::frame::decode_frame;
use strom_protocol::messages::{
    ApiKey, ApiVersionRange, ApiVersionsRequest, Request, Response, request, response,
};
use strom_protocol::{api, decode_response, encode_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::config::ClientConfig;
use crate::error::{Error, Result};

/// Frames queued for the writer before `start` waits (per connection).
const WRITE_QUEUE: usize = 256;
/// Most frames handed to one vectored write.
const MAX_IOV: usize = 64;
/// The broker's frame limit when it reports none.
const DEFAULT_MAX_FRAME_BYTES: usize = 8 << 20;

/// What a request's caller receives: the response, or `None` for a request that gets none
/// (a produce with `ACKS_NONE`), once it is written.
pub(crate) type Reply = Result<Option<Response>>;

/// The receiving end of a request started with [`Connection::start`].
pub(crate) type ReplyReceiver = oneshot::Receiver<Reply>;

struct Outgoing {
    frame: Bytes,
    correlation_id: u32,
    expects_response: bool,
    reply: oneshot::Sender<Reply>,
}

struct Waiter {
    correlation_id: u32,
    reply: oneshot::Sender<Reply>,
}

/// State both tasks and the handles share.
struct Shared {
    addr: String,
    alive: AtomicBool,
    /// Why the connection died, for the errors handed to later callers.
    reason: Mutex<Option<String>>,
    /// Wakes both tasks when the connection must stop.
    stop: Notify,
}

impl Shared {
    fn kill(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(reason);
        }
        self.alive.store(false, Ordering::Release);
        self.stop.notify_waiters();
    }

    fn error(&self) -> Error {
        let reason = self
            .reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "connection closed".to_string());
        Error::Disconnected {
            addr: self.addr.clone(),
            reason,
        }
    }
}

/// A connection to one broker. Cheap to share behind an `Arc`; see the module docs.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
    next_id: AtomicU32,
    client_id: String,
    /// The broker's `max_frame_bytes`: larger requests are refused here instead of making the
    /// broker close the connection.
    max_frame_bytes: usize,
    versions: Vec<ApiVersionRange>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.shared.addr)
            .field("alive", &self.is_alive())
            .field("max_frame_bytes", &self.max_frame_bytes)
            .finish()
    }
}

impl Connection {
    /// Opens a connection to the first reachable address of `config.bootstrap`.
    ///
    /// # Errors
    /// The last address's failure ([`Error::Connect`], [`Error::Timeout`], or a handshake
    /// error).
    #[cfg(test)]
    pub(crate) async fn connect_any(config: &ClientConfig) -> Result<Arc<Connection>> {
        Connection::connect_first(&config.addresses(), config).await
    }

    /// Opens a connection to the first of `addrs` that accepts one.
    ///
    /// # Errors
    /// The last address's error, or [`Error::Config`] when `addrs` is empty.
    pub(crate) async fn connect_first(
        addrs: &[String],
        config: &ClientConfig,
    ) -> Result<Arc<Connection>> {
        let mut last = Error::config("bootstrap", "no broker address given");
        for addr in addrs {
            match Connection::connect(addr, config).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connect failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Opens a connection to `addr` and runs the ApiVersions handshake.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Timeout`], or the handshake's failure.
    pub(crate) async fn connect(addr: &str, config: &ClientConfig) -> Result<Arc<Connection>> {
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout(config.connect_timeout))?
            .map_err(|e| Error::connect(addr, e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::connect(addr, e))?;
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            alive: AtomicBool::new(true),
            reason: Mutex::new(None),
            stop: Notify::new(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (waiters_tx, waiters_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(
            rd,
            waiters_rx,
            config.max_response_bytes,
            shared.clone(),
        ));
        tokio::spawn(write_loop(wr, rx, waiters_tx, shared.clone()));
        let mut conn = Connection {
            shared,
            tx,
            next_id: AtomicU32::new(1),
            client_id: config.client_id.clone(),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            versions: Vec::new(),
            request_timeout: config.request_timeout,
        };
        let handshake = conn.request_with_timeout(
            ApiVersionsRequest {
                client_software_name: Some("strom-client".to_string()),
                client_software_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            },
            config.connect_timeout,
        );
        let body = handshake.await?;
        let response::Body::ApiVersions(v) = body else {
            return Err(conn.protocol("ApiVersions answered with another API's body"));
        };
        if let Some(e) = Error::from_code(v.error_code(), None) {
            return Err(e);
        }
        if v.max_frame_bytes > 0 {
            conn.max_frame_bytes = v.max_frame_bytes as usize;
        }
        conn.versions = v.api_versions;
        tracing::debug!(%addr, max_frame_bytes = conn.max_frame_bytes, "connected");
        Ok(Arc::new(conn))
    }

    /// The broker's address.
    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// False once the connection broke or was closed.
    pub(crate) fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Resolves once the connection is dead (broken or closed).
    pub(crate) async fn closed(&self) {
        loop {
            let stop = self.shared.stop.notified();
            tokio::pin!(stop);
            stop.as_mut().enable();
            if !self.is_alive() {
                return;
            }
            stop.await;
        }
    }

    /// The largest request frame the broker accepts.
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// The error callers get once the connection is dead.
    pub(crate) fn dead_error(&self) -> Error {
        self.shared.error()
    }

    /// Closes the connection at once: every waiter gets [`Error::Disconnected`] with `reason`.
    pub(crate) fn close(&self, reason: impl Into<String>) {
        self.shared.kill(reason.into());
    }

    fn protocol(&self, reason: &str) -> Error {
        Error::Protocol {
            addr: self.shared.addr.clone(),
            reason: reason.to_string(),
        }
    }

    /// The version to speak for `api`, from the broker's ApiVersions answer.
    fn version(&self, api: ApiKey) -> Result<u32> {
        if api == ApiKey::ApiVersions {
            return Ok(0);
        }
        api::negotiate(api, &self.versions).ok_or(Error::UnsupportedApi {
            api: api.as_str_name(),
        })
    }

    /// Encodes and queues a request; the returned receiver resolves with its response (or with
    /// `None` once written, when `expects_response` is false: a produce with `ACKS_NONE`).
    ///
    /// # Errors
    /// [`Error::Disconnected`] when the connection is dead, [`Error::TooLarge`] when the frame
    /// is above the broker's `max_frame_bytes`, [`Error::UnsupportedApi`].
    pub(crate) async fn start(
        &self,
        body: impl Into<request::Body>,
        expects_response: bool,
    ) -> Result<ReplyReceiver> {
        if !self.is_alive() {
            return Err(self.shared.error());
        }
        let body = body.into();
        let version = self.version(body.api_key())?;
        let correlation_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request =
            Request::new(correlation_id, version, body).with_client_id(self.client_id.as_str());
        let mut buf = BytesMut::new();
        encode_request(&request, &mut buf).map_err(|e| self.protocol(&e.to_string()))?;
        let len = buf.len() - strom_protocol::frame::LENGTH_PREFIX_LEN;
        if len > self.max_frame_bytes {
            return Err(Error::TooLarge {
                what: "request",
                size: len,
                limit: "the broker's max_frame_bytes",
                max: self.max_frame_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        let out = Outgoing {
            frame: buf.freeze(),
            correlation_id,
            expects_response,
            reply,
        };
        self.tx.send(out).await.map_err(|_| self.shared.error())?;
        Ok(rx)
    }

    /// Sends a request and waits for its response body, at most `request_timeout`.
    pub(crate) async fn request(&self, body: impl Into<request::Body>) -> Result<response::Body> {
        self.request_with_timeout(body, self.request_timeout).await
    }

    /// Sends a request and waits for its response body, at most `timeout`; a timeout closes the
    /// connection (its FIFO would otherwise hold a response nobody waits for, behind which the
    /// next ones queue).
    ///
    /// # Errors
    /// As [`Connection::start`]; [`Error::Timeout`]; [`Error::Broker`] for a request-level
    /// error code; [`Error::Protocol`] for a response of the wrong API.
    pub(crate) async fn request_with_timeout(
        &self,
        body: impl Into<request::Body>,
        timeout: Duration,
    ) -> Result<response::Body> {
        let body = body.into();
        let api = body.api_key();
        let rx = self.start(body, true).await?;
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(r) => r.unwrap_or_else(|_| Err(self.shared.error()))?,
            Err(_) => {
                self.close(format!("no response within {timeout:?}"));
                return Err(Error::Timeout(timeout));
            }
        };
        let response =
            reply.ok_or_else(|| self.protocol("no response to a request that needs one"))?;
        self.body_of(response, api)
    }

    /// The body of `response`, checked to answer `api`.
    pub(crate) fn body_of(&self, response: Response, api: ApiKey) -> Result<response::Body> {
        let (header, body) = response
            .into_parts()
            .map_err(|e| self.protocol(&e.to_string()))?;
        match body {
            Err(code) => Err(Error::Broker {
                code,
                message: header.error_message,
            }),
            Ok(body) if body.api_key() == api => Ok(body),
            Ok(body) => Err(self.protocol(&format!(
                "expected a {} response, got {}",
                api.as_str_name(),
                body.api_key().as_str_name()
            ))),
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing>,
    waiters: mpsc::UnboundedSender<Waiter>,
    shared: Arc<Shared>,
) {
    let mut queued: Vec<Outgoing> = Vec::with_capacity(MAX_IOV);
    let mut written: Vec<oneshot::Sender<Reply>> = Vec::new();
    loop {
        let stop = shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if !shared.alive.load(Ordering::Acquire) {
            break;
        }
        let n = tokio::select! {
            n = rx.recv_many(&mut queued, MAX_IOV) => n,
            _ = &mut stop => break,
        };
        if n == 0 {
            // Every handle is gone: close our side gracefully.
            let _ = wr.shutdown().await;
            return;
        }
        let mut frames: Vec<Bytes> = Vec::with_capacity(queued.len());
        for out in queued.drain(..) {
            frames.push(out.frame);
            if out.expects_response {
                // Registered before the bytes leave, so the reader always finds the waiter.
                let waiter = Waiter {
                    correlation_id: out.correlation_id,
                    reply: out.reply,
                };
                if let Err(mpsc::error::SendError(w)) = waiters.send(waiter) {
                    let _ = w.reply.send(Err(shared.error()));
                }
            } else {
                written.push(out.reply);
            }
        }
        let result = tokio::select! {
            r = write_all(&mut wr, &mut frames) => r,
            _ = &mut stop => break,
        };
        if let Err(e) = result {
            shared.kill(format!("write failed: {e}"));
            break;
        }
        for reply in written.drain(..) {
            let _ = reply.send(Ok(None));
        }
    }
    // Dead: fail whatever is still queued.
    rx.close();
    let err = shared.error();
    for reply in written.drain(..) {
        let _ = reply.send(Err(err.clone()));
    }
    while let Ok(out) = rx.try_recv() {
        let _ = out.reply.send(Err(err.clone()));
    }
}

/// Writes every frame with vectored writes, however the kernel splits them.
async fn write_all(wr: &mut OwnedWriteHalf, frames: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0;
    while first < frames.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = frames[first..]
                .iter()
                .take(MAX_IOV)
                .map(|f| IoSlice::new(f))
                .collect();
            wr.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && first < frames.len() {
            let len = frames[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                frames[first].advance(n);
                n = 0;
            }
        }
        while first < frames.len() && frames[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

async fn read_loop(
    mut rd: OwnedReadHalf,
    mut waiters: mpsc::UnboundedReceiver<Waiter>,
    max_response_bytes: usize,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let reason = 'conn: loop {
        loop {
            let frame = match decode_frame(&mut buf, max_response_bytes) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad response frame: {e}"),
            };
            let response = match decode_response(frame) {
                Ok(r) => r,
                Err(e) => break 'conn format!("malformed response: {e}"),
            };
            let id = response.header.as_ref().map_or(0, |h| h.correlation_id);
            let Ok(waiter) = waiters.try_recv() else {
                break 'conn format!("unsolicited response with correlation id {id}");
            };
            if waiter.correlation_id != id {
                let reason = format!(
                    "response correlation id {id} does not match the oldest request's {}",
                    waiter.correlation_id
                );
                let _ = waiter.reply.send(Err(Error::Protocol {
                    addr: shared.addr.clone(),
                    reason: reason.clone(),
                }));
                break 'conn reason;
            }
            let _ = waiter.reply.send(Ok(Some(response)));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let stop = shared.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if !shared.alive.load(Ordering::Acquire) {
            break 'conn "closed".to_string();
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => break 'conn "closed by the broker".to_string(),
                Ok(0) => break 'conn format!("closed by the broker inside a frame ({} bytes buffered)", buf.len()),
                Ok(_) => {}
                Err(e) => break 'conn format!("read failed: {e}"),
            },
            _ = &mut stop => break 'conn "closed".to_string(),
        }
    };
    tracing::debug!(addr = %shared.addr, %reason, "connection closed");
    shared.kill(reason);
    waiters.close();
    let err = shared.error();
    while let Ok(w) = waiters.try_recv() {
        let _ = w.reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_protocol::api::api_versions_response;
    use strom_protocol::messages::{MetadataRequest, MetadataResponse};
    use strom_protocol::{decode_request, encode_response};
    use tokio::net::TcpListener;

    /// A fake broker: answers ApiVersions, then `handle` for every other request, in order.
    async fn fake_broker(
        handle: impl Fn(Request) -> Option<Response> + Send + 'static,
    ) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::new();
            loop {
                while let Some(frame) = decode_frame(&mut buf, 1 << 20).unwrap() {
                    let req = decode_request(frame).unwrap();
                    let id = req.header.as_ref().unwrap().correlation_id;
                    let resp = match req.body {
                        Some(request::Body::ApiVersions(_)) => {
                            let mut v = api_versions_response(0);
                            v.max_frame_bytes = 4096;
                            Some(Response::new(id, v))
                        }
                        _ => handle(req),
                    };
                    if let Some(resp) = resp {
                        let mut out = BytesMut::new();
                        encode_response(&resp, &mut out).unwrap();
                        s.write_all(&out).await.unwrap();
                    }
                }
                if s.read_buf(&mut buf).await.unwrap() == 0 {
                    return;
                }
            }
        });
        addr
    }

    fn config(addr: std::net::SocketAddr) -> ClientConfig {
        ClientConfig::new(addr.to_string())
    }

    #[tokio::test]
    async fn pipelined_requests_match_in_order() {
        let addr = fake_broker(|req| {
            let id = req.header.unwrap().correlation_id;
            Some(Response::new(
                id,
                MetadataResponse {
                    cluster_id: Some(format!("c{id}")),
                    ..Default::default()
                },
            ))
        })
        .await;
        let conn = Connection::connect_any(&config(addr)).await.unwrap();
        assert_eq!(conn.max_frame_bytes(), 4096);
        let mut rxs = Vec::new();
        for _ in 0..20 {
            rxs.push(conn.start(MetadataRequest::default(), true).await.unwrap());
        }
        let mut last = 0;
        for rx in rxs {
            let resp = rx.await.unwrap().unwrap().unwrap();
            let id = resp.header.as_ref().unwrap().correlation_id;
            assert!(id > last);
            last = id;
            let body = conn.body_of(resp, ApiKey::Metadata).unwrap();
            let response::Body::Metadata(m) = body else {
                panic!()
            };
            assert_eq!(m.cluster_id, Some(format!("c{id}")));
        }
    }

    #[tokio::test]
    async fn mismatched_correlation_id_kills_the_connection() {
        let addr = fake_broker(|req| {
            let id = req.header.unwrap().correlation_id;
            Some(Response::new(id + 100, MetadataResponse::default()))
        })
        .await;
        let conn = Connection::connect_any(&config(addr)).await.unwrap();
        let e = conn.request(MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!conn.is_alive());
        let e = conn.request(MetadataRequest::default()).await.unwrap_err();
        assert!(e.is_retriable(), "{e}");
    }

    #[tokio::test]
    async fn oversized_requests_are_refused_locally() {
        let addr = fake_broker(|_| None).await;
        let conn = Connection::connect_any(&config(addr)).await.unwrap();
        let big = MetadataRequest {
            topics: vec!["x".repeat(5000)],
            ..Default::default()
        };
        assert!(matches!(
            conn.start(big, true).await,
            Err(Error::TooLarge { .. })
        ));
        assert!(conn.is_alive());
    }

    #[tokio::test]
    async fn request_timeout_closes_the_connection() {
        let addr = fake_broker(|_| None).await;
        let conn = Connection::connect_any(&config(addr)).await.unwrap();
        let e = conn
            .request_with_timeout(MetadataRequest::default(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)));
        assert!(!conn.is_alive());
    }

    #[tokio::test]
    async fn responses_over_the_limit_close_the_connection() {
        let addr = fake_broker(|req| {
            let id = req.header.unwrap().correlation_id;
            Some(Response::new(
                id,
                MetadataResponse {
                    cluster_id: Some("y".repeat(4000)),
                    ..Default::default()
                },
            ))
        })
        .await;
        let conn = Connection::connect_any(&ClientConfig {
            max_response_bytes: 1024,
            ..config(addr)
        })
        .await
        .unwrap();
        let e = conn.request(MetadataRequest::default()).await.unwrap_err();
        assert!(matches!(e, Error::Disconnected { .. }), "{e}");
    }
}
