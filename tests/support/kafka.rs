//! A blocking Kafka-protocol client for the end-to-end tests of the broker's Kafka listener, and
//! the helpers its tests share. Requests are encoded and responses decoded with the
//! `kafka-protocol` crate (the copy the broker uses); the framing is written here, so tests can
//! also send frames no Kafka client would.
//!
//! A request frame: a 4-byte big-endian length, the request header (api key, version,
//! correlation id, client id; a tagged-field section in flexible versions) at
//! `ApiKey::request_header_version(v)`, then the body. A response frame: the length, the
//! response header (correlation id; tagged fields in flexible versions) at
//! `ApiKey::response_header_version(v)`, then the body.
//!
//! Included by the Kafka test files with `#[path = "support/kafka.rs"] mod kafka;` next to
//! `mod support;` (it uses the broker process and record helpers of `support`).

#![allow(dead_code)] // every test binary uses a different subset of these helpers

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::support::{Broker, IO_TIMEOUT, MAX_RESPONSE_FRAME, Rec, decode_records};

/// The client id every request of [`KafkaClient`] carries.
pub const CLIENT_ID: &str = "strom-kafka-test";

/// Kafka error codes the tests name (Kafka's `Errors` numbering).
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

/// `name` as the crate's topic name type.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

pub fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// The api key of request type `R`.
pub fn key_of<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("a known api key")
}

/// The bytes of a request frame after the length prefix: the header at the version `key` and
/// `version` call for, then `body` encoded at `version`.
pub fn request_payload<B: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: Option<&str>,
    body: &B,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(client_id.map(s));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, key.request_header_version(version))
        .unwrap_or_else(|e| panic!("encode a {key:?} v{version} request header: {e}"));
    body.encode(&mut out, version)
        .unwrap_or_else(|e| panic!("encode a {key:?} v{version} request body: {e}"));
    out.to_vec()
}

/// `payload` behind its 4-byte big-endian length.
pub fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len())
        .expect("a payload under 4 GiB")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

/// A classic (non-flexible, version 1) request header written by hand: api key, version,
/// correlation id, then the client id as an i16 length and its bytes (`None`: length -1).
pub fn raw_header(
    api_key: i16,
    version: i16,
    correlation_id: i32,
    client_id: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&api_key.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&correlation_id.to_be_bytes());
    match client_id {
        Some(id) => {
            out.extend_from_slice(&i16::try_from(id.len()).expect("short id").to_be_bytes());
            out.extend_from_slice(id);
        }
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
    out
}

/// A blocking Kafka client on one TCP connection.
#[derive(Debug)]
pub struct KafkaClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: i32,
}

