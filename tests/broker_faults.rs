//! Disk faults under a running broker: an in-process broker whose partition logs write through
//! the storage I/O seam, and a test that fails writes, fsyncs and segment creations under it.
//! The affected produce gets `STORAGE_ERROR`, reads keep being served, nothing is acknowledged
//! that is not stored, and appends resume once the fault clears — with idempotent retries of
//! the failed requests answered as duplicates, not stored twice.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use strom_broker::{Broker as InProcess, BrokerConfig};
use strom_protocol::ErrorCode;
use strom_protocol::messages::*;
use strom_storage::io::{EIO, ENOSPC};
use strom_storage::{Fault, IoFaults, IoOp};

use support::*;

/// A broker running on its own runtime in this process, with `faults` under every log.
struct FaultyBroker {
    runtime: tokio::runtime::Runtime,
    broker: Option<InProcess>,
    addr: SocketAddr,
    faults: IoFaults,
    _dir: TestDir,
}

impl FaultyBroker {
    fn start() -> Self {
        let dir = TestDir::new();
        let faults = IoFaults::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let config = BrokerConfig {
            data_dir: dir.data(),
            listen: "127.0.0.1:0".into(),
            kafka_listen: "none".into(),
            http_listen: "none".into(),
            io_faults: Some(faults.clone()),
            ..BrokerConfig::default()
        };
        let broker = runtime
            .block_on(InProcess::start(config))
            .expect("start the broker");
        let addr = broker.local_addr();
        Self {
            runtime,
            broker: Some(broker),
            addr,
            faults,
            _dir: dir,
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for FaultyBroker {
    fn drop(&mut self) {
        self.faults.clear();
        if let Some(b) = self.broker.take() {
            self.runtime.block_on(b.shutdown());
        }
    }
}

fn records(tag: &str, n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let mut r = Rec::new(now_ms(), format!("key-{tag}-{i}"), format!("{tag}-{i}"));
            r.headers = vec![("h".into(), Some(tag.as_bytes().to_vec()))];
            r
        })
        .collect()
}

/// Asserts the partition holds exactly `expected` (offsets from 0, contents equal).
fn assert_holds(c: &mut Client, topic: &str, expected: &[Rec]) {
    let got = c.fetch_all(topic, 0);
    assert_eq!(got.len(), expected.len(), "records in {topic}");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.offset, i as i64);
        assert_eq!(
            (&g.key, &g.value, &g.headers),
            (&e.key, &e.value, &e.headers),
            "offset {i}"
        );
    }
}

#[test]
fn write_faults_fail_the_produce_keep_reads_and_clear() {
    let b = FaultyBroker::start();
    let mut c = b.client();
    let cases = [
        ("eio", IoOp::Write, Fault::Fail(EIO), Acks::Leader),
        ("short", IoOp::Write, Fault::Short, Acks::Leader),
        ("full", IoOp::Write, Fault::Fail(ENOSPC), Acks::Durable),
        ("fsync", IoOp::Sync, Fault::Fail(EIO), Acks::Durable),
    ];
    for (topic, op, fault, acks) in cases {
        c.create_topic_ok(topic, 1, &[]);
        let mut stored = records("before", 20);
        c.produce_ok(topic, 0, &[batch_of(&stored)]);

        b.faults.set(op, Some(fault));
        let failed = records("during", 5);
        let p = c.produce(topic, 0, &[batch_of(&failed)], acks);
        assert_eq!(p.error_code(), ErrorCode::StorageError, "{topic}: {p:?}");
        if op == IoOp::Sync {
            // The append whose fsync failed reached the page cache and is readable (as in
            // Kafka, an error does not say the records were not stored); recovery fsyncs it
            // before anything after it is acknowledged.
            stored.extend(failed.clone());
        }
        // Reads go on, from this connection and from a new one.
        assert_holds(&mut c, topic, &stored);
        assert_holds(&mut b.client(), topic, &stored);
        // While the fault lasts, later produces fail too.
        let p = c.produce(topic, 0, &[batch_of(&failed)], acks);
        assert_eq!(p.error_code(), ErrorCode::StorageError, "{topic}: {p:?}");

        b.faults.clear();
        let after = records("after", 7);
        let p = c.produce(topic, 0, &[batch_of(&after)], acks);
        assert_eq!(p.error_code(), ErrorCode::None, "{topic}: {p:?}");
        assert_eq!(p.base_offset, stored.len() as i64, "{topic}");
        stored.extend(after);
        assert_holds(&mut c, topic, &stored);
    }
    assert!(b.faults.injected() >= 8);
}

