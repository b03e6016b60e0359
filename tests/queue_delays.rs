//! Delayed delivery end to end (docs/queues.md, "Delayed delivery"), through the client
//! library against a real `strom serve` child process:
//!
//! - a record produced with a delivery time is not handed to a queue-group member before it,
//!   and is handed out within a second after it; records without one, produced around it, go
//!   at once; consumer groups and plain fetches read delayed records at once, as any other;
//! - pending delays survive `kill -9` of the broker: after the restart they are still not
//!   handed out early (in the group that had skipped them, and in a group created after the
//!   restart), and they fire on time;
//! - a produce whose delivery times do not match its batches, or lie more than 90 days ahead,
//!   is refused with INVALID_REQUEST and appends nothing.
//!
//! The waits are polls with a deadline; the clock is read only to check the delivery times.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use strom_client::protocol::ErrorCode;
use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, QueueConfig, QueueConsumer,
};

use support::{Broker, TestDir, now_ms};

/// Longest wait for any condition.
const DEADLINE: Duration = Duration::from_secs(60);
/// How late a delayed record may be handed out (the promise).
const ON_TIME_MS: i64 = 1_000;

/// Sends `(value, deliver_at)` records, interleaved as given, and waits for every ack.
async fn produce(addr: &str, topic: &str, records: &[(String, Option<i64>)]) {
    let producer = Producer::connect(ProducerConfig::new(addr))
        .await
        .expect("producer");
    let mut futures = Vec::new();
    for (i, (v, at)) in records.iter().enumerate() {
        let key = format!("k{i}");
        let mut rec = ProducerRecord::new(topic)
            .key(key.as_bytes())
            .value(v.as_bytes());
        if let Some(at) = at {
            rec = rec.deliver_at(*at);
        }
        futures.push(producer.send_record(rec).await.expect("send"));
    }
    for f in futures {
        f.await.expect("delivered");
    }
    producer.close().await.expect("close");
}

fn member(addr: &str, group: &str, topic: &str) -> QueueConfig {
    let mut c = QueueConfig::new(addr, group, &[topic]);
    c.max_wait = Duration::from_millis(100);
    c
}

/// Takes and acks records until `want` came, noting when each did: value -> arrival (ms).
async fn collect(c: &mut QueueConsumer, want: usize) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = BTreeMap::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} records came: {got:?}",
            got.len()
        );
        for r in c.poll(100).await.expect("poll") {
            let now = now_ms();
            let v =
                String::from_utf8_lossy(r.value().map(|v| &v[..]).unwrap_or_default()).into_owned();
            assert!(got.insert(v.clone(), now).is_none(), "{v} handed out twice");
            c.ack(&r);
        }
        c.flush().await.expect("flush");
    }
    got
}

/// Every record's delivery time was kept: not before it, at most [`ON_TIME_MS`] after.
fn check_on_time(records: &[(String, Option<i64>)], got: &BTreeMap<String, i64>) {
    for (v, at) in records {
        let Some(arrived) = got.get(v) else { continue };
        if let Some(at) = at {
            assert!(*arrived >= *at, "{v} handed out {} ms early", at - arrived);
            assert!(
                *arrived <= at + ON_TIME_MS,
                "{v} handed out {} ms after its time",
                arrived - at
            );
        }
    }
}

async fn delayed_in_describe(addr: &str, group: &str) -> u64 {
    let admin = Admin::connect(ClientConfig::new(addr))
        .await
        .expect("admin");
    let d = admin
        .describe_queue_groups(&[group])
        .await
        .expect("describe");
    d[0].partitions.iter().map(|p| p.delayed).sum()
}

