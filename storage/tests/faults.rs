//! Disk faults injected through the storage I/O seam (`strom_storage::io`): a failed write, a
//! short write, a failed fsync, a full disk at a roll. In every case the log stores a call whole
//! or not at all, never reports as stored what is not, keeps serving reads, and takes appends
//! again once the fault clears (after `recover` where the failure left its state unknown).

mod common;

use std::fs;
use std::path::Path;

use common::{read_all, simple_batch};
use strom_storage::io::{EIO, ENOSPC};
use strom_storage::{
    Fault, INDEX_WRITE_GROUP, IoFaults, IoOp, Log, LogConfig, LogEnv, StorageError,
};

fn config(pairs: &[(&str, &str)]) -> LogConfig {
    let mut c = LogConfig::default();
    for (k, v) in pairs {
        c.set(k, v).unwrap();
    }
    c
}

fn open(dir: &Path, config: LogConfig, faults: &IoFaults) -> Log {
    Log::open_in(
        dir,
        config,
        LogEnv {
            faults: Some(faults.clone()),
            ..LogEnv::default()
        },
    )
    .unwrap()
}

fn os_error(e: &StorageError) -> Option<i32> {
    match e {
        StorageError::Io { source, .. } => source.raw_os_error(),
        _ => None,
    }
}

/// Offsets `0..n` in order, each once, with the values `simple_batch` gives them.
fn assert_contiguous(log: &Log, n: usize) {
    let recs = read_all(&log.reader(), log.reader().start_offset());
    let offsets: Vec<i64> = recs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (0..n as i64).collect::<Vec<_>>());
    for r in &recs {
        let value = r.value.as_deref().unwrap();
        assert!(
            value.starts_with(format!("v{}-", r.offset).as_bytes()),
            "offset {} holds {:?}",
            r.offset,
            String::from_utf8_lossy(&value[..value.len().min(16)])
        );
    }
}

