//! A log's recovery point: an offset below which every segment is known to be on disk (Kafka's
//! recovery-point checkpoint, kept per log in `<log dir>/recovery-point`, one line
//! `<offset> <crc32 of the offset text>`).
//!
//! After an unclean shutdown, the closed segments that reach past it are checked batch by
//! batch, CRCs included, and the log is cut at the first damage ([`cut_unflushed_damage`]):
//! a power cut takes what was written since a file's last fsync from closed segments as well
//! as from the active one, and without the cut a short closed segment would leave a hole in
//! the middle of the log. Segments wholly below the point are only walked by their headers, as
//! before, so a restart does not read the whole log.
//!
//! The point is raised with a rename and no fsync: a power cut may leave the old value or an
//! unreadable file, and an unreadable file reads as 0 (check everything), never as more than
//! was written. It is lowered durably, before a truncation removes anything, because the
//! offsets above the new end will be written again and must be checked again.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use crate::error::{Result, StorageError};
use crate::io::{self, IoFaults, sync_dir};
use crate::log::file_len;
use crate::segment::{self, INDEX_EXT, IndexBuilder, LOG_EXT, TIME_EXT};

/// The file's name in a log directory.
pub(crate) const FILE: &str = "recovery-point";

/// The recovery point the file records: 0 (check every segment) when there is none or it does
/// not check out.
pub(crate) fn read(dir: &Path) -> i64 {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the recovery point; checking every segment");
            return 0;
        }
    };
    let parsed = text.trim().split_once(' ').and_then(|(offset, crc)| {
        let crc = u32::from_str_radix(crc, 16).ok()?;
        (crc32fast::hash(offset.as_bytes()) == crc)
            .then(|| offset.parse::<i64>().ok())
            .flatten()
            .filter(|o| *o >= 0)
    });
    parsed.unwrap_or_else(|| {
        tracing::warn!(path = %path.display(), "the recovery point does not check out; checking every segment");
        0
    })
}

/// Records `offset` as the recovery point: durably when `durable` (a lowering), otherwise with
/// a rename only (see the module docs).
pub(crate) fn write(
    dir: &Path,
    offset: i64,
    durable: bool,
    faults: Option<&IoFaults>,
) -> Result<()> {
    let text = offset.to_string();
    let crc = crc32fast::hash(text.as_bytes());
    let bytes = format!("{text} {crc:08x}\n");
    let path = dir.join(FILE);
    if durable {
        io::write_atomic_in(dir, &path, bytes.as_bytes(), faults)
    } else {
        io::replace_in(&path, bytes.as_bytes(), faults)
    }
}

/// After an unclean shutdown of a log that was never compacted: checks every closed segment
/// that reaches past the recovery point `point` batch by batch (length, magic, CRC, offsets
/// following on), and at the first damage (or a segment that ends before the next begins) cuts
/// the log there: the later segments are removed, newest first, and the damaged one is cut to
/// its good prefix and becomes the last, which ``log::open_active` then recovers as any active
/// segment. A power cut loses what was written since a file's last fsync from closed segments
/// too; cutting there keeps the log a prefix of what was written, with no hole, and a
/// replica refetches the rest from its leader. Damage below the point is not looked for here
/// (the header walk of `log::load` still finds a segment that ends early: finding S1).
pub(crate) fn cut_unflushed_damage(
    dir: &Path,
    bases: &mut Vec<i64>,
    point: i64,
    faults: Option<&IoFaults>,
) -> Result<()> {
    let closed = bases.len().saturating_sub(1);
    for i in 0..closed {
        let (base, next_base) = (bases[i], bases[i + 1]);
        if next_base <= point {
            continue;
        }
        let path = segment::file_path(dir, base, LOG_EXT);
        let file = File::open(&path).map_err(StorageError::io("open", &path))?;
        let len = file_len(&file, &path)?;
        let bytes = crate::mmap::map(
            &file,
            segment::usize_of(len),
            crate::mmap::Access::Sequential,
        )
        .map_err(StorageError::io("map", &path))?;
        let mut scratch = IndexBuilder::new(1 << 30, -1, -1, 0);
        let scan = segment::scan(&bytes, 0, base, base, true, &mut scratch);
        drop(bytes);
        if scan.stopped.is_none() && scan.valid_len == len && scan.next_offset == next_base {
            continue;
        }
        let reason = scan.stopped.unwrap_or_else(|| {
            format!(
                "its batches end at offset {} where the next segment starts at {next_base}",
                scan.next_offset
            )
        });
        tracing::warn!(segment = %path.display(), %reason, kept_bytes = scan.valid_len, cut_bytes = len - scan.valid_len, later_segments_removed = closed - i, "recovery cut the log in a closed segment written after its recovery point");
        for &later in bases[i + 1..].iter().rev() {
            // The log first: index files without their log are removed at open.
            for ext in [LOG_EXT, INDEX_EXT, TIME_EXT] {
                io::remove_file(faults, &segment::file_path(dir, later, ext))?;
            }
        }
        sync_dir(dir, faults)?;
        drop(file);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(scan.valid_len))
            .map_err(StorageError::io("truncate", &path))?;
        bases.truncate(i + 1);
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_damage_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), 0);
        write(dir.path(), 42, false, None).unwrap();
        assert_eq!(read(dir.path()), 42);
        write(dir.path(), 7, true, None).unwrap();
        assert_eq!(read(dir.path()), 7);
        fs::write(dir.path().join(FILE), "43 deadbeef\n").unwrap();
        assert_eq!(read(dir.path()), 0);
        fs::write(dir.path().join(FILE), "").unwrap();
        assert_eq!(read(dir.path()), 0);
    }
}
