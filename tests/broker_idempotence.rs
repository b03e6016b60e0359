//! Idempotent producers against `strom serve`: producer ids, sequence checks, retried batches
//! answered with their first offsets, fencing, and the state surviving graceful and `kill -9`
//! restarts.

mod support;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::*;

use support::*;

fn init(c: &mut Client, id: i64, epoch: i32) -> (i64, i16) {
    let r = init_producer_id_body(c.call(InitProducerIdRequest {
        transactional_id: None,
        transaction_timeout_ms: 0,
        producer_id: id,
        producer_epoch: epoch,
    }));
    assert_eq!(r.error_code(), ErrorCode::None, "{r:?}");
    (r.producer_id, r.producer_epoch as i16)
}

/// A batch of `n` records from producer (`id`, `epoch`) starting at sequence `seq`.
fn batch(id: i64, epoch: i16, seq: i32, n: usize, tag: &str) -> Bytes {
    producer_batch(id, epoch, seq, n, tag)
}

#[test]
fn producer_ids_are_unique_even_across_restarts() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    let a = init(&mut c, -1, -1);
    let b = init(&mut c, -1, -1);
    assert_ne!(a.0, b.0);
    assert_eq!((a.1, b.1), (0, 0));
    // A producer asking with its id gets the next epoch.
    assert_eq!(init(&mut c, a.0, 0), (a.0, 1));
    broker.kill9();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    let after = init(&mut c, -1, -1);
    assert!(
        after.0 != a.0 && after.0 != b.0,
        "id {after:?} was handed out before"
    );
    // Transactions are not there yet.
    let r = init_producer_id_body(c.call(InitProducerIdRequest {
        transactional_id: Some("tx".into()),
        transaction_timeout_ms: 0,
        producer_id: -1,
        producer_epoch: -1,
    }));
    assert_eq!(r.error_code(), ErrorCode::InvalidRequest);
}

#[test]
fn retries_are_answered_once_and_gaps_and_stale_epochs_are_refused() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("idem", 1, &[]);
    let (id, epoch) = init(&mut c, -1, -1);

    // A new producer must start at sequence 0.
    let p = c.produce("idem", 0, &[batch(id, epoch, 5, 1, "x")], Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::UnknownProducerId, "{p:?}");

    let first = batch(id, epoch, 0, 3, "a");
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&first)), 0);
    let second = batch(id, epoch, 3, 2, "b");
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&second)), 3);
    // Retries of either batch: success with the first offsets, nothing appended.
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&first)), 0);
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&second)), 3);
    assert_eq!(c.offset_of("idem", 0, OffsetSpec::Latest, 0), 5);
    // A gap is refused.
    let p = c.produce("idem", 0, &[batch(id, epoch, 9, 1, "gap")], Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::OutOfOrderSequence, "{p:?}");
    assert_eq!(p.base_offset, -1);
    // Several batches of one producer in one request chain.
    let two = [batch(id, epoch, 5, 1, "c"), batch(id, epoch, 6, 1, "d")];
    assert_eq!(c.produce_ok("idem", 0, &two), 5);
    // Pipelined: five requests in flight on one connection, in order.
    let ids: Vec<u32> = (0..5)
        .map(|i| {
            c.send_produce(
                Acks::Leader,
                &[("idem", 0, batch(id, epoch, 7 + i, 1, "p"))],
            )
        })
        .collect();
    for (i, corr) in ids.iter().enumerate() {
        let r = c.recv();
        assert_eq!(response_id(&r), *corr);
        let part = &produce_body(r).topics[0].partitions[0];
        assert_eq!(
            (part.error_code(), part.base_offset),
            (ErrorCode::None, 7 + i as i64)
        );
    }
    // A new epoch fences the old one.
    let (_, epoch1) = init(&mut c, id, i32::from(epoch));
    assert_eq!(
        c.produce_ok("idem", 0, &[batch(id, epoch1, 0, 1, "e1")]),
        12
    );
    let p = c.produce("idem", 0, &[batch(id, epoch, 12, 1, "stale")], Acks::Leader);
    assert_eq!(p.error_code(), ErrorCode::ProducerFenced, "{p:?}");
    // Non-idempotent batches are not checked at all.
    let plain = batch_of(&[Rec::new(now_ms(), "k", "plain")]);
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&plain)), 13);
    assert_eq!(c.produce_ok("idem", 0, std::slice::from_ref(&plain)), 14);
}

#[test]
fn sequence_state_survives_graceful_and_kill_9_restarts() {
    for crash in [false, true] {
        let dir = TestDir::new();
        let mut broker = Broker::start(&dir.data(), &[]);
        let mut c = broker.client();
        c.create_topic_ok("idem", 2, &[]);
        let (id, epoch) = init(&mut c, -1, -1);
        let mut last = Vec::new();
        for p in 0..2 {
            let mut seq = 0;
            for i in 0..20 {
                let b = batch(id, epoch, seq, 3, &format!("{p}-{i}"));
                assert_eq!(
                    c.produce_ok("idem", p, std::slice::from_ref(&b)),
                    i64::from(seq)
                );
                seq += 3;
                last.push((p, b));
            }
        }
        if crash {
            broker.kill9();
        } else {
            broker.stop();
        }
        let broker = Broker::start(&dir.data(), &[]);
        let mut c = broker.client();
        // The last batch of each partition, retried after the restart: still a duplicate.
        for p in 0..2 {
            let (_, b) = last.iter().rev().find(|(q, _)| *q == p).expect("a batch");
            assert_eq!(
                c.produce_ok("idem", p, std::slice::from_ref(b)),
                57,
                "crash={crash}"
            );
            assert_eq!(
                c.offset_of("idem", p, OffsetSpec::Latest, 0),
                60,
                "crash={crash}"
            );
            // And the sequence continues where it was.
            assert_eq!(
                c.produce_ok("idem", p, &[batch(id, epoch, 60, 1, "next")]),
                60
            );
            let gap = c.produce("idem", p, &[batch(id, epoch, 70, 1, "gap")], Acks::Leader);
            assert_eq!(gap.error_code(), ErrorCode::OutOfOrderSequence);
        }
    }
}
