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
