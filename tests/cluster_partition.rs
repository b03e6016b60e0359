//! Network partitions of the metadata quorum, against three `strom serve` processes: a voter
//! cut off from the other two cannot change metadata (it cannot create a topic, and what the
//! majority creates meanwhile reaches it only after the cut heals); an active controller cut
//! off is replaced by the majority, cannot commit anything itself, and follows the new
//! controller once healed. Every broker ends with the same topics: no split brain. A
//! partition's leader cut off from the controllers (issue 17's scenario 4) acknowledges nothing
//! once the majority has elected another, and drops its unreplicated tail after the heal.
//!
//! The cut is an in-test TCP proxy in front of each controller listener. Broker N's controller
//! listens on 127.P.Q.N (P and Q of this test's own, so no other test's connection can take
//! the port between its pick and the broker's bind), and controllers call each other from their
//! listener's address, so a proxy knows which broker is calling from the source address and
//! drops the connections of a cut-off broker in both directions. Clients reach the brokers
//! directly. Loopback only.

#[path = "support/kafka.rs"]
mod kafka;
mod support;

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, MetadataResponse};

use kafka::*;
use support::*;

/// How long the cluster may take to notice a cut or a heal.
const PATIENCE: Duration = Duration::from_secs(30);

/// Which brokers are cut off, and the proxied connections to close when one is.
#[derive(Default)]
struct Cuts {
    isolated: Mutex<HashSet<u8>>,
    /// (calling broker, called broker, the two sockets of the pair).
    live: Mutex<Vec<(u8, u8, TcpStream, TcpStream)>>,
}

impl Cuts {
    fn blocked(&self, from: u8, to: u8) -> bool {
        let isolated = self.isolated.lock().expect("cuts");
        isolated.contains(&from) || isolated.contains(&to)
    }

    /// Cuts `node` off: new connections from or to it are dropped, open ones closed.
    fn isolate(&self, node: u8) {
        self.isolated.lock().expect("cuts").insert(node);
        let mut live = self.live.lock().expect("live");
        live.retain(|(from, to, a, b)| {
            let cut = *from == node || *to == node;
            if cut {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
            !cut
        });
    }

    fn heal(&self) {
        self.isolated.lock().expect("cuts").clear();
    }
}

/// A proxy in front of broker `to`'s controller listener at `target`; returns its address.
fn proxy(to: u8, target: SocketAddr, cuts: Arc<Cuts>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listener");
    let addr = listener.local_addr().expect("proxy address");
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            // Controllers call from 127.P.Q.N: N is the caller.
            let from = match client.peer_addr() {
                Ok(SocketAddr::V4(a)) => a.ip().octets()[3],
                _ => 0,
            };
            if cuts.blocked(from, to) {
                continue; // dropped: the caller sees the connection close
            }
            let Ok(upstream) = TcpStream::connect(target) else {
                continue;
            };
            let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            if let (Ok(c3), Ok(u3)) = (client.try_clone(), upstream.try_clone()) {
                cuts.live.lock().expect("live").push((from, to, c3, u3));
            }
            thread::spawn(move || pipe(client, upstream));
            thread::spawn(move || pipe(u2, c2));
        }
    });
    addr
}

/// Copies `from` to `to` until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Brokers first: fields drop in order, and a broker's log must outlive it.
struct Cluster {
    brokers: Vec<Broker>,
    cuts: Arc<Cuts>,
    _dirs: Vec<TestDir>,
}

impl Cluster {
    fn start() -> Cluster {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (p, q) = ((220 + std::process::id() % 30) as u8, (k % 256) as u8);
        let cuts = Arc::new(Cuts::default());
        let mut listens = Vec::new();
        let mut voters = Vec::new();
        for n in 1..=3u8 {
            let real = TcpListener::bind((std::net::Ipv4Addr::new(127, p, q, n), 0))
                .and_then(|l| l.local_addr())
                .expect("a free controller port");
            let front = proxy(n, real, cuts.clone());
            listens.push(real);
            voters.push(format!("{n}@{front}"));
        }
        let voters = voters.join(",");
        let dirs: Vec<TestDir> = (0..3).map(|_| TestDir::new()).collect();
        let started: Vec<_> = (0..3)
            .map(|i| {
                let data = dirs[i].data();
                let voters = voters.clone();
                let listen = listens[i].to_string();
                thread::spawn(move || {
                    let id = (i + 1).to_string();
                    Broker::start(
                        &data,
                        &[
                            "--node-id",
                            &id,
                            "--controller-voters",
                            &voters,
                            "--controller-listen",
                            &listen,
                            "--http-listen",
                            "none",
                        ],
                    )
                })
            })
            .collect();
        let brokers = started
            .into_iter()
            .map(|h| h.join().expect("broker start"))
            .collect();
        Cluster {
            brokers,
            cuts,
            _dirs: dirs,
        }
    }

