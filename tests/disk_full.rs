//! Issue 17's scenario 6: one replica's disk fills up. Broker 3 of a three-broker cluster runs
//! on a 64 MiB tmpfs mounted over its data directory in a mount namespace of its own (`unshare
//! -m`); the test fills that tmpfs with a ballast file (through `/proc/PID/root`, which sees the
//! broker's mounts) while broker 3 leads one partition and follows another. Broker 3 must give up
//! its leadership and leave both ISRs, writes must go on with `acks=all` on the other two while
//! the ISR holds min.insync.replicas, and once the ballast is gone it must catch up, rejoin the
//! ISRs, lead its preferred partition again, and hold every acknowledged record, each at the
//! offset it was acknowledged at.
//!
//! Needs root (or CAP_SYS_ADMIN) for the mount namespace, as `.ci/run` has; without it the test
//! fails, unless `STROM_SKIP_NAMESPACE_TESTS=1` says to skip it.

mod support;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use strom_protocol::ErrorCode;
use strom_protocol::messages::{Acks, DescribeClusterRequest};

use support::cluster::{Cluster, create, eventually, partition_of};
use support::*;

/// The size of the full broker's disk.
const DISK: &str = "64m";
/// Record values: larger than a page, so every append needs new pages of the disk.
const VALUE_BYTES: usize = 16 << 10;

/// Whether this process may make mount namespaces (and mount in them).
fn namespaces_work() -> bool {
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m tmpfs /mnt")
        .status();
    matches!(probe, Ok(s) if s.success())
}

/// `unshare` with a size-limited tmpfs over the broker's data directory (`$0` of the script;
/// the command line after it is the broker's).
fn tmpfs_wrapper(data: &std::path::Path) -> Vec<String> {
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!("mount -t tmpfs -o size={DISK} tmpfs \"$0\" && exec \"$@\""),
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([data.display().to_string()])
    .collect()
}

/// Broker `id`'s data directory as its own mount namespace sees it.
fn seen_by(cluster: &Cluster, id: usize) -> PathBuf {
    let broker = cluster.broker(id);
    PathBuf::from(format!("/proc/{}/root", broker.pid())).join(
        broker
            .data_dir()
            .strip_prefix("/")
            .expect("an absolute path"),
    )
}

