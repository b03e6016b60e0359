//! The load and the checker of issue 17's failure suite (`tests/failover.rs`,
//! and the power-cut test being built): a steady `acks=all` idempotent load through the Rust client that
//! records every acknowledgement, and the check that reads every partition back afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strom_client::{Acks as ClientAcks, Producer, ProducerConfig};
use strom_protocol::ErrorCode;
use strom_protocol::messages::CreatableTopic;

use super::cluster::{Cluster, PATIENCE, eventually};
use super::creatable;

/// Cycles for a test: `STROM_FAILOVER_CYCLES`, else `ci`.
pub fn cycles(ci: usize) -> usize {
    std::env::var("STROM_FAILOVER_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ci)
}

/// Creates `topic` with `partitions` partitions on all three brokers.
pub fn create(cluster: &Cluster, topic: &str, partitions: i32) {
    create_with(cluster, topic, partitions, &[]);
}

/// A running broker's id.
pub fn running(cluster: &Cluster) -> Option<usize> {
    (1..=3).find(|b| cluster.brokers[b - 1].is_some())
}

/// Waits until every partition of `topic` has all three replicas in its ISR.
pub fn full_isr(cluster: &Cluster, topic: &str) {
    let started = Instant::now();
    loop {
        let asked = running(cluster).expect("a running broker");
        let t = cluster.broker(asked).client().topic_metadata(topic);
        if t.partitions
            .iter()
            .all(|p| p.isr_nodes.len() == 3 && p.leader_id >= 1)
        {
            return;
        }
        if started.elapsed() > PATIENCE {
            dump(cluster, topic);
            panic!("not every replica back in every ISR within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One record the producer got an acknowledgement for.
#[derive(Debug, Clone)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: String,
    pub sent: Instant,
    pub acked: Instant,
}

/// Keyed records produced with `acks=all` and idempotence through the Rust client (which
/// follows leader changes) on a thread of their own, until [`Load::finish`].
pub struct Load {
    topic: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    thread: JoinHandle<Vec<String>>,
}

impl Load {
    /// Starts the load and returns once every one of `partitions` has had a record
    /// acknowledged.
    pub fn start(cluster: &Cluster, topic: &'static str, partitions: i32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let thread = produce_until(
            cluster.native_bootstrap(),
            topic,
            stop.clone(),
            acked.clone(),
        );
        let load = Load {
            topic,
            stop,
            acked,
            thread,
        };
        eventually("the load running on every partition", || {
            let acked = load.acked.lock().expect("acked");
            (0..partitions)
                .all(|p| acked.iter().any(|a| a.partition == p))
                .then_some(())
        });
        load
    }

    /// When the first record sent after `since` was acknowledged on `partition`; after
    /// [`PATIENCE`], fails with what the cluster looked like.
    pub fn first_ack_after(&self, cluster: &Cluster, partition: i32, since: Instant) -> Instant {
        loop {
            let found = {
                let acked = self.acked.lock().expect("acked");
                acked
                    .iter()
                    .rev()
                    .take_while(|a| a.acked > since)
                    .filter(|a| a.partition == partition && a.sent > since)
                    .map(|a| a.acked)
                    .min()
            };
            if let Some(at) = found {
                return at;
            }
            if since.elapsed() > PATIENCE {
                dump(cluster, self.topic);
                panic!("nothing acknowledged on partition {partition} within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the load, waits for every delivery, asserts none failed for good (only retriable
    /// errors were met), and returns what was acknowledged.
    pub fn finish(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::Relaxed);
        let failed = self.thread.join().expect("producer thread");
        assert!(
            failed.is_empty(),
            "records that failed for good: {failed:?}"
        );
        let acked = self.acked.lock().expect("acked").clone();
        assert!(!acked.is_empty());
        acked
    }
}

/// The producer thread of a [`Load`]; returns the records that failed for good.
pub fn produce_until(
    bootstrap: String,
    topic: &'static str,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        // The client's own account of retries and epoch bumps, for a failure report.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("STROM_TEST_CLIENT_LOG").unwrap_or_else(|_| "warn".to_string()),
            )
            .with_writer(std::io::stderr)
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let mut config = ProducerConfig::new(bootstrap);
            config.acks = ClientAcks::All;
            config.linger = Duration::from_millis(2);
            let producer = Producer::connect(config).await.expect("producer");
            let failed = Arc::new(Mutex::new(Vec::new()));
            let mut waiting = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", i % 32);
                let value = format!("v{i}");
                let sent = Instant::now();
                let delivery = producer
                    .send(topic, Some(key.as_bytes()), Some(value.as_bytes()), &[])
                    .await
                    .expect("send");
                let (acked, failed) = (acked.clone(), failed.clone());
                waiting.push(tokio::spawn(async move {
                    match delivery.await {
                        Ok(m) => acked.lock().expect("acked").push(Acked {
                            partition: m.partition,
                            offset: m.offset,
                            key,
                            value,
                            sent,
                            acked: Instant::now(),
                        }),
                        Err(e) => failed.lock().expect("failed").push(format!("{value}: {e}")),
                    }
                }));
                i += 1;
                // A steady trickle rather than a flood: the brokers share 2 cores with the test.
                if i.is_multiple_of(20) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            producer.flush().await.expect("flush");
            for w in waiting {
                w.await.expect("delivery task");
            }
            producer.close().await.expect("close");
            failed.lock().expect("failed").clone()
        })
    })
}

/// Every partition's leader, and the last lines of each broker's log, for a failure report.
pub fn dump(cluster: &Cluster, topic: &str) {
    for b in cluster.brokers.iter().flatten() {
        let t = b.client().topic_metadata(topic);
        eprintln!("broker at {}: {:?}", b.addr, t.partitions);
    }
    for (i, dir) in cluster.dirs.iter().enumerate() {
        // The newest stderr file beside the data directory: this run's.
        let parent = dir.data().parent().map(std::path::Path::to_path_buf);
        let newest = parent
            .and_then(|p| std::fs::read_dir(p).ok())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "stderr"))
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        let log = newest
            .and_then(|e| std::fs::read_to_string(e.path()).ok())
            .unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("openraft") && !l.contains("connection "))
            .collect();
        let from = lines.len().saturating_sub(60);
        eprintln!("--- broker {} ---\n{}", i + 1, lines[from..].join("\n"));
    }
}

