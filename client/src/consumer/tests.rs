//! Consumer tests against an in-process fake broker serving one partition of 100 records
//! (10 batches of 10, timestamps `offset * 10`).
//!
//! Compiled only for tests: declared `#[cfg(test)] mod tests;` in the parent module.
#![cfg(test)]

use std::time::Duration;

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

fn batches() -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    let codecs = [
        CompressionType::None,
        CompressionType::GZIP,
        CompressionType::Snappy,
        CompressionType::Lz4,
        CompressionType::ZSTD,
    ];
    for b in 0..RECORDS / 10 {
        let mut builder = BatchBuilder::default();
        for i in 0..10 {
            let offset = b * 10 + i;
            let v = format!("v{offset}");
            builder
                .push(&RecordRef {
                    timestamp: offset * 10,
                    key: Some(b"k"),
                    value: Some(v.as_bytes()),
                    headers: &[],
                })
                .unwrap();
        }
        let codec = codecs[b as usize % codecs.len()];
        let bytes = Compressor::new(codec)
            .unwrap()
            .finish(builder, ProducerStamp::NONE)
            .unwrap();
        let mut m = BytesMut::from(&bytes[..]);
        set_base_offset(&mut m, b * 10).unwrap();
        out.push((b * 10, m.freeze()));
    }
    out
}

