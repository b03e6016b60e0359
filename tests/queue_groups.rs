//! Queue groups end to end, through the client library's `QueueConsumer` against a real
//! `strom serve` child process (docs/queues.md, docs/guarantees.md):
//!
//! - members share the records: each record goes to one member at a time, and while nobody
//!   fails every record is handed out once;
//! - a nack makes the record come back after the backoff, never before, with the next attempt;
//! - after `max.attempts` failed attempts (or one reject) the record is in the dead-letter topic
//!   once, with its key, value and headers and the `strom.dlq.*` headers;
//! - a lease that runs out hands the record to another member with the next attempt, and the
//!   first member's late ack is refused;
//! - across `kill -9` of the broker: a lease still running is not handed to a second member,
//!   the attempt count does not go down, the holder (same member id) can still ack;
//! - a member that leaves releases what it holds at once.
//!
//! Waits are loops on a condition with a deadline; nothing sleeps to synchronise (the backoff
//! test measures that a record does not come back early, which needs the clock).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use strom_client::HeaderRef;
use strom_client::protocol::ErrorCode;
use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, QueueConfig, QueueConsumer, QueueRecord,
};

use support::{Broker, TestDir};

/// Longest wait for any condition.
const DEADLINE: Duration = Duration::from_secs(30);

/// Produces `values` with key `k{i}` and a header, durably; returns their (partition, offset).
async fn produce(addr: &str, topic: &str, values: &[String]) -> Vec<(i32, i64)> {
    let producer = Producer::connect(ProducerConfig::new(addr))
        .await
        .expect("producer");
    let mut futures = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        let headers = [HeaderRef {
            key: "origin",
            value: Some(b"test"),
        }];
        let rec = ProducerRecord::new(topic)
            .key(key.as_bytes())
            .value(v.as_bytes())
            .headers(&headers);
        futures.push(producer.send_record(rec).await.expect("send"));
    }
    let mut out = Vec::new();
    for f in futures {
        let m = f.await.expect("delivered");
        out.push((m.partition, m.offset));
    }
    producer.close().await.expect("close");
    out
}

fn member(addr: &str, group: &str, topic: &str, settings: &[(&str, &str)]) -> QueueConfig {
    let mut c = QueueConfig::new(addr, group, &[topic]);
    c.max_wait = Duration::from_millis(200);
    for (k, v) in settings {
        c = c.setting(*k, *v);
    }
    c
}

fn value(r: &QueueRecord) -> String {
    String::from_utf8_lossy(r.value().map(|v| &v[..]).unwrap_or_default()).into_owned()
}

/// Polls until `want` records came (or the deadline), answering none of them.
async fn take(c: &mut QueueConsumer, want: usize) -> Vec<QueueRecord> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} records came",
            got.len()
        );
        got.extend(
            c.poll(u32::try_from(want - got.len()).unwrap())
                .await
                .expect("poll"),
        );
    }
    got
}

/// Reads a whole topic from the beginning: (partition, offset, key, value, headers).
async fn read_all(addr: &str, topic: &str, expect: usize) -> Vec<ReadBack> {
    let mut consumer = Consumer::connect(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::new(addr)
    })
    .await
    .expect("consumer");
    let admin = Admin::connect(ClientConfig::new(addr))
        .await
        .expect("admin");
    // A dead-letter topic is created by the broker's dead-letter writer: wait for it.
    let deadline = Instant::now() + DEADLINE;
    let partitions = loop {
        match admin.describe_topics(&[topic]).await {
            Ok(t) => break t[0].partitions.len() as i32,
            Err(e) => assert!(Instant::now() < deadline, "describe {topic}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let tps: Vec<(&str, i32)> = (0..partitions).map(|p| (topic, p)).collect();
    consumer.assign(&tps);
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while out.len() < expect {
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {expect} records",
            out.len()
        );
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            out.push(ReadBack {
                key: r.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                value: String::from_utf8_lossy(r.value().map(|v| &v[..]).unwrap_or_default())
                    .into_owned(),
                headers: r
                    .headers()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect(),
            });
        }
    }
    // Nothing more than expected arrives.
    let extra = consumer
        .poll(Duration::from_millis(300))
        .await
        .expect("poll");
    assert!(
        extra.is_empty(),
        "{topic}: {} records more than {expect}",
        extra.len()
    );
    out
}

#[derive(Debug)]
struct ReadBack {
    key: Option<String>,
    value: String,
    headers: BTreeMap<String, String>,
}

