//! Idempotent producers: producer-id allocation, and each partition's producer state (the
//! sequence numbers that make retries safe), with its snapshot file and its rebuild from the log.
//!
//! A batch from an idempotent producer carries (producer id, epoch, base sequence). For each
//! producer a partition remembers its epoch and the last five batches it appended (first and last
//! sequence, base offset). A batch is appended when its sequence continues the last one; a batch
//! equal to one of the five is a retry and is answered with the offset it got the first time,
//! without a second append; anything else is refused (`OUT_OF_ORDER_SEQUENCE`,
//! `PRODUCER_FENCED`, `UNKNOWN_PRODUCER_ID`).
//!
//! The state is part of the log: it is rebuilt by reading the batch headers of the log. To keep
//! that short, the partition writes `producer-state` in its directory (at clean close and at
//! every maintenance pass): the state as of an offset, so a start reads only the batches after it.
//!
//! ```text
//! producer-state: magic "STRMPID1" | offset i64 | count u32 |
//!                 count x (producer id i64 | epoch i16 | last seen ms i64 | n u8 |
//!                          n x (first seq i32 | last seq i32 | base offset i64)) | crc32 u32
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use strom_protocol::ErrorCode;
use strom_protocol::batch::{BatchHeader, BatchIter};
use strom_storage::{Log, LogReader, StorageError};

/// Batches remembered per producer and partition: as many as a producer may have in flight.
pub(crate) const REMEMBERED_BATCHES: usize = 5;
const SNAPSHOT_FILE: &str = "producer-state";
const SNAPSHOT_MAGIC: &[u8; 8] = b"STRMPID1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

/// A producer's last [`REMEMBERED_BATCHES`] batches, oldest first, kept inline rather than in
/// a heap buffer of their own: with 1,000 partitions every batch finds its partition's state
/// cold in the CPU cache, and each separate allocation is one more miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recent {
    items: [BatchMeta; REMEMBERED_BATCHES],
    len: u8,
}

impl Recent {
    const EMPTY: Recent = Recent {
        items: [BatchMeta {
            first_seq: 0,
            last_seq: 0,
            base_offset: 0,
        }; REMEMBERED_BATCHES],
        len: 0,
    };

    fn as_slice(&self) -> &[BatchMeta] {
        &self.items[..usize::from(self.len)]
    }

    fn len(&self) -> usize {
        usize::from(self.len)
    }

    fn last(&self) -> Option<&BatchMeta> {
        self.as_slice().last()
    }

    /// Adds `b` as the newest, forgetting the oldest when full.
    fn push(&mut self, b: BatchMeta) {
        let mut n = usize::from(self.len);
        if n == REMEMBERED_BATCHES {
            self.items.copy_within(1.., 0);
            n -= 1;
        }
        self.items[n] = b;
        self.len = (n + 1) as u8;
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Producer {
    epoch: i16,
    last_seen_ms: i64,
    batches: Recent,
}

impl Producer {
    fn last_seq(&self) -> Option<i32> {
        self.batches.last().map(|b| b.last_seq)
    }
}

/// The sequence after `seq`, wrapping from `i32::MAX` to 0 as Kafka's producers do.
fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// The last sequence of a batch.
fn last_seq(h: &BatchHeader) -> i32 {
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    (last % (i64::from(i32::MAX) + 1)) as i32
}

/// What to do with one produce request's batches for a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Append them.
    Append,
    /// A retry of batches already appended: answer with this base offset.
    Duplicate(i64),
    /// Refuse them.
    Reject(ErrorCode, String),
}

/// One partition's producer state.
#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, Producer>,
    /// Per producer id, (epoch, last sequence) of batches accepted into the group being
    /// appended, not yet stored. A group rarely holds more than one producer: a list.
    pending: Vec<(i64, (i16, i32))>,
}

