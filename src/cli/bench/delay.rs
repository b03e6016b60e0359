//! `strom bench delay`: does delayed delivery fire on time with a million delays pending, and
//! what does holding them cost the broker? (The aim: p99 lateness <= 100 ms with 1,000,000
//! pending delays, broker RSS under 256 MiB with them.)
//!
//! 1. **Group.** W workers join a new queue group (`start=latest`) before anything is written,
//!    so the group's scan meets the records as they arrive, as in a real deployment.
//! 2. **Probe.** A few thousand delayed records (due 100 ms after their send) go through the
//!    fill's path and are handed out and acked meanwhile: their rate gives the fill's expected
//!    duration. The fill starts once they are all acked.
//! 3. **Fill** (timed). P producers write N records, each with a delivery time of its own drawn
//!    (seeded xorshift, so in a pseudo-random order) uniformly from a window of `--window`
//!    seconds starting at `base` = the fill's start + 2.5 × its expected duration +
//!    `--lead`. Each record's time differs from the previous one's, so every record is a batch
//!    and an index run of its own: the broker holds about N entries, the worst case for
//!    memory. The record's value carries its delivery time (first 8 bytes, big-endian i64) and
//!    this run's tag (next 8). When the fill ends, the records whose time is still ahead are
//!    counted (by replaying the seeded times): a valid run has all N pending, else it fails
//!    and asks for a larger `--lead`.
//! 4. **Firing.** The workers poll and ack every record; per record, the lateness is the time
//!    `poll` returned (ms since the epoch, this machine's clock, which the broker shares) minus
//!    its delivery time. A record handed out before its time counts as early (must be 0). The
//!    run ends when all N were handed out, or fails after `--idle-timeout` without one once
//!    the first came due.
//!
//! The broker's RSS (`--embedded`: this process's, which holds the bench's clients too;
//! `--broker-pid`: that process's) is read right after the fill, when every delay is pending,
//! and every 100 ms after it until the end (its peak).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use strom_client::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord, QueueConsumer};

use super::measure::{Goal, ProcSample, Ticker, new_histogram, proc_sample};
use super::summary::{LatencyKind, Summary, group_digits, human_bytes};
use super::{
    AcksArg, Env, TargetArgs, Tasks, TopicArgs, UsageStart, describe_existing, end_offsets, merge,
    parse_seconds, prepare_topic, size_bytes,
};

/// The aims this bench checks (the performance aim for delayed delivery).
const AIM_P99_LATENESS_MS: f64 = 100.0;
const AIM_RSS_BYTES: u64 = 256 << 20;

/// Probe records are due this long after their send: they fire (and are acked) during the
/// probe, whose rate so includes firing's cost, and are gone before the fill.
const PROBE_DELAY_MS: i64 = 100;
/// Longest wait for the probe records to be handed out before the fill starts anyway.
const PROBE_DRAIN: Duration = Duration::from_secs(30);
/// The fill's expected duration is the probe's estimate times this: a long fill is slower than
/// the short probe (the broker's index and `__queue_state` grow: on a 2-core machine a
/// 1,000,000-record fill ran at half the probe's rate), and a machine shared with other work
/// varies.
const ESTIMATE_MARGIN: f64 = 2.5;
/// A producer keeps the delivery future of every this-many-th record...
const KEEP_EVERY: u64 = 1000;
/// ...and awaits the oldest once this many records were sent after it.
const KEEP_WINDOW: u64 = 100_000;
/// How often the broker's RSS is read.
const RSS_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct DelayArgs {
    /// Delayed records to write, each with a delivery time of its own (so each is a batch and
    /// an index entry of its own).
    #[arg(long, value_name = "N", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    records: u64,
    /// Seconds the delivery times are spread over, uniformly.
    #[arg(long, value_name = "S", default_value = "30", value_parser = parse_seconds)]
    window: Duration,
    /// Seconds from the (expected) end of the fill to the earliest delivery time; the fill's
    /// duration is estimated from a probe first, 2.5 times over, so the lead is usually longer.
    /// Every delay must still be pending when the fill ends, or the run fails.
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_seconds)]
    lead: Duration,
    /// Concurrent workers, each a queue-group member with its own connection.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    workers: u32,
    /// The queue group, created before the fill with start=latest [default: a new one per run]
    #[arg(long, value_name = "G")]
    group: Option<String>,
    /// Most records one fetch takes.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_poll_records: u32,
    /// The group's max.in.flight.per.member (it bounds what one fetch can take).
    #[arg(long, value_name = "N", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_in_flight: u32,
    /// Fail when no record arrives for this many seconds once the first delivery time passed.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_seconds)]
    idle_timeout: Duration,
    /// Seed of the delivery times' pseudo-random order.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    send: DelaySendArgs,
    #[command(flatten)]
    topic: TopicArgs,
    #[command(flatten)]
    target: TargetArgs,
}

