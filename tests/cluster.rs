//! Several `strom serve` processes forming one cluster over loopback: the metadata quorum forms,
//! partitions spread over the brokers, every broker answers Metadata with the same leaders and
//! brokers, Produce, Fetch and ListOffsets to a broker that does not lead a partition answer
//! NOT_LEADER_OR_FOLLOWER, and librdkafka produces (idempotently) and consumes in a group
//! through any broker's address. Killing the active controller (SIGKILL) elects another, and
//! topic creation works again; the dead broker's partitions go offline (a factor of 1 replicates
//! nothing) until it returns.
//!
//! The cluster itself is `support::cluster`.

#[path = "support/kafka.rs"]
mod kafka;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
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
use support::cluster::{Cluster, PATIENCE, eventually};
use support::*;

/// A Kafka protocol client to broker `id`.
trait KafkaOf {
    fn kafka(&self, id: usize) -> KafkaClient;
}

impl KafkaOf for Cluster {
    fn kafka(&self, id: usize) -> KafkaClient {
        KafkaClient::to(self.broker(id))
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
        // CreateTopics is answered once the asked broker applied it; the others follow the
        // metadata log on their own time (Kafka clients retry an unknown topic).
        let mut c = cluster.kafka(id);
        let r = eventually(&format!("broker {id} describes orders"), || {
            let r = metadata(&mut c, "orders");
            (!leaders(&r).is_empty()).then_some(r)
        });
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
        // KIP-951: Produce v10+ names the current leader and carries its address.
        let r = cluster
            .kafka(other)
            .call(10, &produce_to(1, "orders", partition, record_batch("x")));
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(p.error_code, code::NOT_LEADER_OR_FOLLOWER);
        assert_eq!(p.current_leader.leader_id.0, *leader, "{p:?}");
        let named: Vec<(i32, i32)> = r
            .node_endpoints
            .iter()
            .map(|e| (e.node_id.0, e.port))
            .collect();
        let port = cluster
            .broker(*leader as usize)
            .kafka_addr
            .expect("kafka")
            .port();
        assert_eq!(named, vec![(*leader, i32::from(port))], "{r:?}");
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
        assert_eq!(fetched.current_leader.leader_id.0, *leader, "{fetched:?}");
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

    // A replication factor beyond the brokers is refused with Kafka's code and a reason.
    for (factor, why) in [
        (4, "larger than the 3 registered brokers"),
        (0, "at least 1"),
    ] {
        let r = cluster.kafka(2).call(
            7,
            &kafka_protocol::messages::CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![
                    kafka_protocol::messages::create_topics_request::CreatableTopic::default()
                        .with_name(topic_name("replicated"))
                        .with_num_partitions(3)
                        .with_replication_factor(factor),
                ]),
        );
        let t = &r.topics[0];
        assert_eq!(t.error_code, 38, "INVALID_REPLICATION_FACTOR: {t:?}");
        let message = t.error_message.as_ref().map(|m| m.to_string());
        assert!(message.as_deref().is_some_and(|m| m.contains(why)), "{t:?}");
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

// ------------------------------------------------------------------------------------------
// Group coordinators spread over the brokers
// ------------------------------------------------------------------------------------------

/// Kafka error codes of the coordinator routing (Kafka's `Errors` numbering).
mod coordinator_code {
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
}

const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Java's `String.hashCode()` (over UTF-16 units, wrapping), as Kafka hashes group ids.
fn java_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, u| h.wrapping_mul(31).wrapping_add(i32::from(u)))
}

/// Kafka's rule: the group's partition of `__consumer_offsets`.
fn offsets_partition(group: &str, partitions: usize) -> usize {
    (java_hash(group) & 0x7fff_ffff) as usize % partitions
}

/// Broker `b`'s Kafka port.
fn kafka_port(cluster: &Cluster, b: i32) -> i32 {
    let b = usize::try_from(b).expect("a broker id");
    i32::from(cluster.broker(b).kafka_addr.expect("kafka").port())
}

/// FindCoordinator v3 (one key): (error code, node id, port).
fn find_coordinator(c: &mut KafkaClient, group: &str) -> (i16, i32, i32) {
    let r = c.call(
        3,
        &kafka_protocol::messages::FindCoordinatorRequest::default().with_key(s(group)),
    );
    (r.error_code, r.node_id.0, r.port)
}

