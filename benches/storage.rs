//! Criterion benches for strom-storage: append throughput (100 B and 1 KiB records in 16 KiB and
//! 1 MiB batches), the cost of one small append when appends go round-robin over 1,000 logs (the
//! broker's floor with many partitions), what the kernel alone charges for such an append by
//! write path (`writev` against a writable map), sequential read throughput, offset lookup
//! latency on a 1 GiB log, and memcpy of the same bytes as the yardstick. Results and the
//! machine are recorded in docs/performance.md.
//!
//! Run: `cargo bench --bench storage` (set `STROM_BENCH_DIR` to put the logs on another disk).

use std::fs::File;
use std::hint::black_box;
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strom_protocol::batch::{BatchBuilder, RecordRef};
use strom_storage::{Log, LogConfig, ValidBatch};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("STROM_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(PathBuf::from(d)),
        None => tempfile::tempdir(),
    }
    .unwrap()
}

/// A batch of records of `record_size` value bytes (16-byte keys), about `batch_bytes` long.
fn make_batch(record_size: usize, batch_bytes: usize) -> (Bytes, usize) {
    let value = vec![0x5au8; record_size];
    let mut b = BatchBuilder::with_capacity(batch_bytes + 4096);
    let mut n = 0;
    while b.size() + record_size + 32 <= batch_bytes {
        let key = format!("key-{n:012}");
        b.push(&RecordRef {
            timestamp: 1_700_000_000_000 + n as i64,
            key: Some(key.as_bytes()),
            value: Some(&value),
            headers: &[],
        })
        .unwrap();
        n += 1;
    }
    (b.finish().unwrap(), n)
}

fn config() -> LogConfig {
    let mut c = LogConfig::default();
    c.set("segment.bytes", &(256u64 << 20).to_string()).unwrap();
    c.set("retention.bytes", &(1u64 << 30).to_string()).unwrap();
    c.set("retention.ms", "-1").unwrap();
    c.set("max.message.bytes", &(2u64 << 20).to_string())
        .unwrap();
    c
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(8));
    for (record_size, batch_bytes, label) in [
        (100, 16 << 10, "100B/16KiB"),
        (100, 1 << 20, "100B/1MiB"),
        (1024, 16 << 10, "1KiB/16KiB"),
        (1024, 1 << 20, "1KiB/1MiB"),
    ] {
        let (batch, records) = make_batch(record_size, batch_bytes);
        let valid = ValidBatch::new(batch.clone()).unwrap();
        // Appends go 64 batches per call when batches are small, as a partition writer drains
        // its queue; 1 MiB batches go one per call.
        let per_call = if batch_bytes <= 16 << 10 { 64 } else { 1 };
        let calls: Vec<ValidBatch> = vec![valid; per_call];
        g.throughput(Throughput::Bytes((batch.len() * per_call) as u64));
        g.bench_function(BenchmarkId::new("bytes", label), |b| {
            b.iter_custom(|iters| {
                let dir = bench_dir();
                let mut log = Log::open(dir.path(), config()).unwrap();
                let start = Instant::now();
                for i in 0..iters {
                    black_box(log.append_valid(&calls).unwrap());
                    if i % 256 == 255 {
                        log.enforce_retention().unwrap();
                    }
                }
                start.elapsed()
            })
        });
        eprintln!(
            "append {label}: {records} records of {record_size} B per batch, {} B per batch",
            batch.len()
        );
    }
    g.finish();
}

/// One ~1 KiB batch (nine 100 B records) per append, as a producer lingering 5 ms sends to each
/// of 1,000 partitions at about 2 M records/s: appends to one log, and round-robin over 1,000
/// logs (each append then touches another file, page and index). The difference is what
/// spreading the same records over many partitions costs the broker per batch.
fn append_fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fanout");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(10);
    let (batch, records) = make_batch(100, 1024);
    let valid = [ValidBatch::new(batch.clone()).unwrap()];
    let mut cfg = config();
    cfg.set("segment.bytes", &(16u64 << 20).to_string())
        .unwrap();
    cfg.set("retention.bytes", &(32u64 << 20).to_string())
        .unwrap();
    g.throughput(Throughput::Elements(records as u64));
    for logs in [1usize, 1000] {
        let dir = bench_dir();
        let mut all: Vec<Log> = (0..logs)
            .map(|i| Log::open(dir.path().join(format!("p-{i}")), cfg.clone()).unwrap())
            .collect();
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("1KiB_batch_logs", logs), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let log = &mut all[i % logs];
                    black_box(log.append_deferred(&valid).unwrap());
                    if log.writeback_wanted()
                        && let Some(w) = log.start_writeback()
                    {
                        w.run();
                    }
                    if i % (256 * logs) == 256 * logs - 1 {
                        log.enforce_retention().unwrap();
                    }
                    i += 1;
                }
                start.elapsed()
            })
        });
    }
    eprintln!(
        "append_fanout: {records} records of 100 B per batch, {} B per batch",
        batch.len()
    );
    g.finish();
}

