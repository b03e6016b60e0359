//! `strom bench ceiling`: what this machine allows at most, measured the simplest way, so the
//! broker's numbers can be read as a fraction of it.
//!
//! - **Loopback TCP**: a listener and a sender in this process on `127.0.0.1:0`, each on its
//!   own thread with blocking sockets; the sender writes N bytes in 1 MiB writes and shuts its
//!   side down; the rate is N over the time from the first write to the reader's end of file.
//! - **Disk, sequential**: N bytes written in 1 MiB writes to a new file under DIR, then one
//!   `fdatasync`; the rate is N over the time of both (what a log that is flushed at the end can
//!   reach, writeback included).
//! - **Disk, fsync'd**: a second new file, 1 MiB written then `fdatasync`, repeated until N
//!   bytes; the rate is N over the whole time, and each `fdatasync`'s duration goes into a
//!   histogram (p50, p99, max). This is the bound of a durable produce that syncs per megabyte.
//!
//! The files are deleted afterwards (also on failure). Everything runs on blocking threads, off
//! the async runtime.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;

use super::measure::{new_histogram, record_ns};

/// Bytes per write in every measurement.
pub const CHUNK: usize = 1 << 20;

/// The three ceilings.
#[derive(Debug, Clone)]
pub struct Ceiling {
    /// Directory the disk files were written in.
    pub dir: PathBuf,
    /// Bytes each measurement moved.
    pub bytes: u64,
    /// Loopback TCP, bytes per second.
    pub tcp_bytes_per_sec: f64,
    /// Sequential writes then one fdatasync, bytes per second.
    pub disk_write_bytes_per_sec: f64,
    /// 1 MiB write + fdatasync repeated, bytes per second.
    pub disk_fsync_bytes_per_sec: f64,
    /// Durations of those fdatasync calls, ns.
    pub fsync_ns: Histogram<u64>,
}

impl Ceiling {
    /// The result as JSON (rates in bytes/s and MB/s with 1 MB = 10^6 bytes).
    pub fn to_json(&self) -> serde_json::Value {
        let ms = |q: f64| self.fsync_ns.value_at_quantile(q) as f64 / 1e6;
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "bytes": self.bytes,
            "loopback_tcp": {
                "bytes_per_sec": self.tcp_bytes_per_sec,
                "gb_per_sec": self.tcp_bytes_per_sec / 1e9,
            },
            "disk_write": {
                "bytes_per_sec": self.disk_write_bytes_per_sec,
                "mb_per_sec": self.disk_write_bytes_per_sec / 1e6,
            },
            "disk_fsync": {
                "bytes_per_sec": self.disk_fsync_bytes_per_sec,
                "mb_per_sec": self.disk_fsync_bytes_per_sec / 1e6,
                "fsyncs": self.fsync_ns.len(),
                "fsync_p50_ms": ms(0.5),
                "fsync_p99_ms": ms(0.99),
                "fsync_max_ms": self.fsync_ns.max() as f64 / 1e6,
            },
        })
    }

    /// Lines for people.
    pub fn to_text(&self) -> String {
        let ms = |q: f64| self.fsync_ns.value_at_quantile(q) as f64 / 1e6;
        format!(
            "  loopback TCP     {:>9.2} GB/s   (1 MiB writes, one connection, {} moved)\n  \
             disk write       {:>9.1} MB/s   (1 MiB writes, then one fdatasync, in {})\n  \
             disk fsync'd     {:>9.1} MB/s   (1 MiB write + fdatasync repeated; fdatasync p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)\n",
            self.tcp_bytes_per_sec / 1e9,
            super::summary::human_bytes(self.bytes),
            self.disk_write_bytes_per_sec / 1e6,
            self.dir.display(),
            self.disk_fsync_bytes_per_sec / 1e6,
            ms(0.5),
            ms(0.99),
            self.fsync_ns.max() as f64 / 1e6,
        )
    }
}

