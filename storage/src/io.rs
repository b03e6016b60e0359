//! The storage I/O seam: the writes, fsyncs and file creations a [`crate::Log`] makes while it
//! appends, rolls, flushes and truncates (and writes its leader-epoch checkpoint) all pass
//! through the functions here, which ask the log's [`IoFaults`] (if it has one) whether to fail
//! first. Tests use it to make the disk fail the ways real disks do (an error, a short write, a
//! failed fsync, a full disk) and check that the log never claims to have stored what it did
//! not, and recovers once the fault clears. Removals and renames count as writes (of the
//! directory).
//!
//! Production logs carry no `IoFaults`: the check is one branch on an `Option`.
//!
//! Early write-back ([`start_writeback`]) passes through here too; it is a hint with no effect
//! on what is stored, so no fault applies to it.
//!
//! **The sync journal** (a test hook for simulated power cuts): when the environment variable
//! [`SYNC_JOURNAL_ENV`] names a file when the first log opens, every fsync of a segment's `.log`
//! through here appends `PATH<TAB>LENGTH` to it (the file's length once the fsync returned, so
//! before anything that waited for that fsync is acknowledged), and every `.log` created appends
//! `PATH<TAB>0`. After the processes are killed, a test cuts each `.log` to the last length
//! journaled for it: what a power cut keeps of a file written only through the page cache
//! (issue 17's scenario 9, power-cut half: `tests/power_cut.rs`). Off (one check of a
//! `OnceLock`) otherwise.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Result, StorageError};

/// `ENOSPC`: what a full disk answers.
pub const ENOSPC: i32 = 28;
/// `EIO`: what a failing device answers.
pub const EIO: i32 = 5;

/// A kind of call that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// A write to a segment's `.log`, `.index` or `.timeindex`.
    Write,
    /// An fsync of a segment file or the log's directory.
    Sync,
    /// Creating a new segment's files (at a roll).
    Create,
}

impl IoOp {
    const ALL: [IoOp; 3] = [IoOp::Write, IoOp::Sync, IoOp::Create];

    fn slot(self) -> usize {
        match self {
            IoOp::Write => 0,
            IoOp::Sync => 1,
            IoOp::Create => 2,
        }
    }
}

/// How an injected call fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The call does nothing and fails with this OS error number (e.g. [`EIO`], [`ENOSPC`]).
    Fail(i32),
    /// A write stores the first half of its bytes and then fails with `ENOSPC`, as when the disk
    /// fills up in the middle of it. For calls other than writes this is `Fail(ENOSPC)`.
    Short,
    /// The call succeeds after this many milliseconds: a slow disk.
    Slow(u64),
}

/// Faults to inject, shared by every log opened with a clone of it. Each [`IoOp`] fails, while a
/// fault is set for it, on every call (after the calls [`IoFaults::set_after`] lets through);
/// [`IoFaults::clear`] lets calls through again.
#[derive(Debug, Clone, Default)]
pub struct IoFaults {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Per op: calls still to let through, then the fault.
    faults: Mutex<[(u64, Option<Fault>); 3]>,
    injected: AtomicU64,
}

impl IoFaults {
    /// No faults set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later `op` call fail with `fault` (or, with `None`, succeed again).
    pub fn set(&self, op: IoOp, fault: Option<Fault>) {
        self.set_after(op, 0, fault);
    }

    /// Lets the next `skip` calls of `op` through, then fails every later one with `fault`. An
    /// append writes `.log`, then `.timeindex` and `.index` when it completes a group of
    /// [`crate::INDEX_WRITE_GROUP`] index entries: `skip` picks which one fails.
    pub fn set_after(&self, op: IoOp, skip: u64, fault: Option<Fault>) {
        self.faults()[op.slot()] = (skip, fault);
    }

    /// Lets every call through again.
    pub fn clear(&self) {
        for op in IoOp::ALL {
            self.set(op, None);
        }
    }

    /// How many calls have been failed so far.
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::Relaxed)
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, [(u64, Option<Fault>); 3]> {
        match self.inner.faults.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn take(&self, op: IoOp) -> Option<Fault> {
        let f = {
            let mut g = self.faults();
            let (skip, fault) = &mut g[op.slot()];
            if fault.is_some() && *skip > 0 {
                *skip -= 1;
                return None;
            }
            *fault
        };
        if f.is_some() {
            self.inner.injected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?op, fault = ?f, "injected an I/O fault");
        }
        f
    }
}