/// How the fill's producers send. (The other producer options of `strom bench` do not apply:
/// every record is a batch of its own here.)
#[derive(Debug, Args)]
#[command(next_help_heading = "Producers")]
pub struct DelaySendArgs {
    /// Concurrent producers, each its own client and connection. Records go to the
    /// partitions in turn.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    producers: u32,
    /// Bytes of each record's value (at least 16: its delivery time and the run's tag).
    #[arg(long, value_name = "B", default_value_t = 100, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    record_size: u32,
    /// When the broker acknowledges: 0 never, 1 once appended, all once fsynced.
    #[arg(long, value_enum, default_value = "1")]
    acks: AcksArg,
}

impl DelayArgs {
    pub(super) fn target(&self) -> &TargetArgs {
        &self.target
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The delivery times one producer gives its records, in send order: uniform in
/// `base..base + window_ms`, each different from the one before. Deterministic per seed, so
/// the times can be replayed after the fill.
#[derive(Debug, Clone)]
struct Times {
    x: u64,
    base: i64,
    window_ms: i64,
    last: i64,
}

impl Times {
    fn new(seed: u64, producer: u32, base: i64, window_ms: i64) -> Self {
        let x = (seed ^ 0x5DEE_CE66_D1CE_4E5B)
            .wrapping_add(u64::from(producer).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .max(1);
        let mut t = Self {
            x,
            base,
            window_ms: window_ms.max(1),
            last: i64::MIN,
        };
        for _ in 0..8 {
            t.step();
        }
        t
    }

    /// xorshift64*.
    fn step(&mut self) -> u64 {
        self.x ^= self.x >> 12;
        self.x ^= self.x << 25;
        self.x ^= self.x >> 27;
        self.x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Iterator for Times {
    type Item = i64;

    fn next(&mut self) -> Option<i64> {
        let mut off = (self.step() % self.window_ms as u64) as i64;
        if self.base + off == self.last && self.window_ms > 1 {
            off = (off + 1) % self.window_ms;
        }
        self.last = self.base + off;
        Some(self.last)
    }
}

/// What one fill (or probe) producer sends.
struct FillPlan {
    topic: String,
    partitions: i32,
    /// This producer's index (its first partition).
    index: u32,
    records: u64,
    /// `None`: the probe (each record due [`PROBE_DELAY_MS`] after its send).
    times: Option<Times>,
    /// The value's bytes after the delivery time (the tag first).
    value: Vec<u8>,
    sent: Arc<AtomicU64>,
}

/// Sends the plan's records, then flushes and awaits the kept deliveries.
async fn fill_loop(producer: Producer, plan: FillPlan) -> anyhow::Result<u64> {
    let FillPlan {
        topic,
        partitions,
        index,
        records,
        mut times,
        mut value,
        sent,
    } = plan;
    let mut kept: std::collections::VecDeque<(u64, DeliveryFuture)> = Default::default();
    let mut last = i64::MIN;
    let mut i = 0u64;
    while i < records {
        let n = KEEP_EVERY.min(records - i);
        for _ in 0..n {
            let at = match times.as_mut() {
                Some(t) => t.next().unwrap_or_default(),
                None => {
                    let mut t = now_ms() + PROBE_DELAY_MS;
                    if t == last {
                        t -= 1;
                    }
                    last = t;
                    t
                }
            };
            value[..8].copy_from_slice(&at.to_be_bytes());
            let partition = ((u64::from(index) + i) % partitions as u64) as i32;
            let delivery = producer
                .send_record(
                    ProducerRecord::new(&topic)
                        .partition(partition)
                        .value(&value)
                        .deliver_at(at),
                )
                .await
                .with_context(|| format!("sending record {}", i + 1))?;
            i += 1;
            if i.is_multiple_of(KEEP_EVERY) || i == records {
                kept.push_back((i, delivery));
            }
            while kept.front().is_some_and(|(k, _)| i - k >= KEEP_WINDOW) {
                if let Some((k, f)) = kept.pop_front() {
                    f.await
                        .with_context(|| format!("record {k} was not delivered"))?;
                }
            }
        }
        sent.fetch_add(n, Ordering::Relaxed);
    }
    producer.flush().await.context("flushing the producer")?;
    for (k, f) in kept {
        f.await
            .with_context(|| format!("record {k} was not delivered"))?;
    }
    Ok(i)
}

/// Connects the producers and has each learn the topic.
async fn connect(env: &Env, s: &DelaySendArgs, topic: &str) -> anyhow::Result<Vec<Producer>> {
    let mut out = Vec::new();
    for _ in 0..s.producers {
        let mut c = ProducerConfig::new(&env.bootstrap);
        c.acks = s.acks.client();
        // Every batch holds one record (1 KiB of room): 8 MiB is 8,000 batches queued.
        c.buffer_memory = 8 << 20;
        let p = Producer::connect(c)
            .await
            .context("connecting a producer")?;
        p.partition_count(topic)
            .await
            .with_context(|| format!("looking up topic {topic}"))?;
        out.push(p);
    }
    Ok(out)
}

/// Runs one producer task per producer over `records` split between them; returns the
/// records sent and the elapsed time.
async fn run_fill(
    producers: &[Producer],
    topic: &str,
    partitions: i32,
    records: u64,
    times: Option<(u64, i64, i64)>,
    value: &[u8],
    sent: &Arc<AtomicU64>,
) -> anyhow::Result<(u64, Duration)> {
    let shares = super::load::split(records, producers.len() as u64);
    let start = Instant::now();
    let tasks = Tasks(
        producers
            .iter()
            .zip(shares)
            .enumerate()
            .map(|(k, (p, n))| {
                let k = k as u32;
                let plan = FillPlan {
                    topic: topic.to_string(),
                    partitions,
                    index: k,
                    records: n,
                    times: times.map(|(seed, base, w)| Times::new(seed, k, base, w)),
                    value: value.to_vec(),
                    sent: sent.clone(),
                };
                tokio::spawn(fill_loop(p.clone(), plan))
            })
            .collect(),
    );
    let n: u64 = tasks.join().await?.into_iter().sum();
    Ok((n, start.elapsed()))
}

/// What the workers share.
#[derive(Debug, Default)]
struct Shared {
    /// Fill records handed out for the first time (the progress counter).
    acked: Arc<AtomicU64>,
    /// Probe records handed out.
    probe: AtomicU64,
    /// When the last of them arrived, ns since the epoch.
    last_ns: AtomicU64,
    done: AtomicBool,
}

struct WorkerResult {
    /// Fill records handed out for the first time.
    acked: u64,
    bytes: u64,
    /// Lateness of those not early, ns.
    lateness: Histogram<u64>,
    early: u64,
    /// Most a record came early, ns.
    earliest_ns: u64,
    redelivered: u64,
    probe: u64,
    foreign: u64,
}

/// One worker: fetch, ack every record and measure the fill records' lateness, until all were
/// handed out (or the run is stopped).
async fn work(
    mut member: QueueConsumer,
    max_poll: u32,
    tag: u64,
    target: u64,
    shared: Arc<Shared>,
) -> anyhow::Result<WorkerResult> {
    let mut out = WorkerResult {
        acked: 0,
        bytes: 0,
        lateness: new_histogram()?,
        early: 0,
        earliest_ns: 0,
        redelivered: 0,
        probe: 0,
        foreign: 0,
    };
    while !shared.done.load(Ordering::Acquire) {
        let records = member.poll(max_poll).await.context("queue fetch")?;
        let now = now_ns();
        let mut mine = 0u64;
        let probe_before = out.probe;
        for r in &records {
            member.ack(r);
            let v = r.value().map_or(&[][..], |v| &v[..]);
            let (Some(at), Some(t)) = (
                v.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
                v.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
            ) else {
                out.foreign += 1;
                continue;
            };
            let at = i64::from_be_bytes(at);
            match u64::from_be_bytes(t) {
                t if t == tag && r.attempt() > 1 => out.redelivered += 1,
                t if t == tag => {
                    mine += 1;
                    out.bytes += v.len() as u64;
                    let late = now.saturating_sub(at.saturating_mul(1_000_000));
                    if late < 0 {
                        out.early += 1;
                        out.earliest_ns = out.earliest_ns.max(late.unsigned_abs());
                    } else {
                        out.lateness.saturating_record((late as u64).max(1));
                    }
                }
                t if t == tag ^ 1 => out.probe += 1,
                _ => out.foreign += 1,
            }
        }
        if out.probe > probe_before {
            shared
                .probe
                .fetch_add(out.probe - probe_before, Ordering::AcqRel);
        }
        if mine > 0 {
            out.acked += mine;
            shared.last_ns.fetch_max(now as u64, Ordering::AcqRel);
            let total = shared.acked.fetch_add(mine, Ordering::AcqRel) + mine;
            if total >= target {
                shared.done.store(true, Ordering::Release);
            }
        }
    }
    member.flush().await.context("sending the last acks")?;
    let refused = member.take_refused();
    if !refused.is_empty() {
        bail!(
            "{} ack ranges refused: {:?}",
            refused.len(),
            refused.first()
        );
    }
    member.close().await.context("leaving the group")?;
    Ok(out)
}

/// Reads a process's RSS every [`RSS_EVERY`] until dropped or finished.
struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, ProcSample)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    /// `pid`: `None` for this process.
    fn start(pid: Option<u32>) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut iv = tokio::time::interval(RSS_EVERY);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                if let Some(p) = proc_sample(pid) {
                    s.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), p));
                }
            }
        });
        Self { samples, task }
    }

    /// The largest (RSS, RssAnon) sampled at or after `from`, and how many samples.
    fn max_since(&self, from: Instant) -> (u64, u64, usize) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.iter()
            .filter(|(t, _)| *t >= from)
            .fold((0, 0, 0), |(r, a, n), (_, p)| {
                (r.max(p.rss), a.max(p.rss_anon), n + 1)
            })
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's RSS: what is read, and from which process.
struct BrokerRss {
    pid: Option<u32>,
    what: String,
    sampler: RssSampler,
}

