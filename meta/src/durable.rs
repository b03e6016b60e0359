//! strom's record format for the metadata quorum's files, and the file operations that make them
//! durable. This module owns the bytes on disk; [`crate::log_store`] and
//! [`crate::state_machine`] decide what the records mean.
//!
//! A file is a sequence of records, each
//!
//! ```text
//! len: u32 LE | crc: u32 LE | payload (len bytes)
//! ```
//!
//! where `crc` is the CRC-32C of the four length bytes followed by the payload (covering the
//! length too means a damaged length is caught by the checksum, and a zero-filled tail, which a
//! crash can leave behind a file whose size was extended, never reads as an empty record: the
//! CRC-32C of four zero bytes is not zero). Payloads are serde_json documents, so they never
//! contain a zero byte, and an empty payload is invalid.
//!
//! Reading ([`scan`]) checks every record. The first record that fails a check (a header cut
//! short, a length of zero or over the limit, a length running past the end of the file, a
//! checksum mismatch) ends the valid prefix, and then:
//!
//! - if no valid record starts anywhere after it, it is a torn tail: a crash interrupted the
//!   last append, whose bytes were never acknowledged. [`Scan::valid_len`] says where the valid
//!   prefix ends so the caller can truncate the file there;
//! - if a valid record does follow, bytes in the middle of the file are damaged: that is
//!   [`Error::Corrupt`], never skipped, because the records after the damage may have been
//!   acknowledged. (A crash that persisted a later page of the last unsynced write but not an
//!   earlier one reads the same way: refusing to start is the safe answer to both.)
//!
//! A length over the limit is refused before anything is allocated; files are read whole and
//! payloads borrowed from that buffer, so a damaged length never allocates beyond the file size.
//!
//! [`replace_file`] writes a small file atomically (temporary file, fsync, rename, fsync of the
//! directory): a crash leaves the old contents or the new, never a mix. [`GroupWriter`] is the
//! thread that appends records with grouped fsyncs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Bytes of a record's header (length and checksum).
pub const HEADER_LEN: usize = 8;

/// The largest payload a log record may have (64 MiB).
pub const MAX_RECORD_LEN: usize = 64 << 20;

/// The checksum of a record: CRC-32C of the little-endian length followed by the payload.
fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload)
}

/// Appends one record holding `payload` to `out`. Fails, writing nothing, if the payload is empty
/// or longer than `max_len`.
pub fn encode_record(payload: &[u8], max_len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|len| *len > 0 && payload.len() <= max_len)
        .ok_or(Error::RecordTooLarge {
            len: payload.len(),
            max: max_len,
        })?;
    let len_bytes = len.to_le_bytes();
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&record_crc(len_bytes, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends one record holding `value` as serde_json to `out` (at most [`MAX_RECORD_LEN`]).
/// `what` names the value in errors.
pub fn encode_json<T: Serialize + ?Sized>(
    value: &T,
    what: &'static str,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let payload = serde_json::to_vec(value).map_err(|source| Error::Encode { what, source })?;
    encode_record(&payload, MAX_RECORD_LEN, out)
}

/// Decodes the serde_json payload of the record at `position` of `path`.
pub fn decode_json<T: DeserializeOwned>(
    payload: &[u8],
    path: &Path,
    position: u64,
) -> Result<T, Error> {
    serde_json::from_slice(payload).map_err(|source| Error::Decode {
        path: path.to_path_buf(),
        position,
        source,
    })
}

/// One record found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte position of the record's header in the file.
    pub position: u64,
    /// Where its payload is in the scanned buffer.
    pub payload: Range<usize>,
}

/// What [`scan`] found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The valid records, in file order.
    pub records: Vec<RecordSpan>,
    /// Where the valid prefix ends: the file's length, or the start of a torn last record.
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
}

impl Scan {
    /// True when the file ends with a torn record (bytes past [`Scan::valid_len`]).
    pub fn is_torn(&self) -> bool {
        self.valid_len < self.file_len
    }
}