/// Answers as broker 0 listening on 127.0.0.1:`port`.
fn handle(req: Request, log: &[(i64, Bytes)], port: u16) -> Response {
    let id = req.header.as_ref().unwrap().correlation_id;
    let body: response::Body = match req.body.unwrap() {
        request::Body::ApiVersions(_) => api_versions_response(0).into(),
        request::Body::FindCoordinator(_) => strom_protocol::messages::FindCoordinatorResponse {
            node_id: 0,
            host: "127.0.0.1".into(),
            port: u32::from(port),
            ..Default::default()
        }
        .into(),
        request::Body::Metadata(m) => MetadataResponse {
            brokers: vec![strom_protocol::messages::BrokerMetadata {
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
                    partitions: vec![PartitionMetadata::default()],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
        .into(),
        request::Body::ListOffsets(l) => ListOffsetsResponse {
            topics: l
                .topics
                .into_iter()
                .map(|t| ListOffsetsTopicResponse {
                    name: t.name,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| {
                            let offset = match p.spec() {
                                OffsetSpec::Earliest => 0,
                                OffsetSpec::Latest => RECORDS,
                                _ if p.timestamp_ms > (RECORDS - 1) * 10 => -1,
                                _ => (p.timestamp_ms + 9) / 10,
                            };
                            ListOffsetsPartitionResponse {
                                partition: p.partition,
                                offset,
                                timestamp_ms: -1,
                                ..Default::default()
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
        .into(),
        request::Body::Fetch(f) => FetchResponse {
            topics: f
                .topics
                .into_iter()
                .map(|t| FetchTopicResponse {
                    name: t.name,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut r = FetchPartitionResponse {
                                partition: p.partition,
                                high_watermark: RECORDS,
                                ..Default::default()
                            };
                            if !(0..=RECORDS).contains(&p.fetch_offset) {
                                r.error_code = ErrorCode::OffsetOutOfRange.into();
                                return r;
                            }
                            let mut data = BytesMut::new();
                            for (_, b) in log
                                .iter()
                                .filter(|(base, _)| base + 10 > p.fetch_offset)
                                .take(3)
                            {
                                data.extend_from_slice(b);
                            }
                            r.records = data.freeze();
                            r
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

async fn fake_broker() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = batches();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(frame) = decode_frame(&mut buf, 1 << 24).unwrap() {
                        let resp = handle(decode_request(frame).unwrap(), &log, addr.port());
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

async fn poll_n(c: &mut Consumer, n: usize) -> Vec<i64> {
    let mut offsets = Vec::new();
    while offsets.len() < n {
        let records = c.poll(Duration::from_secs(5)).await.unwrap();
        assert!(!records.is_empty(), "timed out after {offsets:?}");
        for r in records {
            assert_eq!(r.value().unwrap(), format!("v{}", r.offset()).as_bytes());
            assert_eq!(r.timestamp(), r.offset() * 10);
            offsets.push(r.offset());
        }
    }
    // A poll may return more than asked for here: compare the first `n`.
    offsets.truncate(n);
    offsets
}

fn config(addr: String) -> ConsumerConfig {
    let mut c = ConsumerConfig::new(addr);
    c.max_poll_records = 7;
    c.fetch_max_wait = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_and_seek_without_reset_policy() {
    let addr = fake_broker().await;
    let mut c = Consumer::connect(config(addr)).await.unwrap();
    assert_eq!(c.partition_count("t").await.unwrap(), 1);
    c.assign(&[("t", 0)]);
    assert!(matches!(
        c.poll(Duration::from_millis(10)).await,
        Err(Error::NoOffset { partition: 0, .. })
    ));
    // Records below the position are skipped although their batch is fetched whole.
    c.seek(("t", 0), 15).unwrap();
    assert_eq!(poll_n(&mut c, 85).await, (15..100).collect::<Vec<_>>());
    assert_eq!(c.position(("t", 0)), Some(100));
    // A seek drops what was fetched ahead.
    c.seek(("t", 0), 3).unwrap();
    assert_eq!(poll_n(&mut c, 5).await, (3..8).collect::<Vec<_>>());
    c.seek(("t", 0), 40).unwrap();
    assert_eq!(poll_n(&mut c, 3).await, vec![40, 41, 42]);
    c.seek_to_timestamp(&[], 555).await.unwrap();
    assert_eq!(c.position(("t", 0)), Some(56));
    assert_eq!(poll_n(&mut c, 1).await, vec![56]);
    c.seek_to_timestamp(&[("t", 0)], 5_000).await.unwrap();
    assert_eq!(
        c.position(("t", 0)),
        Some(RECORDS),
        "no record that late: the end"
    );
    c.seek_to_beginning(&[]).await.unwrap();
    assert_eq!(c.position(("t", 0)), Some(0));
    assert!(matches!(
        c.seek(("t", 1), 0),
        Err(Error::NotAssigned { partition: 1, .. })
    ));
    c.seek(("t", 0), 1000).unwrap();
    match c.poll(Duration::from_secs(5)).await {
        Err(Error::OffsetOutOfRange { offset, .. }) => assert_eq!(offset, 1000),
        other => panic!("{other:?}"),
    }
    c.seek_to_end(&[]).await.unwrap();
    assert!(c.poll(Duration::from_millis(100)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_policy_finds_and_resets_positions() {
    let addr = fake_broker().await;
    let mut cfg = config(addr);
    cfg.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut c = Consumer::connect(cfg).await.unwrap();
    c.assign(&[("t", 0)]);
    assert_eq!(poll_n(&mut c, 10).await, (0..10).collect::<Vec<_>>());
    c.seek(("t", 0), -5).unwrap();
    assert_eq!(
        poll_n(&mut c, 3).await,
        vec![0, 1, 2],
        "out of range: back to the start"
    );
    assert_eq!(c.assignment().len(), 1);
}

/// Compile-time: a consumer and the futures of its group calls can move between threads (so
/// an application can run them in `tokio::spawn`).
#[test]
fn consumer_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Consumer>();
    #[allow(dead_code)]
    fn futures(c: &mut Consumer) {
        fn send<T: Send>(_: T) {}
        send(c.poll(Duration::ZERO));
        send(c.commit());
        send(c.commit_async());
        send(c.commit_offsets(&[]));
        send(c.committed(&[]));
    }
    #[allow(dead_code)]
    fn close(c: Consumer) {
        fn send<T: Send>(_: T) {}
        send(c.close());
    }
}

// ------------------------------------------------------------------------------------------
// Groups, against a fake coordinator
// ------------------------------------------------------------------------------------------

/// What the fake coordinator saw, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// A heartbeat: member epoch sent, partitions reported owned.
    Heartbeat(i32, Vec<i32>),
    /// A commit: member epoch, (partition, offset)s; and whether it was accepted.
    Commit(i32, Vec<(i32, i64)>, bool),
}

/// A one-member coordinator for topic `t`, scripted by the test through its fields.
#[derive(Debug, Default)]
struct FakeGroup {
    epoch: i32,
    assignment: Vec<i32>,
    committed: std::collections::HashMap<i32, i64>,
    /// Answer the next heartbeat with UNKNOWN_MEMBER_ID.
    forget_member: bool,
    seen: Vec<Seen>,
    joins: usize,
}

type Fake = std::sync::Arc<std::sync::Mutex<FakeGroup>>;

fn group_handle(req: Request, log: &[(i64, Bytes)], fake: &Fake, port: u16) -> Response {
    let id = req.header.as_ref().unwrap().correlation_id;
    let mut g = fake.lock().unwrap();
    let body: response::Body = match req.body.clone().unwrap() {
        request::Body::GroupHeartbeat(h) => {
            let owned: Vec<i32> = h
                .owned_partitions
                .iter()
                .flat_map(|t| t.partitions.clone())
                .collect();
            g.seen.push(Seen::Heartbeat(h.member_epoch, owned));
            if h.member_epoch == -1 {
                GroupHeartbeatResponse {
                    member_id: h.member_id,
                    member_epoch: -1,
                    ..Default::default()
                }
            } else if std::mem::take(&mut g.forget_member) {
                GroupHeartbeatResponse {
                    error_code: ErrorCode::UnknownMemberId.into(),
                    member_epoch: -1,
                    ..Default::default()
                }
            } else {
                if h.member_epoch == 0 {
                    assert!(h.member_id.is_empty(), "a rejoin asks for a fresh id");
                    assert_eq!(h.subscribed_topics.unwrap().names, vec!["t".to_string()]);
                    g.joins += 1;
                }
                GroupHeartbeatResponse {
                    member_id: format!("m{}", g.joins),
                    member_epoch: g.epoch,
                    heartbeat_interval_ms: 30,
                    assignment: vec![TopicPartitions {
                        topic: "t".into(),
                        partitions: g.assignment.clone(),
                    }],
                    ..Default::default()
                }
            }
            .into()
        }
        request::Body::OffsetCommit(c) => {
            let offsets: Vec<(i32, i64)> = c
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| (p.partition, p.offset)))
                .collect();
            let ok = c.member_epoch == g.epoch;
            g.seen
                .push(Seen::Commit(c.member_epoch, offsets.clone(), ok));
            if ok {
                for (p, o) in &offsets {
                    g.committed.insert(*p, *o);
                }
                OffsetCommitResponse {
                    topics: vec![OffsetCommitTopicResponse {
                        name: "t".into(),
                        partitions: offsets
                            .iter()
                            .map(|(p, _)| OffsetCommitPartitionResponse {
                                partition: *p,
                                error_code: 0,
                            })
                            .collect(),
                    }],
                    ..Default::default()
                }
            } else {
                OffsetCommitResponse {
                    error_code: ErrorCode::IllegalGeneration.into(),
                    ..Default::default()
                }
            }
            .into()
        }
        request::Body::OffsetFetch(f) => OffsetFetchResponse {
            topics: f
                .topics
                .iter()
                .map(|t| OffsetFetchTopicResponse {
                    name: t.topic.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| OffsetFetchPartitionResponse {
                            partition: *p,
                            offset: g.committed.get(p).copied().unwrap_or(-1),
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect(),
            ..Default::default()
        }
        .into(),
        _ => {
            drop(g);
            return handle(req, log, port);
        }
    };
    Response::new(id, body)
}

async fn fake_coordinator(fake: Fake) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = batches();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                loop {
                    while let Some(frame) = decode_frame(&mut buf, 1 << 24).unwrap() {
                        let resp =
                            group_handle(decode_request(frame).unwrap(), &log, &fake, addr.port());
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

/// Records the listener's calls.
#[derive(Clone, Default)]
struct Calls(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl crate::RebalanceListener for Calls {
    fn on_partitions_assigned<'a>(
        &'a mut self,
        _: &'a mut Consumer,
        partitions: &'a [crate::TopicPartition],
    ) -> crate::ListenerFuture<'a> {
        self.0
            .lock()
            .unwrap()
            .push(format!("assigned {partitions:?}"));
        Box::pin(async {})
    }

    fn on_partitions_revoked<'a>(
        &'a mut self,
        consumer: &'a mut Consumer,
        partitions: &'a [crate::TopicPartition],
    ) -> crate::ListenerFuture<'a> {
        let calls = self.0.clone();
        Box::pin(async move {
            // The revoked partition is no longer fetched but still has its position.
            let pos = consumer.position(partitions[0].clone());
            calls
                .lock()
                .unwrap()
                .push(format!("revoked {partitions:?} at {pos:?}"));
        })
    }

    fn on_partitions_lost<'a>(
        &'a mut self,
        _: &'a mut Consumer,
        partitions: &'a [crate::TopicPartition],
    ) -> crate::ListenerFuture<'a> {
        self.0.lock().unwrap().push(format!("lost {partitions:?}"));
        Box::pin(async {})
    }
}

fn group_config(addr: String, auto_commit: bool) -> ConsumerConfig {
    let mut c = config(addr);
    c.group.session_timeout = Duration::from_secs(10);
    c.group.enable_auto_commit = auto_commit;
    c.group.auto_commit_interval = Duration::from_millis(20);
    c.group.auto_offset_reset = AutoOffsetReset::Earliest;
    c
}

fn fake_group(epoch: i32, committed: i64) -> Fake {
    let fake = Fake::default();
    {
        let mut g = fake.lock().unwrap();
        g.epoch = epoch;
        g.assignment = vec![0];
        g.committed.insert(0, committed);
    }
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_member_starts_at_the_commit_and_refreshes_a_stale_epoch_once() {
    let fake = fake_group(1, 5);
    let addr = fake_coordinator(fake.clone()).await;
    let mut c = Consumer::connect(group_config(addr, false)).await.unwrap();
    c.subscribe("g", &["t"]).unwrap();
    assert_eq!(
        poll_n(&mut c, 3).await,
        vec![5, 6, 7],
        "starts at the commit"
    );
    assert_eq!(c.group_metadata().unwrap().member_epoch, 1);
    c.commit().await.unwrap();
    assert_eq!(
        fake.lock().unwrap().committed[&0],
        c.position(("t", 0)).unwrap()
    );

    // The coordinator moved on without this member knowing: the commit is refused once,
    // the epoch refreshed by a heartbeat, and the commit sent again.
    fake.lock().unwrap().epoch = 2;
    poll_n(&mut c, 2).await;
    let pos = c.position(("t", 0)).unwrap();
    c.commit().await.unwrap();
    let commits: Vec<Seen> = fake
        .lock()
        .unwrap()
        .seen
        .iter()
        .filter(|s| matches!(s, Seen::Commit(..)))
        .cloned()
        .collect();
    assert_eq!(commits.len(), 3, "{commits:?}");
    assert_eq!(commits[1], Seen::Commit(1, vec![(0, pos)], false));
    assert_eq!(commits[2], Seen::Commit(2, vec![(0, pos)], true));
    // Explicit offsets, of assigned partitions only.
    c.commit_offsets(&[(("t", 0).into(), 42)]).await.unwrap();
    assert_eq!(fake.lock().unwrap().committed[&0], 42);
    assert!(matches!(
        c.commit_offsets(&[(("t", 1).into(), 1)]).await,
        Err(Error::NotAssigned { partition: 1, .. })
    ));
    // Nothing new to commit: answered without a request.
    c.seek(("t", 0), 42).unwrap();
    let before = fake.lock().unwrap().seen.len();
    c.commit_async().await.unwrap();
    let after = fake.lock().unwrap().seen.clone();
    assert!(
        after[before..]
            .iter()
            .all(|s| !matches!(s, Seen::Commit(..))),
        "{after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_partition_is_committed_before_it_is_reported_released() {
    let fake = fake_group(1, 0);
    let addr = fake_coordinator(fake.clone()).await;
    let mut c = Consumer::connect(group_config(addr, true)).await.unwrap();
    let calls = Calls::default();
    c.set_rebalance_listener(calls.clone());
    c.subscribe("g", &["t"]).unwrap();
    assert_eq!(poll_n(&mut c, 10).await, (0..10).collect::<Vec<_>>());
    let pos = c.position(("t", 0)).unwrap();
    // The coordinator takes the partition away.
    fake.lock().unwrap().assignment = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !c.assignment().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "never revoked");
        let _ = c.poll(Duration::from_millis(20)).await.unwrap();
    }
    // No record of the partition is returned once it is revoked.
    assert!(c.poll(Duration::from_millis(100)).await.unwrap().is_empty());
    let calls = calls.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[1].starts_with("revoked"), "{calls:?}");
    // Poll returned up to `pos` before the revocation was applied; the commit carries the
    // position at that point, and comes before the first heartbeat that no longer owns it.
    let seen = fake.lock().unwrap().seen.clone();
    let released = seen
        .iter()
        .position(|s| matches!(s, Seen::Heartbeat(e, owned) if *e > 0 && owned.is_empty()))
        .expect("a heartbeat without the partition");
    let last_commit = seen[..released]
        .iter()
        .rposition(|s| matches!(s, Seen::Commit(_, _, true)))
        .expect("a commit before the release");
    let Seen::Commit(_, offsets, _) = &seen[last_commit] else {
        unreachable!()
    };
    assert!(offsets[0].1 >= pos, "{seen:?}");
    assert!(
        seen[released..]
            .iter()
            .all(|s| !matches!(s, Seen::Commit(..))),
        "nothing committed after the release: {seen:?}"
    );
    c.close().await.unwrap();
    assert_eq!(
        fake.lock().unwrap().seen.last(),
        Some(&Seen::Heartbeat(-1, vec![])),
        "close leaves"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_member_drops_its_partitions_and_rejoins_at_the_commit() {
    let fake = fake_group(3, 20);
    let addr = fake_coordinator(fake.clone()).await;
    let mut c = Consumer::connect(group_config(addr, false)).await.unwrap();
    let calls = Calls::default();
    c.set_rebalance_listener(calls.clone());
    c.subscribe("g", &["t"]).unwrap();
    assert_eq!(poll_n(&mut c, 10).await, (20..30).collect::<Vec<_>>());
    // Forgotten (e.g. the broker restarted): the uncommitted 20..30 are read again.
    fake.lock().unwrap().forget_member = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut again = Vec::new();
    while !again.contains(&20) {
        assert!(tokio::time::Instant::now() < deadline, "{again:?}");
        let records = c.poll(Duration::from_millis(20)).await.unwrap();
        again.extend(records.iter().map(|r| r.offset()));
    }
    let calls = calls.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(calls[1].starts_with("lost"), "{calls:?}");
    assert!(calls[2].starts_with("assigned"), "{calls:?}");
    let g = fake.lock().unwrap();
    assert_eq!(g.joins, 2, "rejoined once");
    // Both joins own nothing: the lost partitions were dropped before the rejoin.
    let joins: Vec<&Seen> = g
        .seen
        .iter()
        .filter(|s| matches!(s, Seen::Heartbeat(0, _)))
        .collect();
    assert_eq!(joins, vec![&Seen::Heartbeat(0, vec![]); 2]);
    drop(g);
    assert_eq!(c.group_metadata().unwrap().member_id, "m2");
}