#[tokio::test]
async fn delayed_records_wait_for_their_time_and_others_go_at_once() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "jobs", 2).await;
    // The group exists before the records: its scan meets the delayed ones and skips them.
    let mut worker = QueueConsumer::join(member(&addr, "workers", "jobs"))
        .await
        .expect("join");
    assert!(worker.poll(10).await.expect("poll").is_empty());

    let t0 = now_ms();
    let (soon, later, far) = (t0 + 2_500, t0 + 4_000, t0 + 3_600_000);
    let mut records = Vec::new();
    for i in 0..40 {
        let at = match i % 4 {
            0 => None,
            1 => Some(soon),
            2 => Some(later),
            _ if i % 8 == 3 => Some(far),
            _ => None,
        };
        records.push((format!("r{i}"), at));
    }
    produce(&addr, "jobs", &records).await;
    let far_count = records.iter().filter(|(_, a)| *a == Some(far)).count();
    let due = records.len() - far_count;

    // Consumers outside queue groups see every record at once.
    let mut consumer = Consumer::connect(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::new(&addr)
    })
    .await
    .expect("consumer");
    consumer.assign(&[("jobs", 0), ("jobs", 1)]);
    let mut seen = 0;
    let deadline = Instant::now() + DEADLINE;
    while seen < records.len() {
        assert!(Instant::now() < deadline, "the log shows {seen} records");
        seen += consumer
            .poll(Duration::from_millis(100))
            .await
            .expect("poll")
            .len();
    }
    assert!(
        now_ms() < soon,
        "reading the log took too long to show it does not wait"
    );
    assert_eq!(
        delayed_in_describe(&addr, "workers").await,
        (records.len() - records.iter().filter(|(_, a)| a.is_none()).count()) as u64,
        "describe counts the pending delays"
    );

    let got = collect(&mut worker, due).await;
    check_on_time(&records, &got);
    // The records without a delay did not wait behind the delayed ones.
    for (v, at) in &records {
        if at.is_none() {
            assert!(got[v] < soon, "{v} waited behind delayed records");
        }
    }
    assert!(
        worker.poll(100).await.expect("poll").is_empty(),
        "a record due in an hour was handed out"
    );
    assert_eq!(
        delayed_in_describe(&addr, "workers").await,
        far_count as u64
    );
}

#[tokio::test]
async fn pending_delays_survive_kill_9_and_fire_on_time() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    support::admin_create_topic(&addr, "jobs", 1).await;
    let mut worker = QueueConsumer::join(member(&addr, "before", "jobs"))
        .await
        .expect("join");
    let at = now_ms() + 5_000;
    let records: Vec<(String, Option<i64>)> = (0..20)
        .map(|i| (format!("r{i}"), (i % 2 == 1).then_some(at)))
        .collect();
    produce(&addr, "jobs", &records).await;
    // The immediate ones; the group's scan skips the delayed ones.
    let got = collect(&mut worker, 10).await;
    assert!(
        got.keys()
            .all(|v| records.iter().any(|(r, a)| r == v && a.is_none()))
    );

    broker.kill9();
    let _broker = Broker::start_at(&dir.data(), broker.addr, &[]);
    assert!(now_ms() < at, "the restart took past the delivery time");

    let mut worker = QueueConsumer::join(member(&addr, "before", "jobs"))
        .await
        .expect("rejoin");
    let mut late = QueueConsumer::join(member(&addr, "after", "jobs"))
        .await
        .expect("join a new group");
    let got = collect(&mut worker, 10).await;
    check_on_time(&records, &got);
    let got_late = collect(&mut late, 20).await;
    check_on_time(&records, &got_late);
}

#[tokio::test]
async fn bad_delivery_times_are_refused_and_append_nothing() {
    use strom_client::protocol::messages::*;
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let mut c = broker.client();
    c.create_topic_ok("t", 1, &[]);
    let batch = support::batch_of(&[support::Rec::new(0, "k", "v")]);
    let produce = |deliver_at_ms: Vec<i64>| ProduceRequest {
        acks: Acks::Leader.into(),
        timeout_ms: 0,
        topics: vec![TopicProduceData {
            name: "t".into(),
            partitions: vec![PartitionProduceData {
                partition: 0,
                records: support::concat(&[batch.clone(), batch.clone()]),
                deliver_at_ms,
            }],
        }],
    };
    let far = now_ms() + 91 * 24 * 3600 * 1000;
    for times in [vec![now_ms() + 1_000], vec![0, 0, 0], vec![0, far]] {
        let r = support::produce_body(c.call(produce(times.clone())));
        let p = &r.topics[0].partitions[0];
        assert_eq!(p.error_code(), ErrorCode::InvalidRequest, "{times:?}");
        assert!(p.error_message.is_some());
    }
    assert!(c.fetch_all("t", 0).is_empty(), "a refused produce appended");
    // Times in the past, or 0, are no delay.
    let r = support::produce_body(c.call(produce(vec![0, now_ms() - 5_000])));
    assert_eq!(r.topics[0].partitions[0].error_code(), ErrorCode::None);
    assert_eq!(c.fetch_all("t", 0).len(), 2);
}
