//! Unchanged Kafka clients against `strom serve`: librdkafka (the C client behind confluent-kafka,
//! kcat and most non-Java clients, through the `rdkafka` crate, built from its bundled source)
//! talks to the broker's Kafka listener. Each test starts a real broker process on ephemeral
//! ports with a temporary data directory.
//!
//! Covered here: topic administration, an idempotent `acks=all` producer with every compression
//! codec, a consumer reading it all back with keys, values, headers and per-key order, records
//! crossing between the Kafka and the native protocol both ways, and a `kill -9` in the middle
//! after which nothing acknowledged is missing.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use support::*;

/// How long a test waits for records that must arrive.
const DEADLINE: Duration = Duration::from_secs(60);

fn kafka_addr(broker: &Broker) -> String {
    broker
        .kafka_addr
        .expect("the broker's Kafka listener is on")
        .to_string()
}

fn config(broker: &Broker) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", kafka_addr(broker))
        // One broker: fail fast instead of retrying a wrong address for minutes.
        .set("socket.timeout.ms", "10000")
        .set("api.version.request", "true");
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn create_topic(rt: &tokio::runtime::Runtime, broker: &Broker, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = config(broker).create().expect("admin");
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create_topics");
    assert_eq!(results.len(), 1);
    assert!(results[0].is_ok(), "create {name}: {:?}", results[0]);
}

/// An idempotent `acks=all` producer compressing with `codec`.
fn producer(broker: &Broker, codec: &str) -> FutureProducer {
    config(broker)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", codec)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// A consumer with no group, reading `partitions` of `topic` from the beginning.
fn reader(broker: &Broker, topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = config(broker)
        .set("enable.auto.commit", "false")
        .set("group.id", "unused-no-subscribe")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("add partition");
    }
    c.assign(&tpl).expect("assign");
    c
}

/// A record as a test compares it: (partition, offset, key, value, headers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Got {
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<(String, Option<String>)>,
}

/// Polls until `n` records arrived (panics after [`DEADLINE`]).
fn read_n(c: &BaseConsumer, n: usize) -> Vec<Got> {
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records arrived",
            out.len()
        );
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("a record, not an error");
        let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), text(h.value)))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Got {
            partition: m.partition(),
            offset: m.offset(),
            key: text(m.key()),
            value: text(m.payload()),
            headers,
        });
    }
    out
}

/// Runs `strom <args>` (the native protocol) against `broker` with `input` on stdin.
fn strom(broker: &Broker, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strom"))
        .arg("--bootstrap")
        .arg(broker.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strom");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for strom");
    writer.join().expect("stdin writer");
    assert!(
        out.status.success(),
        "strom {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Keyed records with a header, acknowledged one by one: (key, value) in send order.
fn produce_keyed(
    rt: &tokio::runtime::Runtime,
    producer: &FutureProducer,
    topic: &str,
    n: usize,
    tag: &str,
) -> Vec<(String, String, i32, i64)> {
    rt.block_on(async {
        let mut futures = Vec::with_capacity(n);
        for i in 0..n {
            let key = format!("key-{}", i % 7);
            let value = format!("{tag}-{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "origin",
                value: Some(tag),
            });
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers);
            let f = producer.send_result(record).expect("queue the record");
            futures.push((key, value, f));
        }
        let mut acked = Vec::with_capacity(n);
        for (key, value, f) in futures {
            let d = f
                .await
                .expect("delivery future")
                .unwrap_or_else(|(e, _)| panic!("record {value} not acknowledged: {e}"));
            acked.push((key, value, d.partition, d.offset));
        }
        acked
    })
}

