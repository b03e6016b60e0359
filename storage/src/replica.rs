//! What a replicated partition needs of its log, Kafka's ISR way: leader epochs stamped on the
//! batches a leader writes, a follower's append of the leader's batches as they are, truncation
//! of a follower's log where it parts from its leader's, and the lookups on the leader-epoch
//! cache (`epochs.rs`) that find where that is.
//!
//! This module owns those [`Log`] methods and the order of their file operations, which is what
//! makes each of them crash-safe:
//!
//! - **An epoch is recorded before its data**: the checkpoint is written (atomically, durably)
//!   before the first batch of a new epoch, so no batch that survives a crash has an epoch the
//!   checkpoint lacks; an entry whose data did not survive is dropped at the next open (it
//!   starts at or past the log end).
//! - **Truncation cuts the data before the checkpoint**, newest first: later segments are
//!   unlinked and the directory fsynced before the last kept segment is cut, so a crash leaves
//!   a prefix of the old log, never its tail after a hole; the checkpoint is trimmed last (an
//!   open drops entries past the log end anyway).
//! - **A segment is cut by writing its kept part to new files and renaming them over it**, never
//!   by shrinking it in place: readers may hold slices of the old file's memory map (a fetch
//!   being written to a socket), which must neither fault (`SIGBUS` past the end of a shrunk
//!   file) nor change under them. The old file lives on, unlinked, while mapped.
//! - **What cannot be done in that order is done from an intent**: emptying the log and
//!   restarting it at another offset, and cutting into a compacted segment (the segment being
//!   appended to must never be a compacted one, whose offsets have gaps). The file
//!   `truncation-intent` records the truncation durably first; every open finishes one it finds
//!   before reading the log, and the steps are idempotent.

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use strom_protocol::batch::{self, BatchError, BatchHeader};

use crate::config::LogConfig;
use crate::epochs::{self, EpochEntry};
use crate::error::{Result, StorageError};
use crate::io::{self, IoFaults};
use crate::log::{AppendInfo, Log, ValidBatch};
use crate::mmap::Access;
use crate::segment::{self, INDEX_EXT, IndexBuilder, LOG_EXT, TIME_EXT};

/// The intent file's name in a log directory.
const INTENT: &str = "truncation-intent";

/// What leader epoch an append stores its batches with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stamp {
    /// The leader's append: every batch gets this epoch.
    Leader(i32),
    /// A follower's append: every batch keeps the epoch its leader wrote.
    Replicated,
}

impl Stamp {
    pub fn epoch_for(self, header: &BatchHeader) -> i32 {
        match self {
            Stamp::Leader(epoch) => epoch,
            Stamp::Replicated => header.partition_leader_epoch,
        }
    }
}

/// A truncation recorded before it is carried out: every segment after `keep` goes, `keep`'s
/// log is cut to its length (its indexes rebuilt), and an empty segment starts at `new_end`.
/// Without `keep`, everything goes and the log restarts empty at `new_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Intent {
    /// (base offset, bytes kept) of the last segment kept.
    keep: Option<(i64, u64)>,
    new_end: i64,
}

impl Intent {
    fn encode(&self) -> String {
        let (base, len) = self.keep.map_or((-1, 0), |(b, l)| (b, l as i64));
        let text = format!("{base} {len} {}", self.new_end);
        let crc = crc32fast::hash(text.as_bytes());
        format!("{text} {crc:08x}\n")
    }

    fn decode(text: &str) -> Option<Self> {
        let (body, crc) = text.trim_end().rsplit_once(' ')?;
        if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) {
            return None;
        }
        let mut fields = body.split(' ').map(|f| f.parse::<i64>().ok());
        let (base, len, new_end) = (fields.next()??, fields.next()??, fields.next()??);
        if fields.next().is_some() || new_end < 0 || len < 0 {
            return None;
        }
        let keep = (base >= 0).then_some((base, len as u64));
        if keep.is_some_and(|(b, _)| b >= new_end) {
            return None;
        }
        Some(Self { keep, new_end })
    }
}

