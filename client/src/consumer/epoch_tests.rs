//! Leader epochs in the consumer, against an in-process fake broker whose partition changes
//! leader epoch (and, for the truncation cases, loses the tail of the old epoch) while the
//! consumer reads: fetches carry the epoch the client's metadata gave, a FENCED answer makes it
//! look the leader up again, and the position is checked with OffsetForLeaderEpoch before it
//! fetches in the new epoch.
//!
//! Compiled only for tests: declared `#[cfg(test)] mod epoch_tests;` in the parent module.
#![cfg(test)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use strom_protocol::api::api_versions_response;
use strom_protocol::batch::{BatchBuilder, RecordRef, set_base_offset};
use strom_protocol::frame::decode_frame;
use strom_protocol::messages::*;
use strom_protocol::{ErrorCode, decode_request, encode_response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::batches::{Compressor, ProducerStamp};
use crate::config::{AutoOffsetReset, CompressionType, ConsumerConfig};
use crate::{Consumer, Error};

const RECORDS: i64 = 100;

/// A batch of 10 records from `base`, valued `{prefix}{offset}`, stamped with `epoch`.
fn batch(base: i64, prefix: &str, epoch: i32) -> Bytes {
    let mut b = BatchBuilder::default();
    for i in 0..10 {
        let v = format!("{prefix}{}", base + i);
        b.push(&RecordRef {
            timestamp: base + i,
            key: None,
            value: Some(v.as_bytes()),
            headers: &[],
        })
        .unwrap();
    }
    let bytes = Compressor::new(CompressionType::None)
        .unwrap()
        .finish(b, ProducerStamp::NONE)
        .unwrap();
    let mut m = BytesMut::from(&bytes[..]);
    set_base_offset(&mut m, base).unwrap();
    // Bytes 12-15, outside the CRC: the partition leader epoch.
    m[12..16].copy_from_slice(&epoch.to_be_bytes());
    m.freeze()
}

#[derive(Debug, Default)]
struct Partition {
    /// The leader epoch Metadata reports and fetches are checked against.
    epoch: i32,
    /// (base offset, batch), 10 records each.
    log: Vec<(i64, Bytes)>,
    /// Where the log's epoch 1 ends (all of it until the tail is cut).
    epoch_1_end: i64,
    /// (current leader epoch, epoch asked) of each OffsetForLeaderEpoch.
    checks: Vec<(Option<i32>, i32)>,
    /// Fetches refused FENCED_LEADER_EPOCH.
    fenced: usize,
}

impl Partition {
    fn new() -> Self {
        Self {
            epoch: 1,
            log: (0..RECORDS / 10)
                .map(|b| (b * 10, batch(b * 10, "v", 1)))
                .collect(),
            epoch_1_end: RECORDS,
            ..Self::default()
        }
    }

    /// A new leader in epoch 2, whose log keeps epoch 1 only below `cut`, then holds records
    /// valued `w{offset}` in epoch 2 up to the same end.
    fn new_leader(&mut self, cut: i64) {
        self.epoch = 2;
        self.epoch_1_end = cut;
        self.log = (0..RECORDS / 10)
            .map(|b| {
                let base = b * 10;
                if base < cut {
                    (base, batch(base, "v", 1))
                } else {
                    (base, batch(base, "w", 2))
                }
            })
            .collect();
    }

    fn check(&self, current: Option<i32>) -> ErrorCode {
        match current {
            Some(e) if e < self.epoch => ErrorCode::FencedLeaderEpoch,
            Some(e) if e > self.epoch => ErrorCode::UnknownLeaderEpoch,
            _ => ErrorCode::None,
        }
    }
}

type Shared = Arc<Mutex<Partition>>;

fn handle(req: Request, part: &Shared, port: u16) -> Response {
    let id = req.header.as_ref().unwrap().correlation_id;
    let mut p = part.lock().unwrap();
    let body: response::Body = match req.body.unwrap() {
        request::Body::ApiVersions(_) => api_versions_response(0).into(),
        request::Body::Metadata(m) => MetadataResponse {
            brokers: vec![BrokerMetadata {
                node_id: 0,
                host: "127.0.0.1".into(),
                port: u32::from(port),
                rack: None,
            }],
            topics: m
                .topics
                .iter()
                .map(|t| TopicMetadata {
                    name: t.clone(),
                    partitions: vec![PartitionMetadata {
                        leader_epoch: p.epoch,
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .into(),
        request::Body::Fetch(f) => {
            let mut topics = Vec::new();
            for t in f.topics {
                let mut partitions = Vec::new();
                for fp in &t.partitions {
                    let mut r = FetchPartitionResponse {
                        partition: fp.partition,
                        high_watermark: RECORDS,
                        ..Default::default()
                    };
                    let code = p.check(fp.current_leader_epoch);
                    if code != ErrorCode::None {
                        p.fenced += usize::from(code == ErrorCode::FencedLeaderEpoch);
                        r.error_code = code.into();
                    } else if !(0..=RECORDS).contains(&fp.fetch_offset) {
                        r.error_code = ErrorCode::OffsetOutOfRange.into();
                    } else {
                        let mut data = BytesMut::new();
                        for (_, b) in p
                            .log
                            .iter()
                            .filter(|(base, _)| base + 10 > fp.fetch_offset)
                            .take(2)
                        {
                            data.extend_from_slice(b);
                        }
                        r.records = data.freeze();
                    }
                    partitions.push(r);
                }
                topics.push(FetchTopicResponse {
                    name: t.name,
                    partitions,
                });
            }
            FetchResponse { topics }.into()
        }
        request::Body::OffsetForLeaderEpoch(o) => {
            let mut topics = Vec::new();
            for t in o.topics {
                let mut partitions = Vec::new();
                for op in &t.partitions {
                    p.checks.push((op.current_leader_epoch, op.leader_epoch));
                    let mut r = OffsetForLeaderEpochPartitionResponse {
                        partition: op.partition,
                        leader_epoch: op.leader_epoch.min(p.epoch),
                        end_offset: if op.leader_epoch >= p.epoch {
                            RECORDS
                        } else {
                            p.epoch_1_end
                        },
                        ..Default::default()
                    };
                    let code = p.check(op.current_leader_epoch);
                    if code != ErrorCode::None {
                        r = OffsetForLeaderEpochPartitionResponse {
                            partition: op.partition,
                            error_code: code.into(),
                            leader_epoch: -1,
                            end_offset: -1,
                            ..Default::default()
                        };
                    }
                    partitions.push(r);
                }
                topics.push(OffsetForLeaderEpochTopicResponse {
                    name: t.name,
                    partitions,
                });
            }
            OffsetForLeaderEpochResponse { topics }.into()
        }
        // The consumer may look for a position by its reset policy between `assign` and
        // `seek`.
        request::Body::ListOffsets(l) => ListOffsetsResponse {
            topics: l
                .topics
                .into_iter()
                .map(|t| ListOffsetsTopicResponse {
                    name: t.name,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|lp| ListOffsetsPartitionResponse {
                            partition: lp.partition,
                            offset: match lp.spec() {
                                OffsetSpec::Earliest => 0,
                                _ => RECORDS,
                            },
                            timestamp_ms: -1,
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect(),
        }
        .into(),
        other => panic!("unexpected {other:?}"),
    };
    Response::new(id, body)
}

async fn fake_broker(part: Shared) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let part = part.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(frame) = decode_frame(&mut buf, 1 << 24).unwrap() {
                        let resp = handle(decode_request(frame).unwrap(), &part, addr.port());
                        let mut out = BytesMut::new();
                        encode_response(&resp, &mut out).unwrap();
                        if s.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
            });
        }
    });
    addr.to_string()
}

fn config(addr: String, reset: AutoOffsetReset) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(addr);
    c.max_poll_records = 7;
    c.fetch_max_wait = Duration::from_millis(20);
    c.retry_backoff = Duration::from_millis(10);
    c.auto_offset_reset = reset;
    c
}

/// Polls until at least `n` records came (a poll can bring more), as (offset, value).
async fn poll_n(c: &mut Consumer, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let started = Instant::now();
    while out.len() < n {
        assert!(started.elapsed() < Duration::from_secs(10), "got {out:?}");
        for r in c.poll(Duration::from_millis(200)).await.unwrap() {
            let v = String::from_utf8(r.value().unwrap().to_vec()).unwrap();
            out.push((r.offset(), v));
        }
    }
    out
}

/// A consumer that read into epoch 1's tail, which the new leader does not have, goes back to
/// where the new leader's log parts from it, and reads the new records from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_new_leaders_log_goes_back_to_where_it_parts() {
    let part: Shared = Arc::new(Mutex::new(Partition::new()));
    let addr = fake_broker(part.clone()).await;
    let mut c = Consumer::connect(config(addr, AutoOffsetReset::Earliest))
        .await
        .unwrap();
    c.assign(&[("t", 0)]);
    c.seek(("t", 0), 0).unwrap();
    let first = poll_n(&mut c, 60).await;
    assert!(first.iter().all(|(o, v)| *v == format!("v{o}")));
    part.lock().unwrap().new_leader(40);
    // What was fetched before the change comes first; then the records from 40 of the new
    // log.
    let mut next = poll_n(&mut c, 1).await;
    while !next.last().unwrap().1.starts_with('w') {
        next.extend(poll_n(&mut c, 1).await);
    }
    let at = next.iter().position(|(_, v)| v.starts_with('w')).unwrap();
    let rest = poll_n(&mut c, 10).await;
    let after: Vec<(i64, String)> = next[at..].iter().cloned().chain(rest).collect();
    assert_eq!(after[0].0, 40, "back to where the logs part: {next:?}");
    for (i, (o, v)) in after.iter().enumerate() {
        assert_eq!((*o, v.as_str()), (40 + i as i64, format!("w{o}").as_str()));
    }
    let p = part.lock().unwrap();
    assert!(p.fenced >= 1, "the stale epoch was never sent");
    assert!(
        p.checks.contains(&(Some(2), 1)),
        "no position check in epoch 2 for epoch 1: {:?}",
        p.checks
    );
    assert_eq!(c.position(("t", 0)), Some(after.last().unwrap().0 + 1));
}

/// Without a reset policy, a truncation below the position stops the partition with
/// LogTruncated, until a seek.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reset_policy_a_truncation_is_an_error_until_a_seek() {
    let part: Shared = Arc::new(Mutex::new(Partition::new()));
    let addr = fake_broker(part.clone()).await;
    let mut c = Consumer::connect(config(addr, AutoOffsetReset::None))
        .await
        .unwrap();
    c.assign(&[("t", 0)]);
    c.seek(("t", 0), 50).unwrap();
    poll_n(&mut c, 10).await;
    part.lock().unwrap().new_leader(40);
    let started = Instant::now();
    let err = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no error");
        match c.poll(Duration::from_millis(200)).await {
            Ok(records) => assert!(
                records.iter().all(|r| r.value().unwrap().starts_with(b"v")),
                "a record of the new log before the check"
            ),
            Err(e) => break e,
        }
    };
    match err {
        Error::LogTruncated { offset, end, .. } => {
            assert_eq!(end, 40);
            assert!(offset > 40, "{offset}");
        }
        other => panic!("{other:?}"),
    }
    c.seek(("t", 0), 40).unwrap();
    let after = poll_n(&mut c, 3).await;
    assert_eq!(after[0], (40, "w40".to_string()));
}

/// A position the new leader's log holds in the old epoch is kept: the check answers an end
/// past it, and fetching goes on from the position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_new_leader_holds_is_kept() {
    let part: Shared = Arc::new(Mutex::new(Partition::new()));
    let addr = fake_broker(part.clone()).await;
    let mut c = Consumer::connect(config(addr, AutoOffsetReset::Earliest))
        .await
        .unwrap();
    c.assign(&[("t", 0)]);
    c.seek(("t", 0), 0).unwrap();
    poll_n(&mut c, 20).await;
    part.lock().unwrap().new_leader(80);
    let rest = poll_n(&mut c, 60).await;
    let offsets: Vec<i64> = rest.iter().map(|(o, _)| *o).collect();
    let first = offsets[0];
    assert_eq!(
        offsets,
        (first..first + offsets.len() as i64).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
    assert!(
        rest.iter()
            .all(|(o, v)| *v == format!("{}{o}", if *o < 80 { 'v' } else { 'w' }))
    );
    assert!(part.lock().unwrap().checks.contains(&(Some(2), 1)));
}