/// Two handles are equal when they share their faults.
impl PartialEq for IoFaults {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for IoFaults {}

fn injected(fault: Fault) -> io::Error {
    match fault {
        Fault::Fail(errno) => io::Error::from_raw_os_error(errno),
        Fault::Short | Fault::Slow(_) => io::Error::from_raw_os_error(ENOSPC),
    }
}

/// The fault set for `op`, if any; a slow one is served here (the call then proceeds).
fn fault(faults: Option<&IoFaults>, op: IoOp) -> Option<Fault> {
    match faults.and_then(|f| f.take(op)) {
        Some(Fault::Slow(ms)) => {
            std::thread::sleep(std::time::Duration::from_millis(ms));
            None
        }
        other => other,
    }
}

/// Fails with the injected error if `op` is set to fail.
pub(crate) fn check(faults: Option<&IoFaults>, op: IoOp) -> io::Result<()> {
    match fault(faults, op) {
        Some(f) => Err(injected(f)),
        None => Ok(()),
    }
}

/// `pwrite`s all of `buf` at `at`.
pub(crate) fn write_at(
    faults: Option<&IoFaults>,
    file: &File,
    path: &Path,
    buf: &[u8],
    at: u64,
) -> Result<()> {
    let r = match fault(faults, IoOp::Write) {
        Some(Fault::Short) => file
            .write_all_at(&buf[..buf.len() / 2], at)
            .and(Err(injected(Fault::Short))),
        Some(fault) => Err(injected(fault)),
        None => file.write_all_at(buf, at),
    };
    r.map_err(StorageError::io("write", path))
}

/// Writes all of `bufs` at the file's cursor with vectored writes.
pub(crate) fn write_all_vectored(
    faults: Option<&IoFaults>,
    mut file: &File,
    path: &Path,
    mut bufs: &mut [IoSlice<'_>],
) -> Result<()> {
    match fault(faults, IoOp::Write) {
        Some(Fault::Short) => {
            let total: usize = bufs.iter().map(|b| b.len()).sum();
            let mut left = total / 2;
            for b in bufs.iter() {
                let n = left.min(b.len());
                file.write_all(&b[..n])
                    .map_err(StorageError::io("write", path))?;
                left -= n;
            }
            return Err(StorageError::io("write", path)(injected(Fault::Short)));
        }
        Some(fault) => return Err(StorageError::io("write", path)(injected(fault))),
        None => {}
    }
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => {
                return Err(StorageError::io("write", path)(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "wrote no bytes",
                )));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StorageError::io("write", path)(e)),
        }
    }
    Ok(())
}

/// Asks the kernel to start writing `len` bytes of `file` from `offset` to disk and returns
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Purely a hint for when
/// write-back happens: it makes nothing durable (only an fsync does, and an fsync still reports
/// any write error), so callers may ignore its errors. Does nothing on systems without the call.
#[allow(unsafe_code)]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        };
        // SAFETY: the descriptor belongs to `file`, which outlives the call; the call reads
        // and writes none of this process's memory.
        let r = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
    Ok(())
}

/// `fdatasync`s `file`.
pub(crate) fn sync_data(faults: Option<&IoFaults>, file: &File, path: &Path) -> Result<()> {
    check(faults, IoOp::Sync)
        .and_then(|()| file.sync_data())
        .map_err(StorageError::io("fsync", path))?;
    journal_synced(file);
    Ok(())
}

/// The environment variable naming the sync journal's file (module docs).
pub const SYNC_JOURNAL_ENV: &str = "STROM_SYNC_JOURNAL";

/// The sync journal, if [`SYNC_JOURNAL_ENV`] named one.
fn journal() -> Option<&'static Mutex<File>> {
    static JOURNAL: std::sync::OnceLock<Option<Mutex<File>>> = std::sync::OnceLock::new();
    JOURNAL
        .get_or_init(|| {
            let path = std::env::var_os(SYNC_JOURNAL_ENV)?;
            match File::options().create(true).append(true).open(&path) {
                Ok(f) => Some(Mutex::new(f)),
                Err(e) => {
                    tracing::error!(path = ?path, error = %e, "cannot open the sync journal");
                    None
                }
            }
        })
        .as_ref()
}

/// Journals `file`'s length if it is a segment's `.log` and the journal is on.
fn journal_synced(file: &File) {
    let Some(journal) = journal() else { return };
    use std::os::fd::AsRawFd;
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return;
    };
    if let Ok(meta) = file.metadata() {
        journal_line(journal, &path, meta.len());
    }
}

/// Appends `PATH<TAB>LEN` for a `.log` file, in one write.
fn journal_line(journal: &Mutex<File>, path: &Path, len: u64) {
    if path
        .extension()
        .is_none_or(|e| e != crate::segment::LOG_EXT)
    {
        return;
    }
    let line = format!("{}\t{len}\n", path.display());
    let mut f = journal.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = f.write_all(line.as_bytes()) {
        tracing::error!(error = %e, "cannot write the sync journal");
    }
}

/// fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path, faults: Option<&IoFaults>) -> Result<()> {
    check(faults, IoOp::Sync)
        .and_then(|()| File::open(dir))
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io("fsync", dir))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync of the directory. A
/// crash leaves either the old file or the new one, never a mix. For small metadata files.
pub fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_in(dir, path, bytes, None)
}

