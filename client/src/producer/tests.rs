//! Producer tests against an in-process fake broker that implements the idempotence rules the
//! real broker follows (append when the sequence continues, answer a recent duplicate with its
//! first offset, `OUT_OF_ORDER_SEQUENCE` on a gap, `UNKNOWN_PRODUCER_ID` without state, fencing
//! by epoch) and that loses requests and responses on purpose, to check that retries neither
//! duplicate nor reorder records.
//!
//! Compiled only for tests: declared `#[cfg(test)] mod tests;` in the parent module.
#![cfg(test)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use strom_protocol::ErrorCode;
use strom_protocol::api::api_versions_response;
use strom_protocol::batch::{BatchIter, Records, validate_produced};
use strom_protocol::frame::decode_frame;
use strom_protocol::messages::*;
use strom_protocol::{decode_request, encode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::batches::decompress;
use crate::config::{Acks, CompressionType, ProducerConfig};
use crate::partitioner::{Rng, partition_for_key};
use crate::{Error, Producer};

const PARTITIONS: i32 = 3;

#[derive(Default)]
struct ProducerState {
    epoch: i16,
    next_seq: i32,
    /// (base sequence, record count, base offset) of the last 5 batches appended.
    recent: VecDeque<(i32, i32, i64)>,
}

#[derive(Default)]
struct Log {
    /// Values in offset order.
    values: Vec<Bytes>,
    producers: HashMap<i64, ProducerState>,
}

#[derive(Default)]
struct FakeBroker {
    logs: Mutex<BTreeMap<i32, Log>>,
    next_producer_id: AtomicU64,
    produce_requests: AtomicUsize,
    /// Every `chaos`-th produce request is mistreated (0: never).
    chaos: usize,
    /// Refuse (MESSAGE_TOO_LARGE) a batch holding a value that starts with "poison".
    poison: bool,
    /// Append, then answer UNKNOWN_SERVER_ERROR, at this produce request (1-based; 0: never).
    fail_at: usize,
    /// Forget every producer's state at this produce request (1-based; 0: never).
    forget_at: usize,
    /// Partitions of every topic (0: `PARTITIONS`).
    partitions: i32,
    /// The broker's max_frame_bytes (0: 8 MiB); a larger request closes the connection, as the
    /// real broker does, and is counted in `oversized`.
    max_frame: usize,
    oversized: AtomicUsize,
    /// Produce requests are held (not handled, not answered) while this is set.
    hold: std::sync::atomic::AtomicBool,
    released: tokio::sync::Notify,
    /// The port it listens on: Metadata names it as broker 0, every partition's leader.
    port: std::sync::atomic::AtomicU16,
    unknown_producer: AtomicUsize,
    lost_requests: AtomicUsize,
    lost_responses: AtomicUsize,
    duplicates: AtomicUsize,
    out_of_order: AtomicUsize,
    /// Every partition entry of every produce request handled, resends included.
    received: Mutex<Vec<Received>>,
}

/// One `PartitionProduceData` as the fake broker received it.
#[derive(Debug, Clone)]
struct Received {
    partition: i32,
    /// Each batch's values, in order.
    batches: Vec<Vec<Bytes>>,
    deliver_at_ms: Vec<i64>,
}

/// The values of each batch in `records`.
fn batch_values(records: &Bytes) -> Vec<Vec<Bytes>> {
    BatchIter::new(records)
        .map(|item| {
            let (range, _) = item.unwrap();
            let raw = records.slice(range);
            let h = validate_produced(&raw).unwrap();
            let plain = decompress(&raw, &h, 1 << 30).unwrap();
            Records::new(plain)
                .unwrap()
                .map(|r| r.unwrap().value.unwrap())
                .collect()
        })
        .collect()
}

impl FakeBroker {
    fn partitions(&self) -> i32 {
        if self.partitions > 0 {
            self.partitions
        } else {
            PARTITIONS
        }
    }

    fn max_frame(&self) -> usize {
        if self.max_frame > 0 {
            self.max_frame
        } else {
            8 << 20
        }
    }

    /// Answers the produce requests held so far, and every later one.
    fn release(&self) {
        self.hold.store(false, AtomicOrdering::Release);
        self.released.notify_waiters();
    }

    async fn wait_released(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.hold.load(AtomicOrdering::Acquire) {
                return;
            }
            released.await;
        }
    }

    fn append(&self, partition: i32, records: &Bytes) -> (ErrorCode, i64) {
        let mut logs = self.logs.lock().unwrap();
        let log = logs.entry(partition).or_default();
        let mut base = -1;
        for item in BatchIter::new(records) {
            let (range, _) = item.unwrap();
            let raw = records.slice(range);
            let h = validate_produced(&raw).unwrap();
            let plain = decompress(&raw, &h, 1 << 30).unwrap();
            let values: Vec<Bytes> = Records::new(plain)
                .unwrap()
                .map(|r| r.unwrap().value.unwrap())
                .collect();
            if self.poison && values.iter().any(|v| v.starts_with(b"poison")) {
                return (ErrorCode::MessageTooLarge, -1);
            }
            if h.producer_id >= 0 {
                let state = log.producers.entry(h.producer_id);
                let fresh = matches!(state, std::collections::hash_map::Entry::Vacant(_));
                let state = state.or_default();
                if fresh {
                    state.epoch = h.producer_epoch;
                    if h.base_sequence != 0 {
                        log.producers.remove(&h.producer_id);
                        self.unknown_producer.fetch_add(1, AtomicOrdering::Relaxed);
                        return (ErrorCode::UnknownProducerId, -1);
                    }
                } else if h.producer_epoch < state.epoch {
                    return (ErrorCode::ProducerFenced, -1);
                } else if h.producer_epoch > state.epoch {
                    if h.base_sequence != 0 {
                        return (ErrorCode::OutOfOrderSequence, -1);
                    }
                    *state = ProducerState {
                        epoch: h.producer_epoch,
                        ..Default::default()
                    };
                }
                if let Some(&(_, _, offset)) = state
                    .recent
                    .iter()
                    .find(|(s, n, _)| *s == h.base_sequence && *n == h.record_count)
                {
                    self.duplicates.fetch_add(1, AtomicOrdering::Relaxed);
                    return (ErrorCode::None, offset);
                }
                if h.base_sequence != state.next_seq {
                    self.out_of_order.fetch_add(1, AtomicOrdering::Relaxed);
                    return (ErrorCode::OutOfOrderSequence, -1);
                }
                let offset = log.values.len() as i64;
                state.next_seq =
                    crate::batches::increment_sequence(h.base_sequence, h.record_count);
                state
                    .recent
                    .push_back((h.base_sequence, h.record_count, offset));
                if state.recent.len() > 5 {
                    state.recent.pop_front();
                }
            }
            let offset = log.values.len() as i64;
            if base < 0 {
                base = offset;
            }
            log.values.extend(values);
        }
        (ErrorCode::None, base)
    }

    fn handle(&self, request: Request) -> Option<Response> {
        let id = request.header.as_ref().unwrap().correlation_id;
        let body: response::Body = match request.body.unwrap() {
            request::Body::ApiVersions(_) => {
                let mut v = api_versions_response(0);
                v.max_frame_bytes = self.max_frame() as u32;
                v.into()
            }
            request::Body::InitProducerId(r) => {
                let (producer_id, producer_epoch) = if r.producer_id >= 0 {
                    (r.producer_id, r.producer_epoch + 1)
                } else {
                    (
                        self.next_producer_id.fetch_add(1, AtomicOrdering::Relaxed) as i64 + 1,
                        0,
                    )
                };
                InitProducerIdResponse {
                    error_code: 0,
                    error_message: None,
                    producer_id,
                    producer_epoch,
                }
                .into()
            }
            request::Body::Metadata(m) => MetadataResponse {
                brokers: vec![strom_protocol::messages::BrokerMetadata {
                    node_id: 0,
                    host: "127.0.0.1".into(),
                    port: u32::from(self.port.load(AtomicOrdering::Acquire)),
                    rack: None,
                }],
                topics: m
                    .topics
                    .iter()
                    .map(|t| TopicMetadata {
                        name: t.clone(),
                        error_code: 0,
                        partitions: (0..self.partitions())
                            .map(|p| PartitionMetadata {
                                partition: p,
                                ..Default::default()
                            })
                            .collect(),
                        is_internal: false,
                    })
                    .collect(),
                cluster_id: None,
            }
            .into(),
            request::Body::Produce(p) => {
                let no_ack = p.acks() == strom_protocol::messages::Acks::None;
                let topics = p
                    .topics
                    .into_iter()
                    .map(|t| TopicProduceResponse {
                        name: t.name,
                        partitions: t
                            .partitions
                            .into_iter()
                            .map(|d| {
                                self.received.lock().unwrap().push(Received {
                                    partition: d.partition,
                                    batches: batch_values(&d.records),
                                    deliver_at_ms: d.deliver_at_ms.clone(),
                                });
                                let (code, base) = self.append(d.partition, &d.records);
                                PartitionProduceResponse {
                                    partition: d.partition,
                                    error_code: code.into(),
                                    error_message: None,
                                    base_offset: base,
                                    log_start_offset: 0,
                                }
                            })
                            .collect(),
                    })
                    .collect();
                if no_ack {
                    return None;
                }
                ProduceResponse { topics }.into()
            }
            other => panic!("unexpected request {other:?}"),
        };
        Some(Response::new(id, body))
    }

    async fn serve(self: Arc<Self>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        self.port.store(addr.port(), AtomicOrdering::Release);
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                tokio::spawn(self.clone().connection(s));
            }
        });
        addr
    }

    async fn connection(self: Arc<Self>, mut s: tokio::net::TcpStream) {
        let mut buf = BytesMut::new();
        loop {
            while let Some(frame) = decode_frame(&mut buf, 64 << 20).unwrap() {
                if frame.len() > self.max_frame() {
                    self.oversized.fetch_add(1, AtomicOrdering::Relaxed);
                    return;
                }
                let req = decode_request(frame).unwrap();
                let is_produce = matches!(req.body, Some(request::Body::Produce(_)));
                if is_produce {
                    self.wait_released().await;
                }
                if is_produce && self.fail_at > 0 {
                    let n = self.produce_requests.fetch_add(1, AtomicOrdering::Relaxed) + 1;
                    if n == self.fail_at {
                        let id = req.header.as_ref().unwrap().correlation_id;
                        let _ = self.handle(req);
                        let resp = Response::error(id, ErrorCode::UnknownServerError, None);
                        let mut out = BytesMut::new();
                        encode_response(&resp, &mut out).unwrap();
                        let _ = s.write_all(&out).await;
                        continue;
                    }
                }
                if is_produce && self.forget_at > 0 {
                    let n = self.produce_requests.fetch_add(1, AtomicOrdering::Relaxed) + 1;
                    if n == self.forget_at {
                        for log in self.logs.lock().unwrap().values_mut() {
                            log.producers.clear();
                        }
                    }
                }
                if is_produce && self.chaos > 0 {
                    let n = self.produce_requests.fetch_add(1, AtomicOrdering::Relaxed) + 1;
                    if n.is_multiple_of(self.chaos) {
                        // Lose the request: as if the broker died before reading it.
                        self.lost_requests.fetch_add(1, AtomicOrdering::Relaxed);
                        return;
                    }
                    if n % self.chaos == self.chaos / 2 {
                        // Append, then die before answering.
                        let _ = self.handle(req);
                        self.lost_responses.fetch_add(1, AtomicOrdering::Relaxed);
                        return;
                    }
                }
                if let Some(resp) = self.handle(req) {
                    let mut out = BytesMut::new();
                    encode_response(&resp, &mut out).unwrap();
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

fn config(addr: std::net::SocketAddr) -> ProducerConfig {
    let mut c = ProducerConfig::new(addr.to_string());
    c.batch_size = 300;
    c.linger = Duration::from_millis(1);
    c.retry_backoff = Duration::from_millis(5);
    c.retry_backoff_max = Duration::from_millis(20);
    c.client.reconnect_backoff = Duration::from_millis(5);
    c.client.reconnect_backoff_max = Duration::from_millis(20);
    c
}

/// Sends `n` records over `keys` keys and checks every partition log: each record exactly
/// once, each key's records in send order, each key in its murmur2 partition.
async fn send_and_check(broker: &Arc<FakeBroker>, config: ProducerConfig, n: usize, keys: usize) {
    let failed = send_and_check_with(broker, config, n, keys, |_| false).await;
    assert_eq!(failed, 0);
}

/// As [`send_and_check`], with the records for which `poison` holds sent as poison: they (and
/// the records batched with them) must fail, and every other record must still be written
/// exactly once, in order. Returns the number of failed records.
async fn send_and_check_with(
    broker: &Arc<FakeBroker>,
    config: ProducerConfig,
    n: usize,
    keys: usize,
    poison: impl Fn(usize) -> bool,
) -> usize {
    let producer = Producer::connect(config).await.unwrap();
    let mut deliveries = Vec::new();
    for i in 0..n {
        let key = format!("key-{}", i % keys);
        let prefix = if poison(i) { "poison" } else { "" };
        let value = format!("{prefix}{}:{}", i % keys, i / keys);
        deliveries.push(
            producer
                .send("t", Some(key.as_bytes()), Some(value.as_bytes()), &[])
                .await
                .unwrap(),
        );
    }
    // Per (key, seq): Some(true) must be in the log, Some(false) must not, None may be
    // (its outcome is unknown to the producer).
    let mut status: HashMap<(usize, usize), Option<bool>> = HashMap::new();
    let mut failed = 0;
    for (i, d) in deliveries.into_iter().enumerate() {
        let key = format!("key-{}", i % keys);
        let st = match d.await {
            Ok(meta) => {
                assert_eq!(
                    meta.partition,
                    partition_for_key(key.as_bytes(), PARTITIONS)
                );
                Some(true)
            }
            Err(Error::Broker {
                code: ErrorCode::MessageTooLarge,
                ..
            }) => {
                failed += 1;
                Some(false)
            }
            Err(Error::Broker {
                code: ErrorCode::UnknownServerError,
                ..
            }) => {
                failed += 1;
                None
            }
            Err(e) => panic!("record {i}: {e}"),
        };
        status.insert((i % keys, i / keys), st);
    }
    producer.close().await.unwrap();
    let logs = broker.logs.lock().unwrap();
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (partition, log) in logs.iter() {
        for v in &log.values {
            let s = std::str::from_utf8(v).unwrap();
            assert!(!s.starts_with("poison"));
            let (k, seq) = s.split_once(':').unwrap();
            let (k, seq): (usize, usize) = (k.parse().unwrap(), seq.parse().unwrap());
            assert_eq!(
                partition_for_key(format!("key-{k}").as_bytes(), PARTITIONS),
                *partition
            );
            if let Some(&prev) = last.get(&k) {
                assert!(
                    seq > prev,
                    "key {k}: {seq} after {prev}: duplicate or reordered"
                );
            }
            last.insert(k, seq);
            match status.remove(&(k, seq)) {
                Some(Some(true)) | Some(None) => {}
                Some(Some(false)) => panic!("key {k} seq {seq} failed but was written"),
                None => panic!("key {k} seq {seq} written twice"),
            }
        }
    }
    let missing: Vec<_> = status.iter().filter(|(_, st)| **st == Some(true)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not written: {missing:?}"
    );
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_keeps_key_order() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    send_and_check(&broker, config(addr), 3000, 40).await;
    assert_eq!(broker.duplicates.load(AtomicOrdering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_requests_and_responses_neither_duplicate_nor_reorder() {
    let broker = Arc::new(FakeBroker {
        chaos: 7,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    send_and_check(&broker, config(addr), 6000, 50).await;
    // The chaos did happen, and the retries relied on the broker's deduplication and
    // sequence checks.
    assert!(broker.lost_requests.load(AtomicOrdering::Relaxed) > 0);
    assert!(broker.lost_responses.load(AtomicOrdering::Relaxed) > 0);
    assert!(broker.duplicates.load(AtomicOrdering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_with_compression_and_one_request_in_flight() {
    for (codec, in_flight) in [
        (CompressionType::Lz4, 1),
        (CompressionType::ZSTD, 5),
        (CompressionType::GZIP, 1),
        (CompressionType::Snappy, 5),
    ] {
        let broker = Arc::new(FakeBroker {
            chaos: 5,
            ..Default::default()
        });
        let addr = broker.clone().serve().await;
        let mut c = config(addr);
        c.compression = codec;
        c.max_in_flight = in_flight;
        send_and_check(&broker, c, 2000, 30).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_none_gets_no_response_and_completes() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    let mut c = config(addr);
    c.acks = Acks::None;
    let producer = Producer::connect(c).await.unwrap();
    let mut ds = Vec::new();
    for i in 0..500 {
        let v = format!("{i}");
        ds.push(
            producer
                .send("t", None, Some(v.as_bytes()), &[])
                .await
                .unwrap(),
        );
    }
    for d in ds {
        assert_eq!(d.await.unwrap().offset, -1);
    }
    producer.close().await.unwrap();
    // Written is all the producer knows; the broker reads the last request a moment later.
    let total = || -> usize {
        broker
            .logs
            .lock()
            .unwrap()
            .values()
            .map(|l| l.values.len())
            .sum()
    };
    for _ in 0..200 {
        if total() == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(total(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_spread_in_whole_batches() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    let producer = Producer::connect(config(addr)).await.unwrap();
    let mut ds = Vec::new();
    for i in 0..3000 {
        let v = format!("value-{i:05}");
        ds.push(
            producer
                .send("t", None, Some(v.as_bytes()), &[])
                .await
                .unwrap(),
        );
    }
    let mut per_partition = [0usize; PARTITIONS as usize];
    for d in ds {
        per_partition[d.await.unwrap().partition as usize] += 1;
    }
    producer.flush().await.unwrap();
    assert!(
        per_partition.iter().all(|&n| n > 300),
        "sticky partitioning still spreads records: {per_partition:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_bounds_buffered_bytes() {
    // A broker that never answers: sends must stop once buffer_memory is used up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(FakeBroker::default());
    fake.port.store(addr.port(), AtomicOrdering::Release);
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(frame) = decode_frame(&mut buf, 64 << 20).unwrap() {
                        let req = decode_request(frame).unwrap();
                        if matches!(req.body, Some(request::Body::Produce(_))) {
                            continue; // never answered
                        }
                        let resp = fake.handle(req).unwrap();
                        let mut out = BytesMut::new();
                        encode_response(&resp, &mut out).unwrap();
                        s.write_all(&out).await.unwrap();
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    let mut c = config(addr);
    c.buffer_memory = 64 * 1024;
    c.max_record_size = 4096;
    c.batch_size = 1024;
    c.max_block = Duration::from_millis(300);
    let producer = Producer::connect(c).await.unwrap();
    let value = [0u8; 200];
    let mut accepted = 0;
    let mut rng = Rng::with_seed(3);
    let err = loop {
        let key = rng.next_u64().to_string();
        match producer
            .send("t", Some(key.as_bytes()), Some(&value), &[])
            .await
        {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 10_000, "buffer_memory did not stop the producer");
    };
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // 64 KiB of 1 KiB batches holding ~4 records each.
    assert!((200..=300).contains(&accepted), "{accepted}");
    producer
        .close_timeout(Duration::from_millis(100))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_fails_alone_and_later_batches_are_renumbered() {
    let broker = Arc::new(FakeBroker {
        poison: true,
        chaos: 11,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    let failed = send_and_check_with(&broker, config(addr), 4000, 20, |i| i % 997 == 500).await;
    assert!(failed >= 4, "{failed}");
    assert!(failed < 200, "only the poisoned batches fail: {failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_producer_id_restarts_sequences() {
    let broker = Arc::new(FakeBroker {
        forget_at: 20,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    send_and_check(&broker, config(addr), 3000, 30).await;
    assert!(broker.unknown_producer.load(AtomicOrdering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncertain_failure_bumps_the_epoch_and_goes_on() {
    let broker = Arc::new(FakeBroker {
        fail_at: 15,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    let failed = send_and_check_with(&broker, config(addr), 3000, 30, |_| false).await;
    assert!(failed > 0);
    // The producer asked for a new epoch: its batches after the failure carry epoch 1.
    let logs = broker.logs.lock().unwrap();
    assert!(
        logs.values()
            .any(|l| l.producers.values().any(|p| p.epoch == 1))
    );
}

/// The value of record `i`.
fn numbered(i: usize) -> String {
    format!("{i:08}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partitions_share_a_small_buffer() {
    // Each new batch used to take batch_size (256 KiB) from buffer_memory (1 MiB): 4 batches,
    // so 4 records, before send waited. Batches now take what they hold.
    let broker = Arc::new(FakeBroker {
        partitions: 1000,
        ..Default::default()
    });
    broker.hold.store(true, AtomicOrdering::Release);
    let addr = broker.clone().serve().await;
    let mut c = config(addr);
    c.batch_size = 256 << 10;
    c.buffer_memory = 1 << 20;
    c.max_block = Duration::from_millis(300);
    let producer = Producer::connect(c).await.unwrap();
    let mut ds = Vec::new();
    let err = loop {
        let i = ds.len();
        let value = numbered(i);
        match producer
            .send(
                "t",
                Some(format!("key-{i}").as_bytes()),
                Some(value.as_bytes()),
                &[],
            )
            .await
        {
            Ok(d) => ds.push(d),
            Err(e) => break e,
        }
        assert!(
            ds.len() < 100_000,
            "buffer_memory did not stop the producer"
        );
    };
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    // 1 MiB holds about 1,000 batches of 1 KiB (their first allocation).
    assert!(ds.len() >= 900, "only {} records fit", ds.len());
    let shared = &producer.inner.shared;
    assert_eq!(shared.memory_waiters.load(AtomicOrdering::Acquire), 0);
    broker.release();
    producer.flush().await.unwrap();
    let accepted = ds.len();
    for d in ds {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
    let written: usize = broker
        .logs
        .lock()
        .unwrap()
        .values()
        .map(|l| l.values.len())
        .sum();
    assert_eq!(written, accepted);
    assert_eq!(shared.memory.available_permits(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_send_wakes_when_memory_frees_even_for_a_large_record() {
    let broker = Arc::new(FakeBroker::default());
    broker.hold.store(true, AtomicOrdering::Release);
    let addr = broker.clone().serve().await;
    let mut c = config(addr);
    c.buffer_memory = 16 << 10;
    c.batch_size = 1024;
    c.max_record_size = 8 << 10;
    c.max_block = Duration::from_secs(60);
    let producer = Producer::connect(c).await.unwrap();
    let memory = producer.inner.shared.memory.clone();
    // Fill the buffer up to less than 4 KiB free (a send takes at most 1 KiB here, so none of
    // these waits); the broker holds every produce, so nothing comes back.
    let mut ds = Vec::new();
    let small = [b's'; 200];
    while memory.available_permits() > 4096 {
        let key = format!("key-{}", ds.len() % 30);
        ds.push(
            producer
                .send("t", Some(key.as_bytes()), Some(&small), &[])
                .await
                .unwrap(),
        );
    }
    // A 7 KB record needs more than is free: its send waits, holding nothing.
    let p = producer.clone();
    let big = tokio::spawn(async move {
        let value = [b'b'; 7000];
        p.send("t", Some(b"big"), Some(&value), &[]).await
    });
    let shared = &producer.inner.shared;
    for _ in 0..10_000 {
        if shared.memory_waiters.load(AtomicOrdering::Acquire) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(shared.memory_waiters.load(AtomicOrdering::Acquire), 1);
    assert!(!big.is_finished());
    assert!(memory.available_permits() < 7000);
    // Answers give the memory back; the waiting send gets it.
    broker.release();
    let d = big.await.unwrap().unwrap();
    assert_eq!(
        d.await.unwrap().partition,
        partition_for_key(b"big", PARTITIONS)
    );
    for d in ds {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
    assert_eq!(memory.available_permits(), 16 << 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_many_small_batches_stay_within_the_frame_limit() {
    // 1,000 partitions of one tiny batch each, all sent at once by flush: requests are packed
    // up to the broker's frame limit, and the framing of ~800 partitions (~7 KB) is more than
    // the slack once left for it; such a request was refused and its batches failed.
    let broker = Arc::new(FakeBroker {
        partitions: 1000,
        max_frame: 64 << 10,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    let mut c = config(addr);
    c.linger = Duration::from_secs(5);
    c.batch_size = 16384;
    let producer = Producer::connect(c).await.unwrap();
    let mut ds = Vec::new();
    for p in 0..1000 {
        let value = numbered(p as usize);
        let r = crate::ProducerRecord::new("t")
            .partition(p)
            .value(value.as_bytes());
        ds.push(producer.send_record(r).await.unwrap());
    }
    producer.flush().await.unwrap();
    for (p, d) in ds.into_iter().enumerate() {
        let meta = d.await.unwrap_or_else(|e| panic!("partition {p}: {e}"));
        assert_eq!(meta.partition as usize, p);
    }
    producer.close().await.unwrap();
    assert_eq!(broker.oversized.load(AtomicOrdering::Relaxed), 0);
    let logs = broker.logs.lock().unwrap();
    assert_eq!(logs.len(), 1000);
    assert!(logs.values().all(|l| l.values.len() == 1));
}

/// ms since the Unix epoch, now.
fn now_ms() -> i64 {
    super::now_ms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_times_split_batches_and_travel_per_batch() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    let mut c = config(addr);
    // Without delivery times, every record below would share one batch per partition.
    c.batch_size = 16384;
    c.linger = Duration::from_secs(5);
    let producer = Producer::connect(c).await.unwrap();
    let t1 = now_ms() + 3_600_000;
    let t2 = t1 + 3_600_000;
    // Partition 0: [0, 1, 2] at t1, [3, 4, 5] at t2, [6, 7] not delayed, [8, 9] at t1 again.
    let times = [
        Some(t1),
        Some(t1),
        Some(t1),
        Some(t2),
        Some(t2),
        Some(t2),
        None,
        None,
        Some(t1),
        Some(t1),
    ];
    let mut ds = Vec::new();
    for (i, at) in times.iter().enumerate() {
        let value = numbered(i);
        let mut r = crate::ProducerRecord::new("t")
            .partition(0)
            .value(value.as_bytes());
        r.deliver_at = *at;
        ds.push(producer.send_record(r).await.unwrap());
        // Partition 1, never delayed, shares requests with partition 0.
        let r = crate::ProducerRecord::new("t")
            .partition(1)
            .value(value.as_bytes());
        ds.push(producer.send_record(r).await.unwrap());
    }
    producer.flush().await.unwrap();
    for d in ds {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
    let received = broker.received.lock().unwrap().clone();
    let values = |r: &[usize]| -> Vec<Bytes> {
        r.iter()
            .map(|&i| Bytes::from(numbered(i).into_bytes()))
            .collect()
    };
    let p0: Vec<(Vec<Vec<Bytes>>, Vec<i64>)> = received
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| (r.batches.clone(), r.deliver_at_ms.clone()))
        .collect();
    assert_eq!(
        p0,
        vec![
            (vec![values(&[0, 1, 2])], vec![t1]),
            (vec![values(&[3, 4, 5])], vec![t2]),
            (vec![values(&[6, 7])], vec![]),
            (vec![values(&[8, 9])], vec![t1]),
        ],
        "one batch per delivery time, each with its own entry"
    );
    let p1: Vec<&Received> = received.iter().filter(|r| r.partition == 1).collect();
    assert_eq!(p1.len(), 1, "undelayed records keep batching: {p1:?}");
    assert_eq!(p1[0].batches, vec![values(&(0..10).collect::<Vec<_>>())]);
    assert!(p1[0].deliver_at_ms.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_without_delay_send_no_deliver_at_ms() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    send_and_check(&broker, config(addr), 500, 10).await;
    let received = broker.received.lock().unwrap();
    assert!(received.len() > 3);
    for r in received.iter() {
        assert!(r.deliver_at_ms.is_empty(), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_resend_the_same_delivery_times() {
    let broker = Arc::new(FakeBroker {
        chaos: 5,
        ..Default::default()
    });
    let addr = broker.clone().serve().await;
    let producer = Producer::connect(config(addr)).await.unwrap();
    let base = now_ms() + 60_000;
    // Runs of 7 records share a time; every third run is not delayed.
    let deliver_at = |i: usize| match (i / 7) % 3 {
        0 => None,
        n => Some(base + n as i64 * 1000 + (i / 21) as i64),
    };
    let mut ds = Vec::new();
    for i in 0..3000 {
        let key = format!("key-{}", i % 20);
        let value = numbered(i);
        let mut r = crate::ProducerRecord::new("t")
            .key(key.as_bytes())
            .value(value.as_bytes());
        r.deliver_at = deliver_at(i);
        ds.push(producer.send_record(r).await.unwrap());
    }
    for d in ds {
        d.await.unwrap();
    }
    producer.close().await.unwrap();
    assert!(broker.lost_responses.load(AtomicOrdering::Relaxed) > 0);
    assert!(broker.duplicates.load(AtomicOrdering::Relaxed) > 0);
    // Every attempt of every batch, resends included, carried its records' one time.
    let received = broker.received.lock().unwrap();
    let mut seen = 0;
    for r in received.iter() {
        assert!(r.deliver_at_ms.is_empty() || r.deliver_at_ms.len() == r.batches.len());
        for (b, batch) in r.batches.iter().enumerate() {
            let sent = r.deliver_at_ms.get(b).copied().unwrap_or(0);
            for v in batch {
                let i: usize = std::str::from_utf8(v).unwrap().parse().unwrap();
                assert_eq!(sent, deliver_at(i).unwrap_or(0), "record {i}: {r:?}");
                seen += 1;
            }
        }
    }
    assert!(seen > 3000, "resends were checked too: {seen}");
    // Each partition's log holds every record once, in order.
    let logs = broker.logs.lock().unwrap();
    assert_eq!(logs.values().map(|l| l.values.len()).sum::<usize>(), 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_time_more_than_90_days_ahead_is_refused_at_send() {
    let broker = Arc::new(FakeBroker::default());
    let addr = broker.clone().serve().await;
    let producer = Producer::connect(config(addr)).await.unwrap();
    let day = 86_400_000;
    let r = crate::ProducerRecord::new("t")
        .value(b"late")
        .deliver_at(now_ms() + 91 * day);
    let err = producer.send_record(r).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                name: "deliver_at",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_fatal());
    let r = crate::ProducerRecord::new("t")
        .value(b"later")
        .deliver_after(Duration::from_secs(89 * 86_400));
    producer.send_record(r).await.unwrap().await.unwrap();
    producer.close().await.unwrap();
    assert!(super::check_deliver_at(1_000 + 90 * day, 1_000).is_ok());
    assert!(super::check_deliver_at(1_001 + 90 * day, 1_000).is_err());
    assert!(super::check_deliver_at(i64::MAX, i64::MAX).is_ok());
    assert!(
        super::check_deliver_at(-5, 1_000).is_ok(),
        "past: not delayed"
    );
}

#[test]
fn deliver_at_ms_is_empty_unless_a_batch_is_delayed() {
    use super::sender::deliver_at_ms;
    assert!(deliver_at_ms(&[0]).is_empty());
    assert!(deliver_at_ms(&[0, 0, -7]).is_empty());
    assert_eq!(deliver_at_ms(&[5]), vec![5]);
    assert_eq!(deliver_at_ms(&[0, 5, -1]), vec![0, 5, 0]);
}