impl ValidBatch {
    /// Validates `bytes` as one batch copied from a leader's log (for [`Log::append_replica`]):
    /// as [`ValidBatch::new`], except that a batch compaction rewrote (fewer records than
    /// offsets, or none) is accepted. Its base offset and leader epoch are kept as they are.
    pub fn replicated(bytes: Bytes) -> Result<Self, BatchError> {
        let header = batch::validate(&bytes)?;
        Ok(Self { bytes, header })
    }
}

/// The batches with an empty batch in front of each one that starts past the offset after
/// the previous one (or past `end` for the first); `None` when there is no such gap, the
/// common case, so nothing is copied. See [`Log::append_replica_deferred`].
fn fill_compacted_gaps(batches: &[ValidBatch], end: i64) -> Result<Option<Vec<ValidBatch>>> {
    let mut next = end;
    let mut filled: Option<Vec<ValidBatch>> = None;
    for (index, b) in batches.iter().enumerate() {
        let h = b.header();
        let mismatch = || StorageError::ReplicaOffsetMismatch {
            index,
            expected: next,
            found: h.base_offset,
        };
        if h.base_offset > next {
            let delta = i32::try_from(h.base_offset - next - 1).map_err(|_| mismatch())?;
            let gap = batch::empty_batch(next, delta, h.partition_leader_epoch, h.base_timestamp)
                .ok_or_else(mismatch)?;
            let header = batch::validate(&gap).map_err(|_| mismatch())?;
            filled
                .get_or_insert_with(|| batches[..index].to_vec())
                .push(ValidBatch { bytes: gap, header });
        } else if h.base_offset < next {
            return Err(mismatch());
        }
        if let Some(out) = filled.as_mut() {
            out.push(b.clone());
        }
        next = h
            .base_offset
            .checked_add(i64::from(h.last_offset_delta) + 1)
            .ok_or(StorageError::OffsetOverflow)?;
    }
    Ok(filled)
}

impl Log {
    /// Sets the leader epoch that [`Log::append`], [`Log::append_valid`],
    /// [`Log::append_deferred`] and [`Log::append_records`] stamp on every batch they write
    /// (bytes 12..16, `partitionLeaderEpoch`, outside the CRC). The first append in a new epoch
    /// records in the leader-epoch checkpoint that the epoch starts at its base offset.
    ///
    /// Until this is called the epoch is the newest the log holds, or 0 for a log that holds
    /// none (a single node never changes leader). Epochs never go back: one below the log's
    /// latest or the current one is [`StorageError::StaleLeaderEpoch`]; a negative one
    /// [`StorageError::InvalidLeaderEpoch`].
    pub fn set_leader_epoch(&mut self, epoch: i32) -> Result<()> {
        if epoch < 0 {
            return Err(StorageError::InvalidLeaderEpoch { epoch });
        }
        let latest = self
            .epochs
            .latest_epoch()
            .unwrap_or(0)
            .max(self.leader_epoch);
        if epoch < latest {
            return Err(StorageError::StaleLeaderEpoch { epoch, latest });
        }
        self.leader_epoch = epoch;
        Ok(())
    }