/// [`write_atomic`] through the seam: creating the temp file, writing it and renaming it are
/// writes (a small file is written, not a segment created), its fsync and the directory's are
/// fsyncs.
pub(crate) fn write_atomic_in(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    faults: Option<&IoFaults>,
) -> Result<()> {
    let tmp = path.with_extension("tmp");
    check(faults, IoOp::Write).map_err(StorageError::io("create", &tmp))?;
    let f = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    write_at(faults, &f, &tmp, bytes, 0)?;
    check(faults, IoOp::Sync)
        .and_then(|()| f.sync_all())
        .map_err(StorageError::io("fsync", &tmp))?;
    rename(faults, &tmp, path)?;
    sync_dir(dir, faults)
}

/// Replaces `path` with `bytes` atomically (a temp file renamed over it) but not durably: no
/// fsync. For files that recovery can rebuild or check (the leader-epoch checkpoint); the
/// caller fsyncs them when it must vouch for them.
pub(crate) fn replace_in(path: &Path, bytes: &[u8], faults: Option<&IoFaults>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    check(faults, IoOp::Write).map_err(StorageError::io("create", &tmp))?;
    let f = File::create(&tmp).map_err(StorageError::io("create", &tmp))?;
    write_at(faults, &f, &tmp, bytes, 0)?;
    rename(faults, &tmp, path)
}

/// Fsyncs an open file through the seam.
pub(crate) fn sync_file(faults: Option<&IoFaults>, f: &File, path: &Path) -> Result<()> {
    check(faults, IoOp::Sync)
        .and_then(|()| f.sync_all())
        .map_err(StorageError::io("fsync", path))
}

/// Renames `from` to `to` (replacing it). A rename changes the directory: it counts as a write.
pub(crate) fn rename(faults: Option<&IoFaults>, from: &Path, to: &Path) -> Result<()> {
    check(faults, IoOp::Write)
        .and_then(|()| std::fs::rename(from, to))
        .map_err(StorageError::io("rename", to))
}

/// Removes `path`; a file already gone is no error. A removal counts as a write (of the
/// directory).
pub(crate) fn remove_file(faults: Option<&IoFaults>, path: &Path) -> Result<()> {
    check(faults, IoOp::Write).map_err(StorageError::io("remove", path))?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("remove", path)(e)),
    }
}

/// Creates (or empties) `path` for writing and reading: a segment file, so a creation.
pub(crate) fn create_file(faults: Option<&IoFaults>, path: &Path) -> Result<File> {
    check(faults, IoOp::Create)
        .and_then(|()| {
            File::options()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)
        })
        .inspect(|_| {
            if let Some(journal) = journal() {
                // Named as `/proc/self/fd` names it when it is fsynced.
                let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                journal_line(journal, &path, 0);
            }
        })
        .map_err(StorageError::io("create", path))
}

/// Copies the first `len` bytes of the file at `from` into `to` (from its start), in the
/// kernel where it can (`copy_file_range`). One write as far as faults go.
pub(crate) fn copy_prefix(
    faults: Option<&IoFaults>,
    from: &Path,
    to: &File,
    to_path: &Path,
    len: u64,
) -> Result<()> {
    check(faults, IoOp::Write).map_err(StorageError::io("write", to_path))?;
    let src = File::open(from).map_err(StorageError::io("open", from))?;
    let mut prefix = io::Read::take(&src, len);
    let copied = io::copy(&mut prefix, &mut &*to).map_err(StorageError::io("write", to_path))?;
    if copied != len {
        return Err(StorageError::io("copy", from)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the file holds {copied} of the {len} bytes to keep"),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_fail_until_cleared_and_are_counted() {
        let f = IoFaults::new();
        assert!(check(Some(&f), IoOp::Sync).is_ok());
        f.set(IoOp::Sync, Some(Fault::Fail(EIO)));
        let e = check(Some(&f), IoOp::Sync).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(EIO));
        assert!(check(Some(&f), IoOp::Write).is_ok());
        f.clear();
        assert!(check(Some(&f), IoOp::Sync).is_ok());
        assert_eq!(f.injected(), 1);
        assert_eq!(f, f.clone());
        assert_ne!(f, IoFaults::new());
    }

    #[test]
    fn a_short_write_stores_half_then_fails_with_enospc() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let f = IoFaults::new();
        f.set(IoOp::Write, Some(Fault::Short));
        let mut bufs = [IoSlice::new(b"abcd"), IoSlice::new(b"efgh")];
        let e = write_all_vectored(Some(&f), &file, &path, &mut bufs).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"abcd");
        let e = write_at(Some(&f), &file, &path, b"1234", 10).unwrap_err();
        assert!(matches!(e, StorageError::Io { .. }));
        assert_eq!(std::fs::read(&path).unwrap().len(), 12);
    }
}
