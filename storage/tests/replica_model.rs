//! Property test of the replication side of a log: random sequences of leader appends across
//! leader-epoch changes, follower appends (good ones and ones that must be refused),
//! `truncate_to`, `truncate_fully_and_start_at`, retention, DeleteRecords, rolls, and clean and
//! unclean reopens, against a simple model: the batches (base offset, epoch, records), the log's
//! start and end, its leader epoch and its leader-epoch entries. After every step the log must
//! read back exactly the model's batches and records, have its bounds and entries, and answer
//! `end_offset_for_epoch` for every epoch as the model does.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{as_stored, read_batches, records_of};
use proptest::prelude::*;
use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::{Log, LogConfig, ManualClock, StorageError, ValidBatch};

#[derive(Debug, Clone)]
enum Op {
    /// A leader append of batches of these many records.
    LeaderAppend(Vec<u8>),
    /// `set_leader_epoch(current + delta)`.
    SetLeaderEpoch(i8),
    /// A follower append of (records, epoch step) batches: step -2 is a batch without an
    /// epoch, others move the epoch from the latest. `gap` 1..=4: batch `gap - 1` starts
    /// `gap` offsets late (a gap the leader's compaction left: filled); 5..=8: batch
    /// `gap - 5` starts one offset early (refused).
    ReplicaAppend(Vec<(u8, i8)>, u8),
    TruncateTo(u16),
    TruncateFully(u16),
    DeleteRecords(u16),
    Retention,
    Roll,
    CloseAndReopen,
    CrashAndReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(1u8..6, 1..4).prop_map(Op::LeaderAppend),
        2 => (-1i8..3).prop_map(Op::SetLeaderEpoch),
        5 => (proptest::collection::vec((1u8..6, -2i8..3), 1..5), prop_oneof![6 => Just(0u8), 2 => 1u8..9])
            .prop_map(|(b, gap)| Op::ReplicaAppend(b, gap)),
        3 => any::<u16>().prop_map(Op::TruncateTo),
        1 => any::<u16>().prop_map(Op::TruncateFully),
        1 => any::<u16>().prop_map(Op::DeleteRecords),
        1 => Just(Op::Retention),
        1 => Just(Op::Roll),
        1 => Just(Op::CloseAndReopen),
        1 => Just(Op::CrashAndReopen),
    ]
}

fn config() -> LogConfig {
    let mut c = LogConfig::default();
    c.set("segment.bytes", "4096").unwrap();
    c.set("index.interval.bytes", "200").unwrap();
    c.set("retention.ms", "-1").unwrap();
    c.set("retention.bytes", "5000").unwrap();
    c
}

#[derive(Debug, Clone)]
struct MBatch {
    base: i64,
    epoch: i32,
    /// Values of its records, offsets `base..`; none for the empty batch filling a gap.
    values: Vec<Vec<u8>>,
    /// Offsets it holds.
    span: i64,
}

impl MBatch {
    fn next(&self) -> i64 {
        self.base + self.span
    }
}

#[derive(Debug, Default)]
struct Model {
    batches: Vec<MBatch>,
    start: i64,
    end: i64,
    leader_epoch: i32,
    entries: Vec<(i32, i64)>,
    /// Makes every record's value unique.
    tag: u32,
}

impl Model {
    fn latest(&self) -> Option<i32> {
        self.entries.last().map(|e| e.0)
    }