/// Checks the record starting at `pos`: its payload range and the position after it, or what is
/// wrong with it.
fn check_record(buf: &[u8], pos: usize, max_len: usize) -> Result<(Range<usize>, usize), String> {
    let rest = buf.get(pos..).unwrap_or_default();
    let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() else {
        return Err(format!(
            "record header cut short ({} of {HEADER_LEN} bytes)",
            rest.len()
        ));
    };
    let [l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let len_bytes = [l0, l1, l2, l3];
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 {
        return Err("record length is zero".to_owned());
    }
    if len > max_len {
        return Err(format!(
            "record length {len} exceeds the limit of {max_len}"
        ));
    }
    let Some(payload) = body.get(..len) else {
        return Err(format!(
            "record of {len} bytes runs past the end of the file ({} bytes left)",
            body.len()
        ));
    };
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    let actual = record_crc(len_bytes, payload);
    if stored != actual {
        return Err(format!(
            "checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
        ));
    }
    let start = pos + HEADER_LEN;
    Ok((start..start + len, start + len))
}

/// The position of the first valid record starting after `pos`, if any.
fn next_valid_record(buf: &[u8], pos: usize, max_len: usize) -> Option<usize> {
    let last_start = buf.len().checked_sub(HEADER_LEN)?;
    (pos + 1..=last_start).find(|p| check_record(buf, *p, max_len).is_ok())
}

/// Checks every record of `buf` (the whole contents of `path`, named in errors). Payloads may be
/// at most `max_len` bytes. See the module documentation for what counts as a torn tail and what
/// is corruption.
pub fn scan(buf: &[u8], max_len: usize, path: &Path) -> Result<Scan, Error> {
    let mut records = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        match check_record(buf, pos, max_len) {
            Ok((payload, next)) => {
                records.push(RecordSpan {
                    position: pos as u64,
                    payload,
                });
                pos = next;
            }
            Err(reason) => {
                if let Some(next) = next_valid_record(buf, pos, max_len) {
                    return Err(Error::corrupt(
                        path,
                        pos as u64,
                        format!("{reason}, yet a valid record follows at byte {next}"),
                    ));
                }
                tracing::warn!(
                    path = %path.display(),
                    position = pos,
                    torn_bytes = buf.len() - pos,
                    %reason,
                    "dropping a torn record at the end of the file"
                );
                break;
            }
        }
    }
    Ok(Scan {
        records,
        valid_len: pos as u64,
        file_len: buf.len() as u64,
    })
}

/// A record file read whole: its bytes and the records found in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFile {
    /// The file's bytes.
    pub buf: Vec<u8>,
    /// Its records.
    pub records: Vec<RecordSpan>,
}

impl RecordFile {
    /// The payload of `record` (one of [`RecordFile::records`]).
    pub fn payload(&self, record: &RecordSpan) -> &[u8] {
        self.buf.get(record.payload.clone()).unwrap_or_default()
    }
}

/// Reads a record file that is only ever replaced whole ([`replace_file`]): every byte must be
/// valid (a torn tail is corruption here, since such a file is never appended to) and it must hold
/// exactly `count` records. `None` if the file does not exist.
pub fn read_whole_file(
    path: &Path,
    count: usize,
    max_len: usize,
) -> Result<Option<RecordFile>, Error> {
    let Some(buf) = read_file(path)? else {
        return Ok(None);
    };
    let scanned = scan(&buf, max_len, path)?;
    if scanned.is_torn() {
        return Err(Error::corrupt(
            path,
            scanned.valid_len,
            "damaged record in a file that is replaced atomically",
        ));
    }
    if scanned.records.len() != count {
        return Err(Error::corrupt(
            path,
            0,
            format!("expected {count} records, found {}", scanned.records.len()),
        ));
    }
    Ok(Some(RecordFile {
        buf,
        records: scanned.records,
    }))
}