/// OffsetFetch v8 of every committed offset of `group`: the group's error code and
/// (topic, partition) -> offset.
fn offset_fetch(c: &mut KafkaClient, group: &str) -> (i16, BTreeMap<(String, i32), i64>) {
    use kafka_protocol::messages::OffsetFetchRequest;
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
    let r = c.call(
        8,
        &OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(kafka_protocol::messages::GroupId(s(group)))
                .with_topics(None),
        ]),
    );
    let g = &r.groups[0];
    let offsets = g
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    (t.name.0.to_string(), p.partition_index),
                    p.committed_offset,
                )
            })
        })
        .collect();
    (g.error_code, offsets)
}

/// An admin OffsetCommit v8 of one offset: the partition's error code.
fn offset_commit(
    c: &mut KafkaClient,
    group: &str,
    topic: &str,
    partition: i32,
    offset: i64,
) -> i16 {
    use kafka_protocol::messages::OffsetCommitRequest;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    let r = c.call(
        8,
        &OffsetCommitRequest::default()
            .with_group_id(kafka_protocol::messages::GroupId(s(group)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(s(""))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(partition)
                            .with_committed_offset(offset),
                    ]),
            ]),
    );
    r.topics[0].partitions[0].error_code
}

/// Three groups whose coordinators are three different brokers: librdkafka consumer groups
/// read a 6-partition topic and commit through their own coordinator; FindCoordinator asked of
/// any broker names that coordinator; a commit or heartbeat sent elsewhere gets
/// NOT_COORDINATOR; OffsetFetch at the coordinator reads the commits back. Then the coordinator
/// of one group is killed (SIGKILL): `__consumer_offsets` is replicated on the three brokers,
/// so another one takes its partition over and serves every committed offset, while the
/// killed broker's partitions of a topic with one replica go offline; once it is back it
/// rejoins the ISR, leads its partition again (preferred leader) and still has the offsets.
#[test]
fn consumer_groups_work_with_coordinators_on_different_brokers() {
    let mut cluster = Cluster::start();
    let mut c1 = cluster.kafka(1);
    c1.create_topic("orders", 6);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
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

    // The first FindCoordinator creates __consumer_offsets: 16 partitions over the three.
    let (code, _, _) = find_coordinator(&mut c1, "probe");
    assert_eq!(code, code::NONE);
    let offsets_meta = metadata(&mut c1, OFFSETS_TOPIC);
    assert!(offsets_meta.topics[0].is_internal, "{offsets_meta:?}");
    let leaders = leaders(&offsets_meta);
    assert_eq!(leaders.len(), 16, "{offsets_meta:?}");
    for b in 1..=3 {
        assert!(leaders.contains(&b), "broker {b} leads none: {leaders:?}");
    }
    // One group per broker, by Kafka's hash rule.
    let groups: Vec<(String, i32)> = (1..=3)
        .map(|b| {
            let name = (0..)
                .map(|i| format!("billing-{i}"))
                .find(|g| leaders[offsets_partition(g, 16)] == b)
                .expect("a group on every broker");
            (name, b)
        })
        .collect();
    for (group, coordinator) in &groups {
        for asked in 1..=3 {
            let (code, node, port) = find_coordinator(&mut cluster.kafka(asked), group);
            assert_eq!(
                (code, node, port),
                (code::NONE, *coordinator, kafka_port(&cluster, *coordinator)),
                "broker {asked} on the coordinator of {group}"
            );
        }
    }
    // FindCoordinator v4 batches keys: one answer per key.
    let batched = c1.call(
        4,
        &kafka_protocol::messages::FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(groups.iter().map(|(g, _)| s(g)).collect()),
    );
    let answered: Vec<(String, i32)> = batched
        .coordinators
        .iter()
        .map(|c| (c.key.to_string(), c.node_id.0))
        .collect();
    assert_eq!(answered, groups, "{batched:?}");

    // Each group consumes everything through librdkafka and commits at its coordinator.
    let consumers: Vec<BaseConsumer> = groups
        .iter()
        .map(|(group, _)| {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap())
                .set("group.id", group)
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .expect("consumer");
            consumer.subscribe(&["orders"]).expect("subscribe");
            consumer
        })
        .collect();
    let mut seen: Vec<BTreeMap<i32, i64>> = vec![BTreeMap::new(); groups.len()];
    let mut counts = vec![0usize; groups.len()];
    let started = Instant::now();
    while counts.iter().any(|n| *n < 60) {
        assert!(
            started.elapsed() < PATIENCE * 2,
            "consumed {counts:?} of 60 each"
        );
        for (i, consumer) in consumers.iter().enumerate() {
            if let Some(m) = consumer.poll(Duration::from_millis(50)) {
                let m = m.expect("a record");
                let next = seen[i].entry(m.partition()).or_insert(0);
                *next = (*next).max(m.offset() + 1);
                counts[i] += 1;
            }
        }
    }
    for consumer in &consumers {
        consumer
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .expect("commit");
    }
    for (i, (group, coordinator)) in groups.iter().enumerate() {
        let want: BTreeMap<(String, i32), i64> = seen[i]
            .iter()
            .map(|(p, next)| (("orders".to_string(), *p), *next))
            .collect();
        assert_eq!(want.values().sum::<i64>(), 60, "{group}: {want:?}");
        let (code, got) = offset_fetch(&mut cluster.kafka(*coordinator as usize), group);
        assert_eq!(
            (code, &got),
            (code::NONE, &want),
            "{group} at its coordinator"
        );
        // Anywhere else: NOT_COORDINATOR, for a fetch, a commit and a member's heartbeat.
        let other = coordinator % 3 + 1;
        let mut elsewhere = cluster.kafka(other as usize);
        let (code, _) = offset_fetch(&mut elsewhere, group);
        assert_eq!(
            code,
            coordinator_code::NOT_COORDINATOR,
            "{group} at {other}"
        );
        assert_eq!(
            offset_commit(&mut elsewhere, group, "orders", 0, 1),
            coordinator_code::NOT_COORDINATOR,
            "{group} at {other}"
        );
        let hb = elsewhere.call(
            4,
            &kafka_protocol::messages::HeartbeatRequest::default()
                .with_group_id(kafka_protocol::messages::GroupId(s(group)))
                .with_generation_id(1)
                .with_member_id(s("someone")),
        );
        assert_eq!(
            hb.error_code,
            coordinator_code::NOT_COORDINATOR,
            "{group} at {other}"
        );
    }
    drop(consumers);

    // SIGKILL of one coordinator (not the active controller: that failover is tested above).
    let controller = metadata(&mut c1, "orders").controller_id.0;
    let (group, victim) = groups
        .iter()
        .find(|(_, b)| *b != controller)
        .cloned()
        .expect("a coordinator that is not the controller");
    let (_, before) = offset_fetch(&mut cluster.kafka(victim as usize), &group);
    drop(cluster.brokers[victim as usize - 1].take());
    let survivor = if victim == 1 { 2 } else { 1 };
    let mut c = cluster.kafka(survivor);
    // Its partition of `__consumer_offsets` moves to another in-sync replica, which serves
    // every commit the victim acknowledged.
    let (moved_to, _) = eventually("another broker coordinates the group", || {
        let (code, node, port) = find_coordinator(&mut c, &group);
        (code == code::NONE && node != victim).then_some((node, port))
    });
    let mut at_new = cluster.kafka(moved_to as usize);
    let served = eventually("the new coordinator serves the group's offsets", || {
        let (code, got) = offset_fetch(&mut at_new, &group);
        (code == code::NONE).then_some(got)
    });
    assert_eq!(
        served, before,
        "{group}: committed offsets at its new coordinator after SIGKILL of the old one"
    );
    // `strom cluster status` names the victim fenced, lists as offline exactly the partitions
    // of `orders` (one replica) it led, and `__consumer_offsets` partitions as under-replicated.
    let survivor_addr = cluster.brokers[survivor - 1]
        .as_ref()
        .expect("a survivor")
        .addr
        .to_string();
    let led_by_victim: BTreeSet<(String, i64)> = {
        let r = metadata(&mut c, "orders");
        r.topics[0]
            .partitions
            .iter()
            .filter(|p| p.replica_nodes.iter().any(|n| n.0 == victim))
            .map(|p| ("orders".to_string(), i64::from(p.partition_index)))
            .collect()
    };
    assert!(!led_by_victim.is_empty());
    let status = eventually(
        "cluster status lists the victim's partitions offline",
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_strom"))
                .args(["--bootstrap", &survivor_addr, "cluster", "status"])
                .args(["--output", "json"])
                .output()
                .expect("run strom cluster status");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let offline: BTreeSet<(String, i64)> = v["offline"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p["topic"].as_str()?.to_string(), p["partition"].as_i64()?)))
                .collect();
            (offline == led_by_victim).then_some(v)
        },
    );
    let victim_state = status["brokers"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["broker"] == victim))
        .map(|b| b["state"].clone());
    assert_eq!(victim_state, Some("fenced".into()), "{status}");
    let under: Vec<&str> = status["under_replicated"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["topic"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !under.is_empty() && under.iter().all(|t| *t == OFFSETS_TOPIC),
        "{status}"
    );
    assert!(
        status["partitions"].as_u64().is_some_and(|n| n >= 22),
        "6 + 16 partitions at least: {status}"
    );
    // The other groups carry on.
    for (other_group, b) in groups.iter().filter(|(_, b)| *b != victim) {
        let (code, _) = offset_fetch(&mut cluster.kafka(*b as usize), other_group);
        assert_eq!(
            code,
            code::NONE,
            "{other_group} while broker {victim} is down"
        );
    }

    // It returns (new listener ports), leads its partition again and still has the offsets.
    let returned = cluster.spawn(victim as usize).join().expect("restart");
    cluster.brokers[victim as usize - 1] = Some(returned);
    let port = kafka_port(&cluster, victim);
    eventually("the returned broker coordinates the group again", || {
        (find_coordinator(&mut c, &group) == (code::NONE, victim, port)).then_some(())
    });
    let mut at_victim = cluster.kafka(victim as usize);
    let after = eventually("the group's offsets are served again", || {
        let (code, got) = offset_fetch(&mut at_victim, &group);
        match code {
            code::NONE => Some(got),
            coordinator_code::COORDINATOR_LOAD_IN_PROGRESS
            | coordinator_code::COORDINATOR_NOT_AVAILABLE
            | coordinator_code::NOT_COORDINATOR => None,
            other => panic!("OffsetFetch of {group} after the restart: error {other}"),
        }
    });
    assert_eq!(
        after, before,
        "{group}: committed offsets after SIGKILL and restart"
    );
    assert_eq!(after.values().sum::<i64>(), 60);
}