    fn kafka(&self, id: u8) -> KafkaClient {
        KafkaClient::to(&self.brokers[usize::from(id) - 1])
    }

    fn metadata(&self, id: u8) -> MetadataResponse {
        self.kafka(id).call(
            12,
            &MetadataRequest::default()
                .with_topics(None)
                .with_allow_auto_topic_creation(false),
        )
    }

    /// The user topics broker `id` knows.
    fn topics(&self, id: u8) -> BTreeSet<String> {
        self.metadata(id)
            .topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
            .filter(|n| !n.starts_with("__"))
            .collect()
    }

    /// CreateTopics through broker `id`; its error code.
    fn create(&self, id: u8, name: &str) -> i16 {
        let r = self.kafka(id).call(
            7,
            &CreateTopicsRequest::default()
                .with_timeout_ms(30_000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(topic_name(name))
                        .with_num_partitions(3)
                        .with_replication_factor(-1),
                ]),
        );
        r.topics[0].error_code
    }

    /// Waits until `f` holds.
    fn eventually(&self, what: &str, mut f: impl FnMut() -> bool) {
        let started = Instant::now();
        while !f() {
            if started.elapsed() > PATIENCE {
                for b in &self.brokers {
                    eprintln!("--- {} ---\n{}", b.addr, tail(&b.log_path));
                }
                panic!("{what} within {PATIENCE:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn a_cut_off_minority_cannot_change_metadata_and_catches_up_after_the_heal() -> io::Result<()> {
    let cluster = Cluster::start();
    assert_eq!(cluster.create(1, "before"), code::NONE);
    let controller = cluster.metadata(1).controller_id.0;
    assert!((1..=3).contains(&controller));

    // A voter that is not the active controller is cut off.
    let cut = if controller == 3 { 2 } else { 3 };
    let majority = if controller == 1 { 2 } else { 1 };
    cluster.cuts.isolate(cut);
    let refused = cluster.create(cut, "minority");
    assert_ne!(refused, code::NONE, "a cut-off voter created a topic");
    eprintln!("a cut-off voter's CreateTopics: error {refused}");
    assert_eq!(
        cluster.create(majority, "majority"),
        code::NONE,
        "the majority goes on"
    );
    assert!(
        !cluster.topics(cut).contains("majority"),
        "the cut-off broker cannot know the majority's topic yet"
    );

    // Healed: it catches up, and what it was refused never appears.
    cluster.cuts.heal();
    cluster.eventually("the healed broker learns the majority's topic", || {
        cluster.topics(cut).contains("majority")
    });
    for id in 1..=3 {
        assert_eq!(
            cluster.topics(id),
            set(&["before", "majority"]),
            "broker {id}"
        );
    }
    Ok(())
}

#[test]
fn a_cut_off_controller_is_replaced_and_commits_nothing() -> io::Result<()> {
    let cluster = Cluster::start();
    assert_eq!(cluster.create(1, "before"), code::NONE);
    let old = cluster.metadata(1).controller_id.0;
    let old = u8::try_from(old).expect("a controller");
    let survivor = if old == 1 { 2 } else { 1 };

    let cut_at = Instant::now();
    cluster.cuts.isolate(old);
    // The other two elect a controller of their own.
    cluster.eventually("the majority elects another controller", || {
        let id = cluster.metadata(survivor).controller_id.0;
        id > 0 && id != i32::from(old)
    });
    eprintln!("new controller {:?} after the cut", cut_at.elapsed());
    assert_eq!(cluster.create(survivor, "after"), code::NONE);
    // The old controller, alone, cannot commit (it may still think it leads for a while).
    assert_ne!(
        cluster.create(old, "stale"),
        code::NONE,
        "a cut-off controller committed a topic"
    );

    cluster.cuts.heal();
    cluster.eventually("the old controller follows the new one", || {
        cluster.topics(old).contains("after")
    });
    for id in 1..=3 {
        assert_eq!(cluster.topics(id), set(&["before", "after"]), "broker {id}");
    }
    Ok(())
}

/// Partition 0 of `topic` as broker `id` (1 to 3) reports it on the native listener.
fn partition0(
    cluster: &Cluster,
    id: u8,
    topic: &str,
) -> strom_protocol::messages::PartitionMetadata {
    let t = cluster.brokers[usize::from(id) - 1]
        .client()
        .topic_metadata(topic);
    t.partitions[0].clone()
}

/// One record `v{i}` (key `k{i}`) produced with `acks=all` to broker `id`; its offset.
fn produce_to(cluster: &Cluster, id: u8, topic: &str, i: usize) -> i64 {
    let batch = batch_of(&[Rec {
        key: Some(format!("k{i}").into_bytes()),
        value: Some(format!("v{i}").into_bytes()),
        ..Rec::default()
    }]);
    let mut c = cluster.brokers[usize::from(id) - 1].client();
    let p = c.produce(topic, 0, &[batch], strom_protocol::messages::Acks::All);
    assert_eq!(
        p.error_code(),
        strom_protocol::ErrorCode::None,
        "v{i}: {p:?}"
    );
    p.base_offset
}

/// Issue 17's failure scenario 4: a partition's leader is cut off from the controllers while
/// its clients still reach it. The majority fences it and elects another in-sync replica, whose
/// image its followers follow, so they stop fetching from the old leader: a produce sent to the
/// old leader after that is never acknowledged (its HW cannot move), though it appends it. After
/// the heal the old leader learns it follows, answers that produce with an error, cuts the
/// record nobody has from its log (by leader epochs) and catches up: its log on disk ends up
/// exactly the new leader's, every acknowledged record at its offset.
#[test]
fn a_leader_cut_off_from_the_controllers_acknowledges_nothing_and_drops_its_tail() {
    let cluster = Cluster::start();
    let r = cluster.brokers[0].client().create_topics(
        vec![strom_protocol::messages::CreatableTopic {
            replication_factor: Some(3),
            ..creatable("cut", 1, &[])
        }],
        false,
    );
    assert_eq!(
        r.topics[0].error_code(),
        strom_protocol::ErrorCode::None,
        "{r:?}"
    );
    let mut old = 0u8;
    cluster.eventually("a leader with every replica in sync", || {
        let p = partition0(&cluster, 1, "cut");
        old = u8::try_from(p.leader_id).unwrap_or(0);
        old >= 1 && p.isr_nodes.len() == 3
    });
    for i in 0..10 {
        assert_eq!(produce_to(&cluster, old, "cut", i), i as i64);
    }

    cluster.cuts.isolate(old);
    let others: Vec<u8> = (1..=3).filter(|b| *b != old).collect();
    let mut next = 0u8;
    cluster.eventually("both other brokers follow a new leader", || {
        let seen: Vec<i32> = others
            .iter()
            .map(|b| partition0(&cluster, *b, "cut").leader_id)
            .collect();
        next = u8::try_from(seen[0]).unwrap_or(0);
        next >= 1 && next != old && seen.iter().all(|l| *l == seen[0])
    });
    // Its clients still reach the old leader, which still thinks it leads.
    let mut held = cluster.brokers[usize::from(old) - 1].client();
    let sent = held.send_body(produce_request(
        strom_protocol::messages::Acks::All,
        &[(
            "cut",
            0,
            batch_of(&[Rec {
                key: Some(b"k999".to_vec()),
                value: Some(b"v999".to_vec()),
                ..Rec::default()
            }]),
        )],
    ));
    for i in 10..15 {
        assert_eq!(produce_to(&cluster, next, "cut", i), i as i64);
    }

    cluster.cuts.heal();
    let answer = held.recv();
    assert_eq!(answer.header.as_ref().map(|h| h.correlation_id), Some(sent));
    let code = match &answer.body {
        Some(strom_protocol::messages::response::Body::Produce(p)) => {
            p.topics[0].partitions[0].error_code()
        }
        _ => answer
            .header
            .as_ref()
            .map_or(strom_protocol::ErrorCode::None, |h| h.error_code()),
    };
    assert_ne!(
        code,
        strom_protocol::ErrorCode::None,
        "the cut-off leader acknowledged: {answer:?}"
    );
    eprintln!("the cut-off leader's answer to the produce it held: {code:?}");
    cluster.eventually("the old leader back in the ISR as a follower", || {
        let p = partition0(&cluster, next, "cut");
        p.leader_id == i32::from(next) && p.isr_nodes.len() == 3
    });
    let want: Vec<(i64, Vec<u8>)> = (0..15)
        .map(|i| (i as i64, format!("v{i}").into_bytes()))
        .collect();
    let served: Vec<(i64, Vec<u8>)> = cluster.brokers[usize::from(next) - 1]
        .client()
        .fetch_all("cut", 0)
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect();
    assert_eq!(served, want, "the new leader's log");
    // The old leader's own copy, read from its segment file: v999 is gone.
    let dir = cluster._dirs[usize::from(old) - 1].data().join("cut-0");
    let segment = std::fs::read_dir(&dir)
        .expect("the old leader's partition directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "log"))
        .expect("a segment");
    let bytes = std::fs::read(&segment).expect("read the segment");
    let held: Vec<(i64, Vec<u8>)> = decode_records(&bytes)
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect();
    assert_eq!(held, want, "the old leader's log after the heal");
    let log = std::fs::read_to_string(&cluster.brokers[usize::from(old) - 1].log_path)
        .expect("the old leader's stderr");
    assert!(
        log.contains("log truncated"),
        "the old leader had appended v999 and cut it:\n{log}"
    );
}