/// One 936-byte append into one of 1,000 files, round-robin, by kernel write path, with no `Log`
/// around it: `writev` of two slices (what the log does; also into a single file) against a copy into a shared writable
/// map of the file whose blocks are reserved ahead with `fallocate`, either with the reserved
/// pages populated at once (`MADV_POPULATE_WRITE`, 64 KiB at a time) or left to fault in on
/// the first write to each (1 MiB at a time). Evidence for the design note on 1,000 partitions
/// in docs/performance.md; strom itself does not write through maps.
#[allow(unsafe_code)]
fn write_paths(c: &mut Criterion) {
    const FILES: usize = 1000;
    /// Room per file: more than a run writes (~4 GB over 1,000 files).
    const CAPACITY: usize = 64 << 20;
    /// Linux's `MADV_POPULATE_WRITE` (5.14+), not in the libc crate yet.
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let (batch, _) = make_batch(100, 1024);
    let n = batch.len() as u64;
    let mut g = c.benchmark_group("write_paths");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(10);
    g.throughput(Throughput::Bytes(n));
    let open = |dir: &tempfile::TempDir| -> Vec<File> {
        (0..FILES)
            .map(|i| {
                File::options()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(dir.path().join(i.to_string()))
                    .unwrap()
            })
            .collect()
    };

    for count in [1, FILES] {
        let dir = bench_dir();
        let files = &open(&dir)[..count];
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("writev_936B_files", count), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let bufs = [IoSlice::new(&batch[..8]), IoSlice::new(&batch[8..])];
                    let wrote = (&files[i % count]).write_vectored(&bufs).unwrap();
                    assert_eq!(wrote as u64, n);
                    i += 1;
                }
                start.elapsed()
            })
        });
    }

    for (name, chunk, populate) in [
        ("mapped_populated_936B_files", 64u64 << 10, true),
        ("mapped_faulted_936B_files", 1u64 << 20, false),
    ] {
        let dir = bench_dir();
        let files = open(&dir);
        // SAFETY: the files are this bench's own, in its temp dir; bytes are only written
        // below `reserved`, which `fallocate` has made part of the file.
        let mut maps: Vec<memmap2::MmapMut> = files
            .iter()
            .map(|f| unsafe { memmap2::MmapOptions::new().len(CAPACITY).map_mut(f) }.unwrap())
            .collect();
        let mut lens = vec![0u64; FILES];
        let mut reserved = vec![0u64; FILES];
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new(name, FILES), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let k = i % FILES;
                    let at = lens[k];
                    assert!(at + n <= CAPACITY as u64, "raise CAPACITY");
                    if at + n > reserved[k] {
                        use std::os::fd::AsRawFd;
                        let from = reserved[k];
                        // SAFETY: plain system calls on this bench's own descriptor and map.
                        let r = unsafe {
                            libc::fallocate(files[k].as_raw_fd(), 0, from as i64, chunk as i64)
                        };
                        assert_eq!(r, 0, "fallocate");
                        if populate {
                            let r = unsafe {
                                libc::madvise(
                                    maps[k].as_mut_ptr().add(from as usize).cast(),
                                    chunk as usize,
                                    MADV_POPULATE_WRITE,
                                )
                            };
                            assert_eq!(r, 0, "madvise");
                        }
                        reserved[k] = from + chunk;
                    }
                    maps[k][at as usize..(at + n) as usize].copy_from_slice(&batch);
                    lens[k] = at + n;
                    i += 1;
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn memcpy(c: &mut Criterion) {
    let mut g = c.benchmark_group("memcpy");
    for size in [16usize << 10, 1 << 20] {
        let src = vec![0x5au8; size * 64];
        let mut dst = vec![0u8; size * 64];
        g.throughput(Throughput::Bytes(src.len() as u64));
        g.bench_function(BenchmarkId::new("bytes", size), |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
    }
    g.finish();
}

/// A log of about `bytes` of 100 B records in 16 KiB batches.
fn filled_log(bytes: u64) -> (tempfile::TempDir, Log, i64) {
    let dir = bench_dir();
    let mut c = config();
    c.set("retention.bytes", "-1").unwrap();
    let mut log = Log::open(dir.path(), c).unwrap();
    let (batch, _) = make_batch(100, 16 << 10);
    let valid = vec![ValidBatch::new(batch.clone()).unwrap(); 64];
    while log.reader().size_bytes() < bytes {
        log.append_valid(&valid).unwrap();
    }
    let end = log.end_offset();
    (dir, log, end)
}

fn read(c: &mut Criterion) {
    let (_small_dir, small, small_end) = filled_log(16 << 20);
    let (_dir, log, end) = filled_log(1 << 30);
    let reader = log.reader();
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(8));
    // Sequential: 1 MiB per read (a fetch's partition limit), CRC of every batch checked.
    let mut offset = 0i64;
    let probe = reader.read(0, 1 << 20).unwrap();
    g.throughput(Throughput::Bytes(probe.data.len() as u64));
    g.bench_function("sequential_1MiB", |b| {
        b.iter(|| {
            let r = reader.read(offset, 1 << 20).unwrap();
            offset = if r.next_offset >= end {
                0
            } else {
                r.next_offset
            };
            black_box(r.data.len())
        })
    });
    // Lookup: a random offset anywhere in the 1 GiB log, reading one batch.
    g.throughput(Throughput::Elements(1));
    let mut x = 0x2545_f491_4f6c_dd1du64;
    g.bench_function("lookup_random_offset_1GiB", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let o = (x % end as u64) as i64;
            black_box(reader.read(o, 1).unwrap().first_offset)
        })
    });
    // The same lookup on a 16 MiB log: the cost must not depend on the log's size.
    let small_reader = small.reader();
    g.bench_function("lookup_random_offset_16MiB", |b| {
        b.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let o = (x % small_end as u64) as i64;
            black_box(small_reader.read(o, 1).unwrap().first_offset)
        })
    });
    g.finish();
    eprintln!(
        "read: log of {} bytes, {} records, {} segments",
        reader.size_bytes(),
        end,
        reader.segment_count()
    );
}

criterion_group!(benches, append, append_fanout, write_paths, memcpy, read);
criterion_main!(benches);