#[tokio::test]
async fn members_share_records_and_each_is_handed_out_once() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "jobs", 3).await;
    let values: Vec<String> = (0..300).map(|i| format!("job-{i}")).collect();
    produce(&addr, "jobs", &values).await;

    let mut members = Vec::new();
    for _ in 0..4 {
        members.push(
            QueueConsumer::join(member(&addr, "workers", "jobs", &[]))
                .await
                .expect("join"),
        );
    }
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_member = vec![0usize; members.len()];
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < values.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} records",
            seen.len(),
            values.len()
        );
        for (i, m) in members.iter_mut().enumerate() {
            for r in m.poll(20).await.expect("poll") {
                assert_eq!(r.attempt(), 1);
                *seen.entry(value(&r)).or_default() += 1;
                per_member[i] += 1;
                m.ack(&r);
            }
        }
    }
    for m in &mut members {
        m.flush().await.expect("flush");
        assert!(m.take_refused().is_empty());
    }
    assert!(seen.values().all(|n| *n == 1), "a record came twice");
    assert!(
        per_member.iter().all(|n| *n > 0),
        "a member got nothing: {per_member:?}"
    );
    // Nothing is left to hand out.
    for m in &mut members {
        assert!(m.poll(10).await.expect("poll").is_empty());
    }
    for m in members {
        m.close().await.expect("close");
    }
}

#[tokio::test]
async fn a_nack_comes_back_after_its_backoff_and_failures_end_in_the_dead_letter_topic() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "mail", 1).await;
    let values = vec![
        "ok-0".to_string(),
        "poison".to_string(),
        "ok-2".to_string(),
        "bad".to_string(),
    ];
    produce(&addr, "mail", &values).await;
    let mut m = QueueConsumer::join(member(
        &addr,
        "senders",
        "mail",
        &[("max.attempts", "3"), ("backoff", "list:300ms")],
    ))
    .await
    .expect("join");
    let mut attempts: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut nacked_at: BTreeMap<String, Instant> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    // poison: nacked every time (3 attempts, then dead-lettered); bad: rejected at once.
    while attempts.get("poison").map_or(0, Vec::len) < 3 || !attempts.contains_key("bad") {
        assert!(Instant::now() < deadline, "attempts so far: {attempts:?}");
        for r in m.poll(10).await.expect("poll") {
            let v = value(&r);
            if let Some(at) = nacked_at.get(&v) {
                assert!(
                    at.elapsed() >= Duration::from_millis(290),
                    "{v} came back {:?} after its nack; the backoff is 300 ms",
                    at.elapsed()
                );
            }
            attempts.entry(v.clone()).or_default().push(r.attempt());
            match v.as_str() {
                "poison" => {
                    m.nack(&r, None, Some("smtp said no"));
                    nacked_at.insert(v, Instant::now());
                }
                "bad" => m.reject(&r, Some("malformed address")),
                _ => m.ack(&r),
            }
        }
    }
    m.flush().await.expect("flush");
    assert_eq!(attempts["poison"], [1, 2, 3]);
    assert_eq!(attempts["bad"], [1]);
    assert_eq!(attempts["ok-0"], [1]);
    let dlq = read_all(&addr, "mail.dlq", 2).await;
    let by_value: BTreeMap<&str, &ReadBack> = dlq.iter().map(|r| (r.value.as_str(), r)).collect();
    let poison = by_value["poison"];
    assert_eq!(poison.key.as_deref(), Some("k1"));
    assert_eq!(poison.headers["origin"], "test");
    assert_eq!(poison.headers["strom.dlq.topic"], "mail");
    assert_eq!(poison.headers["strom.dlq.partition"], "0");
    assert_eq!(poison.headers["strom.dlq.offset"], "1");
    assert_eq!(poison.headers["strom.dlq.group"], "senders");
    assert_eq!(poison.headers["strom.dlq.attempts"], "3");
    assert_eq!(poison.headers["strom.dlq.reason"], "attempts-exhausted");
    assert_eq!(poison.headers["strom.dlq.error"], "smtp said no");
    let bad = by_value["bad"];
    assert_eq!(bad.headers["strom.dlq.reason"], "rejected");
    assert_eq!(bad.headers["strom.dlq.attempts"], "1");
    assert_eq!(bad.headers["strom.dlq.error"], "malformed address");
    assert!(m.poll(10).await.expect("poll").is_empty(), "nothing left");
    m.close().await.expect("close");
}