/// Reads a file of exactly one serde_json record written with [`replace_file`], or `None` if the
/// file does not exist.
pub fn read_single_json<T: DeserializeOwned>(
    path: &Path,
    max_len: usize,
) -> Result<Option<T>, Error> {
    let Some(file) = read_whole_file(path, 1, max_len)? else {
        return Ok(None);
    };
    let record = file
        .records
        .first()
        .ok_or_else(|| Error::corrupt(path, 0, "no record"))?;
    decode_json(file.payload(record), path, record.position).map(Some)
}

/// Reads the whole of `path`, or `None` if it does not exist.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(buf) => Ok(Some(buf)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// fsyncs a directory, so that creations, renames and deletions in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// Creates `dir` and its missing parents, fsyncing the directory above each one created so that
/// the new directories (and so the files later made durable in them) survive a crash.
pub fn create_dir_durable(dir: &Path) -> Result<(), Error> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    missing
        .iter()
        .rev()
        .try_for_each(|d| sync_dir(parent_dir(d)))
}

/// The temporary file [`replace_file`] writes before renaming it over `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `contents` atomically: writes a temporary file beside it, fsyncs it,
/// renames it over `path` and fsyncs the directory. A crash at any point leaves either the old
/// file or the new one; a stale temporary file is overwritten by the next call.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = File::create(&tmp).map_err(Error::io("create", &tmp))?;
        f.write_all(contents).map_err(Error::io("write", &tmp))?;
        f.sync_all().map_err(Error::io("fsync", &tmp))
    })();
    if written.is_err() {
        // Nothing of a failed replacement stays behind to take space.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::rename(&tmp, path).map_err(Error::io("rename", path))?;
    sync_dir(parent_dir(path))
}

/// Cuts `path` to `len` bytes and fsyncs it (dropping a torn tail found by [`scan`]).
pub fn truncate_file(path: &Path, len: u64) -> Result<(), Error> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(Error::io("open", path))?;
    f.set_len(len).map_err(Error::io("truncate", path))?;
    f.sync_all().map_err(Error::io("fsync", path))
}

/// What the [`GroupWriter`] does with a request's bytes.
#[derive(Debug)]
pub enum WriteOp {
    /// Append them to the file; fsync (grouped with the other requests waiting) if `sync`.
    Append {
        /// Whether the request needs the bytes durable before it is reported done.
        sync: bool,
    },
    /// Replace another small file with them ([`replace_file`]), after everything before is durable.
    Replace(PathBuf),
    /// Replace the whole appended file with them (compaction), after everything before is durable.
    Rewrite,
}

/// Called once a request is done: `Ok` or why the writer failed. Runs on the writer thread.
pub type Completion = Box<dyn FnOnce(Result<(), &str>) + Send>;

/// One request to a [`GroupWriter`].
pub struct WriteRequest {
    /// What to do.
    pub op: WriteOp,
    /// The bytes (encoded records).
    pub bytes: Vec<u8>,
    /// Who to tell when done, if anyone.
    pub done: Option<Completion>,
}

impl std::fmt::Debug for WriteRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRequest")
            .field("op", &self.op)
            .field("bytes", &self.bytes.len())
            .field("done", &self.done.is_some())
            .finish()
    }
}

/// A thread that owns an append-only record file and writes to it, and to the small files beside
/// it, strictly in submission order. It takes every request waiting in its channel (up to a
/// limit), writes their appends with one `write` and one `fdatasync` (grouped fsync), then reports
/// them done, in order. A [`WriteOp::Replace`] or [`WriteOp::Rewrite`] first makes everything
/// before it durable. A write the disk refuses for want of space (`ENOSPC`) is cut back off the
/// file and tried again, backing off up to [`FULL_DISK_RETRY_MAX`], until there is room: a full
/// disk stalls the quorum member (as a slow disk would) instead of ending it, and it goes on when
/// space returns. After any other failed write, or a failed fsync, the file's state is unknown:
/// the writer is poisoned and fails every later request; reopening runs recovery. Dropping it
/// waits until everything submitted is written (or, on a full disk, fails what still waits).
#[derive(Debug)]
pub struct GroupWriter {
    path: PathBuf,
    tx: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<JoinHandle<()>>,
    /// Set when dropped: a write waiting for space gives up.
    closing: Arc<AtomicBool>,
}

