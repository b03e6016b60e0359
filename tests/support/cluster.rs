//! Three `strom serve` processes forming one cluster over loopback (each a voter of the
//! metadata quorum), for the cluster and replication tests.
//!
//! Controller ports are taken from the OS (all three bound to port 0 at once, then released)
//! just before the brokers start; every other port is the broker's own pick.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{Acks, CreatableTopic, PartitionMetadata};

use super::{Broker, Rec, TestDir, batch_of, creatable};

/// Brokers first: fields drop in order, and a broker's log must outlive it.
pub struct Cluster {
    pub brokers: Vec<Option<Broker>>,
    pub voters: String,
    pub dirs: Vec<TestDir>,
    /// More `strom serve` arguments for every broker.
    pub extra: Vec<String>,
    /// A command each broker runs through, by id - 1 (empty: none; [`Broker::start_wrapped`]).
    pub wrappers: Vec<Vec<String>>,
    /// The cluster's own loopback address ([`cluster_ip`]): its controller listeners and its
    /// brokers' native listeners.
    pub ip: std::net::Ipv4Addr,
}

/// A loopback address of one cluster's own for its controller and native listeners (all of
/// 127.0.0.0/8 is loopback on Linux). Controller ports are picked by binding port 0 and
/// released before the brokers bind them, and a restarted broker binds its native port again;
/// on 127.0.0.1 a test running beside this one could hold such a port meanwhile, as a listener
/// or as the local end of a connection (seen: "Address already in use"). Connections leave
/// from 127.0.0.1, and nothing else binds this address.
fn cluster_ip() -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    std::net::Ipv4Addr::new(
        127,
        20 + (pid % 200) as u8,
        (n / 250 % 256) as u8,
        (n % 250 + 2) as u8,
    )
}

impl Cluster {
    /// Three voters, started at once (each waits for a quorum before it listens).
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// As [`Cluster::start`], with `extra` arguments for every broker.
    pub fn start_with(extra: &[&str]) -> Cluster {
        Cluster::start_wrapped(extra, |_, _| Vec::new())
    }