    /// The leader epoch the leader append paths stamp (see [`Log::set_leader_epoch`]).
    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch
    }

    /// The newest leader epoch the log holds a batch of, if any (an epoch set but not yet
    /// written with is not counted).
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// Kafka's OffsetForLeaderEpoch on this log: the largest epoch at or below `epoch` that the
    /// log holds and the offset where it ends (the next epoch's start, or the log end for the
    /// latest); `(-1, -1)` when the log holds no epoch that old, or none. For an epoch above
    /// the latest this is the latest and the log end (Kafka says `(-1, -1)`; the answer here
    /// tells a follower with a newer epoch where to cut without a second round).
    pub fn end_offset_for_epoch(&self, epoch: i32) -> (i32, i64) {
        self.epochs.end_offset_for(epoch, self.end_offset())
    }

    /// The leader-epoch cache as (epoch, start offset) pairs, oldest first (for tests and
    /// diagnostics).
    pub fn epoch_entries(&self) -> Vec<(i32, i64)> {
        self.epochs
            .entries()
            .iter()
            .map(|e| (e.epoch, e.start_offset))
            .collect()
    }

    /// Before a leader append of `batches`: records the leader epoch in the cache if this is
    /// its first append, and writes the checkpoint if it changed (or an earlier write of it
    /// failed). Returns the cache as it was before a change, to put back if nothing is stored.
    /// The common case is one comparison and one flag test: no I/O.
    pub(crate) fn assign_leader_epoch(
        &mut self,
        batches: &[ValidBatch],
    ) -> Result<Option<Vec<EpochEntry>>> {
        if batches.is_empty() {
            return Ok(None);
        }
        let epoch = self.leader_epoch;
        let saved = if self.epochs.latest_epoch() != Some(epoch) {
            let saved = self.epochs.entries().to_vec();
            self.epochs.assign(epoch, self.end_offset())?;
            Some(saved)
        } else {
            None
        };
        self.persist_epochs_before_write(saved)
    }

    /// Writes the checkpoint if it may be out of date, before data is written; on failure
    /// puts back the `saved` entries (the file may hold either: it stays marked for rewriting).
    fn persist_epochs_before_write(
        &mut self,
        saved: Option<Vec<EpochEntry>>,
    ) -> Result<Option<Vec<EpochEntry>>> {
        if let Err(e) = self.epochs.persist(self.faults.as_ref()) {
            if let Some(saved) = saved {
                self.epochs.restore(saved);
            }
            return Err(e);
        }
        Ok(saved)
    }

    /// After the log's start moved (retention, DeleteRecords): drops the epochs wholly below
    /// it and moves the start of the one covering it.
    pub(crate) fn trim_epochs_to_start(&mut self) -> Result<()> {
        if self.epochs.trim_to(self.start_offset(), self.end_offset()) {
            self.epochs.persist(self.faults.as_ref())?;
        }
        Ok(())
    }

    /// A follower's append: stores batches copied from its leader's log with the base offsets
    /// and leader epochs the leader wrote, then fsyncs if the flush policy asks for it (as
    /// [`Log::append_valid`]). See [`Log::append_replica_deferred`] for the rules.
    pub fn append_replica(&mut self, batches: &[ValidBatch]) -> Result<AppendInfo> {
        let info = self.append_replica_deferred(batches)?;
        self.flush_after_append(info)
    }

    /// [`Log::append_replica`] without the fsync (as [`Log::append_deferred`] is to
    /// [`Log::append_valid`]). The batches must continue the log: the first at or after the
    /// log end, each next one at or after the offset following the previous one's last, else
    /// [`StorageError::ReplicaOffsetMismatch`]. Offsets skipped are where the leader's
    /// compaction removed whole batches: each gap is filled with an empty batch (no records,
    /// the next batch's epoch and timestamp, see [`strom_protocol::batch::empty_batch`]), so
    /// the follower's log keeps its offsets contiguous, which its crash recovery relies on; a
    /// gap of more offsets than one batch can hold (2^31) is a mismatch. The epochs (those >= 0:
    /// a batch without one starts no epoch) must not go below the log's latest, else
    /// [`StorageError::StaleLeaderEpoch`]. In both cases nothing is stored. A newer epoch is
    /// recorded as starting at its first batch, in the checkpoint, before the data is written.
    /// `max.message.bytes` does not apply: the leader already took the batch. A failure after
    /// part of the call was stored poisons the log, as for [`Log::append_deferred`].
    pub fn append_replica_deferred(&mut self, batches: &[ValidBatch]) -> Result<AppendInfo> {
        self.check_usable()?;
        let filled = fill_compacted_gaps(batches, self.end_offset())?;
        let batches = filled.as_deref().unwrap_or(batches);
        let mut latest = self.epochs.latest_epoch();
        let mut new_epochs = Vec::new();
        for b in batches {
            let (epoch, base) = (b.header().partition_leader_epoch, b.header().base_offset);
            match latest {
                _ if epoch < 0 => {}
                Some(l) if epoch < l => {
                    return Err(StorageError::StaleLeaderEpoch { epoch, latest: l });
                }
                Some(l) if epoch == l => {}
                _ => {
                    new_epochs.push((epoch, base));
                    latest = Some(epoch);
                }
            }
        }
        self.mark_dirty()?;
        let saved = (!new_epochs.is_empty()).then(|| self.epochs.entries().to_vec());
        for (epoch, base) in new_epochs {
            if let Err(e) = self.epochs.assign(epoch, base) {
                if let Some(saved) = saved {
                    self.epochs.restore(saved);
                }
                return Err(e);
            }
        }
        let saved = self.persist_epochs_before_write(saved)?;
        self.write_appended(batches, Stamp::Replicated, saved)
    }

    /// Removes every batch holding an offset at or after `offset` (a follower's log parted from
    /// its leader's there) and returns the new log-end offset. A batch holding `offset` goes
    /// whole, so the new end may be below `offset`; if nothing of the log from its start on
    /// remains, the log is left empty at its start.
    ///
    /// At or past the end this does nothing. Below the log start it is
    /// [`StorageError::OffsetOutOfRange`]: a follower whose log diverges before its own start
    /// restarts with [`Log::truncate_fully_and_start_at`] at an offset its leader names.
    ///
    /// Segments after the one cut are deleted newest first, the directory is fsynced, then the
    /// kept part of the cut segment is written to new files that replace it (readers in flight
    /// keep the old, unlinked ones) and fsynced, then the leader-epoch checkpoint is trimmed: a
    /// crash at any point leaves a prefix of the old log. (Cutting into a compacted segment
    /// uses an intent instead, see the module docs.) A failure poisons the log;
    /// [`Log::recover`] then reads back what is on disk.
    pub fn truncate_to(&mut self, offset: i64) -> Result<i64> {
        self.check_usable()?;
        let (start, end) = (self.start_offset(), self.end_offset());
        if offset >= end {
            return Ok(end);
        }
        if offset < start {
            return Err(StorageError::OffsetOutOfRange { offset, start, end });
        }
        let segs = self.shared.snapshot();
        let last = segs.len() - 1;
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        let k = segs
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let contiguous = !compacted || k == last;
        // The batch holding `offset` (or the first after it, past a compacted gap) and all
        // after it go; in a segment of no gaps it starts at or before `offset`.
        let (pos, new_end) = match segs[k].cut_point(offset, contiguous)? {
            Some((pos, h)) => (pos as u64, h.base_offset.min(offset)),
            None => (segs[k].len(), offset),
        };
        if new_end <= start {
            // Nothing at or after the start is kept.
            self.truncate_by_intent(Intent {
                keep: None,
                new_end: start,
            })?;
            return Ok(self.end_offset());
        }
        // The last segment kept and its kept length: a cut at the first batch of a segment
        // keeps the whole segment before it (there is one: the start is below `new_end`).
        let (j, keep_len) = if pos == 0 {
            if k == 0 {
                // A compacted first segment whose records all lie at or past `offset`: nothing
                // from the start on is kept, but the end stays at `new_end` (the gap before it
                // was compacted away).
                self.truncate_by_intent(Intent {
                    keep: None,
                    new_end,
                })?;
                return Ok(self.end_offset());
            }
            (k - 1, segs[k - 1].len())
        } else {
            (k, pos)
        };
        if compacted && j < last {
            self.truncate_by_intent(Intent {
                keep: Some((segs[j].base_offset, keep_len)),
                new_end,
            })?;
            return Ok(self.end_offset());
        }
        self.mark_dirty()?;
        match self.cut_in_order(&segs, j, keep_len, new_end) {
            Ok(end) => {
                tracing::info!(dir = %self.dir.display(), offset, end, "log truncated");
                Ok(end)
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Empties the log and restarts it at `offset`, durably: its start and end are `offset`,
    /// its leader-epoch cache is empty, and the next append gets `offset`. For a follower whose
    /// log has nothing in common with its leader's, or ends below the leader's start. `offset`
    /// may be below or above the old log. A failure poisons the log; [`Log::recover`] then
    /// finishes the restart (it is recorded before anything is removed).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<()> {
        self.check_usable()?;
        if offset < 0 {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                start: self.start_offset(),
                end: self.end_offset(),
            });
        }
        self.truncate_by_intent(Intent {
            keep: None,
            new_end: offset,
        })?;
        tracing::info!(dir = %self.dir.display(), offset, "log emptied and restarted");
        Ok(())
    }

    /// The common truncation, whose every intermediate state is a prefix of the old log:
    /// delete the segments after `j` (newest first), fsync the directory, replace segment `j`
    /// with its first `keep_len` bytes, trim the checkpoint, and make `j` the active segment.
    fn cut_in_order(
        &mut self,
        segs: &[std::sync::Arc<segment::Segment>],
        j: usize,
        keep_len: u64,
        new_end: i64,
    ) -> Result<i64> {
        self.lower_recovery_point(new_end)?;
        self.truncations += 1;
        let faults = self.faults.clone();
        let faults = faults.as_ref();
        let dir = self.dir.clone();
        for s in segs[j + 1..].iter().rev() {
            // The log first: index files without their log are removed at open.
            for p in [&s.log_path, &s.index_path, &s.time_path] {
                io::remove_file(faults, p)?;
            }
        }
        if j + 1 < segs.len() {
            io::sync_dir(&dir, faults)?;
        }
        let seg = &segs[j];
        if keep_len < seg.len() {
            let (index, time) = seg.index_prefixes(keep_len, new_end);
            replace_segment_files(&dir, seg.base_offset, keep_len, &index, &time, faults)?;
        }
        if self.epochs.truncate_from_end(new_end) {
            self.epochs.persist(faults)?;
        }
        // Segment `j` (cut, or whole) becomes the one appended to; opening it as after a crash
        // checks its tail from its last index entry, a bounded scan.
        let (active_seg, active, _) =
            crate::log::open_active(&dir, seg.base_offset, &self.config, None, faults)?;
        let end = active.next_offset;
        if end != new_end {
            tracing::warn!(dir = %dir.display(), expected = new_end, end, "the kept part of the log ends elsewhere than planned");
            if self.epochs.truncate_from_end(end) {
                self.epochs.persist(faults)?;
            }
        }
        let mut kept: Vec<_> = segs[..j].to_vec();
        kept.push(active_seg);
        {
            let mut g = match self.shared.segments.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g = std::sync::Arc::new(kept);
            self.shared.end_offset.store(end, Ordering::Release);
            self.shared.durable_offset.fetch_min(end, Ordering::AcqRel);
        }
        self.active = active;
        Ok(end)
    }

    /// Records `intent`, carries it out, and reloads the log from disk as [`Log::recover`]
    /// does. Any failure poisons the log; `recover` (or the next open) finishes the intent.
    fn truncate_by_intent(&mut self, intent: Intent) -> Result<()> {
        self.mark_dirty()?;
        if let Err(e) = self.lower_recovery_point(intent.new_end) {
            return Err(self.poison(e));
        }
        self.truncations += 1;
        let faults = self.faults.clone();
        let done = write_intent(&self.dir, &intent, faults.as_ref())
            .and_then(|()| apply_intent(&self.dir, &intent, &self.config, faults.as_ref()));
        if let Err(e) = done {
            return Err(self.poison(e));
        }
        if let Err(e) = self.recover() {
            return Err(self.poison(e));
        }
        tracing::info!(dir = %self.dir.display(), ?intent, "log truncated");
        Ok(())
    }
}