fn log_len(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

#[test]
fn failed_and_short_writes_store_nothing_and_the_log_goes_on() {
    for fault in [Fault::Fail(EIO), Fault::Fail(ENOSPC), Fault::Short] {
        let dir = tempfile::tempdir().unwrap();
        let faults = IoFaults::new();
        let mut log = open(dir.path(), LogConfig::default(), &faults);
        log.append(&[simple_batch(0, 10, 1, 100)]).unwrap();
        let stored = log_len(dir.path());

        faults.set(IoOp::Write, Some(fault));
        let e = log.append(&[simple_batch(10, 10, 1, 100)]).unwrap_err();
        assert!(os_error(&e).is_some(), "{fault:?}: {e}");
        assert_eq!(
            log.end_offset(),
            10,
            "{fault:?}: nothing of the call is stored"
        );
        assert_eq!(
            log_len(dir.path()),
            stored,
            "{fault:?}: the torn part is cut off"
        );
        assert!(log.poisoned().is_none(), "{fault:?}: a clean failure");
        assert_contiguous(&log, 10);

        faults.clear();
        let info = log.append(&[simple_batch(10, 10, 1, 100)]).unwrap();
        assert_eq!(info.base_offset, 10);
        assert_contiguous(&log, 20);
        // And what is on disk recovers to the same thing.
        drop(log);
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        assert_contiguous(&log, 20);
        assert!(faults.injected() >= 1);
    }
}

#[test]
fn a_failed_index_write_cuts_the_log_back_too() {
    // One index entry per batch after the first, kept in memory until INDEX_WRITE_GROUP of them
    // are made: the failing append is the one that completes the group, so it writes the log and then both
    // indexes. Let the log write (and for the second case the time index write) through, fail
    // the next one.
    let before_group = INDEX_WRITE_GROUP;
    for (skip, fault) in [
        (1, Fault::Fail(EIO)),
        (2, Fault::Short),
        (2, Fault::Fail(ENOSPC)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let faults = IoFaults::new();
        let c = config(&[("index.interval.bytes", "1")]);
        let mut log = open(dir.path(), c.clone(), &faults);
        for i in 0..before_group {
            log.append(&[simple_batch(i * 4, 4, i as i64, 50)]).unwrap();
        }
        let len = |ext: &str| {
            fs::metadata(dir.path().join(format!("{:020}.{ext}", 0)))
                .unwrap()
                .len()
        };
        let before = (len("log"), len("index"), len("timeindex"));
        faults.set_after(IoOp::Write, skip, Some(fault));
        assert_eq!(
            before.1, 0,
            "no index entry written before the group is made"
        );
        let end = before_group * 4;
        let ts = before_group as i64 + 10;
        let e = log.append(&[simple_batch(end, 4, ts, 50)]).unwrap_err();
        assert!(os_error(&e).is_some(), "{skip} {fault:?}: {e}");
        assert_eq!(
            (len("log"), len("index"), len("timeindex")),
            before,
            "{skip} {fault:?}: all three files are cut back"
        );
        assert_eq!(log.end_offset(), end as i64);
        faults.clear();
        log.append(&[simple_batch(end, 4, ts, 50)]).unwrap();
        assert_eq!(
            len("index"),
            (INDEX_WRITE_GROUP * 8) as u64,
            "the retried append writes the whole group"
        );
        log.append(&[simple_batch(end + 4, 4, ts + 1, 50)]).unwrap();
        // A crash now (no close) recovers from the index: it must point at real batches, and
        // the entry kept in memory is made again from the log.
        drop(log);
        let log = Log::open(dir.path(), c).unwrap();
        assert_contiguous(&log, end + 8);
        for o in 0..end as i64 + 8 {
            let r = log.reader().read(o, 1).unwrap();
            assert!(r.first_offset <= o && o < r.next_offset, "offset {o}");
        }
        assert_eq!(log.reader().offset_for_time(ts).unwrap(), Some(end as i64));
        assert_eq!(
            log.reader().offset_for_time(ts + 1).unwrap(),
            Some(end as i64 + 4)
        );
    }
}

#[test]
fn a_failed_fsync_poisons_the_log_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let faults = IoFaults::new();
    let c = config(&[("flush.messages", "1")]);
    let mut log = open(dir.path(), c, &faults);
    let info = log.append(&[simple_batch(0, 10, 1, 100)]).unwrap();
    assert!(info.durable);
    assert_eq!(log.durable_offset(), 10);

    faults.set(IoOp::Sync, Some(Fault::Fail(EIO)));
    let e = log.append(&[simple_batch(10, 10, 1, 100)]).unwrap_err();
    assert_eq!(os_error(&e), Some(EIO), "{e}");
    assert_eq!(
        log.durable_offset(),
        10,
        "the durable offset does not cover the append whose fsync failed"
    );
    assert!(log.poisoned().is_some());
    // Appends are refused, reads go on.
    let e = log.append(&[simple_batch(20, 1, 1, 100)]).unwrap_err();
    assert!(matches!(e, StorageError::Poisoned { .. }), "{e}");
    assert_eq!(read_all(&log.reader(), 0).len(), 20);
    // Recovery needs the disk back: it fsyncs what it keeps before vouching for it.
    assert!(log.recover().is_err());
    assert!(log.poisoned().is_some());

    faults.clear();
    log.recover().unwrap();
    assert!(log.poisoned().is_none());
    assert_eq!(log.end_offset(), 20);
    assert_eq!(log.durable_offset(), 20);
    let info = log.append(&[simple_batch(20, 5, 1, 100)]).unwrap();
    assert_eq!((info.base_offset, info.durable), (20, true));
    assert_contiguous(&log, 25);
    log.close().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    assert_contiguous(&log, 25);
}

#[test]
fn readers_opened_before_a_recovery_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let faults = IoFaults::new();
    let mut log = open(dir.path(), config(&[("flush.messages", "1")]), &faults);
    let reader = log.reader();
    log.append(&[simple_batch(0, 3, 1, 10)]).unwrap();
    faults.set(IoOp::Sync, Some(Fault::Fail(EIO)));
    assert!(log.append(&[simple_batch(3, 3, 1, 10)]).is_err());
    faults.clear();
    log.recover().unwrap();
    log.append(&[simple_batch(6, 3, 1, 10)]).unwrap();
    assert_eq!(reader.end_offset(), 9);
    assert_eq!(read_all(&reader, 0).len(), 9);
}