#[test]
fn admin_creates_lists_and_deletes_topics() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let rt = runtime();
    create_topic(&rt, &broker, "orders", 3);
    let admin: AdminClient<DefaultClientContext> = config(&broker).create().expect("admin");

    // Creating it again is TOPIC_ALREADY_EXISTS; a bad name is refused.
    let again = rt
        .block_on(admin.create_topics(
            &[NewTopic::new("orders", 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .expect("create again");
    assert!(
        matches!(
            &again[0],
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists))
        ),
        "{again:?}"
    );
    let three = rt
        .block_on(admin.create_topics(
            &[NewTopic::new("replicated", 1, TopicReplication::Fixed(3))],
            &AdminOptions::new(),
        ))
        .expect("create replicated");
    assert!(
        matches!(
            &three[0],
            Err((
                _,
                rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor
            ))
        ),
        "{three:?}"
    );

    let c: BaseConsumer = config(&broker).create().expect("consumer");
    let md = c
        .fetch_metadata(Some("orders"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(md.topics().len(), 1);
    assert_eq!(md.topics()[0].partitions().len(), 3);
    assert_eq!(md.brokers().len(), 1);
    assert_eq!(
        md.brokers()[0].port(),
        i32::from(broker.kafka_addr.expect("kafka").port())
    );

    // Settings: altered and described by their Kafka names; the native side sees the change.
    use rdkafka::admin::{AlterConfig, ConfigSource, ResourceSpecifier};
    let altered = rt
        .block_on(admin.alter_configs(
            &[AlterConfig::new(ResourceSpecifier::Topic("orders")).set("retention.ms", "3600000")],
            &AdminOptions::new(),
        ))
        .expect("alter_configs");
    assert!(altered[0].is_ok(), "{altered:?}");
    let described = rt
        .block_on(
            admin.describe_configs(&[ResourceSpecifier::Topic("orders")], &AdminOptions::new()),
        )
        .expect("describe_configs");
    let resource = described[0].as_ref().expect("orders' settings");
    let retention = resource.get("retention.ms").expect("retention.ms");
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = resource.get("segment.bytes").expect("segment.bytes");
    assert_eq!(segment.source, ConfigSource::Default);
    let native = strom(
        &broker,
        &["--output", "json", "topics", "describe", "orders"],
        b"",
    );
    assert!(
        String::from_utf8_lossy(&native.stdout).contains("3600000"),
        "the native protocol sees the new retention"
    );
    // An unknown setting is INVALID_CONFIG and changes nothing. (The rdkafka crate drops
    // per-resource errors of AlterConfigs, so the refusal shows as the settings staying put;
    // tests/kafka_protocol.rs checks the code itself.)
    rt.block_on(admin.alter_configs(
        &[AlterConfig::new(ResourceSpecifier::Topic("orders")).set("no.such.setting", "1")],
        &AdminOptions::new(),
    ))
    .expect("alter_configs");
    let described = rt
        .block_on(
            admin.describe_configs(&[ResourceSpecifier::Topic("orders")], &AdminOptions::new()),
        )
        .expect("describe_configs");
    let resource = described[0].as_ref().expect("orders' settings");
    assert!(resource.get("no.such.setting").is_none());
    assert_eq!(
        resource
            .get("retention.ms")
            .and_then(|e| e.value.as_deref()),
        Some("3600000"),
        "a refused AlterConfigs must not replace the overrides"
    );

    // DeleteRecords moves the start: earlier records are gone for every client.
    let p = producer(&broker, "none");
    let acked = produce_keyed(&rt, &p, "orders", 30, "dr");
    drop(p);
    let partition = acked[0].2;
    let mut before = TopicPartitionList::new();
    before
        .add_partition_offset("orders", partition, Offset::Offset(4))
        .expect("add");
    let deleted = rt
        .block_on(admin.delete_records(&before, &AdminOptions::new()))
        .expect("delete_records");
    let low = deleted
        .find_partition("orders", partition)
        .expect("result")
        .offset();
    assert_eq!(low, Offset::Offset(4), "{deleted:?}");
    let (lo, _hi) = c
        .fetch_watermarks("orders", partition, Duration::from_secs(10))
        .expect("watermarks");
    assert_eq!(lo, 4);
    let gone = acked
        .iter()
        .filter(|(_, _, p, o)| *p == partition && *o < 4)
        .count();
    let rest = read_n(&reader(&broker, "orders", 3), acked.len() - gone);
    assert!(
        rest.iter()
            .all(|g| g.partition != partition || g.offset >= 4),
        "{rest:?}"
    );

    // The native protocol sees the same topic.
    let listed = strom(&broker, &["topics", "list"], b"");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("orders"));

    let deleted = rt
        .block_on(admin.delete_topics(&["orders"], &AdminOptions::new()))
        .expect("delete");
    assert!(deleted[0].is_ok(), "{deleted:?}");
    let md = c
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    assert!(md.topics().iter().all(|t| t.name() != "orders"));
}

#[test]
fn idempotent_producer_round_trips_every_codec_and_both_protocols() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let rt = runtime();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("events-{codec}");
        create_topic(&rt, &broker, &topic, 3);
        let p = producer(&broker, codec);
        let acked = produce_keyed(&rt, &p, &topic, 300, codec);
        drop(p);

        let got = read_n(&reader(&broker, &topic, 3), acked.len());
        let mut by_offset: BTreeMap<(i32, i64), &Got> = BTreeMap::new();
        for g in &got {
            assert!(
                by_offset.insert((g.partition, g.offset), g).is_none(),
                "{codec}: offset {}/{} read twice",
                g.partition,
                g.offset
            );
        }
        for (key, value, partition, offset) in &acked {
            let g = by_offset.get(&(*partition, *offset)).unwrap_or_else(|| {
                panic!("{codec}: acknowledged {value} at {partition}/{offset} is missing")
            });
            assert_eq!(g.key.as_deref(), Some(key.as_str()), "{codec}");
            assert_eq!(g.value.as_deref(), Some(value.as_str()), "{codec}");
            assert_eq!(
                g.headers,
                vec![("origin".to_string(), Some(codec.to_string()))]
            );
        }
        // Per key, offsets follow send order (one key, one partition).
        let mut last: BTreeMap<&str, (i32, i64)> = BTreeMap::new();
        for (key, _, partition, offset) in &acked {
            if let Some(prev) = last.insert(key, (*partition, *offset)) {
                assert_eq!(prev.0, *partition, "{codec}: key {key} changed partition");
                assert!(prev.1 < *offset, "{codec}: key {key} out of order");
            }
        }

        // Kafka -> native: `strom consume` reads the same records, keys, values and headers.
        let out = strom(
            &broker,
            &[
                "consume",
                &topic,
                "--from-beginning",
                "--format",
                "%p %o %k=%v %h\\n",
            ],
            b"",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), acked.len(), "{codec}: {text}");
        for (key, value, partition, offset) in &acked {
            let want = format!("{partition} {offset} {key}={value} origin={codec}");
            assert!(lines.contains(&want.as_str()), "{codec}: missing {want:?}");
        }
    }

    // Native -> Kafka: records `strom produce` sent, with each codec, are read by librdkafka.
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("from-native-{codec}");
        create_topic(&rt, &broker, &topic, 1);
        strom(
            &broker,
            &[
                "produce",
                &topic,
                "--key-separator",
                ":",
                "--header",
                "via=native",
                "--compression",
                codec,
            ],
            b"k1:first\nk2:second\nk1:third\n",
        );
        let got = read_n(&reader(&broker, &topic, 1), 3);
        let pairs: Vec<(Option<String>, Option<String>)> = got
            .iter()
            .map(|g| (g.key.clone(), g.value.clone()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                (Some("k1".into()), Some("first".into())),
                (Some("k2".into()), Some("second".into())),
                (Some("k1".into()), Some("third".into())),
            ],
            "{codec}"
        );
        assert_eq!(
            got[0].headers,
            vec![("via".to_string(), Some("native".to_string()))]
        );
        assert_eq!(
            got.iter().map(|g| g.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }
}