#[tokio::test]
async fn an_expired_lease_goes_to_another_member_and_the_late_ack_is_refused() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "resize", 1).await;
    produce(&addr, "resize", &["img-1".to_string()]).await;
    let settings = [("lease.ms", "500"), ("backoff", "none")];
    let mut slow = QueueConsumer::join(member(&addr, "resizers", "resize", &settings))
        .await
        .expect("join");
    let mut fast = QueueConsumer::join(member(&addr, "resizers", "resize", &settings))
        .await
        .expect("join");
    let first = take(&mut slow, 1).await.remove(0);
    assert_eq!(first.attempt(), 1);
    // The slow member keeps its session alive but never answers in time.
    let deadline = Instant::now() + DEADLINE;
    let again = loop {
        assert!(Instant::now() < deadline, "the record never came back");
        slow.flush().await.expect("heartbeat");
        let got = fast.poll(1).await.expect("poll");
        if let Some(r) = got.into_iter().next() {
            break r;
        }
    };
    assert_eq!(value(&again), "img-1");
    assert_eq!(again.attempt(), 2);
    slow.ack(&first);
    slow.flush().await.expect("flush");
    let refused = slow.take_refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].code, ErrorCode::InvalidRecordState);
    fast.ack(&again);
    fast.flush().await.expect("flush");
    assert!(fast.take_refused().is_empty());
}

#[tokio::test]
async fn leases_and_attempts_survive_kill_9() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "orders", 2).await;
    let values: Vec<String> = (0..20).map(|i| format!("order-{i}")).collect();
    produce(&addr, "orders", &values).await;
    let settings = [("lease.ms", "60000"), ("backoff", "none")];
    let mut holder_config = member(&addr, "billing", "orders", &settings);
    holder_config.member_id = Some("holder-1".into());
    let mut holder = QueueConsumer::join(holder_config.clone())
        .await
        .expect("join");
    let held = take(&mut holder, 5).await;
    // Fail two of them once: their next hand-out must be attempt 2, also after the crash.
    let mut failed: BTreeSet<i64> = BTreeSet::new();
    for r in &held[..2] {
        holder.nack(r, Some(Duration::ZERO), None);
        failed.insert(r.offset() + i64::from(r.partition()) * 1000);
    }
    holder.flush().await.expect("flush");
    let kept: Vec<&QueueRecord> = held[2..].iter().collect();

    broker.kill9();
    let _broker = Broker::start_at(&dir.data(), broker.addr, &[]);

    // Another member gets everything except the three still leased to the holder.
    let mut other = QueueConsumer::join(member(&addr, "billing", "orders", &settings))
        .await
        .expect("join after restart");
    let got = take(&mut other, 17).await;
    let kept_ids: BTreeSet<(i32, i64)> = kept.iter().map(|r| (r.partition(), r.offset())).collect();
    for r in &got {
        assert!(
            !kept_ids.contains(&(r.partition(), r.offset())),
            "{}-{} is leased to the holder until its lease ends, yet went to another member",
            r.partition(),
            r.offset()
        );
        let id = r.offset() + i64::from(r.partition()) * 1000;
        let want = if failed.contains(&id) { 2 } else { 1 };
        assert_eq!(
            r.attempt(),
            want,
            "attempt of {}-{}",
            r.partition(),
            r.offset()
        );
        other.ack(r);
    }
    other.flush().await.expect("flush");
    assert!(
        other.poll(5).await.expect("poll").is_empty(),
        "more than 17 records"
    );
    // The holder, same member id, still holds its three and can finish them.
    let mut holder = QueueConsumer::join(holder_config).await.expect("rejoin");
    for r in kept {
        holder.ack(r);
    }
    holder.flush().await.expect("flush");
    assert!(
        holder.take_refused().is_empty(),
        "the holder's acks after the restart"
    );
}

#[tokio::test]
async fn a_member_that_leaves_releases_what_it_holds() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "tasks", 1).await;
    produce(
        &addr,
        "tasks",
        &(0..10).map(|i| format!("t{i}")).collect::<Vec<_>>(),
    )
    .await;
    let settings = [("lease.ms", "60000")];
    let mut a = QueueConsumer::join(member(&addr, "g", "tasks", &settings))
        .await
        .expect("join");
    let mut b = QueueConsumer::join(member(&addr, "g", "tasks", &settings))
        .await
        .expect("join");
    let held = take(&mut a, 10).await;
    assert!(
        b.poll(10).await.expect("poll").is_empty(),
        "a holds everything"
    );
    a.close().await.expect("leave");
    let got = take(&mut b, 10).await;
    assert!(
        got.iter().all(|r| r.attempt() == 2),
        "released records keep their attempt count"
    );
    assert_eq!(
        got.iter().map(|r| r.offset()).collect::<BTreeSet<_>>(),
        held.iter().map(|r| r.offset()).collect::<BTreeSet<_>>()
    );
}