#[test]
fn a_full_disk_at_a_roll_fails_the_append_and_the_roll_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let faults = IoFaults::new();
    // Batches of ~3.3 KB in segments of 4 KiB: every append after the first needs a new segment.
    let c = config(&[("segment.bytes", "4096")]);
    let mut log = open(dir.path(), c.clone(), &faults);
    log.append(&[simple_batch(0, 10, 1, 300)]).unwrap();
    faults.set(IoOp::Create, Some(Fault::Fail(ENOSPC)));
    let e = log.append(&[simple_batch(10, 10, 1, 300)]).unwrap_err();
    assert_eq!(os_error(&e), Some(ENOSPC), "{e}");
    assert_eq!(log.end_offset(), 10);
    assert!(log.poisoned().is_none(), "nothing of the call was stored");
    faults.clear();
    log.append(&[simple_batch(10, 10, 1, 300)]).unwrap();
    assert_eq!(log.reader().segment_count(), 2);
    assert_contiguous(&log, 20);
    drop(log);
    assert_contiguous(&Log::open(dir.path(), c).unwrap(), 20);
}

#[test]
fn an_append_that_fails_half_way_poisons_and_recovery_keeps_the_stored_part() {
    // Two batches that land in two segments: the first is written, the roll to the second
    // fails. The call cannot be reported as all or nothing, so the log is poisoned; recovery
    // keeps what was written, and the log stays contiguous.
    let dir = tempfile::tempdir().unwrap();
    let faults = IoFaults::new();
    let c = config(&[("segment.bytes", "4096")]);
    let mut log = open(dir.path(), c.clone(), &faults);
    faults.set(IoOp::Create, Some(Fault::Fail(ENOSPC)));
    let e = log
        .append(&[simple_batch(0, 10, 1, 300), simple_batch(10, 10, 1, 300)])
        .unwrap_err();
    assert!(matches!(e, StorageError::Poisoned { .. }), "{e}");
    assert_eq!(log.end_offset(), 10);
    assert!(log.append(&[simple_batch(10, 1, 1, 1)]).is_err());
    faults.clear();
    log.recover().unwrap();
    log.append(&[simple_batch(10, 10, 1, 300)]).unwrap();
    assert_contiguous(&log, 20);
    drop(log);
    assert_contiguous(&Log::open(dir.path(), c).unwrap(), 20);
}

/// How a truncation is carried out: in place of the segments (a prefix at every step), or
/// from a recorded intent (all or nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Truncation {
    /// `truncate_to` inside the segment being appended to.
    InActiveSegment,
    /// `truncate_to` inside an older segment: later segments are deleted.
    InOlderSegment,
    /// `truncate_to` inside a compacted closed segment (by intent).
    InCompactedSegment,
    /// `truncate_fully_and_start_at` (by intent).
    Fully,
}

/// A log of several segments and three leader epochs (and, for the compacted case, gaps).
fn truncation_subject(dir: &Path, faults: &IoFaults, compacted: bool) -> Log {
    let mut pairs = vec![("segment.bytes", "4096"), ("index.interval.bytes", "256")];
    if compacted {
        pairs.push(("cleanup.policy", "compact"));
    }
    let mut log = open(dir, config(&pairs), faults);
    for (i, epoch) in [0, 0, 0, 2, 2, 5].into_iter().enumerate() {
        log.set_leader_epoch(epoch).unwrap();
        for j in 0..5 {
            let n = (i * 5 + j) * 3;
            // Compacted: every batch's first record shares a key, so compaction rewrites them.
            let mut b = strom_protocol::batch::BatchBuilder::default();
            for k in 0..3 {
                let key = if compacted && k == 0 && j % 2 == 0 {
                    "dup".to_string()
                } else {
                    format!("k{}", n + k)
                };
                let value = format!("v{}-{}", n + k, "x".repeat(200));
                b.push(&strom_protocol::batch::RecordRef {
                    timestamp: 1,
                    key: Some(key.as_bytes()),
                    value: Some(value.as_bytes()),
                    headers: &[],
                })
                .unwrap();
            }
            log.append(&[b.finish().unwrap()]).unwrap();
        }
    }
    if compacted {
        log.roll().unwrap();
        log.compact().unwrap();
    }
    assert!(log.reader().segment_count() >= 4);
    log
}

fn truncate(log: &mut Log, how: Truncation, dir: &Path) -> Result<(), StorageError> {
    let bases = segment_bases(dir);
    match how {
        Truncation::InActiveSegment => log.truncate_to(log.end_offset() - 2).map(drop),
        Truncation::InOlderSegment => log.truncate_to(bases[1] + 4).map(drop),
        Truncation::InCompactedSegment => log.truncate_to(bases[1] + 4).map(drop),
        Truncation::Fully => log.truncate_fully_and_start_at(7),
    }
}

fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut bases: Vec<i64> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").map(|b| b.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// What a log holds: its start, its batches (bytes as stored) and its leader-epoch cache.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    start: i64,
    end: i64,
    batches: Vec<bytes::Bytes>,
    epochs: Vec<(i32, i64)>,
}

fn held(log: &Log) -> Held {
    let batches = common::read_batches(&log.reader(), log.start_offset());
    Held {
        start: log.start_offset(),
        end: log.end_offset(),
        batches: batches.iter().map(|(_, b)| b.clone()).collect(),
        epochs: log.epoch_entries(),
    }
}

/// After a truncation cut short: the log holds the old log, the truncated one, or (for the
/// in-place kind) a prefix of the old one in between; its end is where its batches end; and
/// its leader-epoch cache is the old one without the epochs that start at or past its end.
fn assert_prefix_and_agreeing_cache(
    now: &Held,
    old: &Held,
    done: &Held,
    how: Truncation,
    what: &str,
) {
    match how {
        Truncation::InActiveSegment | Truncation::InOlderSegment => {
            assert_eq!(now.start, old.start, "{what}");
            assert!(
                now.batches.len() >= done.batches.len() && now.batches.len() <= old.batches.len(),
                "{what}: {} batches, between {} and {}",
                now.batches.len(),
                done.batches.len(),
                old.batches.len()
            );
            assert_eq!(
                now.batches[..],
                old.batches[..now.batches.len()],
                "{what}: a prefix"
            );
            let last = now.batches.last().map(|b| {
                strom_protocol::batch::BatchHeader::parse(b)
                    .unwrap()
                    .next_offset()
            });
            assert_eq!(
                now.end,
                last.unwrap_or(now.start),
                "{what}: the end is the prefix's"
            );
        }
        Truncation::InCompactedSegment | Truncation::Fully => {
            assert!(now == old || now == done, "{what}: all or nothing\n{now:?}");
        }
    }
    let want: Vec<(i32, i64)> = old
        .epochs
        .iter()
        .copied()
        .filter(|&(_, s)| s < now.end && (how != Truncation::Fully || now == old))
        .collect();
    assert_eq!(now.epochs, want, "{what}: the cache agrees with the log");
    if how != Truncation::InCompactedSegment {
        let batches: Vec<_> = now
            .batches
            .iter()
            .map(|b| {
                (
                    strom_protocol::batch::BatchHeader::parse(b).unwrap(),
                    b.clone(),
                )
            })
            .collect();
        assert_eq!(
            now.epochs,
            common::epochs_of(&batches, now.start),
            "{what}: by the batches"
        );
    }
}

#[test]
fn a_truncation_cut_short_by_any_fault_leaves_a_prefix_and_an_agreeing_cache() {
    let hows = [
        Truncation::InActiveSegment,
        Truncation::InOlderSegment,
        Truncation::InCompactedSegment,
        Truncation::Fully,
    ];
    let cases = [
        (IoOp::Write, Fault::Fail(EIO)),
        (IoOp::Write, Fault::Short),
        (IoOp::Sync, Fault::Fail(EIO)),
        (IoOp::Create, Fault::Fail(ENOSPC)),
    ];
    for how in hows {
        let compacted = how == Truncation::InCompactedSegment;
        // The truncation without faults: what it leaves.
        let dir = tempfile::tempdir().unwrap();
        let faults = IoFaults::new();
        let mut log = truncation_subject(dir.path(), &faults, compacted);
        let old = held(&log);
        truncate(&mut log, how, dir.path()).unwrap();
        let done = held(&log);
        assert!(
            done.batches.len() < old.batches.len(),
            "{how:?} removes something"
        );
        drop(log);
        for (op, fault) in cases {
            let mut failures = 0;
            for skip in 0..200 {
                let what = format!("{how:?} {op:?} {fault:?} after {skip}");
                let dir = tempfile::tempdir().unwrap();
                let faults = IoFaults::new();
                let mut log = truncation_subject(dir.path(), &faults, compacted);
                assert_eq!(held(&log), old);
                let reader = log.reader();
                faults.set_after(op, skip, Some(fault));
                let result = truncate(&mut log, how, dir.path());
                let injected = faults.injected() > 0;
                faults.clear();
                if !injected {
                    result.unwrap();
                    assert_eq!(held(&log), done, "{what}");
                    break;
                }
                failures += 1;
                let e = result.expect_err(&what);
                assert!(os_error(&e).is_some(), "{what}: {e}");
                // Either nothing had changed, or the log refuses writes until it recovers.
                if log.poisoned().is_some() {
                    assert!(log.append(&[simple_batch(0, 1, 1, 1)]).is_err(), "{what}");
                }
                // In the process: recovery reads back what is on disk, and readers follow.
                log.recover().unwrap();
                let recovered = held(&log);
                assert_prefix_and_agreeing_cache(&recovered, &old, &done, how, &what);
                assert_eq!(
                    common::read_batches(&reader, reader.start_offset()).len(),
                    recovered.batches.len(),
                    "{what}: a reader from before follows"
                );
                // After a crash: the same.
                drop(log);
                let mut log = Log::open(dir.path(), config(&[("segment.bytes", "4096")])).unwrap();
                let reopened = held(&log);
                assert_prefix_and_agreeing_cache(&reopened, &old, &done, how, &what);
                assert_eq!(reopened, recovered, "{what}: recovery and reopen agree");
                // And the truncation can be done again, to the same end.
                if reopened != done {
                    truncate(&mut log, how, dir.path()).unwrap();
                    assert_eq!(held(&log), done, "{what}: done again");
                }
            }
            assert!(failures > 0, "{how:?} {op:?}: no call was failed");
        }
    }
}

