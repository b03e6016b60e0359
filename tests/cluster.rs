//! Several `strom serve` processes forming one cluster over loopback: the metadata quorum forms,
//! partitions spread over the brokers, every broker answers Metadata with the same leaders and
//! brokers, Produce, Fetch and ListOffsets to a broker that does not lead a partition answer
//! NOT_LEADER_OR_FOLLOWER, and librdkafka produces (idempotently) and consumes in a group
//! through any broker's address. Killing the active controller (SIGKILL) elects another, and
//! topic creation works again; the dead broker's partitions go offline (nothing replicates them
//! yet) until it returns.
//!
//! Controller ports are taken from the OS (bound to port 0, then released) just before the
//! brokers start; every other port is the broker's own pick.

#[path = "support/kafka.rs"]
mod kafka;
mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, MetadataRequest, MetadataResponse};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use kafka::*;
use support::*;

/// How long the cluster may take to agree on something after a failure.
const PATIENCE: Duration = Duration::from_secs(30);

/// Brokers first: fields drop in order, and a broker's log must outlive it.
struct Cluster {
    brokers: Vec<Option<Broker>>,
    voters: String,
    dirs: Vec<TestDir>,
}

impl Cluster {
    /// Three voters, started at once (each waits for a quorum before it listens).
    fn start() -> Cluster {
        let ports: Vec<u16> = (0..3)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
                l.local_addr().expect("its address").port()
            })
            .collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@127.0.0.1:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dirs: (0..3).map(|_| TestDir::new()).collect(),
            voters,
            brokers: vec![None, None, None],
        };
        let started: Vec<_> = (1..=3).map(|id| cluster.spawn(id)).collect();
        for (i, handle) in started.into_iter().enumerate() {
            cluster.brokers[i] = Some(handle.join().expect("broker start"));
        }
        cluster
    }

    fn spawn(&self, id: usize) -> thread::JoinHandle<Broker> {
        let data = self.dirs[id - 1].data();
        let voters = self.voters.clone();
        thread::spawn(move || {
            let id = id.to_string();
            Broker::start(
                &data,
                &[
                    "--node-id",
                    &id,
                    "--controller-voters",
                    &voters,
                    "--http-listen",
                    "none",
                ],
            )
        })
    }

    fn broker(&self, id: usize) -> &Broker {
        self.brokers[id - 1].as_ref().expect("a running broker")
    }

    fn kafka(&self, id: usize) -> KafkaClient {
        KafkaClient::to(self.broker(id))
    }

    fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .flatten()
            .map(|b| b.kafka_addr.expect("kafka listener").to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn metadata(c: &mut KafkaClient, topic: &str) -> MetadataResponse {
    c.call(
        12,
        &MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
            ])),
    )
}

/// Each partition's leader, as one broker's Metadata says.
fn leaders(r: &MetadataResponse) -> Vec<i32> {
    let mut partitions: Vec<_> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    partitions.sort();
    partitions.into_iter().map(|(_, leader)| leader).collect()
}

