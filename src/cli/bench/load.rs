//! The load loops: one task per producer and per consumer. These are the only code that runs per
//! record, so they do as little as possible: the value is one buffer built before the run (in
//! e2e only its first 8 bytes change per record), keys are built before the run and used in
//! turn, progress is counted once per chunk, and latency is sampled (produce) or recorded into
//! a task-local histogram (e2e).
//!
//! # The two send methods
//!
//! - **Send batch** (`--send-batch N`, N > 1, default 1,000; what iggy-bench does when it hands
//!   its client batches of 1,000 messages): `Producer::send` is called for N records back to
//!   back; only the last record's delivery future of each group of N is kept, the others are
//!   dropped as soon as `send` returns them (dropping one does not cancel its record).
//! - **Per record** (`--send-batch 1`): every record's delivery future is kept and awaited, in
//!   order: what an application that checks every record does.
//!
//! In both, kept futures wait in a queue and the oldest is awaited once `--window` records
//! (default 100,000) have been sent after it, so the caller never blocks on an acknowledgement
//! while the producer can still batch; a failed future fails the run at once. At the end the
//! producer is flushed and every kept future awaited. Records whose futures were dropped are
//! checked afterwards by counting the offsets the topic gained. The two methods differ only in
//! how many futures the caller keeps and awaits; the producer (batching, linger, in-flight
//! requests, memory bound) works the same.
//!
//! # Latency samples (produce)
//!
//! Every `--sample-every`-th record (default 1,000: with the default send batch, the last record
//! of each group) is timed from just before its `send` call until its delivery future resolves,
//! observed by a small task spawned for that record (so the window's lazy awaiting does not
//! inflate it).
//!
//! # Pacing
//!
//! With `--rate R`, each of the P producers sends R/P records per second in chunks of
//! ceil(R/P/1000) records released by a tokio interval (about one chunk per millisecond; missed
//! ticks are caught up, so the total rate holds). The producers' ticks are staggered. A paced
//! consumer (`strom bench consume --rate R`) takes the records each `poll` returned only once
//! they are due at R/C records/s (C consumers), waiting until then; its background fetch keeps
//! prefetching meanwhile, as a slower application's would.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use strom_client::{Consumer, DeliveryFuture, Producer};
use tokio::task::JoinHandle;

use super::measure::{new_histogram, ns_since, record_ns};

/// Records per chunk when not paced: progress and the deadline are checked once per chunk.
const CHUNK: u64 = 1000;

/// What one producer task sends.
#[derive(Debug)]
pub struct SendPlan {
    pub topic: String,
    /// Records to send; `None`: until `deadline`.
    pub records: Option<u64>,
    pub deadline: Option<Instant>,
    /// Records per second for this producer.
    pub rate: Option<f64>,
    /// Delay of the first paced chunk (to stagger producers).
    pub phase: Duration,
    /// The value of every record.
    pub value: Vec<u8>,
    /// e2e: write the send time, ns since this instant, into the value's first 8 bytes.
    pub stamp: Option<Instant>,
    /// Keys used in turn; empty: no keys.
    pub keys: Arc<[Vec<u8>]>,
    /// Consecutive records sharing a key ([`key_index`]).
    pub key_run: u64,
    pub send_batch: u64,
    pub window: u64,
    /// Time the send → ack latency of every this-many-th record; 0: none.
    pub sample_every: u64,
    /// Records sent, for the progress bar.
    pub sent: Arc<AtomicU64>,
}

/// What one producer task did.
#[derive(Debug)]
pub struct SendResult {
    pub records: u64,
    /// Send → ack of the sampled records, ns.
    pub latency: Histogram<u64>,
}

/// A kept delivery: the record's index (1-based count of records sent when it was sent) and
/// what to await.
enum Kept {
    Ack(u64, DeliveryFuture),
    Sampled(u64, JoinHandle<strom_client::Result<()>>),
}

impl Kept {
    fn index(&self) -> u64 {
        match self {
            Kept::Ack(i, _) | Kept::Sampled(i, _) => *i,
        }
    }

    async fn wait(self) -> anyhow::Result<()> {
        let (index, result) = match self {
            Kept::Ack(i, f) => (i, f.await.map(drop)),
            Kept::Sampled(i, h) => (i, h.await.context("a latency sampler stopped")?),
        };
        result.with_context(|| format!("record {index} was not delivered"))
    }
}