/// Replaces segment `base`'s three files with `keep_len` bytes of its log and the given index
/// bytes: written to `*.cleaned` files (deleted at open if this is cut short), fsynced, then
/// renamed over the originals, indexes first and the log last (a crash between the renames
/// leaves the old log with indexes that are a prefix of its own: recovery redoes the rest).
fn replace_segment_files(
    dir: &Path,
    base: i64,
    keep_len: u64,
    index: &[u8],
    time: &[u8],
    faults: Option<&IoFaults>,
) -> Result<()> {
    let cleaned = |ext: &str| dir.join(format!("{base:020}.{ext}.cleaned"));
    let log_path = segment::file_path(dir, base, LOG_EXT);
    let (log_tmp, index_tmp, time_tmp) = (cleaned(LOG_EXT), cleaned(INDEX_EXT), cleaned(TIME_EXT));
    let log = io::create_file(faults, &log_tmp)?;
    io::copy_prefix(faults, &log_path, &log, &log_tmp, keep_len)?;
    let idx = io::create_file(faults, &index_tmp)?;
    let tim = io::create_file(faults, &time_tmp)?;
    for (f, p, bytes) in [(&idx, &index_tmp, index), (&tim, &time_tmp, time)] {
        if !bytes.is_empty() {
            io::write_at(faults, f, p, bytes, 0)?;
        }
    }
    install(
        dir,
        base,
        [(&log, &log_tmp), (&idx, &index_tmp), (&tim, &time_tmp)],
        faults,
    )?;
    io::sync_dir(dir, faults)
}