/// Produces one record to the partition's leader, retrying LEADER_NOT_AVAILABLE as Kafka
/// clients do: CreateTopics is answered once the topic is committed, and each leader opens its
/// partitions when it applies that entry, a moment later.
fn produce_at_leader(leader: &mut KafkaClient, partition: i32) -> i64 {
    let started = Instant::now();
    loop {
        let p = leader.produce(9, 1, "orders", partition, record_batch("y"));
        if p.error_code != code::LEADER_NOT_AVAILABLE || started.elapsed() > PATIENCE {
            assert_eq!(
                p.error_code,
                code::NONE,
                "produce to orders/{partition}: {p:?}"
            );
            return p.base_offset;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn record_batch(tag: &str) -> bytes::Bytes {
    batch_of(&[Rec {
        offset: -1,
        timestamp: now_ms(),
        key: Some(tag.as_bytes().to_vec()),
        value: Some(tag.as_bytes().to_vec()),
        headers: vec![],
    }])
}

#[test]
fn three_brokers_spread_partitions_and_route_clients_to_leaders() {
    let cluster = Cluster::start();
    let mut c1 = cluster.kafka(1);
    c1.create_topic("orders", 6);

    // Every broker describes the same cluster: three brokers at their Kafka addresses, one
    // controller, and the same leader for each partition, two partitions per broker.
    let first = metadata(&mut c1, "orders");
    let want_leaders = leaders(&first);
    let mut per_broker = BTreeMap::new();
    for leader in &want_leaders {
        *per_broker.entry(*leader).or_insert(0) += 1;
    }
    assert_eq!(
        per_broker,
        BTreeMap::from([(1, 2), (2, 2), (3, 2)]),
        "{first:?}"
    );
    for id in 1..=3 {
        let r = metadata(&mut cluster.kafka(id), "orders");
        assert_eq!(leaders(&r), want_leaders, "broker {id}'s view");
        assert!((1..=3).contains(&r.controller_id.0), "{r:?}");
        let mut listed: Vec<(i32, u16)> = r
            .brokers
            .iter()
            .map(|b| (b.node_id.0, u16::try_from(b.port).expect("a port")))
            .collect();
        listed.sort();
        let expected: Vec<(i32, u16)> = (1..=3)
            .map(|b| {
                (
                    b as i32,
                    cluster.broker(b).kafka_addr.expect("kafka").port(),
                )
            })
            .collect();
        assert_eq!(listed, expected);
    }

    // Produce and fetch go to the leader; any other broker says who to ask.
    for (partition, leader) in want_leaders.iter().enumerate() {
        let partition = partition as i32;
        let other = if *leader == 1 { 2 } else { 1 };
        let refused = cluster
            .kafka(other)
            .produce(9, 1, "orders", partition, record_batch("x"));
        assert_eq!(
            refused.error_code,
            code::NOT_LEADER_OR_FOLLOWER,
            "{refused:?}"
        );
        assert_eq!(
            produce_at_leader(&mut cluster.kafka(*leader as usize), partition),
            0
        );
        let fetched = cluster.kafka(other).fetch(12, "orders", partition, 0, 1, 0);
        assert_eq!(
            fetched.error_code,
            code::NOT_LEADER_OR_FOLLOWER,
            "{fetched:?}"
        );
        let latest = |id: usize| {
            let r = cluster.kafka(id).call(
                7,
                &ListOffsetsRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        ListOffsetsTopic::default()
                            .with_name(topic_name("orders"))
                            .with_partitions(vec![
                                ListOffsetsPartition::default()
                                    .with_partition_index(partition)
                                    .with_timestamp(-1),
                            ]),
                    ]),
            );
            r.topics[0].partitions[0].clone()
        };
        assert_eq!(latest(other).error_code, code::NOT_LEADER_OR_FOLLOWER);
        let at_leader = latest(*leader as usize);
        assert_eq!((at_leader.error_code, at_leader.offset), (code::NONE, 1));
    }

    // librdkafka through all three addresses: an idempotent producer (producer ids are
    // unique across the brokers) and a consumer group read everything.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..60 {
        let key = format!("k{i}");
        producer
            .send(BaseRecord::to("orders").key(&key).payload(&key))
            .expect("queued");
    }
    producer.flush(PATIENCE).expect("all 60 acknowledged");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "readers")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&["orders"]).expect("subscribe");
    let mut keys = std::collections::BTreeSet::new();
    let started = Instant::now();
    while keys.len() < 66 && started.elapsed() < PATIENCE {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("a record");
            keys.insert((m.partition(), m.offset()));
        }
    }
    assert_eq!(
        keys.len(),
        66,
        "6 records produced by partition, 60 by librdkafka"
    );
}

#[test]
fn killing_the_active_controller_elects_another_and_offlines_its_partitions() {
    let mut cluster = Cluster::start();
    let mut c1 = cluster.kafka(1);
    c1.create_topic("events", 3);
    let before = metadata(&mut c1, "events");
    let victim = before.controller_id.0 as usize;
    assert!((1..=3).contains(&victim), "{before:?}");
    let victim_partitions: Vec<usize> = leaders(&before)
        .iter()
        .enumerate()
        .filter(|(_, l)| **l == victim as i32)
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        victim_partitions.len(),
        1,
        "one partition per broker: {before:?}"
    );

    let killed = Instant::now();
    drop(cluster.brokers[victim - 1].take()); // SIGKILL
    let survivor = if victim == 1 { 2 } else { 1 };
    let mut c = cluster.kafka(survivor);
    // A new controller: topic creation works again.
    let created = loop {
        let r = c.call(
            7,
            &kafka_protocol::messages::CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![
                    kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                        .with_name(topic_name("after"))
                        .with_num_partitions(2)
                        .with_replication_factor(1),
                ]),
        );
        if r.topics[0].error_code == code::NONE {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < PATIENCE,
            "no controller after the kill: {r:?}"
        );
    };
    eprintln!("kill -9 of the active controller to a created topic: {created:?}");

    // The victim's partition goes offline once its session runs out.
    loop {
        let r = metadata(&mut c, "events");
        let p = &r.topics[0].partitions[victim_partitions[0]];
        if p.leader_id.0 == -1 {
            assert_eq!(p.error_code, code::LEADER_NOT_AVAILABLE, "{p:?}");
            break;
        }
        if killed.elapsed() > PATIENCE {
            for b in cluster.brokers.iter().flatten() {
                eprintln!(
                    "{}",
                    std::fs::read_to_string(&b.log_path).unwrap_or_default()
                );
            }
            panic!("partition still led by the dead broker: {p:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }

    // It comes back, and leads its partition again.
    let returned = cluster.spawn(victim).join().expect("restart");
    cluster.brokers[victim - 1] = Some(returned);
    loop {
        let r = metadata(&mut c, "events");
        if leaders(&r) == leaders(&before) {
            break;
        }
        assert!(
            killed.elapsed() < PATIENCE * 2,
            "the partition never came back: {r:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}