/// CRC-32 (IEEE), as topic files carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A commit record of `__consumer_offsets` (key and value as the broker writes them).
fn commit_record(group: &str, topic: &str, partition: i32, offset: i64) -> Rec {
    let mut key = vec![1u8];
    for part in [group, topic] {
        key.extend_from_slice(&u16::try_from(part.len()).expect("short").to_be_bytes());
        key.extend_from_slice(part.as_bytes());
    }
    key.extend_from_slice(&partition.to_be_bytes());
    let mut value = vec![1u8];
    value.extend_from_slice(&offset.to_be_bytes());
    value.extend_from_slice(&now_ms().to_be_bytes());
    value.extend_from_slice(&0u16.to_be_bytes());
    Rec {
        offset: -1,
        timestamp: now_ms(),
        key: Some(key),
        value: Some(value),
        headers: vec![],
    }
}

/// A single broker's data directory from before `__consumer_offsets` was a topic of the
/// metadata log (a local topic of one partition, unknown to the log) keeps its committed
/// offsets: the broker records that topic in the log with its partition count instead of
/// creating a new one, and serves the old commits; the same from a directory older still
/// (no metadata log at all).
#[test]
fn a_single_broker_keeps_the_offsets_it_committed_before_the_cluster_topic() {
    let dir = TestDir::new();
    let data = dir.data();
    let meta = data.join("meta").join("topics");
    // What the older broker left: `__consumer_offsets` with one partition holding commits
    // (made here from a plain topic whose log is moved into place, and a topic file of the
    // older layout).
    let mut broker = Broker::start(&data, &[]);
    let mut c = KafkaClient::to(&broker);
    c.create_topic("orders", 2);
    c.create_topic("old-offsets", 1);
    let commits = [
        commit_record("billing", "orders", 0, 5),
        commit_record("billing", "orders", 1, 3),
        commit_record("billing", "orders", 0, 7),
        commit_record("gone", "orders", 0, 1),
    ];
    c.produce_ok("old-offsets", 0, batch_of(&commits));
    let mut tombstone = commit_record("gone", "orders", 0, 0);
    tombstone.value = None;
    c.produce_ok("old-offsets", 0, batch_of(&[tombstone]));
    drop(c);
    broker.stop();
    std::fs::remove_file(meta.join("old-offsets.topic")).expect("remove the plain topic file");
    std::fs::rename(
        data.join("old-offsets-0"),
        data.join("__consumer_offsets-0"),
    )
    .expect("move the log");
    let body = "name=__consumer_offsets\npartitions=1\nconfig.cleanup.policy=compact\n\
                config.retention.ms=-1\nconfig.segment.bytes=16777216\n";
    let file = format!("{body}crc32={:08x}\n", crc32(body.as_bytes()));
    std::fs::write(meta.join("__consumer_offsets.topic"), file).expect("write the topic file");

    let want = BTreeMap::from([
        (("orders".to_string(), 0), 7),
        (("orders".to_string(), 1), 3),
    ]);
    let check = |broker: &Broker, want: &BTreeMap<(String, i32), i64>| {
        let mut c = KafkaClient::to(broker);
        assert_eq!(offset_fetch(&mut c, "billing"), (code::NONE, want.clone()));
        assert_eq!(offset_fetch(&mut c, "gone"), (code::NONE, BTreeMap::new()));
        let m = metadata(&mut c, OFFSETS_TOPIC);
        assert_eq!(m.topics[0].error_code, code::NONE, "{m:?}");
        assert_eq!(
            m.topics[0].partitions.len(),
            1,
            "the old topic, not a new one: {m:?}"
        );
        c
    };
    let mut broker = Broker::start(&data, &[]);
    let mut c = check(&broker, &want);
    // New commits go to the same partition, and survive a kill -9.
    assert_eq!(offset_commit(&mut c, "billing", "orders", 1, 9), code::NONE);
    assert_eq!(offset_commit(&mut c, "fresh", "orders", 0, 2), code::NONE);
    drop(c);
    broker.kill9();
    let want = BTreeMap::from([
        (("orders".to_string(), 0), 7),
        (("orders".to_string(), 1), 9),
    ]);
    let broker = Broker::start(&data, &[]);
    let mut c = check(&broker, &want);
    assert_eq!(
        offset_fetch(&mut c, "fresh").1,
        BTreeMap::from([(("orders".to_string(), 0), 2)])
    );
    drop(c);
    drop(broker);

    // Older still: no metadata log. Every topic is imported, `__consumer_offsets` with them.
    std::fs::remove_dir_all(data.join("meta").join("quorum")).expect("remove the log");
    let broker = Broker::start(&data, &[]);
    check(&broker, &want);
}

