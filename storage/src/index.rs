//! The sparse offset index and time index of a segment: entry layout, binary search, and the
//! sanity check that decides whether an index file can be trusted.
//!
//! Both files are flat arrays of fixed-size big-endian entries, appended with `pwrite` and read
//! through a memory map. Relative offsets are `offset - segment base offset`.
//!
//! ```text
//! .index      8 bytes per entry: relative offset (u32) | position of that batch in .log (u32)
//! .timeindex 16 bytes per entry: max timestamp so far (i64) | relative last offset (u32)
//!                                  | CRC-32 of the 12 bytes before it (u32)
//! ```
//!
//! An offset entry points at the first byte of a batch whose base offset is the entry's offset.
//! A time entry `(T, o)` promises that every record of the segment with offset <= `o` has a
//! timestamp <= `T`; entries are added only when `T` grows, so both arrays are sorted.
//! An index is derived from its log and is never evidence about the log: when it disagrees, the
//! log wins and the index is rebuilt. Offset entries are checked against the log whenever they
//! are used (the batch at the position must have the entry's offset). Time entries cannot be
//! checked that way (the running maximum is a fact about every batch before it), so each
//! carries a checksum: a damaged entry is never used (docs/fuzzing.md, finding S3).

/// Bytes per offset-index entry.
pub const OFFSET_ENTRY: usize = 8;
/// Bytes per time-index entry.
pub const TIME_ENTRY: usize = 16;

#[inline]
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Offset-index entry `i` of `entries` as (relative offset, position).
#[inline]
pub fn offset_entry(entries: &[u8], i: usize) -> (u32, u32) {
    let at = i * OFFSET_ENTRY;
    (u32_at(entries, at), u32_at(entries, at + 4))
}

/// Time-index entry `i` of `entries` as (timestamp, relative offset), without checking it.
#[inline]
pub fn time_entry(entries: &[u8], i: usize) -> (i64, u32) {
    let at = i * TIME_ENTRY;
    (i64_at(entries, at), u32_at(entries, at + 8))
}

/// Time-index entry `i` of `entries`, if its checksum matches.
#[inline]
pub fn checked_time_entry(entries: &[u8], i: usize) -> Option<(i64, u32)> {
    let at = i * TIME_ENTRY;
    let e = entries.get(at..at + TIME_ENTRY)?;
    (crc32fast::hash(&e[..12]) == u32_at(e, 12)).then(|| time_entry(entries, i))
}

/// Appends an offset entry to `out`.
pub fn put_offset_entry(out: &mut Vec<u8>, relative_offset: u32, position: u32) {
    out.extend_from_slice(&relative_offset.to_be_bytes());
    out.extend_from_slice(&position.to_be_bytes());
}