#[test]
fn a_full_disk_at_a_segment_roll_fails_the_produce_until_space_returns() {
    let b = FaultyBroker::start();
    let mut c = b.client();
    c.create_topic_ok("roll", 1, &[("segment.bytes", "4096")]);
    let big = |tag: &str| -> Vec<Rec> {
        (0..3)
            .map(|i| Rec::new(now_ms(), "k", format!("{tag}-{i}-{}", "x".repeat(1000))))
            .collect()
    };
    let mut stored = big("a");
    c.produce_ok("roll", 0, &[batch_of(&stored)]);
    b.faults.set(IoOp::Create, Some(Fault::Fail(ENOSPC)));
    let p = c.produce("roll", 0, &[batch_of(&big("b"))], Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::StorageError, "{p:?}");
    assert_holds(&mut c, "roll", &stored);
    b.faults.clear();
    let next = big("c");
    assert_eq!(c.produce_ok("roll", 0, &[batch_of(&next)]), 3);
    stored.extend(next);
    assert_holds(&mut c, "roll", &stored);
}

fn idempotent_batch(id: i64, epoch: i16, seq: i32, tag: &str) -> Bytes {
    producer_batch(id, epoch, seq, 4, tag)
}

#[test]
fn an_idempotent_retry_after_a_failed_fsync_is_stored_once() {
    let b = FaultyBroker::start();
    let mut c = b.client();
    c.create_topic_ok("idem", 1, &[]);
    let r = init_producer_id_body(c.call(InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 0,
        producer_id: -1,
        producer_epoch: -1,
    }));
    assert_eq!(r.error_code(), ErrorCode::None);
    let (id, epoch) = (r.producer_id, r.producer_epoch as i16);

    let first = c.produce(
        "idem",
        0,
        &[idempotent_batch(id, epoch, 0, "a")],
        Acks::Durable,
    );
    assert_eq!(
        (first.error_code(), first.base_offset),
        (ErrorCode::None, 0)
    );

    // The fsync of the second batch fails: the producer is told so and retries it.
    b.faults.set(IoOp::Sync, Some(Fault::Fail(EIO)));
    let second = idempotent_batch(id, epoch, 4, "b");
    let p = c.produce("idem", 0, std::slice::from_ref(&second), Acks::Durable);
    assert_eq!(p.error_code(), ErrorCode::StorageError, "{p:?}");
    b.faults.clear();
    let retry = c.produce("idem", 0, std::slice::from_ref(&second), Acks::Durable);
    assert_eq!(
        (retry.error_code(), retry.base_offset),
        (ErrorCode::None, 4),
        "the retry is the batch recovery kept: {retry:?}"
    );
    // The next batch follows it; nothing is stored twice.
    let third = c.produce(
        "idem",
        0,
        &[idempotent_batch(id, epoch, 8, "c")],
        Acks::Durable,
    );
    assert_eq!(
        (third.error_code(), third.base_offset),
        (ErrorCode::None, 8)
    );
    let values: Vec<String> = c
        .fetch_all("idem", 0)
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
        .collect();
    let expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|t| (0..4).map(move |i| format!("{t}-{i}")))
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn a_durable_retry_is_not_acknowledged_before_the_original_is_durable() {
    // With group commit the writer appends while an fsync runs, so an idempotent producer's
    // retry can arrive while the fsync covering the original is still running. It is a
    // duplicate, but its answer says "durable": it must wait for that fsync too.
    let b = FaultyBroker::start();
    let mut c = b.client();
    c.create_topic_ok("slow", 1, &[]);
    let r = init_producer_id_body(c.call(InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 0,
        producer_id: -1,
        producer_epoch: -1,
    }));
    let (id, epoch) = (r.producer_id, r.producer_epoch as i16);
    let batch = idempotent_batch(id, epoch, 0, "a");
    b.faults.set(IoOp::Sync, Some(Fault::Slow(3000)));
    let mut original = b.client();
    let first = original.send_produce(Acks::Durable, &[("slow", 0, batch.clone())]);
    // Once the original is appended (visible before its fsync), its fsync is sleeping.
    while c.offset_of("slow", 0, OffsetSpec::Latest, 0) < 4 {}
    let mut retry = b.client();
    let started = std::time::Instant::now();
    let second = retry.send_produce(Acks::Durable, &[("slow", 0, batch)]);
    let response = retry.recv();
    let waited = started.elapsed();
    assert_eq!(response_id(&response), second);
    let answer = produce_body(response);
    let p = &answer.topics[0].partitions[0];
    assert_eq!((p.error_code(), p.base_offset), (ErrorCode::None, 0));
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "the retry was acknowledged after {waited:?}, while the original's fsync (3 s) ran"
    );
    let response = original.recv();
    assert_eq!(response_id(&response), first);
    let p = &produce_body(response).topics[0].partitions[0];
    assert_eq!((p.error_code(), p.base_offset), (ErrorCode::None, 0));
    b.faults.clear();
    assert_eq!(c.fetch_all("slow", 0).len(), 4, "stored once");
}