/// The body of a queue response, its error code and message.
fn queue_error(r: &strom_client::protocol::messages::Response) -> (ErrorCode, Option<String>) {
    use strom_client::protocol::messages::response::Body;
    match r.body.as_ref() {
        Some(Body::QueueJoin(b)) => (b.error_code(), b.error_message.clone()),
        Some(Body::QueueFetch(b)) => (b.error_code(), b.error_message.clone()),
        Some(Body::QueueAck(b)) => (b.error_code(), b.error_message.clone()),
        Some(Body::QueueLeave(b)) => (b.error_code(), b.error_message.clone()),
        Some(Body::ResetQueueGroup(b)) => (b.error_code(), b.error_message.clone()),
        other => panic!("not a queue response: {other:?}"),
    }
}

#[tokio::test]
async fn bad_queue_requests_get_typed_errors_and_change_nothing() {
    use strom_client::protocol::messages::*;
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "q", 1).await;
    produce(&addr, "q", &["a".to_string(), "b".to_string()]).await;
    let mut c = broker.client();
    let join = |member: &str, settings: &[(&str, &str)], session: u32| QueueJoinRequest {
        group_id: "g".into(),
        member_id: member.into(),
        topics: vec!["q".into()],
        session_timeout_ms: session,
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    for (req, want) in [
        (join("", &[], 0), ErrorCode::InvalidRequest),
        (join(&"m".repeat(256), &[], 0), ErrorCode::InvalidRequest),
        (
            join("m", &[("max.attempts", "0")], 0),
            ErrorCode::InvalidConfig,
        ),
        (join("m", &[("colour", "red")], 0), ErrorCode::InvalidConfig),
        (
            join("m", &[("backoff", "exp:9d..1s")], 0),
            ErrorCode::InvalidConfig,
        ),
        (
            join("m", &[], 999_999_999),
            ErrorCode::InvalidSessionTimeout,
        ),
    ] {
        let (code, msg) = queue_error(&c.call(req));
        assert_eq!(code, want, "{msg:?}");
        assert!(msg.is_some());
    }
    let mut internal = join("m", &[], 0);
    internal.topics = vec!["__queue_state".into()];
    assert_eq!(
        queue_error(&c.call(internal)).0,
        ErrorCode::InvalidTopicName
    );
    // Unknown group and member.
    let fetch = |member: &str, acks: Vec<QueueAck>| QueueFetchRequest {
        group_id: "g".into(),
        member_id: member.into(),
        max_records: u32::MAX,
        max_bytes: u32::MAX,
        max_wait_ms: 0,
        acks,
    };
    assert_eq!(
        queue_error(&c.call(fetch("m", vec![]))).0,
        ErrorCode::GroupIdNotFound
    );
    assert_eq!(queue_error(&c.call(join("m", &[], 0))).0, ErrorCode::None);
    assert_eq!(
        queue_error(&c.call(fetch("stranger", vec![]))).0,
        ErrorCode::UnknownMemberId
    );
    // One id, one kind of group: a consumer group member cannot join with a queue group's id.
    let r = c.call(GroupHeartbeatRequest {
        group_id: "g".into(),
        member_id: String::new(),
        member_epoch: 0,
        session_timeout_ms: 0,
        subscribed_topics: Some(TopicNames {
            names: vec!["q".into()],
        }),
        assignor: String::new(),
        owned_partitions: vec![],
    });
    let Some(response::Body::GroupHeartbeat(hb)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(
        hb.error_code(),
        ErrorCode::InconsistentGroupProtocol,
        "{hb:?}"
    );
    // Absurd answers: every one refused on its own, nothing else changes.
    let ack = |first: i64, last: i64, attempt: u32, kind: QueueAckKind| QueueAck {
        topic: "q".into(),
        partition: 0,
        first_offset: first,
        last_offset: last,
        attempt,
        kind: kind as i32,
        delay_ms: Some(u64::MAX),
        error: Some("x".repeat(100_000)),
        extend_ms: u64::MAX,
    };
    let r = c.call(fetch(
        "m",
        vec![
            ack(5, 1, 1, QueueAckKind::Ack),
            ack(i64::MIN, i64::MAX, 1, QueueAckKind::Nack),
            ack(0, 0, 0, QueueAckKind::Reject),
            QueueAck {
                topic: "nope".into(),
                ..ack(0, 0, 1, QueueAckKind::Ack)
            },
            QueueAck {
                kind: 77,
                ..ack(0, 0, 1, QueueAckKind::Ack)
            },
        ],
    ));
    let Some(response::Body::QueueFetch(f)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(f.error_code(), ErrorCode::None);
    let codes: Vec<ErrorCode> = f.ack_results.iter().map(|a| a.error_code()).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::InvalidRecordState,
            ErrorCode::InvalidRecordState,
            ErrorCode::InvalidRecordState,
            ErrorCode::UnknownTopicOrPartition,
            ErrorCode::InvalidRecordState,
        ]
    );
    // The fetch itself handed out both records (at most the member cap, whatever was asked).
    let acquired: Vec<(i64, i64, u32)> = f
        .partitions
        .iter()
        .flat_map(|p| {
            p.acquired
                .iter()
                .map(|a| (a.first_offset, a.last_offset, a.attempt))
        })
        .collect();
    assert_eq!(acquired, [(0, 1, 1)]);
    // A huge nack delay and a huge extension are capped, not overflowed; the error is cut to 1 KiB.
    let r = c.call(QueueAckRequest {
        group_id: "g".into(),
        member_id: "m".into(),
        acks: vec![
            ack(0, 0, 1, QueueAckKind::Extend),
            ack(1, 1, 1, QueueAckKind::Nack),
        ],
    });
    let Some(response::Body::QueueAck(a)) = r.body else {
        panic!("{r:?}")
    };
    assert!(
        a.results.iter().all(|r| r.error_code() == ErrorCode::None),
        "{a:?}"
    );
    let r = c.call(ResetQueueGroupRequest {
        group_id: "g".into(),
        topic: "q".into(),
        to: None,
    });
    assert_eq!(queue_error(&r).0, ErrorCode::InvalidRequest);
    let r = c.call(ResetQueueGroupRequest {
        group_id: "g".into(),
        topic: "q".into(),
        to: Some(reset_queue_group_request::To::Earliest(true)),
    });
    assert_eq!(queue_error(&r).0, ErrorCode::NonEmptyGroup);
    // The topic is untouched: both records still there.
    let back = read_all(&addr, "q", 2).await;
    assert_eq!(
        back.iter().map(|r| r.value.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
}

fn redrive_status(
    broker: &Broker,
    dlq: &str,
) -> Option<strom_client::protocol::messages::RedriveStatus> {
    use strom_client::protocol::messages::{DescribeRedriveRequest, response};
    let mut c = support::Client::try_connect(broker.addr).ok()?;
    match c
        .call(DescribeRedriveRequest {
            dlq_topic: dlq.into(),
        })
        .body
    {
        Some(response::Body::DescribeRedrive(d)) => d.status,
        _ => None,
    }
}

/// Dead-letters `n` records of `topic` (rejected at once) through group `g`.
async fn dead_letter(addr: &str, topic: &str, n: usize) {
    let values: Vec<String> = (0..n).map(|i| format!("job-{i}")).collect();
    produce(addr, topic, &values).await;
    let mut m = QueueConsumer::join(member(addr, "g", topic, &[]))
        .await
        .expect("join");
    for r in take(&mut m, n).await {
        m.reject(&r, Some("bad job"));
    }
    m.close().await.expect("close");
}

#[tokio::test]
async fn redrive_moves_dead_letters_back_once_even_across_kill_9() {
    use strom_client::protocol::messages::{RedriveRequest, response};
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "jobs", 2).await;
    const N: usize = 60;
    dead_letter(&addr, "jobs", N).await;
    read_all(&addr, "jobs.dlq", N).await;
    // 30 records/s: the redrive takes about 2 s; the broker is killed in the middle.
    let r = broker.client().call(RedriveRequest {
        dlq_topic: "jobs.dlq".into(),
        target_topic: String::new(),
        rate: 30,
        from_offset: None,
        to_offset: None,
    });
    let Some(response::Body::Redrive(started)) = r.body else {
        panic!("{r:?}")
    };
    assert_eq!(started.error_code(), ErrorCode::None, "{started:?}");
    let deadline = Instant::now() + DEADLINE;
    while redrive_status(&broker, "jobs.dlq").is_none_or(|s| s.moved == 0) {
        assert!(Instant::now() < deadline, "the redrive made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill9();
    let broker = Broker::start_at(&dir.data(), broker.addr, &[]);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        let s = redrive_status(&broker, "jobs.dlq");
        if let Some(s) = s.filter(|s| s.done) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the redrive did not finish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (status.moved, status.skipped, status.remaining),
        (N as u64, 0, 0)
    );
    // The origin holds the N records and N copies, each copy once, without the dlq headers.
    let all = read_all(&addr, "jobs", 2 * N).await;
    let copies: Vec<&ReadBack> = all
        .iter()
        .filter(|r| r.headers.contains_key("strom.redrive.source"))
        .collect();
    assert_eq!(copies.len(), N);
    let sources: BTreeSet<&String> = copies
        .iter()
        .map(|r| &r.headers["strom.redrive.source"])
        .collect();
    assert_eq!(sources.len(), N, "a record was redriven twice");
    for c in &copies {
        assert_eq!(c.headers["strom.redrive.count"], "1");
        assert_eq!(c.headers["origin"], "test");
        assert!(
            c.headers.keys().all(|k| !k.starts_with("strom.dlq.")),
            "{:?}",
            c.headers
        );
    }
    // The queue group hands them out again, with fresh attempts.
    let mut m = QueueConsumer::join(member(&addr, "g", "jobs", &[]))
        .await
        .expect("join");
    let again = take(&mut m, N).await;
    assert!(again.iter().all(|r| r.attempt() == 1));
}

#[tokio::test]
async fn key_order_holds_under_failures_and_other_keys_go_on() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "ledger", 1).await;
    // 5 keys, 20 records each, interleaved; produce gives record i the key k{i}, so key
    // k{i % 5} for our purposes comes from the value.
    const KEYS: usize = 5;
    const PER_KEY: usize = 20;
    let producer = Producer::connect(ProducerConfig::new(&addr))
        .await
        .expect("producer");
    let mut sent = Vec::new();
    for i in 0..KEYS * PER_KEY {
        let key = format!("account-{}", i % KEYS);
        let value = format!("{}:{}", i % KEYS, i / KEYS);
        sent.push(
            producer
                .send("ledger", Some(key.as_bytes()), Some(value.as_bytes()), &[])
                .await
                .expect("send"),
        );
    }
    for s in sent {
        s.await.expect("delivered");
    }
    producer.close().await.expect("close");
    let settings = [
        ("ordering", "key"),
        ("backoff", "list:50ms"),
        ("max.attempts", "10"),
    ];
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(
            QueueConsumer::join(member(&addr, "bank", "ledger", &settings))
                .await
                .expect("join"),
        );
    }
    // Per key: the next sequence number expected, and whether one is in flight.
    let mut next = [0usize; KEYS];
    let mut in_flight = [false; KEYS];
    let mut held: Vec<Vec<QueueRecord>> = vec![Vec::new(); members.len()];
    let deadline = Instant::now() + DEADLINE;
    let mut round = 0u64;
    while next.iter().any(|n| *n < PER_KEY) {
        assert!(Instant::now() < deadline, "stuck at {next:?}");
        round += 1;
        for (i, m) in members.iter_mut().enumerate() {
            for r in m.poll(10).await.expect("poll") {
                let v = value(&r);
                let (k, n) = v.split_once(':').expect("k:n");
                let (k, n): (usize, usize) = (k.parse().unwrap(), n.parse().unwrap());
                assert!(!in_flight[k], "two records of key {k} in flight at once");
                assert_eq!(n, next[k], "key {k} out of order");
                in_flight[k] = true;
                held[i].push(r);
            }
            // Answer what this member holds: every third record fails once.
            for r in held[i].drain(..) {
                let v = value(&r);
                let (k, n) = v.split_once(':').expect("k:n");
                let (k, n): (usize, usize) = (k.parse().unwrap(), n.parse().unwrap());
                in_flight[k] = false;
                if n % 3 == 1 && r.attempt() == 1 {
                    m.nack(&r, None, Some("try again"));
                } else {
                    m.ack(&r);
                    next[k] = n + 1;
                }
            }
            m.flush().await.expect("flush");
            assert!(m.take_refused().is_empty());
        }
    }
    assert!(round < 10_000);
}