impl ProducerStates {
    /// Decides on a request's batches (in order), counting batches accepted earlier in the same
    /// append group. An `Append` is remembered as pending until [`Self::commit`] or
    /// [`Self::abort`].
    pub fn check(&mut self, batches: &[&BatchHeader]) -> Verdict {
        let Some(first) = batches.first() else {
            return Verdict::Append;
        };
        if first.producer_id < 0 {
            return Verdict::Append;
        }
        // A retry: the first batch is one already appended; then all of them must be.
        if let Some(p) = self.producers.get(&first.producer_id)
            && p.epoch == first.producer_epoch
            && self.pending_of(first.producer_id).is_none()
        {
            let found = |h: &BatchHeader| {
                p.batches
                    .as_slice()
                    .iter()
                    .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq(h))
                    .map(|b| b.base_offset)
            };
            if let Some(offset) = found(first) {
                return if batches.iter().all(|h| found(h).is_some()) {
                    Verdict::Duplicate(offset)
                } else {
                    Verdict::Reject(
                        ErrorCode::OutOfOrderSequence,
                        "a request mixes retried and new batches".into(),
                    )
                };
            }
        }
        let mut cursor: Option<(i16, i32)> = self.pending_of(first.producer_id).or_else(|| {
            self.producers
                .get(&first.producer_id)
                .and_then(|p| p.last_seq().map(|s| (p.epoch, s)))
        });
        let known_epoch = self.producers.get(&first.producer_id).map(|p| p.epoch);
        for h in batches {
            if h.producer_id != first.producer_id {
                return Verdict::Reject(
                    ErrorCode::InvalidRecord,
                    "one partition's batches in a request come from different producers".into(),
                );
            }
            let seq = h.base_sequence;
            let verdict = match cursor {
                None if known_epoch.is_some_and(|e| h.producer_epoch < e) => Err((
                    ErrorCode::ProducerFenced,
                    format!(
                        "producer {} epoch {} is fenced",
                        h.producer_id, h.producer_epoch
                    ),
                )),
                None if seq == 0 => Ok(()),
                None => Err((
                    ErrorCode::UnknownProducerId,
                    format!(
                        "no state for producer {} on this partition and sequence {seq} is not 0",
                        h.producer_id
                    ),
                )),
                Some((epoch, _)) if h.producer_epoch < epoch => Err((
                    ErrorCode::ProducerFenced,
                    format!(
                        "producer {} epoch {} is fenced by epoch {epoch}",
                        h.producer_id, h.producer_epoch
                    ),
                )),
                Some((epoch, _)) if h.producer_epoch > epoch => {
                    if seq == 0 {
                        Ok(())
                    } else {
                        Err((
                            ErrorCode::OutOfOrderSequence,
                            format!("a new epoch must start at sequence 0, not {seq}"),
                        ))
                    }
                }
                Some((_, last)) if seq == next_seq(last) => Ok(()),
                Some((_, last)) => Err((
                    ErrorCode::OutOfOrderSequence,
                    format!("sequence {seq} does not follow {last}"),
                )),
            };
            if let Err((code, msg)) = verdict {
                return Verdict::Reject(code, msg);
            }
            cursor = Some((h.producer_epoch, last_seq(h)));
        }
        if let Some(c) = cursor {
            match self
                .pending
                .iter_mut()
                .find(|(id, _)| *id == first.producer_id)
            {
                Some(entry) => entry.1 = c,
                None => self.pending.push((first.producer_id, c)),
            }
        }
        Verdict::Append
    }

    /// What the group being appended already accepted from `producer_id`.
    fn pending_of(&self, producer_id: i64) -> Option<(i16, i32)> {
        self.pending
            .iter()
            .find(|(id, _)| *id == producer_id)
            .map(|&(_, c)| c)
    }

    /// Forgets what [`Self::check`] accepted into a group whose append failed.
    pub fn abort(&mut self) {
        self.pending.clear();
    }

    /// Records an appended batch (its real base offset) and ends the pending group.
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let p = self
            .producers
            .entry(h.producer_id)
            .or_insert_with(|| Producer {
                epoch: h.producer_epoch,
                last_seen_ms: now_ms,
                batches: Recent::EMPTY,
            });
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        p.last_seen_ms = now_ms;
        p.batches.push(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset,
        });
    }

    /// Ends a group whose batches were all recorded.
    pub fn commit(&mut self) {
        self.pending.clear();
    }

    /// Producers whose state is kept.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Forgets producers not seen for `expiry_ms`.
    pub fn expire(&mut self, now_ms: i64, expiry_ms: i64) {
        self.producers
            .retain(|_, p| now_ms.saturating_sub(p.last_seen_ms) < expiry_ms);
    }

    /// The snapshot bytes of the state as of `offset` (the log end).
    pub fn encode(&self, offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.producers.len() * 80);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let p = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&p.epoch.to_be_bytes());
            out.extend_from_slice(&p.last_seen_ms.to_be_bytes());
            out.push(p.batches.len() as u8);
            for b in p.batches.as_slice() {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.to_be_bytes());
            }
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<(Self, i64)> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.take(8)? != SNAPSHOT_MAGIC {
            return None;
        }
        let offset = r.i64()?;
        let count = r.u32()?;
        let mut producers = HashMap::new();
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = i16::from_be_bytes(r.take(2)?.try_into().ok()?);
            let last_seen_ms = r.i64()?;
            let n = *r.take(1)?.first()?;
            let mut batches = Recent::EMPTY;
            for _ in 0..n {
                let first_seq = r.i32()?;
                let last_seq = r.i32()?;
                let base_offset = r.i64()?;
                batches.push(BatchMeta {
                    first_seq,
                    last_seq,
                    base_offset,
                });
            }
            producers.insert(
                id,
                Producer {
                    epoch,
                    last_seen_ms,
                    batches,
                },
            );
        }
        r.0.is_empty().then_some((
            Self {
                producers,
                pending: Vec::new(),
            },
            offset,
        ))
    }

    /// Writes snapshot bytes (from [`Self::encode`]) to the log's directory.
    pub fn save(dir: &Path, snapshot: &[u8]) -> Result<(), StorageError> {
        strom_storage::write_atomic(dir, &dir.join(SNAPSHOT_FILE), snapshot)
    }

    /// Loads the snapshot of `log`'s directory (if any, and if it checks out) and replays the
    /// batches after it, so the state covers the whole log.
    pub fn load(log: &Log, now_ms: i64) -> Result<Self, StorageError> {
        let path = log.dir().join(SNAPSHOT_FILE);
        let reader = log.reader();
        let (mut states, from) = match std::fs::read(&path) {
            Ok(bytes) => match Self::decode(&bytes) {
                Some((s, offset))
                    if offset >= reader.start_offset() && offset <= reader.end_offset() =>
                {
                    (s, offset)
                }
                _ => {
                    tracing::warn!(path = %path.display(), "producer state snapshot unusable; rebuilding from the log");
                    (Self::default(), reader.start_offset())
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Self::default(), reader.start_offset())
            }
            Err(source) => {
                return Err(StorageError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        states.replay(&reader, from, now_ms)?;
        Ok(states)
    }

    /// Applies the batch headers of `reader` from `from` to the end.
    fn replay(&mut self, reader: &LogReader, from: i64, now_ms: i64) -> Result<(), StorageError> {
        let mut offset = from;
        while offset < reader.end_offset() {
            let r = reader.read(offset, 1 << 20)?;
            if r.data.is_empty() {
                break;
            }
            for item in BatchIter::new(&r.data) {
                let (_, h) = item.map_err(|e| StorageError::Corrupt {
                    path: PathBuf::new(),
                    position: 0,
                    reason: e.to_string(),
                })?;
                if h.next_offset() > offset {
                    self.record(&h, h.base_offset, now_ms);
                }
            }
            offset = r.next_offset;
        }
        self.commit();
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = self.0.split_at_checked(n)?;
        self.0 = b;
        Some(a)
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_the_newest_batches_oldest_first() {
        let mut r = Recent::EMPTY;
        assert_eq!(r.last(), None);
        let meta = |n: i32| BatchMeta {
            first_seq: n,
            last_seq: n,
            base_offset: i64::from(n),
        };
        for n in 0..REMEMBERED_BATCHES as i32 + 2 {
            r.push(meta(n));
        }
        let kept: Vec<i32> = r.as_slice().iter().map(|b| b.first_seq).collect();
        assert_eq!(kept, (2..REMEMBERED_BATCHES as i32 + 2).collect::<Vec<_>>());
        assert_eq!(r.last(), Some(&meta(REMEMBERED_BATCHES as i32 + 1)));
        r.clear();
        assert_eq!(r.len(), 0);
    }

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: count,
        }
    }

    fn append(s: &mut ProducerStates, h: &BatchHeader, offset: i64) -> Verdict {
        let v = s.check(&[h]);
        if v == Verdict::Append {
            s.record(h, offset, 0);
            s.commit();
        }
        v
    }

    #[test]
    fn sequences_duplicates_gaps_and_fencing() {
        let mut s = ProducerStates::default();
        assert_eq!(append(&mut s, &header(-1, -1, -1, 3), 0), Verdict::Append);
        assert!(matches!(
            append(&mut s, &header(7, 0, 5, 1), 0),
            Verdict::Reject(ErrorCode::UnknownProducerId, _)
        ));
        assert_eq!(append(&mut s, &header(7, 0, 0, 3), 10), Verdict::Append);
        assert_eq!(append(&mut s, &header(7, 0, 3, 2), 13), Verdict::Append);
        // Retries of either batch are duplicates, answered with their first offsets.
        assert_eq!(
            append(&mut s, &header(7, 0, 0, 3), 99),
            Verdict::Duplicate(10)
        );
        assert_eq!(
            append(&mut s, &header(7, 0, 3, 2), 99),
            Verdict::Duplicate(13)
        );
        assert!(matches!(
            append(&mut s, &header(7, 0, 6, 1), 0),
            Verdict::Reject(ErrorCode::OutOfOrderSequence, _)
        ));
        assert_eq!(append(&mut s, &header(7, 0, 5, 1), 15), Verdict::Append);
        // A new epoch starts at 0 and fences the old one.
        assert!(matches!(
            append(&mut s, &header(7, 1, 6, 1), 0),
            Verdict::Reject(ErrorCode::OutOfOrderSequence, _)
        ));
        assert_eq!(append(&mut s, &header(7, 1, 0, 1), 16), Verdict::Append);
        assert!(matches!(
            append(&mut s, &header(7, 0, 6, 1), 0),
            Verdict::Reject(ErrorCode::ProducerFenced, _)
        ));
    }

    #[test]
    fn pending_batches_of_a_group_chain_and_abort_forgets_them() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&[&header(1, 0, 0, 2)]), Verdict::Append);
        assert_eq!(s.check(&[&header(1, 0, 2, 2)]), Verdict::Append);
        s.abort();
        assert!(matches!(
            s.check(&[&header(1, 0, 2, 2)]),
            Verdict::Reject(ErrorCode::UnknownProducerId, _)
        ));
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        let mut seq = i32::MAX - 3;
        // Start with a producer whose sequence is near the top (state from a snapshot).
        s.record(&header(2, 0, seq, 1), 0, 0);
        s.commit();
        for i in 1..=7 {
            seq = next_seq(seq);
            assert_eq!(
                append(&mut s, &header(2, 0, seq, 1), i),
                Verdict::Append,
                "seq {seq}"
            );
        }
        assert_eq!(seq, 3, "wrapped past i32::MAX to 0");
        assert_eq!(s.producers[&2].batches.len(), REMEMBERED_BATCHES);
        assert_eq!(
            append(&mut s, &header(2, 0, 3, 1), 99),
            Verdict::Duplicate(7)
        );
    }

    #[test]
    fn snapshot_round_trips_and_rejects_damage() {
        let mut s = ProducerStates::default();
        append(&mut s, &header(3, 2, 0, 4), 100);
        append(&mut s, &header(4, 0, 0, 1), 104);
        let bytes = s.encode(105);
        let (back, offset) = ProducerStates::decode(&bytes).unwrap();
        assert_eq!(offset, 105);
        assert_eq!(back.producers, s.producers);
        let mut bad = bytes.clone();
        bad[12] ^= 1;
        assert!(ProducerStates::decode(&bad).is_none());
        assert!(ProducerStates::decode(&bytes[..bytes.len() - 1]).is_none());
    }
}
