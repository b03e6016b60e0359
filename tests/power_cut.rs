//! Issue 17's scenario 9, second part: a simulated power cut on every broker at once.
//!
//! Three `strom serve` processes run with the storage seam's sync journal on
//! (`STROM_SYNC_JOURNAL`, `storage/src/io.rs`): every fsync of a segment's `.log` records how
//! long the file was when it returned. The test kills all three (SIGKILL), then does to each
//! `.log` what a power cut does to a file written through the page cache: it drops every byte
//! past the last fsync ("drop"), or keeps a random part of them whose end is zeros ("tear": the
//! file grew but the last pages never reached the disk). Then the brokers restart on what is
//! left.
//!
//! - A topic with a durable policy (`flush.messages=1`, so its high watermark moves over fsynced
//!   offsets on every in-sync replica) must lose nothing acknowledged at `acks=all`, under an
//!   idempotent load that runs through the cuts; the checker of `tests/failover.rs` reads every
//!   partition back.
//! - A topic with the default policy (no fsync of its own) loses what was acknowledged since its
//!   files were last fsynced (on the replicas the new leaders are elected from): the test reports
//!   how much, and asserts only that what survives is a prefix of what was acknowledged (no
//!   offset holds another record) and that the cluster serves and takes writes again.
//!
//! What the model leaves out: index files and the small files replaced by rename
//! (leader-epoch and producer-state checkpoints) are kept as written; the metadata log fsyncs
//! every entry before it counts; a `.log` replaced by compaction is not cut (no compacted topics
//! here).

mod support;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, eventually};
use support::load::{Load, check_acknowledged, create_with, cycles, full_isr, report};
use support::*;

/// How a cut treats the bytes past a file's last fsync.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    Drop,
    Tear,
}

/// A small deterministic generator (xorshift), seeded per cycle, so a failing cut can be rerun.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        if n == 0 { 0 } else { self.0 % n }
    }
}

/// The last length the journal at `journal` holds for each `.log` it names.
fn synced_lengths(journal: &Path) -> BTreeMap<PathBuf, u64> {
    let text = std::fs::read_to_string(journal).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (path, len) = line.rsplit_once('\t')?;
            Some((PathBuf::from(path), len.parse().ok()?))
        })
        .collect()
}

/// Every partition directory's segment `.log` files under `dir`, oldest first.
fn segment_logs(dir: &Path) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    for partition in std::fs::read_dir(dir)
        .expect("the data directory")
        .flatten()
    {
        if !partition.path().is_dir() {
            continue;
        }
        let mut logs: Vec<PathBuf> = std::fs::read_dir(partition.path())
            .expect("a partition")
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        if !logs.is_empty() {
            out.push(logs);
        }
    }
    out
}

/// What one broker's cut did.
#[derive(Debug, Default)]
struct CutReport {
    /// Bytes past their file's last fsync.
    unsynced: u64,
    dropped: u64,
    /// Closed segments (not their partition's last) that lost bytes.
    closed_cut: usize,
}

/// Cuts every segment `.log` under `data` as a power cut would, given the sync journal at
/// `journal`.
fn power_cut(data: &Path, journal: &Path, cut: Cut, rng: &mut Rng) -> CutReport {
    let synced = synced_lengths(journal);
    let mut report = CutReport::default();
    for logs in segment_logs(data) {
        for (i, log) in logs.iter().enumerate() {
            let real = std::fs::canonicalize(log).expect("canonical path");
            let len = std::fs::metadata(log).expect("metadata").len();
            let durable = synced.get(&real).copied().unwrap_or(0).min(len);
            if len == durable {
                continue;
            }
            report.unsynced += len - durable;
            let keep = match cut {
                Cut::Drop => durable,
                Cut::Tear => durable + rng.below(len - durable + 1),
            };
            let file = OpenOptions::new().write(true).open(log).expect("open");
            file.set_len(keep).expect("cut");
            if cut == Cut::Tear && keep > durable {
                // The end of what is kept never reached the disk: zeros.
                let zeros_from = durable + rng.below(keep - durable + 1);
                let zeros = vec![0u8; usize::try_from(keep - zeros_from).expect("size")];
                file.write_all_at(&zeros, zeros_from).expect("zero");
            }
            if keep < len && i + 1 < logs.len() {
                report.closed_cut += 1;
            }
            report.dropped += len - keep;
        }
    }
    report
}