/// Puts a rewritten segment's temporary files (log, index, time index) in place of the
/// segment's at `base`: each fsynced, then renamed, the index files first so that a log file
/// in place always has indexes that recovery can check or rebuild.
fn install(
    dir: &Path,
    base: i64,
    [log, index, time]: [(&File, &Path); 3],
    faults: Option<&IoFaults>,
) -> Result<()> {
    for (f, p) in [log, index, time] {
        io::sync_data(faults, f, p)?;
    }
    for ((_, from), ext) in [(index, INDEX_EXT), (time, TIME_EXT), (log, LOG_EXT)] {
        io::rename(faults, from, &segment::file_path(dir, base, ext))?;
    }
    Ok(())
}

fn write_intent(dir: &Path, intent: &Intent, faults: Option<&IoFaults>) -> Result<()> {
    io::write_atomic_in(dir, &dir.join(INTENT), intent.encode().as_bytes(), faults)
}

/// Finishes a truncation a crash (or a failure) interrupted, if `dir` holds its intent: called
/// by every open and [`Log::recover`] before the log is read. A damaged intent is an error:
/// guessing could bring removed records back or remove kept ones.
pub(crate) fn finish_truncation(
    dir: &Path,
    config: &LogConfig,
    faults: Option<&IoFaults>,
) -> Result<()> {
    let path = dir.join(INTENT);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io("read", &path)(e)),
    };
    let intent = Intent::decode(&text)
        .ok_or_else(|| StorageError::corrupt(&path, 0, "unreadable truncation intent"))?;
    tracing::warn!(dir = %dir.display(), ?intent, "finishing a truncation that was cut short");
    apply_intent(dir, &intent, config, faults)
}