#[test]
fn a_new_epoch_is_in_the_checkpoint_before_its_first_batch_is_stored() {
    // The first append of a new leader epoch writes the checkpoint, then the batch. If the
    // checkpoint cannot be written, nothing is stored and the log goes on. (The checkpoint is
    // not fsynced there: after a crash the log's open checks it against the batches.)
    for (op, skip, fault) in [
        (IoOp::Write, 0, Fault::Fail(EIO)),
        (IoOp::Write, 1, Fault::Short),
        (IoOp::Write, 2, Fault::Fail(ENOSPC)),
    ] {
        let what = format!("{op:?} {skip} {fault:?}");
        let dir = tempfile::tempdir().unwrap();
        let faults = IoFaults::new();
        let mut log = open(dir.path(), LogConfig::default(), &faults);
        log.append(&[simple_batch(0, 10, 1, 100)]).unwrap();
        log.set_leader_epoch(4).unwrap();
        faults.set_after(op, skip, Some(fault));
        let e = log.append(&[simple_batch(10, 10, 1, 100)]).unwrap_err();
        faults.clear();
        assert!(os_error(&e).is_some(), "{what}: {e}");
        assert_eq!(log.end_offset(), 10, "{what}: nothing stored");
        assert!(log.poisoned().is_none(), "{what}");
        assert_eq!(log.epoch_entries(), [(0, 0)], "{what}");
        assert_eq!(log.end_offset_for_epoch(4), (0, 10), "{what}");
        // A crash now: the checkpoint may hold epoch 4 or not, the log has no batch of it.
        drop(log);
        let mut log = open(dir.path(), LogConfig::default(), &faults);
        assert_contiguous(&log, 10);
        assert_eq!(log.epoch_entries(), [(0, 0)], "{what}: after a crash");
        log.set_leader_epoch(4).unwrap();
        log.append(&[simple_batch(10, 10, 1, 100)]).unwrap();
        assert_eq!(log.epoch_entries(), [(0, 0), (4, 10)], "{what}");
        // A follower's append of a new epoch follows the same order.
        faults.set_after(op, skip, Some(fault));
        let b = common::as_stored(&simple_batch(20, 5, 1, 100), 20, 6);
        let e = log
            .append_replica(&[strom_storage::ValidBatch::replicated(b.clone()).unwrap()])
            .unwrap_err();
        faults.clear();
        assert!(os_error(&e).is_some(), "{what}: {e}");
        assert_eq!(log.end_offset(), 20, "{what}");
        assert_eq!(log.epoch_entries(), [(0, 0), (4, 10)], "{what}");
        log.append_replica(&[strom_storage::ValidBatch::replicated(b).unwrap()])
            .unwrap();
        assert_eq!(log.epoch_entries(), [(0, 0), (4, 10), (6, 20)], "{what}");
        drop(log);
        let log = open(dir.path(), LogConfig::default(), &faults);
        assert_eq!(log.epoch_entries(), [(0, 0), (4, 10), (6, 20)], "{what}");
        assert_contiguous(&log, 25);
    }
}
