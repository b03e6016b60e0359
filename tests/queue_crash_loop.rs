//! The queue groups' kill -9 loop: workers acking, nacking and rejecting while the broker is
//! killed with SIGKILL at random moments (in fetches, acknowledgements, lease expiries, backoff
//! ends and dead-letter writes) and restarted on the same data directory and address.
//!
//! Each record's fate is fixed by its number: most are acked at once, some fail once and are
//! acked at the second attempt, some are rejected, some fail every time. A sixth of them are
//! produced with a delivery time 0.3 to 4.3 s ahead, so kills land while delays are pending and
//! as they fire too. Checked at the end:
//!
//! * no delayed record was handed out before its delivery time, whatever the kills;
//! * every record ends acked (an ack the broker confirmed) or in the dead-letter topic, never
//!   both, and none is in the dead-letter topic twice;
//! * the attempts a record was handed out with strictly increase (a crash never hands out the
//!   same attempt twice or a lower one: acquisitions are durable before the records are seen)
//!   and never pass `max.attempts`;
//! * records that fail every time are in the dead-letter topic, with `max.attempts` attempts;
//! * `__queue_state` was compacted along the way (every 40 records), kills landing in
//!   compactions too;
//! * then a redrive of the dead letters, killed five times: each arrives in its target once.
//!
//! `STROM_QUEUE_CRASH_CYCLES=N` sets the number of kills (default 12), `STROM_QUEUE_CRASH_SEED=N`
//! replays the kill delays.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strom_client::{
    Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer,
    ProducerConfig, ProducerRecord, QueueConfig, QueueConsumer,
};

use support::{Broker, TestDir, now_ms};

const RECORDS: usize = 600;
const WORKERS: usize = 3;
const MAX_ATTEMPTS: u32 = 3;
const DEADLINE: Duration = Duration::from_secs(90);
/// `__queue_state` is compacted every few dozen records, so kills land in compactions too.
const BROKER_ARGS: &[&str] = &["--queue-state-compact-records", "40"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ack,
    FailOnceThenAck,
    Reject,
    AlwaysFail,
}

/// Record `i`'s delay from the start of the produce, if it has one.
fn delay_ms(i: usize) -> Option<i64> {
    (i % 6 == 2).then(|| 300 + (i as i64 * 37) % 4_000)
}