/// Reads every partition back from its leader once its HW covers what was acknowledged, and
/// checks the checker's rules: each acknowledged record at its offset, no record twice, each
/// key's records in the order sent.
pub fn check_acknowledged(cluster: &Cluster, topic: &str, partitions: i32, acked: &[Acked]) {
    for partition in 0..partitions {
        let mine: Vec<&Acked> = acked.iter().filter(|a| a.partition == partition).collect();
        let end = mine.iter().map(|a| a.offset + 1).max().unwrap_or(0);
        // Read once leadership has settled on the preferred replica (it moves back there after
        // a restart, and a read racing that move would be refused).
        let leader = eventually("a leader whose HW covers the acknowledged", || {
            let asked = running(cluster)?;
            let t = cluster.broker(asked).client().topic_metadata(topic);
            let p = t.partitions[partition as usize].clone();
            let leader = usize::try_from(p.leader_id).ok().filter(|l| *l >= 1)?;
            if p.replica_nodes.first() != Some(&p.leader_id) || p.isr_nodes.len() < 3 {
                return None;
            }
            let hw = cluster
                .broker(leader)
                .client()
                .fetch(topic, partition, 0, 0, 0, 0)
                .high_watermark;
            (hw >= end).then_some(leader)
        });
        let log = cluster.broker(leader).client().fetch_all(topic, partition);
        let at: std::collections::BTreeMap<i64, (String, String)> = log
            .iter()
            .map(|r| {
                let text = |b: &Option<Vec<u8>>| {
                    String::from_utf8(b.clone().unwrap_or_default()).expect("utf-8")
                };
                (r.offset, (text(&r.key), text(&r.value)))
            })
            .collect();
        for a in &mine {
            assert_eq!(
                at.get(&a.offset),
                Some(&(a.key.clone(), a.value.clone())),
                "partition {partition}: acknowledged {a:?}"
            );
        }
        // Each record once (idempotence across failovers), each key's in the order sent.
        let mut values = std::collections::BTreeSet::new();
        let mut last_of_key: std::collections::BTreeMap<&str, u64> = Default::default();
        for (key, value) in at.values() {
            assert!(values.insert(value.clone()), "{value} stored twice");
            let n: u64 = value[1..].parse().expect("a number");
            if let Some(prev) = last_of_key.insert(key, n) {
                assert!(prev < n, "{key}: {prev} stored before {n}");
            }
        }
    }
}

/// Prints p50, p99 and the maximum of `samples`.
pub fn report(what: &str, mut samples: Vec<Duration>, acked: usize) {
    samples.sort();
    let p = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}: p50 {:?}, p99 {:?}, max {:?} over {} samples ({acked} records acknowledged)",
        p(0.5),
        p(0.99),
        samples.last().expect("a sample"),
        samples.len(),
    );
}

/// As [`create`], with topic settings.
pub fn create_with(cluster: &Cluster, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let r = cluster.broker(1).client().create_topics(
        vec![CreatableTopic {
            replication_factor: Some(3),
            ..creatable(topic, partitions, configs)
        }],
        false,
    );
    assert_eq!(r.topics[0].error_code(), ErrorCode::None, "{r:?}");
}