/// Fills the disk under `dir` with a ballast file until it refuses more.
fn fill(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("ballast");
    let mut file = File::create(&path).expect("create the ballast");
    for chunk in [1 << 20, 4096, 512] {
        let bytes = vec![0xbau8; chunk];
        loop {
            match file.write_all(&bytes) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    match file.sync_all() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(28) => {}
        Err(e) => panic!("fsync of the ballast: {e}"),
    }
    let mut more = OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("the ballast");
    let refused = more.write_all(&[0u8; 4096]).expect_err("the disk is full");
    assert_eq!(refused.kind(), ErrorKind::StorageFull, "{refused}");
    path
}

/// A record batch of one record `i`: key `k{i}`, a large value starting `v{i}:`.
fn record(i: usize) -> Bytes {
    let mut value = format!("v{i}:").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    batch_of(&[Rec {
        key: Some(format!("k{i}").into_bytes()),
        value: Some(value),
        ..Rec::default()
    }])
}

/// What was acknowledged: offset to record number, per topic.
#[derive(Default)]
struct Acked(BTreeMap<String, BTreeMap<i64, usize>>);

impl Acked {
    /// Produces record `i` to partition 0 of `topic` with `acks=all`, at whichever broker
    /// leads it, until one acknowledges it; counts the refusals on the way by error code.
    fn produce(
        &mut self,
        cluster: &Cluster,
        topic: &str,
        i: usize,
        refusals: &mut BTreeMap<String, usize>,
    ) {
        let offset = eventually("an acks=all produce acknowledged", || {
            let leader = usize::try_from(partition_of(cluster, 1, topic, 0).leader_id).ok()?;
            let mut c = Client::try_connect(cluster.broker(leader).addr).ok()?;
            let p = c.produce(topic, 0, &[record(i)], Acks::All);
            if p.error_code() == ErrorCode::None {
                return Some(p.base_offset);
            }
            *refusals
                .entry(format!("{:?} from {leader}", p.error_code()))
                .or_default() += 1;
            None
        });
        let earlier = self
            .0
            .entry(topic.to_string())
            .or_default()
            .insert(offset, i);
        assert_eq!(earlier, None, "{topic}: offset {offset} acknowledged twice");
    }

    /// Asserts broker `id` holds every acknowledged record of `topic` at its offset (and no
    /// offset with a record that differs from the one acknowledged there).
    fn assert_held_by(&self, cluster: &Cluster, id: usize, topic: &str) {
        let held: BTreeMap<i64, Vec<u8>> = cluster
            .broker(id)
            .client()
            .fetch_all(topic, 0)
            .into_iter()
            .map(|r| (r.offset, r.value.unwrap_or_default()))
            .collect();
        for (offset, i) in &self.0[topic] {
            let value = held
                .get(offset)
                .unwrap_or_else(|| panic!("{topic}: broker {id} lost record {i} at {offset}"));
            assert!(
                value.starts_with(format!("v{i}:").as_bytes()),
                "{topic}: broker {id} holds another record at {offset}"
            );
        }
    }
}

/// Broker `broker`'s state word as broker `asked` describes the cluster.
fn state(cluster: &Cluster, asked: usize, broker: i32) -> &'static str {
    let d = describe_cluster_body(
        cluster
            .broker(asked)
            .client()
            .call(DescribeClusterRequest {}),
    );
    match d.brokers.iter().find(|b| b.node_id == broker) {
        Some(b) if b.alive && b.storage_failed => "storage-failed",
        Some(b) if b.alive => "alive",
        Some(_) => "fenced",
        None => "unknown",
    }
}

/// The active controller's id, as broker `asked` knows it.
fn controller(cluster: &Cluster, asked: usize) -> Option<usize> {
    let d = describe_cluster_body(
        Client::try_connect(cluster.broker(asked).addr)
            .ok()?
            .call(DescribeClusterRequest {}),
    );
    usize::try_from(d.controller_id).ok().filter(|c| *c >= 1)
}

/// Restarts active controllers other than `id` until `id` is the active controller.
fn make_controller(cluster: &mut Cluster, id: usize) {
    for _ in 0..20 {
        let now = eventually("an active controller", || controller(cluster, id));
        if now == id {
            return;
        }
        cluster.kill(now);
        eventually("another active controller", || {
            controller(cluster, id).filter(|c| *c != now)
        });
        cluster.restart(now);
    }
    panic!("broker {id} never became the active controller");
}

#[test]
fn a_replica_with_a_full_disk_gives_up_its_roles_and_returns_when_space_does() {
    full_disk(false);
}

/// The same with the full disk under the active controller, whose metadata log then cannot be
/// written either.
#[test]
fn an_active_controller_with_a_full_disk_hands_over_and_returns_when_space_does() {
    full_disk(true);
}