/// Appends a time entry to `out`.
pub fn put_time_entry(out: &mut Vec<u8>, timestamp: i64, relative_offset: u32) {
    let start = out.len();
    out.extend_from_slice(&timestamp.to_be_bytes());
    out.extend_from_slice(&relative_offset.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The last entry whose relative offset is <= `target`, by binary search over the whole entries.
/// `entries.len()` must be a multiple of [`OFFSET_ENTRY`].
pub fn lookup_offset(entries: &[u8], target: u32) -> Option<(u32, u32)> {
    let n = entries.len() / OFFSET_ENTRY;
    // partition_point over indices: first entry with offset > target.
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if offset_entry(entries, mid).0 <= target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo.checked_sub(1).map(|i| offset_entry(entries, i))
}

/// The last entry whose timestamp is < `target`: every record up to its offset is older than
/// `target`, so a search for the first record at or after `target` may start past it.
/// Every entry the search reads is checked: `Err(())` if one fails its checksum (the caller
/// then does without the index).
#[allow(clippy::result_unit_err)]
pub fn lookup_time(entries: &[u8], target: i64) -> Result<Option<(i64, u32)>, ()> {
    let n = entries.len() / TIME_ENTRY;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if checked_time_entry(entries, mid).ok_or(())?.0 < target {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    match lo.checked_sub(1) {
        Some(i) => checked_time_entry(entries, i).ok_or(()).map(Some),
        None => Ok(None),
    }
}

/// How many leading offset entries are plausible for a log of `log_len` bytes: strictly
/// increasing offsets and positions, every position inside the log. Entries after the first
/// implausible one are not to be trusted.
pub fn valid_offset_prefix(entries: &[u8], log_len: u64) -> usize {
    let n = entries.len() / OFFSET_ENTRY;
    let mut prev: Option<(u32, u32)> = None;
    for i in 0..n {
        let (off, pos) = offset_entry(entries, i);
        if u64::from(pos) >= log_len {
            return i;
        }
        if let Some((po, pp)) = prev
            && (off <= po || pos <= pp)
        {
            return i;
        }
        prev = Some((off, pos));
    }
    n
}

/// How many leading time entries are plausible: checksums matching, strictly increasing
/// timestamps, non-decreasing offsets, offsets at most `max_relative`.
pub fn valid_time_prefix(entries: &[u8], max_relative: u32) -> usize {
    let n = entries.len() / TIME_ENTRY;
    let mut prev: Option<(i64, u32)> = None;
    for i in 0..n {
        let Some((ts, off)) = checked_time_entry(entries, i) else {
            return i;
        };
        if off > max_relative {
            return i;
        }
        if let Some((pt, po)) = prev
            && (ts <= pt || off < po)
        {
            return i;
        }
        prev = Some((ts, off));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(e: &[(u32, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(o, p) in e {
            put_offset_entry(&mut v, o, p);
        }
        v
    }

    #[test]
    fn offset_lookup_finds_floor_entry() {
        let idx = offsets(&[(10, 100), (20, 200), (30, 300)]);
        assert_eq!(lookup_offset(&idx, 5), None);
        assert_eq!(lookup_offset(&idx, 10), Some((10, 100)));
        assert_eq!(lookup_offset(&idx, 19), Some((10, 100)));
        assert_eq!(lookup_offset(&idx, 20), Some((20, 200)));
        assert_eq!(lookup_offset(&idx, 1000), Some((30, 300)));
        assert_eq!(lookup_offset(&[], 1000), None);
    }

    #[test]
    fn time_lookup_finds_last_older_entry() {
        let mut idx = Vec::new();
        put_time_entry(&mut idx, 100, 5);
        put_time_entry(&mut idx, 200, 9);
        assert_eq!(lookup_time(&idx, 100), Ok(None));
        assert_eq!(lookup_time(&idx, 101), Ok(Some((100, 5))));
        assert_eq!(lookup_time(&idx, 200), Ok(Some((100, 5))));
        assert_eq!(lookup_time(&idx, 201), Ok(Some((200, 9))));
        // A damaged entry is never used.
        idx[TIME_ENTRY + 3] ^= 1;
        assert_eq!(lookup_time(&idx, 201), Err(()));
        assert_eq!(checked_time_entry(&idx, 1), None);
        assert_eq!(valid_time_prefix(&idx, 100), 1);
    }

    #[test]
    fn sanity_stops_at_first_implausible_entry() {
        let idx = offsets(&[(10, 100), (20, 200), (15, 300), (40, 400)]);
        assert_eq!(valid_offset_prefix(&idx, 1000), 2);
        assert_eq!(valid_offset_prefix(&idx, 150), 1);
        // A zero-filled tail (a preallocated or unwritten region) is rejected.
        let zeros = offsets(&[(10, 100), (0, 0)]);
        assert_eq!(valid_offset_prefix(&zeros, 1000), 1);
        let mut t = Vec::new();
        put_time_entry(&mut t, 5, 1);
        put_time_entry(&mut t, 5, 2);
        assert_eq!(valid_time_prefix(&t, 10), 1);
        assert_eq!(valid_time_prefix(&t[..TIME_ENTRY], 0), 0);
    }
}