    /// As [`Cluster::start_with`], broker `id` run through `wrap(id, its data directory)`
    /// ([`Broker::start_wrapped`]; empty: directly).
    pub fn start_wrapped(extra: &[&str], wrap: impl Fn(usize, &Path) -> Vec<String>) -> Cluster {
        let ip = cluster_ip();
        // All three held at once, so the OS hands out three different ports, then released.
        let held: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind((ip, 0)).expect("a free port"))
            .collect();
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().expect("its address").port())
            .collect();
        drop(held);
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@{ip}:{port}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let dirs: Vec<TestDir> = (0..3).map(|_| TestDir::new()).collect();
        let wrappers = (1..=3).map(|id| wrap(id, &dirs[id - 1].data())).collect();
        let mut cluster = Cluster {
            dirs,
            voters,
            brokers: vec![None, None, None],
            extra: extra.iter().map(|s| s.to_string()).collect(),
            wrappers,
            ip,
        };
        let started: Vec<_> = (1..=3).map(|id| cluster.spawn(id)).collect();
        for (i, handle) in started.into_iter().enumerate() {
            cluster.brokers[i] = Some(handle.join().expect("broker start"));
        }
        cluster
    }

    /// Starts broker `id` (1 to 3) on its data directory, on a thread.
    pub fn spawn(&self, id: usize) -> thread::JoinHandle<Broker> {
        self.spawn_at(id, None)
    }

    /// As [`Cluster::spawn`], with its native listener on `addr` when given (the address it
    /// had before a kill, so that running clients find it again).
    pub fn spawn_at(&self, id: usize, addr: Option<SocketAddr>) -> thread::JoinHandle<Broker> {
        let data = self.dirs[id - 1].data();
        let voters = self.voters.clone();
        let extra = self.extra.clone();
        let wrapper = self.wrappers[id - 1].clone();
        let addr = addr.unwrap_or(SocketAddr::new(self.ip.into(), 0));
        thread::spawn(move || {
            let id = id.to_string();
            let mut args = vec![
                "--node-id",
                &id,
                "--controller-voters",
                &voters,
                "--http-listen",
                "none",
            ];
            args.extend(extra.iter().map(String::as_str));
            Broker::start_wrapped(&data, Some(addr), &wrapper, &args)
        })
    }

    /// Kills broker `id` with SIGKILL.
    pub fn kill(&mut self, id: usize) {
        drop(self.brokers[id - 1].take());
    }

    /// Starts broker `id` again after [`Cluster::kill`].
    pub fn restart(&mut self, id: usize) {
        let broker = self.spawn(id).join().expect("restart");
        self.brokers[id - 1] = Some(broker);
    }

    /// Kills every broker with SIGKILL, calls `while_down` with each one's id while all are
    /// down, and starts all three again at their native addresses at once (each waits for a
    /// quorum of the others before it listens).
    pub fn crash_all(&mut self, mut while_down: impl FnMut(usize)) {
        let addrs: Vec<_> = (1..=3).map(|id| self.broker(id).addr).collect();
        for id in 1..=3 {
            self.kill(id);
        }
        for id in 1..=3 {
            while_down(id);
        }
        let started: Vec<_> = (1..=3)
            .map(|id| self.spawn_at(id, Some(addrs[id - 1])))
            .collect();
        for (i, handle) in started.into_iter().enumerate() {
            self.brokers[i] = Some(handle.join().expect("broker restart"));
        }
    }

    pub fn broker(&self, id: usize) -> &Broker {
        self.brokers[id - 1].as_ref().expect("a running broker")
    }

    /// Every running broker's Kafka address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .flatten()
            .map(|b| b.kafka_addr.expect("kafka listener").to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every running broker's native address, comma-separated.
    pub fn native_bootstrap(&self) -> String {
        self.brokers
            .iter()
            .flatten()
            .map(|b| b.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How long a cluster may take to agree on something after a failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Asks `f` until it gives something (every 50 ms, for at most [`PATIENCE`]): for a state the
/// cluster reaches on its own (an election, an ISR change), observed from outside.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < PATIENCE, "never happened: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Partition `index` of `topic` as broker `id` reports it.
pub fn partition_of(cluster: &Cluster, id: usize, topic: &str, index: usize) -> PartitionMetadata {
    let t = cluster.broker(id).client().topic_metadata(topic);
    t.partitions[index].clone()
}

/// The leader of partition 0 of `topic` as broker `asked` reports it, once there is one other
/// than `not`.
pub fn leader_other_than(
    cluster: &Cluster,
    topic: &str,
    not: Option<usize>,
    asked: usize,
) -> usize {
    eventually("a new leader", || {
        let p = partition_of(cluster, asked, topic, 0);
        let leader = usize::try_from(p.leader_id).ok()?;
        (leader >= 1 && Some(leader) != not).then_some(leader)
    })
}

/// The leader of partition 0 of `topic` and one of its followers.
pub fn leader_and_follower(cluster: &Cluster, topic: &str) -> (usize, usize) {
    let leader = leader_other_than(cluster, topic, None, 1);
    let p = partition_of(cluster, leader, topic, 0);
    let follower = p
        .replica_nodes
        .iter()
        .map(|b| *b as usize)
        .find(|b| *b != leader)
        .expect("a follower");
    (leader, follower)
}

/// Creates `topic` with one partition and `factor` replicas.
pub fn create(cluster: &Cluster, topic: &str, factor: i32, configs: &[(&str, &str)]) {
    let mut c = cluster.broker(1).client();
    let r = c.create_topics(
        vec![CreatableTopic {
            replication_factor: Some(factor),
            ..creatable(topic, 1, configs)
        }],
        false,
    );
    assert_eq!(r.topics[0].error_code(), ErrorCode::None, "{r:?}");
}

/// `n` single-record batches numbered from `from`.
pub fn batches(from: usize, n: usize) -> Vec<Bytes> {
    (from..from + n)
        .map(|i| {
            batch_of(&[Rec {
                key: Some(format!("k{i}").into_bytes()),
                value: Some(format!("v{i}").into_bytes()),
                ..Rec::default()
            }])
        })
        .collect()
}

/// Produces each batch with `acks` to broker `leader`; asserts each is acknowledged at the
/// next offset.
pub fn produce_all(
    cluster: &Cluster,
    leader: usize,
    topic: &str,
    from: usize,
    n: usize,
    acks: Acks,
) {
    let mut c = cluster.broker(leader).client();
    for (i, b) in batches(from, n).into_iter().enumerate() {
        let p = c.produce(topic, 0, &[b], acks);
        assert_eq!(
            p.error_code(),
            ErrorCode::None,
            "record {}: {p:?}",
            from + i
        );
        assert_eq!(p.base_offset, (from + i) as i64);
    }
}

/// Asserts broker `leader` serves exactly records 0..n, each at its offset, once its high
/// watermark reaches n (a new leader's moves once its followers fetch from it).
pub fn assert_holds(cluster: &Cluster, leader: usize, topic: &str, n: usize) {
    eventually("the new leader's high watermark", || {
        let p = cluster.broker(leader).client().fetch(topic, 0, 0, 0, 0, 0);
        (p.high_watermark >= n as i64).then_some(())
    });
    let records = cluster.broker(leader).client().fetch_all(topic, 0);
    let got: Vec<(i64, Vec<u8>)> = records
        .into_iter()
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect();
    let want: Vec<(i64, Vec<u8>)> = (0..n)
        .map(|i| (i as i64, format!("v{i}").into_bytes()))
        .collect();
    assert_eq!(got, want, "broker {leader}'s log");
}