fn fate(i: usize) -> Fate {
    match i % 20 {
        0 => Fate::AlwaysFail,
        1 => Fate::Reject,
        n if n % 7 == 0 => Fate::FailOnceThenAck,
        _ => Fate::Ack,
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// Per record, the attempts it was handed out with, in order.
    attempts: BTreeMap<usize, Vec<u32>>,
    /// Records whose ack the broker confirmed.
    acked: BTreeSet<usize>,
    /// Records whose ack went out in a request that failed (the broker was killed): applied or
    /// not, nobody knows; if not, the record comes back after its lease.
    maybe_acked: BTreeSet<usize>,
    errors: Vec<String>,
}

fn lock(s: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator for the kill delays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

async fn worker(addr: String, id: usize, t0: i64, seen: Arc<Mutex<Seen>>, stop: Arc<AtomicBool>) {
    let mut config = QueueConfig::new(&addr, "crashers", &["work"]);
    config.member_id = Some(format!("worker-{id}"));
    config.max_wait = Duration::from_millis(100);
    config.client.request_timeout = Duration::from_secs(5);
    config.client.connect_timeout = Duration::from_secs(2);
    for (k, v) in [
        ("max.attempts", "3"),
        ("backoff", "list:50ms"),
        ("lease.ms", "1500"),
    ] {
        config = config.setting(k, v);
    }
    let mut member = None;
    while !stop.load(Ordering::Relaxed) {
        let m = match member.as_mut() {
            Some(m) => m,
            None => match QueueConsumer::join(config.clone()).await {
                Ok(m) => member.insert(m),
                Err(_) => {
                    // The broker is down: try again shortly (a retry backoff, not a wait on state).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let records = match m.poll(25).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut answered = Vec::new();
        for r in records {
            let v =
                String::from_utf8_lossy(r.value().map(|v| &v[..]).unwrap_or_default()).into_owned();
            let Some(i) = v.strip_prefix("rec-").and_then(|n| n.parse::<usize>().ok()) else {
                lock(&seen).errors.push(format!("unexpected value {v:?}"));
                continue;
            };
            if let Some(d) = delay_ms(i)
                && now_ms() < t0 + d
            {
                lock(&seen).errors.push(format!(
                    "rec-{i} handed out {} ms before its delivery time",
                    t0 + d - now_ms()
                ));
            }
            lock(&seen).attempts.entry(i).or_default().push(r.attempt());
            match (fate(i), r.attempt()) {
                (Fate::Ack, _) | (Fate::FailOnceThenAck, 2..) => {
                    m.ack(&r);
                    answered.push((i, r.partition(), r.offset(), r.attempt()));
                }
                (Fate::FailOnceThenAck, _) | (Fate::AlwaysFail, _) => {
                    m.nack(&r, None, Some("failed on purpose"));
                }
                (Fate::Reject, _) => m.reject(&r, Some("rejected on purpose")),
            }
        }
        if answered.is_empty() && m.pending_answers() == 0 {
            continue;
        }
        match m.flush().await {
            Ok(()) => {
                // A refusal names the attempt it was for: one of an earlier answer (a nack, or
                // an ack sent before a restart) says nothing about this round's acks.
                let refused: BTreeSet<(i32, i64, u32)> = m
                    .take_refused()
                    .iter()
                    .filter(|r| r.was_ack)
                    .flat_map(|r| {
                        (r.first_offset..=r.last_offset)
                            .map(move |o| (r.tp.partition, o, r.attempt))
                    })
                    .collect();
                let mut s = lock(&seen);
                for (i, p, o, attempt) in answered {
                    if !refused.contains(&(p, o, attempt)) {
                        s.acked.insert(i);
                    }
                }
            }
            Err(_) => {
                // Unknown whether the answers took effect. They stay queued and go again with
                // the next request, where a repeat of an applied ack is refused.
                lock(&seen)
                    .maybe_acked
                    .extend(answered.iter().map(|(i, _, _, _)| *i));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Whether the broker says every record of the group is finished: each partition's queue
/// start is at its log end, nothing in flight, nothing waiting for the dead-letter topic.
fn finished(broker: &Broker) -> bool {
    use strom_client::protocol::messages::{DescribeQueueGroupsRequest, response};
    let Ok(mut c) = support::Client::try_connect(broker.addr) else {
        return false;
    };
    let r = c.call(DescribeQueueGroupsRequest {
        groups: vec!["crashers".into()],
    });
    let Some(response::Body::DescribeQueueGroups(d)) = r.body else {
        return false;
    };
    d.groups.first().is_some_and(|g| {
        !g.partitions.is_empty()
            && g.partitions.iter().all(|p| {
                p.start_offset == p.log_end_offset && p.in_flight == 0 && p.dead_lettering == 0
            })
    })
}

#[tokio::test]
async fn queue_state_survives_kill_9_at_random_moments() {
    let cycles: usize = std::env::var("STROM_QUEUE_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut seed: u64 = std::env::var("STROM_QUEUE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    println!("STROM_QUEUE_CRASH_SEED={seed}");
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), BROKER_ARGS);
    let addr = broker.addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&addr))
        .await
        .expect("admin");
    admin
        .create_topic(NewTopic::new("work").partitions(3))
        .await
        .expect("create");
    admin
        .create_topic(NewTopic::new("work.dlq").partitions(1))
        .await
        .expect("create the dead-letter topic");
    let producer = Producer::connect(ProducerConfig::new(&addr))
        .await
        .expect("producer");
    let mut pending = Vec::new();
    let t0 = now_ms();
    for i in 0..RECORDS {
        let key = format!("k{i}");
        let value = format!("rec-{i}");
        let mut record = ProducerRecord::new("work")
            .key(key.as_bytes())
            .value(value.as_bytes());
        if let Some(d) = delay_ms(i) {
            record = record.deliver_at(t0 + d);
        }
        pending.push(producer.send_record(record).await.expect("send"));
    }
    for p in pending {
        p.await.expect("delivered");
    }
    producer.close().await.expect("close producer");

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(addr.clone(), id, t0, seen.clone(), stop.clone())))
        .collect();

    // Kills spread over the work: each after the next share of the ~720 deliveries, plus a
    // random few ms so that it lands anywhere in a request.
    let deliveries = |s: &Seen| s.attempts.values().map(Vec::len).sum::<usize>();
    for k in 0..cycles {
        let target = (k + 1) * 700 / (cycles + 1);
        let deadline = Instant::now() + DEADLINE;
        while deliveries(&lock(&seen)) < target {
            assert!(
                Instant::now() < deadline,
                "no progress towards {target} deliveries"
            );
            // Polling the workers' progress counter, not the broker.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(next(&mut seed) % 30)).await;
        broker.kill9();
        broker = Broker::start_at(&dir.data(), broker.addr, BROKER_ARGS);
    }

    // Let the workers finish everything, then read the dead-letter topic whole.
    let mut dlq = Consumer::connect(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::new(&addr)
    })
    .await
    .expect("consumer");
    dlq.assign(&[("work.dlq", 0)]);
    let mut dead: BTreeMap<usize, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    // Once the broker says every record is finished, the dead-letter partition is complete:
    // read it up to its end.
    let mut dlq_end: Option<usize> = None;
    loop {
        for r in dlq
            .poll(Duration::from_millis(100))
            .await
            .expect("read the dlq")
        {
            let v =
                String::from_utf8_lossy(r.value().map(|v| &v[..]).unwrap_or_default()).into_owned();
            let i: usize = v
                .strip_prefix("rec-")
                .and_then(|n| n.parse().ok())
                .expect("a record");
            let headers = r
                .headers()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect();
            dead.entry(i).or_default().push(headers);
        }
        let read: usize = dead.values().map(Vec::len).sum();
        if dlq_end.is_some_and(|end| read >= end) {
            break;
        }
        if dlq_end.is_none() && finished(&broker) {
            let end = broker.client().offset_of(
                "work.dlq",
                0,
                strom_client::protocol::messages::OffsetSpec::Latest,
                -1,
            );
            dlq_end = Some(usize::try_from(end).expect("an offset"));
        }
        if Instant::now() > deadline {
            let s = lock(&seen);
            let missing: Vec<usize> = (0..RECORDS)
                .filter(|i| {
                    !s.acked.contains(i) && !dead.contains_key(i) && !s.maybe_acked.contains(i)
                })
                .take(20)
                .collect();
            panic!(
                "records neither acked nor dead-lettered after {cycles} kills: {missing:?} (attempts: {:?})\n--- broker stderr ---\n{}",
                missing
                    .iter()
                    .map(|i| s.attempts.get(i))
                    .collect::<Vec<_>>(),
                support::tail(&broker.log_path)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    {
        let s = lock(&seen);
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        for i in 0..RECORDS {
            assert!(
                s.acked.contains(&i) || dead.contains_key(&i) || s.maybe_acked.contains(&i),
                "rec-{i} ended neither acked nor dead-lettered; attempts {:?}",
                s.attempts.get(&i)
            );
        }
        for (i, copies) in &dead {
            assert_eq!(
                copies.len(),
                1,
                "rec-{i} is in the dead-letter topic {} times",
                copies.len()
            );
            assert!(!s.acked.contains(i), "rec-{i} was acked and dead-lettered");
            if fate(*i) == Fate::Ack {
                // Only if crashes kept its acks from landing until its last lease ran out.
                assert_eq!(
                    copies[0]["strom.dlq.reason"], "lease-expired",
                    "rec-{i}: {:?}",
                    copies[0]
                );
            }
        }
        for (i, attempts) in &s.attempts {
            assert!(
                attempts.windows(2).all(|w| w[0] < w[1]),
                "rec-{i} was handed out with attempts {attempts:?}"
            );
            assert!(
                attempts.iter().all(|a| *a >= 1 && *a <= MAX_ATTEMPTS),
                "rec-{i}: {attempts:?}"
            );
        }
        for i in (0..RECORDS).filter(|i| fate(*i) == Fate::AlwaysFail) {
            let copy = &dead
                .get(&i)
                .unwrap_or_else(|| panic!("rec-{i} always fails; not dead-lettered"))[0];
            assert_eq!(
                copy["strom.dlq.attempts"],
                MAX_ATTEMPTS.to_string(),
                "rec-{i}: {copy:?}"
            );
        }
        for i in (0..RECORDS).filter(|i| fate(*i) == Fate::Reject) {
            // Rejected at its first attempt, unless a crash lost that answer and the lease ran out.
            assert!(
                dead.contains_key(&i),
                "rec-{i} was rejected; not dead-lettered"
            );
        }
        // Compaction ran: the start of the group's state partition (one of the 16) moved.
        let state_start = (0..16)
            .map(|p| {
                broker.client().offset_of(
                    "__queue_state",
                    p,
                    strom_client::protocol::messages::OffsetSpec::Earliest,
                    -1,
                )
            })
            .max()
            .unwrap_or(0);
        assert!(state_start > 0, "__queue_state was never compacted");
        println!(
            "{cycles} kills: {} acked, {} dead-lettered, {} deliveries, state log from {state_start}",
            s.acked.len(),
            dead.len(),
            s.attempts.values().map(Vec::len).sum::<usize>()
        );
    }

    // Then a redrive of the dead letters to a topic of its own, killed at random moments too:
    // every dead letter arrives there once.
    let admin = Admin::connect(ClientConfig::new(&addr))
        .await
        .expect("admin");
    admin
        .create_topic(NewTopic::new("work.again").partitions(1))
        .await
        .expect("create the redrive target");
    let started = admin
        .redrive("work.dlq", Some("work.again"), 40)
        .await
        .expect("start the redrive");
    assert_eq!(started.remaining, dead.len() as u64);
    let mut kills = 0;
    let deadline = Instant::now() + DEADLINE;
    loop {
        tokio::time::sleep(Duration::from_millis(20 + next(&mut seed) % 60)).await;
        let status = match Admin::connect(ClientConfig::new(&addr)).await {
            Ok(a) => a.redrive_status("work.dlq").await.ok().flatten(),
            Err(_) => None,
        };
        if status.as_ref().is_some_and(|s| s.done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the redrive did not finish: {status:?}"
        );
        if kills < 5 {
            broker.kill9();
            broker = Broker::start_at(&dir.data(), broker.addr, BROKER_ARGS);
            kills += 1;
        }
    }
    let mut again = Consumer::connect(ConsumerConfig {
        auto_offset_reset: AutoOffsetReset::Earliest,
        ..ConsumerConfig::new(&addr)
    })
    .await
    .expect("consumer");
    again.assign(&[("work.again", 0)]);
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + DEADLINE;
    while sources.values().sum::<usize>() < dead.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} redriven records",
            sources.len(),
            dead.len()
        );
        for r in again.poll(Duration::from_millis(100)).await.expect("read") {
            let source = r
                .headers()
                .find(|h| h.key == "strom.redrive.source")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("a redrive source");
            *sources.entry(source).or_default() += 1;
        }
    }
    assert!(
        again
            .poll(Duration::from_millis(300))
            .await
            .expect("read")
            .is_empty(),
        "more copies"
    );
    assert_eq!(sources.len(), dead.len());
    assert!(
        sources.values().all(|n| *n == 1),
        "a dead letter was redriven twice: {sources:?}"
    );
    println!("redrive: {} records, {kills} kills", dead.len());
}