    /// The cache's rule: a new entry for a newer epoch; one at the same start is replaced.
    fn assign(&mut self, epoch: i32, start: i64) {
        if epoch < 0 || self.latest().is_some_and(|l| epoch <= l) {
            return;
        }
        if self.entries.last().is_some_and(|e| e.1 == start) {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
    }

    fn trim(&mut self) {
        let start = self.start;
        if let Some(i) = self.entries.iter().rposition(|e| e.1 <= start) {
            self.entries.drain(..i);
            self.entries[0].1 = start;
        }
        let end = self.end;
        self.entries.retain(|e| e.1 < end);
    }

    fn lookup(&self, epoch: i32) -> (i32, i64) {
        if epoch < 0 {
            return (-1, -1);
        }
        let Some(i) = self.entries.iter().rposition(|e| e.0 <= epoch) else {
            return (-1, -1);
        };
        let end = self.entries.get(i + 1).map_or(self.end, |e| e.1);
        (self.entries[i].0, end)
    }

    /// A batch of `n` records with fresh values, as it is encoded before it is stored.
    fn encode(&mut self, n: u8) -> (Bytes, Vec<Vec<u8>>) {
        let mut b = BatchBuilder::default();
        let mut values = Vec::new();
        for i in 0..n {
            self.tag += 1;
            let value = format!("{}-{i}-{}", self.tag, "x".repeat(250)).into_bytes();
            b.push(&RecordRef {
                timestamp: 1,
                key: None,
                value: Some(&value),
                headers: &[],
            })
            .unwrap();
            values.push(value);
        }
        (b.finish().unwrap(), values)
    }

    fn reopened(&mut self) {
        self.trim();
        self.leader_epoch = self.latest().unwrap_or(0).max(0);
    }
}

/// Compares the log with the model.
fn check(log: &Log, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.start_offset(), m.start);
    prop_assert_eq!(log.end_offset(), m.end);
    prop_assert_eq!(log.reader().end_offset(), m.end);
    prop_assert_eq!(log.leader_epoch(), m.leader_epoch);
    prop_assert_eq!(log.epoch_entries(), m.entries.clone());
    prop_assert_eq!(log.latest_epoch(), m.latest());
    let max = m.entries.iter().map(|e| e.0).max().unwrap_or(0);
    for epoch in -1..=max + 2 {
        prop_assert_eq!(
            log.end_offset_for_epoch(epoch),
            m.lookup(epoch),
            "epoch {}",
            epoch
        );
    }
    let got = read_batches(&log.reader(), m.start);
    let want: Vec<&MBatch> = m.batches.iter().filter(|b| b.next() > m.start).collect();
    prop_assert_eq!(got.len(), want.len(), "batches");
    for ((h, bytes), w) in got.iter().zip(want) {
        prop_assert_eq!((h.base_offset, h.partition_leader_epoch), (w.base, w.epoch));
        let records = records_of(bytes);
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let held = w.base + w.values.len() as i64;
        prop_assert_eq!(offsets, (w.base..held).collect::<Vec<_>>());
        for (r, v) in records.iter().zip(&w.values) {
            prop_assert_eq!(r.value.as_ref(), Some(v));
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let open = || Log::open_with_clock(dir.path(), config(), Arc::new(clock.clone())).unwrap();
    let mut log = Some(open());
    let mut m = Model::default();
    for op in ops {
        let l = log.as_mut().unwrap();
        match op {
            Op::LeaderAppend(counts) => {
                let mut encoded = Vec::new();
                let mut batches = Vec::new();
                let mut next = m.end;
                for n in counts {
                    let (b, values) = m.encode(n);
                    encoded.push(b);
                    batches.push(MBatch {
                        base: next,
                        epoch: m.leader_epoch,
                        span: values.len() as i64,
                        values,
                    });
                    next += i64::from(n);
                }
                let r = l.append(&encoded);
                if m.latest().is_some_and(|latest| latest > m.leader_epoch) {
                    let stale = matches!(r, Err(StorageError::StaleLeaderEpoch { .. }));
                    prop_assert!(stale, "{:?}", r);
                } else {
                    let info = r.unwrap();
                    prop_assert_eq!((info.base_offset, info.next_offset), (m.end, next));
                    m.assign(m.leader_epoch, m.end);
                    m.batches.extend(batches);
                    m.end = next;
                }
            }
            Op::SetLeaderEpoch(delta) => {
                let epoch = m.leader_epoch + i32::from(delta);
                let r = l.set_leader_epoch(epoch);
                let floor = m.latest().unwrap_or(0).max(m.leader_epoch);
                if epoch < 0 {
                    let invalid = matches!(r, Err(StorageError::InvalidLeaderEpoch { .. }));
                    prop_assert!(invalid, "{:?}", r);
                } else if epoch < floor {
                    let stale = matches!(r, Err(StorageError::StaleLeaderEpoch { .. }));
                    prop_assert!(stale, "{:?}", r);
                } else {
                    r.unwrap();
                    m.leader_epoch = epoch;
                }
            }
            Op::ReplicaAppend(specs, gap) => {
                let mut epoch = m.latest().unwrap_or(0);
                let mut next = m.end;
                let mut valid = Vec::new();
                let mut batches = Vec::new();
                // (index, offsets skipped) of the gap to fill, or the index of the batch one
                // offset early.
                let late = (1..=4)
                    .contains(&gap)
                    .then(|| (usize::from(gap - 1) % specs.len(), i64::from(gap)));
                let early = (gap >= 5).then(|| usize::from(gap - 5) % specs.len());
                for (i, (n, step)) in specs.iter().enumerate() {
                    let stamped = if *step == -2 {
                        -1
                    } else {
                        epoch = (epoch + i32::from(*step)).max(0);
                        epoch
                    };
                    let (b, values) = m.encode(*n);
                    let mut base = next;
                    if let Some((_, skipped)) = late.filter(|l| l.0 == i) {
                        // The follower fills the gap with an empty batch in this one's epoch.
                        batches.push(MBatch {
                            base,
                            epoch: stamped,
                            values: Vec::new(),
                            span: skipped,
                        });
                        base += skipped;
                    }
                    if early == Some(i) {
                        base -= 1;
                    }
                    valid.push(ValidBatch::replicated(as_stored(&b, base, stamped)).unwrap());
                    batches.push(MBatch {
                        base,
                        epoch: stamped,
                        span: values.len() as i64,
                        values,
                    });
                    next = base + i64::from(*n);
                }
                let gap_at = early;
                let r = l.append_replica(&valid);
                let stale = {
                    let mut latest = m.latest();
                    let mut stale = false;
                    for b in batches.iter().filter(|b| b.epoch >= 0) {
                        stale |= latest.is_some_and(|l| b.epoch < l);
                        latest = Some(latest.map_or(b.epoch, |l| l.max(b.epoch)));
                    }
                    stale
                };
                if gap_at.is_some() {
                    let mismatch = matches!(r, Err(StorageError::ReplicaOffsetMismatch { .. }));
                    prop_assert!(mismatch, "{:?}", r);
                } else if stale {
                    let refused = matches!(r, Err(StorageError::StaleLeaderEpoch { .. }));
                    prop_assert!(refused, "{:?}", r);
                } else {
                    let info = r.unwrap();
                    prop_assert_eq!((info.base_offset, info.next_offset), (m.end, next));
                    for b in &batches {
                        m.assign(b.epoch, b.base);
                    }
                    m.batches.extend(batches);
                    m.end = next;
                }
            }
            Op::TruncateTo(at) => {
                let span = m.end - m.start + 3;
                let offset = m.start - 1 + i64::from(at) % span;
                let r = l.truncate_to(offset);
                if offset >= m.end {
                    prop_assert_eq!(r.unwrap(), m.end);
                } else if offset < m.start {
                    let out = matches!(r, Err(StorageError::OffsetOutOfRange { .. }));
                    prop_assert!(out, "{:?}", r);
                } else {
                    let holding = m
                        .batches
                        .iter()
                        .find(|b| b.base <= offset && offset < b.next())
                        .unwrap();
                    let new_end = holding.base;
                    if new_end <= m.start {
                        m.batches.clear();
                        m.entries.clear();
                        m.end = m.start;
                    } else {
                        m.batches.retain(|b| b.base < new_end);
                        m.entries.retain(|e| e.1 < new_end);
                        m.end = new_end;
                    }
                    prop_assert_eq!(r.unwrap(), m.end);
                }
            }
            Op::TruncateFully(at) => {
                let offset = i64::from(at) % 150;
                l.truncate_fully_and_start_at(offset).unwrap();
                m.batches.clear();
                m.entries.clear();
                m.start = offset;
                m.end = offset;
            }
            Op::DeleteRecords(at) => {
                let offset = m.start + i64::from(at) % (m.end - m.start + 1);
                let start = l.delete_records_before(offset).unwrap();
                m.start = m.start.max(offset);
                prop_assert_eq!(start, m.start);
                m.trim();
            }
            Op::Retention => {
                let out = l.enforce_retention().unwrap();
                prop_assert!(out.log_start >= m.start);
                m.start = out.log_start;
                m.trim();
            }
            Op::Roll => l.roll().unwrap(),
            Op::CloseAndReopen => {
                log.take().unwrap().close().unwrap();
                log = Some(open());
                m.reopened();
            }
            Op::CrashAndReopen => {
                drop(log.take());
                log = Some(open());
                m.reopened();
            }
        }
        m.batches.retain(|b| b.next() > m.start);
        check(log.as_ref().unwrap(), &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn replicated_log_matches_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
