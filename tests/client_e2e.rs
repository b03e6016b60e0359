//! The Rust client against a real broker: a keyed, idempotent producer with several requests in
//! flight keeps every key's order and writes every record exactly once, even when the broker is
//! killed and restarted in the middle of the stream; a consumer reads it all back.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer,
    ProducerConfig,
};

use support::*;

const RECORDS: usize = 100_000;
const KEYS: usize = 1_000;
const PARTITIONS: i32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_records_survive_a_broker_restart_in_order_exactly_once() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr))
        .await
        .expect("admin");
    admin
        .create_topic(NewTopic::new("orders").partitions(PARTITIONS))
        .await
        .expect("create");

    let mut config = ProducerConfig::new(&addr);
    config.max_in_flight = 5;
    config.linger = Duration::from_millis(2);
    let producer = Producer::connect(config).await.expect("producer");
    let mut deliveries = Vec::with_capacity(RECORDS);
    for i in 0..RECORDS {
        if i == RECORDS / 2 {
            // Kill the broker mid-stream and bring it back on the same address: in-flight
            // batches fail, the producer retries them in order, the broker drops duplicates.
            broker.kill9();
            broker = Broker::start(&dir.data(), &["--listen", &addr]);
        }
        let key = format!("key-{}", i % KEYS);
        let value = format!("{i}");
        let d = producer
            .send("orders", Some(key.as_bytes()), Some(value.as_bytes()), &[])
            .await
            .expect("send");
        deliveries.push(d);
    }
    producer.flush().await.expect("flush");
    let mut acked: BTreeMap<(i32, i64), usize> = BTreeMap::new();
    for (i, d) in deliveries.into_iter().enumerate() {
        let m = d.await.expect("every record is delivered");
        assert!(
            acked.insert((m.partition, m.offset), i).is_none(),
            "two records at one offset"
        );
    }
    producer.close().await.expect("close");

    // Read everything back.
    let mut config = ConsumerConfig::new(&addr);
    config.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut consumer = Consumer::connect(config).await.expect("consumer");
    let assignment: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| ("orders", p)).collect();
    consumer.assign(&assignment);
    consumer.seek_to_beginning(&assignment).await.expect("seek");
    let mut seen: Vec<(i32, i64, String, usize)> = Vec::with_capacity(RECORDS);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < RECORDS {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} records came back",
            seen.len()
        );
        for r in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            let key = String::from_utf8(r.key().expect("key").to_vec()).expect("utf-8");
            let i: usize = std::str::from_utf8(r.value().expect("value"))
                .expect("utf-8")
                .parse()
                .expect("a number");
            seen.push((r.partition(), r.offset(), key, i));
        }
    }
    assert_eq!(seen.len(), RECORDS, "no duplicates");
    let sent: BTreeSet<usize> = seen.iter().map(|s| s.3).collect();
    assert_eq!(sent.len(), RECORDS, "every record exactly once");
    // Each record is where its acknowledgement said.
    for (p, o, _, i) in &seen {
        assert_eq!(acked.get(&(*p, *o)), Some(i), "record {i} at {p}/{o}");
    }
    // Each key lives in one partition, in send order.
    let mut by_key: BTreeMap<&str, (i32, Vec<usize>)> = BTreeMap::new();
    let mut ordered = seen.clone();
    ordered.sort_by_key(|s| (s.0, s.1));
    for (p, _, key, i) in &ordered {
        let e = by_key.entry(key).or_insert((*p, Vec::new()));
        assert_eq!(e.0, *p, "{key} is in two partitions");
        e.1.push(*i);
    }
    assert_eq!(by_key.len(), KEYS);
    for (key, (_, is)) in &by_key {
        assert!(
            is.windows(2).all(|w| w[0] < w[1]),
            "{key} out of send order"
        );
    }
}