#[test]
fn a_power_cut_on_every_broker_loses_nothing_acknowledged_under_a_durable_policy() {
    let journals = TestDir::new();
    let journal = |id: usize| journals.data().join(format!("sync-{id}"));
    std::fs::create_dir_all(journals.data()).expect("journal dir");
    let mut cluster = Cluster::start_wrapped(&[], |id, _| {
        vec![
            "env".to_string(),
            format!("STROM_SYNC_JOURNAL={}", journal(id).display()),
        ]
    });
    create_with(
        &cluster,
        "durable",
        2,
        &[("flush.messages", "1"), ("segment.bytes", "65536")],
    );
    let load = Load::start(&cluster, "durable", 2);
    let cluster_dirs: Vec<PathBuf> = cluster.dirs.iter().map(TestDir::data).collect();
    let mut recoveries = Vec::new();
    let mut lost_plain = Vec::new();
    let mut closed_cut = 0;
    for cycle in 0..cycles(2) {
        let cut = if cycle % 2 == 0 { Cut::Drop } else { Cut::Tear };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (cycle as u64 + 1));
        // The default policy's topic of this cycle, written before the cut and read after.
        let plain: &'static str = Box::leak(format!("plain-{cycle}").into_boxed_str());
        // Small segments, so that closed segments are cut too.
        create_with(&cluster, plain, 2, &[("segment.bytes", "4096")]);
        let plain_load = Load::start(&cluster, plain, 2);
        std::thread::sleep(Duration::from_millis(300));
        let plain_acked = plain_load.finish();

        let killed = Instant::now();
        cluster.crash_all(|id| {
            let r = power_cut(&cluster_dirs[id - 1], &journal(id), cut, &mut rng);
            eprintln!(
                "cycle {cycle} ({cut:?}): broker {id} had {} bytes past their last fsync, {} dropped, {} closed segments cut",
                r.unsynced, r.dropped, r.closed_cut
            );
            closed_cut += r.closed_cut;
        });
        for partition in 0..2 {
            let first = load.first_ack_after(&cluster, partition, killed);
            recoveries.push(first.duration_since(killed));
        }
        full_isr(&cluster, "durable");
        full_isr(&cluster, plain);
        let lost = survivors_are_a_prefix(&cluster, plain, &plain_acked);
        eprintln!(
            "cycle {cycle}: default policy lost {lost} of {} acknowledged records",
            plain_acked.len()
        );
        lost_plain.push((lost, plain_acked.len()));
    }
    assert!(
        closed_cut > 0,
        "no closed segment lost bytes: the cuts did not reach past the active segments"
    );
    let acked = load.finish();
    check_acknowledged(&cluster, "durable", 2, &acked);
    report(
        "power cut on every broker to the first acks=all record acknowledged (flush.messages=1), per partition",
        recoveries,
        acked.len(),
    );
    let (lost, of) = lost_plain
        .iter()
        .fold((0, 0), |(l, o), (lost, of)| (l + lost, o + of));
    eprintln!("default policy: {lost} of {of} acknowledged records lost over the cuts");
}

/// Reads `topic` back from its leaders and asserts every acknowledged record is either at its
/// offset or gone, and that the gone ones are each partition's last: a power cut takes a
/// suffix, never changes or reorders a record. Returns how many are gone.
fn survivors_are_a_prefix(cluster: &Cluster, topic: &str, acked: &[support::load::Acked]) -> usize {
    let mut lost = 0;
    for partition in 0..2 {
        let leader = eventually("a leader", || {
            let p = support::cluster::partition_of(cluster, 1, topic, partition);
            usize::try_from(p.leader_id).ok().filter(|l| *l >= 1)
        });
        let log = cluster
            .broker(leader)
            .client()
            .fetch_all(topic, partition as i32);
        let at: BTreeMap<i64, (Vec<u8>, Vec<u8>)> = log
            .into_iter()
            .map(|r| {
                (
                    r.offset,
                    (r.key.unwrap_or_default(), r.value.unwrap_or_default()),
                )
            })
            .collect();
        let mut mine: Vec<_> = acked
            .iter()
            .filter(|a| a.partition == partition as i32)
            .collect();
        mine.sort_by_key(|a| a.offset);
        let mut gone_from = None;
        for a in mine {
            match at.get(&a.offset) {
                Some((key, value)) => {
                    assert_eq!(
                        (key.as_slice(), value.as_slice()),
                        (a.key.as_bytes(), a.value.as_bytes()),
                        "{topic}-{partition}: another record at {}",
                        a.offset
                    );
                    assert!(
                        gone_from.is_none(),
                        "{topic}-{partition}: {} survived after {gone_from:?} was lost",
                        a.offset
                    );
                }
                None => {
                    gone_from.get_or_insert(a.offset);
                    lost += 1;
                }
            }
        }
    }
    lost
}