/// Sends per `plan`, then flushes and awaits every kept delivery.
pub async fn send_loop(producer: Producer, plan: SendPlan) -> anyhow::Result<SendResult> {
    let latency = Arc::new(Mutex::new(new_histogram()?));
    let SendPlan {
        topic,
        records,
        deadline,
        rate,
        phase,
        mut value,
        stamp,
        keys,
        key_run,
        send_batch,
        window,
        sample_every,
        sent,
    } = plan;
    if stamp.is_some() && value.len() < 8 {
        bail!("records need at least 8 bytes to carry their send time");
    }
    let total = records.unwrap_or(u64::MAX);
    let nkeys = keys.len() as u64;
    let mut pacing = rate.map(|r| {
        let chunk = (r / 1000.0).ceil().max(1.0);
        let period = Duration::from_secs_f64(chunk / r);
        let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        (iv, chunk as u64)
    });
    let mut kept: VecDeque<Kept> = VecDeque::new();
    let mut i: u64 = 0;
    while i < total {
        let n = match pacing.as_mut() {
            Some((iv, chunk)) => {
                iv.tick().await;
                (*chunk).min(total - i)
            }
            None => CHUNK.min(total - i),
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        for _ in 0..n {
            let key = if nkeys == 0 {
                None
            } else {
                Some(&keys[key_index(i, key_run, nkeys)][..])
            };
            let sampled = sample_every > 0 && (i + 1).is_multiple_of(sample_every);
            let start = if sampled || stamp.is_some() {
                let now = Instant::now();
                if let Some(epoch) = stamp {
                    value[..8].copy_from_slice(&ns_since(epoch, now).to_le_bytes());
                }
                Some(now)
            } else {
                None
            };
            let delivery = producer
                .send(&topic, key, Some(&value), &[])
                .await
                .with_context(|| format!("sending record {}", i + 1))?;
            i += 1;
            if let (true, Some(start)) = (sampled, start) {
                let latency = latency.clone();
                kept.push_back(Kept::Sampled(
                    i,
                    tokio::spawn(async move {
                        delivery.await?;
                        let ns = ns_since(start, Instant::now());
                        let mut h = latency.lock().unwrap_or_else(|e| e.into_inner());
                        record_ns(&mut h, ns);
                        Ok(())
                    }),
                ));
            } else if i.is_multiple_of(send_batch) || i == total {
                kept.push_back(Kept::Ack(i, delivery));
            }
            while kept.front().is_some_and(|k| i - k.index() >= window) {
                if let Some(k) = kept.pop_front() {
                    k.wait().await?;
                }
            }
        }
        sent.fetch_add(n, Ordering::Relaxed);
    }
    producer.flush().await.context("flushing the producer")?;
    for k in kept {
        k.wait().await?;
    }
    let latency = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(SendResult {
        records: i,
        latency,
    })
}

/// What the consumer tasks of one run share.
#[derive(Debug)]
pub struct ReadShared {
    /// Records counted so far (never above `target`); the progress bar reads it.
    pub received: Arc<AtomicU64>,
    /// Stop once this many records were counted; `u64::MAX` while unknown (e2e sets it when the
    /// producers are done).
    pub target: AtomicU64,
    /// Set when the target is reached, the deadline passed, or the run failed.
    pub done: AtomicBool,
    /// When the target was reached (or the first consumer saw the deadline).
    pub finished: Mutex<Option<Instant>>,
    /// When the first record arrived.
    pub first: Mutex<Option<Instant>>,
}

impl ReadShared {
    pub fn new(target: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            received: Arc::new(AtomicU64::new(0)),
            target: AtomicU64::new(target.unwrap_or(u64::MAX)),
            done: AtomicBool::new(false),
            finished: Mutex::new(None),
            first: Mutex::new(None),
        })
    }

    fn finish(&self, at: Instant) {
        let mut f = self.finished.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(at);
        }
        self.done.store(true, Ordering::Release);
    }

    /// Counts `n` more records, up to the target; returns how many were counted.
    fn count(&self, n: u64, now: Instant) -> u64 {
        let target = self.target.load(Ordering::Acquire);
        let prev = self
            .received
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some(r.saturating_add(n).min(target.max(r)))
            })
            .unwrap_or_else(|r| r);
        let counted = prev.saturating_add(n).min(target.max(prev)) - prev;
        if prev == 0 && counted > 0 {
            let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
            if first.is_none() {
                *first = Some(now);
            }
        }
        if prev + counted >= target {
            self.finish(now);
        }
        counted
    }

    /// Re-checks the target after it was set late (e2e).
    pub fn check_target(&self) {
        if self.received.load(Ordering::Acquire) >= self.target.load(Ordering::Acquire) {
            self.finish(Instant::now());
        }
    }
}

/// What one consumer task reads for.
#[derive(Debug)]
pub struct ReadPlan {
    pub shared: Arc<ReadShared>,
    pub deadline: Option<Instant>,
    /// e2e: records carry their send time (ns since this instant) in their first 8 bytes.
    pub stamp: Option<Instant>,
    /// Leave the group (commit) at the end.
    pub close: bool,
    /// Records per second for this consumer: after each poll, wait until the records it
    /// counted are due (the background fetch keeps prefetching meanwhile).
    pub rate: Option<f64>,
}