#[test]
fn nothing_acknowledged_is_lost_across_kill_9() {
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &[]);
    let kafka = broker.kafka_addr.expect("kafka listener");
    let rt = runtime();
    create_topic(&rt, &broker, "durable", 2);
    let p = producer(&broker, "lz4");
    let before = produce_keyed(&rt, &p, "durable", 500, "before");
    drop(p);
    broker.kill9();

    // The same ports again, so the address clients know stays right.
    let kafka_arg = kafka.to_string();
    let broker = Broker::start_at(
        &dir.data(),
        broker.addr,
        &["--kafka-listen", kafka_arg.as_str()],
    );
    assert_eq!(broker.kafka_addr, Some(kafka));
    let p = producer(&broker, "zstd");
    let after = produce_keyed(&rt, &p, "durable", 200, "after");
    drop(p);

    let got = read_n(&reader(&broker, "durable", 2), before.len() + after.len());
    let stored: BTreeMap<(i32, i64), Option<String>> = got
        .iter()
        .map(|g| ((g.partition, g.offset), g.value.clone()))
        .collect();
    for (_, value, partition, offset) in before.iter().chain(&after) {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(&Some(value.clone())),
            "acknowledged {value} at {partition}/{offset}"
        );
    }
}

/// A consumer-group member that prints what it gets, for a parent test to kill. Runs only when
/// the parent starts this test binary with `STROM_KAFKA_MEMBER` set (group@bootstrap); as a
/// normal test it does nothing.
#[test]
fn group_member_process() {
    let Ok(spec) = std::env::var("STROM_KAFKA_MEMBER") else {
        return;
    };
    let (group, bootstrap) = spec.split_once('@').expect("group@bootstrap");
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("member");
    c.subscribe(&["jobs"]).expect("subscribe");
    loop {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("a record");
        println!(
            "REC {} {} {}",
            m.partition(),
            m.offset(),
            String::from_utf8_lossy(m.payload().unwrap_or_default())
        );
        c.commit_message(&m, rdkafka::consumer::CommitMode::Sync)
            .expect("commit");
    }
}

