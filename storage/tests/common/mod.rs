//! Helpers shared by the storage tests.
#![allow(dead_code)]

use bytes::Bytes;
use strom_protocol::batch::{BatchBuilder, BatchIter, RecordRef, Records};
use strom_storage::{LogReader, ReadResult};

/// One record as the tests model it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A record to encode: (timestamp, key, value).
pub type Spec<'a> = (i64, Option<&'a [u8]>, Option<&'a [u8]>);

/// Encodes records as one batch.
pub fn batch(records: &[Spec<'_>]) -> Bytes {
    let mut b = BatchBuilder::default();
    for &(timestamp, key, value) in records {
        b.push(&RecordRef {
            timestamp,
            key,
            value,
            headers: &[],
        })
        .unwrap();
    }
    b.finish().unwrap()
}

/// A batch of `n` records with keys `k{i}` and values `v{i}` padded to `size` bytes.
pub fn simple_batch(first: usize, n: usize, ts: i64, size: usize) -> Bytes {
    let mut b = BatchBuilder::default();
    for i in first..first + n {
        let key = format!("k{i}");
        let mut value = format!("v{i}-").into_bytes();
        value.resize(size.max(value.len()), b'x');
        b.push(&RecordRef {
            timestamp: ts,
            key: Some(key.as_bytes()),
            value: Some(&value),
            headers: &[],
        })
        .unwrap();
    }
    b.finish().unwrap()
}

/// Decodes every record of a read's batches.
pub fn records_of(data: &Bytes) -> Vec<Rec> {
    let mut out = Vec::new();
    for item in BatchIter::new(data) {
        let (range, _) = item.unwrap();
        for r in Records::new(data.slice(range)).unwrap() {
            let r = r.unwrap();
            out.push(Rec {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()),
            });
        }
    }
    out
}

/// Reads every record from `from` to the log end, in small reads.
pub fn read_all(reader: &LogReader, from: i64) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r: ReadResult = reader.read(offset, 4096).unwrap();
        if r.data.is_empty() {
            break;
        }
        out.extend(
            records_of(&r.data)
                .into_iter()
                .filter(|x| x.offset >= offset),
        );
        assert!(r.next_offset > offset, "reads make progress");
        offset = r.next_offset;
    }
    out
}

/// `batch` with its base offset and partition leader epoch set (neither is covered by the
/// CRC): a batch as a leader stored it, for a follower's append.
pub fn as_stored(batch: &Bytes, base_offset: i64, leader_epoch: i32) -> Bytes {
    let mut b = bytes::BytesMut::from(&batch[..]);
    strom_protocol::batch::set_base_offset(&mut b, base_offset).unwrap();
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    b.freeze()
}

/// Every stored batch from the one holding `from` to the log end, with its header.
pub fn read_batches(
    reader: &LogReader,
    from: i64,
) -> Vec<(strom_protocol::batch::BatchHeader, Bytes)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r: ReadResult = reader.read(offset, 1).unwrap();
        if r.data.is_empty() {
            break;
        }
        for item in BatchIter::new(&r.data) {
            let (range, h) = item.unwrap();
            out.push((h, r.data.slice(range)));
        }
        assert!(r.next_offset > offset, "reads make progress");
        offset = r.next_offset;
    }
    out
}

/// The leader-epoch entries a log's batches imply: one wherever a batch carries an epoch
/// (>= 0) newer than all before it, the first moved up to the log start.
pub fn epochs_of(
    batches: &[(strom_protocol::batch::BatchHeader, Bytes)],
    start: i64,
) -> Vec<(i32, i64)> {
    let mut out: Vec<(i32, i64)> = Vec::new();
    for (h, _) in batches {
        let e = h.partition_leader_epoch;
        if e >= 0 && out.last().is_none_or(|l| e > l.0) {
            out.push((e, h.base_offset.max(start)));
        }
    }
    out
}