fn full_disk(on_the_controller: bool) {
    if !namespaces_work() {
        if std::env::var("STROM_SKIP_NAMESPACE_TESTS").as_deref() == Ok("1") {
            eprintln!("skipped: no mount namespaces here (STROM_SKIP_NAMESPACE_TESTS=1)");
            return;
        }
        panic!(
            "this test needs mount namespaces (root, `unshare -m`); set STROM_SKIP_NAMESPACE_TESTS=1 to skip it"
        );
    }
    let full = 3usize;
    let mut cluster = Cluster::start_wrapped(&["--replica-lag-time-max-ms", "3000"], |id, data| {
        if id == full {
            tmpfs_wrapper(data)
        } else {
            Vec::new()
        }
    });
    if on_the_controller {
        make_controller(&mut cluster, full);
    } else if controller(&cluster, 1) == Some(full) {
        cluster.kill(full);
        eventually("another active controller", || {
            controller(&cluster, 1).filter(|c| *c != full)
        });
        cluster.restart(full);
    }

    // Topics until broker 3 leads one and follows another (placement rotates the leaders).
    let (mut led, mut followed) = (None, None);
    for n in 0..6 {
        let topic = format!("t{n}");
        create(&cluster, &topic, 3, &[]);
        let p = partition_of(&cluster, 1, &topic, 0);
        if p.leader_id == full as i32 {
            led.get_or_insert(topic);
        } else {
            followed.get_or_insert(topic);
        }
    }
    let led = led.expect("broker 3 leads a topic");
    let followed = followed.expect("broker 3 follows a topic");
    let mut acked = Acked::default();
    let mut refusals = BTreeMap::new();
    for i in 0..20 {
        acked.produce(&cluster, &led, i, &mut refusals);
        acked.produce(&cluster, &followed, i, &mut refusals);
    }
    assert!(refusals.is_empty(), "before the disk filled: {refusals:?}");

    let ballast = fill(&seen_by(&cluster, full));
    // Writes go on: the first ones reach broker 3's full disk, then broker 3 gives up its
    // leadership and leaves the ISRs.
    for i in 20..60 {
        acked.produce(&cluster, &led, i, &mut refusals);
        acked.produce(&cluster, &followed, i, &mut refusals);
    }
    eprintln!("refused while the disk was full: {refusals:?}");
    // The metadata goes on too, though broker 3's copy of its log cannot grow: topics created
    // now are committed by the others (and reach broker 3 once it has space).
    for n in 0..20 {
        create(&cluster, &format!("while-full-{n}"), 2, &[]);
    }
    eprintln!(
        "active controller while the disk was full: {:?}",
        controller(&cluster, 1)
    );
    for topic in [&led, &followed] {
        let p = partition_of(&cluster, 1, topic, 0);
        assert_ne!(p.leader_id, full as i32, "{topic}: {p:?}");
        assert!(!p.isr_nodes.contains(&(full as i32)), "{topic}: {p:?}");
        assert_eq!(p.isr_nodes.len(), 2, "{topic}: {p:?}");
    }
    // A broker heartbeats to the controller it knows. While its own metadata log cannot
    // grow, an active controller whose disk filled does not learn that the others elected a
    // new one, so its heartbeats miss and it is fenced instead: either way it leads nothing.
    let described = state(&cluster, 1, full as i32);
    eprintln!("broker 3 while its disk was full: {described}");
    if on_the_controller {
        assert!(
            ["storage-failed", "fenced"].contains(&described),
            "{described}"
        );
    } else {
        assert_eq!(described, "storage-failed");
    }

    std::fs::remove_file(&ballast).expect("remove the ballast");
    eventually(
        "broker 3 back in both ISRs, leading its preferred partition",
        || {
            let l = partition_of(&cluster, 1, &led, 0);
            let f = partition_of(&cluster, 1, &followed, 0);
            (l.leader_id == full as i32 && l.isr_nodes.len() == 3 && f.isr_nodes.len() == 3)
                .then_some(())
        },
    );
    eventually("broker 3 alive again", || {
        (state(&cluster, 1, full as i32) == "alive").then_some(())
    });
    eventually(
        "broker 3 knows the topics created while its disk was full",
        || {
            let m = cluster.broker(full).client().metadata_all();
            let known = m
                .topics
                .iter()
                .filter(|t| t.name.starts_with("while-full-"))
                .count();
            (known == 20).then_some(())
        },
    );
    for i in 60..70 {
        acked.produce(&cluster, &led, i, &mut refusals);
        acked.produce(&cluster, &followed, i, &mut refusals);
    }
    acked.assert_held_by(&cluster, full, &led);
    let leader = partition_of(&cluster, 1, &followed, 0).leader_id as usize;
    acked.assert_held_by(&cluster, leader, &followed);
    cluster.kill(full);
}