/// What one consumer task did.
#[derive(Debug)]
pub struct ReadResult {
    pub records: u64,
    /// Value bytes of the counted records.
    pub bytes: u64,
    /// e2e: send → receipt per record; otherwise the duration of each poll that returned
    /// records. ns.
    pub latency: Histogram<u64>,
    /// e2e: records without a send time of this run (shorter than 8 bytes or from the future).
    pub foreign: u64,
}

/// Polls until the shared target is reached or the deadline passes.
pub async fn read_loop(mut consumer: Consumer, plan: ReadPlan) -> anyhow::Result<ReadResult> {
    let mut latency = new_histogram()?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    let mut foreign = 0u64;
    let shared = &plan.shared;
    let paced_from = tokio::time::Instant::now();
    while !shared.done.load(Ordering::Acquire) {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            shared.finish(Instant::now());
            break;
        }
        let polled = Instant::now();
        let batch = consumer
            .poll(Duration::from_millis(100))
            .await
            .context("reading records")?;
        if batch.is_empty() {
            continue;
        }
        if let Some(rate) = plan.rate {
            // These records are read once they are due at `rate`.
            let due = Duration::from_secs_f64((records + batch.len() as u64) as f64 / rate);
            tokio::time::sleep_until(paced_from + due).await;
        }
        let now = Instant::now();
        let n = shared.count(batch.len() as u64, now);
        records += n;
        let take = usize::try_from(n).unwrap_or(usize::MAX);
        match plan.stamp {
            Some(epoch) => {
                let now_ns = ns_since(epoch, now);
                for r in batch.iter().take(take) {
                    let v = r.value().map_or(&[][..], |v| &v[..]);
                    bytes += v.len() as u64;
                    match v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                        Some(b) if u64::from_le_bytes(b) <= now_ns => {
                            record_ns(&mut latency, now_ns - u64::from_le_bytes(b))
                        }
                        _ => foreign += 1,
                    }
                }
            }
            None => {
                record_ns(&mut latency, ns_since(polled, now));
                for r in batch.iter().take(take) {
                    bytes += r.value().map_or(0, |v| v.len() as u64);
                }
            }
        }
    }
    if plan.close {
        consumer.close().await.context("leaving the group")?;
    }
    Ok(ReadResult {
        records,
        bytes,
        latency,
        foreign,
    })
}

/// The value every record carries: `size` random capital letters (as Kafka's
/// `kafka-producer-perf-test` does), so compression sees text-like data.
pub fn value(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'A' + (x % 26) as u8
        })
        .collect()
}

/// Which of `nkeys` keys record `i` (from 0) takes when runs of `run` records share one.
pub fn key_index(i: u64, run: u64, nkeys: u64) -> usize {
    ((i / run.max(1)) % nkeys.max(1)) as usize
}

/// `n` distinct keys, `key-0000000000` onwards.
pub fn keys(n: u32) -> Arc<[Vec<u8>]> {
    (0..n)
        .map(|i| format!("key-{i:010}").into_bytes())
        .collect()
}

/// Splits `total` into `parts` near-equal shares (the first ones one larger).
pub fn split(total: u64, parts: u64) -> Vec<u64> {
    let parts = parts.max(1);
    (0..parts)
        .map(|k| total / parts + u64::from(k < total % parts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(split(10, 3), vec![4, 3, 3]);
        assert_eq!(split(2, 4), vec![1, 1, 0, 0]);
        assert_eq!(split(7, 1), vec![7]);
    }

    #[test]
    fn values_and_keys() {
        let v = value(100);
        assert_eq!(v.len(), 100);
        assert!(v.iter().all(u8::is_ascii_uppercase));
        let k = keys(3);
        assert_eq!(&k[2][..], b"key-0000000002");
        let every: Vec<usize> = (0..5).map(|i| key_index(i, 1, 3)).collect();
        assert_eq!(every, [0, 1, 2, 0, 1]);
        let runs: Vec<usize> = (0..7).map(|i| key_index(i, 2, 3)).collect();
        assert_eq!(runs, [0, 0, 1, 1, 2, 2, 0]);
    }

    #[test]
    fn counting_stops_at_the_target() {
        let s = ReadShared::new(Some(10));
        let now = Instant::now();
        assert_eq!(s.count(6, now), 6);
        assert!(!s.done.load(Ordering::Acquire));
        assert_eq!(s.count(6, now), 4);
        assert!(s.done.load(Ordering::Acquire));
        assert_eq!(s.count(6, now), 0);
        let open = ReadShared::new(None);
        assert_eq!(open.count(5, now), 5);
        open.target.store(5, Ordering::Release);
        open.check_target();
        assert!(open.done.load(Ordering::Acquire));
    }
}