/// The longest wait between two tries of a write refused for a full disk.
pub const FULL_DISK_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `e` is the disk saying it is full.
fn is_full_disk(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(ENOSPC))
}

/// `ENOSPC`.
const ENOSPC: i32 = 28;

impl GroupWriter {
    /// Starts the writer thread (named `name`) for the file at `path`, opened for appending.
    pub fn spawn(path: PathBuf, max_group: usize, name: &str) -> Result<Self, Error> {
        let file = open_append(&path)?;
        let (tx, rx) = mpsc::channel();
        let closing = Arc::new(AtomicBool::new(false));
        let mut thread = WriterThread {
            path: path.clone(),
            file,
            max_group: max_group.max(1),
            poisoned: None,
            closing: closing.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || thread.run(&rx))
            .map_err(Error::io("spawn the writer thread for", &path))?;
        Ok(Self {
            path,
            tx: Some(tx),
            thread: Some(handle),
            closing,
        })
    }

    /// Queues a request. Fails if the writer thread is gone.
    pub fn submit(&self, request: WriteRequest) -> Result<(), Error> {
        let stopped = || Error::Poisoned {
            path: self.path.clone(),
            reason: "the writer thread has stopped".to_owned(),
        };
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(request).map_err(|_| stopped())
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        drop(self.tx.take());
        if let Some(handle) = self.thread.take()
            && handle.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the writer thread panicked");
        }
    }
}

fn open_append(path: &Path) -> Result<File, Error> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io("open", path))
}

struct WriterThread {
    path: PathBuf,
    file: File,
    max_group: usize,
    /// Why the writer refuses further writes, after a failure.
    poisoned: Option<String>,
    /// The [`GroupWriter`] was dropped: stop waiting for space.
    closing: Arc<AtomicBool>,
}

impl WriterThread {
    fn run(&mut self, rx: &mpsc::Receiver<WriteRequest>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < self.max_group {
                match rx.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            let mut pending = Pending::default();
            for WriteRequest { op, bytes, done } in group {
                let other = match op {
                    WriteOp::Append { sync } => {
                        pending.bytes.extend_from_slice(&bytes);
                        pending.sync |= sync;
                        pending.done.extend(done);
                        continue;
                    }
                    WriteOp::Replace(other) => Some(other),
                    WriteOp::Rewrite => None,
                };
                // A replacement goes after everything before it is durable.
                self.flush(&mut pending);
                let result = self.guarded(|w| {
                    w.until_there_is_room(|w| match &other {
                        Some(other) => replace_file(other, &bytes),
                        None => {
                            replace_file(&w.path, &bytes)?;
                            w.file = open_append(&w.path)?;
                            Ok(())
                        }
                    })
                });
                if let Some(done) = done {
                    done(borrow(&result));
                }
            }
            self.flush(&mut pending);
        }
        tracing::debug!(path = %self.path.display(), "writer thread stopped");
    }

    /// Writes the gathered appends, fsyncs if any asked for it, then reports each one.
    fn flush(&mut self, pending: &mut Pending) {
        let Pending { bytes, sync, done } = std::mem::take(pending);
        if bytes.is_empty() && !sync && done.is_empty() {
            return;
        }
        let result = self.guarded(|w| {
            if !bytes.is_empty() {
                w.until_there_is_room(|w| w.append(&bytes))?;
            }
            if sync {
                w.file.sync_data().map_err(Error::io("fsync", &w.path))?;
            }
            Ok(())
        });
        for d in done {
            d(borrow(&result));
        }
    }