/// strom's own client, bootstrapped from one broker only: it routes every partition's batches
/// to its leader, fetches each partition from its leader, finds the group's coordinator, and
/// `strom topics describe` and the group's lag cover partitions the asked broker does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_routes_to_leaders_and_coordinators_from_one_bootstrap_broker() {
    use strom_client::{
        Admin, AutoOffsetReset, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer,
        ProducerConfig,
    };
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .expect("start");
    let one = cluster.broker(1).addr.to_string();
    let two = cluster.broker(2).addr.to_string();
    let admin = Admin::connect(ClientConfig::new(&one))
        .await
        .expect("admin");
    admin
        .create_topic(NewTopic::new("native").partitions(6))
        .await
        .expect("create");

    let producer = Producer::connect(ProducerConfig::new(&one))
        .await
        .expect("producer");
    let mut deliveries = Vec::new();
    for i in 0..120 {
        let key = format!("key-{i}");
        deliveries.push(
            producer
                .send("native", Some(key.as_bytes()), Some(key.as_bytes()), &[])
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");
    let mut per_partition = BTreeMap::new();
    for d in deliveries {
        let m = d.await.expect("every record is acknowledged by its leader");
        *per_partition.entry(m.partition).or_insert(0) += 1;
    }
    producer.close().await.expect("close");
    assert_eq!(
        per_partition.len(),
        6,
        "keys reach every partition: {per_partition:?}"
    );

    // Offsets of every partition, whichever broker is asked: each leader's high watermark,
    // once the followers have the records (acks=1 does not wait for them).
    let describer = Admin::connect(ClientConfig::new(&two))
        .await
        .expect("admin");
    let want: BTreeMap<i32, i64> = per_partition.iter().map(|(p, n)| (*p, *n)).collect();
    let started = Instant::now();
    loop {
        let described = describer
            .describe_topics(&["native"])
            .await
            .expect("describe");
        let ends: BTreeMap<i32, i64> = described[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.log_end_offset))
            .collect();
        if ends == want {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "{ends:?} != {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A group read through broker 2 gets every record once and commits.
    let mut config = ConsumerConfig::new(&two);
    config.group.auto_offset_reset = AutoOffsetReset::Earliest;
    let mut consumer = Consumer::connect(config).await.expect("consumer");
    consumer
        .subscribe("native-readers", &["native"])
        .expect("subscribe");
    let mut seen = std::collections::BTreeSet::new();
    let started = Instant::now();
    while seen.len() < 120 {
        assert!(started.elapsed() < PATIENCE, "read {} of 120", seen.len());
        for r in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            assert!(seen.insert((r.partition(), r.offset())), "read twice");
        }
    }
    consumer.commit().await.expect("commit");
    consumer.close().await.expect("close");
    let group = admin
        .describe_group("native-readers")
        .await
        .expect("the coordinator answers wherever it is");
    let lags: Vec<i64> = group.offsets.iter().map(|o| o.lag).collect();
    assert_eq!(lags, vec![0; 6], "{group:?}");
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .expect("stop");
}

/// A broker that is not a voter (a learner) restarts on another controller port and follows
/// again; then it loses its metadata log while down: it comes back, is sent a snapshot of the
/// image (the log behind it was purged), and serves the same metadata as the others. Both found
/// a real bug: a learner that restarted was never called at its new address. (A voter in that state is refused: meta/tests/quorum.rs.)
#[test]
fn a_learner_restarted_with_an_empty_metadata_log_catches_up_from_a_snapshot() {
    let snapshots = ["--metadata-snapshot-entries", "20"];
    let cluster = Cluster::start_with(&snapshots);
    let learner_dir = TestDir::new();
    let start_learner = || {
        let mut args = vec![
            "--node-id",
            "4",
            "--controller-voters",
            &cluster.voters,
            "--http-listen",
            "none",
        ];
        args.extend(snapshots);
        Broker::start(&learner_dir.data(), &args)
    };
    let mut learner = start_learner();
    let mut c = cluster.kafka(1);
    for i in 0..40 {
        c.create_topic(&format!("t{i}"), 2);
    }
    let names = |b: &Broker| -> BTreeSet<String> {
        let r: MetadataResponse = KafkaClient::to(b).call(
            12,
            &MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false),
        );
        r.topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .filter(|n| !n.starts_with("__"))
            .collect()
    };
    let want = names(cluster.broker(1));
    assert_eq!(want.len(), 40);
    eventually("the learner follows", || {
        (names(&learner) == want).then_some(())
    });

    // A plain restart: its controller listener gets another port (port 0), and the leader
    // must learn it or it never replicates to the learner again.
    learner.kill9();
    c.create_topic("while-restarting", 1);
    let mut learner = start_learner();
    let want = names(cluster.broker(1)); // the broker asked: it has applied the creation
    assert_eq!(names(&learner), want, "caught up after a restart");

    learner.kill9();
    let quorum = learner_dir.data().join("meta").join("quorum");
    std::fs::remove_dir_all(&quorum).expect("wipe the learner's metadata log");
    // More metadata while it is away.
    c.create_topic("while-away", 1);
    let want = names(cluster.broker(1));
    let learner = start_learner();
    assert_eq!(names(&learner), want, "caught up before it listens");
    assert!(
        quorum.join("state").join("snapshot").is_file(),
        "caught up without a snapshot"
    );
}
