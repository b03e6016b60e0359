//! One client connection, whatever its protocol: read frames, run each request as its own task, write the responses in
//! request order.
//!
//! The reader half cuts frames out of a reusable buffer (the length prefix is checked against
//! `max_frame_bytes` before anything is allocated) and takes each payload as a `Bytes` without
//! copying. Before a request is started it takes its size from the connection's in-flight budget
//! (`max_inflight_bytes`); the budget comes back when the response is written, so a client that
//! does not read its responses stops being read. Responses leave through one writer task, in
//! request order, several ready ones per vectored write; fetched record batches are written
//! straight from the segment maps they were read from.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use strom_protocol::frame::{decode_frame, peek_frame_len};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Frontend, Net, Started};

/// A request's share of the connection's and the broker's in-flight budgets.
struct Budget {
    _connection: OwnedSemaphorePermit,
    _broker: OwnedSemaphorePermit,
}

/// Takes `cost` from the connection's budget, then from the broker-wide one.
async fn acquire(
    connection: &Arc<Semaphore>,
    broker: &Arc<Semaphore>,
    cost: u32,
) -> Option<Budget> {
    let c = connection.clone().acquire_many_owned(cost).await.ok()?;
    let b = broker.clone().acquire_many_owned(cost).await.ok()?;
    Some(Budget {
        _connection: c,
        _broker: b,
    })
}

/// A response on its way out, holding the request's share of the in-flight budgets.
struct Outgoing<R> {
    response: Reply<R>,
    /// When the request was read whole: its latency runs until the response is ready to write.
    started: Instant,
    _budget: Budget,
}

enum Reply<R> {
    Ready(Option<R>),
    Running(JoinHandle<Option<R>>),
}

/// Read buffer room of a connection with nothing buffered.
const READ_CHUNK_IDLE: usize = 4 * 1024;
/// Read buffer room while a connection is streaming requests.
const READ_CHUNK_BUSY: usize = 64 * 1024;

/// Most slices handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// Serves one connection until the client closes it, breaks a limit, or the broker shuts down.
pub(crate) async fn serve<F: Frontend>(
    stream: TcpStream,
    frontend: Arc<F>,
    net: Arc<Net>,
    protocol: &'static str,
) {
    let peer_addr = stream
        .peer_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    let peer = peer_addr.to_string();
    let _ = stream.set_nodelay(true);
    let limits = net.limits;
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Outgoing<F::Response>>(limits.max_pipelined_requests);
    let writer = tokio::spawn(write_responses(
        wr,
        rx,
        frontend.clone(),
        limits.write_timeout,
    ));
    let budget = Arc::new(Semaphore::new(limits.max_inflight_bytes));
    let max_frame = limits.max_frame_bytes as usize;
    let read_timeout = limits.request_read_timeout;
    let idle_timeout = limits.idle_timeout;
    // One timer for both deadlines: a request must arrive whole within `read_timeout` of its
    // first byte (or of the moment the broker had budget to read it), and a connection that
    // sends nothing and awaits nothing for `idle_timeout` is closed. Reads only note the time;
    // the timer is checked and re-armed when it fires, or moved earlier when a frame starts.
    let mut last_read = Instant::now();
    let mut frame_since: Option<Instant> = None;
    let mut armed = last_read + idle_timeout;
    let timer = tokio::time::sleep_until(armed);
    tokio::pin!(timer);
    // Small until the client sends something: thousands of idle connections must stay cheap.
    let mut buf = BytesMut::with_capacity(READ_CHUNK_IDLE);
    let conn = Arc::new(frontend.connect(peer_addr));
    // Budget held for the frame at the head of `buf`: taken from its length prefix, before its
    // body is read or room is reserved for it, so memory stays within the in-flight bounds.
    let mut held: Option<Budget> = None;
    let reason: String = 'conn: loop {
        loop {
            if held.is_none() {
                let Some(len) = peek_frame_len(&buf) else {
                    break;
                };
                if len as usize > max_frame {
                    break 'conn format!(
                        "bad frame: length {len} is over max_frame_bytes = {max_frame}"
                    );
                }
                let cost = len.max(1);
                let acquired = tokio::select! {
                    p = acquire(&budget, &net.inflight, cost) => p,
                    _ = net.shutdown.cancelled() => break 'conn "broker shutting down".to_string(),
                };
                match acquired {
                    Some(b) => held = Some(b),
                    None => break 'conn "in-flight budget closed".to_string(),
                }
                // The wait was the broker's, not the client's: the frame's clock starts now.
                frame_since = None;
            }
            let frame = match decode_frame(&mut buf, max_frame) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn format!("bad frame: {e}"),
            };
            let Some(permit) = held.take() else { break };
            frame_since = None;
            let started = Instant::now();
            let response = match frontend.start(&conn, frame).await {
                Ok(Started::Ready(r)) => Reply::Ready(r),
                Ok(Started::Pending(f)) => Reply::Running(tokio::spawn(f)),
                Err(reason) => break 'conn reason,
            };
            let out = Outgoing {
                response,
                started,
                _budget: permit,
            };
            if tx.send(out).await.is_err() {
                break 'conn "client stopped reading".to_string();
            }
        }
        // With a frame's header read, `decode_frame` already made room for exactly that frame;
        // reserving more here could double the buffer past the frame limit.
        if held.is_none() && buf.capacity() - buf.len() < READ_CHUNK_IDLE {
            // A busy connection reads in bigger chunks.
            buf.reserve(if buf.is_empty() {
                READ_CHUNK_IDLE
            } else {
                READ_CHUNK_BUSY
            });
        }
        if buf.is_empty() {
            frame_since = None;
        } else if frame_since.is_none() {
            let now = Instant::now();
            frame_since = Some(now);
            if armed > now + read_timeout {
                armed = now + read_timeout;
                timer.as_mut().reset(armed);
            }
        }
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => break 'conn "closed by client".to_string(),
                Ok(0) => break 'conn format!("closed by client inside a frame ({} bytes buffered)", buf.len()),
                Ok(_) => last_read = Instant::now(),
                Err(e) => break 'conn format!("read error: {e}"),
            },
            () = &mut timer => {
                let now = Instant::now();
                armed = match frame_since {
                    Some(since) if now >= since + read_timeout => break 'conn format!(
                        "a request did not arrive whole within request_read_timeout_ms = {} ({} bytes of it buffered)",
                        read_timeout.as_millis(),
                        buf.len()
                    ),
                    Some(since) => since + read_timeout,
                    None if now < last_read + idle_timeout => last_read + idle_timeout,
                    // Requests still being answered (a long poll, say): not idle yet.
                    None if budget.available_permits() < limits.max_inflight_bytes => {
                        now + idle_timeout
                    }
                    None => break 'conn format!(
                        "idle for connections_max_idle_ms = {}",
                        idle_timeout.as_millis()
                    ),
                };
                timer.as_mut().reset(armed);
            }
            _ = net.shutdown.cancelled() => break 'conn "broker shutting down".to_string(),
        }
    };
    // Let the responses already started go out, then close.
    drop(tx);
    let _ = writer.await;
    tracing::info!(protocol, %peer, %reason, "connection closed");
}