/// A member process, killed when dropped: a test that fails half-way must not leave a member
/// behind that would join the group of a later test's broker on a reused port.
struct Member(std::process::Child);

impl Member {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts [`group_member_process`] as a child process; its `REC partition offset value` lines
/// arrive on the returned channel.
fn spawn_member(
    group: &str,
    bootstrap: &str,
) -> (Member, std::sync::mpsc::Receiver<(i32, i64, String)>) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "group_member_process",
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("STROM_KAFKA_MEMBER", format!("{group}@{bootstrap}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a member");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            // libtest prints `test group_member_process ... ` without a newline first.
            let Some(at) = line.find("REC ") else {
                continue;
            };
            let mut it = line[at..].splitn(4, ' ');
            it.next();
            let (Some(p), Some(o), Some(v)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                let _ = tx.send((p, o, v.to_string()));
            }
        }
    });
    (Member(child), rx)
}

#[test]
fn a_consumer_group_rebalances_on_join_and_on_a_killed_member() {
    use rdkafka::consumer::CommitMode;
    let dir = TestDir::new();
    let mut broker = Broker::start(&dir.data(), &["--group-initial-rebalance-delay-ms", "200"]);
    let kafka = kafka_addr(&broker);
    let rt = runtime();
    create_topic(&rt, &broker, "jobs", 4);
    let p = producer(&broker, "lz4");
    let mut produced = produce_keyed(&rt, &p, "jobs", 400, "first");

    // Member A, a separate process, takes all four partitions and works through them.
    let (mut a, a_rx) = spawn_member("workers", &kafka);
    let deadline = Instant::now() + DEADLINE;
    let mut by_a: Vec<(i32, i64, String)> = Vec::new();
    while by_a.len() < 50 {
        assert!(Instant::now() < deadline, "member A consumed nothing");
        if let Ok(r) = a_rx.recv_timeout(Duration::from_millis(200)) {
            by_a.push(r);
        }
    }

    // Member B joins: the group rebalances and B gets partitions of its own.
    let b: BaseConsumer = config(&broker)
        .set("group.id", "workers")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .expect("member B");
    b.subscribe(&["jobs"]).expect("subscribe");
    let mut by_b: Vec<(i32, i64, String)> = Vec::new();
    let poll_b = |by_b: &mut Vec<(i32, i64, String)>| {
        if let Some(m) = b.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            by_b.push((
                m.partition(),
                m.offset(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            ));
            b.commit_message(&m, CommitMode::Sync).expect("commit");
        }
    };
    let deadline = Instant::now() + DEADLINE;
    while b.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "member B never got a partition");
        poll_b(&mut by_b);
        while let Ok(r) = a_rx.try_recv() {
            by_a.push(r);
        }
    }
    // Only now the second 400 records: A may have read everything of the partitions it gave up
    // before the rebalance ended, and B must have records to read.
    produced.extend(produce_keyed(&rt, &p, "jobs", 400, "second"));
    while by_b.is_empty() {
        assert!(Instant::now() < deadline, "member B never got a record");
        poll_b(&mut by_b);
        while let Ok(r) = a_rx.try_recv() {
            by_a.push(r);
        }
    }
    let assigned = b.assignment().expect("assignment").count();
    assert!(
        (1..4).contains(&assigned),
        "B holds {assigned} of 4 partitions"
    );

    // A dies without leaving: once its session lapses B takes everything, from A's commits.
    a.kill().expect("kill -9 member A");
    a.wait().expect("reap A");
    while let Ok(r) = a_rx.try_recv() {
        by_a.push(r);
    }
    let want: BTreeMap<(i32, i64), String> = produced
        .iter()
        .map(|(_, v, p, o)| ((*p, *o), v.clone()))
        .collect();
    let deadline = Instant::now() + DEADLINE;
    loop {
        // A's last lines may still be on their way through the pipe.
        while let Ok(r) = a_rx.try_recv() {
            by_a.push(r);
        }
        let seen: std::collections::BTreeSet<(i32, i64)> =
            by_a.iter().chain(&by_b).map(|(p, o, _)| (*p, *o)).collect();
        if want.keys().all(|k| seen.contains(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} records consumed; missing {:?}; B holds {:?}",
            seen.len(),
            want.len(),
            want.keys()
                .filter(|k| !seen.contains(k))
                .collect::<Vec<_>>(),
            b.assignment()
        );
        poll_b(&mut by_b);
    }
    // Once A's session lapses, B holds every partition.
    let deadline = Instant::now() + DEADLINE;
    while b.assignment().expect("assignment").count() != 4 {
        assert!(Instant::now() < deadline, "B never took A's partitions");
        poll_b(&mut by_b);
    }
    // ListGroups and DescribeGroups: one member left, stable, with every partition.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let list = b
            .fetch_group_list(Some("workers"), Duration::from_secs(10))
            .expect("group list");
        let g = &list.groups()[0];
        if g.state() == "Stable" && g.members().len() == 1 {
            assert_eq!(g.protocol_type(), "consumer");
            let assignment = g.members()[0].assignment().expect("an assignment");
            assert!(!assignment.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group is {} with {} members",
            g.state(),
            g.members().len()
        );
        poll_b(&mut by_b);
    }
    for (p, o, v) in by_a.iter().chain(&by_b) {
        assert_eq!(want.get(&(*p, *o)), Some(v), "record {p}/{o}");
    }
    // Each member saw each partition's records in offset order (so per key, in send order).
    for seen in [&by_a, &by_b] {
        let mut last: BTreeMap<i32, i64> = BTreeMap::new();
        for (p, o, _) in seen.iter() {
            if let Some(prev) = last.insert(*p, *o) {
                assert!(prev < *o, "partition {p}: {o} after {prev}");
            }
        }
    }
    drop(b);

    // The commits hold across a kill -9 of the broker: the group resumes at the end.
    broker.kill9();
    let kafka_arg = kafka.clone();
    let broker = Broker::start_at(
        &dir.data(),
        broker.addr,
        &[
            "--kafka-listen",
            &kafka_arg,
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    );
    let described = strom(
        &broker,
        &["--output", "json", "groups", "describe", "workers"],
        b"",
    );
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("\"lag\":0"), "{text}");
    assert!(!text.contains("\"lag\":1"), "{text}");
    let p = producer(&broker, "none");
    let late = produce_keyed(&rt, &p, "jobs", 20, "late");
    let c: BaseConsumer = config(&broker)
        .set("group.id", "workers")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("member C");
    c.subscribe(&["jobs"]).expect("subscribe");
    let got = {
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < late.len() {
            assert!(Instant::now() < deadline, "only {} late records", got.len());
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                let m = m.expect("a record");
                got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        got
    };
    assert!(
        got.iter().all(|v| v.starts_with("late-")),
        "the group resumed before its commits: {got:?}"
    );

    // `strom groups reset-offsets` works on the Kafka group: once it is empty, back to the
    // start, and the next member replays everything.
    drop(c);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_strom"))
            .args(["--bootstrap", &broker.addr.to_string()])
            .args([
                "groups",
                "reset-offsets",
                "workers",
                "--topic",
                "jobs",
                "--to-earliest",
            ])
            .output()
            .expect("run strom");
        if out.status.success() {
            break;
        }
        // The member's leave may not have been processed yet (NON_EMPTY_GROUP).
        assert!(
            Instant::now() < deadline,
            "reset-offsets failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d: BaseConsumer = config(&broker)
        .set("group.id", "workers")
        .set("enable.auto.commit", "false")
        .create()
        .expect("member D");
    d.subscribe(&["jobs"]).expect("subscribe");
    let total = produced.len() + late.len();
    let mut replayed = std::collections::BTreeSet::new();
    let deadline = Instant::now() + DEADLINE;
    while replayed.len() < total {
        assert!(
            Instant::now() < deadline,
            "replayed {} of {total}",
            replayed.len()
        );
        if let Some(m) = d.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            replayed.insert((m.partition(), m.offset()));
        }
    }
}

