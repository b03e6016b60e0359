//! Log compaction (`cleanup.policy=compact`): rewrite closed segments keeping only the newest
//! record of each key, and the crash-safe swap of the rewritten files into place.
//!
//! A pass first maps every key to its newest offset over the whole log (closed segments and the
//! active one). Then consecutive closed segments are grouped (while their original sizes fit
//! `segment.bytes`) and each group is rewritten into one new segment named after the group's first
//! base offset. A record survives if it is the newest for its key, or has no key; a tombstone (null
//! value) that is the newest for its key survives until its timestamp is older than
//! `delete.retention.ms`. Offsets never change: readers see gaps. Batches whose records are
//! compressed are kept whole (their keys are not read here).
//!
//! The swap, so that a crash at any point leaves either the old or the new files:
//! 1. write `B.log.cleaned`, `B.index.cleaned`, `B.timeindex.cleaned`; fsync them;
//! 2. rename the two indexes, then the log, to `*.swap`; fsync the directory;
//! 3. delete the group's other segments; rename the `*.swap` files over `B.*`; fsync the directory.
//!
//! Step 2 starts by writing `B.end.swap`, the offset where the group ended, durably. On open,
//! `*.cleaned` files are deleted (step 1 never finished), and a `B.log.swap` completes step 3
//! (`B.end.swap` says which segments it replaces). Index `.swap` files without a `B.log.swap`
//! are leftovers of an unfinished step 2 and are deleted.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use strom_protocol::batch::{self, BatchError, BatchIter, Records, Retained};

use crate::error::{Result, StorageError};
use crate::io::{sync_dir, write_atomic};
use crate::log::Log;
use crate::segment::{self, INDEX_EXT, IndexBuilder, LOG_EXT, Segment, TIME_EXT};

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionOutcome {
    /// Closed segments read.
    pub segments_in: usize,
    /// Segments written.
    pub segments_out: usize,
    /// Bytes of the closed segments before.
    pub bytes_before: u64,
    /// Bytes of the rewritten segments.
    pub bytes_after: u64,
    /// Records dropped.
    pub records_removed: u64,
    /// Closed segments left as they were: alone in their group, with nothing to drop.
    pub segments_unchanged: usize,
}

fn ext_path(dir: &Path, base: i64, ext: &str, suffix: &str) -> std::path::PathBuf {
    dir.join(format!("{base:020}.{ext}{suffix}"))
}

impl Log {
    /// Runs one compaction pass over the closed segments. Does nothing unless `cleanup.policy`
    /// includes `compact`. The active segment is never rewritten; roll first to include it.
    pub fn compact(&mut self) -> Result<CompactionOutcome> {
        let mut outcome = CompactionOutcome::default();
        if !self.config.cleanup_policy.compact {
            return Ok(outcome);
        }
        let segs = self.shared.snapshot();
        if segs.len() < 2 {
            return Ok(outcome);
        }
        // 1. Newest offset of each key.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        for seg in segs.iter() {
            for_each_record(seg, |r| {
                if let Some(k) = &r.key {
                    latest.insert(k.clone(), r.offset);
                }
            })?;
        }
        let horizon = self
            .clock
            .now_ms()
            .saturating_sub(self.config.delete_retention_ms);
        let sealed = &segs[..segs.len() - 1];

        // 2. Groups of consecutive closed segments.
        let mut groups: Vec<&[Arc<Segment>]> = Vec::new();
        let mut start = 0;
        let mut size = 0u64;
        for (i, s) in sealed.iter().enumerate() {
            let next_base = segs[i + 1].base_offset;
            let span_ok = next_base - sealed[start].base_offset <= i64::from(u32::MAX);
            if i > start && (size + s.len() > self.config.segment_bytes || !span_ok) {
                groups.push(&sealed[start..i]);
                start = i;
                size = 0;
            }
            size += s.len();
        }
        groups.push(&sealed[start..]);

