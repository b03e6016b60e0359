//! A log's start offset when it lies inside a segment: Kafka's DeleteRecords moves the start of
//! a partition to any offset, not only to a segment boundary as retention does. The offset is
//! kept in `<log dir>/log-start-offset`, one line `<offset> <crc32 of the offset text>`, written
//! atomically before the in-memory start moves, so a crash never brings deleted records back.
//! Whole segments below the start are removed afterwards, like retention's.

use std::fs;
use std::path::Path;

use crate::error::{Result, StorageError};

/// The file's name in a log directory.
pub(crate) const FILE: &str = "log-start-offset";

/// The start offset the file records, if there is one. A damaged file is an error: guessing a
/// lower start would serve deleted records.
pub(crate) fn read(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io("read", &path)(e)),
    };
    let damaged = |reason: &str| StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        reason: reason.to_string(),
    };
    let (offset, crc) = text
        .trim()
        .split_once(' ')
        .ok_or_else(|| damaged("expected `<offset> <crc32>`"))?;
    let crc = u32::from_str_radix(crc, 16).map_err(|_| damaged("unreadable checksum"))?;
    if crc32fast::hash(offset.as_bytes()) != crc {
        return Err(damaged("checksum mismatch"));
    }
    offset
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .map(Some)
        .ok_or_else(|| damaged("unreadable offset"))
}

/// Records `offset` as the log's start, durably.
pub(crate) fn write(dir: &Path, offset: i64) -> Result<()> {
    let text = offset.to_string();
    let crc = crc32fast::hash(text.as_bytes());
    crate::io::write_atomic(
        dir,
        &dir.join(FILE),
        format!("{text} {crc:08x}\n").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), 42).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(42));
        fs::write(dir.path().join(FILE), "43 deadbeef\n").unwrap();
        assert!(read(dir.path()).is_err());
        fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(read(dir.path()).is_err());
    }
}