#[test]
fn kip_848_consumers_share_a_topic_and_follow_new_partitions() {
    use rdkafka::admin::NewPartitions;
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &[]);
    let rt = runtime();
    create_topic(&rt, &broker, "tasks", 2);
    let p = producer(&broker, "none");
    let mut produced = produce_keyed(&rt, &p, "tasks", 200, "one");
    let member = || -> BaseConsumer {
        config(&broker)
            .set("group.id", "kip848")
            .set("group.protocol", "consumer")
            .set("enable.auto.commit", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("a KIP-848 member")
    };
    let a = member();
    let b = member();
    a.subscribe(&["tasks"]).expect("subscribe");
    b.subscribe(&["tasks"]).expect("subscribe");
    let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let mut from = [0usize; 2];
    let poll_both = |seen: &mut BTreeMap<(i32, i64), String>, from: &mut [usize; 2]| {
        for (i, c) in [&a, &b].into_iter().enumerate() {
            if let Some(m) = c.poll(Duration::from_millis(50)) {
                let m = m.expect("a record");
                from[i] += 1;
                seen.insert(
                    (m.partition(), m.offset()),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                );
            }
        }
    };
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < produced.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} consumed",
            seen.len(),
            produced.len()
        );
        poll_both(&mut seen, &mut from);
    }

    // The topic grows: the group assigns the new partitions and their records arrive.
    let admin: AdminClient<DefaultClientContext> = config(&broker).create().expect("admin");
    let grown = rt
        .block_on(admin.create_partitions(&[NewPartitions::new("tasks", 4)], &AdminOptions::new()))
        .expect("create_partitions");
    assert!(grown[0].is_ok(), "{grown:?}");
    let shrink = rt
        .block_on(admin.create_partitions(&[NewPartitions::new("tasks", 3)], &AdminOptions::new()))
        .expect("create_partitions");
    assert!(shrink[0].is_err(), "partitions never shrink: {shrink:?}");
    let md = a
        .fetch_metadata(Some("tasks"), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(md.topics()[0].partitions().len(), 4);
    // A new producer sees the four partitions (an old one would after its metadata refresh).
    drop(p);
    let p = producer(&broker, "none");
    produced.extend(produce_keyed(&rt, &p, "tasks", 400, "two"));
    assert!(
        produced.iter().any(|(_, _, part, _)| *part >= 2),
        "new records reach the new partitions"
    );
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < produced.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} consumed after growing",
            seen.len(),
            produced.len()
        );
        poll_both(&mut seen, &mut from);
    }
    for (_, v, part, off) in &produced {
        assert_eq!(seen.get(&(*part, *off)), Some(v));
    }
    assert!(
        from[0] > 0 && from[1] > 0,
        "both members consumed: {from:?}"
    );
    let described = strom(
        &broker,
        &["--output", "json", "groups", "describe", "kip848"],
        b"",
    );
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(text.contains("tasks"), "{text}");
}