    /// Appends `bytes`; if that fails, cuts the file back to its length before, so a failed
    /// append leaves nothing behind (the write may have stored part of them).
    fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let before = self
            .file
            .metadata()
            .map_err(Error::io("stat", &self.path))?
            .len();
        let written = self
            .file
            .write_all(bytes)
            .map_err(Error::io("write", &self.path));
        if written.is_err() {
            self.file
                .set_len(before)
                .map_err(Error::io("truncate", &self.path))?;
        }
        written
    }

    /// Runs `op` (which leaves nothing behind when it fails) again while it fails for a full
    /// disk, waiting longer each time up to [`FULL_DISK_RETRY_MAX`], until it succeeds, fails
    /// otherwise, or the writer is closing.
    fn until_there_is_room(
        &mut self,
        mut op: impl FnMut(&mut Self) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut wait = std::time::Duration::from_millis(10);
        let mut waited = false;
        loop {
            match op(self) {
                Err(e) if is_full_disk(&e) && !self.closing.load(Ordering::Acquire) => {
                    if !waited {
                        tracing::warn!(path = %self.path.display(), error = %e, "the disk is full: metadata writes wait for space");
                        waited = true;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(FULL_DISK_RETRY_MAX);
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    if waited {
                        tracing::info!(path = %self.path.display(), "there is space again: metadata writes go on");
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Runs `op` unless the writer is poisoned, and poisons it if `op` fails.
    fn guarded(&mut self, op: impl FnOnce(&mut Self) -> Result<(), Error>) -> Result<(), String> {
        if let Some(reason) = &self.poisoned {
            return Err(reason.clone());
        }
        op(self).map_err(|e| {
            tracing::error!(
                path = %self.path.display(),
                error = %e,
                "write failed; refusing further writes"
            );
            let reason = e.to_string();
            self.poisoned = Some(reason.clone());
            reason
        })
    }
}

/// Appends gathered for one write and fsync.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    sync: bool,
    done: Vec<Completion>,
}

fn borrow(result: &Result<(), String>) -> Result<(), &str> {
    result.as_ref().copied().map_err(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode_record(p, MAX_RECORD_LEN, &mut out).unwrap();
        }
        out
    }

    fn payloads<'a>(buf: &'a [u8], scan: &Scan) -> Vec<&'a [u8]> {
        scan.records
            .iter()
            .map(|r| &buf[r.payload.clone()])
            .collect()
    }

    #[test]
    fn round_trips_and_reports_positions() {
        let buf = records(&[b"{}", b"[1,2,3]", b"\"x\""]);
        let s = scan(&buf, MAX_RECORD_LEN, Path::new("f")).unwrap();
        assert_eq!(payloads(&buf, &s), [&b"{}"[..], b"[1,2,3]", b"\"x\""]);
        assert_eq!(s.records[1].position, 10);
        assert!(!s.is_torn());
        assert_eq!(s.valid_len, buf.len() as u64);
    }

    #[test]
    fn every_cut_of_the_last_record_is_a_torn_tail() {
        let buf = records(&[b"{\"a\":1}", b"{\"b\":2}"]);
        let first_len = HEADER_LEN + 7;
        for cut in first_len + 1..buf.len() {
            let s = scan(&buf[..cut], MAX_RECORD_LEN, Path::new("f")).unwrap();
            assert_eq!(s.records.len(), 1, "cut at {cut}");
            assert_eq!(s.valid_len, first_len as u64);
            assert!(s.is_torn());
        }
    }

    #[test]
    fn any_damage_before_a_valid_record_is_corruption() {
        let buf = records(&[b"{\"a\":1}", b"{\"b\":2}", b"{\"c\":3}"]);
        for at in 0..HEADER_LEN + 7 {
            let mut bad = buf.clone();
            bad[at] ^= 0x40;
            let e = scan(&bad, MAX_RECORD_LEN, Path::new("f")).unwrap_err();
            assert!(e.is_corruption(), "flip at {at}: {e}");
        }
    }
}