/// Carries out `intent`; every step can be done again after a crash in any of them.
fn apply_intent(
    dir: &Path,
    intent: &Intent,
    config: &LogConfig,
    faults: Option<&IoFaults>,
) -> Result<()> {
    let keep_base = intent.keep.map(|(b, _)| b);
    let mut bases: Vec<i64> = Vec::new();
    for entry in fs::read_dir(dir).map_err(StorageError::io("read dir", dir))? {
        let entry = entry.map_err(StorageError::io("read dir", dir))?;
        let name = entry.file_name();
        if let Some((base, LOG_EXT)) = name.to_str().and_then(segment::parse_file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    // 1. Every later segment, newest first (including an empty one an earlier try created at
    // `new_end`), then the directory.
    for &base in bases.iter().rev() {
        if keep_base.is_some_and(|k| base <= k) {
            break;
        }
        for ext in [LOG_EXT, INDEX_EXT, TIME_EXT] {
            io::remove_file(faults, &segment::file_path(dir, base, ext))?;
        }
    }
    io::sync_dir(dir, faults)?;
    // 2. The kept segment cut, its indexes rebuilt from what is kept (it stays closed, and may
    // be compacted: its gaps are allowed, and its last time entry records where it ends).
    if let Some((base, keep_len)) = intent.keep {
        let log_path = segment::file_path(dir, base, LOG_EXT);
        let len = fs::metadata(&log_path)
            .map_err(StorageError::io("stat", &log_path))?
            .len();
        if len > keep_len {
            let cleaned = |ext: &str| dir.join(format!("{base:020}.{ext}.cleaned"));
            let log_tmp = cleaned(LOG_EXT);
            let log = io::create_file(faults, &log_tmp)?;
            io::copy_prefix(faults, &log_path, &log, &log_tmp, keep_len)?;
            let (index_tmp, time_tmp) = (cleaned(INDEX_EXT), cleaned(TIME_EXT));
            let idx = io::create_file(faults, &index_tmp)?;
            let tim = io::create_file(faults, &time_tmp)?;
            // Index what is kept; a compacted segment may have gaps between its batches.
            let map = crate::mmap::map(&log, segment::usize_of(keep_len), Access::Sequential)
                .map_err(StorageError::io("mmap", &log_tmp))?;
            let mut builder = IndexBuilder::new(config.index_interval_bytes, -1, -1, 0);
            let scan = segment::scan(&map, 0, base, base, false, &mut builder);
            if let Some(reason) = &scan.stopped {
                tracing::error!(segment = %log_path.display(), %reason, "the kept part of a truncated segment is damaged; indexed up to the damage");
            }
            if scan.next_offset > base {
                builder.push_time_entry(base, scan.next_offset - 1);
            }
            drop(map);
            for (f, p, buf) in [
                (&idx, &index_tmp, &builder.offset_buf),
                (&tim, &time_tmp, &builder.time_buf),
            ] {
                if !buf.is_empty() {
                    io::write_at(faults, f, p, buf, 0)?;
                }
            }
            install(
                dir,
                base,
                [(&log, &log_tmp), (&idx, &index_tmp), (&tim, &time_tmp)],
                faults,
            )?;
        }
    }
    // 3. The empty segment appends go to (an earlier try may have left some of its files).
    for ext in [LOG_EXT, INDEX_EXT, TIME_EXT] {
        io::remove_file(faults, &segment::file_path(dir, intent.new_end, ext))?;
    }
    segment::open_files(dir, intent.new_end, true, faults)?;
    io::sync_dir(dir, faults)?;
    // 4. A restart starts where it says, whatever DeleteRecords recorded before.
    if intent.keep.is_none() {
        io::remove_file(faults, &dir.join(crate::log_start::FILE))?;
    }
    // 5. The checkpoint, after the data (an entry at or past the end is dropped at open
    // anyway; one missing for data kept would be wrong).
    if let Some(mut entries) = epochs::read_raw(dir) {
        let before = entries.len();
        entries.retain(|e| intent.keep.is_some() && e.start_offset < intent.new_end);
        if entries.len() != before {
            epochs::write_raw(dir, &entries, faults)?;
        }
    }
    // 6. Done.
    io::remove_file(faults, &dir.join(INTENT))?;
    io::sync_dir(dir, faults)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_segment(dir: &Path, base: i64) -> bool {
        segment::file_path(dir, base, LOG_EXT).exists()
    }

    #[test]
    fn the_intent_round_trips_and_damage_is_refused() {
        for intent in [
            Intent {
                keep: None,
                new_end: 0,
            },
            Intent {
                keep: Some((100, 4096)),
                new_end: 150,
            },
        ] {
            assert_eq!(Intent::decode(&intent.encode()), Some(intent));
        }
        let text = Intent {
            keep: Some((100, 4096)),
            new_end: 150,
        }
        .encode();
        for damaged in [
            text.replace("4096", "4097"),
            String::new(),
            "100 4096 150".into(),
            text[..text.len() - 2].to_string(),
        ] {
            assert_eq!(Intent::decode(&damaged), None, "{damaged:?}");
        }
        // Well formed, but keeping a segment that starts at or past the new end.
        let body = "150 10 150";
        let bad = format!("{body} {:08x}", crc32fast::hash(body.as_bytes()));
        assert_eq!(Intent::decode(&bad), None);
    }

    #[test]
    fn an_intent_found_at_open_is_carried_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        for base in [0, 10, 20] {
            segment::open_files(dir.path(), base, true, None).unwrap();
        }
        let intent = Intent {
            keep: None,
            new_end: 7,
        };
        write_intent(dir.path(), &intent, None).unwrap();
        finish_truncation(dir.path(), &config, None).unwrap();
        assert!(!dir.path().join(INTENT).exists());
        assert!(has_segment(dir.path(), 7));
        for base in [0, 10, 20] {
            assert!(!has_segment(dir.path(), base), "{base}");
        }
        // Done again (a crash before the intent was removed): the same outcome.
        write_intent(dir.path(), &intent, None).unwrap();
        finish_truncation(dir.path(), &config, None).unwrap();
        assert!(has_segment(dir.path(), 7));
        // Without an intent, nothing happens.
        finish_truncation(dir.path(), &config, None).unwrap();
        assert!(has_segment(dir.path(), 7));
        // A damaged intent is an error, not a guess.
        fs::write(dir.path().join(INTENT), "garbage").unwrap();
        assert!(finish_truncation(dir.path(), &config, None).is_err());
    }
}