/// Measures the three ceilings, moving `bytes` each, the disk ones under `dir`.
pub async fn measure(dir: PathBuf, bytes: u64) -> anyhow::Result<Ceiling> {
    tokio::task::spawn_blocking(move || measure_blocking(dir, bytes))
        .await
        .context("the ceiling measurement stopped")?
}

fn measure_blocking(dir: PathBuf, bytes: u64) -> anyhow::Result<Ceiling> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let tcp = loopback_tcp(bytes).context("measuring loopback TCP")?;
    let write = disk_write(&dir, bytes)
        .with_context(|| format!("measuring disk writes in {}", dir.display()))?;
    let (fsync, fsync_ns) = disk_fsync(&dir, bytes)
        .with_context(|| format!("measuring fsync'd writes in {}", dir.display()))?;
    Ok(Ceiling {
        dir,
        bytes,
        tcp_bytes_per_sec: tcp,
        disk_write_bytes_per_sec: write,
        disk_fsync_bytes_per_sec: fsync,
        fsync_ns,
    })
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// A buffer that is not all zeros (no file system or NIC path can shortcut it).
fn pattern() -> Vec<u8> {
    (0..CHUNK).map(|i| (i * 31 % 251) as u8).collect()
}

fn loopback_tcp(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").context("listening on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    // Connect before the reader accepts (the backlog holds it), so a failed connect never
    // leaves a thread blocked in accept.
    let mut sender = TcpStream::connect(addr).context("connecting over loopback")?;
    sender.set_nodelay(true)?;
    let reader = std::thread::spawn(move || -> std::io::Result<(u64, Instant)> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok((total, Instant::now()));
            }
            total += n as u64;
        }
    });
    let buf = pattern();
    let start = Instant::now();
    let mut left = bytes;
    let sent: std::io::Result<()> = (|| {
        while left > 0 {
            let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
            sender.write_all(&buf[..n])?;
            left -= n as u64;
        }
        sender.shutdown(Shutdown::Write)
    })();
    drop(sender);
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread failed"))?;
    sent.context("writing")?;
    let (total, end) = read.context("reading")?;
    if total != bytes {
        bail!("the reader got {total} of {bytes} bytes");
    }
    Ok(rate(bytes, end - start))
}

/// A file that is removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create(dir: &Path, name: &str) -> anyhow::Result<(Self, std::fs::File)> {
        let path = dir.join(format!("strom-bench-{name}-{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok((Self(path), file))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn disk_write(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let (_scratch, mut file) = Scratch::create(dir, "write")?;
    let buf = pattern();
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        file.write_all(&buf[..n]).context("writing")?;
        left -= n as u64;
    }
    file.sync_data().context("fdatasync")?;
    Ok(rate(bytes, start.elapsed()))
}

fn disk_fsync(dir: &Path, bytes: u64) -> anyhow::Result<(f64, Histogram<u64>)> {
    let (_scratch, mut file) = Scratch::create(dir, "fsync")?;
    let buf = pattern();
    let mut hist = new_histogram()?;
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        file.write_all(&buf[..n]).context("writing")?;
        let t = Instant::now();
        file.sync_data().context("fdatasync")?;
        record_ns(
            &mut hist,
            u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
        );
        left -= n as u64;
    }
    Ok((rate(bytes, start.elapsed()), hist))
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_ceilings_are_measured_and_files_removed() {
        let dir = std::env::temp_dir().join(format!("strom-ceiling-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = super::measure_blocking(dir.clone(), 3 << 20).unwrap();
        assert!(c.tcp_bytes_per_sec > 0.0);
        assert!(c.disk_write_bytes_per_sec > 0.0);
        assert!(c.disk_fsync_bytes_per_sec > 0.0);
        assert_eq!(c.fsync_ns.len(), 3);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "files removed");
        std::fs::remove_dir(&dir).unwrap();
    }
}