        let mut new_segments: Vec<Arc<Segment>> = Vec::new();
        let mut next_index = 0;
        for group in groups {
            next_index += group.len();
            let end = segs[next_index].base_offset;
            outcome.segments_in += group.len();
            let before: u64 = group.iter().map(|s| s.len()).sum();
            outcome.bytes_before += before;
            // Rewriting a lone segment with nothing to drop would write (and fsync) the same
            // bytes again, every pass.
            if let [seg] = group
                && !holds_garbage(seg, &latest, horizon)?
            {
                outcome.segments_unchanged += 1;
                outcome.bytes_after += before;
                outcome.segments_out += 1;
                new_segments.push(seg.clone());
                continue;
            }
            self.mark_dirty()?;
            let (seg, removed) = self.rewrite_group(group, end, &latest, horizon)?;
            outcome.records_removed += removed;
            outcome.bytes_after += seg.len();
            outcome.segments_out += 1;
            new_segments.push(seg);
        }
        if outcome.segments_unchanged == outcome.segments_in {
            tracing::debug!(dir = %self.dir.display(), ?outcome, "compaction pass: nothing to clean");
            return Ok(outcome);
        }
        // `segs` is still the current list: only this writer changes it.
        let mut all = new_segments;
        all.push(segs[segs.len() - 1].clone());
        self.shared.replace(all);
        tracing::info!(dir = %self.dir.display(), ?outcome, "compaction pass done");
        Ok(outcome)
    }

    fn rewrite_group(
        &self,
        group: &[Arc<Segment>],
        end: i64,
        latest: &HashMap<Bytes, i64>,
        horizon: i64,
    ) -> Result<(Arc<Segment>, u64)> {
        let dir = self.dir.as_path();
        let base = group[0].base_offset;
        let paths = [LOG_EXT, INDEX_EXT, TIME_EXT].map(|e| ext_path(dir, base, e, ".cleaned"));
        let create = |p: &Path| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map_err(StorageError::io("create", p))
        };
        let mut out = create(&paths[0])?;
        let mut builder = IndexBuilder::new(self.config.index_interval_bytes, -1, -1, 0);
        let mut pos: u64 = 0;
        let mut last_offset = None;
        let mut removed = 0u64;
        for seg in group {
            let data = seg.committed();
            for item in BatchIter::new(&data) {
                let (range, header) = item.map_err(|e| {
                    StorageError::corrupt(&seg.log_path, 0, format!("during compaction: {e}"))
                })?;
                let bytes = data.slice(range.clone());
                if batch::compute_crc(&bytes) != header.crc {
                    return Err(StorageError::corrupt(
                        &seg.log_path,
                        range.start as u64,
                        "CRC mismatch during compaction",
                    ));
                }
                let keep = |r: &batch::Record| match &r.key {
                    None => true,
                    Some(k) => {
                        latest.get(k) == Some(&r.offset)
                            && !(r.value.is_none() && r.timestamp < horizon)
                    }
                };
                let retained = match batch::retain_records(&bytes, keep) {
                    Ok(r) => r,
                    Err(BatchError::Compressed(_)) => Retained::All,
                    Err(e) => {
                        return Err(StorageError::corrupt(
                            &seg.log_path,
                            range.start as u64,
                            e.to_string(),
                        ));
                    }
                };
                let written = match retained {
                    Retained::All => bytes,
                    Retained::Nothing => {
                        removed += header.record_count.max(0) as u64;
                        continue;
                    }
                    Retained::Some(b) => {
                        let kept = batch::BatchHeader::parse(&b)
                            .map(|h| h.record_count)
                            .unwrap_or(0);
                        removed += (header.record_count - kept).max(0) as u64;
                        b
                    }
                };
                let h = batch::BatchHeader::parse(&written).map_err(|e| {
                    StorageError::corrupt(&seg.log_path, range.start as u64, e.to_string())
                })?;
                builder.on_batch(base, &h, pos as u32);
                out.write_all(&written)
                    .map_err(StorageError::io("write", &paths[0]))?;
                pos += written.len() as u64;
                last_offset = Some(h.last_offset());
            }
        }
        if let Some(last) = last_offset {
            builder.push_time_entry(base, last);
        }
        let mut idx = create(&paths[1])?;
        idx.write_all(&builder.offset_buf)
            .map_err(StorageError::io("write", &paths[1]))?;
        let mut tim = create(&paths[2])?;
        tim.write_all(&builder.time_buf)
            .map_err(StorageError::io("write", &paths[2]))?;
        for (f, p) in [(&out, &paths[0]), (&idx, &paths[1]), (&tim, &paths[2])] {
            f.sync_all()
                .map_err(StorageError::io("fsync", p.as_path()))?;
        }
        drop((out, idx, tim));

        // Step 2: mark the log as compacted (its closed segments may now legitimately end
        // before the next one begins; see `log::load`), record which offsets the new segment
        // replaces, then .cleaned -> .swap, indexes first, the log last.
        let marker = dir.join(crate::log::COMPACTED_MARKER);
        if !marker.exists() {
            write_atomic(dir, &marker, b"")?;
        }
        self.shared
            .compacted
            .store(true, std::sync::atomic::Ordering::Release);
        write_atomic(
            dir,
            &ext_path(dir, base, "end", ".swap"),
            end.to_string().as_bytes(),
        )?;
        for ext in [INDEX_EXT, TIME_EXT, LOG_EXT] {
            let from = ext_path(dir, base, ext, ".cleaned");
            let to = ext_path(dir, base, ext, ".swap");
            fs::rename(&from, &to).map_err(StorageError::io("rename", &to))?;
        }
        sync_dir(dir, None)?;
        // Step 3.
        let replaced: Vec<i64> = group.iter().skip(1).map(|s| s.base_offset).collect();
        finish_swap(dir, base, &replaced)?;
        let seg = crate::log::open_sealed_segment(dir, base, &self.config, false)?;
        Ok((seg, removed))
    }
}