impl BrokerRss {
    fn start(env: &Env) -> Option<Self> {
        let (pid, what) = if env.embedded() {
            (
                None,
                format!(
                    "this process (pid {}): the embedded broker and the bench's clients",
                    std::process::id()
                ),
            )
        } else {
            let pid = env.broker_pid?;
            (Some(pid), format!("the broker, pid {pid}"))
        };
        Some(Self {
            pid,
            what,
            sampler: RssSampler::start(pid),
        })
    }
}

/// The run's tag (in every fill record's value; the probe's is `tag ^ 1`): tells this run's
/// records from any other writer's.
fn run_tag() -> u64 {
    let t = now_ns() as u64 ^ (u64::from(std::process::id()) << 32);
    (t | 2) & !1
}

pub(super) async fn delay(env: &Env, a: DelayArgs) -> anyhow::Result<Summary> {
    let admin = env.admin().await?;
    let name = a.topic.topic.as_str();
    let before = prepare_topic(&admin, &a.topic).await?;
    let partitions = i32::try_from(before.partitions.len()).unwrap_or(i32::MAX);
    let n = a.records;
    let window_ms = i64::try_from(a.window.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    let lead_ms = i64::try_from(a.lead.as_millis()).unwrap_or(i64::MAX);
    let tag = run_tag();
    let mut value = super::load::value(a.send.record_size as usize);
    value[8..16].copy_from_slice(&tag.to_be_bytes());
    let mut probe_value = value.clone();
    probe_value[8..16].copy_from_slice(&(tag ^ 1).to_be_bytes());
    let group = a
        .group
        .clone()
        .unwrap_or_else(|| format!("strom-bench-delay-{}", now_ms()));

    // 1. The group, before anything is written.
    let members =
        super::queue::join_members(env, &group, name, a.workers, a.max_in_flight, "latest").await?;
    let shared = Arc::new(Shared::default());
    let workers = Tasks(
        members
            .into_iter()
            .map(|m| tokio::spawn(work(m, a.max_poll_records, tag, n, shared.clone())))
            .collect(),
    );
    let rss = BrokerRss::start(env);
    let producers = connect(env, &a.send, name).await?;

    // 2. The probe: the fill's path, records due soon.
    let probe_n = (n / 50).clamp(1000, 20_000);
    let sent = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start(
        "probe",
        sent.clone(),
        Goal::Records(probe_n),
        env.broker_pid,
    );
    let probed = run_fill(
        &producers,
        name,
        partitions,
        probe_n,
        None,
        &probe_value,
        &sent,
    )
    .await;
    ticker.finish().await;
    let (probe_n, probe_elapsed) = probed?;
    let probe_rate = probe_n as f64 / probe_elapsed.as_secs_f64().max(1e-9);
    let estimate = Duration::from_secs_f64(n as f64 / probe_rate);
    // The probe's records leave before the fill starts.
    let drain = Instant::now() + PROBE_DRAIN;
    while shared.probe.load(Ordering::Acquire) < probe_n && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let probe_left = probe_n.saturating_sub(shared.probe.load(Ordering::Acquire));

    // 3. The fill.
    let fill_start_ms = now_ms();
    let margin_ms = (estimate.as_secs_f64() * ESTIMATE_MARGIN * 1000.0).ceil() as i64;
    let base = fill_start_ms + margin_ms + lead_ms;
    let sent = Arc::new(AtomicU64::new(0));
    let ticker = Ticker::start("fill", sent.clone(), Goal::Records(n), env.broker_pid);
    let filled = run_fill(
        &producers,
        name,
        partitions,
        n,
        Some((a.seed, base, window_ms)),
        &value,
        &sent,
    )
    .await;
    let fill_end_ms = now_ms();
    let fill_end = Instant::now();
    let fill_timeline = ticker.finish().await;
    let (fill_n, fill_elapsed) = filled?;
    let fill_rate = fill_n as f64 / fill_elapsed.as_secs_f64().max(1e-9);
    for p in producers {
        p.close_timeout(Duration::from_secs(30))
            .await
            .context("closing a producer")?;
    }
    let rss_after_fill = rss.as_ref().and_then(|r| proc_sample(r.pid));
    let after = describe_existing(&admin, name).await?;
    let in_log = end_offsets(&after).saturating_sub(end_offsets(&before));
    if in_log < probe_n + fill_n {
        bail!(
            "only {in_log} of the {} records sent (probe and fill) reached the log",
            probe_n + fill_n
        );
    }
    // Which delays were still pending when the fill ended: replay the times.
    let shares = super::load::split(n, u64::from(a.send.producers));
    let (mut pending, mut earliest, mut latest) = (0u64, i64::MAX, i64::MIN);
    for (k, share) in shares.iter().enumerate() {
        for t in Times::new(a.seed, k as u32, base, window_ms).take(*share as usize) {
            pending += u64::from(t > fill_end_ms);
            earliest = earliest.min(t);
            latest = latest.max(t);
        }
    }
    let lead_at_end_ms = earliest - fill_end_ms;
    if pending < n {
        let short = (fill_end_ms - base + 1000).max(1000) as f64 / 1000.0;
        bail!(
            "the fill took {:.1} s (estimated {:.1} s from the probe at {} records/s); when it ended only {pending} of the {n} delays were still pending (the earliest came due {:.1} s before): raise --lead (e.g. --lead {:.0}) so that every delay is pending at once",
            fill_elapsed.as_secs_f64(),
            estimate.as_secs_f64(),
            group_digits(probe_rate),
            -lead_at_end_ms as f64 / 1000.0,
            a.lead.as_secs_f64() + short.ceil()
        );
    }

    // 4. Firing.
    let usage = UsageStart::now(env);
    let ticker = Ticker::start(
        "delay",
        shared.acked.clone(),
        Goal::Records(n),
        env.broker_pid,
    );
    let mut last = 0u64;
    let mut since = Instant::now();
    let mut stalled = false;
    while !shared.done.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = shared.acked.load(Ordering::Acquire);
        if now != last || now_ms() < earliest {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= a.idle_timeout {
            stalled = true;
            shared.done.store(true, Ordering::Release);
        }
    }
    let results = workers.join().await;
    let timeline = ticker.finish().await;
    let resources = usage.end(env, &timeline);
    let results = results?;
    let (firing_rss, firing_anon, rss_samples) = rss
        .as_ref()
        .map_or((0, 0, 0), |r| r.sampler.max_since(fill_end));
    let rss_end = rss.as_ref().and_then(|r| proc_sample(r.pid));

    let mut lateness = new_histogram()?;
    for r in &results {
        merge(&mut lateness, &r.lateness)?;
    }
    let acked: u64 = results.iter().map(|r| r.acked).sum();
    let early: u64 = results.iter().map(|r| r.early).sum();
    let earliest_ns = results.iter().map(|r| r.earliest_ns).max().unwrap_or(0);
    let redelivered: u64 = results.iter().map(|r| r.redelivered).sum();
    let probe_acked: u64 = results.iter().map(|r| r.probe).sum();
    let foreign: u64 = results.iter().map(|r| r.foreign).sum();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let per_worker: Vec<u64> = results.iter().map(|r| r.acked).collect();
    if stalled {
        bail!(
            "{acked} of the {n} delayed records were handed out, then none for {:.0} s",
            a.idle_timeout.as_secs_f64()
        );
    }
    let last_ms = (shared.last_ns.load(Ordering::Acquire) / 1_000_000) as i64;
    let elapsed = Duration::from_millis(u64::try_from(last_ms - earliest).unwrap_or(0).max(1));

    let mut notes = vec![
        format!(
            "lateness: the time `poll` returned a record (this machine's clock) minus the record's delivery time; each of the {n} records had a time of its own, uniform over {:.0} s, each a batch and an index run of its own; the throughput is the records handed out from the earliest delivery time to the last record's arrival",
            a.window.as_secs_f64()
        ),
        format!("records per worker {per_worker:?}"),
    ];
    if early > 0 {
        notes.push(format!(
            "FAILED: {early} records were handed out before their delivery time (up to {:.3} ms early)",
            earliest_ns as f64 / 1e6
        ));
    }
    if probe_left > 0 {
        notes.push(format!(
            "{probe_left} of the {probe_n} probe records were not handed out within {} s of the probe's end: they fired during the fill",
            PROBE_DRAIN.as_secs()
        ));
    }
    if redelivered > 0 {
        notes.push(format!(
            "{redelivered} records were handed out again (a lease ran out); only first deliveries are counted"
        ));
    }
    if foreign > 0 {
        notes.push(format!(
            "{foreign} records were not written by this run (another writer on topic {name}?)"
        ));
    }
    let p99_ms = (!lateness.is_empty()).then(|| lateness.value_at_quantile(0.99) as f64 / 1e6);
    let mut extra = vec![
        (
            "fill",
            json!({
                "records": fill_n,
                "elapsed_s": fill_elapsed.as_secs_f64(),
                "records_per_sec": fill_rate,
                "probe_records": probe_n,
                "probe_records_per_sec": probe_rate,
                "estimated_s": estimate.as_secs_f64(),
                "timeline": fill_timeline
                    .rates()
                    .into_iter()
                    .map(|(t, r)| json!({"t_s": t, "records_per_sec": r}))
                    .collect::<Vec<_>>(),
            }),
            Some(format!(
                "fill         {} delayed records in {:.3} s: {} records/s (probe: {} records at {} records/s, so {:.1} s expected)",
                fill_n,
                fill_elapsed.as_secs_f64(),
                group_digits(fill_rate),
                probe_n,
                group_digits(probe_rate),
                estimate.as_secs_f64()
            )),
        ),
        (
            "pending_at_fill_end",
            json!(pending),
            Some(format!(
                "pending      {pending} of {n} delays pending when the fill ended; the first came due {:.3} s later, the last {:.3} s later",
                lead_at_end_ms as f64 / 1000.0,
                (latest - fill_end_ms) as f64 / 1000.0
            )),
        ),
        (
            "lead_at_fill_end_s",
            json!(lead_at_end_ms as f64 / 1000.0),
            None,
        ),
        (
            "early",
            json!(early),
            Some(format!(
                "handed out   {acked} of {n} ({early} before their time{}{})",
                if redelivered > 0 {
                    format!(", {redelivered} again")
                } else {
                    String::new()
                },
                if probe_acked > 0 {
                    format!("; and {probe_acked} probe records")
                } else {
                    String::new()
                }
            )),
        ),
        ("acked", json!(acked), None),
        ("redelivered", json!(redelivered), None),
        ("probe_acked", json!(probe_acked), None),
    ];
    let rss_peak = match (&rss, rss_after_fill) {
        (Some(r), Some(f)) => {
            let peak = firing_rss.max(rss_end.map_or(0, |s| s.rss)).max(f.rss);
            let peak_anon = firing_anon
                .max(rss_end.map_or(0, |s| s.rss_anon))
                .max(f.rss_anon);
            extra.push((
                "broker_rss",
                json!({
                    "source": r.what,
                    "pid": r.pid.unwrap_or_else(std::process::id),
                    "includes_bench": r.pid.is_none(),
                    "after_fill_bytes": f.rss,
                    "after_fill_anon_bytes": f.rss_anon,
                    "firing_max_bytes": peak,
                    "firing_max_anon_bytes": peak_anon,
                    "samples": rss_samples,
                }),
                Some(format!(
                    "broker RSS   {} after the fill (anonymous {}), {} at most while firing (anonymous {}; {rss_samples} samples, every 100 ms)   ({})",
                    human_bytes(f.rss),
                    human_bytes(f.rss_anon),
                    human_bytes(peak),
                    human_bytes(peak_anon),
                    r.what
                )),
            ));
            Some(peak)
        }
        _ => {
            extra.push(("broker_rss", Value::Null, None));
            notes.push(
                "the broker's RSS was not measured: pass --broker-pid (or use --embedded)".into(),
            );
            None
        }
    };
    let late_ok = p99_ms.is_some_and(|p| p <= AIM_P99_LATENESS_MS);
    let rss_ok = rss_peak.map(|p| p < AIM_RSS_BYTES);
    extra.push((
        "aims",
        json!({
            "p99_lateness_ms_at_most": AIM_P99_LATENESS_MS,
            "p99_lateness_met": late_ok,
            "rss_bytes_below": AIM_RSS_BYTES,
            "rss_met": rss_ok,
            "no_early": early == 0,
        }),
        Some(format!(
            "aims         p99 lateness {} <= {AIM_P99_LATENESS_MS:.0} ms: {}; broker RSS {} < {}: {}; none early: {}",
            p99_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
            met(late_ok),
            rss_peak.map_or("-".into(), human_bytes),
            human_bytes(AIM_RSS_BYTES),
            rss_ok.map_or("not measured", met),
            met(early == 0)
        )),
    ));
    if rss.as_ref().is_some_and(|r| r.pid.is_none()) {
        notes.push(
            "with --embedded the RSS is this whole process's: the broker's plus the bench's workers (and, until the fill ends, producers); run a broker with `strom serve` and pass --bootstrap and --broker-pid for the broker's alone".into(),
        );
    }
    let settings = vec![
        env.settings(),
        ("topic", json!(name)),
        ("partitions", json!(partitions)),
        ("records", json!(n)),
        ("window_s", json!(a.window.as_secs_f64())),
        ("lead_s", json!(a.lead.as_secs_f64())),
        ("workers", json!(a.workers)),
        ("group", json!(group)),
        ("max_poll_records", json!(a.max_poll_records)),
        ("max_in_flight", json!(a.max_in_flight)),
        ("producers", json!(a.send.producers)),
        ("record_size", json!(a.send.record_size)),
        ("acks", json!(a.send.acks.name())),
        ("seed", json!(a.seed)),
    ];
    Ok(Summary {
        command: "delay",
        settings,
        records: acked,
        payload_bytes: bytes,
        elapsed,
        latency: Some((LatencyKind::Lateness, lateness)),
        disk_bytes: Some(size_bytes(&after)),
        disk_bytes_added: Some(size_bytes(&after).saturating_sub(size_bytes(&before))),
        resources,
        ceiling: None,
        timeline,
        extra,
        notes,
    })
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_uniform_replayable_and_differ_from_the_last() {
        let base = 1_700_000_000_000;
        let a: Vec<i64> = Times::new(7, 0, base, 1000).take(100_000).collect();
        let b: Vec<i64> = Times::new(7, 0, base, 1000).take(100_000).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|t| (base..base + 1000).contains(t)));
        assert!(a.windows(2).all(|w| w[0] != w[1]));
        // Every tenth of the window gets about a tenth of the records.
        let mut tenths = [0u64; 10];
        for t in &a {
            tenths[((t - base) / 100) as usize] += 1;
        }
        assert!(
            tenths.iter().all(|c| (9_000..11_000).contains(c)),
            "{tenths:?}"
        );
        let other: Vec<i64> = Times::new(7, 1, base, 1000).take(100).collect();
        assert_ne!(a[..100], other[..]);
    }
}