/// Writes responses in request order, coalescing the ones that are ready into one `writev`.
async fn write_responses<F: Frontend>(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outgoing<F::Response>>,
    frontend: Arc<F>,
    write_timeout: Duration,
) {
    let mut scratch = BytesMut::new();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut held: Vec<Outgoing<F::Response>> = Vec::new();
    while let Some(first) = rx.recv().await {
        held.push(first);
        // Gather more responses that are already finished, keeping order.
        while held.len() < 256 {
            match rx.try_recv() {
                Ok(next) => {
                    let ready = match &next.response {
                        Reply::Ready(_) => true,
                        Reply::Running(h) => h.is_finished(),
                    };
                    held.push(next);
                    if !ready {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        for out in held.iter_mut() {
            let response = match &mut out.response {
                Reply::Ready(r) => r.take(),
                Reply::Running(h) => match h.await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "request handler failed");
                        return;
                    }
                },
            };
            let Some(response) = response else { continue };
            frontend.observe(&response, out.started.elapsed());
            if let Err(e) = frontend.encode(&response, &mut scratch, &mut chunks) {
                tracing::error!(error = %e, "could not encode a response");
                return;
            }
        }
        match tokio::time::timeout(write_timeout, write_all(&mut wr, &mut chunks)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                return;
            }
            Err(_) => {
                // A client that does not read its responses holds their budget: let it go.
                tracing::warn!(
                    timeout_ms = write_timeout.as_millis() as u64,
                    "client did not read its responses in time; closing the connection"
                );
                return;
            }
        }
        chunks.clear();
        // Dropping the held responses returns their in-flight budget.
        held.clear();
    }
    let _ = wr.shutdown().await;
}

/// Writes every chunk with vectored writes, however the kernel splits them.
async fn write_all(wr: &mut OwnedWriteHalf, chunks: &mut [Bytes]) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let n = {
            let slices: Vec<IoSlice<'_>> = chunks[first..]
                .iter()
                .take(MAX_IOV)
                .map(|c| IoSlice::new(c))
                .collect();
            wr.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n;
        while n > 0 && first < chunks.len() {
            let len = chunks[first].len();
            if n >= len {
                n -= len;
                first += 1;
            } else {
                chunks[first].advance(n);
                n = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}