/// Whether a rewrite of `seg` would drop a record: an older record of a key, or a tombstone
/// older than the delete horizon (the rule of [`Log::compact`]'s rewrite).
fn holds_garbage(seg: &Segment, latest: &HashMap<Bytes, i64>, horizon: i64) -> Result<bool> {
    let mut found = false;
    for_each_record(seg, |r| {
        if let Some(k) = &r.key {
            found |=
                latest.get(k) != Some(&r.offset) || (r.value.is_none() && r.timestamp < horizon);
        }
    })?;
    Ok(found)
}

/// Calls `f` for every record of the uncompressed batches of a segment.
fn for_each_record(seg: &Segment, mut f: impl FnMut(&batch::Record)) -> Result<()> {
    let data = seg.committed();
    for item in BatchIter::new(&data) {
        let (range, _) =
            item.map_err(|e| StorageError::corrupt(&seg.log_path, 0, e.to_string()))?;
        match Records::new(data.slice(range.clone())) {
            Ok(records) => {
                for r in records {
                    let r = r.map_err(|e| {
                        StorageError::corrupt(&seg.log_path, range.start as u64, e.to_string())
                    })?;
                    f(&r);
                }
            }
            Err(BatchError::Compressed(_)) => {}
            Err(e) => {
                return Err(StorageError::corrupt(
                    &seg.log_path,
                    range.start as u64,
                    e.to_string(),
                ));
            }
        }
    }
    Ok(())
}

/// Deletes the replaced segments and renames the `.swap` files of `base` into place.
fn finish_swap(dir: &Path, base: i64, replaced: &[i64]) -> Result<()> {
    for &b in replaced {
        for ext in [LOG_EXT, INDEX_EXT, TIME_EXT] {
            let p = segment::file_path(dir, b, ext);
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::io("remove", p)(e)),
            }
        }
    }
    for ext in [INDEX_EXT, TIME_EXT, LOG_EXT] {
        let from = ext_path(dir, base, ext, ".swap");
        let to = segment::file_path(dir, base, ext);
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // A crash between these renames leaves the indexes renamed and the log not: when
            // the swap is completed again at open, they are already in place. (An index missing
            // altogether would be rebuilt from the log.) The log's `.swap` is what says a swap
            // is unfinished, so it must be there.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && ext != LOG_EXT => {}
            Err(e) => return Err(StorageError::io("rename", &to)(e)),
        }
    }
    let end = ext_path(dir, base, "end", ".swap");
    fs::remove_file(&end).map_err(StorageError::io("remove", &end))?;
    sync_dir(dir, None)
}

/// Completes (or discards) swaps left by a compaction that a crash interrupted. `logs` holds the
/// base offsets of the `.log` files found, and is updated to what remains.
pub(crate) fn finish_swaps(dir: &Path, logs: &mut Vec<i64>, swaps: &[(i64, String)]) -> Result<()> {
    let mut bases: Vec<i64> = swaps.iter().map(|(b, _)| *b).collect();
    bases.sort_unstable();
    bases.dedup();
    for base in bases {
        let log_swap = ext_path(dir, base, LOG_EXT, ".swap");
        if !log_swap.exists() {
            for ext in [INDEX_EXT, TIME_EXT, "end"] {
                let p = ext_path(dir, base, ext, ".swap");
                if p.exists() {
                    fs::remove_file(&p).map_err(StorageError::io("remove", &p))?;
                }
            }
            continue;
        }
        // The end file was made durable before the log was renamed to .swap.
        let end_path = ext_path(dir, base, "end", ".swap");
        let end: i64 = fs::read_to_string(&end_path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                StorageError::corrupt(&end_path, 0, "unreadable compaction end offset")
            })?;
        let replaced: Vec<i64> = logs
            .iter()
            .copied()
            .filter(|&b| b > base && b < end)
            .collect();
        tracing::warn!(dir = %dir.display(), base, ?replaced, "completing a compaction swap interrupted by a crash");
        finish_swap(dir, base, &replaced)?;
        logs.retain(|b| !replaced.contains(b));
        logs.push(base);
    }
    Ok(())
}