/// The group's generation, from `strom groups describe` (`group G  state S  epoch N ...`).
fn generation(broker: &Broker, group: &str) -> i64 {
    let out = strom(broker, &["groups", "describe", group], b"");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "epoch")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {text}"))
}

#[test]
fn cooperative_sticky_static_members_restart_without_a_rebalance() {
    let dir = TestDir::new();
    let broker = Broker::start(&dir.data(), &["--group-initial-rebalance-delay-ms", "0"]);
    let rt = runtime();
    create_topic(&rt, &broker, "coop", 4);
    let p = producer(&broker, "none");
    let mut produced = produce_keyed(&rt, &p, "coop", 200, "one");
    let member = |instance: &str| -> BaseConsumer {
        config(&broker)
            .set("group.id", "statics")
            .set("group.instance.id", instance)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "30000")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "100")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("a static member")
    };
    let a = member("worker-a");
    let b = member("worker-b");
    a.subscribe(&["coop"]).expect("subscribe");
    b.subscribe(&["coop"]).expect("subscribe");
    let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();
    let take = |c: &BaseConsumer, seen: &mut BTreeMap<(i32, i64), String>| {
        if let Some(m) = c.poll(Duration::from_millis(50)) {
            let m = m.expect("a record");
            seen.insert(
                (m.partition(), m.offset()),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            );
        }
    };
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < produced.len()
        || a.assignment().map_or(0, |x| x.count()) + b.assignment().map_or(0, |x| x.count()) != 4
        || a.assignment().map_or(0, |x| x.count()) == 0
    {
        assert!(
            Instant::now() < deadline,
            "{} of {} consumed",
            seen.len(),
            produced.len()
        );
        take(&a, &mut seen);
        take(&b, &mut seen);
    }
    let before = generation(&broker, "statics");
    let b_had: Vec<i32> = b
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();

    // A restarts (a static member closes without leaving): the new A takes the old one's
    // place and partitions; the group does not rebalance.
    drop(a);
    let a = member("worker-a");
    a.subscribe(&["coop"]).expect("subscribe");
    produced.extend(produce_keyed(&rt, &p, "coop", 200, "two"));
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < produced.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} consumed after the restart",
            seen.len(),
            produced.len()
        );
        take(&a, &mut seen);
        take(&b, &mut seen);
    }
    for (_, v, part, off) in &produced {
        assert_eq!(seen.get(&(*part, *off)), Some(v));
    }
    assert_eq!(
        generation(&broker, "statics"),
        before,
        "a static restart is no rebalance; broker log:\n{}",
        support::tail(&broker.log_path)
    );
    let b_has: Vec<i32> = b
        .assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect();
    assert_eq!(b_has, b_had, "B kept its partitions");
}