impl KafkaClient {
    /// Connects with TCP_NODELAY and [`IO_TIMEOUT`] read and write timeouts.
    pub fn connect(addr: SocketAddr) -> KafkaClient {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to the Kafka listener at {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("write timeout");
        KafkaClient {
            stream,
            buf: BytesMut::with_capacity(64 << 10),
            next_id: 1,
        }
    }

    /// A new connection to `broker`'s Kafka listener.
    pub fn to(broker: &Broker) -> KafkaClient {
        KafkaClient::connect(
            broker
                .kafka_addr
                .expect("the broker's Kafka listener is on"),
        )
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// A fresh correlation id (1, 2, 3, ...).
    pub fn next_correlation_id(&mut self) -> i32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `body` at `version` with a fresh correlation id, which it returns.
    pub fn send<R: Request>(&mut self, version: i16, body: &R) -> i32 {
        let id = self.next_correlation_id();
        let payload = request_payload(key_of::<R>(), version, id, Some(CLIENT_ID), body);
        self.send_raw(&framed(&payload));
        id
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).expect("write to the broker");
    }

    /// Writes raw bytes; `Err` when the connection is broken.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Closes the write half (errors ignored: the broker may have reset the connection).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The payload of the next response frame. `Err` on EOF, a reset, a timeout, or a length
    /// prefix over [`MAX_RESPONSE_FRAME`].
    pub fn try_recv_frame(&mut self) -> io::Result<Bytes> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_RESPONSE_FRAME {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("a response frame of {len} bytes"),
                    ));
                }
                if self.buf.len() >= 4 + len {
                    self.buf.advance(4);
                    return Ok(self.buf.split_to(len).freeze());
                }
            }
            let mut chunk = [0u8; 64 << 10];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the broker closed the connection ({} bytes of an unfinished frame)",
                        self.buf.len()
                    ),
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn recv_frame(&mut self) -> Bytes {
        self.try_recv_frame()
            .unwrap_or_else(|e| panic!("receive a response frame: {e}"))
    }

    /// Reads the next response as the answer to request type `R` at `version`: checks its
    /// correlation id is `correlation_id`, decodes the header and body at that version, and
    /// checks nothing is left over.
    pub fn recv<R: Request>(&mut self, version: i16, correlation_id: i32) -> R::Response {
        let key = key_of::<R>();
        let mut frame = self.recv_frame();
        let whole = frame.clone();
        let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
            .unwrap_or_else(|e| panic!("{key:?} v{version}: response header: {e}: {whole:02x?}"));
        assert_eq!(
            header.correlation_id, correlation_id,
            "{key:?} v{version}: the answer carries the request's correlation id"
        );
        let body = R::Response::decode(&mut frame, version).unwrap_or_else(|e| {
            panic!("{key:?} v{version}: response body does not decode: {e}: {whole:.400?}")
        });
        assert!(
            frame.is_empty(),
            "{key:?} v{version}: {} bytes after the response body: {whole:.400?}",
            frame.len()
        );
        body
    }

    /// Sends `body` at `version` and reads its answer (see [`KafkaClient::recv`]).
    pub fn call<R: Request>(&mut self, version: i16, body: &R) -> R::Response {
        let id = self.send(version, body);
        self.recv::<R>(version, id)
    }

    /// Asserts that nothing arrives within `wait` (the connection stays open, with no answer
    /// yet), then restores the normal read timeout.
    pub fn expect_nothing_within(&mut self, wait: Duration) {
        assert!(self.buf.is_empty(), "unread response bytes");
        self.stream
            .set_read_timeout(Some(wait))
            .expect("set timeout");
        let mut byte = [0u8; 1];
        let r = self.stream.read(&mut byte);
        self.stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set timeout");
        match r {
            Err(e) if is_timeout(&e) => {}
            Ok(0) => panic!("the broker closed the connection"),
            Ok(_) => panic!("an answer arrived within {wait:?}"),
            Err(e) => panic!("the connection failed: {e}"),
        }
    }

    /// Waits for the broker to close the connection without sending a byte, within `within`.
    /// Panics when bytes arrive or when the connection is still open after `within`.
    pub fn expect_closed_within(&mut self, within: Duration) {
        assert!(self.buf.is_empty(), "unread response bytes");
        self.stream
            .set_read_timeout(Some(within))
            .expect("set timeout");
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => panic!(
                    "the broker answered ({n} bytes: {:02x?}) instead of closing the connection",
                    &chunk[..n.min(64)]
                ),
                Err(e) if is_timeout(&e) => {
                    panic!("the broker did not close the connection within {within:?}")
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return, // reset: closed as well
            }
        }
    }

    /// [`KafkaClient::expect_closed_within`] with [`IO_TIMEOUT`].
    pub fn expect_closed_without_answer(&mut self) {
        self.expect_closed_within(IO_TIMEOUT);
    }

    // ---- a few requests most tests make ----

    pub fn api_versions(&mut self, version: i16) -> kafka_protocol::messages::ApiVersionsResponse {
        self.call(
            version,
            &ApiVersionsRequest::default()
                .with_client_software_name(s("strom-tests"))
                .with_client_software_version(s("0.1.0")),
        )
    }

    /// Creates `name` with `partitions` partitions (CreateTopics v7), asserting success.
    pub fn create_topic(&mut self, name: &str, partitions: i32) {
        let r = self.call(
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(partitions)
                        .with_replication_factor(1),
                ]),
        );
        assert_eq!(r.topics.len(), 1, "{r:?}");
        assert_eq!(r.topics[0].error_code, code::NONE, "create {name}: {r:?}");
    }

    /// Produces `records` to one partition at `version` with `acks` (not 0: that gets no
    /// answer); returns the partition's answer.
    pub fn produce(
        &mut self,
        version: i16,
        acks: i16,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) -> PartitionProduceResponse {
        assert_ne!(acks, 0, "acks=0 gets no answer: use send");
        let r = self.call(version, &produce_to(acks, topic, partition, records));
        assert_eq!(r.responses.len(), 1, "{r:?}");
        let t = &r.responses[0];
        assert_eq!(t.name.0.as_str(), topic);
        assert_eq!(t.partition_responses.len(), 1, "{r:?}");
        t.partition_responses[0].clone()
    }

    /// Produces with acks=1 (Produce v9) and asserts success; returns the base offset.
    pub fn produce_ok(&mut self, topic: &str, partition: i32, records: Bytes) -> i64 {
        let p = self.produce(9, 1, topic, partition, records);
        assert_eq!(
            p.error_code,
            code::NONE,
            "produce to {topic}/{partition}: {p:?}"
        );
        p.base_offset
    }

    /// One Fetch of one partition at `version`; returns the partition's answer.
    pub fn fetch(
        &mut self,
        version: i16,
        topic: &str,
        partition: i32,
        offset: i64,
        min_bytes: i32,
        max_wait_ms: i32,
    ) -> PartitionData {
        let id = self.send(
            version,
            &fetch_from(topic, partition, offset, min_bytes, max_wait_ms),
        );
        self.recv_fetch(version, id, topic)
    }

    /// The answer to a one-partition fetch sent with [`KafkaClient::send`].
    pub fn recv_fetch(&mut self, version: i16, id: i32, topic: &str) -> PartitionData {
        let r = self.recv::<FetchRequest>(version, id);
        assert_eq!(r.error_code, code::NONE, "{r:?}");
        assert_eq!(r.responses.len(), 1, "{r:?}");
        assert_eq!(r.responses[0].topic.0.as_str(), topic);
        assert_eq!(r.responses[0].partitions.len(), 1, "{r:?}");
        r.responses[0].partitions[0].clone()
    }

    /// Every record of a partition from offset 0 up to its high watermark (Fetch v12, as many
    /// fetches as it takes), asserting no errors and no gaps.
    pub fn fetch_all(&mut self, topic: &str, partition: i32) -> Vec<Rec> {
        let mut out: Vec<Rec> = Vec::new();
        loop {
            let next = out.len() as i64;
            let p = self.fetch(12, topic, partition, next, 0, 0);
            assert_eq!(
                p.error_code,
                code::NONE,
                "fetch {topic}/{partition} at {next}: {p:?}"
            );
            if next >= p.high_watermark {
                return out;
            }
            let records = p.records.unwrap_or_default();
            assert!(
                !records.is_empty(),
                "fetch at {next} below the high watermark returned nothing"
            );
            // A fetch returns whole batches: the first may start before `next`.
            for r in decode_records(&records) {
                if r.offset >= out.len() as i64 {
                    assert_eq!(r.offset, out.len() as i64, "offsets are contiguous");
                    out.push(r);
                }
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A Produce of `records` to one partition.
pub fn produce_to(acks: i16, topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

/// A Fetch of one partition from `offset`, 1 MiB at most.
pub fn fetch_from(
    topic: &str,
    partition: i32,
    offset: i64,
    min_bytes: i32,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(min_bytes)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

// ------------------------------------------------------------------------------------------
// The broker's memory
// ------------------------------------------------------------------------------------------

/// A process's resident set size in bytes, from /proc.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

/// Samples a process's RSS every 10 ms until dropped or [`RssWatch::peak`] is called.
#[derive(Debug)]
pub struct RssWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
    pub start: u64,
}

impl RssWatch {
    pub fn new(pid: u32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let start = rss(pid);
        let handle = std::thread::spawn(move || {
            let mut peak = start;
            loop {
                let stopping = s.load(Ordering::Relaxed);
                // The process may be gone (a crashed broker): its health check reports that.
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    break;
                };
                if status.contains("VmRSS:") {
                    peak = peak.max(rss(pid));
                }
                if stopping {
                    break; // after one last sample
                }
                std::thread::sleep(Duration::from_millis(10)); // a sampling period, not a wait
            }
            peak
        });
        RssWatch {
            stop,
            handle: Some(handle),
            start,
        }
    }

    /// The highest RSS sampled since [`RssWatch::new`].
    pub fn peak(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("the sampling thread")
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
