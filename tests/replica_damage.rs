//! Damage to one replica's disk (issue 17's scenario 8), against three `strom serve`
//! processes: a byte of a partition's log flipped while its broker is down. The replica finds
//! it when it opens the log (a batch whose CRC does not check ends the log there), fetches the
//! rest again from its leader, rejoins the ISR, and when it is elected serves every
//! acknowledged record intact; it never serves the damaged batch. The third broker of each test
//! holds no replica: it keeps the metadata quorum while one of the two replicas is down.

mod support;

use std::fs;
use std::path::PathBuf;

use strom_protocol::batch::{BatchIter, HEADER_LEN};
use strom_protocol::messages::Acks;

use support::cluster::{
    Cluster, assert_holds, create, eventually, leader_and_follower, leader_other_than,
    partition_of, produce_all,
};

/// Flips a bit of a record inside the batch holding `offset`, in partition 0 of `topic` on
/// broker `id`'s disk (its broker is down). Returns the segment file changed.
fn flip_a_record_byte(cluster: &Cluster, id: usize, topic: &str, offset: i64) -> PathBuf {
    let dir = cluster.dirs[id - 1].data().join(format!("{topic}-0"));
    let mut segments: Vec<(i64, PathBuf)> = fs::read_dir(&dir)
        .expect("the partition's directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .filter_map(|p| {
            let base = p.file_stem()?.to_str()?.parse().ok()?;
            Some((base, p))
        })
        .collect();
    segments.sort();
    let (_, path) = segments
        .into_iter()
        .rev()
        .find(|(base, _)| *base <= offset)
        .expect("a segment holding the offset");
    let mut bytes = fs::read(&path).expect("read the segment");
    let range = BatchIter::new(&bytes)
        .flatten()
        .find(|(_, h)| h.base_offset <= offset && offset <= h.last_offset())
        .map(|(range, _)| range)
        .expect("the batch holding the offset");
    // Past the batch header: a record's bytes, which only the CRC covers.
    let at = range.start + HEADER_LEN + 2;
    assert!(at < range.end);
    bytes[at] ^= 0x20;
    fs::write(&path, bytes).expect("write the segment back");
    path
}

/// Broker `id` says it found the damage when it opened the log (its stderr).
fn assert_found_damage(cluster: &Cluster, id: usize) {
    let log = fs::read_to_string(&cluster.broker(id).log_path).expect("the broker's stderr");
    assert!(
        log.contains("recovery cut off a damaged tail"),
        "broker {id} did not report the damage:\n{log}"
    );
}

fn wait_isr(cluster: &Cluster, asked: usize, topic: &str, n: usize) {
    eventually("the ISR size", || {
        (partition_of(cluster, asked, topic, 0).isr_nodes.len() == n).then_some(())
    });
}

/// A follower's copy damaged, then the leader's: each time the damaged replica cuts its log
/// at the bad batch, fetches the rest again, rejoins, and serves everything intact once it
/// leads (every record is decoded with its CRC checked).
#[test]
fn a_flipped_byte_on_a_replica_is_cut_off_fetched_again_and_never_served() {
    let mut cluster = Cluster::start();
    create(&cluster, "ledger", 2, &[]);
    let (leader, follower) = leader_and_follower(&cluster, "ledger");
    produce_all(&cluster, leader, "ledger", 0, 40, Acks::All);

    // The follower, killed: a byte of record 20's batch flips on its disk.
    cluster.kill(follower);
    wait_isr(&cluster, leader, "ledger", 1);
    flip_a_record_byte(&cluster, follower, "ledger", 20);
    cluster.restart(follower);
    assert_found_damage(&cluster, follower);
    wait_isr(&cluster, leader, "ledger", 2);
    // The leader dies: the follower, elected, serves all 40 intact.
    cluster.kill(leader);
    let next = leader_other_than(&cluster, "ledger", Some(leader), follower);
    assert_eq!(next, follower, "the other replica takes over");
    assert_holds(&cluster, follower, "ledger", 40);

    // Now the old leader's copy, while it is down; writes go on meanwhile.
    flip_a_record_byte(&cluster, leader, "ledger", 30);
    produce_all(&cluster, follower, "ledger", 40, 10, Acks::All);
    cluster.restart(leader);
    assert_found_damage(&cluster, leader);
    wait_isr(&cluster, follower, "ledger", 2);
    cluster.kill(follower);
    let last = leader_other_than(&cluster, "ledger", Some(follower), leader);
    assert_eq!(last, leader);
    assert_holds(&cluster, leader, "ledger", 50);
}
